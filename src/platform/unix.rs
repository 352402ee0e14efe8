//! Unix: uids, process groups, `access(2)`, SIGTERM/SIGINT.

use std::path::Path;

use super::Account;

pub fn current_account() -> Account {
    let uid = nix::unistd::geteuid();
    let user = nix::unistd::User::from_uid(uid).ok().flatten();
    Account {
        name: user.as_ref().map(|u| u.name.clone()).unwrap_or_default(),
        id: uid.as_raw(),
        home: user.map(|u| u.dir),
        privileged: uid.is_root(),
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// Whether this account may create entries in `dir`.
pub fn writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// The owner's uid of a path (not following a link).
pub fn owner_id(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs_err::symlink_metadata(path).ok().map(|m| m.uid())
}

/// A child and everything it starts: its own process group.
#[derive(Debug)]
pub struct ProcessTree {
    pgid: i32,
}

impl ProcessTree {
    /// Before the child starts: a process group of its own, and the account to run as.
    pub fn prepare(cmd: &mut std::process::Command, run_as: Option<(u32, u32)>) {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        if let Some((uid, gid)) = run_as {
            // std drops root's supplementary groups before setuid.
            cmd.gid(gid);
            cmd.uid(uid);
        }
    }

    /// After it started: the group is the child's pid.
    pub fn adopt(pid: u32) -> std::io::Result<Self> {
        Ok(Self { pgid: pid as i32 })
    }

    /// SIGINT to the whole group: what Ctrl-C sends, and what the agent's own service host turns a
    /// stop into (the listener finishes cleanly on it).
    pub fn interrupt(&self) {
        use nix::sys::signal::{Signal, killpg};
        let _ = killpg(nix::unistd::Pid::from_raw(self.pgid), Signal::SIGINT);
    }

    /// No process is left in the group (what the child started has ended too). Members that are
    /// our own children and have ended are reaped first: as a container's PID 1 we inherit the
    /// group's orphans, which would otherwise stay as zombies, members for ever.
    pub fn is_empty(&self) -> bool {
        use nix::errno::Errno;
        use nix::sys::signal::killpg;
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        let group = nix::unistd::Pid::from_raw(-self.pgid);
        while let Ok(status) = waitpid(group, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        matches!(
            killpg(nix::unistd::Pid::from_raw(self.pgid), None),
            Err(Errno::ESRCH)
        )
    }

    /// SIGTERM (or SIGKILL when `hard`) to the whole group.
    pub fn kill(&self, hard: bool) {
        use nix::sys::signal::{Signal, killpg};
        let sig = if hard {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        let _ = killpg(nix::unistd::Pid::from_raw(self.pgid), sig);
    }
}

/// Waits for SIGTERM or SIGINT and returns its number.
pub async fn wait_for_stop_signal() -> i32 {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // No signal handling: never resolve, the command runs to its end.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => super::SIGTERM,
        _ = int.recv() => super::SIGINT,
    }
}
