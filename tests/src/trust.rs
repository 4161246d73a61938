//! The test cluster's signing roles: a root key, a publisher key allowed
//! every service and the controller key, generated per cluster, and the
//! signed documents tests build from them (bundles, releases, deliveries).

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use verge_shared::messages::{Delivery, DesiredState, SCHEMA_VERSION, payload_type};
use verge_shared::trust::{Publisher, Release, RootRole, TrustBundle, payload_type as trust_type};
use verge_shared::{Envelope, SigningKey, Timestamp};

/// The keys of one test cluster.
pub struct Roles {
    pub root: SigningKey,
    pub controller: SigningKey,
    controller_pkcs8: Vec<u8>,
    pub publisher: SigningKey,
}

/// Signs `document` of `payload_type` with every key in `keys`.
pub fn sign_by<T: serde::Serialize>(
    payload_type: &str,
    document: &T,
    keys: &[&SigningKey],
) -> Envelope {
    let payload = serde_json::to_vec(document).expect("serialisable");
    let mut envelope = keys[0].sign(payload_type, &payload);
    for key in &keys[1..] {
        envelope.add_signature(key).expect("payload is base64");
    }
    envelope
}

impl Roles {
    pub fn generate() -> Self {
        let key = || SigningKey::generate().expect("key").0;
        let (controller, controller_pkcs8) = SigningKey::generate().expect("key");
        Self {
            root: key(),
            controller,
            controller_pkcs8,
            publisher: key(),
        }
    }

    /// Writes the controller key where the controller looks for it, so that
    /// it starts with the key the bundle lists.
    pub fn install_controller_key(&self, controller_data: &Path) -> Result<()> {
        let dir = controller_data.join("keys");
        std::fs::create_dir_all(&dir)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("controller.pk8"))?;
        std::io::Write::write_all(&mut file, &self.controller_pkcs8)?;
        Ok(())
    }

    /// Bundle `version`: this root (threshold 1), this controller, and the
    /// publisher allowed every service; valid for a day.
    pub fn bundle(&self, version: u64) -> TrustBundle {
        self.bundle_valid_for(version, Duration::from_secs(86_400))
    }

    /// [`Roles::bundle`] valid for `validity` from now.
    pub fn bundle_valid_for(&self, version: u64, validity: Duration) -> TrustBundle {
        let now = Timestamp::now();
        TrustBundle {
            schema_version: SCHEMA_VERSION,
            version,
            issued_at: now,
            expires_at: now.saturating_add(validity),
            root: RootRole {
                keys: vec![self.root.public_key()],
                threshold: 1,
            },
            controllers: vec![self.controller.public_key()],
            publishers: vec![Publisher {
                name: "test publisher".into(),
                key: self.publisher.public_key(),
                services: vec!["*".into()],
            }],
            reset_generations: false,
        }
    }

    /// The signed bundle `version`, as JSON.
    pub fn signed_bundle(&self, version: u64) -> Vec<u8> {
        self.sign_bundle(&self.bundle(version))
    }

    /// `bundle` signed by this root, as JSON.
    pub fn sign_bundle(&self, bundle: &TrustBundle) -> Vec<u8> {
        serde_json::to_vec(&sign_by(trust_type::TRUST_BUNDLE, bundle, &[&self.root])).expect("json")
    }
}

/// A delivery as the controller publishes it, built from parts a test
/// chose (and perhaps forged).
pub fn delivery(desired: Envelope, releases: Vec<Envelope>, trust: Option<Envelope>) -> Vec<u8> {
    serde_json::to_vec(&Delivery {
        schema_version: SCHEMA_VERSION,
        trust,
        desired,
        releases,
    })
    .expect("json")
}

/// Signs a desired state with `key`.
pub fn sign_desired(key: &SigningKey, desired: &DesiredState) -> Envelope {
    sign_by(payload_type::DESIRED_STATE, desired, &[key])
}

/// Signs a release with `keys`.
pub fn sign_release(release: &Release, keys: &[&SigningKey]) -> Envelope {
    sign_by(trust_type::RELEASE, release, keys)
}
