//! The agent's own systemd unit, written by root from root's own settings.
//!
//! The name and description are computed as the agent computes them (`CalculateServiceName`,
//! `agent.md` §5.1) from the organization URL, pool and agent name in root's saved settings, never
//! from `.agent` or `.service` (the agent user can write both); the text is the agent's
//! `vsts.agent.service.template` with every value escaped for systemd. A unit file is stopped,
//! disabled or deleted only if its `WorkingDirectory=` is this agent dir.

use std::path::Path;
use std::time::Duration;

use super::{ServiceError, Systemctl, exec_word, unit_dir, unit_value};
use crate::env::Env;
use crate::process::{self, Child};
use crate::secret::Masker;

/// `vsts.agent.<…>.service` with no path separator: the only unit names shown from `.service`.
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
                out.push(b as char);
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The unit name (before `systemd-escape --path`) and description the agent gives its service:
/// [`service_name`] with the Linux pattern `vsts.agent.{0}.{1}.{2}.service`.
pub fn agent_unit_name(server_url: &str, pool: &str, agent: &str) -> (String, String) {
    service_name(server_url, pool, agent, |a, p, n| {
        format!("vsts.agent.{a}.{p}.{n}.service")
    })
}

/// The agent's `ServiceControlManager.CalculateServiceName` for a pattern: `{0}` is the first
/// path segment for dev.azure.com, else the first label of the host; `{1}` the pool, `{2}` the
/// agent. When the whole name is longer than 80 characters, account and pool are cut to 25 and
/// then the agent name by what is still over; the description keeps the full names.
pub fn service_name(
    server_url: &str,
    pool: &str,
    agent: &str,
    pattern: impl Fn(&str, &str, &str) -> String,
) -> (String, String) {
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
    let len = |s: &str| s.chars().count();
    let prefix = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    let mut name = pattern(&account, pool, agent);
    if len(&name) > 80 {
        let mut exceeded = len(&name) as i64 - 80;
        let account_cut = prefix(&account, 25);
        exceeded -= (len(&account) - len(&account_cut)) as i64;
        let pool_cut = prefix(pool, 25);
        exceeded -= (len(pool) - len(&pool_cut)) as i64;
        let agent_cut = if exceeded > 0 {
            prefix(agent, len(agent).saturating_sub(exceeded as usize))
        } else {
            agent.to_owned()
        };
        name = pattern(&account_cut, &pool_cut, &agent_cut);
    }
    (
        name,
        format!("Azure Pipelines Agent ({account}.{pool}.{agent})"),
    )
}

/// The agent's unit as root names and describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUnit {
    /// The escaped unit name, e.g. `vsts.agent.myorg.Default.vm\x2d1.service`.
    pub name: String,
    pub description: String,
}

impl AgentUnit {
    /// From the organization URL, pool and agent name of root's settings.
    pub fn new(server_url: &str, pool: &str, agent: &str) -> Self {
        let (raw, description) = agent_unit_name(server_url, pool, agent);
        Self {
            name: systemd_escape_path(&raw),
            description,
        }
    }
}

/// The agent's unit, as its `vsts.agent.service.template` renders it, with every value escaped.
pub fn render_agent_unit(
    root: &Path,
    user: &str,
    description: &str,
) -> Result<String, ServiceError> {
    let root_text = root.display().to_string();
    let exec = exec_word("the agent dir", &format!("{root_text}/runsvc.sh"))?;
    let dir = unit_value("the agent dir", &root_text)?;
    let description = unit_value("the unit description", description)?;
    let user = unit_value("the agent user", user)?;
    Ok(format!(
        "[Unit]\nDescription={description}\nAfter=network.target\n\n[Service]\n\
         ExecStart={exec}\nUser={user}\nWorkingDirectory={dir}\nKillMode=process\n\
         KillSignal=SIGTERM\nTimeoutStopSec=5min\n\n[Install]\nWantedBy=multi-user.target\n"
    ))
}

/// The agent dir a unit file runs in, if it says (`WorkingDirectory=`).
fn working_directory(text: &str) -> Option<String> {
    // A last line without its newline is a file cut short (a torn write): not believed.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter_map(|l| l.trim().strip_prefix("WorkingDirectory="))
        .map(|v| v.trim().replace("%%", "%"))
        .next_back()
}

/// A unit file that runs in another agent dir (a damaged one, without the line or cut short in it,
/// is not foreign).
fn foreign(path: &Path, text: &str, root: &Path) -> Result<(), ServiceError> {
    match working_directory(text) {
        Some(d) if Path::new(&d) != root => Err(ServiceError::Foreign {
            path: path.to_owned(),
            ours: root.to_owned(),
            other: d,
        }),
        _ => Ok(()),
    }
}

/// A shell step run as the agent user, so root never writes inside the agent dir.
async fn as_agent_user(
    env: &Env,
    root: &Path,
    user: &process::RunAs,
    label: &str,
    script: &str,
    args: &[&str],
) -> Result<(), ServiceError> {
    let mut all = vec!["-c".to_owned(), script.to_owned(), "sh".to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let child = Child::new(label, "/bin/sh", env)
        .args(all)
        .cwd(root)
        .run_as(user.unless_root())
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

/// The agent's unit after [`install_agent_unit`], and what it took.
#[derive(Debug)]
pub struct ReadyUnit {
    pub unit: String,
    /// The unit file was missing or damaged and was written.
    pub reinstalled: bool,
    pub enabled_now: bool,
    pub active: bool,
}

/// Whether [`install_agent_unit`] has something to do (nothing is changed): the unit file is
/// missing or not what it should be, `runsvc.sh` or `.service` is missing from the agent dir, or
/// the unit is not enabled. A unit file of another agent dir is refused, as install refuses it.
pub async fn agent_unit_off(
    env: &Env,
    sc: &Systemctl,
    unit: &AgentUnit,
    root: &Path,
    user: &str,
) -> Result<bool, ServiceError> {
    let path = unit_dir(env).join(&unit.name);
    let text = render_agent_unit(root, user, &unit.description)?;
    let current = fs_err::read_to_string(&path).ok();
    if let Some(t) = &current {
        foreign(&path, t, root)?;
    }
    Ok(current.as_deref() != Some(text.as_str())
        || !crate::fsx::is_regular(&root.join("runsvc.sh"))
        || !crate::fsx::is_regular(&root.join(".service"))
        || !sc.state(&unit.name).await?.enabled)
}

/// What `svc.sh install <user>` does, done by root without running the agent user's svc.sh: the
/// unit file (written when missing or different from what it should be), `daemon-reload`,
/// `runsvc.sh` and `.service` restored by the agent user in its own dir, and `enable`. Starting it
/// is the caller's choice.
pub async fn install_agent_unit(
    env: &Env,
    sc: &Systemctl,
    unit: &AgentUnit,
    root: &Path,
    user: &process::RunAs,
) -> Result<ReadyUnit, ServiceError> {
    let path = unit_dir(env).join(&unit.name);
    let text = render_agent_unit(root, &user.name, &unit.description)?;
    if let Ok(t) = fs_err::read_to_string(&path) {
        foreign(&path, &t, root)?;
    }
    let reinstalled = super::put_unit_file(env, sc, &unit.name, &text).await?;
    let runsvc_ok = crate::fsx::is_regular(&root.join("runsvc.sh"));
    let service_file_ok = crate::fsx::is_regular(&root.join(".service"));
    if reinstalled || !runsvc_ok || !service_file_ok {
        as_agent_user(
            env,
            root,
            user,
            "restore runsvc.sh and .service",
            r#"rm -f ./runsvc.sh ./.service && cp ./bin/runsvc.sh ./runsvc.sh && chmod 755 ./runsvc.sh && printf '%s\n' "$1" > .service"#,
            &[&unit.name],
        )
        .await?;
    }
    // Every time: a job may have replaced runsvc.sh with a file of the agent dir's label.
    super::selinux::label(env, &root.join("runsvc.sh"), super::selinux::PROGRAM).await?;
    let state = sc.state(&unit.name).await?;
    if !state.enabled {
        sc.run(&["enable", &unit.name]).await?;
    }
    if reinstalled {
        tracing::info!(unit = %unit.name, "installed the agent's service unit");
    }
    Ok(ReadyUnit {
        unit: unit.name.clone(),
        reinstalled,
        enabled_now: !state.enabled,
        active: state.active,
    })
}

/// What `svc.sh stop` + `svc.sh uninstall` do, without running svc.sh. Returns whether a unit file
/// was there.
pub async fn uninstall_agent_unit(
    env: &Env,
    sc: &Systemctl,
    name: &str,
    root: &Path,
) -> Result<bool, ServiceError> {
    let path = unit_dir(env).join(name);
    let current = fs_err::read_to_string(&path).ok();
    if let Some(t) = &current {
        foreign(&path, t, root)?;
    }
    let _ = sc.run(&["stop", name]).await;
    if current.is_some() {
        sc.run(&["disable", name]).await?;
        super::remove_unit_file(&path)?;
    }
    // unlink does not follow links: safe in a directory the agent user owns.
    let _ = fs_err::remove_file(root.join(".service"));
    sc.run(&["daemon-reload"]).await?;
    if current.is_some() {
        tracing::info!(unit = %name, "removed the agent's service unit");
    }
    Ok(current.is_some())
}

#[cfg(test)]
mod native_tests {
    use super::*;

    fn escaped(u: &str, p: &str, a: &str) -> String {
        AgentUnit::new(u, p, a).name
    }

    /// The agent's own unit-test vectors (`ServiceControlManagerL0.CalculateServiceNameL0`).
    #[test]
    fn unit_names_match_the_agents_own_test_vectors() {
        let x40 = "X".repeat(40);
        let y40 = "Y".repeat(40);
        for (url, pool, agent, name, display) in [
            (
                "https://dev.azure.com/bar",
                "pool1",
                "foo",
                "vsts.agent.bar.pool1.foo.service".to_owned(),
                "Azure Pipelines Agent (bar.pool1.foo)".to_owned(),
            ),
            (
                "https://dev.azure.com/bar",
                y40.as_str(),
                x40.as_str(),
                format!(
                    "vsts.agent.bar.{}.{}.service",
                    "Y".repeat(25),
                    "X".repeat(31)
                ),
                format!("Azure Pipelines Agent (bar.{y40}.{x40})"),
            ),
            (
                "https://dev.azure.com/bar",
                "pool-1",
                "foo",
                "vsts.agent.bar.pool-1.foo.service".to_owned(),
                "Azure Pipelines Agent (bar.pool-1.foo)".to_owned(),
            ),
        ] {
            let (n, d) = agent_unit_name(url, pool, agent);
            assert_eq!(n, name);
            assert!(n.chars().count() <= 80, "{n}");
            assert_eq!(d, display);
        }
    }

    #[test]
    fn unit_names_follow_the_agent() {
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
    }

    #[test]
    fn escaping_matches_systemd_escape_path() {
        assert_eq!(systemd_escape_path("a-b c/d.e"), "a\\x2db\\x20c-d.e");
        assert_eq!(systemd_escape_path(".hidden"), "\\x2ehidden");
        // Where systemd-escape is installed, it is the reference.
        if let Ok(exe) = which::which("systemd-escape") {
            for s in [
                "vsts.agent.myorg.My Pool.vm-1.service",
                "vsts.agent.o.p%x.ä.service",
                "vsts.agent.o.p.a_b:c.service",
            ] {
                let out = std::process::Command::new(&exe)
                    .args(["--path", s])
                    .output()
                    .unwrap();
                let expected = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                assert_eq!(systemd_escape_path(s), expected, "{s}");
            }
        }
    }

    #[test]
    fn only_agent_units_are_shown() {
        assert!(is_agent_unit_name("vsts.agent.o.p.a.service"));
        assert!(!is_agent_unit_name("sshd.service"));
        assert!(!is_agent_unit_name("vsts.agent.../../etc/x.service"));
        assert!(!is_agent_unit_name("vsts.agent.a b.service"));
    }

    #[test]
    fn rendered_unit_matches_the_template_and_refuses_injection() {
        let u = render_agent_unit(
            Path::new("/opt/a"),
            "azpagent",
            "Azure Pipelines Agent (o.p.a)",
        )
        .unwrap();
        assert!(u.contains("ExecStart=/opt/a/runsvc.sh\nUser=azpagent\nWorkingDirectory=/opt/a\n"));
        assert!(u.contains("KillMode=process"));
        let e = render_agent_unit(
            Path::new("/opt/a"),
            "azpagent",
            "Azure Pipelines Agent (o.Default\n[Service]\nExecStartPre=+/bin/sh.a)",
        )
        .unwrap_err();
        assert!(matches!(e, ServiceError::Unsafe { .. }));
        let u = render_agent_unit(Path::new("/opt/a"), "azpagent", "100% (o.p.a)").unwrap();
        assert!(u.contains("Description=100%% (o.p.a)\n"));
    }

    #[test]
    fn a_unit_of_another_agent_dir_is_foreign() {
        let p = Path::new("/etc/systemd/system/x.service");
        assert!(
            foreign(
                p,
                "[Service]\nWorkingDirectory=/opt/other\n",
                Path::new("/opt/a")
            )
            .is_err()
        );
        assert!(
            foreign(
                p,
                "[Service]\nWorkingDirectory=/opt/a\n",
                Path::new("/opt/a")
            )
            .is_ok()
        );
        assert!(
            foreign(p, "[Serv", Path::new("/opt/a")).is_ok(),
            "damaged: ours to rewrite"
        );
    }
}
