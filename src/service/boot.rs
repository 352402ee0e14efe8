//! The boot unit: a systemd oneshot that runs `agent-bootstrap reconcile` at every boot, after the
//! network is online and before the agent's own unit.

use std::path::Path;

/// The boot unit's name for an agent dir, e.g. `agent-bootstrap-opt-azure-pipelines-agent-1a2b3c4d.service`.
pub fn boot_unit_name(agent_dir: &Path) -> String {
    format!("agent-bootstrap-{}.service", crate::state::key(agent_dir))
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
        let a = boot_unit_name(Path::new("/opt/a"));
        assert!(
            a.starts_with("agent-bootstrap-opt-a-") && a.ends_with(".service"),
            "{a}"
        );
        assert_ne!(a, boot_unit_name(Path::new("/opt/b")));
    }
}
