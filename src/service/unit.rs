//! The agent's own systemd unit, handled by root without running the agent user's `svc.sh`.
//!
//! After the first install, pipeline jobs (running as the agent user) can rewrite anything in the
//! agent dir, `svc.sh` and its template included. So later runs compute the unit name as the agent
//! does, write the unit from the agent's known template with `User=` the agent user, and touch a
//! unit only if it belongs to this agent dir.

use std::path::Path;
use std::time::Duration;

use super::{ServiceError, Systemctl, unit_dir};
use crate::process::{self, Child};
use crate::secret::Masker;

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
