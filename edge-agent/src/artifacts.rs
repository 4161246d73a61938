//! Content-addressed artifact cache at `<data_dir>/artifacts/sha256/<hex>`,
//! filled from the controller over HTTP.
//!
//! A download streams into `artifacts/tmp/`, hashing and counting as it goes,
//! and is cut off as soon as it exceeds the declared size. Only a file whose
//! size and digest both match is made executable, synced and renamed into
//! place, so a file under `sha256/` is always complete.
//!
//! A cached file is trusted as it is; re-verifying the whole cache at start
//! (against tampering or bit rot on flash) is a later task.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use verge_shared::Sha256Digest;
use verge_shared::messages::ArtifactRef;

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
        source: reqwest::Error,
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
    #[error("artifact {digest}: {path}: {source}")]
    Io {
        digest: Sha256Digest,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The cache and the client that fills it.
pub struct ArtifactCache {
    done_dir: PathBuf,
    tmp_dir: PathBuf,
    base_url: String,
    client: reqwest::Client,
    n_downloads: AtomicU64,
}

impl ArtifactCache {
    /// Opens the cache under `root` (`<data_dir>/artifacts`), creating its
    /// directories and discarding downloads a previous run left unfinished.
    pub fn open(root: &Path, controller_url: &str) -> Result<Self, std::io::Error> {
        let done_dir = root.join("sha256");
        let tmp_dir = root.join("tmp");
        if tmp_dir.exists() {
            std::fs::remove_dir_all(&tmp_dir)?;
        }
        std::fs::create_dir_all(&done_dir)?;
        std::fs::create_dir_all(&tmp_dir)?;
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            done_dir,
            tmp_dir,
            base_url: controller_url.trim_end_matches('/').to_owned(),
            client,
            n_downloads: AtomicU64::new(0),
        })
    }

    /// Where the artifact with `digest` lives once cached.
    pub fn path_of(&self, digest: &Sha256Digest) -> PathBuf {
        self.done_dir.join(digest.to_string())
    }

    /// The cached file for `artifact`, downloading it first if needed.
    pub async fn ensure(&self, artifact: &ArtifactRef) -> Result<PathBuf, ArtifactError> {
        let path = self.path_of(&artifact.sha256);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        let n = self.n_downloads.fetch_add(1, Ordering::Relaxed);
        let tmp = TempFile(self.tmp_dir.join(format!("{}.{n}.part", artifact.sha256)));
        self.download(artifact, &tmp.0).await?;
        let io = |source| ArtifactError::Io {
            digest: artifact.sha256,
            path: path.clone(),
            source,
        };
        tokio::fs::rename(&tmp.0, &path).await.map_err(io)?;
        // Make the rename itself durable before anything runs the file.
        let dir = self.done_dir.clone();
        tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(io)?;
        Ok(path)
    }

    async fn download(&self, artifact: &ArtifactRef, tmp: &Path) -> Result<(), ArtifactError> {
        let digest = artifact.sha256;
        let declared = artifact.size;
        let http = |source| ArtifactError::Http { digest, source };
        let io = |source| ArtifactError::Io {
            digest,
            path: tmp.to_owned(),
            source,
        };
        let url = format!("{}/api/v1/artifacts/{digest}", self.base_url);
        let mut response = self.client.get(url).send().await.map_err(http)?;
        if !response.status().is_success() {
            return Err(ArtifactError::Status {
                digest,
                status: response.status().as_u16(),
            });
        }
        if response.content_length().is_some_and(|len| len > declared) {
            return Err(ArtifactError::TooLarge { digest, declared });
        }
        let mut file = tokio::fs::File::create(tmp).await.map_err(io)?;
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut got: u64 = 0;
        while let Some(chunk) = response.chunk().await.map_err(http)? {
            got = got.saturating_add(chunk.len() as u64);
            if got > declared {
                return Err(ArtifactError::TooLarge { digest, declared });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
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
        file.sync_all().await.map_err(io)?;
        Ok(())
    }
}

/// A partial download, removed when dropped unless it was renamed away.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        // After a successful rename the file is gone and this fails: fine.
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;

    /// Serves one canned HTTP/1.1 response to the first connection and
    /// returns the base URL.
    async fn serve_once(status: &str, body: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&body).await;
            let _ = socket.shutdown().await;
        });
        format!("http://{addr}")
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
        let cache = ArtifactCache::open(dir.path(), &url).expect("open");
        let path = cache.ensure(&reference(&body)).await.expect("fetch");
        assert_eq!(std::fs::read(&path).expect("read"), body);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(tmp_is_empty(dir.path()));
        // The server is gone; the cached copy is used without a request.
        assert_eq!(cache.ensure(&reference(&body)).await.expect("cached"), path);
    }

    #[tokio::test]
    async fn wrong_digest_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = serve_once("200 OK", b"evil".to_vec()).await;
        let cache = ArtifactCache::open(dir.path(), &url).expect("open");
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
        let cache = ArtifactCache::open(dir.path(), &url).expect("open");
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
        let cache = ArtifactCache::open(dir.path(), &url).expect("open");
        let err = cache.ensure(&reference(b"x")).await.expect_err("not found");
        assert!(
            matches!(err, ArtifactError::Status { status: 404, .. }),
            "{err}"
        );
    }
}
