//! File operations root performs next to files another account controls.
//!
//! Pipeline jobs run as the agent user and can rewrite anything in the agent dir: swap a file for a
//! link to `/etc/shadow`, a directory for a link to `/etc`, put a FIFO where a JSON file was. Root
//! reads, stats and changes ownership there only through this module, whose rules are:
//!
//! - reads open with `O_NOFOLLOW | O_NONBLOCK`, require a regular file and cap the size
//!   ([`read_untrusted`]), so a link is not followed and a FIFO cannot block the run;
//! - ownership is changed through directory descriptors, never following a link, children before
//!   their directory, and only inside directories no other account can write ([`give_tree`]), so
//!   nothing can be swapped in while the walk is under way;
//! - an agent dir must sit where only root (or, run without root, the caller) can rename it
//!   ([`check_agent_dir_location`]), so a path root computed keeps naming the same directory.

use std::path::{Path, PathBuf};

#[cfg(unix)]
use nix::errno::Errno;
#[cfg(unix)]
use nix::fcntl::{AtFlags, OFlag, openat};
#[cfg(unix)]
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
#[cfg(unix)]
use std::os::fd::{AsFd, OwnedFd};

/// Opens a file in a directory another account can write without following a link at its last
/// component, and without blocking on a FIFO (Unix: `O_NOFOLLOW | O_NONBLOCK`; Windows: the
/// reparse point itself is opened, not its target).
fn open_untrusted(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits());
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
        options.custom_flags(FILE_FLAG_OPEN_REPARSE_POINT);
    }
    options.open(path)
}

/// Why a secret file is refused: unsafe (a link someone else could have made, an owner or mode
/// that lets another account change or read it), or unreadable.
#[derive(Debug)]
pub enum SecretFileRefused {
    Unsafe(String),
    Unreadable(String),
}

/// Reads a secret (a PAT, a proxy password) from `path`, as root may: the last component is opened
/// with `O_NOFOLLOW` (so a link is not followed between a check and the read), and the file must be
/// a regular file owned by root or the caller, not writable by other accounts (nor by a group
/// other than root's) and not readable by every account. A link is accepted only where nobody
/// else could have made it (Kubernetes mounts secrets as `token -> ..data/token`): the link and
/// its directory owned by root or the caller and its directory writable by no one else; the file
/// it leads to is then read by its resolved path under the same rules.
#[cfg(unix)]
pub fn read_secret(path: &Path, limit: u64) -> Result<String, SecretFileRefused> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let trusted = |uid: u32| uid == 0 || uid == me;
    let unsafe_ = |s: String| SecretFileRefused::Unsafe(s);
    let dir_ok = |dir: &Path| -> Result<(), SecretFileRefused> {
        let m = std::fs::metadata(dir).map_err(|e| unsafe_(format!("{}: {e}", dir.display())))?;
        if !trusted(m.uid()) || m.mode() & 0o002 != 0 || (m.mode() & 0o020 != 0 && m.gid() != 0) {
            return Err(unsafe_(format!(
                "it is a link in {}, which another account can change",
                dir.display()
            )));
        }
        Ok(())
    };
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| SecretFileRefused::Unreadable(e.to_string()))?;
    let real = if meta.file_type().is_symlink() {
        if !trusted(meta.uid()) {
            return Err(unsafe_(format!(
                "it is a link owned by uid {}, not root",
                meta.uid()
            )));
        }
        dir_ok(path.parent().unwrap_or(Path::new("/")))?;
        let real = std::fs::canonicalize(path)
            .map_err(|e| SecretFileRefused::Unreadable(e.to_string()))?;
        dir_ok(real.parent().unwrap_or(Path::new("/")))?;
        real
    } else {
        path.to_owned()
    };
    let file = open_untrusted(&real).map_err(|e| match e.raw_os_error() {
        Some(e) if e == Errno::ELOOP as i32 => {
            unsafe_("it was swapped for a link while being read".into())
        }
        _ => SecretFileRefused::Unreadable(e.to_string()),
    })?;
    let st = file
        .metadata()
        .map_err(|e| SecretFileRefused::Unreadable(e.to_string()))?;
    if !st.is_file() {
        return Err(unsafe_("it is not a regular file".into()));
    }
    let mode = st.mode() & 0o7777;
    if !trusted(st.uid()) {
        return Err(unsafe_(format!(
            "it is owned by uid {}, not root: that account could change it; `chown root` it",
            st.uid()
        )));
    }
    if mode & 0o002 != 0 || (mode & 0o020 != 0 && st.gid() != 0) {
        return Err(unsafe_(format!(
            "other accounts can write it (mode {mode:o}); `chmod go-w` it"
        )));
    }
    if mode & 0o004 != 0 {
        return Err(unsafe_(format!(
            "every account on this machine can read it (mode {mode:o}); `chmod o-r` it"
        )));
    }
    read_open(file, limit).map_err(|e| SecretFileRefused::Unreadable(e.to_string()))
}

/// Windows: the file is read without following a reparse point; its ACL is the caller's concern.
#[cfg(windows)]
pub fn read_secret(path: &Path, limit: u64) -> Result<String, SecretFileRefused> {
    read_untrusted(path, limit).map_err(|e| SecretFileRefused::Unreadable(e.to_string()))
}

/// Reads a file in a directory another account can write, as root may: a regular file only (a link
/// is not followed, a FIFO or device is refused without blocking), at most `limit` bytes.
pub fn read_untrusted(path: &Path, limit: u64) -> std::io::Result<String> {
    read_open(open_untrusted(path)?, limit)
}

/// Reads an opened regular file of at most `limit` bytes of UTF-8.
fn read_open(file: std::fs::File, limit: u64) -> std::io::Result<String> {
    use std::io::Read;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    if meta.len() > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// `lstat` says: a regular file (not a link to one).
pub fn is_regular(path: &Path) -> bool {
    fs_err::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// `lstat` says: a symbolic link.
pub fn is_symlink(path: &Path) -> bool {
    fs_err::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Makes a directory root's and `0700` through a descriptor (no link followed), so no other
/// account can enter it any more: done to an agent dir swapped out of place before root deletes it,
/// so a job still running cannot keep filling it while it goes. Best effort (only root can).
#[cfg(unix)]
pub fn lock_out(path: &Path) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let Ok(fd) = open_dir(path) else { return };
    let _ = nix::unistd::fchown(&fd, Some(0.into()), Some(0.into()));
    let _ = nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(0o700));
}

/// Opens a directory without following a link at its last component.
#[cfg(unix)]
pub fn open_dir(path: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens `name` inside `dir` as a directory, never following a link.
#[cfg(unix)]
pub fn open_dir_at(dir: impl AsFd, name: &Path) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(
        "'{path}' can be changed by an account other than root (mode {mode:o}, owner uid {uid}); not changing ownership through it"
    )]
    Writable { path: PathBuf, mode: u32, uid: u32 },
    #[error("'{path}': {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(unix)]
fn tree_err(path: &Path) -> impl Fn(Errno) -> TreeError + '_ {
    move |e| TreeError::Io {
        path: path.to_owned(),
        source: std::io::Error::from(e),
    }
}

#[cfg(unix)]
fn writable_by_others(st: &FileStat) -> bool {
    st.st_uid != 0 || st.st_mode & 0o022 != 0
}

/// Gives the directory tree at `root` to `uid:gid`, safely, when root owns it (a package an image
/// build extracted as root). Returns `false` without touching anything when the top directory
/// already belongs to `uid` (it was given before; what the account did inside since is its own).
///
/// Every directory is opened by descriptor without following links and must be writable by root
/// only; its entries are given away first (links themselves, never their targets) and the directory
/// last, so the account cannot add or swap an entry in a directory that is still being walked.
#[cfg(unix)]
pub fn give_tree(root: &Path, uid: u32, gid: u32) -> Result<bool, TreeError> {
    let fd = open_dir(root).map_err(tree_err(root))?;
    let st = fstat(&fd).map_err(tree_err(root))?;
    if st.st_uid == uid {
        return Ok(false);
    }
    give_dir(&fd, root, uid, gid, 0)?;
    Ok(true)
}

#[cfg(unix)]
fn give_dir(fd: &OwnedFd, path: &Path, uid: u32, gid: u32, depth: u32) -> Result<(), TreeError> {
    let st = fstat(fd).map_err(tree_err(path))?;
    if writable_by_others(&st) {
        return Err(TreeError::Writable {
            path: path.to_owned(),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
        });
    }
    if depth > 64 {
        return Err(TreeError::Io {
            path: path.to_owned(),
            source: std::io::Error::other("directory tree is deeper than 64 levels"),
        });
    }
    let dup = fd.try_clone().map_err(|source| TreeError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut dir = nix::dir::Dir::from_fd(dup).map_err(tree_err(path))?;
    let names: Vec<std::ffi::OsString> = dir
        .iter()
        .filter_map(Result::ok)
        .map(|e| {
            use std::os::unix::ffi::OsStrExt;
            std::ffi::OsStr::from_bytes(e.file_name().to_bytes()).to_owned()
        })
        .filter(|n| n != "." && n != "..")
        .collect();
    for name in names {
        let child = path.join(&name);
        let cst = fstatat(fd, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(tree_err(&child))?;
        if SFlag::from_bits_truncate(cst.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR {
            let sub = open_dir_at(fd, Path::new(&name)).map_err(tree_err(&child))?;
            give_dir(&sub, &child, uid, gid, depth + 1)?;
        } else {
            nix::unistd::fchownat(
                fd,
                name.as_os_str(),
                Some(uid.into()),
                Some(gid.into()),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(tree_err(&child))?;
        }
    }
    nix::unistd::fchown(fd, Some(uid.into()), Some(gid.into())).map_err(tree_err(path))
}

/// Windows has no owner to hand a tree to: who may write the agent dir is its ACL, which install
/// sets (`crate::service::windows`). Nothing to do here.
#[cfg(windows)]
pub fn give_tree(_root: &Path, _uid: u32, _gid: u32) -> Result<bool, TreeError> {
    Ok(false)
}

/// Why an agent dir's location is refused: a directory on its path that another account could
/// change, so the path root computed might name another directory by the time root uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsafeLocation(pub String);

/// Checks that only root (run as root) or root and the caller (run as another account) can rename
/// or replace the agent dir or any directory above it: every existing ancestor belongs to one of
/// them and is not writable by group or others (a sticky directory such as `/tmp` is accepted above
/// the parent, never as the parent: staging directories are created beside the agent dir). An
/// existing agent dir must be a directory, not a link, and (when the agent user is known) owned by
/// root, the caller or `agent_uid`.
#[cfg(unix)]
pub fn check_agent_dir_location(
    agent_dir: &Path,
    caller_uid: u32,
    agent_uid: Option<u32>,
) -> Result<(), UnsafeLocation> {
    use std::os::unix::fs::MetadataExt;
    let trusted = |uid: u32| uid == 0 || uid == caller_uid;
    let name_of = |uid: u32| {
        nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| format!("uid {uid}"))
    };
    match fs_err::symlink_metadata(agent_dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(UnsafeLocation(format!(
                "{} is a symbolic link; give the real directory",
                agent_dir.display()
            )));
        }
        Ok(m) if !m.is_dir() => {
            return Err(UnsafeLocation(format!(
                "{} exists and is not a directory",
                agent_dir.display()
            )));
        }
        Ok(m) if agent_uid.is_some() && !(trusted(m.uid()) || Some(m.uid()) == agent_uid) => {
            return Err(UnsafeLocation(format!(
                "{} belongs to {}, not to root or the agent user",
                agent_dir.display(),
                name_of(m.uid())
            )));
        }
        _ => {}
    }
    let parent = agent_dir.parent().unwrap_or(Path::new("/"));
    // The nearest existing ancestor, with links resolved (links above the agent dir are root's).
    let mut existing = parent.to_owned();
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p.to_owned(),
            None => break,
        }
    }
    let real = std::fs::canonicalize(&existing).unwrap_or(existing.clone());
    let mut dir = Some(real.as_path());
    let mut is_parent = existing == parent;
    while let Some(d) = dir {
        let m = fs_err::metadata(d).map_err(|e| UnsafeLocation(e.to_string()))?;
        let mode = m.mode();
        let sticky = mode & 0o1000 != 0;
        if !trusted(m.uid()) {
            return Err(UnsafeLocation(format!(
                "{} belongs to {}, who could move the agent dir away and make root act on another \
                 path; choose a directory only root can change, e.g. /opt/azure-pipelines-agent",
                d.display(),
                name_of(m.uid())
            )));
        }
        if mode & 0o022 != 0 && (is_parent || !sticky) {
            return Err(UnsafeLocation(format!(
                "{} is writable by other accounts (mode {:o}); choose a directory only root can \
                 change, e.g. /opt/azure-pipelines-agent",
                d.display(),
                mode & 0o7777
            )));
        }
        is_parent = false;
        dir = d.parent();
    }
    Ok(())
}

/// Checks that only root can replace the program at `exe`, which a boot unit would run as root at
/// every boot: the file (links resolved) and every directory above it belong to root and are not
/// writable by group or others (a sticky directory such as `/tmp` is accepted above the parent).
/// A binary the agent user could rewrite would make every boot run that user's code as root.
#[cfg(unix)]
pub fn check_root_only_program(exe: &Path) -> Result<(), UnsafeLocation> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(exe)
        .map_err(|e| UnsafeLocation(format!("{}: {e}", exe.display())))?;
    let mut first = true;
    let mut is_parent = false;
    let mut at = Some(real.as_path());
    while let Some(p) = at {
        let m = fs_err::metadata(p).map_err(|e| UnsafeLocation(e.to_string()))?;
        let mode = m.mode();
        let sticky = mode & 0o1000 != 0;
        if m.uid() != 0 {
            return Err(UnsafeLocation(format!(
                "{} belongs to uid {}, not root",
                p.display(),
                m.uid()
            )));
        }
        if mode & 0o022 != 0 && (first || is_parent || !sticky) {
            return Err(UnsafeLocation(format!(
                "{} is writable by other accounts (mode {:o})",
                p.display(),
                mode & 0o7777
            )));
        }
        is_parent = first;
        first = false;
        at = p.parent();
    }
    Ok(())
}

/// Windows: the agent dir and every directory above it must be real directories, not junctions or
/// symbolic links (a reparse point would let whoever made it redirect where SYSTEM writes). Who
/// may write the agent dir is settled by the ACL install sets on it (`crate::service::windows`).
#[cfg(windows)]
pub fn check_agent_dir_location(
    agent_dir: &Path,
    _caller_uid: u32,
    _agent_uid: Option<u32>,
) -> Result<(), UnsafeLocation> {
    use std::os::windows::fs::MetadataExt;
    const FILE_ATTRIBUTE_REPARSE_POINT: u32 = 0x400;
    let mut dir = Some(agent_dir);
    while let Some(d) = dir {
        if let Ok(m) = fs_err::symlink_metadata(d)
            && (m.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT != 0
                || m.file_type().is_symlink())
        {
            return Err(UnsafeLocation(format!(
                "{} is a junction or symbolic link; give a real directory",
                d.display()
            )));
        }
        dir = d.parent();
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn untrusted_reads_refuse_links_fifos_and_big_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "hello").unwrap();
        assert_eq!(read_untrusted(&f, 10).unwrap(), "hello");
        assert!(read_untrusted(&f, 4).is_err());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(read_untrusted(&link, 10).is_err());
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let start = std::time::Instant::now();
        assert!(read_untrusted(&fifo, 10).is_err());
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert!(!is_regular(&link) && is_symlink(&link) && is_regular(&f));
    }

    #[test]
    fn give_tree_changes_links_not_their_targets() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "root's").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("bin/sub")).unwrap();
        std::fs::write(tree.join("bin/sub/x"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("bin/link")).unwrap();
        assert!(give_tree(&tree, 65534, 65534).unwrap());
        assert_eq!(
            std::fs::metadata(tree.join("bin/sub/x")).unwrap().uid(),
            65534
        );
        assert_eq!(
            std::fs::symlink_metadata(tree.join("bin/link"))
                .unwrap()
                .uid(),
            65534
        );
        assert_eq!(std::fs::metadata(&outside).unwrap().uid(), 0);
        // Already theirs: not walked again.
        assert!(!give_tree(&tree, 65534, 65534).unwrap());
    }

    #[test]
    fn give_tree_refuses_directories_others_can_write() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("open")).unwrap();
        std::fs::set_permissions(tree.join("open"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let e = give_tree(&tree, 65534, 65534).unwrap_err();
        assert!(matches!(e, TreeError::Writable { .. }), "{e}");
    }

    #[test]
    fn agent_dirs_must_sit_where_only_root_can_change_them() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            check_agent_dir_location(&dir.path().join("agent"), 0, None),
            Ok(())
        );
        assert_eq!(
            check_agent_dir_location(&dir.path().join("not/yet/agent"), 0, None),
            Ok(())
        );
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
        let e = check_agent_dir_location(&home.join("agent"), 0, None).unwrap_err();
        assert!(e.0.contains("could move the agent dir"), "{}", e.0);
        // The same place is fine for that account itself.
        assert_eq!(
            check_agent_dir_location(&home.join("agent"), 65534, None),
            Ok(())
        );
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = check_agent_dir_location(&open.join("agent"), 0, None).unwrap_err();
        assert!(e.0.contains("writable by other accounts"), "{}", e.0);
        // A sticky directory higher up (like /tmp) is fine.
        std::fs::create_dir(open.join("root-only")).unwrap();
        assert_eq!(
            check_agent_dir_location(&open.join("root-only/agent"), 0, None),
            Ok(())
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&home, &link).unwrap();
        assert!(check_agent_dir_location(&link, 0, None).is_err());
    }

    #[test]
    fn a_program_root_runs_at_boot_must_be_roots_alone() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        mode(dir.path(), 0o755);
        let exe = dir.path().join("agent-bootstrap");
        std::fs::write(&exe, b"#!/bin/sh\n").unwrap();
        mode(&exe, 0o755);
        assert_eq!(check_root_only_program(&exe), Ok(()));
        // Through a link: the file it names is what counts.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&exe, &link).unwrap();
        assert_eq!(check_root_only_program(&link), Ok(()));

        mode(&exe, 0o775);
        let e = check_root_only_program(&exe).unwrap_err();
        assert!(e.0.contains("writable by other accounts"), "{}", e.0);
        mode(&exe, 0o755);

        std::os::unix::fs::chown(&exe, Some(65534), None).unwrap();
        let e = check_root_only_program(&link).unwrap_err();
        assert!(e.0.contains("uid 65534"), "{}", e.0);
        std::os::unix::fs::chown(&exe, Some(0), None).unwrap();

        // A parent another account may write (it could swap the file), sticky or not.
        mode(dir.path(), 0o1777);
        assert!(check_root_only_program(&exe).is_err());
        // A sticky directory higher up (like /tmp) is fine.
        let sub = dir.path().join("bin");
        std::fs::create_dir(&sub).unwrap();
        mode(&sub, 0o755);
        std::fs::copy(&exe, sub.join("agent-bootstrap")).unwrap();
        assert_eq!(
            check_root_only_program(&sub.join("agent-bootstrap")),
            Ok(())
        );
        mode(dir.path(), 0o777);
        assert!(check_root_only_program(&sub.join("agent-bootstrap")).is_err());
    }
}
