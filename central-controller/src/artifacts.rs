//! Artifact bytes on disk, content-addressed: `<data_dir>/artifacts/sha256/<hex>`.
//!
//! Uploads stream into a temporary file while being hashed and bounded, and are
//! renamed into place only once complete, so a reader never sees a partial file.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::io::AsyncWriteExt as _;
use verge_shared::Sha256Digest;

/// Why an upload did not produce an artifact.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the artifact is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the request body failed: {0}")]
    Body(String),
    #[error("writing the artifact failed: {0}")]
    Io(#[from] io::Error),
}

/// A completed upload, already in its content-addressed place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    pub sha256: Sha256Digest,
    pub size: u64,
}

/// The artifact directory.
#[derive(Clone, Debug)]
pub struct ArtifactFiles {
    root: PathBuf,
}

impl ArtifactFiles {
    /// Creates the directories below `<data_dir>/artifacts`.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let root = data_dir.join("artifacts");
        std::fs::create_dir_all(root.join("sha256"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(Self { root })
    }

    pub fn path_of(&self, digest: &Sha256Digest) -> PathBuf {
        self.root.join("sha256").join(digest.to_string())
    }

    /// Streams `body` to disk, hashing it, refusing more than `limit` bytes.
    pub async fn store<S, E>(&self, mut body: S, limit: u64) -> Result<Stored, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut name = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut name)
            .map_err(|_| io::Error::other("the system random source failed"))?;
        let temp = self.root.join("tmp").join(hex::encode(name));
        let result = self.write_temp(&temp, &mut body, limit).await;
        let stored = match result {
            Ok(stored) => stored,
            Err(e) => {
                // Best effort: a leftover temp file is harmless.
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(e);
            }
        };
        // The temp file was synced by `write_temp`; commit syncs it again
        // (cheap) and then the directory, so the rename survives a crash.
        let path = self.path_of(&stored.sha256);
        tokio::task::spawn_blocking(move || verge_durable::commit(&temp, &path))
            .await
            .map_err(io::Error::other)??;
        Ok(stored)
    }

    async fn write_temp<S, E>(
        &self,
        temp: &Path,
        body: &mut S,
        limit: u64,
    ) -> Result<Stored, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut file = tokio::fs::File::create(temp).await?;
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
            size = size.saturating_add(chunk.len() as u64);
            if size > limit {
                return Err(UploadError::TooLarge { limit });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        Ok(Stored {
            sha256: Sha256Digest::from_ring(hasher.finish()),
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn stores_by_digest_and_enforces_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ArtifactFiles::open(dir.path()).expect("open");
        let stored = files
            .store(chunks(&[b"hello ", b"world"]), 100)
            .await
            .expect("store");
        assert_eq!(stored.sha256, Sha256Digest::of(b"hello world"));
        assert_eq!(stored.size, 11);
        assert_eq!(
            std::fs::read(files.path_of(&stored.sha256)).expect("read"),
            b"hello world"
        );

        let err = files
            .store(chunks(&[b"hello ", b"world"]), 8)
            .await
            .expect_err("too large");
        assert!(matches!(err, UploadError::TooLarge { limit: 8 }));
        let leftovers = std::fs::read_dir(dir.path().join("artifacts/tmp"))
            .expect("tmp")
            .count();
        assert_eq!(leftovers, 0);
    }
}
