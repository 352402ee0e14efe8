//! Unpacking agent archives as hostile input, into a directory only root can reach.
//!
//! The archive comes from the network (or from a `--package` nobody verified). Every entry is
//! checked before it is written: paths must be relative and stay inside the root (no `..`, no
//! absolute paths); device files and FIFOs are refused; hard links must name a regular file
//! extracted before; symbolic links must stay inside the root once every link in the archive is
//! followed (`b/c -> ..` then `a -> b/c/..` is refused, checked again after the last entry, since a
//! later link changes what an earlier one means). Permissions keep only `rwxr-xr-x` (no setuid, no
//! group or other write). The number of entries and the bytes written are capped ([`Limits`]).
//!
//! Files are created through directory descriptors (`openat`/`mkdirat`/`symlinkat`), never
//! following a link on the way, with `O_EXCL`, and given to the agent user on the open descriptor
//! as they are created: there is no second pass over the tree by path. The staging root stays
//! `0700 root` until the caller moves it into place, so no other account can reach anything inside
//! while it is being written.

use std::collections::{HashMap, HashSet};
use std::io::Read;
#[cfg(unix)]
use std::io::Write;
#[cfg(unix)]
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

#[cfg(unix)]
use nix::errno::Errno;
#[cfg(unix)]
use nix::fcntl::OFlag;
#[cfg(unix)]
use nix::fcntl::{AtFlags, openat};
#[cfg(unix)]
use nix::sys::stat::{Mode, fchmod, mkdirat};
#[cfg(unix)]
use nix::unistd::{UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};

/// The account that will own what is extracted (the agent user), when that is not us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Caps on what an archive may unpack to. A real agent package has a few thousand entries and a
/// few hundred MB; these leave ample room and stop a decompression bomb.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: u64,
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 4 << 30,
        }
    }
}

/// Longest entry path accepted (bytes).
#[cfg(unix)]
const MAX_PATH: usize = 4096;
/// Links followed while resolving one link target (the kernel's own limit is 40).
const MAX_HOPS: u32 = 40;
/// Directory descriptors kept open while extracting.
#[cfg(unix)]
const DIR_CACHE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("archive entry '{entry}' would be written outside the agent directory")]
    Traversal { entry: String },
    #[error("archive entry '{entry}' is written through a link or a file ('{through}')")]
    ThroughLink { entry: String, through: String },
    #[error("archive entry '{entry}' is a link to '{target}', outside the agent directory")]
    LinkOutside { entry: String, target: String },
    #[error(
        "archive entry '{entry}' has unsupported type {kind} (only files, directories and links)"
    )]
    UnsupportedType { entry: String, kind: String },
    #[error("the archive has more than {max} entries; not an agent package")]
    TooManyEntries { max: u64 },
    #[error("the archive unpacks to more than {max} bytes; not an agent package")]
    TooLarge { max: u64 },
    #[error("the archive is not a valid {format}")]
    Corrupt {
        format: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("could not write '{path}' while extracting")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the archive is not a valid zip file")]
    Zip(#[source] zip::result::ZipError),
    #[error("the archive contains no agent (no entry under bin/)")]
    NotAnAgent,
    #[error("extraction stopped: agent-bootstrap is being stopped")]
    Interrupted,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub files: u64,
    pub bytes: u64,
}

/// A relative path with `.` removed, refusing anything that could leave the root.
pub fn safe_relative(raw: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether the link at `entry` (relative to the root) pointing to `target` resolves inside the
/// root, following the archive's other links (`links`: entry → target) wherever the path goes
/// through one.
pub fn link_resolves_inside(
    links: &HashMap<PathBuf, PathBuf>,
    entry: &Path,
    target: &Path,
) -> bool {
    use std::collections::VecDeque;
    if target.has_root() {
        return false;
    }
    let mut at: Vec<std::ffi::OsString> = entry
        .parent()
        .map(|p| {
            p.components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut pending: VecDeque<std::ffi::OsString> = VecDeque::new();
    for c in target.components() {
        match c {
            Component::Normal(n) => pending.push_back(n.to_owned()),
            Component::ParentDir => pending.push_back("..".into()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            if at.pop().is_none() {
                return false;
            }
            continue;
        }
        at.push(c);
        let here: PathBuf = at.iter().collect();
        if let Some(next) = links.get(&here) {
            hops += 1;
            if hops > MAX_HOPS || next.has_root() {
                return false;
            }
            at.pop();
            let mut prefix = vec![];
            for c in next.components() {
                match c {
                    Component::Normal(n) => prefix.push(n.to_owned()),
                    Component::ParentDir => prefix.push("..".into()),
                    Component::CurDir => {}
                    Component::RootDir | Component::Prefix(_) => return false,
                }
            }
            for c in prefix.into_iter().rev() {
                pending.push_front(c);
            }
        }
    }
    true
}

/// Permission bits kept: `rwxr-xr-x` at most (no setuid/setgid/sticky, no group or other write).
#[cfg(unix)]
fn safe_mode(mode: u32, dir: bool) -> Mode {
    let m = mode & 0o755;
    Mode::from_bits_truncate(if dir { m | 0o700 } else { m | 0o600 })
}

/// Writes archive entries under a directory descriptor.
#[cfg(unix)]
struct Unpacker<'a> {
    root: &'a OwnedFd,
    root_path: &'a Path,
    owner: Option<Owner>,
    limits: Limits,
    dirs: HashMap<PathBuf, OwnedFd>,
    links: HashMap<PathBuf, PathBuf>,
    files: HashSet<PathBuf>,
    stats: Stats,
    entries: u64,
    saw_bin: bool,
    buf: Vec<u8>,
}

#[cfg(unix)]
impl<'a> Unpacker<'a> {
    fn new(root: &'a OwnedFd, root_path: &'a Path, owner: Option<Owner>, limits: Limits) -> Self {
        Self {
            root,
            root_path,
            owner,
            limits,
            dirs: HashMap::new(),
            links: HashMap::new(),
            files: HashSet::new(),
            stats: Stats::default(),
            entries: 0,
            saw_bin: false,
            buf: vec![0; 256 * 1024],
        }
    }

    fn write_err(&self, rel: &Path) -> impl Fn(Errno) -> ExtractError + use<> {
        let path = self.root_path.join(rel);
        move |e| ExtractError::Write {
            path: path.clone(),
            source: e.into(),
        }
    }

    fn give(&self, fd: impl AsFd, rel: &Path) -> Result<(), ExtractError> {
        if let Some(o) = self.owner {
            fchown(fd, Some(o.uid.into()), Some(o.gid.into())).map_err(self.write_err(rel))?;
        }
        Ok(())
    }

    /// Counts an entry against the limits, and notices a stop request.
    fn count(&mut self, rel: &Path, bytes: u64) -> Result<(), ExtractError> {
        if crate::interrupt::requested() {
            return Err(ExtractError::Interrupted);
        }
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ExtractError::TooManyEntries {
                max: self.limits.max_entries,
            });
        }
        if self.stats.bytes + bytes > self.limits.max_bytes {
            return Err(ExtractError::TooLarge {
                max: self.limits.max_bytes,
            });
        }
        if rel.as_os_str().len() > MAX_PATH {
            return Err(ExtractError::Traversal {
                entry: rel.display().to_string(),
            });
        }
        if rel.starts_with("bin") {
            self.saw_bin = true;
        }
        Ok(())
    }

    /// The directory at `rel`, opened (and created with its parents if missing) without following
    /// a link at any step.
    fn dir(&mut self, rel: &Path, entry: &str) -> Result<&OwnedFd, ExtractError> {
        if rel.as_os_str().is_empty() {
            return Ok(self.root);
        }
        if !self.dirs.contains_key(rel) {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let name = rel.file_name().expect("a normal component");
            let owner = self.owner;
            let err = self.write_err(rel);
            let opened = {
                let pfd = self.dir(parent, entry)?;
                open_or_make_dir(pfd, Path::new(name), owner).map_err(|e| match e {
                    Errno::ELOOP | Errno::ENOTDIR => ExtractError::ThroughLink {
                        entry: entry.to_owned(),
                        through: rel.display().to_string(),
                    },
                    e => err(e),
                })?
            };
            if self.dirs.len() >= DIR_CACHE {
                self.dirs.clear();
            }
            self.dirs.insert(rel.to_owned(), opened);
        }
        Ok(&self.dirs[rel])
    }

    fn split(rel: &Path) -> (&Path, &Path) {
        (
            rel.parent().unwrap_or(Path::new("")),
            Path::new(rel.file_name().expect("a normal component")),
        )
    }

    /// Creates `name` in `parent` with `create`, replacing a non-directory already there (an archive
    /// may repeat an entry; the last one wins, as with tar).
    fn create<T>(
        &mut self,
        rel: &Path,
        entry: &str,
        create: impl Fn(&OwnedFd, &Path) -> nix::Result<T>,
    ) -> Result<T, ExtractError> {
        let (parent, name) = Self::split(rel);
        let err = self.write_err(rel);
        let pfd = self.dir(parent, entry)?;
        match create(pfd, name) {
            Err(Errno::EEXIST) => {
                unlinkat(pfd, name, UnlinkatFlags::NoRemoveDir).map_err(|e| match e {
                    Errno::EISDIR | Errno::EPERM => ExtractError::Write {
                        path: PathBuf::from(entry),
                        source: std::io::Error::other("a directory of that name already exists"),
                    },
                    e => err(e),
                })?;
                create(pfd, name).map_err(err)
            }
            r => r.map_err(err),
        }
    }

    fn file(
        &mut self,
        rel: &Path,
        entry: &str,
        mode: u32,
        data: &mut dyn Read,
    ) -> Result<(), ExtractError> {
        let fd = self.create(rel, entry, |dir, name| {
            openat(
                dir,
                name,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
        })?;
        self.give(&fd, rel)?;
        let mut file = std::fs::File::from(fd);
        let path = self.root_path.join(rel);
        let mut written = 0u64;
        loop {
            let n = data
                .read(&mut self.buf)
                .map_err(|source| read_error(source, &path))?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if self.stats.bytes + written > self.limits.max_bytes {
                return Err(ExtractError::TooLarge {
                    max: self.limits.max_bytes,
                });
            }
            file.write_all(&self.buf[..n])
                .map_err(|source| ExtractError::Write {
                    path: path.clone(),
                    source,
                })?;
        }
        fchmod(&file, safe_mode(mode, false)).map_err(self.write_err(rel))?;
        self.stats.bytes += written;
        self.stats.files += 1;
        self.files.insert(rel.to_owned());
        Ok(())
    }

    fn directory(&mut self, rel: &Path, entry: &str, mode: u32) -> Result<(), ExtractError> {
        let err = self.write_err(rel);
        let fd = self.dir(rel, entry)?;
        fchmod(fd, safe_mode(mode, true)).map_err(err)
    }

    fn symlink(&mut self, rel: &Path, entry: &str, target: &Path) -> Result<(), ExtractError> {
        if target.has_root() || target.as_os_str().is_empty() {
            return Err(ExtractError::LinkOutside {
                entry: entry.to_owned(),
                target: target.display().to_string(),
            });
        }
        self.links.insert(rel.to_owned(), target.to_owned());
        if !link_resolves_inside(&self.links, rel, target) {
            return Err(ExtractError::LinkOutside {
                entry: entry.to_owned(),
                target: target.display().to_string(),
            });
        }
        self.create(rel, entry, |dir, name| symlinkat(target, dir, name))?;
        if let Some(o) = self.owner {
            let (parent, name) = Self::split(rel);
            let err = self.write_err(rel);
            let pfd = self.dir(parent, entry)?;
            fchownat(
                pfd,
                name,
                Some(o.uid.into()),
                Some(o.gid.into()),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(err)?;
        }
        self.stats.files += 1;
        Ok(())
    }

    fn hard_link(&mut self, rel: &Path, entry: &str, target: &Path) -> Result<(), ExtractError> {
        let target = safe_relative(target)
            .filter(|t| self.files.contains(t))
            .ok_or_else(|| ExtractError::LinkOutside {
                entry: entry.to_owned(),
                target: target.display().to_string(),
            })?;
        let (tparent, tname) = Self::split(&target);
        let root_path = self.root_path;
        let tdir = self
            .dir(tparent, entry)?
            .try_clone()
            .map_err(|source| ExtractError::Write {
                path: root_path.join(tparent),
                source,
            })?;
        self.create(rel, entry, |dir, name| {
            linkat(&tdir, tname, dir, name, AtFlags::empty())
        })?;
        self.stats.files += 1;
        self.files.insert(rel.to_owned());
        Ok(())
    }

    /// Every link checked once more against the final set of links.
    fn finish(self) -> Result<Stats, ExtractError> {
        for (entry, target) in &self.links {
            if !link_resolves_inside(&self.links, entry, target) {
                return Err(ExtractError::LinkOutside {
                    entry: entry.display().to_string(),
                    target: target.display().to_string(),
                });
            }
        }
        if !self.saw_bin {
            return Err(ExtractError::NotAnAgent);
        }
        Ok(self.stats)
    }
}

#[cfg(unix)]
fn open_or_make_dir(parent: &OwnedFd, name: &Path, owner: Option<Owner>) -> nix::Result<OwnedFd> {
    let open = || {
        openat(
            parent,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    };
    match open() {
        Err(Errno::ENOENT) => {
            match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
            let fd = open()?;
            if let Some(o) = owner {
                fchown(&fd, Some(o.uid.into()), Some(o.gid.into()))?;
            }
            fchmod(&fd, Mode::from_bits_truncate(0o755))?;
            Ok(fd)
        }
        r => r,
    }
}

#[cfg(unix)]
fn read_error(source: std::io::Error, path: &Path) -> ExtractError {
    // A broken gzip stream or a cut download shows up as InvalidData/InvalidInput/UnexpectedEof.
    match source.kind() {
        std::io::ErrorKind::InvalidData
        | std::io::ErrorKind::InvalidInput
        | std::io::ErrorKind::UnexpectedEof => ExtractError::Corrupt {
            format: "gzip-compressed tar archive",
            source,
        },
        _ => ExtractError::Write {
            path: path.to_owned(),
            source,
        },
    }
}

/// Streams a `.tar.gz` into the directory `root` (at `root_path`, for messages), checking every
/// entry. `reader` is consumed only as far as the archive goes; the caller drains the rest.
/// (Unix: the Windows agent package is a zip.)
#[cfg(unix)]
pub fn untar_gz(
    reader: impl Read,
    root: &OwnedFd,
    root_path: &Path,
    owner: Option<Owner>,
    limits: Limits,
) -> Result<Stats, ExtractError> {
    let gz = flate2::read::GzDecoder::new(reader);
    let mut archive = tar::Archive::new(gz);
    let corrupt = |source| ExtractError::Corrupt {
        format: "gzip-compressed tar archive",
        source,
    };
    let mut u = Unpacker::new(root, root_path, owner, limits);
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path().map_err(corrupt)?.into_owned();
        let shown = raw.display().to_string();
        let rel = safe_relative(&raw).ok_or_else(|| ExtractError::Traversal {
            entry: shown.clone(),
        })?;
        if rel.as_os_str().is_empty() {
            continue; // the archive root "./"
        }
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644);
        let size = header.size().unwrap_or(0);
        let link_target = || -> Result<PathBuf, ExtractError> {
            Ok(entry
                .link_name()
                .map_err(corrupt)?
                .map(std::borrow::Cow::into_owned)
                .unwrap_or_default())
        };
        use tar::EntryType as T;
        match header.entry_type() {
            T::Regular | T::Continuous | T::GNUSparse => {
                u.count(&rel, size)?;
                u.file(&rel, &shown, mode, &mut entry)?;
            }
            T::Directory => {
                u.count(&rel, 0)?;
                u.directory(&rel, &shown, mode)?;
            }
            T::Symlink => {
                let target = link_target()?;
                u.count(&rel, 0)?;
                u.symlink(&rel, &shown, &target)?;
            }
            T::Link => {
                let target = link_target()?;
                u.count(&rel, 0)?;
                u.hard_link(&rel, &shown, &target)?;
            }
            // Metadata the tar reader already applied to the next entry.
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            other => {
                return Err(ExtractError::UnsupportedType {
                    entry: shown,
                    kind: format!("{other:?}"),
                });
            }
        }
    }
    u.finish()
}

/// Whether an entry seen without following it is a link of any kind (Windows: a junction,
/// symbolic link or other reparse point).
fn is_link(meta: &std::fs::Metadata) -> bool {
    #[cfg(windows)]
    {
        crate::platform::is_reparse_point(meta)
    }
    #[cfg(unix)]
    {
        meta.file_type().is_symlink()
    }
}

/// Creates the directories of a zip entry's path under `dest`, one level at a time, never through
/// a link: a level that already exists must be a real directory (not a junction or symbolic
/// link), else the entry is refused. `made` remembers the levels already checked.
fn zip_dirs(
    dest: &Path,
    rel: &Path,
    shown: &str,
    made: &mut HashSet<PathBuf>,
) -> Result<(), ExtractError> {
    let mut at = PathBuf::new();
    for c in rel.components() {
        at.push(c);
        if made.contains(&at) {
            continue;
        }
        let full = dest.join(&at);
        let through = || ExtractError::ThroughLink {
            entry: shown.to_owned(),
            through: at.display().to_string(),
        };
        match std::fs::create_dir(&full) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(ExtractError::Write { path: full, source }),
        }
        let meta = std::fs::symlink_metadata(&full).map_err(|source| ExtractError::Write {
            path: full.clone(),
            source,
        })?;
        if is_link(&meta) || !meta.is_dir() {
            return Err(through());
        }
        made.insert(at.clone());
    }
    Ok(())
}

/// Creates the file `out` for a zip entry: a new file only (`O_EXCL` / `CREATE_NEW`, with
/// `O_NOFOLLOW` / `FILE_FLAG_OPEN_REPARSE_POINT`), so an existing link is never opened. A regular
/// file already there (a repeated entry) is replaced, as with tar; a link there is refused.
fn zip_file(out: &Path, shown: &str) -> Result<std::fs::File, ExtractError> {
    let write_err = |source| ExtractError::Write {
        path: out.to_owned(),
        source,
    };
    let open = || {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits());
        }
        #[cfg(windows)]
        {
            use std::os::windows::fs::OpenOptionsExt;
            o.custom_flags(crate::platform::FILE_FLAG_OPEN_REPARSE_POINT);
        }
        o.open(out)
    };
    let file = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(out).map_err(write_err)?;
            if is_link(&meta) {
                return Err(ExtractError::ThroughLink {
                    entry: shown.to_owned(),
                    through: shown.to_owned(),
                });
            }
            if meta.is_dir() {
                return Err(ExtractError::Write {
                    path: PathBuf::from(shown),
                    source: std::io::Error::other("a directory of that name already exists"),
                });
            }
            std::fs::remove_file(out).map_err(write_err)?;
            open().map_err(write_err)?
        }
        r => r.map_err(write_err)?,
    };
    let meta = file.metadata().map_err(write_err)?;
    if is_link(&meta) || !meta.is_file() {
        return Err(ExtractError::ThroughLink {
            entry: shown.to_owned(),
            through: shown.to_owned(),
        });
    }
    Ok(file)
}

/// Unpacks a `.zip` (the Windows agent package) into `dest`, checking every entry, from `file`:
/// the handle the archive was verified through (`shown` names it in messages), so what is
/// extracted is what was hashed. Nothing is written through a link: see [`zip_dirs`], [`zip_file`].
pub fn unzip(
    mut file: std::fs::File,
    shown_file: &Path,
    dest: &Path,
    limits: Limits,
) -> Result<Stats, ExtractError> {
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(|source| ExtractError::Write {
            path: shown_file.to_owned(),
            source,
        })?;
    let root = std::fs::symlink_metadata(dest).map_err(|source| ExtractError::Write {
        path: dest.to_owned(),
        source,
    })?;
    if is_link(&root) || !root.is_dir() {
        return Err(ExtractError::ThroughLink {
            entry: String::new(),
            through: dest.display().to_string(),
        });
    }
    let mut archive =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(ExtractError::Zip)?;
    if archive.len() as u64 > limits.max_entries {
        return Err(ExtractError::TooManyEntries {
            max: limits.max_entries,
        });
    }
    let mut stats = Stats::default();
    let mut saw_bin = false;
    let mut made = HashSet::new();
    for i in 0..archive.len() {
        if crate::interrupt::requested() {
            return Err(ExtractError::Interrupted);
        }
        let entry = archive.by_index(i).map_err(ExtractError::Zip)?;
        let shown = String::from_utf8_lossy(entry.name_raw()).into_owned();
        // Windows packages use backslashes in some tools' output; treat both as separators.
        let normalized = shown.replace('\\', "/");
        let rel = safe_relative(Path::new(&normalized))
            .filter(|_| entry.enclosed_name().is_some())
            .ok_or_else(|| ExtractError::Traversal {
                entry: shown.clone(),
            })?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        if entry.is_symlink() {
            return Err(ExtractError::UnsupportedType {
                entry: shown,
                kind: "symlink".to_owned(),
            });
        }
        if rel.starts_with("bin") {
            saw_bin = true;
        }
        let out = dest.join(&rel);
        let write_err = |source| ExtractError::Write {
            path: out.clone(),
            source,
        };
        if entry.is_dir() {
            zip_dirs(dest, &rel, &shown, &mut made)?;
            continue;
        }
        if let Some(parent) = rel.parent() {
            zip_dirs(dest, parent, &shown, &mut made)?;
        }
        #[cfg(unix)]
        let mode = entry.unix_mode();
        let mut w = zip_file(&out, &shown)?;
        let left = limits.max_bytes.saturating_sub(stats.bytes);
        let n = std::io::copy(&mut entry.take(left + 1), &mut w).map_err(|source| {
            if source.kind() == std::io::ErrorKind::InvalidData {
                ExtractError::Corrupt {
                    format: "zip archive",
                    source,
                }
            } else {
                write_err(source)
            }
        })?;
        if n > left {
            return Err(ExtractError::TooLarge {
                max: limits.max_bytes,
            });
        }
        #[cfg(unix)]
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            w.set_permissions(std::fs::Permissions::from_mode(
                safe_mode(mode, false).bits(),
            ))
            .map_err(write_err)?;
        }
        stats.files += 1;
        stats.bytes += n;
    }
    if !saw_bin {
        return Err(ExtractError::NotAnAgent);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt;

    #[cfg(unix)]
    fn tar_gz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let raw = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        gz.finish().unwrap()
    }

    #[cfg(unix)]
    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    }

    #[cfg(unix)]
    /// Writes a raw header name, bypassing the builder's own path checks, as an attacker would.
    fn raw_entry(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        link: Option<&str>,
    ) {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_size(0);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_entry_type(kind);
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }

    #[cfg(unix)]
    fn untar(data: &[u8], dir: &Path) -> Result<Stats, ExtractError> {
        untar_limited(data, dir, Limits::default())
    }

    #[cfg(unix)]
    fn untar_limited(data: &[u8], dir: &Path, limits: Limits) -> Result<Stats, ExtractError> {
        let fd = crate::fsx::open_dir(dir).unwrap();
        untar_gz(data, &fd, dir, None, limits)
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[cfg(unix)]
    #[test]
    fn extracts_agent_layout_with_safe_modes() {
        let data = tar_gz(|b| {
            file(b, "./bin/Agent.Listener", b"#!/bin/sh\n", 0o4775);
            file(b, "./config.sh", b"#!/bin/sh\n", 0o777);
            file(b, "./license.html", b"x", 0o666);
            raw_entry(b, "./externals/", tar::EntryType::Directory, None);
        });
        let dir = tempfile::tempdir().unwrap();
        let stats = untar(&data, dir.path()).unwrap();
        assert_eq!(stats.files, 3);
        assert_eq!(mode(&dir.path().join("bin/Agent.Listener")), 0o755);
        assert_eq!(mode(&dir.path().join("config.sh")), 0o755);
        assert_eq!(mode(&dir.path().join("license.html")), 0o644);
        assert_eq!(mode(&dir.path().join("bin")), 0o755);
        assert_eq!(mode(&dir.path().join("externals")), 0o755);
    }

    #[cfg(unix)]
    #[test]
    fn owners_are_set_as_files_are_created() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let data = tar_gz(|b| {
            file(b, "bin/Agent.Listener", b"x", 0o755);
            raw_entry(
                b,
                "bin/alias",
                tar::EntryType::Symlink,
                Some("Agent.Listener"),
            );
        });
        let dir = tempfile::tempdir().unwrap();
        let fd = crate::fsx::open_dir(dir.path()).unwrap();
        let owner = Owner {
            uid: 65534,
            gid: 65534,
        };
        untar_gz(&data[..], &fd, dir.path(), Some(owner), Limits::default()).unwrap();
        for p in ["bin", "bin/Agent.Listener", "bin/alias"] {
            let m = std::fs::symlink_metadata(dir.path().join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{p}");
        }
        // The root itself is left to the caller (it stays root's until it is moved into place).
        assert_eq!(std::fs::metadata(dir.path()).unwrap().uid(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn refuses_parent_dir_traversal() {
        let data = tar_gz(|b| {
            file(b, "bin/x", b"", 0o644);
            raw_entry(b, "../evil", tar::EntryType::Regular, None);
        });
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("root");
        std::fs::create_dir(&inner).unwrap();
        let e = untar(&data, &inner).unwrap_err();
        assert!(matches!(e, ExtractError::Traversal { .. }), "{e:?}");
        assert!(!dir.path().join("evil").exists());
    }

    #[cfg(unix)]
    #[test]
    fn refuses_absolute_paths() {
        let data = tar_gz(|b| raw_entry(b, "/tmp/evil-abs", tar::EntryType::Regular, None));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            untar(&data, dir.path()).unwrap_err(),
            ExtractError::Traversal { .. }
        ));
    }

    #[cfg(unix)]
    #[test]
    fn refuses_links_out_of_the_root() {
        for (kind, target) in [
            (tar::EntryType::Symlink, "/etc/passwd"),
            (tar::EntryType::Symlink, "../../outside"),
            (tar::EntryType::Link, "../outside"),
            (tar::EntryType::Link, "bin/not-extracted"),
        ] {
            let data = tar_gz(|b| {
                file(b, "bin/x", b"", 0o644);
                raw_entry(b, "bin/link", kind, Some(target));
            });
            let dir = tempfile::tempdir().unwrap();
            let e = untar(&data, dir.path()).unwrap_err();
            assert!(
                matches!(e, ExtractError::LinkOutside { .. }),
                "{target}: {e:?}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn link_chains_are_followed_to_the_end() {
        // b/c -> .. is inside; a -> b/c/.. then climbs out through it.
        let data = tar_gz(|b| {
            file(b, "bin/x", b"", 0o644);
            raw_entry(b, "b/", tar::EntryType::Directory, None);
            raw_entry(b, "b/c", tar::EntryType::Symlink, Some(".."));
            raw_entry(b, "a", tar::EntryType::Symlink, Some("b/c/.."));
        });
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("root");
        std::fs::create_dir(&inner).unwrap();
        let e = untar(&data, &inner).unwrap_err();
        assert!(matches!(e, ExtractError::LinkOutside { .. }), "{e:?}");
        // The same chain in the other order: a is checked again once b/c exists.
        let data = tar_gz(|b| {
            file(b, "bin/x", b"", 0o644);
            raw_entry(b, "b/", tar::EntryType::Directory, None);
            raw_entry(b, "a", tar::EntryType::Symlink, Some("b/c/.."));
            raw_entry(b, "b/c", tar::EntryType::Symlink, Some(".."));
        });
        let inner2 = dir.path().join("root2");
        std::fs::create_dir(&inner2).unwrap();
        let e = untar(&data, &inner2).unwrap_err();
        assert!(matches!(e, ExtractError::LinkOutside { .. }), "{e:?}");
    }

    #[cfg(unix)]
    #[test]
    fn entries_are_never_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        // A link inside the root that points at a directory inside it, then a file "through" it:
        // written through a link, which is refused even though the link is harmless.
        let data = tar_gz(|b| {
            file(b, "bin/x", b"", 0o644);
            raw_entry(b, "lib/", tar::EntryType::Directory, None);
            raw_entry(b, "alias", tar::EntryType::Symlink, Some("lib"));
            raw_entry(b, "alias/evil", tar::EntryType::Regular, None);
        });
        let inner = dir.path().join("root");
        std::fs::create_dir(&inner).unwrap();
        let e = untar(&data, &inner).unwrap_err();
        assert!(matches!(e, ExtractError::ThroughLink { .. }), "{e:?}");
        assert!(!inner.join("lib/evil").exists());
    }

    #[cfg(unix)]
    #[test]
    fn accepts_links_inside_the_root() {
        let data = tar_gz(|b| {
            file(b, "bin/real", b"x", 0o644);
            raw_entry(b, "bin/alias", tar::EntryType::Symlink, Some("real"));
            raw_entry(
                b,
                "externals/node",
                tar::EntryType::Symlink,
                Some("../bin/real"),
            );
            raw_entry(b, "bin/hard", tar::EntryType::Link, Some("bin/real"));
        });
        let dir = tempfile::tempdir().unwrap();
        untar(&data, dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("bin/alias")).unwrap(), b"x");
        assert_eq!(
            std::fs::read(dir.path().join("externals/node")).unwrap(),
            b"x"
        );
        assert_eq!(std::fs::read(dir.path().join("bin/hard")).unwrap(), b"x");
    }

    #[cfg(unix)]
    #[test]
    fn repeated_entries_replace_files_but_not_directories() {
        let data = tar_gz(|b| {
            file(b, "bin/x", b"old", 0o644);
            file(b, "bin/x", b"new", 0o644);
        });
        let dir = tempfile::tempdir().unwrap();
        untar(&data, dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("bin/x")).unwrap(), b"new");
        let data = tar_gz(|b| {
            file(b, "bin/x/y", b"", 0o644);
            file(b, "bin/x", b"file over a dir", 0o644);
        });
        let dir = tempfile::tempdir().unwrap();
        assert!(untar(&data, dir.path()).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn refuses_devices() {
        let data = tar_gz(|b| raw_entry(b, "bin/dev", tar::EntryType::Char, None));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            untar(&data, dir.path()).unwrap_err(),
            ExtractError::UnsupportedType { .. }
        ));
    }

    #[cfg(unix)]
    #[test]
    fn entry_count_and_size_are_capped() {
        let data = tar_gz(|b| {
            for i in 0..20 {
                file(b, &format!("bin/f{i}"), &[1u8; 1000], 0o644);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let e = untar_limited(
            &data,
            dir.path(),
            Limits {
                max_entries: 10,
                max_bytes: 1 << 30,
            },
        )
        .unwrap_err();
        assert!(
            matches!(e, ExtractError::TooManyEntries { max: 10 }),
            "{e:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let e = untar_limited(
            &data,
            dir.path(),
            Limits {
                max_entries: 1000,
                max_bytes: 5000,
            },
        )
        .unwrap_err();
        assert!(matches!(e, ExtractError::TooLarge { max: 5000 }), "{e:?}");
    }

    #[cfg(unix)]
    #[test]
    fn refuses_garbage_and_non_agents() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            untar(b"not a gzip stream at all", dir.path()).unwrap_err(),
            ExtractError::Corrupt { .. }
        ));
        let data = tar_gz(|b| file(b, "readme.txt", b"x", 0o644));
        assert!(matches!(
            untar(&data, dir.path()).unwrap_err(),
            ExtractError::NotAnAgent
        ));
    }

    #[test]
    fn zip_entries_are_checked() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.zip");
        {
            let mut z = zip::ZipWriter::new(std::fs::File::create(&good).unwrap());
            let o = zip::write::SimpleFileOptions::default();
            z.start_file("bin/Agent.Listener.exe", o).unwrap();
            z.write_all(b"MZ").unwrap();
            z.start_file("config.cmd", o).unwrap();
            z.write_all(b"@echo off").unwrap();
            z.finish().unwrap();
        }
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let open = |p: &Path| std::fs::File::open(p).unwrap();
        assert_eq!(
            unzip(open(&good), &good, &out, Limits::default())
                .unwrap()
                .files,
            2
        );
        assert_eq!(std::fs::read(out.join("config.cmd")).unwrap(), b"@echo off");

        let bad = dir.path().join("bad.zip");
        {
            let mut z = zip::ZipWriter::new(std::fs::File::create(&bad).unwrap());
            let o = zip::write::SimpleFileOptions::default();
            z.start_file("../evil.txt", o).unwrap();
            z.write_all(b"x").unwrap();
            z.finish().unwrap();
        }
        let out2 = dir.path().join("out2");
        std::fs::create_dir(&out2).unwrap();
        assert!(matches!(
            unzip(open(&bad), &bad, &out2, Limits::default()).unwrap_err(),
            ExtractError::Traversal { .. }
        ));
        assert!(!dir.path().join("evil.txt").exists());
    }

    fn agent_zip(path: &Path) {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let o = zip::write::SimpleFileOptions::default();
        z.start_file("bin/Agent.Listener.exe", o).unwrap();
        z.write_all(b"MZ").unwrap();
        z.start_file("config.cmd", o).unwrap();
        z.write_all(b"@echo off").unwrap();
        z.finish().unwrap();
    }

    /// A link to a directory, made the way this platform makes one (Windows: a directory symbolic
    /// link, a reparse point), or `None` where the account may not (Windows without the right).
    fn dir_link(target: &Path, link: &Path) -> Option<()> {
        #[cfg(unix)]
        let made = std::os::unix::fs::symlink(target, link);
        #[cfg(windows)]
        let made = std::os::windows::fs::symlink_dir(target, link);
        link_made(made, link)
    }

    /// Wine's `CreateSymbolicLinkW` answers success and makes nothing: a link is only used when
    /// it is really there.
    fn link_made(made: std::io::Result<()>, link: &Path) -> Option<()> {
        match made.and_then(|()| std::fs::symlink_metadata(link)) {
            Ok(m) if is_link(&m) => Some(()),
            other => {
                eprintln!("cannot make a link here ({other:?}); skipped");
                None
            }
        }
    }

    fn file_link(target: &Path, link: &Path) -> Option<()> {
        #[cfg(unix)]
        let made = std::os::unix::fs::symlink(target, link);
        #[cfg(windows)]
        let made = std::os::windows::fs::symlink_file(target, link);
        link_made(made, link)
    }

    #[test]
    fn zip_extraction_never_follows_a_link_planted_in_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("agent.zip");
        agent_zip(&zip);
        let open = || std::fs::File::open(&zip).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();

        // A junction / link where a directory of the package goes.
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        if dir_link(&outside, &out.join("bin")).is_none() {
            return;
        }
        let e = unzip(open(), &zip, &out, Limits::default()).unwrap_err();
        assert!(matches!(e, ExtractError::ThroughLink { .. }), "{e:?}");
        assert!(!outside.join("Agent.Listener.exe").exists());

        // A link where a file of the package goes.
        let out = dir.path().join("out2");
        std::fs::create_dir(&out).unwrap();
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, "root's").unwrap();
        if file_link(&victim, &out.join("config.cmd")).is_none() {
            return;
        }
        let e = unzip(open(), &zip, &out, Limits::default()).unwrap_err();
        assert!(matches!(e, ExtractError::ThroughLink { .. }), "{e:?}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's");

        // The destination itself a link.
        let out = dir.path().join("out3");
        if dir_link(&outside, &out).is_none() {
            return;
        }
        let e = unzip(open(), &zip, &out, Limits::default()).unwrap_err();
        assert!(matches!(e, ExtractError::ThroughLink { .. }), "{e:?}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn zip_is_extracted_from_the_handle_it_was_verified_through() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("agent.zip");
        agent_zip(&zip);
        let verified = std::fs::File::open(&zip).unwrap();
        // Another archive takes the name after the check: the open handle still reads the first.
        std::fs::rename(&zip, dir.path().join("moved.zip")).unwrap();
        {
            use std::io::Write;
            let mut z = zip::ZipWriter::new(std::fs::File::create(&zip).unwrap());
            z.start_file("bin/evil.exe", zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(b"evil").unwrap();
            z.finish().unwrap();
        }
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unzip(verified, &zip, &out, Limits::default()).unwrap();
        assert!(out.join("bin/Agent.Listener.exe").is_file());
        assert!(!out.join("bin/evil.exe").exists());
    }

    #[test]
    fn link_logic() {
        let none = HashMap::new();
        assert!(link_resolves_inside(
            &none,
            Path::new("a/b"),
            Path::new("c")
        ));
        assert!(link_resolves_inside(
            &none,
            Path::new("a/b"),
            Path::new("../c")
        ));
        assert!(!link_resolves_inside(
            &none,
            Path::new("a/b"),
            Path::new("../../c")
        ));
        assert!(!link_resolves_inside(
            &none,
            Path::new("b"),
            Path::new("/abs")
        ));
        let mut links = HashMap::new();
        links.insert(PathBuf::from("b/c"), PathBuf::from(".."));
        assert!(link_resolves_inside(
            &links,
            Path::new("b/c"),
            Path::new("..")
        ));
        assert!(!link_resolves_inside(
            &links,
            Path::new("a"),
            Path::new("b/c/..")
        ));
        // A loop is refused, not followed forever.
        let mut looped = HashMap::new();
        looped.insert(PathBuf::from("x"), PathBuf::from("y"));
        looped.insert(PathBuf::from("y"), PathBuf::from("x"));
        assert!(!link_resolves_inside(
            &looped,
            Path::new("z"),
            Path::new("x/q")
        ));
    }
}
