//! One agent-bootstrap at a time per agent dir.
//!
//! cloud-init's `install` and the boot unit's `reconcile` can start together on a fresh instance;
//! both would run the agent's configuration. An exclusive `flock` serializes them: the second waits
//! (bounded) and then looks at the state afresh, finding the first one's result. The lock file sits
//! beside the saved settings (root-owned), not in the agent dir: that dir may not exist yet and the
//! agent user can write to it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("could not open the lock file '{path}'")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another agent-bootstrap run holds '{path}' and did not finish within {}s; try again later",
        waited.as_secs()
    )]
    Busy { path: PathBuf, waited: Duration },
}

/// Held while alive: the lock is released when the file is closed.
#[derive(Debug)]
pub struct AgentLock {
    _file: std::fs::File,
}

pub fn lock_path(state_dir: &Path, agent_dir: &Path) -> PathBuf {
    state_dir
        .join("locks")
        .join(format!("{}.lock", crate::state::key(agent_dir)))
}

/// Takes the lock, waiting up to `wait` (real time: this is a local wait, not a retry policy).
pub async fn acquire(
    state_dir: &Path,
    agent_dir: &Path,
    wait: Duration,
) -> Result<AgentLock, LockError> {
    let path = lock_path(state_dir, agent_dir);
    let open_err = |source| LockError::Open {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        crate::fsx::create_private_dir_all(dir).map_err(open_err)?;
    }
    let file = fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(open_err)?
        .into_parts()
        .0;
    let start = Instant::now();
    let mut told = false;
    loop {
        // flock(2) on Unix, LockFileEx on Windows.
        match file.try_lock() {
            Ok(()) => {
                if told {
                    tracing::info!(waited_s = start.elapsed().as_secs(), "lock acquired");
                }
                // What a killed holder's atomic writes of saved settings left.
                if let Some(dir) = crate::state::file_for(state_dir, agent_dir).parent() {
                    crate::fsx::remove_dead_temps(dir, None);
                }
                return Ok(AgentLock { _file: file });
            }
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(LockError::Open { path, source });
            }
        }
        if start.elapsed() >= wait {
            return Err(LockError::Busy { path, waited: wait });
        }
        if !told {
            tracing::info!(
                lock = %path.display(),
                "another agent-bootstrap run is working on this agent; waiting for it"
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_holder_waits_then_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Path::new("/opt/agent");
        let first = acquire(dir.path(), agent, Duration::from_secs(1))
            .await
            .unwrap();
        let e = acquire(dir.path(), agent, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, LockError::Busy { .. }));
        drop(first);
        acquire(dir.path(), agent, Duration::from_secs(1))
            .await
            .unwrap();
    }
}
