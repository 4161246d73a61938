//! The pure half of deployment: turning a plan into per-agent workload lists,
//! deciding when an agent's generation must grow, and signing desired states.
//!
//! The invariant lives here: an agent's generation grows exactly when its
//! workload list changes; republishing re-signs with the same generation.

use std::collections::BTreeMap;
use std::time::Duration;

use verge_shared::messages::{
    Assignment, Delivery, DesiredState, SCHEMA_VERSION, Workload, payload_type,
};
use verge_shared::{AgentId, Envelope, Generation, SigningKey, Timestamp, limits};

use crate::store::{DesiredRecord, ServiceRecord};
use verge_scheduler::Plan;

/// What one agent is told to run: the signed assignments, and the
/// workloads they resolve to (kept for views and placement).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentWork {
    pub assignments: Vec<Assignment>,
    pub workloads: Vec<Workload>,
}

/// One service's replica on its node: the assignment signed for the agent
/// and the workload it resolves to. `None` when the stored release cannot
/// be resolved (it was verified when stored, so this is a corrupt record).
pub fn assignment(service: &ServiceRecord, replica: u32) -> Option<(Assignment, Workload)> {
    let assignment = Assignment {
        service: service.name.clone(),
        replica,
        release: service.spec.release,
        rollback: service.spec.rollback,
        config: service.spec.config.clone(),
    };
    let workload = service.release.workload(&assignment).ok()?;
    Some((assignment, workload))
}

/// Every agent's work under `plan`, each list sorted by service name.
pub fn work_by_agent(plan: &Plan, services: &[ServiceRecord]) -> BTreeMap<AgentId, AgentWork> {
    let by_name: BTreeMap<_, _> = services.iter().map(|s| (&s.name, s)).collect();
    let mut out: BTreeMap<AgentId, AgentWork> = BTreeMap::new();
    // Plan services iterate in name order, so each list comes out sorted.
    for (name, replicas) in &plan.services {
        let Some(service) = by_name.get(name) else {
            continue;
        };
        for replica in replicas {
            if let Some(node) = &replica.node
                && let Some((assignment, workload)) = assignment(service, replica.index)
            {
                let work = out.entry(node.clone()).or_default();
                work.assignments.push(assignment);
                work.workloads.push(workload);
            }
        }
    }
    out
}

/// The generation to issue for `assignments`, or `None` when the stored
/// desired state already says exactly this. An agent that never had a
/// desired state and gets no workloads needs none.
pub fn next_generation(
    stored: Option<&DesiredRecord>,
    assignments: &[Assignment],
) -> Option<Generation> {
    match stored {
        Some(record) if record.assignments == assignments => None,
        Some(record) => Some(record.generation.next()),
        None if assignments.is_empty() => None,
        None => Some(Generation::ZERO.next()),
    }
}

/// Whether a stored document should be re-signed (same generation, fresh
/// times) before it is republished: less than half of its validity remains,
/// or it is not signed by `key` (the controller key was rotated, for
/// instance after a fast-forward attack, and agents no longer trust the old
/// one).
pub fn needs_resign(
    record: &DesiredRecord,
    key: &verge_shared::PublicKey,
    now: Timestamp,
    ttl: Duration,
) -> bool {
    let signed_by_key = Envelope::parse(&record.envelope, limits::MAX_DESIRED_STATE_BYTES)
        .is_ok_and(|e| {
            e.signatures
                .iter()
                .any(|s| s.keyid == key.key_id().as_str())
        });
    !signed_by_key || record.expires_at.saturating_since(now) < ttl / 2
}

/// Why a desired state could not be produced.
#[derive(Debug, thiserror::Error)]
#[error("desired state for {agent} is invalid: {detail}")]
pub struct SignError {
    pub agent: AgentId,
    pub detail: String,
}

/// Builds, validates and signs a desired state valid from `now` for `ttl`.
pub fn sign(
    key: &SigningKey,
    agent: &AgentId,
    generation: Generation,
    work: AgentWork,
    now: Timestamp,
    ttl: Duration,
) -> Result<DesiredRecord, SignError> {
    let document = DesiredState {
        schema_version: SCHEMA_VERSION,
        agent: agent.clone(),
        generation,
        issued_at: now,
        expires_at: now.saturating_add(ttl),
        workloads: work.assignments,
    };
    document.validate().map_err(|detail| SignError {
        agent: agent.clone(),
        detail,
    })?;
    let envelope = key.sign_json(payload_type::DESIRED_STATE, &document);
    Ok(DesiredRecord {
        agent: document.agent,
        generation,
        envelope,
        assignments: document.workloads,
        workloads: work.workloads,
        issued_at: document.issued_at,
        expires_at: document.expires_at,
    })
}

/// The retained message for `record`: its signed desired state, the signed
/// releases it names and the trust bundle. Agents refuse larger deliveries
/// unread, so issuing one would strand the agent: that is an error here.
pub fn delivery(
    record: &DesiredRecord,
    releases: Vec<Envelope>,
    trust: Envelope,
) -> Result<Vec<u8>, SignError> {
    let fail = |detail: String| SignError {
        agent: record.agent.clone(),
        detail,
    };
    let desired = Envelope::parse(&record.envelope, limits::MAX_DESIRED_STATE_BYTES)
        .map_err(|e| fail(format!("stored envelope: {e}")))?;
    let bytes = serde_json::to_vec(&Delivery {
        schema_version: SCHEMA_VERSION,
        trust: Some(trust),
        desired,
        releases,
    })
    .map_err(|e| fail(e.to_string()))?;
    if bytes.len() > limits::MAX_DELIVERY_BYTES {
        return Err(fail(format!(
            "the delivery is {} bytes, over the agents' limit of {}",
            bytes.len(),
            limits::MAX_DELIVERY_BYTES
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ServiceSpec;
    use verge_scheduler::ReplicaPlan;
    use verge_shared::messages::{Resources, RunSpec};
    use verge_shared::trust::{MediaType, Release, ReleaseArtifact};
    use verge_shared::{ServiceName, Sha256Digest};

    fn service(name: &str) -> ServiceRecord {
        ServiceRecord {
            name: ServiceName::new(name).expect("name"),
            spec: ServiceSpec {
                release: Sha256Digest::of(name.as_bytes()),
                replicas: 1,
                regions: vec![],
                rollback: false,
                config: BTreeMap::from([("MODE".to_owned(), "edge".to_owned())]),
                placement: Default::default(),
            },
            release: Release {
                schema_version: SCHEMA_VERSION,
                service: ServiceName::new(name).expect("name"),
                version: "1.0.0".parse().expect("version"),
                issued_at: Timestamp::from_unix_millis(1),
                artifacts: vec![ReleaseArtifact {
                    sha256: Sha256Digest::of(b"code"),
                    size: 4,
                    media_type: MediaType::Executable,
                }],
                run: RunSpec {
                    args: vec!["--x".into()],
                    ..RunSpec::default()
                },
                resources: Resources::default(),
            },
            revision: 1,
            created_at: Timestamp::from_unix_millis(1),
            updated_at: Timestamp::from_unix_millis(1),
        }
    }

    fn agent() -> AgentId {
        AgentId::new("edge-a").expect("id")
    }

    fn plan_on(services: &[&str], node: &AgentId) -> Plan {
        let mut plan = Plan::default();
        for s in services {
            plan.services.insert(
                ServiceName::new(*s).expect("name"),
                vec![ReplicaPlan {
                    index: 0,
                    node: Some(node.clone()),
                    reason: None,
                }],
            );
        }
        plan
    }

    const TTL: Duration = Duration::from_secs(100);

    #[test]
    fn generation_grows_exactly_when_workloads_change() {
        let key = SigningKey::generate().expect("key").0;
        let services = [service("b"), service("a")];
        let now = Timestamp::from_unix_millis(1_000);
        let lists = work_by_agent(&plan_on(&["a", "b"], &agent()), &services);
        let work = lists[&agent()].clone();
        assert_eq!(
            work.assignments
                .iter()
                .map(|w| w.service.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        // The recorded workload is what the agent resolves: release run
        // spec plus the per-agent config.
        assert_eq!(work.workloads[0].run.args, ["--x"]);
        assert_eq!(work.workloads[0].run.env["VERGE_CONFIG_MODE"], "edge");
        assert_eq!(work.workloads[0].release, work.assignments[0].release);

        let generation = next_generation(None, &work.assignments).expect("first document");
        assert_eq!(generation, Generation::new(1));
        let first = sign(&key, &agent(), generation, work.clone(), now, TTL).expect("sign");
        assert_eq!(
            next_generation(Some(&first), &work.assignments),
            None,
            "same workloads, same generation"
        );

        // A service deleted: the agent gets an EMPTY desired state, one generation up.
        let emptied = next_generation(Some(&first), &[]).expect("delete changes");
        assert_eq!(emptied, Generation::new(2));
        let empty =
            sign(&key, &agent(), emptied, AgentWork::default(), now, TTL).expect("sign empty");
        assert!(empty.workloads.is_empty());
        assert_eq!(next_generation(Some(&empty), &[]), None);
        assert_eq!(
            next_generation(None, &[]),
            None,
            "never had work, needs nothing"
        );
    }

    #[test]
    fn resigning_keeps_the_generation_and_refreshes_times() {
        let key = SigningKey::generate().expect("key").0;
        let start = Timestamp::from_unix_millis(1_000);
        let record = sign(
            &key,
            &agent(),
            Generation::new(7),
            AgentWork::default(),
            start,
            TTL,
        )
        .expect("sign");
        let public = key.public_key();
        assert!(!needs_resign(&record, &public, start, TTL));
        let later = start.saturating_add(Duration::from_secs(51));
        assert!(needs_resign(&record, &public, later, TTL));
        // A rotated controller key re-signs everything at once.
        let rotated = SigningKey::generate().expect("key").0.public_key();
        assert!(needs_resign(&record, &rotated, start, TTL));
        let again = sign(
            &key,
            &agent(),
            record.generation,
            AgentWork::default(),
            later,
            TTL,
        )
        .expect("re-sign");
        assert_eq!(again.generation, Generation::new(7));
        assert!(again.expires_at > record.expires_at);

        let envelope =
            Envelope::parse(&again.envelope, limits::MAX_DESIRED_STATE_BYTES).expect("parse");
        assert!(!needs_resign(&again, &public, later, TTL));
        let document: DesiredState = envelope
            .open(payload_type::DESIRED_STATE, &key.public_key())
            .expect("verifies with the controller key");
        assert_eq!(document.generation, Generation::new(7));
        assert_eq!(document.issued_at, later);
    }
}
