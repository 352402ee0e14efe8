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

/// The ACL of every directory SYSTEM keeps for itself on Windows (saved settings, locks, the
/// package cache, staging trees), given by `CreateDirectoryW` as the directory is created, so it
/// never exists with the ACL it would inherit from `%ProgramData%` or `C:\`, where Users may create
/// folders and their creator keeps control: a protected DACL (`P`, nothing inherited) granting full
/// control to SYSTEM (`SY`) and Administrators (`BA`) alone, inherited by everything created
/// inside (`OICI`). The ACL `icacls` gives (`crate::service::windows::private_dir_args`).
pub const PRIVATE_DIR_SDDL: &str = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)";

/// Creates `dir` and whichever of its parents are missing, for root's own use (the state, lock and
/// cache directories). Unix: `mkdir -p` (their modes are set where they are written). Windows,
/// elevated: each directory created gets [`PRIVATE_DIR_SDDL`] at creation, and an existing one on
/// the way that is a junction or symbolic link is refused (it would send SYSTEM's files elsewhere).
pub fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        fs_err::create_dir_all(dir)
    }
    #[cfg(windows)]
    {
        let mut missing = vec![];
        let mut at = Some(dir);
        while let Some(d) = at {
            match std::fs::symlink_metadata(d) {
                Ok(_) => {
                    real_dir(d)?;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(d),
                Err(e) => return Err(e),
            }
            at = d.parent();
        }
        for d in missing.into_iter().rev() {
            match create_private_dir(d) {
                Ok(()) => {}
                // Another run made it meanwhile: fine if it is a real directory.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => real_dir(d)?,
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("creating {}: {e}", d.display()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Windows: creates one directory, private to SYSTEM and Administrators from its creation when
/// elevated ([`PRIVATE_DIR_SDDL`]), with the inherited ACL otherwise (an account's own files).
/// Fails if anything already has the name.
#[cfg(windows)]
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if crate::platform::elevated() {
        crate::platform::create_dir_with_sddl(dir, PRIVATE_DIR_SDDL)
    } else {
        std::fs::create_dir(dir)
    }
}

/// Windows: `path` is a directory and not a junction, symbolic link or other reparse point.
#[cfg(windows)]
pub fn real_dir(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if crate::platform::is_reparse_point(&meta) {
        return Err(std::io::Error::other(format!(
            "{} is a junction or symbolic link; refusing to use it",
            path.display()
        )));
    }
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    Ok(())
}

/// Unix (only a Windows plan run by a Unix build gets here): the same without following a link,
/// `O_EXCL | O_NOFOLLOW` for the new file, then a rename over `name`.
#[cfg(unix)]
pub fn replace_file_no_follow(dir: &Path, name: &str, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let held = open_dir(dir).map_err(std::io::Error::from)?;
    let tmp = dir.join(format!("{name}.{:016x}.tmp", fastrand::u64(..)));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&tmp)?;
        file.write_all(contents)?;
        drop(file);
        std::fs::rename(&tmp, dir.join(name))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    drop(held);
    written
}

/// Windows: replaces the file `name` in `dir`, a directory another account can write (the agent
/// dir), without following any junction or symbolic link: `dir` is opened itself and held open
/// without delete sharing (so it cannot be renamed and replaced by a junction meanwhile) and
/// refused if it is a reparse point; the text goes into a new file (`CREATE_NEW` with
/// `FILE_FLAG_OPEN_REPARSE_POINT`: nothing that exists, a link included, is ever opened), which is
/// then renamed over `name` (a link there is replaced, never written through).
#[cfg(windows)]
pub fn replace_file_no_follow(dir: &Path, name: &str, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::windows::fs::OpenOptionsExt;
    let held = crate::platform::open_dir_no_follow(dir)?;
    let meta = held.metadata()?;
    if crate::platform::is_reparse_point(&meta) || !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is a junction or symbolic link (or not a directory); not writing into it",
            dir.display()
        )));
    }
    let tmp = dir.join(format!("{name}.{:016x}.tmp", fastrand::u64(..)));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(crate::platform::FILE_FLAG_OPEN_REPARSE_POINT)
            .open(&tmp)?;
        let meta = file.metadata()?;
        if crate::platform::is_reparse_point(&meta) || !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        file.write_all(contents)?;
        drop(file);
        std::fs::rename(&tmp, dir.join(name))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    drop(held);
    written
}

/// Debug builds only: `AGENT_BOOTSTRAP_TEST_CRASH_BEFORE_RENAME=NAME` kills the run (`SIGKILL` on
/// itself, as a power cut or `kill -9` would) when an atomic write of a file whose name contains
/// `NAME` has written and synced its temporary file and not yet renamed it: the one moment of
/// [`write_atomic`] a test cannot otherwise hit (a release build ignores it).
pub const TEST_CRASH_BEFORE_RENAME_ENV: &str = "AGENT_BOOTSTRAP_TEST_CRASH_BEFORE_RENAME";

static CRASH_BEFORE_RENAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Reads [`TEST_CRASH_BEFORE_RENAME_ENV`] from the run's environment (debug builds, at the start
/// of `main`).
pub fn arm_crash_point(env: &crate::env::Env) {
    if cfg!(debug_assertions)
        && let Some(name) = env
            .var(TEST_CRASH_BEFORE_RENAME_ENV)
            .filter(|n| !n.is_empty())
    {
        let _ = CRASH_BEFORE_RENAME.set(name.to_owned());
    }
}

/// The crash point between an atomic write's sync and its rename.
fn before_rename(name: &str) {
    if cfg!(debug_assertions)
        && CRASH_BEFORE_RENAME
            .get()
            .is_some_and(|n| name.contains(n.as_str()))
    {
        #[cfg(unix)]
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}

/// Writes `name` in `dir`, a directory of root's (its saved settings, a unit directory, the system
/// trust store), as a file of mode `mode`, so that a kill or power cut at any moment leaves the old
/// file or the new one, never part of one: the text goes into a new file created through a
/// descriptor of `dir` (`O_EXCL | O_NOFOLLOW`: nothing that exists, a link included, is opened),
/// synced, then renamed over `name` within the same descriptor (a link there is replaced, never
/// written through), and the rename synced. The temporary file is `.NAME.PID.RANDOM.tmp`; one left
/// by a process that no longer runs (a killed write of the same file) is deleted first.
#[cfg(unix)]
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let held = open_dir(dir).map_err(std::io::Error::from)?;
    remove_dead_temps(dir, Some(name));
    let tmp = temp_name(name);
    let written = (|| -> std::io::Result<()> {
        let fd = openat(
            &held,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )?;
        // The umask may have taken bits away.
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))?;
        let mut file = std::fs::File::from(fd);
        file.write_all(contents)?;
        file.sync_all()?;
        before_rename(name);
        nix::fcntl::renameat(&held, tmp.as_str(), &held, name)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = nix::unistd::unlinkat(&held, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
    written?;
    std::fs::File::from(held).sync_all()
}

/// Windows: the same through a temporary file in `dir` renamed over `name` (`mode` does not apply;
/// the directory's ACL does). Windows makes the rename durable itself.
#[cfg(not(unix))]
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8], _mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    remove_dead_temps(dir, Some(name));
    let tmp = dir.join(temp_name(name));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        before_rename(name);
        std::fs::rename(&tmp, dir.join(name))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Deletes `name` in `dir` (the entry itself, never what a link leads to) and any temporary file a
/// killed [`write_atomic`] of it left. `Ok(false)`: there was no `name`.
pub fn remove_atomic(dir: &Path, name: &str) -> std::io::Result<bool> {
    remove_dead_temps(dir, Some(name));
    match std::fs::remove_file(dir.join(name)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The temporary name [`write_atomic`] writes `name` under: the writer's process id lets a later
/// run tell a killed write's file from one being written right now by another run.
fn temp_name(name: &str) -> String {
    format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        fastrand::u64(..)
    )
}

/// Deletes the temporary files of `name` in `dir` (of every file [`write_atomic`] writes there,
/// when `None`) whose writer is no longer running: writes killed between creating their file and
/// the rename. A run writing one right now is alive and keeps its file. Best effort: what cannot
/// be read or deleted stays, and is tried again at the next write.
pub fn remove_dead_temps(dir: &Path, name: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some((of, pid)) = file.to_str().and_then(parse_temp_name) else {
            continue;
        };
        if name.is_none_or(|n| n == of) && pid != std::process::id() && !process_alive(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The file name and writer's process id in a name [`temp_name`] made (`.NAME.PID.RANDOM.tmp`,
/// RANDOM 16 hex digits).
fn parse_temp_name(file: &str) -> Option<(&str, u32)> {
    let rest = file.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (rest, random) = rest.rsplit_once('.')?;
    let (name, pid) = rest.rsplit_once('.')?;
    (random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit()) && !name.is_empty())
        .then_some(())?;
    Some((name, pid.parse().ok()?))
}

/// Whether a process of this id exists (Unix: `kill(pid, 0)` does not fail with `ESRCH`).
#[cfg(unix)]
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(Errno::ESRCH)
    )
}

/// Windows: whether a process of this id can be opened.
#[cfg(windows)]
fn process_alive(pid: u32) -> bool {
    crate::platform::process_exists(pid)
}

/// `lstat` says: a regular file (not a link to one).
pub fn is_regular(path: &Path) -> bool {
    fs_err::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// A file a program could be run from: a regular file (links followed, as `exec` follows them)
/// with an execute bit set (on Windows: a regular file).
pub fn is_executable_file(path: &Path) -> bool {
    let Ok(m) = fs_err::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        m.is_file() && m.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        m.is_file()
    }
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

/// Makes a rename in `dir` durable: a power cut right after it leaves the new name, not the old
/// one (the file itself was synced before the rename). Windows makes renames durable itself.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Whether only root could have written anything in the tree at `root`: every entry (links
/// themselves, never followed) belongs to root and is writable by nobody else (group write only for
/// root's group). A package an image build extracted as root passes; one the agent user ever owned
/// does not, and root then extracts a fresh one instead of running its scripts.
#[cfg(unix)]
pub fn root_only_tree(root: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ok = |m: &std::fs::Metadata| {
        m.uid() == 0
            && (m.file_type().is_symlink()
                || (m.mode() & 0o002 == 0 && (m.mode() & 0o020 == 0 || m.gid() == 0)))
    };
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() && ok(&m) => {}
            _ => return false,
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return false;
        };
        for entry in entries {
            let Ok(entry) = entry else { return false };
            let Ok(m) = entry.path().symlink_metadata() else {
                return false;
            };
            if m.is_dir() {
                stack.push(entry.path());
            } else if !ok(&m) {
                return false;
            }
        }
    }
    true
}

/// Windows: an extracted tree is never taken as SYSTEM's own; a fresh one is extracted.
#[cfg(not(unix))]
pub fn root_only_tree(_root: &Path) -> bool {
    false
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
            .map_or_else(|| format!("uid {uid}"), |u| u.name)
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
    // No link anywhere on the way: whoever could change where a link points would decide where
    // root writes, and the checks below would be about another path than the one acted on.
    let mut prefix = std::path::PathBuf::new();
    for part in agent_dir.components() {
        prefix.push(part);
        if let Ok(m) = fs_err::symlink_metadata(&prefix)
            && m.file_type().is_symlink()
        {
            let real = std::fs::canonicalize(agent_dir)
                .or_else(|_| std::fs::canonicalize(&prefix))
                .map_or_else(|_| "?".into(), |p| p.display().to_string());
            return Err(UnsafeLocation(format!(
                "{} is a symbolic link (to {real}); give the real path, with no link in it",
                prefix.display()
            )));
        }
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

/// Windows: the program the boot task runs as SYSTEM at every startup, and every folder above it,
/// may be changed by nobody but SYSTEM, Administrators and TrustedInstaller (owner and DACL, judged
/// by [`crate::acl`]), and none of them is a junction or symbolic link: a program the service
/// account or Users could replace would run as SYSTEM at the next startup.
#[cfg(windows)]
pub fn check_root_only_program(exe: &Path) -> Result<(), UnsafeLocation> {
    use std::os::windows::fs::MetadataExt;
    const FILE_ATTRIBUTE_REPARSE_POINT: u32 = 0x400;
    let mut at = Some(exe);
    let mut depth = 0;
    while let Some(p) = at {
        if p.as_os_str().is_empty() {
            break;
        }
        let m = fs_err::symlink_metadata(p).map_err(|e| UnsafeLocation(e.to_string()))?;
        if m.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
            return Err(UnsafeLocation(format!(
                "{} is a junction or symbolic link",
                p.display()
            )));
        }
        let sddl = crate::platform::sddl_of(p).ok_or_else(|| {
            UnsafeLocation(format!(
                "the security descriptor of {} could not be read",
                p.display()
            ))
        })?;
        let mask = if depth < 2 {
            crate::acl::CHANGE_MASK
        } else {
            crate::acl::ANCESTOR_MASK
        };
        // The elevated administrator running install could change anything anyway; anyone else
        // (the service account, Users, a non-administrator) is refused.
        let me = crate::platform::elevated()
            .then(crate::platform::own_sid)
            .flatten();
        let who = crate::acl::untrusted_writers(&sddl, mask, me.as_deref());
        if !who.is_empty() {
            return Err(UnsafeLocation(format!(
                "{} can be changed by {} ({sddl})",
                p.display(),
                who.join(", ")
            )));
        }
        depth += 1;
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

#[cfg(all(test, windows))]
mod windows_tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_a_dead_writers_temp() {
        let dir = tempfile::tempdir().unwrap();
        // No process has pid 4294967291 (ids are multiples of 4).
        let dead = ".s.json.4294967291.0123456789abcdef.tmp";
        std::fs::write(dir.path().join(dead), "x").unwrap();
        write_atomic(dir.path(), "s.json", b"one", 0o600).unwrap();
        write_atomic(dir.path(), "s.json", b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(dir.path().join("s.json")).unwrap(), b"two");
        assert!(!dir.path().join(dead).exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(remove_atomic(dir.path(), "s.json").unwrap());
    }

    /// Under Wine: it keeps a directory's ACL only as far as its Unix mode can say.
    fn wine() -> bool {
        Path::new(r"C:\windows\system32\wineboot.exe").exists()
    }

    /// A link, if this Windows really makes one (Wine's `CreateSymbolicLinkW` answers success and
    /// makes nothing).
    fn linked(made: std::io::Result<()>, link: &Path) -> bool {
        made.is_ok()
            && std::fs::symlink_metadata(link).is_ok_and(|m| crate::platform::is_reparse_point(&m))
    }

    fn dacl(path: &Path) -> String {
        crate::platform::dacl_sddl(&crate::platform::open_dir_no_follow(path).unwrap()).unwrap()
    }

    #[test]
    fn a_private_dir_has_its_acl_from_creation() {
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("private");
        crate::platform::create_dir_with_sddl(&made, PRIVATE_DIR_SDDL).unwrap();
        let got = dacl(&made);
        // Nobody but SYSTEM and Administrators (and, under Wine, which keeps only what the Unix
        // mode can say, the prefix's own user) may do anything in it.
        for other in [";BU)", ";AU)", ";WD)", ";CO)", ";NS)", ";LS)"] {
            assert!(!got.contains(other), "{other} in {got}");
        }
        assert!(got.contains("(A;OICI;FA;;;SY)"), "{got}");
        if wine() {
            // What the same test sees of a directory made the ordinary way: Everyone may read.
            let plain = dir.path().join("plain");
            std::fs::create_dir(&plain).unwrap();
            assert!(dacl(&plain).contains(";WD)"), "{}", dacl(&plain));
        } else {
            assert!(
                got.starts_with("D:P"),
                "not protected from inheritance: {got}"
            );
            assert!(got.contains("(A;OICI;FA;;;BA)"), "{got}");
        }
        // A name that exists (anything, a planted directory included) is never taken over.
        let e = crate::platform::create_dir_with_sddl(&made, PRIVATE_DIR_SDDL).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn private_dirs_are_made_level_by_level_and_links_on_the_way_refused() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("state").join("locks");
        create_private_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        if crate::platform::elevated() {
            for d in [dir.path().join("state"), deep.clone()] {
                let got = dacl(&d);
                assert!(!got.contains(";WD)") && !got.contains(";BU)"), "{got}");
                assert!(wine() || got.starts_with("D:P"), "{got}");
            }
        }
        // A junction or symbolic link where a private directory goes is refused.
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let link = dir.path().join("linked");
        if !linked(std::os::windows::fs::symlink_dir(&outside, &link), &link) {
            eprintln!("cannot make a directory link here; the rest is skipped");
            return;
        }
        let e = create_private_dir_all(&link.join("agents")).unwrap_err();
        assert!(e.to_string().contains("junction or symbolic link"), "{e}");
        assert!(!outside.join("agents").exists());
    }

    #[test]
    fn proxybypass_is_never_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::create_dir(&agent).unwrap();
        replace_file_no_follow(&agent, ".proxybypass", b"one").unwrap();
        assert_eq!(std::fs::read(agent.join(".proxybypass")).unwrap(), b"one");
        replace_file_no_follow(&agent, ".proxybypass", b"two").unwrap();
        assert_eq!(std::fs::read(agent.join(".proxybypass")).unwrap(), b"two");

        let victim = dir.path().join("victim.ini");
        std::fs::write(&victim, "SYSTEM's").unwrap();
        std::fs::remove_file(agent.join(".proxybypass")).unwrap();
        let link = agent.join(".proxybypass");
        if !linked(std::os::windows::fs::symlink_file(&victim, &link), &link) {
            eprintln!("cannot make a file link here; the rest is skipped");
            return;
        }
        replace_file_no_follow(&agent, ".proxybypass", b"three").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "SYSTEM's");
        let meta = std::fs::symlink_metadata(agent.join(".proxybypass")).unwrap();
        assert!(!crate::platform::is_reparse_point(&meta) && meta.is_file());
        assert_eq!(std::fs::read(agent.join(".proxybypass")).unwrap(), b"three");

        // The agent dir itself a link: nothing is written.
        let via = dir.path().join("linked-agent");
        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        if !linked(
            std::os::windows::fs::symlink_dir(dir.path().join("elsewhere"), &via),
            &via,
        ) {
            return;
        }
        let e = replace_file_no_follow(&via, ".proxybypass", b"x").unwrap_err();
        assert!(e.to_string().contains("junction or symbolic link"), "{e}");
        assert!(!dir.path().join("elsewhere/.proxybypass").exists());
        assert_eq!(
            std::fs::read_dir(&agent).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}

#[cfg(all(test, unix))]
mod tests {

    use super::*;

    #[test]
    fn the_crash_point_knob_only_works_in_debug_builds() {
        // A name no test writes: arming it must not kill this process.
        let env = crate::env::Env::fake(
            &[(TEST_CRASH_BEFORE_RENAME_ENV, "never-written-by-a-test")],
            "h",
            true,
        );
        arm_crash_point(&env);
        assert_eq!(CRASH_BEFORE_RENAME.get().is_some(), cfg!(debug_assertions));
    }

    #[test]
    fn temporary_names_say_the_file_and_the_writer() {
        let t = temp_name("vsts.agent.o.p.a.service");
        assert_eq!(
            parse_temp_name(&t),
            Some(("vsts.agent.o.p.a.service", std::process::id()))
        );
        assert_eq!(
            parse_temp_name(".x.json.12.0123456789abcdef.tmp"),
            Some(("x.json", 12))
        );
        assert_eq!(parse_temp_name(".x.json.12.short.tmp"), None);
        assert_eq!(parse_temp_name("x.json.12.0123456789abcdef.tmp"), None);
        assert_eq!(parse_temp_name(".tmpAbc123"), None);
    }

    #[cfg(unix)]
    #[test]
    fn a_dead_writers_temporary_file_goes_and_a_live_ones_stays() {
        let dir = tempfile::tempdir().unwrap();
        // A child that has ended (and was reaped) is a pid no process has.
        let dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        let mut dead = dead;
        dead.wait().unwrap();
        let dead_tmp = format!(".a.json.{dead_pid}.0123456789abcdef.tmp");
        let live_tmp = ".a.json.1.0123456789abcdef.tmp".to_owned(); // init
        let other = format!(".b.json.{dead_pid}.0123456789abcdef.tmp");
        for f in [&dead_tmp, &live_tmp, &other] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        write_atomic(dir.path(), "a.json", b"{}", 0o600).unwrap();
        assert!(!dir.path().join(&dead_tmp).exists());
        assert!(dir.path().join(&live_tmp).exists());
        assert!(
            dir.path().join(&other).exists(),
            "another file's is left to its writer"
        );
        assert_eq!(std::fs::read(dir.path().join("a.json")).unwrap(), b"{}");
        remove_dead_temps(dir.path(), None);
        assert!(!dir.path().join(&other).exists());
        assert!(remove_atomic(dir.path(), "a.json").unwrap());
        assert!(!remove_atomic(dir.path(), "a.json").unwrap());
    }

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
    fn a_file_is_replaced_without_writing_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::create_dir(&agent).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "root's").unwrap();
        std::os::unix::fs::symlink(&victim, agent.join(".proxybypass")).unwrap();
        replace_file_no_follow(&agent, ".proxybypass", b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's");
        assert!(is_regular(&agent.join(".proxybypass")));
        assert_eq!(std::fs::read(agent.join(".proxybypass")).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&agent).unwrap().count(), 1);
        // The directory itself a link: refused.
        let via = dir.path().join("via");
        std::os::unix::fs::symlink(&agent, &via).unwrap();
        assert!(replace_file_no_follow(&via, ".proxybypass", b"x").is_err());
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
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
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

#[cfg(all(test, windows))]
mod boot_program_tests {
    use super::*;

    /// Under Wine (the Windows unit tests' runner) the descriptors are real calls: this program,
    /// owned by the elevated account running it, passes; the decision on others' rights is
    /// `crate::acl`'s, tested with descriptors written by hand.
    #[test]
    fn the_boot_programs_descriptor_is_read_and_judged() {
        let exe = std::env::current_exe().unwrap();
        let sddl = crate::platform::sddl_of(&exe).expect("a descriptor");
        assert!(sddl.starts_with("O:"), "{sddl}");
        assert!(crate::platform::own_sid().is_some_and(|s| s.starts_with("S-1-")));
        check_root_only_program(&exe).unwrap();
    }
}
