//! Stopping cleanly when systemd or a person says stop (SIGTERM, SIGINT).
//!
//! A boot that takes too long gets SIGTERM from systemd; an operator presses Ctrl-C. Either way the
//! run must end within seconds and leave nothing half-done: the agent's scripts (with everything
//! they started) are stopped, and staging directories and partial downloads are removed.
//!
//! Signals are process-wide, so is this module's state: the process groups of running children
//! (registered by [`crate::process`]), the temporary paths in flight ([`Debris`], owned by the
//! package code), and a flag long loops check ([`requested`]). `main` waits for a signal next to the
//! command; when one arrives it calls [`request`], drops the command, lets blocking threads finish
//! and calls [`sweep`]. Paths that a `kill -9` leaves behind are found by the next run instead
//! (`package::remove_stale`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::platform::ProcessTree;

static SIGNAL: AtomicI32 = AtomicI32::new(0);
static NEXT: AtomicU64 = AtomicU64::new(0);
static GROUPS: Mutex<Vec<(u64, Arc<ProcessTree>)>> = Mutex::new(Vec::new());
static DEBRIS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// How long children get between SIGTERM and SIGKILL when the run is stopped.
pub const CHILD_GRACE: Duration = Duration::from_millis(1500);

/// Whether a stop was requested (long loops check this between steps).
pub fn requested() -> bool {
    SIGNAL.load(Ordering::SeqCst) != 0
}

/// The signal that stopped the run, if any.
pub fn signal() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        n => Some(n),
    }
}

/// Records the stop and stops every running child's process tree: SIGTERM, then SIGKILL to
/// whatever is left after [`CHILD_GRACE`] (on a thread, so the caller is not held up).
pub fn request(signal: i32) {
    SIGNAL.store(signal, Ordering::SeqCst);
    let trees: Vec<Arc<ProcessTree>> = GROUPS
        .lock()
        .map(|g| g.iter().map(|(_, t)| t.clone()).collect())
        .unwrap_or_default();
    if trees.is_empty() {
        return;
    }
    for t in &trees {
        t.kill(false);
    }
    std::thread::spawn(move || {
        std::thread::sleep(CHILD_GRACE);
        for t in trees {
            t.kill(true);
        }
    });
}

/// The run is ending at once (a bug): every running child's process tree is killed and every
/// registered partial path removed, without waiting and without blocking on a lock the failing
/// thread may hold.
pub fn abandon() -> Vec<PathBuf> {
    if let Ok(groups) = GROUPS.try_lock() {
        for (_, tree) in groups.iter() {
            tree.kill(true);
        }
    }
    let paths: Vec<PathBuf> = DEBRIS
        .try_lock()
        .map(|mut d| std::mem::take(&mut *d).into_iter().collect())
        .unwrap_or_default();
    paths.into_iter().filter(|p| remove_path(p)).collect()
}

/// A child's process tree, registered while it runs.
pub struct ChildGroup(u64);

impl ChildGroup {
    pub fn register(tree: Arc<ProcessTree>) -> Self {
        let id = NEXT.fetch_add(1, Ordering::SeqCst);
        // A stop that arrived while the child was starting.
        if requested() {
            tree.kill(false);
        }
        if let Ok(mut g) = GROUPS.lock() {
            g.push((id, tree));
        }
        Self(id)
    }
}

impl Drop for ChildGroup {
    fn drop(&mut self) {
        if let Ok(mut g) = GROUPS.lock() {
            g.retain(|(id, _)| *id != self.0);
        }
    }
}

/// A temporary path (a staging directory, a partial download) that must not outlive the run.
///
/// Dropped without [`Debris::keep`], it is deleted. If that fails (a thread was still writing
/// into it), it stays registered and [`sweep`] deletes it once the threads have ended.
#[derive(Debug)]
pub struct Debris {
    path: Option<PathBuf>,
}

impl Debris {
    pub fn track(path: &Path) -> Self {
        if let Ok(mut d) = DEBRIS.lock() {
            d.insert(path.to_owned());
        }
        Self {
            path: Some(path.to_owned()),
        }
    }

    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("debris path is set until kept")
    }

    /// The path became part of the result (moved into place, kept in the cache): forget it.
    pub fn keep(mut self) {
        if let Some(p) = self.path.take() {
            untrack(&p);
        }
    }
}

impl Drop for Debris {
    fn drop(&mut self) {
        if let Some(p) = self.path.take()
            && remove_path(&p)
        {
            untrack(&p);
        }
    }
}

fn untrack(path: &Path) {
    if let Ok(mut d) = DEBRIS.lock() {
        d.remove(path);
    }
}

/// Deletes a file or a directory tree without following links; true when nothing is left. A tree
/// something else is still writing into (a job's process inside an old agent dir) is tried again a
/// few times.
pub fn remove_path(path: &Path) -> bool {
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let result = match fs_err::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(_) => return false,
            // std's remove_dir_all does not follow links (CVE-2022-21658).
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
        };
        if result.is_ok() || !path.exists() {
            return true;
        }
    }
    false
}

/// Deletes every registered path that is still there; returns what it removed.
pub fn sweep() -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = DEBRIS
        .lock()
        .map(|mut d| std::mem::take(&mut *d).into_iter().collect())
        .unwrap_or_default();
    paths.into_iter().filter(|p| remove_path(p)).collect()
}

/// Stop signals, counted, for commands that handle them themselves (`run` drains the agent,
/// `watch` finishes a drain): the receiver changes on every SIGTERM/SIGINT and holds how many
/// arrived and the last one's number. A background task listens for the rest of the run.
pub fn listen() -> tokio::sync::watch::Receiver<(u32, i32)> {
    let (tx, rx) = tokio::sync::watch::channel((0u32, 0i32));
    tokio::spawn(async move {
        loop {
            let signal = wait_for_signal().await;
            tx.send_modify(|(count, last)| {
                *count += 1;
                *last = signal;
            });
        }
    });
    rx
}

/// The name of a stop signal, for messages.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// Waits for SIGTERM or SIGINT (Windows: the console events that mean the same) and returns its
/// number.
pub async fn wait_for_signal() -> i32 {
    crate::platform::wait_for_stop_signal().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debris_is_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("staging");
        std::fs::create_dir_all(a.join("bin")).unwrap();
        std::fs::write(a.join("bin/x"), "x").unwrap();
        drop(Debris::track(&a));
        assert!(!a.exists());

        let b = dir.path().join("kept");
        std::fs::write(&b, "x").unwrap();
        Debris::track(&b).keep();
        assert!(b.exists());
        assert!(!sweep().contains(&b));
    }

    #[cfg(unix)]
    #[test]
    fn removal_never_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("keep-me"), "x").unwrap();
        let staging = dir.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        std::os::unix::fs::symlink(&victim, staging.join("link")).unwrap();
        assert!(remove_path(&staging));
        assert!(victim.join("keep-me").exists());
    }
}
