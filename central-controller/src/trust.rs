//! The trust bundle the controller serves: installed from a file or the
//! API, kept at `<data_dir>/trust/bundle.json`, and replaced only by a
//! properly signed successor that still lists this controller's key.

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use verge_shared::trust::{BundleUpdate, TrustBundle, TrustError, VerifiedBundle};
use verge_shared::{Envelope, PublicKey, Timestamp, limits};

/// Why the controller cannot start with the trust bundle it was given.
#[derive(Debug, thiserror::Error)]
pub enum TrustLoadError {
    #[error(
        "no trust bundle: set trust.bundle_file to a bundle that lists this controller's key {key} (docs/operators/keys.md); for a new installation, `verge-admin init` makes keys, a bundle and a configuration (docs/operators/production.md)"
    )]
    Missing { key: PublicKey },
    #[error("trust bundle {path}: {detail}")]
    Unusable { path: PathBuf, detail: String },
    #[error(
        "trust bundle {path}: this controller's key {key} (id {id}) is not among its controllers; add it and sign a new version"
    )]
    NotListed {
        path: PathBuf,
        key: PublicKey,
        id: String,
    },
}

/// Why a bundle offered at run time was not installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}")]
    Refused(#[from] TrustError),
    #[error(
        "the bundle does not list this controller's key {0}: installing it would stop every agent from accepting its desired states"
    )]
    WouldLockOut(PublicKey),
    #[error("cannot store the bundle at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The current bundle and where it is kept.
pub struct TrustState {
    path: PathBuf,
    own_key: PublicKey,
    current: RwLock<Held>,
}

/// A verified bundle with its envelope parsed once, for every delivery.
struct Held {
    verified: VerifiedBundle,
    envelope: Envelope,
}

impl Held {
    fn new(verified: VerifiedBundle) -> Result<Self, TrustError> {
        let envelope = Envelope::parse(&verified.envelope, limits::MAX_TRUST_BUNDLE_BYTES)?;
        Ok(Self { verified, envelope })
    }
}

/// Creates the directory above `path`, then writes `bytes` durably.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    verge_durable::write(path, bytes)
}

impl TrustState {
    /// The stored bundle, or the configured one at first start; a newer
    /// configured bundle than the stored one is installed as an update.
    pub fn load(
        data_dir: &Path,
        configured: Option<&Path>,
        own_key: PublicKey,
        now: Timestamp,
    ) -> Result<Self, TrustLoadError> {
        let path = data_dir.join("trust").join("bundle.json");
        let unusable = |path: &Path, detail: String| TrustLoadError::Unusable {
            path: path.to_owned(),
            detail,
        };
        let read = |path: &Path| std::fs::read(path).map_err(|e| unusable(path, e.to_string()));
        let state = if path.exists() {
            let held = TrustBundle::verify_self_signed(&read(&path)?)
                .and_then(Held::new)
                .map_err(|e| unusable(&path, e.to_string()))?;
            Self {
                path: path.clone(),
                own_key,
                current: RwLock::new(held),
            }
        } else {
            let Some(file) = configured else {
                return Err(TrustLoadError::Missing { key: own_key });
            };
            let held = TrustBundle::verify_initial(&read(file)?, now)
                .and_then(Held::new)
                .map_err(|e| unusable(file, e.to_string()))?;
            write_atomically(&path, &held.verified.envelope)
                .map_err(|e| unusable(&path, e.to_string()))?;
            Self {
                path: path.clone(),
                own_key,
                current: RwLock::new(held),
            }
        };
        if let Some(file) = configured.filter(|f| *f != path) {
            match state.install(&read(file)?, now) {
                Ok(Some(version)) => {
                    tracing::info!(version, path = %file.display(), "Installed a newer trust bundle from the configuration.");
                }
                Ok(None) | Err(InstallError::Refused(TrustError::Stale { .. })) => {}
                Err(e) => return Err(unusable(file, e.to_string())),
            }
        }
        let bundle = state.bundle();
        if !bundle.controllers.contains(&own_key) {
            return Err(TrustLoadError::NotListed {
                path,
                key: own_key,
                id: own_key.key_id().to_string(),
            });
        }
        if bundle.expires_at <= now {
            tracing::error!(version = bundle.version, expires_at = %bundle.expires_at, "The trust bundle has expired: agents refuse every new desired state until a newer one is installed.");
        }
        Ok(state)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn bundle(&self) -> TrustBundle {
        self.read().verified.bundle.clone()
    }

    /// The bundle's envelope, as agents receive it in every delivery.
    pub fn envelope(&self) -> Envelope {
        self.read().envelope.clone()
    }

    /// Installs a properly signed successor. `Ok(None)`: already installed.
    pub fn install(&self, bytes: &[u8], now: Timestamp) -> Result<Option<u64>, InstallError> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let BundleUpdate::Newer(verified) = current.verified.bundle.verify_update(bytes, now)?
        else {
            return Ok(None);
        };
        if !verified.bundle.controllers.contains(&self.own_key) {
            return Err(InstallError::WouldLockOut(self.own_key));
        }
        let held = Held::new(verified)?;
        write_atomically(&self.path, &held.verified.envelope).map_err(|source| {
            InstallError::Io {
                path: self.path.clone(),
                source,
            }
        })?;
        let version = held.verified.bundle.version;
        *current = held;
        Ok(Some(version))
    }
}
