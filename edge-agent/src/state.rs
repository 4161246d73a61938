//! Durable agent state: the last accepted desired state (behind a
//! [`StateStore`] trait, stored in sled) and the node's signing key.
//!
//! The desired state is written and flushed before the agent acts on it, and
//! loaded at start, so the agent runs its last accepted state even when the
//! controller and the broker are unreachable.

use std::path::{Path, PathBuf};

use verge_shared::SigningKey;

use crate::intake::ResolvedState;

/// Why durable state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store at {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("stored desired state does not parse: {0}")]
    Corrupt(#[source] serde_json::Error),
    #[error("node key {path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: verge_shared::dsse::KeyError,
    },
    #[error("node key {path}: cannot {action}: {source}")]
    KeyFile {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl StateError {
    /// Did the write fail because the file system is full?
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StateError::Store { source: sled::Error::Io(e), .. } if crate::disk::is_no_space(e))
    }
}

/// A desired state the agent accepted: the delivery exactly as received
/// (evidence of what the controller and the publishers signed) and what it
/// resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub envelope: Vec<u8>,
    pub desired: ResolvedState,
}

/// Where the last accepted desired state lives.
pub trait StateStore: Send + Sync {
    /// The last accepted state, if any was ever saved.
    fn load(&self) -> Result<Option<Accepted>, StateError>;
    /// Replaces the stored state atomically; durable when this returns.
    fn save(&self, accepted: &Accepted) -> Result<(), StateError>;
}

const KEY_ENVELOPE: &[u8] = b"desired/envelope";
const KEY_DOCUMENT: &[u8] = b"desired/document";

/// [`StateStore`] on sled with a small cache (the agent targets 256 MB boards).
pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(1 << 20)
            .open()
            .map_err(|source| StateError::Store {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    /// The database, for the other trees kept next to the state (the outbox).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    fn store_error(&self, source: sled::Error) -> StateError {
        StateError::Store {
            path: self.path.clone(),
            source,
        }
    }
}

impl StateStore for SledStore {
    fn load(&self) -> Result<Option<Accepted>, StateError> {
        let envelope = self.db.get(KEY_ENVELOPE).map_err(|e| self.store_error(e))?;
        let document = self.db.get(KEY_DOCUMENT).map_err(|e| self.store_error(e))?;
        match (envelope, document) {
            (Some(envelope), Some(document)) => Ok(Some(Accepted {
                envelope: envelope.to_vec(),
                desired: serde_json::from_slice(&document).map_err(StateError::Corrupt)?,
            })),
            _ => Ok(None),
        }
    }

    fn save(&self, accepted: &Accepted) -> Result<(), StateError> {
        let document = serde_json::to_vec(&accepted.desired).map_err(StateError::Corrupt)?;
        // One batch so that envelope and document never disagree after a crash.
        let mut batch = sled::Batch::default();
        batch.insert(KEY_ENVELOPE, accepted.envelope.as_slice());
        batch.insert(KEY_DOCUMENT, document);
        self.db
            .apply_batch(batch)
            .map_err(|e| self.store_error(e))?;
        self.db.flush().map_err(|e| self.store_error(e))?;
        Ok(())
    }
}

/// Loads the node key from `path` (PKCS#8), creating it with mode 0600 on
/// first start.
pub fn load_or_create_node_key(path: &Path) -> Result<SigningKey, StateError> {
    let key_error = |source| StateError::Key {
        path: path.to_owned(),
        source,
    };
    let file_error = |action, source| StateError::KeyFile {
        path: path.to_owned(),
        action,
        source,
    };
    match std::fs::read(path) {
        Ok(pkcs8) => SigningKey::from_pkcs8(&pkcs8).map_err(key_error),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (key, pkcs8) = SigningKey::generate().map_err(key_error)?;
            // create_new: never overwrite a key another process just wrote.
            verge_durable::create_new(path, &pkcs8, verge_durable::PRIVATE)
                .map_err(|e| file_error("create", e))?;
            Ok(key)
        }
        Err(e) => Err(file_error("read", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use verge_shared::{Generation, Timestamp};

    fn accepted(generation: u64) -> Accepted {
        Accepted {
            envelope: format!("envelope {generation}").into_bytes(),
            desired: ResolvedState {
                generation: Generation::new(generation),
                expires_at: Timestamp::from_unix_millis(2),
                workloads: vec![],
            },
        }
    }

    #[test]
    fn saved_state_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state");
        {
            let store = SledStore::open(&path).expect("open");
            assert_eq!(store.load().expect("load"), None);
            store.save(&accepted(1)).expect("save");
            store.save(&accepted(2)).expect("save");
        }
        let store = SledStore::open(&path).expect("reopen");
        assert_eq!(store.load().expect("load"), Some(accepted(2)));
    }

    #[test]
    fn node_key_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        let first = load_or_create_node_key(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create_node_key(&path).expect("load");
        assert_eq!(first.public_key(), again.public_key());
        std::fs::write(&path, b"junk").expect("write");
        assert!(load_or_create_node_key(&path).is_err());
    }
}
