//! Installing and starting the agent's service.
//!
//! Linux: on the run that extracted the package, the agent's own generated `svc.sh`, as root from
//! the agent root — `svc.sh install <user>` (which writes and enables the systemd unit and `.service`
//! but does not start it), then `svc.sh start` (`agent.md` §5.1); on later runs root does that work
//! itself ([`unit`]), because by then pipeline jobs may have rewritten svc.sh. Windows:
//! `config.cmd --runAsService` installs and starts the service during configuration (§5.2), so there
//! is no separate step. The plan is computed from an [`Os`] so both are tested on Linux.
//! [`systemctl`] talks to systemd; [`boot`] is the unit that runs `reconcile` at every boot.

pub mod boot;
pub mod systemctl;
pub mod unit;

use std::path::Path;
use std::time::Duration;

use crate::os::{Family, Os};
use crate::process::{self, Child};
use crate::secret::Masker;

pub use boot::{boot_unit_name, render_boot_unit};
pub use systemctl::{Systemctl, UNIT_DIR_ENV, UnitState, systemd_available, unit_dir};
pub use unit::{
    agent_unit_name, is_agent_unit_name, native_install, native_uninstall, render_agent_unit,
    systemd_escape_path,
};

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
    let dir = crate::agent::AgentDir::new(root, os);
    if fresh {
        let steps = plan(os, &user.name, dir.service_name().is_some());
        return install_and_start(root, &steps, masker, no_block_start).await;
    }
    let sc = Systemctl::require()?;
    let pool = agent.pool_name.clone().unwrap_or_default();
    let ready = ensure_unit(env, &sc, &dir, user, agent, &pool).await?;
    if no_block_start {
        sc.run(&["start", "--no-block", &ready.unit]).await
    } else {
        sc.run(&["start", &ready.unit]).await
    }
}

/// The agent's unit after [`ensure_unit`], and what it took.
#[derive(Debug)]
pub struct ReadyUnit {
    pub unit: String,
    pub reinstalled: bool,
    pub enabled_now: bool,
    pub active: bool,
}

/// Makes sure the agent's unit exists (written natively if it is gone or was never installed) and
/// is enabled. Starting it is the caller's choice.
pub async fn ensure_unit(
    env: &crate::env::Env,
    sc: &Systemctl,
    dir: &crate::agent::AgentDir,
    user: &process::RunAs,
    agent: &crate::agent::AgentSettings,
    pool: &str,
) -> Result<ReadyUnit, ServiceError> {
    let existing = match dir.service_name() {
        Some(u) if sc.state(&u).await?.exists => Some(u),
        _ => None,
    };
    let reinstalled = existing.is_none();
    let unit = match existing {
        Some(u) => u,
        None => {
            native_install(
                env,
                &dir.root,
                user,
                &agent.server_url,
                pool,
                &agent.agent_name,
            )
            .await?
        }
    };
    let state = sc.state(&unit).await?;
    if !state.enabled {
        sc.run(&["enable", &unit]).await?;
    }
    Ok(ReadyUnit {
        unit,
        reinstalled,
        enabled_now: !state.enabled,
        active: state.active,
    })
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
