//! Read-only consumer identities: issued (a certificate from the CA, or a
//! password for an external broker), listed and revoked; and the files an
//! external Mosquitto reads for them, rewritten on every change.
//!
//! The embedded broker enforces a consumer's rights in the terminator
//! (`consumer_guard`); Mosquitto by `<data_dir>/ca/mosquitto.acl` (the
//! shipped `configs/mosquitto/verge.acl` plus one `user` block per
//! consumer) and `<data_dir>/ca/mosquitto.passwd`.

use std::num::NonZeroU32;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use verge_shared::{AgentId, RegionId, Timestamp};

use super::composition::App;
use super::error::{AppError, random_hex};
use super::identity::Pki;
use super::metrics::Reason;
use crate::ca::{CONSUMER_PREFIX, RevokedSerial};
use crate::consumer_guard::readable_filters;
use crate::store::{ConsumerCredential, ConsumerRecord, IssuedCert};

/// The shipped access list: the template of the one the controller writes.
pub const ACL_TEMPLATE: &str = include_str!("../../../configs/mosquitto/verge.acl");
/// The prefix the template is written for.
const TEMPLATE_PREFIX: &str = "verge/v1";
/// Most regions one consumer may be limited to.
pub const MAX_CONSUMER_REGIONS: usize = 32;
/// PBKDF2 rounds in a `$7$` password hash: Mosquitto's own default. The
/// password is 192 random bits, so the rounds add nothing that matters.
const PBKDF2_ROUNDS: u32 = 101;
/// Revoked serials are forgotten this long after their expiry.
const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(86_400);

/// The credential a consumer gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A client certificate from the controller's CA (the embedded broker,
    /// or Mosquitto with `configs/mosquitto/verge.conf`).
    #[default]
    Certificate,
    /// A user name and password, for an external broker's password file.
    Password,
}

/// `POST /api/v1/consumers` body.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerRequest {
    /// Letters, digits, `-`, `_`, `.`; the broker user name is `consumer+<name>`.
    pub name: String,
    /// The regions it may read; absent or empty for every region.
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub credential: CredentialKind,
    /// A PEM certificate signing request, so that the key never leaves the
    /// consumer's machine (certificate only); without it the controller
    /// makes the key and returns it once.
    #[serde(default)]
    pub csr_pem: Option<String>,
}

/// A consumer as the API shows it; its secrets only in the creation reply.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ConsumerView {
    pub name: String,
    /// The broker user name (and certificate common name).
    pub user: String,
    /// Empty: every region.
    pub regions: Vec<RegionId>,
    pub credential: CredentialKind,
    pub created_at: Timestamp,
    /// The certificate's serial (lower-case hex) and expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Timestamp>,
    /// Only in the creation reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
    /// Only in the creation reply, when the controller made the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
    /// Only in the creation reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Only in the creation reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

fn user(name: &str) -> String {
    format!("{CONSUMER_PREFIX}{name}")
}

fn view(record: &ConsumerRecord) -> Option<ConsumerView> {
    let credential = record.credential.as_ref()?;
    let (kind, cert) = match credential {
        ConsumerCredential::Certificate(cert) => (CredentialKind::Certificate, Some(cert)),
        ConsumerCredential::Password { .. } => (CredentialKind::Password, None),
    };
    Some(ConsumerView {
        name: record.name.clone(),
        user: user(&record.name),
        regions: record.regions.clone(),
        credential: kind,
        created_at: record.created_at,
        serial: cert.map(|c| c.serial.clone()),
        not_after: cert.map(|c| c.not_after),
        certificate_pem: None,
        key_pem: None,
        ca_pem: None,
        password: None,
    })
}

/// Mosquitto's `$7$` hash (PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte
/// digest, standard base64), as `mosquitto_passwd` writes it.
pub fn mosquitto_hash(password: &str) -> Result<String, AppError> {
    use ring::rand::SecureRandom as _;
    let mut salt = [0u8; 12];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| AppError::Random)?;
    Ok(hash_with_salt(password, &salt))
}

fn hash_with_salt(password: &str, salt: &[u8]) -> String {
    let mut digest = [0u8; 64];
    let rounds = NonZeroU32::new(PBKDF2_ROUNDS).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        rounds,
        salt,
        password.as_bytes(),
        &mut digest,
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "$7${PBKDF2_ROUNDS}${}${}",
        b64.encode(salt),
        b64.encode(digest)
    )
}

/// The access list for `consumers` under `prefix`: the template, then one
/// `user` block per live consumer with exactly what it may read.
pub fn access_list(prefix: &str, consumers: &[ConsumerRecord]) -> String {
    let mut out = ACL_TEMPLATE.replace(&format!("{TEMPLATE_PREFIX}/"), &format!("{prefix}/"));
    for c in consumers.iter().filter(|c| c.credential.is_some()) {
        let regions: Vec<String> = c.regions.iter().map(|r| r.as_str().to_owned()).collect();
        let scope = if regions.is_empty() {
            "every region".to_owned()
        } else {
            format!("regions {}", regions.join(", "))
        };
        out.push_str(&format!(
            "\n# Consumer {} ({scope})\nuser {}\n",
            c.name,
            user(&c.name)
        ));
        for filter in readable_filters(prefix, &regions) {
            out.push_str(&format!("topic read {filter}\n"));
        }
    }
    out
}

/// The password file for `consumers`: `user:$7$...` per password consumer.
pub fn password_file(consumers: &[ConsumerRecord]) -> String {
    consumers
        .iter()
        .filter_map(|c| match &c.credential {
            Some(ConsumerCredential::Password { hash }) => {
                Some(format!("{}:{hash}\n", user(&c.name)))
            }
            _ => None,
        })
        .collect()
}

impl App {
    /// Issues a read-only consumer identity; its secrets are in the answer
    /// and nowhere else.
    pub fn create_consumer(&self, request: ConsumerRequest) -> Result<ConsumerView, AppError> {
        let pki = self.identity.pki().ok_or(AppError::TlsDisabled)?;
        // The agent id rules: the name is then safe in a topic, a file and
        // a certificate, and `consumer+` keeps it from ever being an agent's.
        AgentId::new(request.name.as_str())
            .map_err(|e| AppError::invalid("name", e.to_string()))?;
        let mut regions: Vec<RegionId> = Vec::new();
        for r in &request.regions {
            let region = RegionId::new(r.as_str())
                .map_err(|e| AppError::invalid("regions", e.to_string()))?;
            if !regions.contains(&region) {
                regions.push(region);
            }
        }
        if regions.len() > MAX_CONSUMER_REGIONS {
            return Err(AppError::invalid(
                "regions",
                format!("at most {MAX_CONSUMER_REGIONS} regions"),
            ));
        }
        if request.csr_pem.is_some() && request.credential == CredentialKind::Password {
            return Err(AppError::invalid(
                "csr_pem",
                "a certificate request goes with \"credential\": \"certificate\"",
            ));
        }
        let now = self.now();
        let _guard = self.identity.serialise();
        let existing = self
            .store
            .consumers()?
            .into_iter()
            .find(|c| c.name == request.name);
        if existing.as_ref().is_some_and(|c| c.credential.is_some()) {
            return Err(AppError::Conflict {
                code: "consumer_exists",
                message: format!(
                    "consumer {:?} exists; delete it first to issue a new credential",
                    request.name
                ),
            });
        }
        let mut record = ConsumerRecord {
            name: request.name.clone(),
            regions,
            credential: None,
            created_at: now,
            revoked_serials: existing.map(|c| c.revoked_serials).unwrap_or_default(),
        };
        let mut shown = view(&ConsumerRecord {
            credential: Some(ConsumerCredential::Password {
                hash: String::new(),
            }),
            ..record.clone()
        })
        .ok_or(AppError::Random)?;
        match request.credential {
            CredentialKind::Certificate => {
                let names: Vec<String> = record
                    .regions
                    .iter()
                    .map(|r| r.as_str().to_owned())
                    .collect();
                let (issued, key_pem) =
                    pki.ca
                        .issue_consumer(&record.name, &names, request.csr_pem.as_deref(), now)?;
                record.credential = Some(ConsumerCredential::Certificate(IssuedCert {
                    serial: issued.serial.clone(),
                    not_after: issued.not_after,
                }));
                shown.credential = CredentialKind::Certificate;
                shown.serial = Some(issued.serial);
                shown.not_after = Some(issued.not_after);
                shown.certificate_pem = Some(issued.pem);
                shown.key_pem = key_pem;
                shown.ca_pem = Some(pki.ca.ca_pem().to_owned());
            }
            CredentialKind::Password => {
                let password = random_hex(24)?;
                record.credential = Some(ConsumerCredential::Password {
                    hash: mosquitto_hash(&password)?,
                });
                shown.password = Some(password);
            }
        }
        self.store.put_consumer(&record)?;
        // A name deleted before is let in again; its old serials stay refused.
        pki.revocations.reinstate(&user(&record.name));
        self.write_broker_access(pki)?;
        info!(consumer = %record.name, regions = ?shown.regions, credential = ?shown.credential,
            "Issued a read-only consumer identity.");
        Ok(shown)
    }

    /// Every live consumer, without secrets.
    pub fn consumers(&self) -> Result<Vec<ConsumerView>, AppError> {
        Ok(self.store.consumers()?.iter().filter_map(view).collect())
    }

    /// Deletes a consumer: its certificate is revoked (its connections to
    /// the embedded broker are closed at once, and the CRL lists it), its
    /// password removed from the broker's password file.
    pub fn delete_consumer(&self, name: &str) -> Result<(), AppError> {
        let pki = self.identity.pki().ok_or(AppError::TlsDisabled)?;
        let now = self.now();
        let _guard = self.identity.serialise();
        let mut record = self
            .store
            .consumers()?
            .into_iter()
            .find(|c| c.name == name && c.credential.is_some())
            .ok_or_else(|| AppError::NotFound {
                what: "consumer",
                name: name.to_owned(),
            })?;
        let credential = record.credential.take();
        if let Some(ConsumerCredential::Certificate(cert)) = &credential {
            record.revoked_serials.push(cert.clone());
        }
        record
            .revoked_serials
            .retain(|c| now.saturating_since(c.not_after) < FORGET_AFTER);
        self.store.put_consumer(&record)?;
        let serials: Vec<String> = match &credential {
            Some(ConsumerCredential::Certificate(cert)) => vec![cert.serial.clone()],
            _ => Vec::new(),
        };
        pki.revocations.revoke(&user(name), serials);
        let revoked = self.all_revoked_serials(now)?;
        pki.ca.write_crl(&revoked, now)?;
        self.write_broker_access(pki)?;
        warn!(consumer = %name, "Deleted a read-only consumer: its credential no longer works.");
        Ok(())
    }

    /// Every revoked serial not yet expired, of nodes and consumers: what
    /// the CRL lists.
    pub(super) fn all_revoked_serials(
        &self,
        now: Timestamp,
    ) -> Result<Vec<RevokedSerial>, AppError> {
        let mut revoked: Vec<RevokedSerial> = self
            .store
            .identities()?
            .iter()
            .flat_map(|i| {
                i.revoked_serials.iter().map(|c| RevokedSerial {
                    serial: c.serial.clone(),
                    revoked_at: i.revoked_at.unwrap_or(now),
                })
            })
            .collect();
        revoked.extend(self.consumer_revoked_serials(now)?);
        Ok(revoked)
    }

    /// The consumers' revoked serials, also put into the live revocation
    /// set (at start).
    pub(super) fn consumer_revoked_serials(
        &self,
        now: Timestamp,
    ) -> Result<Vec<RevokedSerial>, AppError> {
        Ok(self
            .store
            .consumers()?
            .iter()
            .flat_map(|c| {
                c.revoked_serials.iter().map(|s| RevokedSerial {
                    serial: s.serial.clone(),
                    revoked_at: now,
                })
            })
            .collect())
    }

    /// Writes `<data_dir>/ca/mosquitto.acl` and `mosquitto.passwd` for an
    /// external Mosquitto (docs/operators/install.md).
    pub(super) fn write_broker_access(&self, pki: &Pki) -> Result<(), AppError> {
        let consumers = self.store.consumers()?;
        let prefix = self.settings.topics.prefix();
        let dir = pki.ca.dir();
        crate::ca::write_private(
            &dir.join("mosquitto.acl"),
            access_list(prefix, &consumers).as_bytes(),
            0o644,
        )?;
        crate::ca::write_private(
            &dir.join("mosquitto.passwd"),
            password_file(&consumers).as_bytes(),
            0o600,
        )?;
        Ok(())
    }

    /// Counts a consumer connection the broker terminator closed.
    pub fn count_consumer_refusal(&self, reason: &'static str) {
        self.metrics
            .consumer_refusals
            .get_or_create(&Reason { reason })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Ca;
    use crate::testing::fixture;
    use crate::tls::Revocations;
    use std::sync::Arc;
    use std::time::Duration;

    fn pki(dir: &std::path::Path) -> Pki {
        Pki {
            ca: Ca::load_or_create(&dir.join("ca")).expect("ca"),
            revocations: Arc::new(Revocations::default()),
            client_cert_ttl: Duration::from_secs(60),
            renew_grace: Duration::from_secs(3600),
            broker_url: "mqtts://127.0.0.1:1".into(),
            trust_bundle: dir.join("trust/bundle.json"),
        }
    }

    fn request(name: &str, regions: &[&str], credential: CredentialKind) -> ConsumerRequest {
        ConsumerRequest {
            name: name.into(),
            regions: regions.iter().map(|r| (*r).to_owned()).collect(),
            credential,
            csr_pem: None,
        }
    }

    #[test]
    fn the_hash_is_mosquittos_pbkdf2_format() {
        // PBKDF2-HMAC-SHA512("secret", 12 zero bytes, 101 rounds, 64 bytes).
        let hash = hash_with_salt("secret", &[0u8; 12]);
        let parts: Vec<&str> = hash.split('$').collect();
        assert_eq!(parts[..3], ["", "7", "101"]);
        assert_eq!(parts[3], "AAAAAAAAAAAAAAAA");
        let digest = base64::engine::general_purpose::STANDARD
            .decode(parts[4])
            .expect("base64");
        assert_eq!(digest.len(), 64);
        assert_ne!(hash, hash_with_salt("secret", &[1u8; 12]));
    }

    #[test]
    fn consumers_are_issued_once_listed_without_secrets_and_revoked() {
        let f = fixture();
        let dir = tempfile::tempdir().expect("tempdir");
        f.app.set_pki(pki(dir.path()));
        let made = f
            .app
            .create_consumer(request(
                "grafana",
                &["eu-west"],
                CredentialKind::Certificate,
            ))
            .expect("create");
        assert_eq!(made.user, "consumer+grafana");
        let key = made.key_pem.clone().expect("the key, once");
        let cert = made.certificate_pem.clone().expect("the certificate, once");
        assert!(made.ca_pem.is_some());
        let pw = f
            .app
            .create_consumer(request("script", &[], CredentialKind::Password))
            .expect("create");
        let password = pw.password.clone().expect("the password, once");
        // Listed without secrets; the store keeps only the hash.
        let listed = serde_json::to_string(&f.app.consumers().expect("list")).expect("json");
        assert!(!listed.contains(&key) && !listed.contains(&cert) && !listed.contains(&password));
        assert!(listed.contains("consumer+grafana") && listed.contains("consumer+script"));
        let stored = serde_json::to_string(&f.app.store.consumers().expect("store")).expect("json");
        assert!(!stored.contains(&password) && !stored.contains(&key));
        // The same name again is a conflict; a bad name or region is named.
        assert!(matches!(
            f.app
                .create_consumer(request("grafana", &[], CredentialKind::Certificate)),
            Err(AppError::Conflict {
                code: "consumer_exists",
                ..
            })
        ));
        for bad in [
            request("a/b", &[], CredentialKind::Certificate),
            request("x", &["EU WEST"], CredentialKind::Certificate),
        ] {
            assert!(matches!(
                f.app.create_consumer(bad),
                Err(AppError::InvalidField { .. })
            ));
        }
        // The broker files: one user block each, the password hashed.
        let acl = std::fs::read_to_string(dir.path().join("ca/mosquitto.acl")).expect("acl");
        assert!(acl.starts_with(ACL_TEMPLATE));
        assert!(acl.contains("user consumer+grafana\ntopic read verge/v1/telemetry/eu-west/+\n"));
        assert!(!acl.contains("verge/v1/agents/+/presence\nuser consumer+script"));
        let passwd =
            std::fs::read_to_string(dir.path().join("ca/mosquitto.passwd")).expect("passwd");
        assert!(passwd.starts_with("consumer+script:$7$101$"), "{passwd}");
        assert!(!passwd.contains("grafana"));

        // Deleting revokes the certificate now and in the CRL.
        f.app.delete_consumer("grafana").expect("delete");
        let p = f.app.identity.pki().expect("pki");
        let peer = crate::ca::PeerIdentity {
            common_name: "consumer+grafana".into(),
            serial: made.serial.clone().expect("serial"),
            not_after: made.not_after.expect("expiry"),
        };
        assert!(p.revocations.is_revoked(&peer));
        assert_eq!(
            f.app
                .consumer_revoked_serials(Timestamp::now())
                .expect("serials")
                .len(),
            1
        );
        let acl = std::fs::read_to_string(dir.path().join("ca/mosquitto.acl")).expect("acl");
        assert!(!acl.contains("consumer+grafana"));
        assert!(matches!(
            f.app.delete_consumer("grafana"),
            Err(AppError::NotFound { .. })
        ));
        // Issued again: the new certificate works, the old one stays refused.
        let again = f
            .app
            .create_consumer(request("grafana", &[], CredentialKind::Certificate))
            .expect("again");
        assert!(p.revocations.is_revoked(&peer));
        assert!(!p.revocations.is_revoked(&crate::ca::PeerIdentity {
            common_name: "consumer+grafana".into(),
            serial: again.serial.clone().expect("serial"),
            not_after: again.not_after.expect("expiry"),
        }));
        f.app.delete_consumer("script").expect("delete");
        let passwd =
            std::fs::read_to_string(dir.path().join("ca/mosquitto.passwd")).expect("passwd");
        assert!(passwd.is_empty());
    }

    #[test]
    fn without_tls_there_are_no_consumers() {
        let f = fixture();
        assert!(matches!(
            f.app
                .create_consumer(request("x", &[], CredentialKind::Password)),
            Err(AppError::TlsDisabled)
        ));
    }
}
