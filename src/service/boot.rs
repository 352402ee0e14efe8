//! The boot unit: a systemd oneshot that runs `agent-bootstrap reconcile` at every boot, after the
//! network is online and before the agent's own unit.

use std::path::Path;
use std::time::Duration;

use super::{ServiceError, exec_word, unit_value};

/// `TimeoutStartSec=` of the boot unit. `reconcile` plans its waits (lock, network, configure) to
/// end before it, so systemd never has to kill it half-way (`commands::reconcile::DEADLINE`).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The boot unit's name for an agent dir, e.g. `agent-bootstrap-opt-azure-pipelines-agent-1a2b3c4d.service`.
pub fn boot_unit_name(agent_dir: &Path) -> String {
    format!("agent-bootstrap-{}.service", crate::state::key(agent_dir))
}

/// What both of agent-bootstrap's own units say about where they act, checked and escaped once:
/// the agent dir (as a unit value and as an `ExecStart=` word), the binary, the state directory.
struct Words {
    dir: String,
    qdir: String,
    exe: String,
    env: String,
}

fn words(exe: &Path, agent_dir: &Path, state_dir: &Path) -> Result<Words, ServiceError> {
    let dir = agent_dir.display().to_string();
    Ok(Words {
        qdir: exec_word("the agent dir", &dir)?,
        dir: unit_value("the agent dir", &dir)?,
        exe: exec_word("the agent-bootstrap binary", &exe.display().to_string())?,
        env: exec_word(
            "the state directory",
            &format!("AGENT_BOOTSTRAP_STATE_DIR={}", state_dir.display()),
        )?,
    })
}

/// The oneshot unit that runs `reconcile` at boot: after the network is online, before the
/// agent's own unit, so a clone never starts the original's registration.
pub fn render_boot_unit(
    exe: &Path,
    agent_dir: &Path,
    state_dir: &Path,
    agent_unit: Option<&str>,
) -> Result<String, ServiceError> {
    let before = match agent_unit {
        Some(u) => format!("Before={}\n", unit_value("the agent's unit name", u)?),
        None => String::new(),
    };
    let Words {
        dir,
        qdir,
        exe,
        env,
    } = words(exe, agent_dir, state_dir)?;
    Ok(format!(
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
         Environment={env}\n\
         ExecStart={exe} reconcile --agent-dir {qdir}\n\
         TimeoutStartSec={timeout}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        timeout = BOOT_TIMEOUT.as_secs(),
    ))
}

/// The watcher's unit name for an agent dir (`--scale-in-drain`).
pub fn watch_unit_name(agent_dir: &Path) -> String {
    format!(
        "agent-bootstrap-watch-{}.service",
        crate::state::key(agent_dir)
    )
}

/// The long-running unit that runs `watch` (Azure Scheduled Events), restarted if it ever ends.
/// Ordered after the boot unit, which may re-register the agent first.
pub fn render_watch_unit(
    exe: &Path,
    agent_dir: &Path,
    state_dir: &Path,
    boot_unit: Option<&str>,
) -> Result<String, ServiceError> {
    let after = match boot_unit {
        Some(u) => format!(" {}", unit_value("the boot unit's name", u)?),
        None => String::new(),
    };
    let Words {
        dir,
        qdir,
        exe,
        env,
    } = words(exe, agent_dir, state_dir)?;
    Ok(format!(
        "# Written by agent-bootstrap install --scale-in-drain; removed by agent-bootstrap remove.\n\
         [Unit]\n\
         Description=agent-bootstrap: unregister the Azure Pipelines agent in {dir} before scale-in or eviction\n\
         Wants=network-online.target\n\
         After=network-online.target{after}\n\
         ConditionPathExists={dir}\n\
         \n\
         [Service]\n\
         Type=simple\n\
         Environment={env}\n\
         ExecStart={exe} watch --agent-dir {qdir}\n\
         Restart=always\n\
         RestartSec=5\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
    ))
}

#[cfg(test)]
mod boot_tests {
    use super::*;

    #[test]
    fn watch_unit_runs_watch_and_restarts() {
        let u = render_watch_unit(
            Path::new("/usr/local/bin/agent-bootstrap"),
            Path::new("/opt/a b"),
            Path::new("/var/lib/agent-bootstrap"),
            Some("agent-bootstrap-opt-a-1.service"),
        )
        .unwrap();
        assert!(
            u.contains("ExecStart=/usr/local/bin/agent-bootstrap watch --agent-dir \"/opt/a b\"\n"),
            "{u}"
        );
        assert!(
            u.contains("After=network-online.target agent-bootstrap-opt-a-1.service\n"),
            "{u}"
        );
        assert!(u.contains("Restart=always\n"));
        assert!(u.contains("Type=simple\n"));
        assert!(watch_unit_name(Path::new("/opt/a")).starts_with("agent-bootstrap-watch-opt-a-"));
    }

    #[test]
    fn boot_unit_orders_after_network_and_before_the_agent() {
        let u = render_boot_unit(
            Path::new("/usr/local/bin/agent-bootstrap"),
            Path::new("/opt/azure-pipelines-agent"),
            Path::new("/var/lib/agent-bootstrap"),
            Some("vsts.agent.o.p.a.service"),
        )
        .unwrap();
        assert!(u.contains("After=network-online.target\n"));
        assert!(u.contains("Wants=network-online.target\n"));
        assert!(u.contains("Before=vsts.agent.o.p.a.service\n"));
        assert!(u.contains("Type=oneshot\n"));
        assert!(u.contains(
            "ExecStart=/usr/local/bin/agent-bootstrap reconcile --agent-dir /opt/azure-pipelines-agent\n"
        ));
        assert!(u.contains("Environment=AGENT_BOOTSTRAP_STATE_DIR=/var/lib/agent-bootstrap\n"));
        assert!(u.contains("TimeoutStartSec=900\n"));
        assert!(u.contains("WantedBy=multi-user.target"));
    }

    #[test]
    fn paths_with_spaces_and_specifiers_are_escaped() {
        let u = render_boot_unit(
            Path::new("/opt/my tools/agent-bootstrap"),
            Path::new("/opt/a"),
            Path::new("/var/lib/state 100%"),
            None,
        )
        .unwrap();
        assert!(
            u.contains("ExecStart=\"/opt/my tools/agent-bootstrap\" reconcile"),
            "{u}"
        );
        assert!(
            u.contains("Environment=\"AGENT_BOOTSTRAP_STATE_DIR=/var/lib/state 100%%\"\n"),
            "{u}"
        );
        assert!(
            render_boot_unit(
                Path::new("/a\nb"),
                Path::new("/opt/a"),
                Path::new("/s"),
                None
            )
            .is_err()
        );
    }

    #[test]
    fn unit_names_are_per_agent_dir() {
        let a = boot_unit_name(Path::new("/opt/a"));
        assert!(
            a.starts_with("agent-bootstrap-opt-a-") && a.ends_with(".service"),
            "{a}"
        );
        assert_ne!(a, boot_unit_name(Path::new("/opt/b")));
    }
}
