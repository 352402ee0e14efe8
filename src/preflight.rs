//! What the machine's file systems must allow before an install changes anything, checked first
//! so a locked-down image gets one clear answer instead of a failure halfway through.
//!
//! Hardened and container images mount things in ways an install cannot work around: a
//! read-only root file system (Kubernetes `readOnlyRootFilesystem`, immutable images) where the
//! agent dir, root's state or the package cache would go, or an agent dir on a file system
//! mounted `noexec` (a hardened `/opt` or `/var`), where the agent's own programs (`config.sh`,
//! `run.sh`, `bin/Agent.Listener`) cannot start: the download and the registration would succeed
//! and `config.sh` would then fail with "Permission denied". Each is found here from the mount's
//! flags (`statvfs`) of the nearest existing directory, and named with its mount point and the
//! setting that moves the directory elsewhere. Read-only checks (a dry run and `doctor` make
//! them too); nothing is created.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "{what} {} is on a read-only file system (mounted at {})\nhint: {fix}",
        path.display(),
        mount.display()
    )]
    ReadOnly {
        what: &'static str,
        path: PathBuf,
        mount: PathBuf,
        fix: String,
    },
    #[error(
        "{what} {} is on a file system mounted noexec (at {}): the agent runs its programs \
         (config.sh, run.sh, bin/Agent.Listener) from there\nhint: {fix}",
        path.display(),
        mount.display()
    )]
    NoExec {
        what: &'static str,
        path: PathBuf,
        mount: PathBuf,
        fix: String,
    },
    #[error(
        "{what} {} is on a full file system ({} has {} KiB free, {} KiB needed): nothing was \
         changed\nhint: free space on {}, or {fix}",
        path.display(),
        mount.display(),
        free / 1024,
        need / 1024,
        mount.display()
    )]
    NoSpace {
        what: &'static str,
        path: PathBuf,
        mount: PathBuf,
        free: u64,
        need: u64,
        fix: String,
    },
}

impl PreflightError {
    /// A full disk (exit 5, as a package that does not fit) rather than a setting to change.
    pub fn is_no_space(&self) -> bool {
        matches!(self, Self::NoSpace { .. })
    }
}

/// What root's state needs free before an install starts: its settings are written after the
/// agent is registered, and a disk full then would leave a registration nothing records.
pub const STATE_ROOM: u64 = 1024 * 1024;

/// What the system trust store needs free where the certificate goes and where the bundle is
/// rebuilt: the distribution's tool writes the whole bundle anew (Debian's is about 220 KiB;
/// `update-ca-trust` writes a handful of bundles of that size).
pub const TRUST_ROOM: u64 = 2 * 1024 * 1024;

/// What the unit directory needs free for the agent's unit, the boot unit and the watcher.
pub const UNIT_ROOM: u64 = 256 * 1024;

/// A directory an install writes to, and what it needs of its file system.
#[derive(Debug, Clone)]
pub struct Place {
    /// How a user knows it ("the agent dir (--agent-dir)").
    pub what: &'static str,
    pub path: PathBuf,
    /// Programs run from it (the agent dir).
    pub exec: bool,
    /// Bytes that must be free there (the package's own need is checked when its size is known).
    pub room: u64,
    /// How to put it elsewhere.
    pub fix: String,
}

/// The flags of the file system `path` would be created on (its nearest existing ancestor's),
/// and that file system's mount point. `None` where that cannot be told (not Unix, no ancestor).
#[cfg(unix)]
fn mount_of(path: &Path) -> Option<(PathBuf, nix::sys::statvfs::FsFlags)> {
    use std::os::unix::fs::MetadataExt;
    let existing = path.ancestors().find(|p| p.is_dir())?;
    let existing = fs_err::canonicalize(existing).ok()?;
    let flags = nix::sys::statvfs::statvfs(&existing).ok()?.flags();
    let dev = fs_err::metadata(&existing).ok()?.dev();
    // The mount point: the highest ancestor still on the same device.
    let mut mount = existing.clone();
    for a in existing.ancestors().skip(1) {
        match fs_err::metadata(a) {
            Ok(m) if m.dev() == dev => mount = a.to_owned(),
            _ => break,
        }
    }
    Some((mount, flags))
}

/// The file system `path` is (or would be created) on: its mount point and the bytes free to an
/// unprivileged writer (`f_bavail`; root may have a little more). `None` where that cannot be told.
pub fn free_space(path: &Path) -> Option<(PathBuf, u64)> {
    #[cfg(unix)]
    {
        let (mount, _) = mount_of(path)?;
        let existing = path.ancestors().find(|p| p.is_dir())?;
        let st = nix::sys::statvfs::statvfs(existing).ok()?;
        #[allow(clippy::useless_conversion)] // the field types differ between targets
        let free = u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
        Some((mount, free))
    }
    #[cfg(windows)]
    {
        let existing = path.ancestors().find(|p| p.is_dir())?;
        let free = crate::platform::free_bytes(existing)?;
        let volume = crate::platform::volume_of(existing).unwrap_or_else(|| existing.to_owned());
        Some((volume, free))
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = path;
        None
    }
}

/// Checks each place; the first that cannot work is the error.
pub fn check(places: &[Place]) -> Result<(), PreflightError> {
    #[cfg(unix)]
    for p in places {
        use nix::sys::statvfs::FsFlags;
        let Some((mount, flags)) = mount_of(&p.path) else {
            continue;
        };
        if flags.contains(FsFlags::ST_RDONLY) {
            return Err(PreflightError::ReadOnly {
                what: p.what,
                path: p.path.clone(),
                mount,
                fix: p.fix.clone(),
            });
        }
        if p.exec && flags.contains(FsFlags::ST_NOEXEC) {
            return Err(PreflightError::NoExec {
                what: p.what,
                path: p.path.clone(),
                mount,
                fix: p.fix.clone(),
            });
        }
        check_room(p)?;
    }
    // Windows: no read-only or noexec flags to read; the room is checked all the same.
    #[cfg(not(unix))]
    places.iter().try_for_each(check_room)?;
    Ok(())
}

/// Checks only that each place has its room free (a place whose other failures the caller's own
/// step reports better, such as a read-only trust store).
pub fn check_space(places: &[Place]) -> Result<(), PreflightError> {
    places.iter().try_for_each(check_room)
}

fn check_room(p: &Place) -> Result<(), PreflightError> {
    if p.room > 0
        && let Some((mount, free)) = free_space(&p.path)
        && free < p.room
    {
        return Err(PreflightError::NoSpace {
            what: p.what,
            path: p.path.clone(),
            mount,
            free,
            need: p.room,
            fix: p.fix.clone(),
        });
    }
    Ok(())
}

/// The places an install writes to: the agent dir (programs run from it), root's state and the
/// package cache.
pub fn install_places(agent_dir: &Path, state_dir: &Path, cache_dir: &Path) -> Vec<Place> {
    vec![
        Place {
            what: "the agent dir",
            path: agent_dir.to_owned(),
            exec: true,
            room: 0,
            fix: "pass --agent-dir on a writable file system mounted with exec (a volume in a \
                  container), or remount it"
                .into(),
        },
        Place {
            what: "the state dir",
            path: state_dir.to_owned(),
            exec: false,
            room: STATE_ROOM,
            fix: format!(
                "mount a writable volume there, or set {} to a writable directory",
                crate::env::STATE_DIR_ENV
            ),
        },
        Place {
            what: "the package cache",
            path: cache_dir.to_owned(),
            exec: false,
            room: 0,
            fix: format!(
                "mount a writable volume there, or set {} to a writable directory",
                crate::env::CACHE_DIR_ENV
            ),
        },
    ]
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn the_mount_point_of_a_missing_path_is_its_nearest_existing_ancestors() {
        let (mount, _) = mount_of(Path::new("/proc/no/such/dir")).unwrap();
        assert_eq!(mount, Path::new("/proc"));
        let (mount, _) = mount_of(Path::new("/no-such-dir-here")).unwrap();
        assert_eq!(mount, Path::new("/"));
    }
}

#[cfg(test)]
mod room_tests {
    use super::*;

    /// Linux (statvfs) and Windows (`GetDiskFreeSpaceExW`, run under Wine in CI) alike.
    #[test]
    fn free_space_is_read_and_a_shortfall_names_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not/yet");
        let (mount, free) = free_space(&missing).expect("free space");
        assert!(free > 0 && !mount.as_os_str().is_empty());
        let place = Place {
            what: "the state dir",
            path: missing.clone(),
            exec: false,
            room: u64::MAX,
            fix: "set X".into(),
        };
        let e = check(std::slice::from_ref(&place)).unwrap_err();
        assert!(e.is_no_space());
        let text = e.to_string();
        assert!(
            text.contains(&missing.display().to_string())
                && text.contains(&mount.display().to_string())
                && text.contains("KiB free"),
            "{text}"
        );
        assert!(check_space(&[Place { room: 1, ..place }]).is_ok());
    }
}
