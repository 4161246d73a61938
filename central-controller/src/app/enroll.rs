//! Node identity: bootstrap tokens, enrollment with a CSR, signed online
//! certificate renewal, and revocation.
//!
//! Tokens are stored only as SHA-256 digests; a token's text is
//! `<id>.<secret>` so it can be found by id and checked by digest. Token
//! uses, identities and key pins change under one lock, each write flushed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use verge_shared::enroll::{
    self, EnrollRequest, EnrollResponse, RENEWAL_PAYLOAD_TYPE, RenewalRefusal, RenewalRequest,
    RenewalResponse,
};
use verge_shared::{AgentId, Envelope, RegionId, Sha256Digest, Timestamp};

use super::composition::App;
use super::error::{AppError, random_hex};
use super::fleet_events::FleetNote;
use super::identity::Pki;
use super::types::Outgoing;
use super::views::NodeView;
use crate::ca::{CaError, RevokedSerial};
use crate::store::{Durability, IdentityRecord, IssuedCert, NodeRecord, TokenRecord};
use verge_shared::fleet::FleetEventKind;

/// The certificate name the shipped Mosquitto ACL gives read-only rights to
/// telemetry, presence and events; never an agent id.
const RESERVED_CONSUMER: &str = "consumer";

/// Default lifetime of a bootstrap token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(86_400);
/// Longest lifetime of a bootstrap token.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 86_400);
/// Most uses one token may have.
pub const MAX_TOKEN_USES: u32 = 10_000;
/// Expired certificates are forgotten this long after their expiry.
const FORGET_AFTER: Duration = Duration::from_secs(86_400);

/// `POST /api/v1/tokens` body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct TokenRequest {
    pub region: String,
    #[serde(default)]
    pub uses: Option<i64>,
    #[serde(default)]
    pub ttl_secs: Option<i64>,
}

/// A token as the API shows it: never its text, except once at creation.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TokenView {
    pub id: String,
    /// Only in the answer to the creation request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub region: RegionId,
    pub uses_left: u32,
    pub expires_at: Timestamp,
    pub created_at: Timestamp,
    pub revoked: bool,
    /// `active`, `spent`, `expired` or `revoked`.
    pub state: &'static str,
}

fn token_state(record: &TokenRecord, now: Timestamp) -> Result<(), (&'static str, String)> {
    if record.revoked {
        Err(("token_revoked", "the token was revoked".to_owned()))
    } else if now >= record.expires_at {
        Err((
            "token_expired",
            format!("the token expired at {}", record.expires_at),
        ))
    } else if record.uses_left == 0 {
        Err(("token_spent", "the token has no uses left".to_owned()))
    } else {
        Ok(())
    }
}

fn view(record: &TokenRecord, token: Option<String>, now: Timestamp) -> TokenView {
    let state = match token_state(record, now) {
        Ok(()) => "active",
        Err(("token_revoked", _)) => "revoked",
        Err(("token_expired", _)) => "expired",
        Err(_) => "spent",
    };
    TokenView {
        id: record.id.clone(),
        token,
        region: record.region.clone(),
        uses_left: record.uses_left,
        expires_at: record.expires_at,
        created_at: record.created_at,
        revoked: record.revoked,
        state,
    }
}

impl From<CaError> for AppError {
    fn from(e: CaError) -> Self {
        match e {
            CaError::Csr(detail) => AppError::invalid("csr_pem", detail),
            other => AppError::Ca(other),
        }
    }
}

/// Keeps the certificates that are not long expired.
fn prune(certificates: &mut Vec<IssuedCert>, now: Timestamp) {
    certificates.retain(|c| now.saturating_since(c.not_after) < FORGET_AFTER);
}

impl App {
    /// Hands the app its CA (TLS enabled); without one, the identity
    /// endpoints answer that TLS is off.
    pub fn set_pki(&self, pki: Pki) {
        if !self.identity.set_pki(pki) {
            warn!("The CA was set twice; keeping the first.");
        }
    }

    fn pki(&self) -> Result<&Pki, AppError> {
        self.identity.pki().ok_or(AppError::TlsDisabled)
    }

    /// Creates a bootstrap token; its text is in the answer and nowhere else.
    pub fn create_token(&self, request: TokenRequest) -> Result<TokenView, AppError> {
        let region = RegionId::new(request.region.as_str())
            .map_err(|e| AppError::invalid("region", e.to_string()))?;
        let uses = request.uses.unwrap_or(1);
        let uses = u32::try_from(uses)
            .ok()
            .filter(|u| (1..=MAX_TOKEN_USES).contains(u))
            .ok_or_else(|| {
                AppError::invalid("uses", format!("must be between 1 and {MAX_TOKEN_USES}"))
            })?;
        let ttl = match request.ttl_secs {
            None => DEFAULT_TOKEN_TTL,
            Some(secs) => u64::try_from(secs)
                .ok()
                .map(Duration::from_secs)
                .filter(|d| !d.is_zero() && *d <= MAX_TOKEN_TTL)
                .ok_or_else(|| {
                    AppError::invalid(
                        "ttl_secs",
                        format!("must be between 1 and {}", MAX_TOKEN_TTL.as_secs()),
                    )
                })?,
        };
        let now = self.now();
        let id = random_hex(8)?;
        let token = format!("{id}.{}", random_hex(32)?);
        let record = TokenRecord {
            id: id.clone(),
            sha256: Sha256Digest::of(token.as_bytes()),
            region,
            uses_left: uses,
            expires_at: now.saturating_add(ttl),
            created_at: now,
            revoked: false,
        };
        let _guard = self.identity.serialise();
        self.store.put_token(&record)?;
        info!(token = %id, region = %record.region, uses, ttl_secs = ttl.as_secs(), "Created a bootstrap token.");
        self.token_changed(&view(&record, None, now), "created");
        Ok(view(&record, Some(token), now))
    }

    pub fn tokens(&self) -> Result<Vec<TokenView>, AppError> {
        let now = self.now();
        Ok(self
            .store
            .tokens()?
            .iter()
            .map(|t| view(t, None, now))
            .collect())
    }

    /// Revokes a token: it enrolls nobody from now on.
    pub fn revoke_token(&self, id: &str) -> Result<(), AppError> {
        let _guard = self.identity.serialise();
        let mut record = self.store.token(id)?.ok_or_else(|| AppError::NotFound {
            what: "token",
            name: id.to_owned(),
        })?;
        record.revoked = true;
        self.store.put_token(&record)?;
        info!(token = %id, "Revoked a bootstrap token.");
        self.token_changed(&view(&record, None, self.now()), "revoked");
        Ok(())
    }

    /// Takes one use of `token`, or says why it cannot be used.
    fn spend_token(&self, token: &str, now: Timestamp) -> Result<TokenRecord, AppError> {
        let unknown =
            || AppError::unauthorized("token_unknown", "the token is not known to this controller");
        let id = token
            .split_once('.')
            .map(|(id, _)| id)
            .ok_or_else(unknown)?;
        let record = self.store.token(id)?.ok_or_else(unknown)?;
        if record.sha256 != Sha256Digest::of(token.as_bytes()) {
            return Err(unknown());
        }
        token_state(&record, now).map_err(|(code, message)| AppError::denied(code, message))?;
        Ok(record)
    }

    /// Enrolls a node: checks and spends the token, issues its client
    /// certificate and pins its node key.
    pub async fn enroll(&self, request: EnrollRequest) -> Result<EnrollResponse, AppError> {
        let pki = self.pki()?;
        let now = self.now();
        let agent = request.agent_id.clone();
        // The shipped Mosquitto ACL (configs/mosquitto/verge.acl) gives the
        // `controller` and `consumer` certificate names their own rights.
        if agent.as_str() == verge_shared::latency::CONTROLLER_TARGET
            || agent.as_str() == crate::ca::CONTROLLER_CN
            || agent.as_str() == RESERVED_CONSUMER
        {
            return Err(AppError::invalid(
                "agent_id",
                format!("{agent:?} is reserved for the controller and broker roles"),
            ));
        }
        let (issued, region, reenrolled) = {
            let _guard = self.identity.serialise();
            let mut token = self.spend_token(&request.token, now)?;
            let existing = self.store.identity(&agent)?;
            let pinned = self.nodes.records().get(&agent).map(|n| n.public_key);
            let revoked = existing.as_ref().is_some_and(|i| i.revoked_at.is_some());
            let key = existing.as_ref().map(|i| i.public_key).or(pinned);
            if !revoked && key.is_some_and(|k| k != request.node_public_key) {
                return Err(AppError::denied(
                    "agent_enrolled",
                    format!(
                        "agent {agent} is already enrolled with another node key; revoke it first to enroll a replacement"
                    ),
                ));
            }
            let issued = pki
                .ca
                .issue_client(&request.csr_pem, &agent, pki.client_cert_ttl, now)?;
            token.uses_left -= 1;
            self.store.put_token(&token)?;
            self.token_changed(&view(&token, None, now), "used");
            let mut identity = existing.unwrap_or_else(|| IdentityRecord {
                agent: agent.clone(),
                public_key: request.node_public_key,
                region: token.region.clone(),
                enrolled_at: now,
                certificates: Vec::new(),
                revoked_at: None,
                revoked_serials: Vec::new(),
            });
            identity.public_key = request.node_public_key;
            identity.region = token.region.clone();
            identity.enrolled_at = now;
            identity.revoked_at = None;
            prune(&mut identity.certificates, now);
            prune(&mut identity.revoked_serials, now);
            identity.certificates.push(IssuedCert {
                serial: issued.serial.clone(),
                not_after: issued.not_after,
            });
            self.store.put_identity(&identity)?;
            pki.revocations.reinstate(agent.as_str());
            let new_node = self.pin_enrolled(&agent, &identity)?;
            // A node enrolled again numbers its telemetry from 1 again.
            self.telemetry.forget(&agent);
            self.node_changed(&agent, if new_node { "registered" } else { "enrolled" });
            self.fleet_event(FleetNote {
                region: Some(token.region.clone()),
                node: Some(agent.clone()),
                ..FleetNote::new(
                    FleetEventKind::NodeEnrolled,
                    format!("enrolled with bootstrap token {}", token.id),
                )
            });
            info!(agent = %agent, token = %token.id, region = %token.region, serial = %issued.serial,
                key_id = %request.node_public_key.key_id(), uses_left = token.uses_left,
                "Enrolled a node.");
            (issued, token.region, revoked)
        };
        if reenrolled {
            self.reconcile(now, true).await?;
        }
        let bundle_error =
            |source: Box<dyn std::error::Error + Send + Sync>| AppError::BundleFile {
                path: pki.trust_bundle.clone(),
                source,
            };
        let trust_bundle = match std::fs::read(&pki.trust_bundle) {
            Ok(bytes) => {
                Some(serde_json::from_slice(&bytes).map_err(|e| bundle_error(Box::new(e)))?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(bundle_error(Box::new(e))),
        };
        Ok(EnrollResponse {
            certificate_pem: issued.pem,
            ca_pem: pki.ca.ca_pem().to_owned(),
            broker_url: pki.broker_url.clone(),
            region,
            trust_bundle,
        })
    }

    /// Pins the enrolled key in the node registry (the node appears, not
    /// yet seen, until its first presence). True when the node is new.
    fn pin_enrolled(&self, agent: &AgentId, identity: &IdentityRecord) -> Result<bool, AppError> {
        let (record, new_node) = {
            let mut nodes = self.nodes.records();
            let new_node = !nodes.contains_key(agent);
            let node = nodes.entry(agent.clone()).or_insert_with(|| NodeRecord {
                id: agent.clone(),
                region: identity.region.clone(),
                labels: BTreeMap::new(),
                capacity: Default::default(),
                public_key: identity.public_key,
                version: String::new(),
                online: false,
                offline_since: Some(Timestamp::from_unix_millis(0)),
                last_seen: None,
                applied_generation: None,
                last_status: None,
                cordon: None,
                probe_addr: None,
                limits: None,
                revoked: false,
            });
            node.public_key = identity.public_key;
            node.region = identity.region.clone();
            node.revoked = false;
            (node.clone(), new_node)
        };
        self.store.put_node(&record, Durability::Flush)?;
        Ok(new_node)
    }

    /// Renews a node's certificate from a DSSE envelope signed by its pinned
    /// node key.
    pub fn renew_certificate(&self, id: &str, body: &[u8]) -> Result<RenewalResponse, AppError> {
        let pki = self.pki()?;
        let now = self.now();
        let agent = AgentId::new(id).map_err(|e| AppError::invalid("id", e.to_string()))?;
        let _guard = self.identity.serialise();
        let mut identity = self
            .store
            .identity(&agent)?
            .ok_or_else(|| AppError::NotFound {
                what: "enrolled node",
                name: id.to_owned(),
            })?;
        let envelope = Envelope::parse(body, enroll::MAX_RENEWAL_BYTES)
            .map_err(|e| AppError::invalid("body", e.to_string()))?;
        let request: RenewalRequest = envelope
            .open(RENEWAL_PAYLOAD_TYPE, &identity.public_key)
            .map_err(|e| {
                AppError::unauthorized("bad_signature", format!("the renewal request: {e}"))
            })?;
        let current = identity
            .certificates
            .iter()
            .map(|c| c.not_after)
            .max()
            .unwrap_or(identity.enrolled_at);
        enroll::check_renewal(
            &request,
            &agent,
            identity.revoked_at.is_some(),
            current,
            pki.renew_grace,
            now,
        )
        .map_err(|refusal| {
            let code = match refusal {
                RenewalRefusal::Revoked => "node_revoked",
                RenewalRefusal::PastGrace { .. } => "renewal_grace_passed",
                RenewalRefusal::Clock { .. } => "stale_request",
                RenewalRefusal::WrongAgent { .. } | RenewalRefusal::Schema(_) => "invalid_request",
            };
            warn!(agent = %agent, reason = %refusal, "Refused a certificate renewal.");
            AppError::denied(code, refusal.to_string())
        })?;
        let issued = pki
            .ca
            .issue_client(&request.csr_pem, &agent, pki.client_cert_ttl, now)?;
        prune(&mut identity.certificates, now);
        identity.certificates.push(IssuedCert {
            serial: issued.serial.clone(),
            not_after: issued.not_after,
        });
        self.store.put_identity(&identity)?;
        info!(agent = %agent, serial = %issued.serial, not_after = %issued.not_after, "Renewed a node's certificate.");
        Ok(RenewalResponse {
            certificate_pem: issued.pem,
            ca_pem: pki.ca.ca_pem().to_owned(),
        })
    }

    /// Revokes a node: its certificates stop working at the broker and the
    /// API (live connections are closed), the CRL is rewritten, nothing is
    /// placed on it, and its retained desired state is cleared.
    pub async fn revoke_node(&self, id: &str) -> Result<NodeView, AppError> {
        let now = self.now();
        let not_found = || AppError::NotFound {
            what: "node",
            name: id.to_owned(),
        };
        let agent = AgentId::new(id).map_err(|_| not_found())?;
        {
            let _guard = self.identity.serialise();
            let record = {
                let mut nodes = self.nodes.records();
                let node = nodes.get_mut(&agent).ok_or_else(not_found)?;
                node.revoked = true;
                // Its connections are closed below and its messages (the
                // Last Will included) ignored from now on.
                if node.online {
                    node.online = false;
                    node.offline_since = Some(now);
                }
                node.clone()
            };
            self.store.put_node(&record, Durability::Flush)?;
            self.telemetry.forget(&agent);
            if let Some(mut identity) = self.store.identity(&agent)? {
                identity.revoked_at = Some(now);
                prune(&mut identity.certificates, now);
                let serials = std::mem::take(&mut identity.certificates);
                identity.revoked_serials.extend(serials);
                prune(&mut identity.revoked_serials, now);
                self.store.put_identity(&identity)?;
            }
            if let Ok(pki) = self.pki() {
                self.publish_revocations(pki, &agent, now)?;
            }
        }
        warn!(agent = %agent, "Revoked a node: its certificates are refused and its desired state is withdrawn.");
        // Placement drops the node (like a drained one) and issues it an
        // empty desired state; then the retained topic is cleared.
        self.reconcile(now, true).await?;
        let clear = Outgoing {
            topic: self.settings.topics.desired(&agent),
            payload: Vec::new(),
            retain: true,
        };
        if !self.send("desired_clear", clear) {
            warn!(agent = %agent, "The MQTT client is gone; the retained desired state was not cleared.");
        }
        self.node_changed(&agent, "revoked");
        // A revoked node reports nothing more: none of its alarms can clear.
        self.clear_node_alarms(&agent);
        self.node(id)
    }

    /// Updates the live revocation set and rewrites the CRL.
    fn publish_revocations(
        &self,
        pki: &Pki,
        agent: &AgentId,
        now: Timestamp,
    ) -> Result<(), AppError> {
        let identities = self.store.identities()?;
        let revoked = self.all_revoked_serials(now)?;
        let agent_serials = identities
            .iter()
            .filter(|i| &i.agent == agent)
            .flat_map(|i| i.revoked_serials.iter().map(|c| c.serial.clone()))
            .collect::<Vec<_>>();
        pki.revocations.revoke(agent.as_str(), agent_serials);
        pki.ca.write_crl(&revoked, now)?;
        Ok(())
    }

    /// Rewrites the CRL (signed now) so that a broker reading it never holds
    /// an expired one; nothing to do without the CA.
    pub fn refresh_crl(&self) -> Result<(), AppError> {
        if self.identity.pki().is_none() {
            return Ok(());
        }
        let _guard = self.identity.serialise();
        self.load_revocations()
    }

    /// Loads the revocation set from the store (at start) and writes the CRL.
    pub fn load_revocations(&self) -> Result<(), AppError> {
        let pki = self.pki()?;
        let now = self.now();
        let mut revoked = Vec::new();
        for identity in self.store.identities()? {
            let serials: Vec<String> = identity
                .revoked_serials
                .iter()
                .map(|c| c.serial.clone())
                .collect();
            revoked.extend(serials.iter().map(|serial| RevokedSerial {
                serial: serial.clone(),
                revoked_at: identity.revoked_at.unwrap_or(now),
            }));
            if identity.revoked_at.is_some() {
                pki.revocations.revoke(identity.agent.as_str(), serials);
            } else {
                pki.revocations.revoke_serials(serials);
            }
        }
        // Nodes revoked without ever enrolling (pinned at first contact).
        for node in self.nodes.records().values().filter(|n| n.revoked) {
            pki.revocations.revoke(node.id.as_str(), Vec::new());
        }
        let consumers = self.consumer_revoked_serials(now)?;
        pki.revocations
            .revoke_serials(consumers.iter().map(|r| r.serial.clone()));
        revoked.extend(consumers);
        pki.ca.write_crl(&revoked, now)?;
        self.write_broker_access(pki)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Ca;
    use crate::testing::fixture;
    use crate::tls::Revocations;
    use std::sync::Arc;
    use verge_shared::SigningKey;

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

    fn csr() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    fn request(token: &str, agent: &str, key: &SigningKey) -> EnrollRequest {
        EnrollRequest {
            token: token.to_owned(),
            agent_id: AgentId::new(agent).expect("id"),
            csr_pem: csr(),
            node_public_key: key.public_key(),
        }
    }

    fn code(result: Result<impl std::fmt::Debug, AppError>) -> &'static str {
        match result {
            Err(AppError::Denied { code, .. }) => code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn tokens_are_stored_hashed_and_spent_once_per_use_within_their_ttl() {
        let f = fixture();
        let dir = tempfile::tempdir().expect("tempdir");
        f.app.set_pki(pki(dir.path()));
        let created = f
            .app
            .create_token(TokenRequest {
                region: "r".into(),
                uses: Some(2),
                ttl_secs: None,
            })
            .expect("token");
        let text = created.token.clone().expect("shown once");
        // Only the digest is stored; listing never shows the text.
        let stored = f
            .app
            .store
            .token(&created.id)
            .expect("get")
            .expect("stored");
        assert_eq!(stored.sha256, Sha256Digest::of(text.as_bytes()));
        let secret = text.split_once('.').map(|(_, s)| s).expect("format");
        assert!(
            !serde_json::to_string(&stored)
                .expect("json")
                .contains(secret)
        );
        let listed = serde_json::to_string(&f.app.tokens().expect("list")).expect("json");
        assert!(!listed.contains(secret), "{listed}");
        assert!(created.expires_at > Timestamp::now().saturating_add(Duration::from_secs(86_000)));

        // Two uses, then spent; the region comes from the token.
        let (a, b, c) = (
            SigningKey::generate().expect("key").0,
            SigningKey::generate().expect("key").0,
            SigningKey::generate().expect("key").0,
        );
        let enrolled = f
            .app
            .enroll(request(&text, "edge-a", &a))
            .await
            .expect("first use");
        assert_eq!(enrolled.region.as_str(), "r");
        assert_eq!(enrolled.trust_bundle, None);
        f.app
            .enroll(request(&text, "edge-b", &b))
            .await
            .expect("second use");
        assert_eq!(
            code(f.app.enroll(request(&text, "edge-c", &c)).await),
            "token_spent"
        );
        // The pinned key is the enrolled one; another key cannot take the id.
        assert_eq!(
            f.app
                .nodes
                .records()
                .get(&AgentId::new("edge-a").expect("id"))
                .map(|n| n.public_key),
            Some(a.public_key())
        );

        let more = f
            .app
            .create_token(TokenRequest {
                region: "r".into(),
                uses: Some(5),
                ttl_secs: Some(60),
            })
            .expect("token");
        let more_text = more.token.clone().expect("text");
        assert_eq!(
            code(f.app.enroll(request(&more_text, "edge-a", &c)).await),
            "agent_enrolled"
        );
        // A wrong secret with a known id is as unknown as a made-up token.
        let forged = format!("{}.{}", more.id, "0".repeat(64));
        assert_eq!(
            code(f.app.enroll(request(&forged, "edge-c", &c)).await),
            "token_unknown"
        );
        // Expired.
        let mut record = f.app.store.token(&more.id).expect("get").expect("stored");
        record.expires_at = Timestamp::from_unix_millis(1);
        f.app.store.put_token(&record).expect("put");
        assert_eq!(
            code(f.app.enroll(request(&more_text, "edge-c", &c)).await),
            "token_expired"
        );
        // Revoked.
        f.app.revoke_token(&created.id).expect("revoke");
        assert_eq!(
            code(f.app.enroll(request(&text, "edge-c", &c)).await),
            "token_revoked"
        );
        // Bounds on creation.
        for (uses, ttl_secs) in [(Some(0), None), (None, Some(0)), (Some(1_000_000), None)] {
            let refused = f.app.create_token(TokenRequest {
                region: "r".into(),
                uses,
                ttl_secs,
            });
            assert!(
                matches!(refused, Err(AppError::InvalidField { .. })),
                "{refused:?}"
            );
        }
    }

    #[tokio::test]
    async fn renewal_needs_the_pinned_key_and_stops_at_revocation() {
        let f = fixture();
        let dir = tempfile::tempdir().expect("tempdir");
        f.app.set_pki(pki(dir.path()));
        let token = f
            .app
            .create_token(TokenRequest {
                region: "r".into(),
                uses: None,
                ttl_secs: None,
            })
            .expect("token")
            .token
            .expect("text");
        let key = SigningKey::generate().expect("key").0;
        f.app
            .enroll(request(&token, "edge-a", &key))
            .await
            .expect("enroll");
        let renewal = |signer: &SigningKey| {
            signer.sign_json(
                RENEWAL_PAYLOAD_TYPE,
                &RenewalRequest {
                    schema_version: enroll::RENEWAL_SCHEMA_VERSION,
                    agent: AgentId::new("edge-a").expect("id"),
                    csr_pem: csr(),
                    at: Timestamp::now(),
                },
            )
        };
        f.app
            .renew_certificate("edge-a", &renewal(&key))
            .expect("renewed");
        let stranger = SigningKey::generate().expect("key").0;
        assert_eq!(
            code(f.app.renew_certificate("edge-a", &renewal(&stranger))),
            "bad_signature"
        );
        let identity = f
            .app
            .store
            .identity(&AgentId::new("edge-a").expect("id"))
            .expect("get")
            .expect("identity");
        assert_eq!(identity.certificates.len(), 2);

        f.app.revoke_node("edge-a").await.expect("revoke");
        assert_eq!(
            code(f.app.renew_certificate("edge-a", &renewal(&key))),
            "node_revoked"
        );
        // Both certificates are in the CRL and refused by the TLS layer.
        let crl = std::fs::read(dir.path().join("ca/crl.pem")).expect("crl");
        assert!(!crl.is_empty());
        let pki = f.app.pki().expect("pki");
        for cert in &identity.certificates {
            let peer = crate::ca::PeerIdentity {
                common_name: "someone-else".into(),
                serial: cert.serial.clone(),
                not_after: cert.not_after,
            };
            assert!(pki.revocations.is_revoked(&peer));
        }
        // Re-enrolling with a new token lets the node in again, with a new key.
        let again = f
            .app
            .create_token(TokenRequest {
                region: "r".into(),
                uses: None,
                ttl_secs: None,
            })
            .expect("token")
            .token
            .expect("text");
        let new_key = SigningKey::generate().expect("key").0;
        f.app
            .enroll(request(&again, "edge-a", &new_key))
            .await
            .expect("re-enroll after revocation");
        assert!(!f.app.is_revoked(&AgentId::new("edge-a").expect("id")));
        // ...while the old certificates stay refused.
        let old = crate::ca::PeerIdentity {
            common_name: "edge-a".into(),
            serial: identity.certificates[0].serial.clone(),
            not_after: identity.certificates[0].not_after,
        };
        assert!(pki.revocations.is_revoked(&old));
    }
}
