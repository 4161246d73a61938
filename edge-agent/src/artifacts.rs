//! Content-addressed artifact cache at `<data_dir>/artifacts/sha256/<hex>`,
//! filled from the controller over HTTP.
//!
//! A download streams into `artifacts/tmp/<hex>.part`, hashing and counting
//! as it goes, and is cut off as soon as it exceeds the declared size. Only a
//! file whose size and digest both match is made executable, synced and
//! renamed into place, so a file under `sha256/` is always complete. A
//! download that breaks off keeps its part file; the next attempt asks for
//! the rest with an HTTP `Range` request (and starts over if the server
//! answers with the whole file).
//!
//! At open, every cached file is hashed again: a file whose content does not
//! match its name (bit rot on flash, a crash mid-write on a file system that
//! does not order renames) is removed and fetched again when needed.
//!
//! The cache holds at most `quota` bytes: after a download it evicts the
//! least recently used entries that the current desired state does not need
//! ([`ArtifactCache::set_needed`]); what is needed is never evicted, even
//! over quota. Use time is the file's modification time, touched on each hit.
//!
//! A workload whose run spec names an `entrypoint` runs from a tar.gz
//! artifact: it is extracted ([`crate::archive`]) into `tmp/<hex>.unpack`
//! and renamed to `unpacked/<hex>` once complete, so a directory under
//! `unpacked/` is always a whole extraction and is re-used. A [`Manifest`]
//! of the tree (every path, mode, size and file digest) is written next to
//! it as `unpacked/<hex>.manifest`; the start-up check compares each tree
//! with its manifest and extracts a tree that differs (or has none) again
//! from its verified archive. An extraction lives and dies with its archive:
//! the start-up check removes extractions without a cached archive, and
//! eviction removes both. The quota counts archives only.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::archive::{ArchiveError, ArchiveLimits};
use crate::disk;
use crate::manifest::{Manifest, hash_file};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use tracing::{info, warn};
use verge_shared::Sha256Digest;
use verge_shared::messages::ArtifactRef;
use verge_shared::telemetry::CacheMetrics;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A read that makes no progress for this long ends the download.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an artifact is not available. Every variant names the digest.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact {digest}: request failed: {source}")]
    Http {
        digest: Sha256Digest,
        #[source]
        source: crate::http::HttpError,
    },
    #[error("artifact {digest}: controller answered HTTP {status}")]
    Status { digest: Sha256Digest, status: u16 },
    #[error("artifact {digest}: more than the declared {declared} bytes")]
    TooLarge { digest: Sha256Digest, declared: u64 },
    #[error("artifact {digest}: got {got} bytes, declared {declared}")]
    WrongSize {
        digest: Sha256Digest,
        got: u64,
        declared: u64,
    },
    #[error("artifact {digest}: content hashes to {actual}")]
    WrongDigest {
        digest: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("artifact {digest}: not a safe tar.gz: {source}")]
    Archive {
        digest: Sha256Digest,
        #[source]
        source: ArchiveError,
    },
    #[error("artifact {digest}: entrypoint {entrypoint:?} {reason}")]
    Entrypoint {
        digest: Sha256Digest,
        entrypoint: String,
        reason: &'static str,
    },
    #[error("artifact {digest}: the disk is full: {detail}")]
    DiskFull {
        digest: Sha256Digest,
        detail: String,
    },
    #[error("artifact {digest}: {path}: {source}")]
    Io {
        digest: Sha256Digest,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ArtifactError {
    /// An I/O error for lack of space becomes [`ArtifactError::DiskFull`].
    fn classify(self) -> Self {
        match self {
            ArtifactError::Io {
                digest,
                path,
                source,
            } if disk::is_no_space(&source) => ArtifactError::DiskFull {
                digest,
                detail: format!("writing {}: {source}", path.display()),
            },
            other => other,
        }
    }
}

/// The cache and the client that fills it.
pub struct ArtifactCache {
    done_dir: PathBuf,
    unpacked_dir: PathBuf,
    tmp_dir: PathBuf,
    base_url: String,
    client: crate::http::Client,
    /// How `https://` downloads verify the controller.
    https: crate::http::Tls,
    quota: u64,
    /// Digests the current desired state refers to: never evicted.
    needed: Mutex<BTreeSet<Sha256Digest>>,
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_fetched: AtomicU64,
    evictions: AtomicU64,
    corrupt_removed: AtomicU64,
}

impl ArtifactCache {
    /// Opens the cache under `root` (`<data_dir>/artifacts`), creating its
    /// directories, re-hashing every cached file (removing those that do not
    /// match their name) and keeping part files for resumption.
    pub fn open(root: &Path, controller_url: &str, quota: u64) -> Result<Self, std::io::Error> {
        let done_dir = root.join("sha256");
        let tmp_dir = root.join("tmp");
        let unpacked_dir = root.join("unpacked");
        std::fs::create_dir_all(&done_dir)?;
        std::fs::create_dir_all(&unpacked_dir)?;
        std::fs::create_dir_all(&tmp_dir)?;
        let client = crate::http::Client {
            connect_timeout: CONNECT_TIMEOUT,
            read_timeout: READ_TIMEOUT,
        };
        let cache = Self {
            done_dir,
            unpacked_dir,
            tmp_dir,
            base_url: controller_url.trim_end_matches('/').to_owned(),
            client,
            https: None,
            quota,
            needed: Mutex::new(BTreeSet::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bytes_fetched: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            corrupt_removed: AtomicU64::new(0),
        };
        cache.check()?;
        Ok(cache)
    }

    /// Verifies `https://` downloads with `https` (the controller's CA);
    /// without it only a plain `http://` controller URL works.
    pub fn with_https(mut self, https: crate::http::Tls) -> Self {
        self.https = https;
        self
    }

    /// The start-up check: removes cached files whose content does not hash
    /// to their name, and anything in `tmp/` that is not a part file.
    fn check(&self) -> Result<(), std::io::Error> {
        for entry in std::fs::read_dir(&self.done_dir)? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let expected: Option<Sha256Digest> = name.as_deref().and_then(|n| n.parse().ok());
            let good = match expected {
                Some(digest) => hash_file(&path).is_ok_and(|actual| actual == digest),
                None => false,
            };
            if !good {
                warn!(path = %path.display(), "A cached artifact does not match its digest; removing it.");
                remove_any(&path)?;
                self.corrupt_removed.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Listed first: re-extraction adds to the directory.
        let unpacked = std::fs::read_dir(&self.unpacked_dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()?;
        for path in unpacked {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let (digest, is_manifest) = match name.strip_suffix(".manifest") {
                Some(tree) => (tree.parse::<Sha256Digest>().ok(), true),
                None => (name.parse::<Sha256Digest>().ok(), false),
            };
            let Some(digest) = digest.filter(|d| self.path_of(d).is_file()) else {
                remove_any(&path)?;
                continue;
            };
            if is_manifest {
                // Checked with its tree; a manifest left without one goes.
                if !self.unpacked_of(&digest).exists() {
                    std::fs::remove_file(&path)?;
                }
            } else if let Err(why) = Manifest::verify(&path, &manifest_path(&path)) {
                warn!(path = %path.display(), reason = %why, "An extracted archive does not match what was extracted; extracting it again.");
                self.corrupt_removed.fetch_add(1, Ordering::Relaxed);
                self.reextract(&digest)?;
            }
        }
        for entry in std::fs::read_dir(&self.tmp_dir)? {
            let path = entry?.path();
            let is_part = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".part"))
                .is_some_and(|d| d.parse::<Sha256Digest>().is_ok());
            if !is_part {
                remove_any(&path)?;
            }
        }
        Ok(())
    }

    /// Replaces the extraction of `digest` with a fresh one from its
    /// (verified) archive; if that fails, removes it, and the next use
    /// tries again.
    fn reextract(&self, digest: &Sha256Digest) -> Result<(), std::io::Error> {
        let root = self.unpacked_of(digest);
        remove_any(&root)?;
        let _ = std::fs::remove_file(manifest_path(&root));
        let tmp = self.tmp_dir.join(format!("{digest}.unpack"));
        if unpack(&self.path_of(digest), &tmp, &root).is_err() {
            warn!(artifact = %digest, "Cannot extract the archive again; it is extracted when next needed.");
            let _ = remove_any(&root);
            let _ = std::fs::remove_file(manifest_path(&root));
        }
        Ok(())
    }

    /// Where the artifact with `digest` lives once cached.
    pub fn path_of(&self, digest: &Sha256Digest) -> PathBuf {
        self.done_dir.join(digest.to_string())
    }

    /// Where the extraction of the archive with `digest` lives.
    fn unpacked_of(&self, digest: &Sha256Digest) -> PathBuf {
        self.unpacked_dir.join(digest.to_string())
    }

    /// The file to execute for a workload: the cached artifact itself, or
    /// with `entrypoint`, that path inside the artifact's extraction
    /// (extracting it first if needed). The entrypoint must resolve to an
    /// executable regular file inside the extraction.
    pub async fn executable(
        &self,
        artifact: &ArtifactRef,
        entrypoint: Option<&str>,
    ) -> Result<PathBuf, ArtifactError> {
        self.executable_inner(artifact, entrypoint)
            .await
            .map_err(ArtifactError::classify)
    }

    async fn executable_inner(
        &self,
        artifact: &ArtifactRef,
        entrypoint: Option<&str>,
    ) -> Result<PathBuf, ArtifactError> {
        let archive = self.ensure(artifact).await?;
        let Some(entrypoint) = entrypoint else {
            return Ok(archive);
        };
        let digest = artifact.sha256;
        let root = self.unpacked_of(&digest);
        if !tokio::fs::try_exists(&root).await.unwrap_or(false) {
            let tmp = self.tmp_dir.join(format!("{digest}.unpack"));
            let to = root.clone();
            tokio::task::spawn_blocking(move || unpack(&archive, &tmp, &to))
                .await
                .map_err(|e| ArtifactError::Io {
                    digest,
                    path: root.clone(),
                    source: std::io::Error::other(e),
                })?
                .map_err(|e| match e {
                    UnpackError::Archive(source) => ArtifactError::Archive { digest, source },
                    UnpackError::Io(path, source) => ArtifactError::Io {
                        digest,
                        path,
                        source,
                    },
                })?;
            info!(artifact = %digest, path = %root.display(), "Extracted an archive artifact.");
        }
        let entry = |reason| ArtifactError::Entrypoint {
            digest,
            entrypoint: entrypoint.to_owned(),
            reason,
        };
        let exe = root.join(entrypoint);
        // The entrypoint may be a link; what it resolves to must be inside.
        let resolved = exe
            .canonicalize()
            .map_err(|_| entry("is not in the archive"))?;
        let inside = root.canonicalize().is_ok_and(|r| resolved.starts_with(r));
        if !inside {
            return Err(entry("resolves outside the archive"));
        }
        match std::fs::metadata(&resolved) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(exe),
            Ok(meta) if meta.is_file() => Err(entry("is not executable")),
            _ => Err(entry("is not a regular file")),
        }
    }

    fn part_of(&self, digest: &Sha256Digest) -> PathBuf {
        self.tmp_dir.join(format!("{digest}.part"))
    }

    /// Declares what the current desired state refers to; eviction never
    /// touches these.
    pub fn set_needed(&self, digests: BTreeSet<Sha256Digest>) {
        *self
            .needed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = digests;
    }

    /// The counters since open, and the bytes cached now.
    pub fn metrics(&self) -> CacheMetrics {
        CacheMetrics {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            fetched_bytes: self.bytes_fetched.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            corrupt_removed: self.corrupt_removed.load(Ordering::Relaxed),
            cached_bytes: self.entries().iter().map(|e| e.size).sum(),
        }
    }

    /// The cached file for `artifact`, downloading it first if needed.
    pub async fn ensure(&self, artifact: &ArtifactRef) -> Result<PathBuf, ArtifactError> {
        let path = self.path_of(&artifact.sha256);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            // Record the use for LRU eviction; failing to is harmless.
            let _ = std::fs::File::open(&path).and_then(|f| f.set_modified(SystemTime::now()));
            return Ok(path);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let part = self.part_of(&artifact.sha256);
        // Refuse up front what cannot fit, rather than fill the disk that
        // also holds the agent's state and outbox.
        let have = std::fs::metadata(&part).map_or(0, |m| m.len());
        if let Some(detail) = disk::shortage(&self.tmp_dir, artifact.size.saturating_sub(have)) {
            return Err(ArtifactError::DiskFull {
                digest: artifact.sha256,
                detail,
            });
        }
        match self.download(artifact, &part).await {
            Ok(()) => {}
            Err(e) => {
                // A broken-off transfer (or one the disk filled up under)
                // keeps its part for resumption; a wrong one is discarded.
                let e = e.classify();
                if !matches!(
                    e,
                    ArtifactError::Http { .. } | ArtifactError::DiskFull { .. }
                ) {
                    let _ = std::fs::remove_file(&part);
                }
                return Err(e);
            }
        }
        let io = |source| ArtifactError::Io {
            digest: artifact.sha256,
            path: path.clone(),
            source,
        };
        // Synced, renamed into place and the rename itself made durable
        // before anything runs the file.
        let (from, to) = (part.clone(), path.clone());
        tokio::task::spawn_blocking(move || verge_durable::commit(&from, &to))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(io)?;
        self.evict();
        Ok(path)
    }

    /// Cached entries with their size and last use.
    fn entries(&self) -> Vec<CachedEntry> {
        let Ok(dir) = std::fs::read_dir(&self.done_dir) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some(CachedEntry {
                    digest: e.file_name().to_str()?.parse().ok()?,
                    size: meta.len(),
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                })
            })
            .collect()
    }

    /// Evicts least recently used entries the desired state does not need
    /// until the cache fits its quota (or only needed entries are left).
    fn evict(&self) {
        let needed = self
            .needed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        entries.sort_by_key(|e| e.used);
        for entry in entries {
            if total <= self.quota {
                break;
            }
            if needed.contains(&entry.digest) {
                continue;
            }
            match std::fs::remove_file(self.path_of(&entry.digest)) {
                Ok(()) => {
                    // An extraction without its archive is removed at open anyway.
                    let root = self.unpacked_of(&entry.digest);
                    let _ = remove_any(&root);
                    let _ = std::fs::remove_file(manifest_path(&root));
                    total -= entry.size;
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    info!(artifact = %entry.digest, n_bytes = entry.size, quota = self.quota, "Evicted an unneeded artifact to stay within the cache quota.");
                }
                Err(e) => {
                    warn!(artifact = %entry.digest, error = %e, "Cannot evict an artifact.");
                }
            }
        }
    }

    /// Downloads into `part`, resuming from what it already holds.
    async fn download(&self, artifact: &ArtifactRef, part: &Path) -> Result<(), ArtifactError> {
        let digest = artifact.sha256;
        let declared = artifact.size;
        let http = |source| ArtifactError::Http { digest, source };
        let io = |source| ArtifactError::Io {
            digest,
            path: part.to_owned(),
            source,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(part)
            .await
            .map_err(io)?;
        let mut have = file.metadata().await.map_err(io)?.len();
        if have >= declared {
            // Nothing left to fetch means the part is wrong: start over.
            file.set_len(0).await.map_err(io)?;
            have = 0;
        }
        let url = format!("{}/api/v1/artifacts/{digest}", self.base_url);
        let mut response = self
            .client
            .get_with(&self.https, &url, have)
            .await
            .map_err(http)?;
        let status = response.status.as_u16();
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        match status {
            206 if have > 0 => {
                // Hash what is already there, then append.
                file.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
                let mut buf = vec![0u8; 64 * 1024];
                let mut left = have;
                while left > 0 {
                    let n = file.read(&mut buf).await.map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    let n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
                    hasher.update(&buf[..n]);
                    left -= n as u64;
                }
                file.seek(std::io::SeekFrom::Start(have))
                    .await
                    .map_err(io)?;
                info!(artifact = %digest, resume_at = have, declared, "Resuming an interrupted download.");
            }
            200 => {
                file.set_len(0).await.map_err(io)?;
                file.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
                have = 0;
            }
            _ => return Err(ArtifactError::Status { digest, status }),
        }
        if response
            .content_length()
            .is_some_and(|len| have.saturating_add(len) > declared)
        {
            return Err(ArtifactError::TooLarge { digest, declared });
        }
        let mut got = have;
        let streamed = async {
            while let Some(chunk) = response.chunk().await.map_err(http)? {
                got = got.saturating_add(chunk.len() as u64);
                if got > declared {
                    return Err(ArtifactError::TooLarge { digest, declared });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(io)?;
                self.bytes_fetched
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            Ok(())
        }
        .await;
        // However the stream ended, what arrived reaches the file before it
        // is dropped: tokio's File writes in the background, and a write
        // still in flight would leave a retry (or a restarted agent) to
        // resume from fewer bytes than were received, racing that write.
        let flushed = file.flush().await.map_err(io);
        streamed?;
        flushed?;
        if got != declared {
            return Err(ArtifactError::WrongSize {
                digest,
                got,
                declared,
            });
        }
        let actual = Sha256Digest::from_ring(hasher.finish());
        if actual != digest {
            return Err(ArtifactError::WrongDigest { digest, actual });
        }
        file.set_permissions(std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(io)?;
        // Synced by `verge_durable::commit` when it moves into place.
        Ok(())
    }
}

struct CachedEntry {
    digest: Sha256Digest,
    size: u64,
    used: SystemTime,
}

/// Why an extraction failed.
enum UnpackError {
    Archive(ArchiveError),
    Io(PathBuf, std::io::Error),
}

/// The manifest of the extraction (or temporary extraction) at `tree`.
fn manifest_path(tree: &Path) -> PathBuf {
    tree.with_extension("manifest")
}

/// Extracts `archive` into `tmp` (removing leftovers of an earlier attempt)
/// and records its [`Manifest`], then renames both to `to` and its manifest
/// durably ([`verge_durable::commit`]), so `to` appears complete or not at all, and a tree
/// without a manifest is never used. A failed extraction leaves nothing
/// behind.
fn unpack(archive: &Path, tmp: &Path, to: &Path) -> Result<(), UnpackError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |e| UnpackError::Io(path, e)
    };
    if std::fs::symlink_metadata(tmp).is_ok() {
        remove_any(tmp).map_err(io(tmp))?;
    }
    if let Err(e) = crate::archive::extract_tar_gz(archive, tmp, ArchiveLimits::default()) {
        let _ = remove_any(tmp);
        return Err(UnpackError::Archive(e));
    }
    let (tmp_manifest, manifest) = (manifest_path(tmp), manifest_path(to));
    if let Err(e) = Manifest::of(tmp).and_then(|m| m.save(&tmp_manifest)) {
        let _ = remove_any(tmp);
        let _ = std::fs::remove_file(&tmp_manifest);
        return Err(UnpackError::Io(tmp_manifest, e));
    }
    // The tree first, then its manifest: a tree without a manifest is
    // extracted again, never used.
    verge_durable::commit(tmp, to).map_err(io(to))?;
    verge_durable::commit(&tmp_manifest, &manifest).map_err(io(&manifest))
}

/// Removes a file or a directory tree.
fn remove_any(path: &Path) -> Result<(), std::io::Error> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve_once(status: &str, body: Vec<u8>) -> String {
        crate::http::testing::serve_once(status, body).await.0
    }

    /// Serves `body` to one connection: cut off after `cut` bytes when set,
    /// or only the requested tail (206) when the request has a Range header.
    /// Returns the base URL and a channel with the request's Range header.
    async fn serve_ranged(
        body: Vec<u8>,
        cut: Option<usize>,
    ) -> (String, tokio::sync::oneshot::Receiver<Option<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 4096];
            let n = socket.read(&mut request).await.unwrap_or(0);
            let text = String::from_utf8_lossy(&request[..n]).to_lowercase();
            let from = text
                .lines()
                .find_map(|l| l.strip_prefix("range: bytes="))
                .and_then(|r| r.trim().trim_end_matches('-').parse::<usize>().ok());
            let _ = tx.send(from.map(|f| f.to_string()));
            let (status, part) = match from {
                Some(f) => ("206 Partial Content", &body[f..]),
                None => ("200 OK", &body[..]),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                part.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&part[..cut.unwrap_or(part.len())]).await;
            let _ = socket.shutdown().await;
        });
        (format!("http://{addr}"), rx)
    }

    #[tokio::test]
    async fn an_interrupted_download_resumes_with_a_range_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (url, _) = serve_ranged(body.clone(), Some(120_000)).await;
        let cache = ArtifactCache::open(dir.path(), &url, 1 << 30).expect("open");
        let err = cache.ensure(&reference(&body)).await.expect_err("cut off");
        assert!(matches!(err, ArtifactError::Http { .. }), "{err}");
        assert!(!cache.path_of(&reference(&body).sha256).exists());
        // A restarted agent keeps the part and asks for the rest only.
        drop(cache);
        let (url, range) = serve_ranged(body.clone(), None).await;
        let cache = ArtifactCache::open(dir.path(), &url, 1 << 30).expect("reopen");
        let path = cache.ensure(&reference(&body)).await.expect("resumed");
        assert_eq!(range.await.expect("request"), Some("120000".to_owned()));
        assert_eq!(std::fs::read(&path).expect("read"), body);
        assert_eq!(cache.metrics().fetched_bytes, 80_000);
        assert!(tmp_is_empty(dir.path()));
    }

    #[tokio::test]
    async fn start_up_check_removes_corrupt_entries_and_they_are_fetched_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = b"the real artifact".to_vec();
        let wanted = reference(&body);
        std::fs::create_dir_all(dir.path().join("sha256")).expect("mkdir");
        std::fs::write(
            dir.path().join("sha256").join(wanted.sha256.to_string()),
            b"bit rot",
        )
        .expect("write");
        std::fs::write(dir.path().join("sha256").join("junk"), b"x").expect("write");
        let url = serve_once("200 OK", body.clone()).await;
        let cache = ArtifactCache::open(dir.path(), &url, 1 << 30).expect("open");
        assert_eq!(cache.metrics().corrupt_removed, 2);
        let path = cache.ensure(&wanted).await.expect("fetched again");
        assert_eq!(std::fs::read(path).expect("read"), body);
        let m = cache.metrics();
        assert_eq!((m.hits, m.misses), (0, 1));
    }

    #[tokio::test]
    async fn eviction_takes_the_least_recently_used_unneeded_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bodies: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 400_000]).collect();
        let url = serve_once("200 OK", Vec::new()).await;
        // Room for two entries.
        let cache = ArtifactCache::open(dir.path(), &url, 1_000_000).expect("open");
        let refs: Vec<ArtifactRef> = bodies.iter().map(|b| reference(b)).collect();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        for (i, (body, r)) in bodies.iter().zip(&refs).take(3).enumerate() {
            let path = cache.path_of(&r.sha256);
            std::fs::write(&path, body).expect("write");
            std::fs::File::open(&path)
                .and_then(|f| f.set_modified(old + Duration::from_secs(i as u64)))
                .expect("age");
        }
        // 0 is the oldest but needed; 1 is the oldest unneeded.
        cache.set_needed([refs[0].sha256, refs[3].sha256].into());
        let url = serve_once("200 OK", bodies[3].clone()).await;
        let cache = ArtifactCache {
            base_url: url,
            ..cache
        };
        cache.ensure(&refs[3]).await.expect("fetch");
        let left: Vec<bool> = refs
            .iter()
            .map(|r| cache.path_of(&r.sha256).exists())
            .collect();
        assert_eq!(left, [true, false, false, true]);
        assert_eq!(cache.metrics().evictions, 2);
    }

    fn reference(body: &[u8]) -> ArtifactRef {
        ArtifactRef {
            sha256: Sha256Digest::of(body),
            size: body.len() as u64,
        }
    }

    fn tmp_is_empty(dir: &Path) -> bool {
        std::fs::read_dir(dir.join("tmp"))
            .expect("tmp dir")
            .next()
            .is_none()
    }

    #[tokio::test]
    async fn good_download_is_cached_executable_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = b"#!/bin/sh\necho hi\n".to_vec();
        let url = serve_once("200 OK", body.clone()).await;
        let cache = ArtifactCache::open(dir.path(), &url, 1 << 30).expect("open");
        let path = cache.ensure(&reference(&body)).await.expect("fetch");
        assert_eq!(std::fs::read(&path).expect("read"), body);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(tmp_is_empty(dir.path()));
        // The server is gone; the cached copy is used without a request.
        assert_eq!(cache.ensure(&reference(&body)).await.expect("cached"), path);
    }

    /// A tar.gz with an executable `bin/app`, a data file and a link.
    fn app_archive() -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        for (path, mode, body) in [
            ("bin/app", 0o755, &b"#!/bin/sh\n"[..]),
            ("data.txt", 0o644, b"d"),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(mode);
            header.set_cksum();
            builder
                .append_data(&mut header, path, body)
                .expect("append");
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, "run", "bin/app")
            .expect("link");
        builder.into_inner().expect("tar").finish().expect("gz")
    }

    /// A cache in `dir` holding [`app_archive`], extracted; with the
    /// artifact, the path of `bin/app` and the URL that served it once.
    async fn extracted_app(dir: &Path) -> (ArtifactCache, ArtifactRef, PathBuf, String) {
        let body = app_archive();
        let url = serve_once("200 OK", body.clone()).await;
        let cache = ArtifactCache::open(dir, &url, 1 << 30).expect("open");
        let artifact = reference(&body);
        let exe = cache
            .executable(&artifact, Some("bin/app"))
            .await
            .expect("extract");
        (cache, artifact, exe, url)
    }

    #[tokio::test]
    async fn archive_entrypoints_are_extracted_once_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cache, artifact, exe, url) = extracted_app(dir.path()).await;
        assert_eq!(exe, cache.unpacked_of(&artifact.sha256).join("bin/app"));
        assert_eq!(std::fs::read(&exe).expect("read"), b"#!/bin/sh\n");
        assert!(tmp_is_empty(dir.path()));
        // Re-used without the server; a link to the executable is fine.
        assert!(cache.executable(&artifact, Some("run")).await.is_ok());
        for (entrypoint, reason) in [
            ("data.txt", "is not executable"),
            ("bin", "is not a regular file"),
            ("nope", "is not in the archive"),
        ] {
            let err = cache
                .executable(&artifact, Some(entrypoint))
                .await
                .expect_err(entrypoint);
            assert!(err.to_string().contains(reason), "{entrypoint}: {err}");
        }
        // An extraction whose archive is gone is removed at open.
        std::fs::remove_file(cache.path_of(&artifact.sha256)).expect("remove");
        drop(cache);
        let cache = ArtifactCache::open(dir.path(), &url, 1 << 30).expect("reopen");
        assert!(!cache.unpacked_of(&artifact.sha256).exists());
    }

    #[tokio::test]
    async fn a_changed_or_partial_extraction_is_extracted_again_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cache, artifact, exe, url) = extracted_app(dir.path()).await;
        let root = cache.unpacked_of(&artifact.sha256);
        let manifest = manifest_path(&root);
        assert!(manifest.is_file(), "a manifest is written with the tree");
        drop(cache);
        // An untouched tree is kept as it is.
        let cache = ArtifactCache::open(dir.path(), &url, 1 << 30).expect("reopen");
        assert_eq!(cache.metrics().corrupt_removed, 0);
        drop(cache);
        type Damage = fn(&Path, &Path);
        let damages: [(&str, Damage); 3] = [
            ("tampered", |root, _| {
                std::fs::write(root.join("bin/app"), b"#!/bin/sh\nrm -rf /\n").expect("tamper")
            }),
            ("partial", |root, _| {
                std::fs::remove_file(root.join("data.txt")).expect("rm")
            }),
            ("no manifest", |_, manifest| {
                std::fs::remove_file(manifest).expect("rm")
            }),
        ];
        for (what, damage) in damages {
            damage(&root, &manifest);
            // No server: the tree comes back from the cached archive alone.
            let cache =
                ArtifactCache::open(dir.path(), "http://127.0.0.1:9", 1 << 30).expect("reopen");
            assert_eq!(cache.metrics().corrupt_removed, 1, "{what}");
            assert_eq!(std::fs::read(&exe).expect("read"), b"#!/bin/sh\n", "{what}");
            assert_eq!(
                std::fs::read(root.join("data.txt")).expect("read"),
                b"d",
                "{what}"
            );
            assert!(manifest.is_file(), "{what}");
            assert!(tmp_is_empty(dir.path()), "{what}");
        }
    }

    #[tokio::test]
    async fn an_unsafe_archive_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, "app", "/bin/sh")
            .expect("link");
        let body = builder.into_inner().expect("tar").finish().expect("gz");
        let url = serve_once("200 OK", body.clone()).await;
        let cache = ArtifactCache::open(dir.path(), &url, 1 << 30).expect("open");
        let err = cache
            .executable(&reference(&body), Some("app"))
            .await
            .expect_err("unsafe");
        assert!(matches!(err, ArtifactError::Archive { .. }), "{err}");
        assert!(
            err.to_string().contains("leaves the extraction root"),
            "{err}"
        );
        assert!(tmp_is_empty(dir.path()));
        assert!(!cache.unpacked_of(&reference(&body).sha256).exists());
    }

    #[tokio::test]
    async fn wrong_digest_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = serve_once("200 OK", b"evil".to_vec()).await;
        let cache = ArtifactCache::open(dir.path(), &url, 1 << 30).expect("open");
        let wanted = ArtifactRef {
            sha256: Sha256Digest::of(b"good"),
            size: 4,
        };
        let err = cache.ensure(&wanted).await.expect_err("digest mismatch");
        assert!(matches!(err, ArtifactError::WrongDigest { .. }), "{err}");
        assert!(err.to_string().contains(&wanted.sha256.to_string()));
        assert!(!cache.path_of(&wanted.sha256).exists());
        assert!(tmp_is_empty(dir.path()));
    }

    #[tokio::test]
    async fn oversize_download_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = serve_once("200 OK", vec![7u8; 10_000]).await;
        let cache = ArtifactCache::open(dir.path(), &url, 1 << 30).expect("open");
        let wanted = ArtifactRef {
            sha256: Sha256Digest::of(b"small"),
            size: 5,
        };
        let err = cache.ensure(&wanted).await.expect_err("too large");
        assert!(matches!(err, ArtifactError::TooLarge { .. }), "{err}");
        assert!(!cache.path_of(&wanted.sha256).exists());
        assert!(tmp_is_empty(dir.path()));
    }

    #[tokio::test]
    async fn http_errors_name_the_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = serve_once("404 Not Found", Vec::new()).await;
        let cache = ArtifactCache::open(dir.path(), &url, 1 << 30).expect("open");
        let err = cache.ensure(&reference(b"x")).await.expect_err("not found");
        assert!(
            matches!(err, ArtifactError::Status { status: 404, .. }),
            "{err}"
        );
    }
}
