//! The agent on Windows: its service, the boot task, and the agent dir's ACL.
//!
//! `config.cmd --runAsService` creates and starts the service (`vstsagent.{org}.{pool}.{agent}`,
//! `agent.md` §5.2); root (SYSTEM) then only asks the Service Control Manager about it and starts
//! or stops it, through `sc.exe`. The boot task is a scheduled task (an XML definition registered
//! with `schtasks /create /xml`, stored by Windows in `%SystemRoot%\System32\Tasks`) that runs
//! `agent-bootstrap reconcile` as SYSTEM at startup. The agent dir gets an explicit ACL: SYSTEM
//! and Administrators full control, the service account modify, nobody else anything. Text is
//! built here as data (so it is tested on Linux too); the programs run only on Windows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ServiceError;
use crate::env::Env;
use crate::process::{self, Child};
use crate::secret::Masker;

/// The default service account of build and release agents (`agent.md` §5.2).
pub const DEFAULT_LOGON_ACCOUNT: &str = r"NT AUTHORITY\NETWORK SERVICE";

/// The service name the agent gives its Windows service (`vstsagent.{0}.{1}.{2}`, the 80-character
/// rule of [`super::unit::service_name`]).
pub fn service_name(server_url: &str, pool: &str, agent: &str) -> String {
    super::unit::service_name(server_url, pool, agent, |a, p, n| {
        format!("vstsagent.{a}.{p}.{n}")
    })
    .0
}

/// What the Service Control Manager says about a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ScState {
    pub exists: bool,
    pub running: bool,
}

impl From<ScState> for super::UnitState {
    /// The Service Control Manager's view as systemd's: a service exists enabled (configure
    /// creates it to start automatically).
    fn from(st: ScState) -> Self {
        Self {
            exists: st.exists,
            enabled: st.exists,
            active: st.running,
        }
    }
}

/// Reads `sc.exe query NAME`: exit 1060 (or "FAILED 1060") is "no such service"; the `STATE` line
/// says whether it runs (`4  RUNNING`, `2  START_PENDING`).
pub fn parse_sc_query(code: i32, stdout: &[String]) -> ScState {
    let text = stdout.join("\n");
    if code == 1060 || text.contains("FAILED 1060") {
        return ScState {
            exists: false,
            running: false,
        };
    }
    let state = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "STATE").then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    ScState {
        exists: code == 0 || !state.is_empty(),
        running: state.contains("RUNNING") || state.contains("START_PENDING"),
    }
}

/// A Windows program from `%SystemRoot%\System32` (run by path: never found through a `PATH` or
/// the current directory another account could have put a program in).
pub(crate) fn system32(env: &Env, exe: &str) -> PathBuf {
    let root = env.var("SystemRoot").unwrap_or(r"C:\Windows");
    Path::new(root).join("System32").join(exe)
}

async fn run_tool(env: &Env, exe: &str, args: &[&str]) -> Result<process::Finished, ServiceError> {
    let label = format!("{exe} {}", args.join(" "));
    let child = Child::new(label.clone(), system32(env, exe), env)
        .args(args.iter().copied())
        .timeout(Duration::from_secs(120));
    process::run_async(child, Masker::new())
        .await
        .map_err(|source| ServiceError::Run {
            step: label,
            source,
        })
}

fn check(step: &str, done: process::Finished) -> Result<process::Finished, ServiceError> {
    if done.success() {
        Ok(done)
    } else {
        Err(ServiceError::Failed {
            step: step.to_owned(),
            code: done.code,
            line: done.error_line().unwrap_or_default(),
        })
    }
}

/// `sc.exe query NAME`.
pub async fn query(env: &Env, name: &str) -> Result<ScState, ServiceError> {
    let done = run_tool(env, "sc.exe", &["query", name]).await?;
    Ok(parse_sc_query(done.code, &done.stdout))
}

/// `sc.exe start NAME` (a service already running is fine).
pub async fn start(env: &Env, name: &str) -> Result<(), ServiceError> {
    let done = run_tool(env, "sc.exe", &["start", name]).await?;
    // 1056: an instance of the service is already running.
    if done.code == 1056 || done.stdout.iter().any(|l| l.contains("1056")) {
        return Ok(());
    }
    check(&format!("sc.exe start {name}"), done).map(drop)
}

/// `sc.exe stop NAME` (a service not running is fine).
pub async fn stop(env: &Env, name: &str) -> Result<(), ServiceError> {
    let done = run_tool(env, "sc.exe", &["stop", name]).await?;
    // 1062: the service has not been started.
    if done.code == 1062 || done.stdout.iter().any(|l| l.contains("1062")) {
        return Ok(());
    }
    check(&format!("sc.exe stop {name}"), done).map(drop)
}

/// `sc.exe stop NAME` then `sc.exe delete NAME` (what `config.cmd remove` does to the service);
/// returns whether there was one.
pub async fn stop_and_delete(env: &Env, name: &str) -> Result<bool, ServiceError> {
    if !query(env, name).await?.exists {
        return Ok(false);
    }
    let _ = run_tool(env, "sc.exe", &["stop", name]).await?;
    check(
        &format!("sc.exe delete {name}"),
        run_tool(env, "sc.exe", &["delete", name]).await?,
    )?;
    Ok(true)
}

/// The boot task's name for an agent dir, e.g. `agent-bootstrap-C-azagent-1a2b3c4d`.
pub fn boot_task_name(agent_dir: &Path) -> String {
    format!("agent-bootstrap-{}", crate::state::key(agent_dir))
}

/// Where Windows keeps a registered task's definition.
pub fn task_file(env: &Env, name: &str) -> PathBuf {
    system32(env, "Tasks").join(name)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// A command-line word for `CreateProcess` (quoted when it has a space or is empty).
fn win_arg(s: &str) -> String {
    if s.is_empty() || s.chars().any(|c| c == ' ' || c == '\t' || c == '"') {
        format!("\"{}\"", s.replace('"', "\\\""))
    } else {
        s.to_owned()
    }
}

/// The task that runs `reconcile` at every boot: as SYSTEM (`S-1-5-18`), highest privileges, a
/// boot trigger with a minute's delay for the network, stopped after [`super::BOOT_TIMEOUT`] like
/// the Linux boot unit, never two at once. `state_dir` is passed when it is not the default.
pub fn render_boot_task(
    exe: &Path,
    agent_dir: &Path,
    state_dir: Option<&Path>,
) -> Result<String, ServiceError> {
    let texts = [
        exe.display().to_string(),
        agent_dir.display().to_string(),
        state_dir
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
    ];
    if let Some(bad) = texts.iter().find(|t| t.chars().any(char::is_control)) {
        return Err(ServiceError::Unsafe {
            what: "the boot task",
            value: bad.clone(),
        });
    }
    let (command, arguments) = match state_dir {
        None => (
            texts[0].clone(),
            format!("reconcile --agent-dir {}", win_arg(&texts[1])),
        ),
        // A task cannot set environment variables: cmd.exe sets it for the one command.
        Some(_) => (
            r"%SystemRoot%\System32\cmd.exe".to_owned(),
            format!(
                "/d /c \"set \"AGENT_BOOTSTRAP_STATE_DIR={}\"&& {} reconcile --agent-dir {}\"",
                texts[2],
                win_arg(&texts[0]),
                win_arg(&texts[1])
            ),
        ),
    };
    let minutes = super::BOOT_TIMEOUT.as_secs() / 60;
    Ok(format!(
        r#"<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>agent-bootstrap: keep the Azure Pipelines agent in {dir} registered (written by agent-bootstrap install, removed by agent-bootstrap remove)</Description>
  </RegistrationInfo>
  <Triggers>
    <BootTrigger>
      <Enabled>true</Enabled>
      <Delay>PT1M</Delay>
    </BootTrigger>
  </Triggers>
  <Principals>
    <Principal id="System">
      <UserId>S-1-5-18</UserId>
      <RunLevel>HighestAvailable</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <StartWhenAvailable>true</StartWhenAvailable>
    <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>
    <ExecutionTimeLimit>PT{minutes}M</ExecutionTimeLimit>
    <Enabled>true</Enabled>
  </Settings>
  <Actions Context="System">
    <Exec>
      <Command>{command}</Command>
      <Arguments>{arguments}</Arguments>
    </Exec>
  </Actions>
</Task>
"#,
        dir = xml_escape(&texts[1]),
        command = xml_escape(&command),
        arguments = xml_escape(&arguments),
    ))
}

/// Registers (or replaces) the boot task from its XML, written as UTF-16 the way Task Scheduler
/// reads it, in `scratch` (the admin-only state directory) for the call.
pub async fn install_boot_task(
    env: &Env,
    name: &str,
    xml: &str,
    scratch: &Path,
) -> Result<(), ServiceError> {
    let path = scratch.join(format!("{name}.xml"));
    let write = |source| ServiceError::Write {
        path: path.clone(),
        source,
    };
    crate::fsx::create_private_dir_all(scratch).map_err(write)?;
    let mut bytes = vec![0xFF, 0xFE];
    for unit in xml.encode_utf16() {
        bytes.extend_from_slice(&unit.to_le_bytes());
    }
    fs_err::write(&path, bytes).map_err(write)?;
    let file = path.display().to_string();
    let done = run_tool(
        env,
        "schtasks.exe",
        &["/create", "/tn", name, "/xml", &file, "/f"],
    )
    .await;
    let _ = fs_err::remove_file(&path);
    check(&format!("schtasks /create /tn {name}"), done?).map(drop)
}

/// Deletes the boot task; returns whether it was there.
pub async fn remove_boot_task(env: &Env, name: &str) -> Result<bool, ServiceError> {
    if !task_file(env, name).is_file() {
        return Ok(false);
    }
    check(
        &format!("schtasks /delete /tn {name}"),
        run_tool(env, "schtasks.exe", &["/delete", "/tn", name, "/f"]).await?,
    )?;
    Ok(true)
}

/// The account as `icacls` takes it: built-in service accounts by SID (names are localized).
fn icacls_account(account: &str) -> String {
    match account.to_ascii_uppercase().as_str() {
        r"NT AUTHORITY\NETWORK SERVICE" | "NETWORK SERVICE" => "*S-1-5-20".into(),
        r"NT AUTHORITY\LOCAL SERVICE" | "LOCAL SERVICE" => "*S-1-5-19".into(),
        r"NT AUTHORITY\SYSTEM" | "SYSTEM" | "LOCALSYSTEM" => "*S-1-5-18".into(),
        _ => account.to_owned(),
    }
}

/// `icacls` arguments for the agent dir: inheritance cut, SYSTEM and Administrators full
/// control, the service account modify, for the dir and everything created in it. Users get
/// nothing: no job of another account can change what the agent runs.
pub fn acl_args(dir: &Path, account: &str) -> Vec<String> {
    let mut args = admins_only(dir);
    args.extend([
        "/grant:r".into(),
        format!("{}:(OI)(CI)M", icacls_account(account)),
        "/T".into(),
        "/C".into(),
        "/Q".into(),
    ]);
    args
}

/// `DIR /inheritance:r`, then full control for SYSTEM and Administrators (by SID: names are
/// localized), for the directory and everything created in it.
fn admins_only(dir: &Path) -> Vec<String> {
    vec![
        dir.display().to_string(),
        "/inheritance:r".into(),
        "/grant:r".into(),
        "*S-1-5-18:(OI)(CI)F".into(),
        "/grant:r".into(),
        "*S-1-5-32-544:(OI)(CI)F".into(),
    ]
}

/// Applies [`acl_args`].
pub async fn secure_agent_dir(env: &Env, dir: &Path, account: &str) -> Result<(), ServiceError> {
    let args = acl_args(dir, account);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    check("icacls", run_tool(env, "icacls.exe", &refs).await?).map(drop)
}

/// `icacls` arguments that make a directory readable and writable by SYSTEM and Administrators
/// only (the saved settings and the cache).
pub fn private_dir_args(dir: &Path) -> Vec<String> {
    let mut args = admins_only(dir);
    args.push("/Q".into());
    args
}

/// Applies [`private_dir_args`].
pub async fn make_private(env: &Env, dir: &Path) -> Result<(), ServiceError> {
    let args = private_dir_args(dir);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    check("icacls", run_tool(env, "icacls.exe", &refs).await?).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_the_agent() {
        assert_eq!(
            service_name("https://dev.azure.com/myorg/", "Default", "vm-1"),
            "vstsagent.myorg.Default.vm-1"
        );
        let long = service_name(
            "https://dev.azure.com/bar",
            &"Y".repeat(40),
            &"X".repeat(40),
        );
        assert_eq!(long.chars().count(), 80, "{long}");
        assert!(long.starts_with(&format!("vstsagent.bar.{}.", "Y".repeat(25))));
    }

    #[test]
    fn sc_query_output_is_read() {
        let lines = |t: &str| t.lines().map(str::to_owned).collect::<Vec<_>>();
        let running = lines(
            "SERVICE_NAME: vstsagent.o.p.a\n        TYPE               : 10  WIN32_OWN_PROCESS\n        STATE              : 4  RUNNING\n",
        );
        assert_eq!(
            parse_sc_query(0, &running),
            ScState {
                exists: true,
                running: true
            }
        );
        let stopped = lines("SERVICE_NAME: x\n        STATE              : 1  STOPPED\n");
        assert_eq!(
            parse_sc_query(0, &stopped),
            ScState {
                exists: true,
                running: false
            }
        );
        let missing = lines(
            "[SC] EnumQueryServicesStatus:OpenService FAILED 1060:\n\nThe specified service does not exist as an installed service.",
        );
        assert!(!parse_sc_query(1060, &missing).exists);
    }

    #[test]
    fn the_boot_task_runs_reconcile_as_system_at_startup() {
        let xml = render_boot_task(
            Path::new(r"C:\Program Files\agent-bootstrap\agent-bootstrap.exe"),
            Path::new(r"C:\azagent"),
            None,
        )
        .unwrap();
        assert!(xml.contains("<BootTrigger>"));
        assert!(xml.contains("<UserId>S-1-5-18</UserId>"));
        assert!(xml.contains("<RunLevel>HighestAvailable</RunLevel>"));
        assert!(xml.contains("<ExecutionTimeLimit>PT15M</ExecutionTimeLimit>"));
        assert!(
            xml.contains(
                r"<Command>C:\Program Files\agent-bootstrap\agent-bootstrap.exe</Command>"
            )
        );
        assert!(xml.contains(r"<Arguments>reconcile --agent-dir C:\azagent</Arguments>"));
        // Well-formed enough for a parser: every element opened is closed.
        for tag in [
            "Task",
            "Triggers",
            "Principals",
            "Settings",
            "Actions",
            "Exec",
        ] {
            let opened =
                xml.matches(&format!("<{tag}>")).count() + xml.matches(&format!("<{tag} ")).count();
            assert_eq!(opened, 1, "{tag}");
            assert_eq!(xml.matches(&format!("</{tag}>")).count(), 1, "{tag}");
        }
        let with_state = render_boot_task(
            Path::new(r"C:\ab\agent-bootstrap.exe"),
            Path::new(r"C:\a & b"),
            Some(Path::new(r"D:\state")),
        )
        .unwrap();
        assert!(with_state.contains("AGENT_BOOTSTRAP_STATE_DIR=D:\\state"));
        assert!(with_state.contains("&amp;"), "{with_state}");
        assert!(!with_state.contains("a & b"));
        assert!(render_boot_task(Path::new("C:\\x\ny"), Path::new(r"C:\a"), None).is_err());
    }

    #[test]
    fn private_dirs_get_the_same_acl_at_creation_as_from_icacls() {
        // CreateDirectoryW's descriptor (crate::fsx::PRIVATE_DIR_SDDL) and icacls say the same:
        // inheritance cut (P / inheritance:r), SYSTEM and Administrators full control for the
        // directory and what is created in it (OICI / (OI)(CI)F), nobody else anything.
        let sddl = crate::fsx::PRIVATE_DIR_SDDL;
        assert_eq!(sddl, "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)");
        let args = private_dir_args(Path::new(r"C:\ProgramData\agent-bootstrap"));
        assert!(args.contains(&"/inheritance:r".to_owned()));
        assert!(args.contains(&"*S-1-5-18:(OI)(CI)F".to_owned()));
        assert!(args.contains(&"*S-1-5-32-544:(OI)(CI)F".to_owned()));
        assert_eq!(args.iter().filter(|a| a.contains(":(")).count(), 2);
        assert_eq!(sddl.matches("(A;").count(), 2);
    }

    #[test]
    fn the_agent_dir_acl_keeps_everyone_else_out() {
        let args = acl_args(Path::new(r"C:\azagent"), DEFAULT_LOGON_ACCOUNT);
        assert_eq!(args[0], r"C:\azagent");
        assert!(args.contains(&"/inheritance:r".to_owned()));
        assert!(args.contains(&"*S-1-5-20:(OI)(CI)M".to_owned()));
        assert!(
            !args
                .iter()
                .any(|a| a.contains("S-1-5-32-545") || a.contains("Users"))
        );
        let custom = acl_args(Path::new(r"C:\azagent"), r"CONTOSO\svc-agent");
        assert!(custom.contains(&r"CONTOSO\svc-agent:(OI)(CI)M".to_owned()));
    }
}
