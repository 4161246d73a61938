//! The pure half of deployment: turning a plan into per-agent workload lists,
//! deciding when an agent's generation must grow, and signing desired states.
//!
//! The invariant lives here: an agent's generation grows exactly when its
//! workload list changes; republishing re-signs with the same generation.

use std::collections::BTreeMap;
use std::time::Duration;

use verge_shared::messages::{
    ArtifactRef, DesiredState, RunSpec, SCHEMA_VERSION, Workload, payload_type,
};
use verge_shared::{AgentId, Generation, SigningKey, Timestamp, limits};

use crate::scheduler::Plan;
use crate::store::{DesiredRecord, ServiceRecord};

/// The workload one service's replica becomes on its node.
pub fn workload(service: &ServiceRecord, replica: u32) -> Workload {
    Workload {
        service: service.name.clone(),
        replica,
        artifact: ArtifactRef {
            sha256: service.spec.artifact,
            size: service.artifact_size,
        },
        run: RunSpec {
            args: service.spec.args.clone(),
            env: service.spec.env.clone(),
            ports: service.spec.ports.clone(),
            restart: service.spec.restart,
            stop_grace_secs: service.spec.stop_grace_secs,
            health: service.spec.health.clone(),
            entrypoint: service.spec.entrypoint.clone(),
        },
        resources: service.spec.resources,
    }
}

/// Every agent's workloads under `plan`, each list sorted by service name.
pub fn workloads_by_agent(
    plan: &Plan,
    services: &[ServiceRecord],
) -> BTreeMap<AgentId, Vec<Workload>> {
    let by_name: BTreeMap<_, _> = services.iter().map(|s| (&s.name, s)).collect();
    let mut out: BTreeMap<AgentId, Vec<Workload>> = BTreeMap::new();
    // Plan services iterate in name order, so each list comes out sorted.
    for (name, replicas) in &plan.services {
        let Some(service) = by_name.get(name) else {
            continue;
        };
        for replica in replicas {
            if let Some(node) = &replica.node {
                out.entry(node.clone())
                    .or_default()
                    .push(workload(service, replica.index));
            }
        }
    }
    out
}

/// The generation to issue for `workloads`, or `None` when the stored desired
/// state already says exactly this. An agent that never had a desired state
/// and gets no workloads needs none.
pub fn next_generation(
    stored: Option<&DesiredRecord>,
    workloads: &[Workload],
) -> Option<Generation> {
    match stored {
        Some(record) if record.workloads == workloads => None,
        Some(record) => Some(record.generation.next()),
        None if workloads.is_empty() => None,
        None => Some(Generation::ZERO.next()),
    }
}

/// Whether a stored document should be re-signed with fresh times before it
/// is republished: less than half of its validity remains.
pub fn needs_resign(record: &DesiredRecord, now: Timestamp, ttl: Duration) -> bool {
    record.expires_at.saturating_since(now) < ttl / 2
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
    workloads: Vec<Workload>,
    now: Timestamp,
    ttl: Duration,
) -> Result<DesiredRecord, SignError> {
    let document = DesiredState {
        schema_version: SCHEMA_VERSION,
        agent: agent.clone(),
        generation,
        issued_at: now,
        expires_at: now.saturating_add(ttl),
        workloads,
    };
    document.validate().map_err(|detail| SignError {
        agent: agent.clone(),
        detail,
    })?;
    let envelope = key.sign_json(payload_type::DESIRED_STATE, &document);
    // Agents refuse larger documents unread, so issuing one would strand the agent.
    if envelope.len() > limits::MAX_DESIRED_STATE_BYTES {
        return Err(SignError {
            agent: agent.clone(),
            detail: format!(
                "the signed document is {} bytes, over the agents' limit of {}",
                envelope.len(),
                limits::MAX_DESIRED_STATE_BYTES
            ),
        });
    }
    Ok(DesiredRecord {
        agent: document.agent,
        generation,
        envelope,
        workloads: document.workloads,
        issued_at: document.issued_at,
        expires_at: document.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::ReplicaPlan;
    use crate::store::ServiceSpec;
    use verge_shared::messages::Resources;
    use verge_shared::{Envelope, ServiceName, Sha256Digest};

    fn service(name: &str) -> ServiceRecord {
        ServiceRecord {
            name: ServiceName::new(name).expect("name"),
            spec: ServiceSpec {
                artifact: Sha256Digest::of(name.as_bytes()),
                replicas: 1,
                regions: vec![],
                args: vec!["--x".into()],
                env: BTreeMap::new(),
                ports: vec![],
                resources: Resources::default(),
                placement: Default::default(),
                restart: Default::default(),
                stop_grace_secs: None,
                health: None,
                entrypoint: None,
            },
            artifact_size: 3,
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
        let lists = workloads_by_agent(&plan_on(&["a", "b"], &agent()), &services);
        let list = lists[&agent()].clone();
        assert_eq!(
            list.iter().map(|w| w.service.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );

        let generation = next_generation(None, &list).expect("first document");
        assert_eq!(generation, Generation::new(1));
        let first = sign(&key, &agent(), generation, list.clone(), now, TTL).expect("sign");
        assert_eq!(
            next_generation(Some(&first), &list),
            None,
            "same workloads, same generation"
        );

        // A service deleted: the agent gets an EMPTY desired state, one generation up.
        let emptied = next_generation(Some(&first), &[]).expect("delete changes");
        assert_eq!(emptied, Generation::new(2));
        let empty = sign(&key, &agent(), emptied, vec![], now, TTL).expect("sign empty");
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
        let record = sign(&key, &agent(), Generation::new(7), vec![], start, TTL).expect("sign");
        assert!(!needs_resign(&record, start, TTL));
        let later = start.saturating_add(Duration::from_secs(51));
        assert!(needs_resign(&record, later, TTL));
        let again = sign(
            &key,
            &agent(),
            record.generation,
            record.workloads.clone(),
            later,
            TTL,
        )
        .expect("re-sign");
        assert_eq!(again.generation, Generation::new(7));
        assert!(again.expires_at > record.expires_at);

        let envelope =
            Envelope::parse(&again.envelope, limits::MAX_DESIRED_STATE_BYTES).expect("parse");
        let document: DesiredState = envelope
            .open(payload_type::DESIRED_STATE, &key.public_key())
            .expect("verifies with the controller key");
        assert_eq!(document.generation, Generation::new(7));
        assert_eq!(document.issued_at, later);
    }
}
