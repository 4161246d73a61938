//! Enrollment and certificate renewal documents: what an edge agent sends to
//! the controller's `/api/v1/enroll` and `/api/v1/nodes/{id}/certificate`
//! endpoints, and what it gets back.
//!
//! Enrollment is authenticated by a bootstrap token in the body; renewal by a
//! DSSE envelope over [`RenewalRequest`] signed with the node key the
//! controller pinned at enrollment ([`RENEWAL_PAYLOAD_TYPE`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{AgentId, PublicKey, RegionId, Timestamp};

/// The DSSE payload type of a signed [`RenewalRequest`].
pub const RENEWAL_PAYLOAD_TYPE: &str = "application/vnd.verge.renewal.v1+json";

/// The schema version of [`RenewalRequest`].
pub const RENEWAL_SCHEMA_VERSION: u32 = 1;

/// How far a renewal request's `at` may be from the controller's clock.
pub const RENEWAL_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Largest certificate signing request accepted, in PEM bytes.
pub const MAX_CSR_PEM_BYTES: usize = 8 * 1024;

/// Largest signed renewal envelope accepted.
pub const MAX_RENEWAL_BYTES: usize = 16 * 1024;

/// The body of `POST /api/v1/enroll`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollRequest {
    /// The bootstrap token an operator created.
    pub token: String,
    /// The id the agent asks for; the controller decides what goes into the
    /// certificate (this id, never one written in the CSR).
    pub agent_id: AgentId,
    /// A PKCS#10 request for the agent's TLS key (PEM).
    pub csr_pem: String,
    /// The agent's Ed25519 node key (base64), pinned at enrollment.
    pub node_public_key: PublicKey,
}

/// What `POST /api/v1/enroll` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    /// The agent's client certificate (PEM).
    pub certificate_pem: String,
    /// The controller's CA certificate (PEM): the root for the broker and the API.
    pub ca_pem: String,
    /// Where the agent connects (`mqtts://host:port`).
    pub broker_url: String,
    /// The region the token binds the node to.
    pub region: RegionId,
    /// The trust bundle, when the controller has one (opaque here).
    pub trust_bundle: Option<serde_json::Value>,
}

/// The signed payload of a renewal request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalRequest {
    pub schema_version: u32,
    pub agent: AgentId,
    /// A PKCS#10 request for the agent's (new) TLS key (PEM).
    pub csr_pem: String,
    /// When the request was made; accepted within [`RENEWAL_CLOCK_SKEW`].
    pub at: Timestamp,
}

/// What the renewal endpoint answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenewalResponse {
    pub certificate_pem: String,
    pub ca_pem: String,
}

/// Why a renewal request is refused; the decision is pure so both the
/// controller and its tests use the same rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenewalRefusal {
    #[error("the request is for agent {found}, not {expected}")]
    WrongAgent { found: AgentId, expected: AgentId },
    #[error("schema_version {0} is not supported")]
    Schema(u32),
    #[error("the request time {at} is more than {skew:?} away from the controller's clock ({now})")]
    Clock {
        at: Timestamp,
        now: Timestamp,
        skew: Duration,
    },
    #[error("the node is revoked")]
    Revoked,
    #[error(
        "the current certificate expired at {expired_at}, more than the renewal grace of {grace:?} ago: enroll again with a new token"
    )]
    PastGrace {
        expired_at: Timestamp,
        grace: Duration,
    },
}

/// The renewal rule: the request names the node, is fresh (within
/// [`RENEWAL_CLOCK_SKEW`] of `now`), the node is not revoked, and its
/// current certificate has not expired more than `grace` ago.
pub fn check_renewal(
    request: &RenewalRequest,
    node: &AgentId,
    revoked: bool,
    current_not_after: Timestamp,
    grace: Duration,
    now: Timestamp,
) -> Result<(), RenewalRefusal> {
    if &request.agent != node {
        return Err(RenewalRefusal::WrongAgent {
            found: request.agent.clone(),
            expected: node.clone(),
        });
    }
    if request.schema_version != RENEWAL_SCHEMA_VERSION {
        return Err(RenewalRefusal::Schema(request.schema_version));
    }
    let skew = request
        .at
        .saturating_since(now)
        .max(now.saturating_since(request.at));
    if skew > RENEWAL_CLOCK_SKEW {
        return Err(RenewalRefusal::Clock {
            at: request.at,
            now,
            skew: RENEWAL_CLOCK_SKEW,
        });
    }
    if revoked {
        return Err(RenewalRefusal::Revoked);
    }
    if now.saturating_since(current_not_after) > grace {
        return Err(RenewalRefusal::PastGrace {
            expired_at: current_not_after,
            grace,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(at_ms: u64) -> RenewalRequest {
        RenewalRequest {
            schema_version: RENEWAL_SCHEMA_VERSION,
            agent: AgentId::new("edge-1").expect("id"),
            csr_pem: String::new(),
            at: Timestamp::from_unix_millis(at_ms),
        }
    }

    const NOW: u64 = 1_000_000_000;
    const GRACE: Duration = Duration::from_secs(3600);

    fn check(
        request: &RenewalRequest,
        revoked: bool,
        not_after_ms: u64,
    ) -> Result<(), RenewalRefusal> {
        check_renewal(
            request,
            &AgentId::new("edge-1").expect("id"),
            revoked,
            Timestamp::from_unix_millis(not_after_ms),
            GRACE,
            Timestamp::from_unix_millis(NOW),
        )
    }

    #[test]
    fn renewal_rules() {
        // Valid certificate, fresh request.
        assert_eq!(check(&request(NOW), false, NOW + 10_000), Ok(()));
        // Expired, but within the grace.
        assert_eq!(
            check(&request(NOW - 299_000), false, NOW - 3_599_000),
            Ok(())
        );
        // Expired past the grace.
        assert!(matches!(
            check(&request(NOW), false, NOW - 3_601_000),
            Err(RenewalRefusal::PastGrace { .. })
        ));
        // Revoked.
        assert_eq!(
            check(&request(NOW), true, NOW + 10_000),
            Err(RenewalRefusal::Revoked)
        );
        // Stale and future requests.
        assert!(matches!(
            check(&request(NOW - 301_000), false, NOW),
            Err(RenewalRefusal::Clock { .. })
        ));
        assert!(matches!(
            check(&request(NOW + 301_000), false, NOW),
            Err(RenewalRefusal::Clock { .. })
        ));
        // Another agent's request.
        let mut other = request(NOW);
        other.agent = AgentId::new("edge-2").expect("id");
        assert!(matches!(
            check(&other, false, NOW),
            Err(RenewalRefusal::WrongAgent { .. })
        ));
        let mut old = request(NOW);
        old.schema_version = 9;
        assert_eq!(check(&old, false, NOW), Err(RenewalRefusal::Schema(9)));
    }
}
