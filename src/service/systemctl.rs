//! Asking and telling systemd, through `systemctl` on `PATH` (the simulator's recorder in tests).

use std::path::PathBuf;
use std::time::Duration;

use super::ServiceError;
use crate::env::Env;
use crate::process::{self, Child};
use crate::secret::Masker;

/// Where unit files go; `AGENT_BOOTSTRAP_UNIT_DIR` overrides it (tests, image builds) and then
/// also means "systemd is available".
pub const UNIT_DIR_ENV: &str = "AGENT_BOOTSTRAP_UNIT_DIR";
const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";

/// systemd is managing this machine, or a unit dir was named explicitly.
pub fn systemd_available(env: &Env) -> bool {
    env.var(UNIT_DIR_ENV).is_some() || env.systemd_running()
}

pub fn unit_dir(env: &Env) -> PathBuf {
    env.var(UNIT_DIR_ENV)
        .map_or_else(|| PathBuf::from(DEFAULT_UNIT_DIR), PathBuf::from)
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
    program: PathBuf,
    env: Env,
}

impl Systemctl {
    pub fn find(env: &Env) -> Option<Self> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        which::which_in("systemctl", env.var("PATH"), cwd)
            .ok()
            .map(|program| Self {
                program,
                env: env.clone(),
            })
    }

    /// [`Systemctl::find`], or an error saying it is missing.
    pub fn require(env: &Env) -> Result<Self, ServiceError> {
        Self::find(env).ok_or(ServiceError::NoSystemctl)
    }

    /// Runs `systemctl ARGS`. Its stderr is logged at debug only: it is commentary on success
    /// ("Created symlink …", "Failed to get unit file state" for a unit not yet written), and on
    /// failure its last line is in the error.
    async fn call(&self, args: &[&str], probe: bool) -> Result<process::Finished, ServiceError> {
        let label = format!("systemctl {}", args.join(" "));
        let child = Child::new(label.clone(), &self.program, &self.env)
            .args(args.iter().copied())
            .timeout(Duration::from_secs(90))
            .quiet_stderr();
        let child = if probe { child.probe() } else { child };
        process::run_async(child, Masker::new())
            .await
            .map_err(|source| ServiceError::Run {
                step: label,
                source,
            })
    }

    /// Runs a state-changing command; failure is an error.
    pub async fn run(&self, args: &[&str]) -> Result<(), ServiceError> {
        let done = self.call(args, false).await?;
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
        let enabled = self.call(&["is-enabled", unit], true).await?;
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
        let active = self.call(&["is-active", unit], true).await?;
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
