//! Getting the agent package onto the disk, verified, without ever using a half-written one.
//!
//! Bytes flow once through a pipeline while they arrive: SHA-256 → a `.partial` file in the cache →
//! a bounded channel → gunzip → tar, unpacking into a [`Staging`] directory beside the agent dir
//! (same file system, so the final move is a rename). A dropped connection resumes with `Range` (a
//! `206` is required; a `200` restarts and the already-seen prefix is skipped), so the extractor
//! sees one continuous stream; retries follow [`crate::net`]'s table, with a budget that starts over
//! whenever bytes arrive. Only when the digest matches is the staging directory moved into place
//! ([`place`]) and the archive kept in the cache as `<sha256>.<ext>`, so a re-run does not download
//! again. Memory use is bounded by the channel, not by the package size.
//!
//! Staging is `0700 root` until it is complete, and files inside get their owner as they are
//! created ([`extract`]). An existing agent dir is never extracted into: the fresh tree takes its
//! place by rename, carrying over only the agent user's work and log directories, by rename too.
//! Nothing is written into a directory the agent user could have written to.

pub mod extract;

#[cfg(unix)]
use std::io::Read;
#[cfg(unix)]
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::interrupt::Debris;
use crate::net::{Class, Net, Service, Try};
use crate::os::ArchiveKind;
use crate::progress::Progress;
use extract::{ExtractError, Stats};
pub use extract::{Limits, Owner};

/// Chunks in flight between the downloader and the extractor.
const CHANNEL_DEPTH: usize = 32;
const READ_CHUNK: usize = 256 * 1024;
/// A download is given up when this long passes without a byte arriving (across retries).
pub const DOWNLOAD_STALL_BUDGET: Duration = Duration::from_secs(120);
/// Names of what a run leaves beside the agent dir and in the cache while it works; `<tag>` is
/// the agent dir's own ([`crate::state::tag`]), so a run cleans up only after its own agent dir.
const STAGING_PREFIX: &str = ".agent-bootstrap-staging-";
const OLD_PREFIX: &str = ".agent-bootstrap-old-";
const PARTIAL_PREFIX: &str = ".download-";

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error(
        "SHA-256 mismatch for {source_name}: expected {expected}, got {actual}; nothing was installed"
    )]
    HashMismatch {
        source_name: String,
        expected: String,
        actual: String,
    },
    #[error("not installing the agent package at {url}: {reason}")]
    Refused { url: String, reason: String },
    #[error("downloading {url} failed with HTTP {status}")]
    Http { url: String, status: u16 },
    #[error("the agent package at {url} cannot be downloaded: {blocked}; nothing was installed")]
    Blocked {
        url: String,
        blocked: Box<crate::net::Blocked>,
    },
    #[error("downloading {url} failed after {attempts} attempts: {detail}")]
    Download {
        url: String,
        attempts: u32,
        detail: String,
    },
    #[error("{path} is not a directory agent-bootstrap can replace ({detail})")]
    NotReplaceable { path: PathBuf, detail: String },
    #[error(
        "the server sent a byte range for {url} that does not continue the download ({detail})"
    )]
    BadRange { url: String, detail: String },
    #[error("could not extract {source_name}")]
    Extract {
        source_name: String,
        #[source]
        source: ExtractError,
    },
    #[error(
        "not enough space for the agent package: {place} is on {}, which has {} free{}; nothing \
         was installed\nhint: free space on {}, or put {place} on another file system ({fix}), \
         and run the same command again",
        mount.display(),
        mib(*free),
        need.map(|n| format!(", and it needs about {}", mib(n))).unwrap_or_default(),
        mount.display()
    )]
    NoSpace {
        place: &'static str,
        mount: PathBuf,
        free: u64,
        need: Option<u64>,
        fix: &'static str,
    },
    #[error("{action} '{path}' failed")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Where a download and its extraction write, and how much the extraction needs: checked against
/// the free space of each file system before the first byte is written, and used to name the
/// file system when a write finds the disk full anyway.
#[derive(Debug, Clone)]
struct Room {
    /// The package cache (`None` when the package is read from it).
    cache: Option<PathBuf>,
    /// The staging tree beside the agent dir.
    staging: PathBuf,
    /// What this package took once extracted, measured by an earlier run.
    extracted: Option<u64>,
}

/// Extracted packages are larger than their archives; without a measurement, assume this much.
const EXTRACTED_PER_ARCHIVE_BYTE: u64 = 3;

impl Room {
    fn new(req: &Request, from_cache: bool, cache_dir: &Path, staging: &Path) -> Self {
        Self {
            cache: (!from_cache).then(|| cache_dir.to_owned()),
            staging: staging.to_owned(),
            extracted: req
                .sha256
                .as_deref()
                .and_then(|sha| fs_err::read_to_string(size_record(cache_dir, sha)).ok())
                .and_then(|t| t.trim().parse().ok()),
        }
    }

    const CACHE: &'static str = "the package cache";
    const AGENT_DIR: &'static str = "the agent dir";

    fn fix(place: &'static str) -> &'static str {
        if place == Self::CACHE {
            "AGENT_BOOTSTRAP_CACHE_DIR"
        } else {
            "--agent-dir"
        }
    }

    /// Before writing an archive of `total` bytes: enough free space for its copy in the cache and
    /// for its extraction (measured, or estimated), with a tenth more; both on one file system
    /// count together.
    fn check(&self, total: u64) -> Result<(), PackageError> {
        let extracted = self
            .extracted
            .unwrap_or(total.saturating_mul(EXTRACTED_PER_ARCHIVE_BYTE));
        let margin = |n: u64| n.saturating_add(n / 10);
        let staging = crate::preflight::free_space(&self.staging);
        let cache = self.cache.as_deref().and_then(crate::preflight::free_space);
        let mut wants = vec![];
        if let Some((mount, free)) = cache {
            wants.push((Self::CACHE, mount, free, margin(total)));
        }
        if let Some((mount, free)) = staging {
            match wants.iter_mut().find(|w| w.1 == mount) {
                Some(w) => w.3 = w.3.saturating_add(margin(extracted)),
                None => wants.push((Self::AGENT_DIR, mount, free, margin(extracted))),
            }
        }
        match wants.into_iter().find(|w| w.2 < w.3) {
            Some((place, mount, free, need)) => Err(PackageError::NoSpace {
                place,
                mount,
                free,
                need: Some(need),
                fix: Self::fix(place),
            }),
            None => Ok(()),
        }
    }

    /// `e` as the full disk it is (ENOSPC, EDQUOT anywhere in its chain), naming the file system.
    fn explain(&self, e: PackageError) -> PackageError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        let mut full = false;
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<std::io::Error>()
                && (io.kind() == std::io::ErrorKind::StorageFull
                    || io.kind() == std::io::ErrorKind::QuotaExceeded)
            {
                full = true;
            }
            cause = c.source();
        }
        if !full {
            return e;
        }
        let in_cache = matches!(&e, PackageError::Io { path, .. }
            if self.cache.as_deref().is_some_and(|c| path.starts_with(c)));
        let (place, path) = match (&self.cache, in_cache) {
            (Some(c), true) => (Self::CACHE, c.clone()),
            _ => (Self::AGENT_DIR, self.staging.clone()),
        };
        match crate::preflight::free_space(&path) {
            Some((mount, free)) => PackageError::NoSpace {
                place,
                mount,
                free,
                need: None,
                fix: Self::fix(place),
            },
            None => e,
        }
    }
}

/// Where the measured extracted size of the package with this SHA-256 is kept.
fn size_record(cache_dir: &Path, sha256: &str) -> PathBuf {
    cache_dir.join(format!("{sha256}.size"))
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PackageError {
    let path = path.to_owned();
    move |source| PackageError::Io {
        action,
        path,
        source,
    }
}

#[derive(Debug, Clone)]
pub enum Source {
    Url(Url),
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(u) => write!(f, "{u}"),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub source: Source,
    /// Lower-case hex. `None` only for a `--package` given without `--package-sha256`.
    pub sha256: Option<String>,
    pub kind: ArchiveKind,
}

#[derive(Debug, Clone)]
pub struct Fetched {
    pub sha256: String,
    pub bytes: u64,
    pub from_cache: bool,
    pub stats: Stats,
    pub cache_file: Option<PathBuf>,
}

/// The cache file for a verified archive.
pub fn cache_path(cache_dir: &Path, sha256: &str, kind: ArchiveKind) -> PathBuf {
    cache_dir.join(format!("{sha256}.{}", kind.extension()))
}

/// Normalizes a hex digest as given by a user or the packages API (`-` and case ignored, like the
/// agent's `StringUtil.AreHashesEqual`).
pub fn normalize_sha256(raw: &str) -> Option<String> {
    let cleaned: String = raw
        .trim()
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    (cleaned.len() == 64 && cleaned.chars().all(|c| c.is_ascii_hexdigit())).then_some(cleaned)
}

/// Where a package is extracted before it is moved into place: a directory beside the agent dir,
/// `0700` and owned by us until [`place`] moves it, deleted if the run ends any other way.
#[derive(Debug)]
pub struct Staging {
    debris: Debris,
    /// Unix: the directory, opened: extraction and the hand-over go through it.
    #[cfg(unix)]
    fd: OwnedFd,
}

impl Staging {
    /// A fresh, empty staging directory in `parent` (the agent dir's parent, so moving it into
    /// place is a rename; on Windows preferably the cache directory, see [`staging_parent`]).
    pub fn create(parent: &Path, tag: &str) -> Result<Self, PackageError> {
        #[cfg(unix)]
        {
            let dir = tempfile::Builder::new()
                .prefix(&format!("{STAGING_PREFIX}{tag}-"))
                .tempdir_in(parent)
                .map_err(io_err("creating a staging directory in", parent))?
                .keep();
            let debris = Debris::track(&dir);
            use std::os::unix::fs::PermissionsExt;
            fs_err::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err("setting permissions on", &dir))?;
            let fd = crate::fsx::open_dir(&dir).map_err(|e| PackageError::Io {
                action: "opening",
                path: dir.clone(),
                source: e.into(),
            })?;
            Ok(Self { debris, fd })
        }
        // Windows: created with SYSTEM's and Administrators' ACL alone, by `CreateDirectoryW`
        // itself, never with what it would inherit (`C:\` lets Users create folders, and their
        // contents stay writable by their creator); a name that exists (a planted junction
        // included) is never used.
        #[cfg(windows)]
        {
            let dir = private_unique_dir(parent, &format!("{STAGING_PREFIX}{tag}-"))
                .map_err(io_err("creating a staging directory in", parent))?;
            Ok(Self {
                debris: Debris::track(&dir),
            })
        }
    }

    pub fn path(&self) -> &Path {
        self.debris.path()
    }

    /// Empties it (after a damaged cache entry was extracted half-way).
    fn reset(self, tag: &str) -> Result<Self, PackageError> {
        let parent = self
            .path()
            .parent()
            .expect("staging has a parent")
            .to_owned();
        drop(self);
        Self::create(&parent, tag)
    }
}

/// Windows: a new directory `<prefix><random>` in `parent`, private from its creation
/// ([`crate::fsx::create_private_dir`]); a name already taken is never reused.
#[cfg(windows)]
fn private_unique_dir(parent: &Path, prefix: &str) -> std::io::Result<PathBuf> {
    let mut tries = 0;
    loop {
        let dir = parent.join(format!("{prefix}{:012x}", fastrand::u64(..1 << 48)));
        match crate::fsx::create_private_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Where the staging directory goes. Windows: the cache directory (SYSTEM's and Administrators'
/// alone, [`crate::fsx::PRIVATE_DIR_SDDL`]) when it is on the agent dir's volume, so placing the
/// tree stays a rename; else beside the agent dir (the staging dir's own ACL, set at creation,
/// keeps everyone else out either way). Unix: beside the agent dir.
fn staging_parent<'a>(cache_dir: &'a Path, parent: &'a Path) -> &'a Path {
    #[cfg(windows)]
    if let (Some(a), Some(b)) = (
        crate::platform::volume_of(cache_dir),
        crate::platform::volume_of(parent),
    ) && a.as_os_str().eq_ignore_ascii_case(b.as_os_str())
    {
        return cache_dir;
    }
    let _ = cache_dir;
    parent
}

/// What to fetch and where to put it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub cache_dir: &'a Path,
    /// The agent dir's tag: names this run's temporary files.
    pub tag: &'a str,
    /// Who gets the extracted files (`None`: whoever runs us).
    pub owner: Option<Owner>,
    pub limits: Limits,
}

/// Downloads (or reads) the package and extracts it into a new [`Staging`] beside `parent`,
/// verifying the SHA-256. On error nothing is left behind.
pub async fn fetch_and_extract(
    req: &Request,
    parent: &Path,
    target: Target<'_>,
    net: &Net,
    progress: &Progress,
) -> Result<(Staging, Fetched), PackageError> {
    let cache_dir = target.cache_dir;
    crate::fsx::create_private_dir_all(cache_dir)
        .map_err(io_err("creating the cache directory", cache_dir))?;
    let staging = Staging::create(staging_parent(cache_dir, parent), target.tag)?;
    let fetch = Fetch {
        req,
        target,
        net,
        progress,
    };
    let (staging, cached) = fetch.try_cache(staging).await?;
    if let Some(fetched) = cached {
        return Ok((staging, fetched));
    }
    let room = Room::new(req, false, cache_dir, staging.path());
    let fetched = fetch
        .once(&req.source, false, &staging)
        .await
        .map_err(|e| room.explain(e))?;
    record_extracted_size(cache_dir, &fetched);
    Ok((staging, fetched))
}

/// Measured once per package: the next run's free-space check knows what extraction takes.
fn record_extracted_size(cache_dir: &Path, fetched: &Fetched) {
    let record = size_record(cache_dir, &fetched.sha256);
    if let Err(e) = fs_err::write(&record, fetched.stats.bytes.to_string()) {
        tracing::debug!("{e}");
    }
}

/// What every attempt at getting the package shares: the request, where it goes, the network and
/// the progress bar. Each attempt ([`Fetch::once`]) reads one source into one staging directory.
#[derive(Clone, Copy)]
struct Fetch<'a> {
    req: &'a Request,
    target: Target<'a>,
    net: &'a Net,
    progress: &'a Progress,
}

/// The extraction of a `.tar.gz`, running on a blocking thread while the bytes arrive.
type Extractor = tokio::task::JoinHandle<Result<Stats, ExtractError>>;

impl Fetch<'_> {
    /// A verified copy in the cache beats the network; it is verified again as it is read. Returns
    /// the staging directory (emptied again if the cached copy failed half-way) and what was
    /// fetched from the cache, if it was.
    async fn try_cache(
        &self,
        staging: Staging,
    ) -> Result<(Staging, Option<Fetched>), PackageError> {
        let Some(sha) = &self.req.sha256 else {
            return Ok((staging, None));
        };
        let cached = cache_path(self.target.cache_dir, sha, self.req.kind);
        if !cached.is_file() {
            return Ok((staging, None));
        }
        tracing::info!(path = %cached.display(), "using the cached agent package");
        let source = Source::File(cached.clone());
        match self.once(&source, true, &staging).await {
            Ok(f) => Ok((staging, Some(f))),
            Err(e) => {
                // A damaged cache entry must not fail every later run: drop it, fetch again.
                tracing::warn!(
                    "the cached package is unusable ({}); removing it and fetching again",
                    crate::report::report(&e)
                );
                fs_err::remove_file(&cached).map_err(io_err("removing", &cached))?;
                Ok((staging.reset(self.target.tag)?, None))
            }
        }
    }

    /// Reads `source` once through the pipeline into `staging`, hashing the bytes as they pass
    /// (`from_cache`: `source` is the cache's own copy, so nothing is written to the cache).
    async fn once(
        &self,
        source: &Source,
        from_cache: bool,
        staging: &Staging,
    ) -> Result<Fetched, PackageError> {
        let source_name = source.to_string();
        let cache_dir = self.target.cache_dir;
        // Tee into the cache unless we are reading the cache.
        let partial = if from_cache {
            None
        } else {
            Some(self.partial_file()?)
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_DEPTH);
        let extractor = self.start_extractor(&source_name, staging, rx)?;
        let room = Room::new(self.req, from_cache, cache_dir, staging.path());
        let mut sink = Sink::new(tx, partial.as_ref(), room)?;
        let (fed, opened) = self.feed(source, &mut sink).await;
        self.progress.finish();
        // Close the channel so the extractor sees the end, whatever happened.
        sink.tx = None;
        let extracted = match extractor {
            Some(handle) => Some(handle.await.expect("extractor thread panicked")),
            None => None,
        };
        fed?;
        let actual = sink.finish(cache_dir).await?;
        self.verify(&source_name, &actual)?;
        // Verified. Keep it in the cache, then (zip) extract from the same open file.
        let (cache_file, verified) = self.keep(partial, &actual, source, opened)?;
        let stats = match extracted {
            Some(result) => result,
            None => self.unzip(verified, cache_file.clone(), staging).await,
        }
        .map_err(|source| PackageError::Extract {
            source_name,
            source,
        })?;
        Ok(Fetched {
            sha256: actual,
            bytes: sink.bytes,
            from_cache,
            stats,
            cache_file: if from_cache { None } else { cache_file },
        })
    }

    /// The cache's copy while it downloads: `.download-<tag>-….partial`, deleted unless kept.
    fn partial_file(&self) -> Result<tempfile::NamedTempFile, PackageError> {
        let cache_dir = self.target.cache_dir;
        tempfile::Builder::new()
            .prefix(&format!("{PARTIAL_PREFIX}{}-", self.target.tag))
            .suffix(".partial")
            .tempfile_in(cache_dir)
            .map_err(io_err("creating a download file in", cache_dir))
    }

    /// Starts extracting a `.tar.gz` from the channel as it fills; a zip's directory is at its
    /// end, so it is extracted from the verified file afterwards ([`Fetch::unzip`]): `None`.
    fn start_extractor(
        &self,
        source_name: &str,
        staging: &Staging,
        rx: tokio::sync::mpsc::Receiver<Bytes>,
    ) -> Result<Option<Extractor>, PackageError> {
        match self.req.kind {
            #[cfg(not(unix))]
            ArchiveKind::TarGz => {
                let _ = staging;
                Err(PackageError::Refused {
                    url: source_name.to_owned(),
                    reason: "a .tar.gz package is for Linux and macOS; Windows agents come as .zip"
                        .into(),
                })
            }
            #[cfg(unix)]
            ArchiveKind::TarGz => {
                let _ = source_name;
                let root = staging
                    .fd
                    .try_clone()
                    .map_err(io_err("opening", staging.path()))?;
                let root_path = staging.path().to_owned();
                let (owner, limits) = (self.target.owner, self.target.limits);
                Ok(Some(tokio::task::spawn_blocking(move || {
                    let mut reader = ChannelReader::new(rx);
                    let result = extract::untar_gz(&mut reader, &root, &root_path, owner, limits);
                    reader.drain();
                    result
                })))
            }
            ArchiveKind::Zip => {
                drop(rx);
                Ok(None)
            }
        }
    }

    /// Feeds the sink from `source`. A file is opened once: what is hashed is what is extracted
    /// (no second open by path that another file could have taken the place of), so the open
    /// file is returned too.
    async fn feed(
        &self,
        source: &Source,
        sink: &mut Sink,
    ) -> (Result<(), PackageError>, Option<std::fs::File>) {
        match source {
            Source::File(path) => match open_package(path) {
                Ok(file) => {
                    let fed = feed_file(&file, path, sink, self.progress).await;
                    (fed, Some(file))
                }
                Err(e) => (Err(e), None),
            },
            Source::Url(url) => (feed_url(url, sink, self.progress, self.net).await, None),
        }
    }

    /// The digest of what was read against the one asked for, if one was.
    fn verify(&self, source_name: &str, actual: &str) -> Result<(), PackageError> {
        match &self.req.sha256 {
            Some(expected) if expected != actual => Err(PackageError::HashMismatch {
                source_name: source_name.to_owned(),
                expected: expected.clone(),
                actual: actual.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Keeps a verified download in the cache as `<sha256>.<ext>`. Returns where the archive is
    /// on disk and its open file (for a zip to be extracted from), when there is one.
    fn keep(
        &self,
        partial: Option<tempfile::NamedTempFile>,
        actual: &str,
        source: &Source,
        opened: Option<std::fs::File>,
    ) -> Result<(Option<PathBuf>, Option<std::fs::File>), PackageError> {
        match partial {
            Some(p) => {
                let dest = cache_path(self.target.cache_dir, actual, self.req.kind);
                let file = p.persist(&dest).map_err(|e| PackageError::Io {
                    action: "saving the verified package to",
                    path: dest.clone(),
                    source: e.error,
                })?;
                Ok((Some(dest), Some(file)))
            }
            None => Ok(match source {
                Source::File(p) => (Some(p.clone()), opened),
                Source::Url(_) => (None, None),
            }),
        }
    }

    /// Extracts a verified zip from its open file (`shown` is its path, for messages).
    async fn unzip(
        &self,
        file: Option<std::fs::File>,
        shown: Option<PathBuf>,
        staging: &Staging,
    ) -> Result<Stats, ExtractError> {
        let file = file.expect("zip packages are always on disk");
        let shown = shown.expect("zip packages are always on disk");
        let staging = staging.path().to_owned();
        let limits = self.target.limits;
        tokio::task::spawn_blocking(move || extract::unzip(file, &shown, &staging, limits))
            .await
            .expect("unzip thread panicked")
    }
}

/// Where the bytes go as they arrive: the hasher, the cache's copy and the extractor's channel.
struct Sink {
    hasher: Sha256,
    bytes: u64,
    file: Option<tokio::fs::File>,
    file_path: Option<PathBuf>,
    tx: Option<tokio::sync::mpsc::Sender<Bytes>>,
    room: Room,
}

impl Sink {
    /// A sink writing to `partial` (when there is one) and sending to `tx`.
    fn new(
        tx: tokio::sync::mpsc::Sender<Bytes>,
        partial: Option<&tempfile::NamedTempFile>,
        room: Room,
    ) -> Result<Self, PackageError> {
        let file = match partial {
            Some(p) => Some(tokio::fs::File::from_std(
                p.reopen()
                    .map_err(io_err("opening the download file", p.path()))?,
            )),
            None => None,
        };
        Ok(Self {
            hasher: Sha256::new(),
            bytes: 0,
            file,
            file_path: partial.map(|p| p.path().to_owned()),
            tx: Some(tx),
            room,
        })
    }

    async fn push(&mut self, chunk: Bytes) -> Result<(), PackageError> {
        self.hasher.update(&chunk);
        self.bytes += chunk.len() as u64;
        if let Some(f) = self.file.as_mut() {
            let path = self.file_path.clone().unwrap_or_default();
            f.write_all(&chunk)
                .await
                .map_err(io_err("writing the download to", &path))?;
        }
        if let Some(tx) = &self.tx
            && tx.send(chunk).await.is_err()
        {
            // The extractor stopped (a broken archive). Keep hashing to the end: a digest
            // mismatch is the better diagnosis, and it is reported first.
            self.tx = None;
        }
        Ok(())
    }

    /// After the last byte: flushes the cache's copy and returns the SHA-256 of all, in hex.
    async fn finish(&mut self, cache_dir: &Path) -> Result<String, PackageError> {
        if let Some(f) = self.file.as_mut() {
            // Flushed, not fsynced: a cache entry is verified again whenever it is read (a torn
            // one after a power cut is dropped and fetched again), so waiting for the disk buys
            // nothing.
            f.flush().await.map_err(io_err(
                "writing",
                self.file_path.as_deref().unwrap_or(cache_dir),
            ))?;
        }
        Ok(hex::encode(self.hasher.finalize_reset()))
    }
}

/// Opens a package file for reading (once: it is hashed and extracted through this handle).
fn open_package(path: &Path) -> Result<std::fs::File, PackageError> {
    std::fs::File::open(path).map_err(io_err("opening the package", path))
}

/// Feeds the sink from `file` (read through a duplicate of the handle; the caller rewinds it).
async fn feed_file(
    file: &std::fs::File,
    path: &Path,
    sink: &mut Sink,
    progress: &Progress,
) -> Result<(), PackageError> {
    let mut file = tokio::fs::File::from_std(
        file.try_clone()
            .map_err(io_err("opening the package", path))?,
    );
    let total = file.metadata().await.ok().map(|m| m.len());
    if let Some(n) = total {
        sink.room.check(n)?;
    }
    progress.start(total);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        use tokio::io::AsyncReadExt;
        let n = file
            .read(&mut buf)
            .await
            .map_err(io_err("reading the package", path))?;
        if n == 0 {
            return Ok(());
        }
        sink.push(Bytes::copy_from_slice(&buf[..n])).await?;
        progress.advance(n as u64);
    }
}

/// Downloads `url` into the sink, resuming after dropped connections, retrying per the table.
async fn feed_url(
    url: &Url,
    sink: &mut Sink,
    progress: &Progress,
    net: &Net,
) -> Result<(), PackageError> {
    let shown = url.to_string();
    let budget = net.clock().budget(DOWNLOAD_STALL_BUDGET);
    let mut download = Download {
        url,
        shown: &shown,
        net,
        sink,
        progress,
        total: None,
    };
    let outcome = net
        .retry(&format!("downloading {shown}"), budget, async |_| {
            download.attempt().await
        })
        .await;
    match outcome {
        Ok(result) => result,
        Err(crate::net::GaveUp {
            blocked: Some(blocked),
            ..
        }) => Err(PackageError::Blocked {
            url: shown,
            blocked: Box::new(blocked),
        }),
        Err(g) => Err(PackageError::Download {
            url: shown,
            attempts: g.attempts,
            detail: g.last,
        }),
    }
}

/// What one attempt at a download comes to ([`Download::attempt`]); as the error of a step, the
/// attempt ends there with it.
type Attempt = Try<Result<(), PackageError>>;

/// Worth another attempt (`moved`: this one got bytes, so the stall budget starts over).
fn again(class: Class, wait_hint: Option<Duration>, detail: String, moved: bool) -> Attempt {
    Try::Again {
        class,
        wait_hint,
        detail,
        progress: moved,
    }
}

/// One download across its attempts: each asks for what the sink does not have yet.
struct Download<'a> {
    url: &'a Url,
    shown: &'a str,
    net: &'a Net,
    sink: &'a mut Sink,
    progress: &'a Progress,
    /// The whole length, as the last answer that sent the whole file gave it.
    total: Option<u64>,
}

impl Download<'_> {
    /// One request from where the sink stands, its body into the sink.
    async fn attempt(&mut self) -> Attempt {
        let offset = self.sink.bytes;
        match self.transfer(offset).await {
            Ok(()) => self.complete(offset),
            Err(ended) => ended,
        }
    }

    /// Sends the request, takes the answer and reads its body; an error is how the attempt ended.
    async fn transfer(&mut self, offset: u64) -> Result<(), Attempt> {
        let response = self.send(offset).await?;
        let skip = self.accept(&response, offset)?;
        self.read_body(response, offset, skip).await
    }

    /// Sends the request (with `Range` when `offset` bytes are in already) and takes a success;
    /// a blocked connection stops, a failure is retried or fatal per the table.
    async fn send(&self, offset: u64) -> Result<reqwest::Response, Attempt> {
        let mut request = self.net.client(Service::Download).get(self.url.clone());
        if offset > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                if let Some(blocked) = self.net.blocked(&e) {
                    return Err(Try::Stop(blocked));
                }
                return Err(again(
                    Class::Backoff,
                    None,
                    crate::report::one_line(&e),
                    false,
                ));
            }
        };
        let status = response.status().as_u16();
        match crate::net::retry::classify(Service::Download, status) {
            Class::Success => Ok(response),
            Class::Fatal => Err(Try::Done(Err(PackageError::Http {
                url: self.shown.to_owned(),
                status,
            }))),
            class => {
                let hint = self.net.wait_hint(status, response.headers());
                Err(again(class, hint, format!("HTTP {status}"), false))
            }
        }
    }

    /// Where the answer's body stands against the sink. A `206` must continue at `offset`; any
    /// other success is the whole file: its length is noted and, on the first request, checked
    /// against the free space and shown by the progress bar. Returns how many leading bytes to
    /// skip (those the sink has already).
    fn accept(&mut self, response: &reqwest::Response, offset: u64) -> Result<u64, Attempt> {
        let bad_range = |detail: String| {
            Try::Done(Err(PackageError::BadRange {
                url: self.shown.to_owned(),
                detail,
            }))
        };
        match response.status().as_u16() {
            206 if offset > 0 => {
                let range = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !range.starts_with(&format!("bytes {offset}-")) {
                    return Err(bad_range(format!(
                        "asked for bytes={offset}-, got Content-Range '{range}'"
                    )));
                }
                Ok(0)
            }
            206 => Err(bad_range(
                "a partial answer to a request for the whole file".into(),
            )),
            _ => {
                self.total = response.content_length();
                if offset == 0 {
                    if let Some(n) = self.total
                        && let Err(e) = self.sink.room.check(n)
                    {
                        return Err(Try::Done(Err(e)));
                    }
                    self.progress.start(self.total);
                }
                // The server ignored Range: read past what we already have.
                Ok(offset)
            }
        }
    }

    /// Streams the body into the sink, past its first `skip` bytes; a broken stream is retried.
    async fn read_body(
        &mut self,
        response: reqwest::Response,
        offset: u64,
        mut skip: u64,
    ) -> Result<(), Attempt> {
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let mut chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let moved = self.sink.bytes > offset;
                    return Err(again(
                        Class::Backoff,
                        None,
                        crate::report::one_line(&e),
                        moved,
                    ));
                }
            };
            if skip > 0 {
                let drop_n = skip.min(chunk.len() as u64) as usize;
                skip -= drop_n as u64;
                chunk = chunk.slice(drop_n..);
                if chunk.is_empty() {
                    continue;
                }
            }
            let n = chunk.len() as u64;
            self.sink.push(chunk).await.map_err(|e| Try::Done(Err(e)))?;
            self.progress.advance(n);
        }
        Ok(())
    }

    /// After the body: fewer bytes than the whole length means the connection was cut.
    fn complete(&self, offset: u64) -> Attempt {
        match self.total {
            Some(t) if self.sink.bytes < t => again(
                Class::Backoff,
                None,
                format!("connection closed after {} of {t} bytes", self.sink.bytes),
                self.sink.bytes > offset,
            ),
            _ => Try::Done(Ok(())),
        }
    }
}

/// `Read` over the chunks the downloader sends; used on the extractor's blocking thread.
#[cfg(unix)]
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

#[cfg(unix)]
impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }

    /// Consumes what the archive reader did not need, so the sender never blocks on us.
    fn drain(&mut self) {
        self.rx.close();
        while self.rx.blocking_recv().is_some() {}
    }
}

#[cfg(unix)]
impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Whether `agent_dir` exists as a real directory; a link or a file there is never replaced.
fn existing_dir(agent_dir: &Path) -> Result<bool, PackageError> {
    match fs_err::symlink_metadata(agent_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("reading", agent_dir)(e)),
        Ok(m) if m.file_type().is_dir() => Ok(true),
        Ok(_) => Err(PackageError::NotReplaceable {
            path: agent_dir.to_owned(),
            detail: "it is a link or a file".into(),
        }),
    }
}

/// Moves a complete staging tree into place as `agent_dir` and hands it to `owner`.
///
/// An existing `agent_dir` (unconfigured: a reimaged disk, an interrupted run, a wiped `bin`) is
/// never extracted into: each name in `carry` (the work and log directories) that is a real
/// directory there is moved into the new tree by rename, then the two trees are exchanged by rename
/// and the old one is deleted (without following any link in it). Safety in one sentence: root
/// writes only into its own `0700` staging tree, and the agent user's files reach the new tree
/// only as whole directories moved by rename, which root never opens.
#[cfg(unix)]
pub fn place(
    staging: Staging,
    agent_dir: &Path,
    carry: &[String],
    owner: Option<Owner>,
) -> Result<(), PackageError> {
    use nix::fcntl::{AtFlags, renameat};
    let not_replaceable = |detail: String| PackageError::NotReplaceable {
        path: agent_dir.to_owned(),
        detail,
    };
    let exists = existing_dir(agent_dir)?;
    if exists {
        let old = crate::fsx::open_dir(agent_dir)
            .map_err(|e| not_replaceable(std::io::Error::from(e).to_string()))?;
        for name in carry {
            let is_dir = nix::sys::stat::fstatat(&old, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR);
            if !is_dir {
                continue;
            }
            match renameat(&old, name.as_str(), &staging.fd, name.as_str()) {
                Ok(()) => tracing::info!(dir = %name, "kept the agent's {name} directory"),
                Err(e) => tracing::warn!(dir = %name, "could not keep {name}: {e}"),
            }
        }
    }
    let give = |fd: &OwnedFd| -> Result<(), PackageError> {
        let path = agent_dir.to_owned();
        let err = |e: nix::Error| PackageError::Io {
            action: "handing over",
            path: path.clone(),
            source: e.into(),
        };
        if let Some(o) = owner {
            nix::unistd::fchown(fd, Some(o.uid.into()), Some(o.gid.into())).map_err(err)?;
        }
        nix::sys::stat::fchmod(fd, nix::sys::stat::Mode::from_bits_truncate(0o755)).map_err(err)
    };
    if !exists {
        fs_err::rename(staging.path(), agent_dir)
            .map_err(io_err("moving the package to", agent_dir))?;
        give(&staging.fd)?;
        staging.debris.keep();
        return Ok(());
    }
    // Swap the trees; the staging path then names the old tree, which the drop below deletes.
    if exchange(staging.path(), agent_dir).is_err() {
        let parent = agent_dir
            .parent()
            .expect("validated: the agent dir has a parent");
        let tag = staging
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(STAGING_PREFIX))
            .unwrap_or("x")
            .to_owned();
        let trash = parent.join(format!("{OLD_PREFIX}{tag}"));
        let _trash = Debris::track(&trash);
        fs_err::rename(agent_dir, &trash).map_err(io_err("moving aside", agent_dir))?;
        crate::fsx::lock_out(&trash);
        fs_err::rename(staging.path(), agent_dir)
            .map_err(io_err("moving the package to", agent_dir))?;
        give(&staging.fd)?;
        staging.debris.keep();
        return Ok(());
    }
    // The old tree now has the staging name; shut the agent user out before it is deleted.
    crate::fsx::lock_out(staging.path());
    give(&staging.fd)?;
    Ok(())
}

/// Windows: the same moves by path (the agent dir's ACL, set after, decides who may write it).
#[cfg(windows)]
pub fn place(
    staging: Staging,
    agent_dir: &Path,
    carry: &[String],
    _owner: Option<Owner>,
) -> Result<(), PackageError> {
    let exists = existing_dir(agent_dir)?;
    if !exists {
        fs_err::rename(staging.path(), agent_dir)
            .map_err(io_err("moving the package to", agent_dir))?;
        staging.debris.keep();
        return Ok(());
    }
    for name in carry {
        let from = agent_dir.join(name);
        if fs_err::symlink_metadata(&from).is_ok_and(|m| m.file_type().is_dir()) {
            match fs_err::rename(&from, staging.path().join(name)) {
                Ok(()) => tracing::info!(dir = %name, "kept the agent's {name} directory"),
                Err(e) => tracing::warn!(dir = %name, "could not keep {name}: {e}"),
            }
        }
    }
    let parent = agent_dir
        .parent()
        .expect("validated: the agent dir has a parent");
    let trash = private_unique_dir(parent, OLD_PREFIX)
        .map_err(io_err("creating a directory in", parent))?;
    let _trash = Debris::track(&trash);
    fs_err::rename(agent_dir, trash.join("agent")).map_err(io_err("moving aside", agent_dir))?;
    fs_err::rename(staging.path(), agent_dir)
        .map_err(io_err("moving the package to", agent_dir))?;
    staging.debris.keep();
    Ok(())
}

/// Atomically exchanges two directory entries (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> nix::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE)
}

#[cfg(all(unix, not(all(target_os = "linux", target_env = "gnu"))))]
fn exchange(_a: &Path, _b: &Path) -> nix::Result<()> {
    Err(nix::errno::Errno::ENOSYS)
}

/// Removes what an earlier run on this agent dir left when it was killed (`kill -9`, a power
/// cut): staging and swapped-out trees beside the agent dir, partial downloads in the cache. Call
/// with the agent dir's lock held. Returns what was removed.
pub fn remove_stale(parent: &Path, cache_dir: &Path, tag: &str) -> Vec<PathBuf> {
    let mut removed = vec![];
    let mut sweep = |dir: &Path, matches: &dyn Fn(&str) -> bool| {
        let Ok(entries) = fs_err::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if matches(&name) && crate::interrupt::remove_path(&e.path()) {
                removed.push(e.path());
            }
        }
    };
    let staging = format!("{STAGING_PREFIX}{tag}-");
    let old = format!("{OLD_PREFIX}{tag}");
    sweep(parent, &|n| n.starts_with(&staging) || n.starts_with(&old));
    let partial = format!("{PARTIAL_PREFIX}{tag}-");
    // Windows stages in the cache directory ([`staging_parent`]).
    sweep(cache_dir, &|n| {
        (n.starts_with(&partial) && n.ends_with(".partial")) || n.starts_with(&staging)
    });
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use crate::clock::Clock;

    #[test]
    fn sha256_normalization() {
        let h = "AB".repeat(32);
        assert_eq!(normalize_sha256(&h), Some("ab".repeat(32)));
        assert_eq!(normalize_sha256("abc"), None);
        assert_eq!(normalize_sha256(&"zz".repeat(32)), None);
    }

    #[cfg(unix)]
    async fn fetch(
        req: &Request,
        cache: &Path,
        parent: &Path,
    ) -> Result<(Staging, Fetched), PackageError> {
        fetch_and_extract(
            req,
            parent,
            Target {
                cache_dir: cache,
                tag: "t1",
                owner: None,
                limits: Limits::default(),
            },
            &Net::new(Clock::virtual_clock()),
            &Progress::hidden(),
        )
        .await
    }

    #[cfg(unix)]
    fn package_bytes() -> (Vec<u8>, String) {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        let data = vec![7u8; 300_000];
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, "./bin/Agent.Listener", &data[..])
            .unwrap();
        let raw = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        let bytes = gz.finish().unwrap();
        let sha = hex::encode(Sha256::digest(&bytes));
        (bytes, sha)
    }

    #[cfg(unix)]
    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("staging") || n.ends_with(".partial"))
            .collect()
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn file_source_is_verified_cached_and_extracted() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, sha) = package_bytes();
        let pkg = dir.path().join("agent.tar.gz");
        std::fs::write(&pkg, &bytes).unwrap();
        let cache = dir.path().join("cache");
        let req = Request {
            source: Source::File(pkg.clone()),
            sha256: Some(sha.clone()),
            kind: ArchiveKind::TarGz,
        };
        let (staging, got) = fetch(&req, &cache, dir.path()).await.unwrap();
        assert_eq!(got.sha256, sha);
        assert!(!got.from_cache);
        assert!(staging.path().join("bin/Agent.Listener").is_file());
        assert!(cache_path(&cache, &sha, ArchiveKind::TarGz).is_file());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(staging.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o777,
                0o700,
                "staging stays private until it is placed"
            );
        }
        drop(staging);
        assert!(
            leftovers(dir.path()).is_empty(),
            "dropped staging is removed"
        );

        // The second time the cache is used, even if the original is gone.
        std::fs::remove_file(&pkg).unwrap();
        let (_staging, got) = fetch(&req, &cache, dir.path()).await.unwrap();
        assert!(got.from_cache);
        assert!(leftovers(&cache).is_empty());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_damaged_cache_entry_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, sha) = package_bytes();
        let pkg = dir.path().join("agent.tar.gz");
        std::fs::write(&pkg, &bytes).unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let cached = cache_path(&cache, &sha, ArchiveKind::TarGz);
        std::fs::write(&cached, b"bit rot").unwrap();
        let req = Request {
            source: Source::File(pkg),
            sha256: Some(sha.clone()),
            kind: ArchiveKind::TarGz,
        };
        let (staging, got) = fetch(&req, &cache, dir.path()).await.unwrap();
        assert!(!got.from_cache);
        assert_eq!(std::fs::read(&cached).unwrap(), bytes);
        assert!(staging.path().join("bin/Agent.Listener").is_file());
        drop(staging);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn mismatch_reports_both_digests_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = package_bytes();
        let pkg = dir.path().join("agent.tar.gz");
        std::fs::write(&pkg, &bytes).unwrap();
        let cache = dir.path().join("cache");
        let wrong = "0".repeat(64);
        let req = Request {
            source: Source::File(pkg),
            sha256: Some(wrong.clone()),
            kind: ArchiveKind::TarGz,
        };
        let e = fetch(&req, &cache, dir.path()).await.unwrap_err();
        assert!(matches!(e, PackageError::HashMismatch { .. }), "{e:?}");
        assert!(e.to_string().contains(&wrong));
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn placing_replaces_an_old_tree_and_keeps_only_work_and_logs() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, sha) = package_bytes();
        let pkg = dir.path().join("agent.tar.gz");
        std::fs::write(&pkg, &bytes).unwrap();
        let agent = dir.path().join("agent");
        std::fs::create_dir_all(agent.join("bin")).unwrap();
        std::fs::write(agent.join("bin/old"), "").unwrap();
        std::fs::write(agent.join("planted"), "x").unwrap();
        std::fs::create_dir_all(agent.join("_work/1")).unwrap();
        std::fs::write(agent.join("_work/1/build.log"), "job").unwrap();
        std::fs::create_dir_all(agent.join("_diag")).unwrap();
        // A link where a kept directory would be is not carried over.
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, agent.join("_custom")).unwrap();
        let req = Request {
            source: Source::File(pkg),
            sha256: Some(sha),
            kind: ArchiveKind::TarGz,
        };
        let (staging, _) = fetch(&req, &dir.path().join("cache"), dir.path())
            .await
            .unwrap();
        let carry = vec!["_work".to_owned(), "_diag".to_owned(), "_custom".to_owned()];
        place(staging, &agent, &carry, None).unwrap();
        assert!(agent.join("bin/Agent.Listener").is_file());
        assert!(!agent.join("bin/old").exists());
        assert!(!agent.join("planted").exists());
        assert_eq!(
            std::fs::read_to_string(agent.join("_work/1/build.log")).unwrap(),
            "job"
        );
        assert!(agent.join("_diag").is_dir());
        assert!(!agent.join("_custom").exists());
        assert!(outside.exists());
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
    }

    #[cfg(windows)]
    #[test]
    fn windows_stages_in_the_private_cache_dir_on_the_agent_dirs_volume() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        crate::fsx::create_private_dir_all(&cache).unwrap();
        let parent = dir.path().join("parent");
        std::fs::create_dir(&parent).unwrap();
        assert_eq!(staging_parent(&cache, &parent), cache.as_path());
        let staging = Staging::create(staging_parent(&cache, &parent), "t1").unwrap();
        assert_eq!(staging.path().parent(), Some(cache.as_path()));
        let name = staging
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with(".agent-bootstrap-staging-t1-"), "{name}");
        // Swept as this agent dir's debris when a run was killed.
        let path = staging.path().to_owned();
        std::mem::forget(staging);
        assert_eq!(remove_stale(&parent, &cache, "t1"), vec![path]);
    }

    #[test]
    fn stale_debris_of_this_agent_dir_only_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let mine = dir.path().join(".agent-bootstrap-staging-t1-abc");
        let other = dir.path().join(".agent-bootstrap-staging-t2-abc");
        let old = dir.path().join(".agent-bootstrap-old-t1-x");
        for d in [&mine, &other, &old] {
            std::fs::create_dir_all(d.join("bin")).unwrap();
        }
        let partial = cache.join(".download-t1-xyz.partial");
        std::fs::write(&partial, "half").unwrap();
        let removed = remove_stale(dir.path(), &cache, "t1");
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(!mine.exists() && !old.exists() && !partial.exists());
        assert!(other.exists());
    }
}
