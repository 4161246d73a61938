//! The trust bundle this agent holds: loaded at start, replaced only by a
//! properly signed successor (docs/security.md, "Roles"), and persisted
//! next to the desired state before it is used.

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use verge_shared::trust::{BundleUpdate, TrustBundle, TrustError, VerifiedBundle};
use verge_shared::{PublicKey, Timestamp};

const KEY_ENVELOPE: &[u8] = b"trust/envelope";
/// Set when a bundle asked for a generation reset that no accepted desired
/// state has consumed yet (a crash in between must not lose it).
const KEY_RESET: &[u8] = b"trust/reset-pending";

/// Why the agent has no usable trust bundle at start.
#[derive(Debug, thiserror::Error)]
pub enum TrustLoadError {
    #[error(
        "no trust bundle: set trust_bundle_file, or enroll with a token so that {0} is written"
    )]
    Missing(PathBuf),
    #[error("trust bundle {path}: cannot read: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("trust bundle {path}: {source}")]
    Unusable {
        path: PathBuf,
        #[source]
        source: TrustError,
    },
    #[error("stored trust bundle: {0}")]
    Store(#[source] sled::Error),
    #[error("stored trust bundle: {0}")]
    StoredInvalid(#[source] TrustError),
}

struct Held {
    verified: VerifiedBundle,
    reset_pending: bool,
}

/// The current trust bundle, shared by intake (desired states, releases),
/// the prober and the log-request handler (controller keys).
pub struct TrustStore {
    tree: sled::Tree,
    held: RwLock<Held>,
}

/// Why an offered bundle is not trusted (yet).
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    /// The bundle itself is refused.
    #[error(transparent)]
    Refused(#[from] TrustError),
    /// A good bundle that could not be stored; it is offered again with the
    /// next delivery.
    #[error("cannot store the trust bundle: {0}")]
    Store(#[source] sled::Error),
}

/// What became of a bundle offered with a delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// Trusted from now on; `reset` when it cleared the generation floor.
    Updated { version: u64, reset: bool },
    /// The bundle already held.
    Unchanged,
}

impl TrustStore {
    /// Loads the stored bundle; without one, the first bundle from
    /// `initial` (or, when unset, `<data_dir>/trust-bundle.json`). A newer
    /// bundle in that file than the stored one is taken as an update.
    pub fn open(
        db: &sled::Db,
        initial: Option<&Path>,
        data_dir: &Path,
        now: Timestamp,
    ) -> Result<Self, TrustLoadError> {
        let store_err = TrustLoadError::Store;
        let tree = db.open_tree("trust").map_err(store_err)?;
        let file = initial.map_or_else(|| data_dir.join("trust-bundle.json"), Path::to_owned);
        let stored = tree.get(KEY_ENVELOPE).map_err(store_err)?;
        let reset_pending = tree.get(KEY_RESET).map_err(store_err)?.is_some();

        let store = match stored {
            Some(bytes) => {
                let verified = TrustBundle::verify_self_signed(&bytes)
                    .map_err(TrustLoadError::StoredInvalid)?;
                Self {
                    tree,
                    held: RwLock::new(Held {
                        verified,
                        reset_pending,
                    }),
                }
            }
            None => {
                let bytes = std::fs::read(&file).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => TrustLoadError::Missing(file.clone()),
                    _ => TrustLoadError::Unreadable {
                        path: file.clone(),
                        source: e,
                    },
                })?;
                let verified = TrustBundle::verify_initial(&bytes, now).map_err(|source| {
                    TrustLoadError::Unusable {
                        path: file.clone(),
                        source,
                    }
                })?;
                tree.insert(KEY_ENVELOPE, verified.envelope.as_slice())
                    .and_then(|_| tree.flush())
                    .map_err(store_err)?;
                tracing::info!(version = verified.bundle.version, path = %file.display(), "Trusting the initial trust bundle.");
                return Ok(Self {
                    tree,
                    held: RwLock::new(Held {
                        verified,
                        reset_pending: false,
                    }),
                });
            }
        };
        // An operator may drop a newer bundle into the file (offline rotation).
        if let Ok(bytes) = std::fs::read(&file) {
            match store.offer(&bytes, now) {
                Ok(Offered::Updated { version, .. }) => {
                    tracing::info!(version, path = %file.display(), "Took a newer trust bundle from the file.");
                }
                Ok(Offered::Unchanged) | Err(OfferError::Refused(TrustError::Stale { .. })) => {}
                Err(e) => {
                    tracing::warn!(path = %file.display(), error = %e, "Ignored the trust bundle file.");
                }
            }
        }
        Ok(store)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.held.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bundle trusted now.
    pub fn bundle(&self) -> TrustBundle {
        self.read().verified.bundle.clone()
    }

    /// When the bundle trusted now expires.
    pub fn expires_at(&self) -> Timestamp {
        self.read().verified.bundle.expires_at
    }

    /// The keys that may sign desired states, probe plans and log requests.
    pub fn controller_keys(&self) -> Vec<PublicKey> {
        self.read().verified.bundle.controllers.clone()
    }

    /// Whether a root-signed reset waits to clear the generation floor.
    pub fn reset_pending(&self) -> bool {
        self.read().reset_pending
    }

    /// Records that an accepted desired state consumed the reset.
    pub fn clear_reset(&self) -> Result<(), String> {
        self.tree
            .remove(KEY_RESET)
            .and_then(|_| self.tree.flush())
            .map_err(|e| e.to_string())?;
        self.held
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .reset_pending = false;
        Ok(())
    }

    /// Offers a bundle: a properly signed successor replaces the held one
    /// (persisted first); anything else leaves it untouched.
    pub fn offer(&self, bytes: &[u8], now: Timestamp) -> Result<Offered, OfferError> {
        let mut held = self.held.write().unwrap_or_else(PoisonError::into_inner);
        let update = held.verified.bundle.verify_update(bytes, now)?;
        let BundleUpdate::Newer(verified) = update else {
            return Ok(Offered::Unchanged);
        };
        let reset = verified.bundle.reset_generations;
        let mut batch = sled::Batch::default();
        batch.insert(KEY_ENVELOPE, verified.envelope.as_slice());
        if reset {
            batch.insert(KEY_RESET, &[1u8][..]);
        }
        self.tree
            .apply_batch(batch)
            .and_then(|()| self.tree.flush().map(drop))
            .map_err(OfferError::Store)?;
        let version = verified.bundle.version;
        held.verified = verified;
        held.reset_pending |= reset;
        Ok(Offered::Updated { version, reset })
    }
}
