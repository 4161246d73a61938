//! Desired-state intake: the pure decision whether a received envelope is
//! accepted, silently ignored (same generation again) or rejected, and why.
//!
//! The checks run in a fixed order so that the reported reason is the first
//! rule broken; nothing here touches storage or workloads.

use verge_shared::messages::{
    DesiredState, RejectReason, Rejection, SCHEMA_VERSION, bounded_message, payload_type,
};
use verge_shared::{AgentId, Envelope, Generation, PublicKey, Timestamp, limits};

/// What to do with a desired state that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A newer generation: persist it, then apply it.
    Accept(DesiredState),
    /// The generation already accepted, republished (perhaps re-signed):
    /// not an error, nothing to do.
    IgnoreSame,
}

/// Checks `bytes` as a desired state for agent `me`, signed by `key`, given
/// the last accepted generation and the current time.
pub fn check(
    bytes: &[u8],
    key: &PublicKey,
    me: &AgentId,
    last: Option<Generation>,
    now: Timestamp,
) -> Result<Decision, Rejection> {
    let reject = |reason, generation, detail: &str| Rejection {
        reason,
        generation,
        detail: bounded_message(detail),
        at: now,
    };
    let verify_failed =
        |e: verge_shared::VerifyError| reject(RejectReason::from(&e), None, &e.to_string());

    let envelope =
        Envelope::parse(bytes, limits::MAX_DESIRED_STATE_BYTES).map_err(verify_failed)?;
    let payload = envelope
        .verify(payload_type::DESIRED_STATE, key)
        .map_err(verify_failed)?;
    let doc: DesiredState = serde_json::from_slice(&payload).map_err(|e| {
        reject(
            RejectReason::Malformed,
            None,
            &format!("signed payload does not parse: {e}"),
        )
    })?;
    let generation = Some(doc.generation);
    if doc.schema_version != SCHEMA_VERSION {
        return Err(reject(
            RejectReason::UnsupportedSchema,
            generation,
            &format!(
                "schema_version {} is not supported (this agent reads {SCHEMA_VERSION})",
                doc.schema_version
            ),
        ));
    }
    doc.validate()
        .map_err(|e| reject(RejectReason::Invalid, generation, &e))?;
    if &doc.agent != me {
        return Err(reject(
            RejectReason::WrongAgent,
            generation,
            &format!("addressed to agent {}, this is {me}", doc.agent),
        ));
    }
    match last {
        Some(last) if doc.generation == last => return Ok(Decision::IgnoreSame),
        Some(last) if doc.generation < last => {
            return Err(reject(
                RejectReason::StaleGeneration,
                generation,
                &format!(
                    "generation {} is older than the accepted {last}",
                    doc.generation
                ),
            ));
        }
        _ => {}
    }
    if doc.expires_at <= now {
        return Err(reject(
            RejectReason::Expired,
            generation,
            &format!("expired at {}", doc.expires_at),
        ));
    }
    Ok(Decision::Accept(doc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_shared::SigningKey;
    use verge_shared::messages::{ArtifactRef, Resources, RunSpec, Workload};
    use verge_shared::{ServiceName, Sha256Digest};

    const NOW: u64 = 1_800_000_000_000;

    struct Fixture {
        key: SigningKey,
        me: AgentId,
    }

    fn fixture() -> Fixture {
        Fixture {
            key: SigningKey::generate().expect("key").0,
            me: AgentId::new("edge-1").expect("valid"),
        }
    }

    fn doc(generation: u64) -> DesiredState {
        DesiredState {
            schema_version: SCHEMA_VERSION,
            agent: AgentId::new("edge-1").expect("valid"),
            generation: Generation::new(generation),
            issued_at: Timestamp::from_unix_millis(NOW - 1000),
            expires_at: Timestamp::from_unix_millis(NOW + 60_000),
            workloads: vec![Workload {
                service: ServiceName::new("web").expect("valid"),
                replica: 0,
                artifact: ArtifactRef {
                    sha256: Sha256Digest::of(b"x"),
                    size: 1,
                },
                run: RunSpec::default(),
                resources: Resources::default(),
            }],
        }
    }

    impl Fixture {
        fn sign(&self, d: &DesiredState) -> Vec<u8> {
            self.key.sign_json(payload_type::DESIRED_STATE, d)
        }

        fn check(&self, bytes: &[u8], last: Option<u64>) -> Result<Decision, Rejection> {
            check(
                bytes,
                &self.key.public_key(),
                &self.me,
                last.map(Generation::new),
                Timestamp::from_unix_millis(NOW),
            )
        }

        fn reason(&self, bytes: &[u8], last: Option<u64>) -> RejectReason {
            self.check(bytes, last)
                .expect_err("must be rejected")
                .reason
        }
    }

    #[test]
    fn accepts_a_good_document() {
        let f = fixture();
        let d = doc(3);
        assert_eq!(
            f.check(&f.sign(&d), Some(2)),
            Ok(Decision::Accept(d.clone()))
        );
        assert_eq!(f.check(&f.sign(&d), None), Ok(Decision::Accept(d)));
    }

    #[test]
    fn same_generation_is_ignored_even_if_resigned_or_expired() {
        let f = fixture();
        let mut d = doc(3);
        assert_eq!(f.check(&f.sign(&d), Some(3)), Ok(Decision::IgnoreSame));
        d.expires_at = Timestamp::from_unix_millis(NOW - 1);
        d.issued_at = Timestamp::from_unix_millis(NOW - 2);
        assert_eq!(f.check(&f.sign(&d), Some(3)), Ok(Decision::IgnoreSame));
    }

    #[test]
    fn too_large() {
        let f = fixture();
        let big = vec![b' '; limits::MAX_DESIRED_STATE_BYTES + 1];
        assert_eq!(f.reason(&big, None), RejectReason::TooLarge);
    }

    #[test]
    fn malformed_envelope_and_payload() {
        let f = fixture();
        assert_eq!(f.reason(b"{nope", None), RejectReason::Malformed);
        let env = f
            .key
            .sign(payload_type::DESIRED_STATE, b"{\"not\":\"a doc\"}");
        let bytes = serde_json::to_vec(&env).expect("json");
        assert_eq!(f.reason(&bytes, None), RejectReason::Malformed);
    }

    #[test]
    fn wrong_type() {
        let f = fixture();
        let bytes = f.key.sign_json(payload_type::STATUS, &doc(1));
        assert_eq!(f.reason(&bytes, None), RejectReason::WrongType);
    }

    #[test]
    fn unknown_key_and_bad_signature() {
        let f = fixture();
        let other = SigningKey::generate().expect("key").0;
        let bytes = other.sign_json(payload_type::DESIRED_STATE, &doc(1));
        assert_eq!(f.reason(&bytes, None), RejectReason::UnknownKey);

        let mut env = f.key.sign(payload_type::DESIRED_STATE, b"{}");
        let good = f.key.sign(
            payload_type::DESIRED_STATE,
            &serde_json::to_vec(&doc(1)).expect("json"),
        );
        env.payload = good.payload;
        let bytes = serde_json::to_vec(&env).expect("json");
        assert_eq!(f.reason(&bytes, None), RejectReason::BadSignature);
    }

    #[test]
    fn unsupported_schema() {
        let f = fixture();
        let mut d = doc(1);
        d.schema_version = 2;
        assert_eq!(f.reason(&f.sign(&d), None), RejectReason::UnsupportedSchema);
    }

    #[test]
    fn invalid() {
        let f = fixture();
        let mut d = doc(1);
        d.workloads.push(d.workloads[0].clone());
        let rejection = f.check(&f.sign(&d), None).expect_err("duplicate service");
        assert_eq!(rejection.reason, RejectReason::Invalid);
        assert_eq!(rejection.generation, Some(Generation::new(1)));
        assert!(
            rejection.detail.starts_with("workloads[1]"),
            "{}",
            rejection.detail
        );
    }

    #[test]
    fn wrong_agent() {
        let f = fixture();
        let mut d = doc(1);
        d.agent = AgentId::new("edge-2").expect("valid");
        assert_eq!(f.reason(&f.sign(&d), None), RejectReason::WrongAgent);
    }

    #[test]
    fn stale_generation() {
        let f = fixture();
        assert_eq!(
            f.reason(&f.sign(&doc(2)), Some(5)),
            RejectReason::StaleGeneration
        );
    }

    #[test]
    fn expired() {
        let f = fixture();
        let mut d = doc(2);
        d.issued_at = Timestamp::from_unix_millis(NOW - 10);
        d.expires_at = Timestamp::from_unix_millis(NOW);
        let rejection = f.check(&f.sign(&d), Some(1)).expect_err("expired");
        assert_eq!(rejection.reason, RejectReason::Expired);
        assert_eq!(rejection.at, Timestamp::from_unix_millis(NOW));
    }
}
