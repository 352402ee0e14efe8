//! Installing and starting the agent's service.
//!
//! Linux: the agent's own generated `svc.sh`, as root from the agent root — `svc.sh install <user>`
//! (which writes and enables the systemd unit and `.service` but does not start it), then
//! `svc.sh start` (`agent.md` §5.1). Windows: `config.cmd --runAsService` installs and starts the
//! service during configuration (§5.2), so there is no separate step. The plan is computed from an
//! [`Os`] so both are tested on Linux.

use std::path::Path;
use std::time::Duration;

use crate::os::{Family, Os};
use crate::process::{self, Child};
use crate::secret::Masker;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{step} failed (exit code {code}): {line}")]
    Failed {
        step: String,
        code: i32,
        line: String,
    },
    #[error("could not run {step}")]
    Run {
        step: String,
        #[source]
        source: process::ProcessError,
    },
    #[error("the agent dir has no svc.sh: configure did not generate it")]
    NoScript,
}

/// One step of the service plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub label: String,
    pub program: String,
    pub args: Vec<String>,
}

/// The steps that install and start the service. `installed` = `.service` already exists.
pub fn plan(os: &Os, user: &str, installed: bool) -> Vec<Step> {
    match os.family {
        Family::Windows => vec![],
        Family::Linux | Family::MacOs => {
            let mut steps = vec![];
            if !installed {
                steps.push(Step {
                    label: "svc.sh install".into(),
                    program: "./svc.sh".into(),
                    args: vec!["install".into(), user.into()],
                });
            }
            steps.push(Step {
                label: "svc.sh start".into(),
                program: "./svc.sh".into(),
                args: vec!["start".into()],
            });
            steps
        }
    }
}

async fn run_step(
    root: &Path,
    step: &Step,
    masker: &Masker,
) -> Result<process::Finished, ServiceError> {
    let child = Child::new(step.label.clone(), root.join(&step.program))
        .args(step.args.clone())
        .cwd(root)
        .timeout(Duration::from_secs(120));
    process::run_async(child, masker.clone())
        .await
        .map_err(|source| ServiceError::Run {
            step: step.label.clone(),
            source,
        })
}

/// Runs the plan as root from the agent root.
pub async fn install_and_start(
    root: &Path,
    steps: &[Step],
    masker: &Masker,
    no_block_start: bool,
) -> Result<(), ServiceError> {
    if !steps.is_empty() && !root.join("svc.sh").is_file() {
        return Err(ServiceError::NoScript);
    }
    for step in steps {
        if no_block_start && step.args.first().is_some_and(|a| a == "start") {
            let unit = fs_err::read_to_string(root.join(".service"))
                .map(|u| u.trim().to_owned())
                .map_err(|_| ServiceError::NoScript)?;
            Systemctl::require()?
                .run(&["start", "--no-block", &unit])
                .await?;
            continue;
        }
        let done = run_step(root, step, masker).await?;
        if done.success() {
            continue;
        }
        let line = done.error_line().unwrap_or_default();
        // The unit is still there from an earlier life of this agent dir (a reimaged data disk):
        // svc.sh refuses to overwrite it, so uninstall it and install again.
        if step.args.first().is_some_and(|a| a == "install") && line.contains("error: exists") {
            tracing::warn!("the service unit already exists; reinstalling it");
            let uninstall = Step {
                label: "svc.sh uninstall".into(),
                program: step.program.clone(),
                args: vec!["uninstall".into()],
            };
            let _ = run_step(root, &uninstall, masker).await?;
            let again = run_step(root, step, masker).await?;
            if again.success() {
                continue;
            }
            return Err(ServiceError::Failed {
                step: step.label.clone(),
                code: again.code,
                line: again.error_line().unwrap_or_default(),
            });
        }
        return Err(ServiceError::Failed {
            step: step.label.clone(),
            code: done.code,
            line,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_installs_then_starts() {
        let p = plan(&Os::linux_x64(), "azpagent", false);
        let shown: Vec<String> = p
            .iter()
            .map(|s| format!("{} {}", s.program, s.args.join(" ")))
            .collect();
        assert_eq!(shown, vec!["./svc.sh install azpagent", "./svc.sh start"]);
        // Already installed: only start.
        assert_eq!(plan(&Os::linux_x64(), "azpagent", true).len(), 1);
    }

    #[test]
    fn windows_service_comes_from_configure() {
        assert!(plan(&Os::windows_x64(), "x", false).is_empty());
    }
}

/// Where unit files go; `AGENT_BOOTSTRAP_UNIT_DIR` overrides it (tests, image builds).
pub const UNIT_DIR_ENV: &str = "AGENT_BOOTSTRAP_UNIT_DIR";
const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";

/// systemd is managing this machine (`sd_booted`: `/run/systemd/system` exists), or a unit dir was
/// named explicitly.
pub fn systemd_available(env: &crate::env::Env) -> bool {
    env.var(UNIT_DIR_ENV).is_some() || Path::new("/run/systemd/system").is_dir()
}

pub fn unit_dir(env: &crate::env::Env) -> std::path::PathBuf {
    env.var(UNIT_DIR_ENV)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(DEFAULT_UNIT_DIR))
}

/// What systemd says about a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct UnitState {
    /// The unit file exists (systemd knows the unit).
    pub exists: bool,
    pub enabled: bool,
    pub active: bool,
}

/// `systemctl`, found on `PATH`.
#[derive(Debug, Clone)]
pub struct Systemctl {
    program: std::path::PathBuf,
}

impl Systemctl {
    pub fn find() -> Option<Self> {
        which::which("systemctl")
            .ok()
            .map(|program| Self { program })
    }

    /// [`Systemctl::find`], or an error saying it is missing.
    pub fn require() -> Result<Self, ServiceError> {
        Self::find().ok_or_else(|| ServiceError::Failed {
            step: "systemctl".into(),
            code: -1,
            line: "systemctl was not found on PATH".into(),
        })
    }

    async fn call(&self, args: &[&str]) -> Result<process::Finished, ServiceError> {
        let label = format!("systemctl {}", args.join(" "));
        let child = Child::new(label.clone(), &self.program)
            .args(args.iter().copied())
            .timeout(Duration::from_secs(90));
        process::run_async(child, Masker::new())
            .await
            .map_err(|source| ServiceError::Run {
                step: label,
                source,
            })
    }

    /// Runs a state-changing command; failure is an error.
    pub async fn run(&self, args: &[&str]) -> Result<(), ServiceError> {
        let done = self.call(args).await?;
        if done.success() {
            Ok(())
        } else {
            Err(ServiceError::Failed {
                step: format!("systemctl {}", args.join(" ")),
                code: done.code,
                line: done.error_line().unwrap_or_default(),
            })
        }
    }

    pub async fn state(&self, unit: &str) -> Result<UnitState, ServiceError> {
        let enabled = self.call(&["is-enabled", unit]).await?;
        let word = enabled
            .stdout
            .first()
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let (exists, enabled) = match word.as_str() {
            "enabled" | "enabled-runtime" | "static" | "alias" | "linked" | "linked-runtime"
            | "indirect" | "generated" => (true, true),
            "disabled" | "masked" | "masked-runtime" => (true, false),
            _ => (false, false),
        };
        let active = self.call(&["is-active", unit]).await?;
        let active = active
            .stdout
            .first()
            .is_some_and(|s| matches!(s.trim(), "active" | "activating" | "reloading"));
        Ok(UnitState {
            exists,
            enabled,
            active,
        })
    }
}

/// The boot unit's name for an agent dir, e.g. `agent-bootstrap-opt-azure-pipelines-agent-1a2b3c4d.service`.
pub fn boot_unit_name(state_dir: &Path, agent_dir: &Path) -> String {
    let file = crate::state::file_for(state_dir, agent_dir);
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "agent".into());
    format!("agent-bootstrap-{stem}.service")
}

/// The oneshot unit that runs `reconcile` at boot: after the network is online, before the
/// agent's own unit, so a clone never starts the original's registration.
pub fn render_boot_unit(
    exe: &Path,
    agent_dir: &Path,
    state_dir: &Path,
    agent_unit: Option<&str>,
) -> String {
    let before = agent_unit
        .map(|u| format!("Before={u}\n"))
        .unwrap_or_default();
    let quote = |p: &Path| {
        let s = p.display().to_string();
        if s.chars().any(|c| c.is_whitespace() || c == '"') {
            format!("\"{}\"", s.replace('"', "\\\""))
        } else {
            s
        }
    };
    format!(
        "# Written by agent-bootstrap install; removed by agent-bootstrap remove.\n\
         [Unit]\n\
         Description=agent-bootstrap: keep the Azure Pipelines agent in {dir} registered\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         {before}\
         ConditionPathExists={dir}\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         Environment=AGENT_BOOTSTRAP_STATE_DIR={state}\n\
         ExecStart={exe} reconcile --agent-dir {qdir}\n\
         TimeoutStartSec=15min\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        dir = agent_dir.display(),
        qdir = quote(agent_dir),
        exe = quote(exe),
        state = quote(state_dir),
    )
}

#[cfg(test)]
mod boot_tests {
    use super::*;

    #[test]
    fn boot_unit_orders_after_network_and_before_the_agent() {
        let u = render_boot_unit(
            Path::new("/usr/local/bin/agent-bootstrap"),
            Path::new("/opt/azure-pipelines-agent"),
            Path::new("/var/lib/agent-bootstrap"),
            Some("vsts.agent.o.p.a.service"),
        );
        assert!(u.contains("After=network-online.target\n"));
        assert!(u.contains("Wants=network-online.target\n"));
        assert!(u.contains("Before=vsts.agent.o.p.a.service\n"));
        assert!(u.contains("Type=oneshot\n"));
        assert!(u.contains(
            "ExecStart=/usr/local/bin/agent-bootstrap reconcile --agent-dir /opt/azure-pipelines-agent\n"
        ));
        assert!(u.contains("WantedBy=multi-user.target"));
    }

    #[test]
    fn unit_names_are_per_agent_dir() {
        let s = Path::new("/var/lib/agent-bootstrap");
        let a = boot_unit_name(s, Path::new("/opt/a"));
        assert!(
            a.starts_with("agent-bootstrap-opt-a-") && a.ends_with(".service"),
            "{a}"
        );
        assert_ne!(a, boot_unit_name(s, Path::new("/opt/b")));
    }
}

/// `vsts.agent.<…>.service` with no path separator: the only unit names root acts on when they come
/// from the agent dir (`.service` is writable by the agent user).
pub fn is_agent_unit_name(name: &str) -> bool {
    name.starts_with("vsts.agent.")
        && name.ends_with(".service")
        && name.len() <= 256
        && !name.contains('/')
        && !name.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// `systemd-escape --path`: what svc.sh applies to the unit name.
pub fn systemd_escape_path(s: &str) -> String {
    let trimmed = s.trim_matches('/');
    let mut out = String::new();
    for (i, b) in trimmed.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The unit name (before `systemd-escape --path`) and description the agent gives its service
/// (`agent.md` §5.1): `{0}` is the first path segment for dev.azure.com, else the first label of
/// the host; longer than 80 characters, account and pool are cut to 25 and then the agent name is
/// trimmed.
pub fn agent_unit_name(server_url: &str, pool: &str, agent: &str) -> (String, String) {
    let account = url::Url::parse(server_url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_owned();
            if host.eq_ignore_ascii_case("dev.azure.com") {
                u.path_segments()?
                    .find(|s| !s.is_empty())
                    .map(str::to_owned)
            } else {
                host.split('.').next().map(str::to_owned)
            }
        })
        .unwrap_or_default();
    let mut parts = (account, pool.to_owned(), agent.to_owned());
    let len = |p: &(String, String, String)| format!("vsts.agent.{}.{}.{}", p.0, p.1, p.2).len();
    if len(&parts) > 80 {
        parts.0 = parts.0.chars().take(25).collect();
        parts.1 = parts.1.chars().take(25).collect();
        while len(&parts) > 80 && !parts.2.is_empty() {
            parts.2.pop();
        }
    }
    let (a, p, n) = parts;
    (
        format!("vsts.agent.{a}.{p}.{n}.service"),
        format!("Azure Pipelines Agent ({a}.{p}.{n})"),
    )
}

/// The agent's unit, as its `vsts.agent.service.template` renders it, written by us.
pub fn render_agent_unit(root: &Path, user: &str, description: &str) -> String {
    let root = root.display();
    format!(
        "[Unit]\nDescription={description}\nAfter=network.target\n\n[Service]\n\
         ExecStart={root}/runsvc.sh\nUser={user}\nWorkingDirectory={root}\nKillMode=process\n\
         KillSignal=SIGTERM\nTimeoutStopSec=5min\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

/// Whether a unit file is the one for this agent dir (before root stops, disables or deletes it).
fn unit_belongs_to(unit_file: &Path, root: &Path) -> bool {
    fs_err::read_to_string(unit_file).is_ok_and(|t| {
        t.lines()
            .any(|l| l.trim() == format!("WorkingDirectory={}", root.display()))
    })
}

/// A shell step run as the agent user, so root never writes inside the agent dir.
async fn as_agent_user(
    root: &Path,
    user: &process::RunAs,
    label: &str,
    script: &str,
    args: &[&str],
) -> Result<(), ServiceError> {
    let mut all = vec!["-c".to_owned(), script.to_owned(), "sh".to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let child = Child::new(label, "/bin/sh")
        .args(all)
        .cwd(root)
        .run_as((user.uid != 0).then(|| user.clone()))
        .timeout(Duration::from_secs(60));
    let done = process::run_async(child, Masker::new())
        .await
        .map_err(|source| ServiceError::Run {
            step: label.into(),
            source,
        })?;
    if done.success() {
        Ok(())
    } else {
        Err(ServiceError::Failed {
            step: label.into(),
            code: done.code,
            line: done.error_line().unwrap_or_default(),
        })
    }
}

/// What `svc.sh install <user>` does, without running the agent user's svc.sh as root: used on
/// every run after the one that extracted the package, when jobs may have changed the agent dir.
pub async fn native_install(
    env: &crate::env::Env,
    root: &Path,
    user: &process::RunAs,
    server_url: &str,
    pool: &str,
    agent: &str,
) -> Result<String, ServiceError> {
    let (raw, description) = agent_unit_name(server_url, pool, agent);
    let name = systemd_escape_path(&raw);
    let sc = Systemctl::require()?;
    let dir = unit_dir(env);
    let path = dir.join(&name);
    let text = render_agent_unit(root, &user.name, &description);
    let write = |source| ServiceError::Run {
        step: format!("writing {}", path.display()),
        source: process::ProcessError::Spawn {
            label: "write unit".into(),
            program: path.clone(),
            source,
        },
    };
    fs_err::create_dir_all(&dir).map_err(write)?;
    fs_err::write(&path, text).map_err(write)?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).map_err(write)?;
    }
    sc.run(&["daemon-reload"]).await?;
    as_agent_user(
        root,
        user,
        "restore runsvc.sh and .service",
        r#"[ -f ./runsvc.sh ] || cp ./bin/runsvc.sh ./runsvc.sh && chmod 755 ./runsvc.sh && printf '%s\n' "$1" > .service"#,
        &[&name],
    )
    .await?;
    sc.run(&["enable", &name]).await?;
    tracing::info!(unit = %name, "installed the agent's service unit");
    Ok(name)
}

/// What `svc.sh stop` + `svc.sh uninstall` do, without running svc.sh as root.
pub async fn native_uninstall(
    env: &crate::env::Env,
    root: &Path,
    name: &str,
) -> Result<(), ServiceError> {
    let sc = Systemctl::require()?;
    let path = unit_dir(env).join(name);
    if path.exists() && !unit_belongs_to(&path, root) {
        return Err(ServiceError::Failed {
            step: format!("removing {name}"),
            code: -1,
            line: format!(
                "{} is not the unit of the agent in {}; left alone",
                path.display(),
                root.display()
            ),
        });
    }
    let _ = sc.run(&["stop", name]).await;
    if path.exists() {
        sc.run(&["disable", name]).await?;
        let _ = fs_err::remove_file(&path);
    }
    // unlink does not follow links: safe in a directory the agent user owns.
    let _ = fs_err::remove_file(root.join(".service"));
    sc.run(&["daemon-reload"]).await?;
    tracing::info!(unit = %name, "removed the agent's service unit");
    Ok(())
}

#[cfg(test)]
mod native_tests {
    use super::*;

    #[test]
    fn unit_names_follow_the_agent() {
        let escaped = |u: &str, p: &str, a: &str| systemd_escape_path(&agent_unit_name(u, p, a).0);
        assert_eq!(
            escaped("https://dev.azure.com/myorg/", "Default", "vm-1"),
            "vsts.agent.myorg.Default.vm\\x2d1.service"
        );
        assert_eq!(
            escaped("https://myorg.visualstudio.com/", "My Pool", "a"),
            "vsts.agent.myorg.My\\x20Pool.a.service"
        );
        assert_eq!(
            agent_unit_name("http://127.0.0.1:8080/myorg/", "Default", "a").1,
            "Azure Pipelines Agent (127.Default.a)"
        );
        let (long, _) = agent_unit_name(
            "https://dev.azure.com/an-organization-with-a-very-long-name",
            "a-pool-with-an-extremely-long-name-too",
            "and-an-agent-name-that-goes-on-and-on-and-on",
        );
        assert!(long.len() <= 80 + ".service".len(), "{long}");
        assert_eq!(
            long,
            "vsts.agent.an-organization-with-a-ve.a-pool-with-an-extremely-.and-an-agent-name.service"
        );
    }

    #[test]
    fn escaping_matches_systemd_escape_path() {
        assert_eq!(systemd_escape_path("a-b c/d.e"), "a\\x2db\\x20c-d.e");
        assert_eq!(systemd_escape_path(".hidden"), "\\x2ehidden");
    }

    #[test]
    fn only_agent_units_are_acted_on() {
        assert!(is_agent_unit_name("vsts.agent.o.p.a.service"));
        assert!(!is_agent_unit_name("sshd.service"));
        assert!(!is_agent_unit_name("vsts.agent.../../etc/x.service"));
        assert!(!is_agent_unit_name("vsts.agent.a b.service"));
    }

    #[test]
    fn rendered_unit_matches_the_template() {
        let u = render_agent_unit(
            Path::new("/opt/a"),
            "azpagent",
            "Azure Pipelines Agent (o.p.a)",
        );
        assert!(u.contains("ExecStart=/opt/a/runsvc.sh\nUser=azpagent\nWorkingDirectory=/opt/a\n"));
        assert!(u.contains("KillMode=process"));
    }
}

/// Installs (if needed) and starts the agent's service.
///
/// `fresh`: this run extracted the package and generated `svc.sh`, so svc.sh is ours and runs as
/// root as the agent documents (`svc.sh install <user>`, `svc.sh start`). On any later run the agent
/// dir may have been changed by pipeline jobs (they run as the agent user), so root does svc.sh's
/// work itself instead of executing the agent user's script.
#[allow(clippy::too_many_arguments)]
pub async fn install_and_start_agent(
    env: &crate::env::Env,
    os: &crate::os::Os,
    root: &Path,
    user: &process::RunAs,
    fresh: bool,
    no_block_start: bool,
    agent: &crate::agent::AgentSettings,
    masker: &Masker,
) -> Result<(), ServiceError> {
    let dir = crate::agent::AgentDir {
        root: root.to_owned(),
        listener: "bin/Agent.Listener",
    };
    if fresh {
        let steps = plan(os, &user.name, dir.service_name().is_some());
        return install_and_start(root, &steps, masker, no_block_start).await;
    }
    let sc = Systemctl::require()?;
    let existing = match dir.service_name() {
        Some(u) if sc.state(&u).await?.exists => Some(u),
        _ => None,
    };
    let unit = match existing {
        Some(u) => u,
        None => {
            let pool = agent.pool_name.clone().unwrap_or_default();
            native_install(env, root, user, &agent.server_url, &pool, &agent.agent_name).await?
        }
    };
    let state = sc.state(&unit).await?;
    if !state.enabled {
        sc.run(&["enable", &unit]).await?;
    }
    if no_block_start {
        sc.run(&["start", "--no-block", &unit]).await
    } else {
        sc.run(&["start", &unit]).await
    }
}
