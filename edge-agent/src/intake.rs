//! Desired-state intake: the pure decision whether a received delivery is
//! accepted, silently ignored (same generation again) or rejected, and why.
//!
//! A delivery is the controller-signed desired state plus the
//! publisher-signed releases it names (docs/security.md, "What the agent
//! enforces"). The checks run in a fixed order so that the reported reason
//! is the first rule broken, and all of them pass before anything is
//! accepted; nothing here touches storage or workloads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use verge_shared::messages::{
    Assignment, Delivery, DesiredState, RejectReason, Rejection, Workload, bounded_message,
    check_schema_version, payload_type,
};
use verge_shared::trust::{TrustBundle, TrustError};
use verge_shared::{AgentId, Envelope, Generation, ServiceName, Sha256Digest, Timestamp, limits};

/// An accepted desired state with every release resolved: what the agent
/// persists and reconciles towards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedState {
    pub generation: Generation,
    pub expires_at: Timestamp,
    /// Sorted by service name, one per service.
    pub workloads: Vec<Workload>,
}

/// What to do with a delivery that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A newer generation: persist it, then apply it.
    Accept(ResolvedState),
    /// The generation already accepted, republished (perhaps re-signed):
    /// not an error, nothing to do.
    IgnoreSame,
}

/// What intake checks a delivery against.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub trust: &'a TrustBundle,
    pub me: &'a AgentId,
    /// The last accepted generation; `None` before the first one or after a
    /// root-signed generation reset.
    pub last: Option<Generation>,
    /// What the last accepted state runs, for the release rollback rule.
    pub running: &'a [Workload],
    pub now: Timestamp,
}

/// The delivery's outer container, parsed without any trust in it.
pub fn parse_delivery(bytes: &[u8]) -> Result<Delivery, (RejectReason, String)> {
    if bytes.len() > limits::MAX_DELIVERY_BYTES {
        return Err((
            RejectReason::TooLarge,
            format!(
                "delivery is {} bytes, over the limit of {}",
                bytes.len(),
                limits::MAX_DELIVERY_BYTES
            ),
        ));
    }
    let delivery: Delivery = serde_json::from_slice(bytes).map_err(|e| {
        (
            RejectReason::Malformed,
            format!("delivery is not valid JSON: {e}"),
        )
    })?;
    check_schema_version(delivery.schema_version)
        .map_err(|e| (RejectReason::UnsupportedSchema, format!("delivery {e}")))?;
    if delivery.releases.len() > limits::MAX_WORKLOADS_PER_AGENT {
        return Err((
            RejectReason::TooLarge,
            format!(
                "releases: at most {} per delivery",
                limits::MAX_WORKLOADS_PER_AGENT
            ),
        ));
    }
    Ok(delivery)
}

/// Checks a parsed delivery against `ctx`.
pub fn check(delivery: &Delivery, ctx: &Context<'_>) -> Result<Decision, Rejection> {
    let reject = |reason, generation, detail: &str| Rejection {
        reason,
        generation,
        detail: bounded_message(detail),
        at: ctx.now,
    };
    let verify_failed =
        |e: verge_shared::VerifyError| reject(RejectReason::from(&e), None, &e.to_string());

    let (payload, _) = delivery
        .desired
        .verify_any(payload_type::DESIRED_STATE, &ctx.trust.controllers)
        .map_err(verify_failed)?;
    let doc: DesiredState = serde_json::from_slice(&payload).map_err(|e| {
        reject(
            RejectReason::Malformed,
            None,
            &format!("signed payload does not parse: {e}"),
        )
    })?;
    let generation = Some(doc.generation);
    if let Err(e) = check_schema_version(doc.schema_version) {
        return Err(reject(RejectReason::UnsupportedSchema, generation, &e));
    }
    doc.validate()
        .map_err(|e| reject(RejectReason::Invalid, generation, &e))?;
    if &doc.agent != ctx.me {
        return Err(reject(
            RejectReason::WrongAgent,
            generation,
            &format!("addressed to agent {}, this is {}", doc.agent, ctx.me),
        ));
    }
    match ctx.last {
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
    if doc.expires_at <= ctx.now {
        return Err(reject(
            RejectReason::Expired,
            generation,
            &format!("expired at {}", doc.expires_at),
        ));
    }
    if ctx.trust.expires_at <= ctx.now {
        return Err(reject(
            RejectReason::Expired,
            generation,
            &format!(
                "the trust bundle (version {}) expired at {}; a newer one is needed",
                ctx.trust.version, ctx.trust.expires_at
            ),
        ));
    }
    let releases = index_releases(&delivery.releases);
    let running: BTreeMap<&ServiceName, &Workload> =
        ctx.running.iter().map(|w| (&w.service, w)).collect();
    let workloads = doc
        .workloads
        .iter()
        .enumerate()
        .map(|(i, a)| {
            resolve(a, &releases, ctx.trust, running.get(&a.service).copied()).map_err(
                |(reason, detail)| {
                    reject(
                        reason,
                        generation,
                        &format!("workloads[{i}] ({}): {detail}", a.service),
                    )
                },
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Decision::Accept(ResolvedState {
        generation: doc.generation,
        expires_at: doc.expires_at,
        workloads,
    }))
}

/// The delivered release envelopes by their signed digest; an envelope
/// whose payload is not base64 is left out (and so counts as missing).
fn index_releases(envelopes: &[Envelope]) -> BTreeMap<Sha256Digest, &Envelope> {
    envelopes
        .iter()
        .filter_map(|e| e.signed_digest().ok().map(|d| (d, e)))
        .collect()
}

/// Verifies the release an assignment names and turns it into a workload.
fn resolve(
    assignment: &Assignment,
    releases: &BTreeMap<Sha256Digest, &Envelope>,
    trust: &TrustBundle,
    running: Option<&Workload>,
) -> Result<Workload, (RejectReason, String)> {
    let envelope = releases.get(&assignment.release).ok_or_else(|| {
        (
            RejectReason::ReleaseMissing,
            format!(
                "release {} was not delivered with the desired state that names it",
                assignment.release
            ),
        )
    })?;
    let (release, publisher) = trust.verify_release(envelope).map_err(|e| {
        let reason = match e {
            TrustError::Invalid(_) => RejectReason::ReleaseInvalid,
            ref other => RejectReason::from(other),
        };
        (reason, format!("release {}: {e}", assignment.release))
    })?;
    if release.service != assignment.service {
        return Err((
            RejectReason::ReleaseMismatch,
            format!(
                "release {} is of service {}, not {}",
                assignment.release, release.service, assignment.service
            ),
        ));
    }
    if let Some(current) = running
        && release.version < current.version
        && !assignment.rollback
    {
        return Err((
            RejectReason::ReleaseRollback,
            format!(
                "version {} is older than the running {} and the desired state does not mark a rollback",
                release.version, current.version
            ),
        ));
    }
    tracing::debug!(service = %release.service, version = %release.version, publisher = %publisher.name, "Release verified.");
    release
        .workload(assignment)
        .map_err(|e| (RejectReason::ReleaseInvalid, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use verge_shared::SigningKey;
    use verge_shared::messages::{Resources, RunSpec, SCHEMA_VERSION};
    use verge_shared::trust::{
        MediaType, Publisher, Release, ReleaseArtifact, payload_type as trust_type,
    };

    const NOW: u64 = 1_800_000_000_000;

    fn ts(offset_ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(NOW.saturating_add_signed(offset_ms))
    }

    struct Fixture {
        controller: SigningKey,
        publisher: SigningKey,
        trust: TrustBundle,
        me: AgentId,
    }

    fn key() -> SigningKey {
        SigningKey::generate().expect("key").0
    }

    fn fixture() -> Fixture {
        let (root, controller, publisher) = (key(), key(), key());
        let trust = crate::fake::trust_bundle(
            root.public_key(),
            controller.public_key(),
            vec![Publisher {
                name: "web team".into(),
                key: publisher.public_key(),
                services: vec!["web*".into()],
            }],
            (ts(-1000), ts(3_600_000)),
        );
        Fixture {
            controller,
            publisher,
            trust,
            me: AgentId::new("edge-1").expect("valid"),
        }
    }

    fn release(service: &str, version: &str) -> Release {
        Release {
            schema_version: SCHEMA_VERSION,
            service: ServiceName::new(service).expect("valid"),
            version: version.parse().expect("version"),
            issued_at: ts(-500),
            artifacts: vec![ReleaseArtifact {
                sha256: Sha256Digest::of(b"x"),
                size: 1,
                media_type: MediaType::Executable,
            }],
            run: RunSpec {
                args: vec!["--port".into(), "8080".into()],
                ..RunSpec::default()
            },
            resources: Resources::default(),
        }
    }

    fn doc(generation: u64, workloads: Vec<Assignment>) -> DesiredState {
        DesiredState {
            schema_version: SCHEMA_VERSION,
            agent: AgentId::new("edge-1").expect("valid"),
            generation: Generation::new(generation),
            issued_at: ts(-1000),
            expires_at: ts(60_000),
            workloads,
        }
    }

    fn assign(service: &str, release: &Envelope) -> Assignment {
        Assignment {
            service: ServiceName::new(service).expect("valid"),
            replica: 0,
            release: release.signed_digest().expect("digest"),
            rollback: false,
            config: BTreeMap::new(),
        }
    }

    impl Fixture {
        fn sign_release(&self, r: &Release) -> Envelope {
            self.publisher
                .sign(trust_type::RELEASE, &serde_json::to_vec(r).expect("json"))
        }

        fn deliver(&self, d: &DesiredState, releases: Vec<Envelope>) -> Delivery {
            Delivery {
                schema_version: SCHEMA_VERSION,
                trust: None,
                desired: self.controller.sign(
                    payload_type::DESIRED_STATE,
                    &serde_json::to_vec(d).expect("json"),
                ),
                releases,
            }
        }

        /// A delivery of generation `g` running `web` at `version`.
        fn web(&self, g: u64, version: &str) -> Delivery {
            let r = self.sign_release(&release("web", version));
            self.deliver(&doc(g, vec![assign("web", &r)]), vec![r])
        }

        fn check(
            &self,
            d: &Delivery,
            last: Option<u64>,
            running: &[Workload],
        ) -> Result<Decision, Rejection> {
            check(
                d,
                &Context {
                    trust: &self.trust,
                    me: &self.me,
                    last: last.map(Generation::new),
                    running,
                    now: ts(0),
                },
            )
        }

        fn reason(&self, d: &Delivery, last: Option<u64>) -> RejectReason {
            self.check(d, last, &[])
                .expect_err("must be rejected")
                .reason
        }

        fn accepted(&self, d: &Delivery) -> ResolvedState {
            match self.check(d, None, &[]) {
                Ok(Decision::Accept(state)) => state,
                other => panic!("expected acceptance, got {other:?}"),
            }
        }
    }

    #[test]
    fn accepts_a_good_delivery_and_resolves_the_release() {
        let f = fixture();
        let r = f.sign_release(&release("web", "1.2.0"));
        let mut a = assign("web", &r);
        a.config.insert("GREETING".into(), "hi".into());
        let state = match f.check(&f.deliver(&doc(3, vec![a]), vec![r.clone()]), Some(2), &[]) {
            Ok(Decision::Accept(state)) => state,
            other => panic!("{other:?}"),
        };
        assert_eq!(state.generation, Generation::new(3));
        let w = &state.workloads[0];
        assert_eq!(w.release, r.signed_digest().expect("digest"));
        assert_eq!(w.version.to_string(), "1.2.0");
        assert_eq!(w.artifact.sha256, Sha256Digest::of(b"x"));
        assert_eq!(w.run.args, ["--port", "8080"]);
        assert_eq!(w.run.env["VERGE_CONFIG_GREETING"], "hi");
    }

    #[test]
    fn same_generation_is_ignored_even_if_resigned_or_expired() {
        let f = fixture();
        assert_eq!(
            f.check(&f.web(3, "1.0.0"), Some(3), &[]),
            Ok(Decision::IgnoreSame)
        );
        let r = f.sign_release(&release("web", "1.0.0"));
        let mut d = doc(3, vec![assign("web", &r)]);
        d.issued_at = ts(-2);
        d.expires_at = ts(-1);
        assert_eq!(
            f.check(&f.deliver(&d, vec![r]), Some(3), &[]),
            Ok(Decision::IgnoreSame)
        );
    }

    #[test]
    fn oversized_and_malformed_deliveries() {
        let big = vec![b' '; limits::MAX_DELIVERY_BYTES + 1];
        assert_eq!(
            parse_delivery(&big).expect_err("big").0,
            RejectReason::TooLarge
        );
        assert_eq!(
            parse_delivery(b"{nope").expect_err("json").0,
            RejectReason::Malformed
        );
        let f = fixture();
        let mut d = f.web(1, "1.0.0");
        d.desired = f
            .controller
            .sign(payload_type::DESIRED_STATE, b"{\"not\":\"a doc\"}");
        assert_eq!(f.reason(&d, None), RejectReason::Malformed);
    }

    #[test]
    fn desired_state_signature_rules() {
        let f = fixture();
        // Wrong type: a status envelope relabelled cannot pass.
        let mut d = f.web(1, "1.0.0");
        d.desired.payload_type = "application/vnd.verge.status.v1+json".into();
        assert_eq!(f.reason(&d, None), RejectReason::WrongType);
        // Signed by a key the trust bundle does not list (a publisher's, even).
        let mut d = f.web(1, "1.0.0");
        d.desired = f.publisher.sign(
            payload_type::DESIRED_STATE,
            &B64.decode(&d.desired.payload).expect("b64"),
        );
        assert_eq!(f.reason(&d, None), RejectReason::UnknownKey);
        // Tampered payload.
        let mut d = f.web(1, "1.0.0");
        d.desired.payload = f.web(9, "1.0.0").desired.payload;
        assert_eq!(f.reason(&d, None), RejectReason::BadSignature);
        // No signature at all.
        let mut d = f.web(1, "1.0.0");
        d.desired.signatures.clear();
        assert_eq!(f.reason(&d, None), RejectReason::Unsigned);
    }

    #[test]
    fn document_rules() {
        let f = fixture();
        let r = f.sign_release(&release("web", "1.0.0"));
        let mut d = doc(1, vec![assign("web", &r)]);
        d.schema_version = 2;
        assert_eq!(
            f.reason(&f.deliver(&d, vec![r.clone()]), None),
            RejectReason::UnsupportedSchema
        );
        let d = doc(1, vec![assign("web", &r), assign("web", &r)]);
        let rejection = f
            .check(&f.deliver(&d, vec![r.clone()]), None, &[])
            .expect_err("dup");
        assert_eq!(rejection.reason, RejectReason::Invalid);
        assert!(
            rejection.detail.starts_with("workloads[1]"),
            "{}",
            rejection.detail
        );
        let mut d = doc(1, vec![assign("web", &r)]);
        d.agent = AgentId::new("edge-2").expect("valid");
        assert_eq!(
            f.reason(&f.deliver(&d, vec![r.clone()]), None),
            RejectReason::WrongAgent
        );
        assert_eq!(
            f.reason(&f.web(2, "1.0.0"), Some(5)),
            RejectReason::StaleGeneration
        );
        let mut d = doc(2, vec![assign("web", &r)]);
        d.issued_at = ts(-10);
        d.expires_at = ts(0);
        let rejection = f
            .check(&f.deliver(&d, vec![r]), Some(1), &[])
            .expect_err("expired");
        assert_eq!(rejection.reason, RejectReason::Expired);
        assert_eq!(rejection.at, ts(0));
    }

    #[test]
    fn an_expired_trust_bundle_freezes_intake() {
        let mut f = fixture();
        f.trust.expires_at = ts(0);
        let rejection = f.check(&f.web(1, "1.0.0"), None, &[]).expect_err("frozen");
        assert_eq!(rejection.reason, RejectReason::Expired);
        assert!(
            rejection.detail.contains("trust bundle"),
            "{}",
            rejection.detail
        );
    }

    #[test]
    fn release_rules() {
        let f = fixture();
        // Mix-and-match: the named digest is not among the delivered releases.
        let r1 = f.sign_release(&release("web", "1.0.0"));
        let r2 = f.sign_release(&release("web", "2.0.0"));
        let d = f.deliver(&doc(1, vec![assign("web", &r1)]), vec![r2.clone()]);
        assert_eq!(f.reason(&d, None), RejectReason::ReleaseMissing);
        // Unknown publisher (the controller signing code itself).
        let by_controller = f.controller.sign(
            trust_type::RELEASE,
            &serde_json::to_vec(&release("web", "1.0.0")).expect("json"),
        );
        let d = f.deliver(
            &doc(1, vec![assign("web", &by_controller)]),
            vec![by_controller],
        );
        assert_eq!(f.reason(&d, None), RejectReason::UnknownPublisher);
        // A publisher not allowed the service.
        let db = f.sign_release(&release("db", "1.0.0"));
        let d = f.deliver(&doc(1, vec![assign("db", &db)]), vec![db]);
        assert_eq!(f.reason(&d, None), RejectReason::PublisherNotAllowed);
        // The release is of another service than assigned.
        let d = f.deliver(&doc(1, vec![assign("webx", &r1)]), vec![r1.clone()]);
        assert_eq!(f.reason(&d, None), RejectReason::ReleaseMismatch);
        // Signed but inconsistent.
        let mut bad = release("web", "1.0.0");
        bad.artifacts.clear();
        let bad = f.sign_release(&bad);
        let d = f.deliver(&doc(1, vec![assign("web", &bad)]), vec![bad]);
        assert_eq!(f.reason(&d, None), RejectReason::ReleaseInvalid);
    }

    #[test]
    fn older_release_versions_need_an_operator_rollback() {
        let f = fixture();
        let running = f.accepted(&f.web(1, "2.0.0")).workloads;
        let older = f.web(2, "1.9.9");
        let rejection = f.check(&older, Some(1), &running).expect_err("rollback");
        assert_eq!(rejection.reason, RejectReason::ReleaseRollback);
        // Same or newer: fine.
        assert!(f.check(&f.web(2, "2.0.0"), Some(1), &running).is_ok());
        assert!(f.check(&f.web(2, "2.0.1"), Some(1), &running).is_ok());
        // Marked as a rollback by the operator: a new, signed generation.
        let r = f.sign_release(&release("web", "1.9.9"));
        let mut a = assign("web", &r);
        a.rollback = true;
        assert!(matches!(
            f.check(&f.deliver(&doc(2, vec![a]), vec![r]), Some(1), &running),
            Ok(Decision::Accept(_))
        ));
    }

    #[test]
    fn a_delivery_of_exactly_the_size_limit_is_read() {
        let f = fixture();
        let d = f.web(1, "1.0.0");
        let mut bytes = serde_json::to_vec(&d).expect("json");
        bytes.resize(limits::MAX_DELIVERY_BYTES, b' ');
        assert_eq!(parse_delivery(&bytes), Ok(d));
    }

    #[test]
    fn the_container_is_checked_before_anything_in_it() {
        let f = fixture();
        let mut d = f.web(1, "1.0.0");
        d.schema_version = 2;
        let bytes = serde_json::to_vec(&d).expect("json");
        assert_eq!(
            parse_delivery(&bytes).expect_err("schema").0,
            RejectReason::UnsupportedSchema
        );
        // As many releases as an agent may run workloads, and no more.
        let mut d = f.web(1, "1.0.0");
        d.releases = vec![d.releases[0].clone(); limits::MAX_WORKLOADS_PER_AGENT];
        let bytes = serde_json::to_vec(&d).expect("json");
        assert_eq!(parse_delivery(&bytes), Ok(d.clone()));
        d.releases.push(d.releases[0].clone());
        let bytes = serde_json::to_vec(&d).expect("json");
        assert_eq!(
            parse_delivery(&bytes).expect_err("too many").0,
            RejectReason::TooLarge
        );
    }

    #[test]
    fn a_rejection_names_the_generation_it_refused_and_when() {
        let f = fixture();
        let rejection = f
            .check(&f.web(2, "1.0.0"), Some(5), &[])
            .expect_err("stale");
        assert_eq!(
            (rejection.generation, rejection.at),
            (Some(Generation::new(2)), ts(0))
        );
        assert!(rejection.detail.contains("older than the accepted 5"));
        // The first desired state, and any newer one, is accepted.
        assert!(matches!(
            f.check(&f.web(1, "1.0.0"), None, &[]),
            Ok(Decision::Accept(s)) if s.generation == Generation::new(1)
        ));
        assert!(matches!(
            f.check(&f.web(6, "1.0.0"), Some(5), &[]),
            Ok(Decision::Accept(s)) if s.generation == Generation::new(6) && s.expires_at == ts(60_000)
        ));
    }
}
