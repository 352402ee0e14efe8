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

/// Runs the plan as root from the agent root.
pub async fn install_and_start(
    root: &Path,
    steps: &[Step],
    masker: &Masker,
) -> Result<(), ServiceError> {
    if !steps.is_empty() && !root.join("svc.sh").is_file() {
        return Err(ServiceError::NoScript);
    }
    for step in steps {
        let child = Child::new(step.label.clone(), root.join(&step.program))
            .args(step.args.clone())
            .cwd(root)
            .timeout(Duration::from_secs(120));
        let done = process::run_async(child, masker.clone())
            .await
            .map_err(|source| ServiceError::Run {
                step: step.label.clone(),
                source,
            })?;
        if !done.success() {
            return Err(ServiceError::Failed {
                step: step.label.clone(),
                code: done.code,
                line: done.error_line().unwrap_or_default(),
            });
        }
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
