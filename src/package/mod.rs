//! Getting the agent package onto the disk, verified, without ever using a half-written one.
//!
//! Bytes flow once through a pipeline while they arrive: SHA-256 → a `.partial` file in the cache →
//! a bounded channel → gunzip → tar, unpacking into a staging directory beside the agent dir (same
//! file system, so the final move is a rename). A dropped connection resumes with `Range` (a `206` is
//! required; a `200` restarts and the already-seen prefix is skipped), so the extractor sees one
//! continuous stream. Only when the digest matches is the staging directory moved into place and the
//! archive kept in the cache as `<sha256>.<ext>`, so a re-run does not download again. Memory use is
//! bounded by the channel, not by the package size.

pub mod extract;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::clock::Clock;
use crate::os::ArchiveKind;
use crate::progress::Progress;
use extract::{ExtractError, Stats};

/// Chunks in flight between the downloader and the extractor.
const CHANNEL_DEPTH: usize = 32;
const READ_CHUNK: usize = 256 * 1024;
/// Consecutive attempts that make no progress before the download is given up.
const MAX_STALLED_ATTEMPTS: u32 = 5;

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
    #[error("downloading {url} failed after {attempts} attempts: {detail}")]
    Download {
        url: String,
        attempts: u32,
        detail: String,
    },
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
    #[error("{action} '{path}' failed")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

/// Downloads (or reads) the package and extracts it into `staging`, verifying the SHA-256.
/// On error, `staging` may hold partial content: the caller deletes it.
pub async fn fetch_and_extract(
    req: &Request,
    cache_dir: &Path,
    staging: &Path,
    progress: &Progress,
    clock: &Clock,
) -> Result<Fetched, PackageError> {
    fs_err::create_dir_all(cache_dir).map_err(io_err("creating the cache directory", cache_dir))?;

    // A verified copy in the cache beats the network; it is verified again as it is read.
    if let Some(sha) = &req.sha256 {
        let cached = cache_path(cache_dir, sha, req.kind);
        if cached.is_file() {
            tracing::info!(path = %cached.display(), "using the cached agent package");
            let source = Source::File(cached.clone());
            match fetch_once(req, &source, true, cache_dir, staging, progress, clock).await {
                Ok(f) => return Ok(f),
                Err(e) => {
                    // A damaged cache entry must not fail every later run: drop it, fetch again.
                    tracing::warn!(
                        "the cached package is unusable ({}); removing it and fetching again",
                        crate::error::report(&e)
                    );
                    fs_err::remove_file(&cached).map_err(io_err("removing", &cached))?;
                    fs_err::remove_dir_all(staging).map_err(io_err("emptying", staging))?;
                    fs_err::create_dir(staging).map_err(io_err("creating", staging))?;
                }
            }
        }
    }
    fetch_once(req, &req.source, false, cache_dir, staging, progress, clock).await
}

async fn fetch_once(
    req: &Request,
    source: &Source,
    from_cache: bool,
    cache_dir: &Path,
    staging: &Path,
    progress: &Progress,
    clock: &Clock,
) -> Result<Fetched, PackageError> {
    let source_name = source.to_string();

    // Tee into the cache unless we are reading the cache.
    let partial = if from_cache {
        None
    } else {
        Some(
            tempfile::Builder::new()
                .prefix(".download-")
                .suffix(".partial")
                .tempfile_in(cache_dir)
                .map_err(io_err("creating a download file in", cache_dir))?,
        )
    };

    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let extractor = match req.kind {
        ArchiveKind::TarGz => {
            let staging = staging.to_owned();
            Some(tokio::task::spawn_blocking(move || {
                let mut reader = ChannelReader::new(rx);
                let result = extract::untar_gz(&mut reader, &staging);
                reader.drain();
                result
            }))
        }
        // A zip's directory is at its end: it is extracted from the verified file afterwards.
        ArchiveKind::Zip => {
            drop(rx);
            None
        }
    };

    let mut sink = Sink {
        hasher: Sha256::new(),
        bytes: 0,
        file: match &partial {
            Some(p) => Some(tokio::fs::File::from_std(
                p.reopen()
                    .map_err(io_err("opening the download file", p.path()))?,
            )),
            None => None,
        },
        file_path: partial.as_ref().map(|p| p.path().to_owned()),
        tx: Some(tx),
    };

    let fed = match source {
        Source::File(path) => feed_file(path, &mut sink, progress).await,
        Source::Url(url) => feed_url(url, &mut sink, progress, clock).await,
    };
    progress.finish();
    // Close the channel so the extractor sees the end, whatever happened.
    sink.tx = None;
    let extracted = match extractor {
        Some(handle) => Some(handle.await.expect("extractor thread panicked")),
        None => None,
    };
    fed?;
    if let Some(f) = sink.file.as_mut() {
        f.flush().await.map_err(io_err(
            "writing",
            sink.file_path.as_deref().unwrap_or(cache_dir),
        ))?;
        f.sync_data().await.map_err(io_err(
            "writing",
            sink.file_path.as_deref().unwrap_or(cache_dir),
        ))?;
    }
    let actual = hex::encode(sink.hasher.finalize());
    if let Some(expected) = &req.sha256
        && expected != &actual
    {
        return Err(PackageError::HashMismatch {
            source_name,
            expected: expected.clone(),
            actual,
        });
    }

    // Verified. Keep it in the cache, then (zip) extract from it.
    let cache_file = match partial {
        Some(p) => {
            let dest = cache_path(cache_dir, &actual, req.kind);
            p.persist(&dest).map_err(|e| PackageError::Io {
                action: "saving the verified package to",
                path: dest.clone(),
                source: e.error,
            })?;
            Some(dest)
        }
        None => match source {
            Source::File(p) => Some(p.clone()),
            Source::Url(_) => None,
        },
    };
    let stats = match extracted {
        Some(r) => r.map_err(|source| PackageError::Extract {
            source_name: source_name.clone(),
            source,
        })?,
        None => {
            let file = cache_file.clone().expect("zip packages are always on disk");
            let staging = staging.to_owned();
            tokio::task::spawn_blocking(move || extract::unzip(&file, &staging))
                .await
                .expect("unzip thread panicked")
                .map_err(|source| PackageError::Extract {
                    source_name: source_name.clone(),
                    source,
                })?
        }
    };
    Ok(Fetched {
        sha256: actual,
        bytes: sink.bytes,
        from_cache,
        stats,
        cache_file: if from_cache { None } else { cache_file },
    })
}

struct Sink {
    hasher: Sha256,
    bytes: u64,
    file: Option<tokio::fs::File>,
    file_path: Option<PathBuf>,
    tx: Option<tokio::sync::mpsc::Sender<Bytes>>,
}

impl Sink {
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
}

async fn feed_file(path: &Path, sink: &mut Sink, progress: &Progress) -> Result<(), PackageError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(io_err("opening the package", path))?;
    let total = file.metadata().await.ok().map(|m| m.len());
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

/// Downloads `url` into the sink, resuming after dropped connections.
/// How one download attempt ended, when it did not finish.
enum Attempt {
    /// Worth another try (resuming from what arrived): a dropped or refused connection, 429, 5xx.
    Transient(String),
    Fatal(PackageError),
}

async fn feed_url(
    url: &Url,
    sink: &mut Sink,
    progress: &Progress,
    clock: &Clock,
) -> Result<(), PackageError> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("agent-bootstrap/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("static reqwest configuration is valid");
    let shown = url.to_string();
    let transient = |e: reqwest::Error| Attempt::Transient(crate::error::one_line(&e));
    let mut attempts = 0u32;
    let mut stalled = 0u32;
    let mut total: Option<u64> = None;
    loop {
        attempts += 1;
        let offset = sink.bytes;
        let mut request = http.get(url.clone());
        if offset > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let outcome: Result<(), Attempt> = async {
            let response = request.send().await.map_err(transient)?;
            let status = response.status().as_u16();
            let mut skip = 0u64;
            match status {
                200 => {
                    total = response.content_length();
                    // The server ignored Range: read past what we already have.
                    skip = offset;
                    if offset == 0 {
                        progress.start(total);
                    }
                }
                206 if offset > 0 => {
                    let range = response
                        .headers()
                        .get(reqwest::header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if !range.starts_with(&format!("bytes {offset}-")) {
                        return Err(Attempt::Fatal(PackageError::BadRange {
                            url: shown.clone(),
                            detail: format!(
                                "asked for bytes={offset}-, got Content-Range '{range}'"
                            ),
                        }));
                    }
                }
                429 | 500..=599 => return Err(Attempt::Transient(format!("HTTP {status}"))),
                _ => {
                    return Err(Attempt::Fatal(PackageError::Http {
                        url: shown.clone(),
                        status,
                    }));
                }
            }
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let mut chunk = chunk.map_err(transient)?;
                if skip > 0 {
                    let drop_n = skip.min(chunk.len() as u64) as usize;
                    skip -= drop_n as u64;
                    chunk = chunk.slice(drop_n..);
                    if chunk.is_empty() {
                        continue;
                    }
                }
                let n = chunk.len() as u64;
                sink.push(chunk).await.map_err(Attempt::Fatal)?;
                progress.advance(n);
            }
            match total {
                Some(t) if sink.bytes < t => Err(Attempt::Transient(format!(
                    "connection closed after {} of {t} bytes",
                    sink.bytes
                ))),
                _ => Ok(()),
            }
        }
        .await;
        let detail = match outcome {
            Ok(()) => return Ok(()),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Transient(d)) => d,
        };
        if sink.bytes > offset {
            stalled = 0;
        } else {
            stalled += 1;
        }
        if stalled >= MAX_STALLED_ATTEMPTS {
            return Err(PackageError::Download {
                url: shown,
                attempts,
                detail,
            });
        }
        let delay = Duration::from_secs(1 << stalled.min(4));
        tracing::warn!(
            received = sink.bytes,
            "download interrupted ({detail}); resuming in {}s",
            delay.as_secs()
        );
        clock.sleep(delay).await;
    }
}

/// `Read` over the chunks the downloader sends; used on the extractor's blocking thread.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

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

/// Moves an extracted package from `staging` into `agent_dir`, `bin` last, so a present `bin` always
/// means a complete package. Entries of an older, unconfigured package are replaced.
pub fn move_into_place(staging: &Path, agent_dir: &Path) -> Result<(), PackageError> {
    if !agent_dir.exists() {
        // The common case: one rename.
        return fs_err::rename(staging, agent_dir)
            .map_err(io_err("moving the package to", agent_dir));
    }
    let mut entries: Vec<PathBuf> = fs_err::read_dir(staging)
        .map_err(io_err("reading", staging))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort_by_key(|p| p.file_name().is_some_and(|n| n == "bin"));
    for from in entries {
        let to = agent_dir.join(from.file_name().expect("read_dir entries have names"));
        if let Ok(meta) = fs_err::symlink_metadata(&to) {
            if meta.is_dir() {
                fs_err::remove_dir_all(&to).map_err(io_err("replacing", &to))?;
            } else {
                fs_err::remove_file(&to).map_err(io_err("replacing", &to))?;
            }
        }
        fs_err::rename(&from, &to).map_err(io_err("moving the package to", &to))?;
    }
    fs_err::remove_dir(staging).map_err(io_err("removing", staging))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_normalization() {
        let h = "AB".repeat(32);
        assert_eq!(normalize_sha256(&h), Some("ab".repeat(32)));
        assert_eq!(normalize_sha256("abc"), None);
        assert_eq!(normalize_sha256(&"zz".repeat(32)), None);
    }

    async fn fetch(req: &Request, cache: &Path, staging: &Path) -> Result<Fetched, PackageError> {
        fetch_and_extract(
            req,
            cache,
            staging,
            &Progress::hidden(),
            &Clock::virtual_clock(),
        )
        .await
    }

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

    #[tokio::test]
    async fn file_source_is_verified_cached_and_extracted() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, sha) = package_bytes();
        let pkg = dir.path().join("agent.tar.gz");
        std::fs::write(&pkg, &bytes).unwrap();
        let cache = dir.path().join("cache");
        let staging = dir.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let req = Request {
            source: Source::File(pkg.clone()),
            sha256: Some(sha.clone()),
            kind: ArchiveKind::TarGz,
        };
        let got = fetch(&req, &cache, &staging).await.unwrap();
        assert_eq!(got.sha256, sha);
        assert!(!got.from_cache);
        assert!(staging.join("bin/Agent.Listener").is_file());
        assert!(cache_path(&cache, &sha, ArchiveKind::TarGz).is_file());

        // The second time the cache is used, even if the original is gone.
        std::fs::remove_file(&pkg).unwrap();
        let staging2 = dir.path().join("staging2");
        std::fs::create_dir(&staging2).unwrap();
        let got = fetch(&req, &cache, &staging2).await.unwrap();
        assert!(got.from_cache);
        // No partial files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(leftovers.is_empty());
    }

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
        let staging = dir.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let req = Request {
            source: Source::File(pkg),
            sha256: Some(sha.clone()),
            kind: ArchiveKind::TarGz,
        };
        let got = fetch(&req, &cache, &staging).await.unwrap();
        assert!(!got.from_cache);
        assert_eq!(std::fs::read(&cached).unwrap(), bytes);
        assert!(staging.join("bin/Agent.Listener").is_file());
    }

    #[tokio::test]
    async fn mismatch_reports_both_digests_and_caches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = package_bytes();
        let pkg = dir.path().join("agent.tar.gz");
        std::fs::write(&pkg, &bytes).unwrap();
        let cache = dir.path().join("cache");
        let staging = dir.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let wrong = "0".repeat(64);
        let req = Request {
            source: Source::File(pkg),
            sha256: Some(wrong.clone()),
            kind: ArchiveKind::TarGz,
        };
        let e = fetch(&req, &cache, &staging).await.unwrap_err();
        assert!(matches!(e, PackageError::HashMismatch { .. }), "{e:?}");
        assert!(e.to_string().contains(&wrong));
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    }

    #[test]
    fn move_into_existing_dir_keeps_user_files_and_moves_bin_last() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("s");
        std::fs::create_dir_all(staging.join("bin")).unwrap();
        std::fs::write(staging.join("config.sh"), "new").unwrap();
        let agent = dir.path().join("agent");
        std::fs::create_dir_all(agent.join("bin")).unwrap();
        std::fs::write(agent.join("bin/old"), "").unwrap();
        std::fs::write(agent.join(".env"), "A=1").unwrap();
        move_into_place(&staging, &agent).unwrap();
        assert!(!agent.join("bin/old").exists());
        assert_eq!(
            std::fs::read_to_string(agent.join("config.sh")).unwrap(),
            "new"
        );
        assert_eq!(std::fs::read_to_string(agent.join(".env")).unwrap(), "A=1");
        assert!(!staging.exists());
    }
}
