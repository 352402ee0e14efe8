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

/// `svc.sh stop` then `svc.sh uninstall` (a failed stop is fine: the unit may be stopped already).
pub async fn uninstall(root: &Path) -> Result<(), ServiceError> {
    for arg in ["stop", "uninstall"] {
        let step = Step {
            label: format!("svc.sh {arg}"),
            program: "./svc.sh".into(),
            args: vec![arg.into()],
        };
        let done = run_step(root, &step, &Masker::new()).await?;
        if !done.success() && arg == "uninstall" {
            return Err(ServiceError::Failed {
                step: step.label,
                code: done.code,
                line: done.error_line().unwrap_or_default(),
            });
        }
    }
    Ok(())
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
