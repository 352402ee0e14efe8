//! SELinux labels for what systemd must read and run, as the agent's own `svc.sh` sets them.
//!
//! On RHEL-family images with SELinux enabled, systemd (`init_t`) runs a service's program only
//! when its label allows it: `runsvc.sh` in an agent dir outside the usual paths (a home directory:
//! `user_home_t`; a data disk: `default_t`) is refused and the agent's service never starts. The
//! agent's `src/Misc/layoutbin/systemd.svc.sh.template` (`install`, microsoft/azure-pipelines-agent
//! at 42bde98) therefore labels, when `sestatus` says SELinux is enabled, the unit file
//! `system_u:object_r:systemd_unit_file_t:s0` and `runsvc.sh` `system_u:object_r:usr_t:s0` with
//! `chcon`. We never run svc.sh (the agent user can rewrite it), so root does the same here,
//! enforcing or permissive alike (a permissive machine switched to enforcing later keeps working).
//!
//! Not `restorecon`: it gives a file the policy's default for its *path*, which for an agent dir
//! outside `/opt` is exactly the label that fails. `chcon -h` changes the file's own label and never
//! follows a link, so the agent user's `runsvc.sh` (its last path component the only one that
//! account controls, see `crate::fsx`'s location rules) cannot steer root's relabel elsewhere.

use std::path::Path;
use std::time::Duration;

use super::ServiceError;
use crate::env::Env;
use crate::process::{self, Child};
use crate::secret::Masker;

/// The label of a unit file (`systemd.svc.sh.template`).
pub const UNIT_FILE: &str = "system_u:object_r:systemd_unit_file_t:s0";
/// The label of `runsvc.sh` (`systemd.svc.sh.template`).
pub const PROGRAM: &str = "system_u:object_r:usr_t:s0";

/// Debug builds only: `enforcing`, `permissive` or `disabled` stands for `/sys/fs/selinux/enforce`,
/// so tests are the same on machines with and without SELinux.
pub const SELINUX_ENV: &str = "AGENT_BOOTSTRAP_TEST_SELINUX";

/// SELinux on this machine: `Some(true)` enforcing, `Some(false)` permissive, `None` disabled.
pub fn mode(env: &Env) -> Option<bool> {
    if cfg!(debug_assertions)
        && let Some(told) = env.var(SELINUX_ENV)
    {
        return match told {
            "enforcing" => Some(true),
            "permissive" => Some(false),
            _ => None,
        };
    }
    crate::host::Facts::current().selinux_enforcing
}

/// Labels `path` with `label` (`chcon -h`) when SELinux is enabled; says so. A failure stops the
/// install when SELinux enforces (systemd would refuse the file) and is a warning otherwise.
pub async fn label(env: &Env, path: &Path, label: &str) -> Result<(), ServiceError> {
    let Some(enforcing) = mode(env) else {
        return Ok(());
    };
    let step = format!("chcon {label} {}", path.display());
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let failure = match which::which_in("chcon", env.var("PATH"), cwd) {
        Err(_) => Some(ServiceError::Failed {
            step: step.clone(),
            code: 127,
            line: "chcon was not found on PATH (coreutils)".into(),
        }),
        Ok(chcon) => {
            let child = Child::new("chcon", chcon, env)
                .args(["-h", label, &*path.to_string_lossy()])
                .timeout(Duration::from_secs(30));
            match process::run_async(child, Masker::new()).await {
                Ok(done) if done.success() => None,
                Ok(done) => Some(ServiceError::Failed {
                    step: step.clone(),
                    code: done.code,
                    line: done.error_line().unwrap_or_default(),
                }),
                Err(source) => Some(ServiceError::Run {
                    step: step.clone(),
                    source,
                }),
            }
        }
    };
    match failure {
        None => {
            tracing::info!(
                path = %path.display(),
                label,
                "SELinux is enabled: labelled for systemd, as the agent's svc.sh does"
            );
            Ok(())
        }
        Some(e) if enforcing => Err(ServiceError::Selinux {
            path: path.to_owned(),
            label: label.to_owned(),
            source: Box::new(e),
        }),
        Some(e) => {
            tracing::warn!(
                path = %path.display(),
                label,
                error = %e,
                "SELinux is permissive: could not label the file for systemd (it would be refused \
                 if SELinux enforced)"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn told(v: &str) -> Env {
        Env::fake(&[(SELINUX_ENV, v)], "h", true)
    }

    #[test]
    fn the_selinux_knob_only_works_in_debug_builds() {
        let real = crate::host::Facts::current().selinux_enforcing;
        let want = |m| if cfg!(debug_assertions) { m } else { real };
        assert_eq!(mode(&told("enforcing")), want(Some(true)));
        assert_eq!(mode(&told("permissive")), want(Some(false)));
        assert_eq!(mode(&told("disabled")), want(None));
    }
}
