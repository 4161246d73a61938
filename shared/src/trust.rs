//! The signing roles: the root-signed trust bundle and publisher-signed releases.
//!
//! Three roles sign three kinds of document (docs/security.md, "Roles"):
//!
//! - **root** keys (offline, `k` of `n`) sign the [`TrustBundle`]: which
//!   controller keys and publisher keys are current, and which services each
//!   publisher may publish;
//! - **publisher** keys (offline) sign a [`Release`]: what code (artifact
//!   digests and sizes) and how to run it;
//! - the **controller** key (online) signs each agent's desired state, which
//!   names releases by their [`Envelope::signed_digest`].
//!
//! A controller key can never also be a publisher key, so the online key
//! alone cannot introduce code. The checks here are pure; the agent and the
//! controller call them with their clock.

use serde::{Deserialize, Serialize};

use crate::dsse::{Envelope, PublicKey, VerifyError};
use crate::id::ServiceName;
use crate::limits;
use crate::messages::{
    ArtifactRef, Assignment, CONFIG_ENV_PREFIX, RejectReason, Resources, RunSpec, Sha256Digest,
    Workload, check_schema_version,
};
use crate::time::Timestamp;

/// DSSE payload types of the two root-of-trust documents.
pub mod payload_type {
    pub const TRUST_BUNDLE: &str = "application/vnd.verge.trust-bundle.v1+json";
    pub const RELEASE: &str = "application/vnd.verge.release.v1+json";
}

/// Most keys in one role, and most publishers in a bundle.
pub const MAX_ROLE_KEYS: usize = 16;
pub const MAX_PUBLISHERS: usize = 64;
/// Most service patterns one publisher may hold.
pub const MAX_PATTERNS: usize = 64;

/// The root role: `threshold` of `keys` must sign a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RootRole {
    pub keys: Vec<PublicKey>,
    pub threshold: u32,
}

/// A publisher key and the services it may publish. A pattern is a service
/// name in which `*` stands for any run of characters (`web-*`, `*`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Publisher {
    pub name: String,
    pub key: PublicKey,
    pub services: Vec<String>,
}

/// The root-signed list of current keys. Agents move only to a higher
/// `version` signed by a threshold of the keys they already trust.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TrustBundle {
    pub schema_version: u32,
    pub version: u64,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub root: RootRole,
    /// Keys that may sign desired states.
    pub controllers: Vec<PublicKey>,
    pub publishers: Vec<Publisher>,
    /// Recovery from a fast-forward attack: an agent that accepts this
    /// bundle forgets the highest desired-state generation it has seen, so a
    /// (new) controller key can continue from its own counter. Rotate the
    /// stolen controller key out in the same bundle.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset_generations: bool,
}

/// What an artifact of a release is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum MediaType {
    /// The file is the executable.
    #[serde(rename = "application/vnd.verge.executable")]
    Executable,
    /// A tar.gz archive; the run spec's `entrypoint` names the executable.
    #[serde(rename = "application/vnd.verge.archive.tar+gzip")]
    TarGzip,
}

/// One artifact of a release: what the agent fetches and checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReleaseArtifact {
    pub sha256: Sha256Digest,
    pub size: u64,
    pub media_type: MediaType,
}

/// A publisher-signed release of one service: the code and how to run it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Release {
    pub schema_version: u32,
    pub service: ServiceName,
    pub version: semver::Version,
    pub issued_at: Timestamp,
    /// Exactly one today: the executable or the archive holding it.
    pub artifacts: Vec<ReleaseArtifact>,
    #[serde(default)]
    pub run: RunSpec,
    #[serde(default)]
    pub resources: Resources,
}

/// Why a trust bundle or a release was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("{0}")]
    Envelope(#[from] VerifyError),
    #[error("{0}")]
    Invalid(String),
    #[error("expired at {0}")]
    Expired(Timestamp),
    #[error("version {found} is older than the trusted version {trusted}")]
    Stale { found: u64, trusted: u64 },
    #[error("version {0} is the trusted version with different content")]
    Conflict(u64),
    #[error("release is not signed by any publisher key in the trust bundle ({0})")]
    UnknownPublisher(VerifyError),
    #[error("publisher {publisher:?} may not publish service {service}")]
    NotAllowed {
        publisher: String,
        service: ServiceName,
    },
}

/// A trust bundle whose signatures and contents were checked, with the
/// exact envelope bytes it came in (kept as evidence and passed on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedBundle {
    pub bundle: TrustBundle,
    pub envelope: Vec<u8>,
}

/// The outcome of offering a bundle to a holder of a trusted one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BundleUpdate {
    /// A higher version, properly signed: trust it from now on.
    Newer(VerifiedBundle),
    /// The bundle already trusted.
    Same,
}

/// Does `pattern` (with `*` wildcards) match the whole of `name`?
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            // Try every split point for the star; patterns and names are short.
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| pattern_matches(rest, &tail[i..]))
        }
    }
}

fn valid_pattern(pattern: &str) -> bool {
    (1..=64).contains(&pattern.len())
        && pattern
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*')
}

fn distinct(keys: &[PublicKey]) -> bool {
    keys.iter().enumerate().all(|(i, k)| !keys[..i].contains(k))
}

impl TrustBundle {
    /// Checks the bundle's own consistency; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        check_schema_version(self.schema_version)?;
        if self.expires_at <= self.issued_at {
            return Err("expires_at: must be after issued_at".into());
        }
        let n_root = self.root.keys.len();
        if n_root == 0 || n_root > MAX_ROLE_KEYS || !distinct(&self.root.keys) {
            return Err(format!(
                "root.keys: 1 to {MAX_ROLE_KEYS} distinct keys are required"
            ));
        }
        if self.root.threshold == 0 || self.root.threshold as usize > n_root {
            return Err(format!(
                "root.threshold: {} must be between 1 and the number of root keys ({n_root})",
                self.root.threshold
            ));
        }
        if self.controllers.is_empty()
            || self.controllers.len() > MAX_ROLE_KEYS
            || !distinct(&self.controllers)
        {
            return Err(format!(
                "controllers: 1 to {MAX_ROLE_KEYS} distinct keys are required"
            ));
        }
        if self.publishers.len() > MAX_PUBLISHERS {
            return Err(format!("publishers: at most {MAX_PUBLISHERS}"));
        }
        for (i, p) in self.publishers.iter().enumerate() {
            if p.name.is_empty() || p.name.len() > 64 || p.name.chars().any(char::is_control) {
                return Err(format!(
                    "publishers[{i}].name: 1 to 64 printable characters"
                ));
            }
            if self.controllers.contains(&p.key) || self.root.keys.contains(&p.key) {
                return Err(format!(
                    "publishers[{i}].key: a publisher key may not also be a controller or root key"
                ));
            }
            if self.publishers[..i].iter().any(|q| q.key == p.key) {
                return Err(format!("publishers[{i}].key: listed twice"));
            }
            if p.services.is_empty() || p.services.len() > MAX_PATTERNS {
                return Err(format!(
                    "publishers[{i}].services: 1 to {MAX_PATTERNS} patterns"
                ));
            }
            if let Some(bad) = p.services.iter().find(|s| !valid_pattern(s)) {
                return Err(format!(
                    "publishers[{i}].services: {bad:?} is not a service name pattern (a-z, 0-9, '-', '*')"
                ));
            }
        }
        if let Some(k) = self.controllers.iter().find(|k| self.root.keys.contains(k)) {
            return Err(format!(
                "controllers: key {} is also a root key; the online key must not be one",
                k.key_id()
            ));
        }
        Ok(())
    }

    fn threshold(&self) -> usize {
        self.root.threshold as usize
    }

    fn parse(bytes: &[u8]) -> Result<(Envelope, TrustBundle), TrustError> {
        let envelope = Envelope::parse(bytes, limits::MAX_TRUST_BUNDLE_BYTES)?;
        let bundle: TrustBundle = envelope.peek_unverified()?;
        Ok((envelope, bundle))
    }

    fn check_contents(&self, now: Timestamp) -> Result<(), TrustError> {
        self.validate().map_err(TrustError::Invalid)?;
        if self.expires_at <= now {
            return Err(TrustError::Expired(self.expires_at));
        }
        Ok(())
    }

    /// Checks a first bundle (shipped with the node or received at
    /// enrollment over an authenticated channel): signed by a threshold of
    /// its own root keys, valid and not expired.
    pub fn verify_initial(bytes: &[u8], now: Timestamp) -> Result<VerifiedBundle, TrustError> {
        let verified = Self::verify_self_signed(bytes)?;
        verified.bundle.check_contents(now)?;
        Ok(verified)
    }

    /// Checks a bundle's signatures against its own root keys and its
    /// contents, but not its expiry: for re-reading the bundle an agent
    /// stored itself, which keeps counting (and stays expired) after a restart.
    pub fn verify_self_signed(bytes: &[u8]) -> Result<VerifiedBundle, TrustError> {
        let (envelope, claimed) = Self::parse(bytes)?;
        let payload = envelope.verify_threshold(
            payload_type::TRUST_BUNDLE,
            &claimed.root.keys,
            claimed.threshold(),
        )?;
        let bundle: TrustBundle =
            serde_json::from_slice(&payload).map_err(|e| VerifyError::BadPayload(e.to_string()))?;
        bundle.validate().map_err(TrustError::Invalid)?;
        Ok(VerifiedBundle {
            bundle,
            envelope: bytes.to_vec(),
        })
    }

    /// Checks `bytes` as a successor of this (trusted) bundle: a higher
    /// version, signed by a threshold of the current root keys **and** of
    /// its own (so a rotation cannot lock the new roots out), valid and not
    /// expired. The same version with the same content is [`BundleUpdate::Same`].
    pub fn verify_update(&self, bytes: &[u8], now: Timestamp) -> Result<BundleUpdate, TrustError> {
        let (envelope, claimed) = Self::parse(bytes)?;
        if claimed.version < self.version {
            return Err(TrustError::Stale {
                found: claimed.version,
                trusted: self.version,
            });
        }
        let payload = envelope.verify_threshold(
            payload_type::TRUST_BUNDLE,
            &self.root.keys,
            self.threshold(),
        )?;
        let bundle: TrustBundle =
            serde_json::from_slice(&payload).map_err(|e| VerifyError::BadPayload(e.to_string()))?;
        if bundle.version == self.version {
            return if bundle == *self {
                Ok(BundleUpdate::Same)
            } else {
                Err(TrustError::Conflict(bundle.version))
            };
        }
        envelope.verify_threshold(
            payload_type::TRUST_BUNDLE,
            &bundle.root.keys,
            bundle.threshold(),
        )?;
        bundle.check_contents(now)?;
        Ok(BundleUpdate::Newer(VerifiedBundle {
            bundle,
            envelope: bytes.to_vec(),
        }))
    }

    /// Checks a release envelope: signed by a listed publisher that may
    /// publish its service, and valid. Returns the release and its publisher.
    pub fn verify_release<'a>(
        &'a self,
        envelope: &Envelope,
    ) -> Result<(Release, &'a Publisher), TrustError> {
        let keys: Vec<PublicKey> = self.publishers.iter().map(|p| p.key).collect();
        let (payload, key) =
            envelope
                .verify_any(payload_type::RELEASE, &keys)
                .map_err(|e| match e {
                    VerifyError::UnknownKey(_) | VerifyError::Unsigned => {
                        TrustError::UnknownPublisher(e)
                    }
                    other => TrustError::Envelope(other),
                })?;
        let publisher = self
            .publishers
            .iter()
            .find(|p| p.key == key)
            .ok_or_else(|| TrustError::UnknownPublisher(VerifyError::UnknownKey(key.key_id())))?;
        let release: Release =
            serde_json::from_slice(&payload).map_err(|e| VerifyError::BadPayload(e.to_string()))?;
        release.validate().map_err(TrustError::Invalid)?;
        if !publisher
            .services
            .iter()
            .any(|p| pattern_matches(p, release.service.as_str()))
        {
            return Err(TrustError::NotAllowed {
                publisher: publisher.name.clone(),
                service: release.service,
            });
        }
        Ok((release, publisher))
    }
}

impl Release {
    /// Checks the release's own consistency; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        check_schema_version(self.schema_version)?;
        let [artifact] = self.artifacts.as_slice() else {
            return Err(format!(
                "artifacts: exactly one artifact is supported, found {}",
                self.artifacts.len()
            ));
        };
        self.run.validate().map_err(|e| format!("run.{e}"))?;
        match (artifact.media_type, &self.run.entrypoint) {
            (MediaType::TarGzip, None) => Err(
                "run.entrypoint: required for an archive artifact (the executable inside it)"
                    .into(),
            ),
            (MediaType::Executable, Some(_)) => Err(
                "run.entrypoint: only an archive artifact (application/vnd.verge.archive.tar+gzip) has one"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// The one artifact (validated releases have exactly one).
    pub fn artifact(&self) -> Option<&ReleaseArtifact> {
        self.artifacts.first()
    }

    /// What an agent runs for `assignment` of this release: the release's
    /// run spec with the assignment's config added as `VERGE_CONFIG_<KEY>`.
    /// The agent and the controller both resolve through here, so the
    /// controller's record of a workload is what the agent runs.
    pub fn workload(&self, assignment: &Assignment) -> Result<Workload, String> {
        let artifact = self
            .artifact()
            .ok_or_else(|| "artifacts: the release has none".to_owned())?;
        let mut run = self.run.clone();
        for (key, value) in &assignment.config {
            run.env
                .insert(format!("{CONFIG_ENV_PREFIX}{key}"), value.clone());
        }
        Ok(Workload {
            service: self.service.clone(),
            replica: assignment.replica,
            release: assignment.release,
            version: self.version.clone(),
            artifact: ArtifactRef {
                sha256: artifact.sha256,
                size: artifact.size,
            },
            run,
            resources: self.resources,
        })
    }
}

/// The machine-readable reason an agent reports for a refused trust
/// document (kept here so `messages` does not depend on `trust`).
impl From<&TrustError> for RejectReason {
    fn from(e: &TrustError) -> Self {
        match e {
            TrustError::Envelope(VerifyError::Threshold { .. }) => RejectReason::ThresholdNotMet,
            TrustError::Envelope(v) => RejectReason::from(v),
            TrustError::Invalid(_) => RejectReason::Invalid,
            TrustError::Expired(_) => RejectReason::Expired,
            TrustError::Stale { .. } | TrustError::Conflict(_) => RejectReason::StaleTrustBundle,
            TrustError::UnknownPublisher(_) => RejectReason::UnknownPublisher,
            TrustError::NotAllowed { .. } => RejectReason::PublisherNotAllowed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;

    const NOW: u64 = 1_800_000_000_000;

    fn key() -> SigningKey {
        SigningKey::generate().expect("key").0
    }

    fn at(offset_secs: i64) -> Timestamp {
        Timestamp::from_unix_millis(NOW.saturating_add_signed(offset_secs * 1000))
    }

    struct Keys {
        roots: Vec<SigningKey>,
        controller: SigningKey,
        publisher: SigningKey,
    }

    fn keys(n_roots: usize) -> Keys {
        Keys {
            roots: (0..n_roots).map(|_| key()).collect(),
            controller: key(),
            publisher: key(),
        }
    }

    fn bundle(k: &Keys, version: u64, threshold: u32) -> TrustBundle {
        TrustBundle {
            schema_version: 1,
            version,
            issued_at: at(-10),
            expires_at: at(3600),
            root: RootRole {
                keys: k.roots.iter().map(SigningKey::public_key).collect(),
                threshold,
            },
            controllers: vec![k.controller.public_key()],
            publishers: vec![Publisher {
                name: "web team".into(),
                key: k.publisher.public_key(),
                services: vec!["web-*".into()],
            }],
            reset_generations: false,
        }
    }

    fn sign_by(b: &TrustBundle, signers: &[&SigningKey]) -> Vec<u8> {
        let payload = serde_json::to_vec(b).expect("json");
        let mut env = signers[0].sign(payload_type::TRUST_BUNDLE, &payload);
        for s in &signers[1..] {
            env.add_signature(s).expect("sign");
        }
        serde_json::to_vec(&env).expect("json")
    }

    fn release(service: &str) -> Release {
        Release {
            schema_version: 1,
            service: ServiceName::new(service).expect("name"),
            version: semver::Version::new(1, 2, 3),
            issued_at: at(0),
            artifacts: vec![ReleaseArtifact {
                sha256: Sha256Digest::of(b"code"),
                size: 4,
                media_type: MediaType::Executable,
            }],
            run: RunSpec::default(),
            resources: Resources::default(),
        }
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("web", "web"));
        assert!(!pattern_matches("web", "web-1"));
        assert!(pattern_matches("web-*", "web-1"));
        assert!(pattern_matches("web-*", "web-"));
        assert!(!pattern_matches("web-*", "api"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("*-eu-*", "cache-eu-west"));
        assert!(!pattern_matches("*-eu-*", "cache-us-west"));
    }

    #[test]
    fn initial_bundle_needs_its_own_threshold_and_must_be_current() {
        let k = keys(3);
        let b = bundle(&k, 1, 2);
        let one = sign_by(&b, &[&k.roots[0]]);
        assert!(matches!(
            TrustBundle::verify_initial(&one, at(0)),
            Err(TrustError::Envelope(VerifyError::Threshold {
                valid: 1,
                threshold: 2
            }))
        ));
        let two = sign_by(&b, &[&k.roots[0], &k.roots[2]]);
        let verified = TrustBundle::verify_initial(&two, at(0)).expect("2 of 3");
        assert_eq!(verified.bundle, b);
        assert_eq!(
            TrustBundle::verify_initial(&two, at(3600)),
            Err(TrustError::Expired(at(3600)))
        );
    }

    #[test]
    fn rotation_needs_a_threshold_of_the_current_roots_and_of_the_new_ones() {
        let old = keys(3);
        let current = bundle(&old, 1, 2);
        // Rotate to three new root keys.
        let new = keys(3);
        let mut next = bundle(&new, 2, 2);
        next.controllers = current.controllers.clone();

        // Signed only by the new roots: refused (who are they?).
        let by_new = sign_by(&next, &[&new.roots[0], &new.roots[1]]);
        assert!(matches!(
            current.verify_update(&by_new, at(0)),
            Err(TrustError::Envelope(VerifyError::Threshold {
                valid: 0,
                ..
            }))
        ));
        // Signed by one old root only: under the threshold.
        let by_one_old = sign_by(&next, &[&old.roots[0], &new.roots[0], &new.roots[1]]);
        assert!(current.verify_update(&by_one_old, at(0)).is_err());
        // Two old roots, but none of the new: the new roots never agreed.
        let by_old = sign_by(&next, &[&old.roots[0], &old.roots[1]]);
        assert!(current.verify_update(&by_old, at(0)).is_err());
        // Two old and two new: accepted.
        let good = sign_by(
            &next,
            &[&old.roots[0], &old.roots[1], &new.roots[0], &new.roots[2]],
        );
        let BundleUpdate::Newer(v) = current.verify_update(&good, at(0)).expect("rotates") else {
            panic!("expected a newer bundle");
        };
        assert_eq!(v.bundle.version, 2);
        // Once rotated, the old roots alone cannot sign version 3.
        let mut third = next.clone();
        third.version = 3;
        let by_old_again = sign_by(&third, &[&old.roots[0], &old.roots[1]]);
        assert!(v.bundle.verify_update(&by_old_again, at(0)).is_err());
    }

    #[test]
    fn older_same_conflicting_and_expired_updates() {
        let k = keys(1);
        let current = bundle(&k, 5, 1);
        let same = sign_by(&current, &[&k.roots[0]]);
        assert_eq!(current.verify_update(&same, at(0)), Ok(BundleUpdate::Same));
        let older = sign_by(&bundle(&k, 4, 1), &[&k.roots[0]]);
        assert_eq!(
            current.verify_update(&older, at(0)),
            Err(TrustError::Stale {
                found: 4,
                trusted: 5
            })
        );
        let mut other = current.clone();
        other.publishers.clear();
        let conflict = sign_by(&other, &[&k.roots[0]]);
        assert_eq!(
            current.verify_update(&conflict, at(0)),
            Err(TrustError::Conflict(5))
        );
        let mut expired = bundle(&k, 6, 1);
        expired.expires_at = at(-1);
        expired.issued_at = at(-20);
        let expired = sign_by(&expired, &[&k.roots[0]]);
        assert_eq!(
            current.verify_update(&expired, at(0)),
            Err(TrustError::Expired(at(-1)))
        );
    }

    #[test]
    fn roles_must_stay_separate() {
        let k = keys(1);
        let mut b = bundle(&k, 1, 1);
        b.publishers[0].key = k.controller.public_key();
        assert!(
            b.validate()
                .expect_err("shared key")
                .contains("publishers[0].key")
        );
        let mut b = bundle(&k, 1, 1);
        b.controllers.push(k.roots[0].public_key());
        assert!(
            b.validate()
                .expect_err("root online")
                .starts_with("controllers")
        );
        let mut b = bundle(&k, 1, 1);
        b.root.threshold = 2;
        assert!(
            b.validate()
                .expect_err("threshold")
                .starts_with("root.threshold")
        );
        let mut b = bundle(&k, 1, 1);
        b.publishers[0].services = vec!["Web/#".into()];
        assert!(b.validate().expect_err("pattern").contains("services"));
    }

    #[test]
    fn releases_need_an_allowed_publisher() {
        let k = keys(1);
        let b = bundle(&k, 1, 1);
        let sign = |r: &Release, key: &SigningKey| {
            key.sign(payload_type::RELEASE, &serde_json::to_vec(r).expect("json"))
        };
        let (r, publisher) = b
            .verify_release(&sign(&release("web-eu"), &k.publisher))
            .expect("allowed");
        assert_eq!(
            (r.service.as_str(), publisher.name.as_str()),
            ("web-eu", "web team")
        );
        assert_eq!(
            b.verify_release(&sign(&release("db"), &k.publisher)),
            Err(TrustError::NotAllowed {
                publisher: "web team".into(),
                service: ServiceName::new("db").expect("name"),
            })
        );
        // The controller key is not a publisher key.
        assert!(matches!(
            b.verify_release(&sign(&release("web-eu"), &k.controller)),
            Err(TrustError::UnknownPublisher(VerifyError::UnknownKey(_)))
        ));
        let mut unsigned = sign(&release("web-eu"), &k.publisher);
        unsigned.signatures.clear();
        assert_eq!(
            b.verify_release(&unsigned),
            Err(TrustError::UnknownPublisher(VerifyError::Unsigned))
        );
        let mut archive = release("web-eu");
        archive.artifacts[0].media_type = MediaType::TarGzip;
        assert!(matches!(
            b.verify_release(&sign(&archive, &k.publisher)),
            Err(TrustError::Invalid(e)) if e.starts_with("run.entrypoint")
        ));
    }

    /// The field a refused bundle's error names (the text up to the colon).
    fn refused_field(b: &TrustBundle) -> String {
        let e = b.validate().expect_err("must be refused");
        e.split(':').next().unwrap_or_default().to_owned()
    }

    fn publisher(name: &str) -> Publisher {
        Publisher {
            name: name.into(),
            key: key().public_key(),
            services: vec!["web-*".into()],
        }
    }

    #[test]
    fn every_inconsistency_of_a_bundle_is_refused_with_its_field() {
        let k = keys(2);
        let good = bundle(&k, 1, 2);
        assert_eq!(good.validate(), Ok(()));
        let refused = |change: &dyn Fn(&mut TrustBundle)| {
            let mut b = good.clone();
            change(&mut b);
            refused_field(&b)
        };
        assert_eq!(refused(&|b| b.schema_version = 2), "schema_version");
        assert_eq!(refused(&|b| b.expires_at = b.issued_at), "expires_at");
        assert_eq!(refused(&|b| b.root.keys.clear()), "root.keys");
        assert_eq!(
            refused(&|b| b.root.keys = (0..=MAX_ROLE_KEYS).map(|_| key().public_key()).collect()),
            "root.keys"
        );
        assert_eq!(
            refused(&|b| b.root.keys[1] = b.root.keys[0]),
            "root.keys",
            "a root key listed twice would let a threshold its distinct keys cannot reach pass"
        );
        assert_eq!(refused(&|b| b.root.threshold = 0), "root.threshold");
        assert_eq!(refused(&|b| b.root.threshold = 3), "root.threshold");
        assert_eq!(refused(&|b| b.controllers.clear()), "controllers");
        assert_eq!(
            refused(&|b| b.controllers = (0..=MAX_ROLE_KEYS).map(|_| key().public_key()).collect()),
            "controllers"
        );
        assert_eq!(
            refused(&|b| b.controllers.push(b.controllers[0])),
            "controllers"
        );
        assert_eq!(
            refused(&|b| {
                b.publishers = (0..=MAX_PUBLISHERS)
                    .map(|i| publisher(&format!("p{i}")))
                    .collect();
            }),
            "publishers"
        );
        assert_eq!(
            refused(&|b| b.publishers[0].name.clear()),
            "publishers[0].name"
        );
        assert_eq!(
            refused(&|b| b.publishers[0].name = "x".repeat(65)),
            "publishers[0].name"
        );
        assert_eq!(
            refused(&|b| b.publishers[0].name = "web\nteam".into()),
            "publishers[0].name"
        );
        assert_eq!(
            refused(&|b| b.publishers[0].key = b.root.keys[1]),
            "publishers[0].key",
            "a root key may not publish"
        );
        assert_eq!(
            refused(&|b| {
                let mut twice = b.publishers[0].clone();
                twice.name = "other team".into();
                b.publishers.push(twice);
            }),
            "publishers[1].key"
        );
        assert_eq!(
            refused(&|b| b.publishers[0].services.clear()),
            "publishers[0].services"
        );
        assert_eq!(
            refused(&|b| b.publishers[0].services = vec!["web-*".into(); MAX_PATTERNS + 1]),
            "publishers[0].services"
        );
        assert_eq!(
            refused(&|b| b.publishers[0].services = vec![String::new()]),
            "publishers[0].services"
        );
        assert_eq!(
            refused(&|b| b.publishers[0].services = vec!["w".repeat(65)]),
            "publishers[0].services"
        );
    }

    #[test]
    fn bundle_limits_are_inclusive() {
        let k = keys(MAX_ROLE_KEYS);
        // Every root key must sign: the threshold may equal the number of keys.
        let mut b = bundle(&k, 1, u32::try_from(MAX_ROLE_KEYS).expect("small"));
        b.controllers = (0..MAX_ROLE_KEYS).map(|_| key().public_key()).collect();
        b.publishers = (0..MAX_PUBLISHERS)
            .map(|i| publisher(&format!("p{i}")))
            .collect();
        b.publishers[0].name = "x".repeat(64);
        b.publishers[0].services = vec!["w".repeat(64); MAX_PATTERNS];
        b.publishers[1].services = vec!["a".into(), "0-*".into()];
        assert_eq!(b.validate(), Ok(()));
        // No publisher at all is a valid (if useless) bundle.
        let mut b = bundle(&keys(1), 1, 1);
        b.publishers.clear();
        assert_eq!(b.validate(), Ok(()));
    }

    #[test]
    fn a_stored_bundle_is_rechecked_without_its_expiry() {
        let k = keys(2);
        let mut b = bundle(&k, 1, 2);
        b.issued_at = at(-7200);
        b.expires_at = at(-3600);
        let both = sign_by(&b, &[&k.roots[0], &k.roots[1]]);
        let verified = TrustBundle::verify_self_signed(&both).expect("expired but signed");
        assert_eq!((verified.bundle, verified.envelope), (b.clone(), both));
        assert!(matches!(
            TrustBundle::verify_self_signed(&sign_by(&b, &[&k.roots[1]])),
            Err(TrustError::Envelope(VerifyError::Threshold { .. }))
        ));
        let mut invalid = b;
        invalid.controllers.clear();
        assert!(matches!(
            TrustBundle::verify_self_signed(&sign_by(&invalid, &[&k.roots[0], &k.roots[1]])),
            Err(TrustError::Invalid(e)) if e.starts_with("controllers")
        ));
    }

    #[test]
    fn a_properly_signed_but_invalid_successor_is_refused() {
        let k = keys(1);
        let current = bundle(&k, 1, 1);
        let mut next = bundle(&k, 2, 1);
        next.controllers.clear();
        assert!(matches!(
            current.verify_update(&sign_by(&next, &[&k.roots[0]]), at(0)),
            Err(TrustError::Invalid(e)) if e.starts_with("controllers")
        ));
        let next = bundle(&k, 2, 1);
        let bytes = sign_by(&next, &[&k.roots[0]]);
        assert_eq!(
            current.verify_update(&bytes, at(0)),
            Ok(BundleUpdate::Newer(VerifiedBundle {
                bundle: next,
                envelope: bytes.clone()
            }))
        );
    }

    #[test]
    fn a_release_names_exactly_one_artifact_and_an_entrypoint_only_for_archives() {
        assert_eq!(release("web").validate(), Ok(()));
        let mut none = release("web");
        none.artifacts.clear();
        assert!(none.validate().expect_err("none").starts_with("artifacts"));
        let mut two = release("web");
        two.artifacts.push(two.artifacts[0].clone());
        assert!(two.validate().expect_err("two").starts_with("artifacts"));
        let mut executable = release("web");
        executable.run.entrypoint = Some("bin/web".into());
        assert!(
            executable
                .validate()
                .expect_err("entrypoint of an executable")
                .starts_with("run.entrypoint")
        );
        let mut archive = release("web");
        archive.artifacts[0].media_type = MediaType::TarGzip;
        archive.run.entrypoint = Some("bin/web".into());
        assert_eq!(archive.validate(), Ok(()));
        let mut bad_run = release("web");
        bad_run.run.args = vec!["a\0b".into()];
        assert!(bad_run.validate().expect_err("NUL").starts_with("run.args"));
        let mut schema = release("web");
        schema.schema_version = 2;
        assert!(schema.validate().is_err());
    }

    #[test]
    fn a_workload_is_the_release_run_spec_plus_the_assignment_config() {
        let mut r = release("web-eu");
        r.run.args = vec!["--port".into(), "8080".into()];
        r.run.env.insert("MODE".into(), "fast".into());
        r.resources.memory_mb = 64;
        let assignment = Assignment {
            service: ServiceName::new("web-eu").expect("name"),
            replica: 2,
            release: Sha256Digest::of(b"release"),
            rollback: false,
            config: [("GREETING".to_owned(), "hi".to_owned())].into(),
        };
        let w = r.workload(&assignment).expect("resolves");
        assert_eq!(w.service, r.service);
        assert_eq!((w.replica, w.release), (2, Sha256Digest::of(b"release")));
        assert_eq!(w.version, r.version);
        assert_eq!(
            w.artifact,
            ArtifactRef {
                sha256: Sha256Digest::of(b"code"),
                size: 4
            }
        );
        assert_eq!(w.run.args, ["--port", "8080"]);
        assert_eq!(
            w.run.env,
            [
                ("MODE".to_owned(), "fast".to_owned()),
                ("VERGE_CONFIG_GREETING".to_owned(), "hi".to_owned())
            ]
            .into()
        );
        assert_eq!(w.resources, r.resources);
        let mut empty = r;
        empty.artifacts.clear();
        assert!(empty.workload(&assignment).is_err());
    }
}
