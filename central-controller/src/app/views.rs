//! Read models for the HTTP API: services with their replicas' live state, and
//! nodes. Separate from store records so that the API shape can evolve alone.

use std::collections::BTreeMap;

use serde::Serialize;
use verge_shared::messages::{
    ExitInfo, HealthState, Isolation, LimitMechanism, Rejection, Resources, StorageProblem,
    WorkloadState, WorkloadStatus,
};
use verge_shared::{AgentId, Generation, KeyId, RegionId, ServiceName, Timestamp};

use super::composition::App;
use super::error::AppError;
use crate::latency::Estimate;
use crate::store::{Cordon, DesiredRecord, NodeRecord, ServiceRecord, ServiceSpec};

/// A replica's state as shown to operators: the agent's states plus `unplaced`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
pub enum ReplicaState {
    Pending,
    Fetching,
    Running,
    Backoff,
    Failed,
    CrashLoop,
    Exited,
    Unplaced,
}

impl From<WorkloadState> for ReplicaState {
    fn from(state: WorkloadState) -> Self {
        match state {
            WorkloadState::Pending => ReplicaState::Pending,
            WorkloadState::Fetching => ReplicaState::Fetching,
            WorkloadState::Running => ReplicaState::Running,
            WorkloadState::Backoff => ReplicaState::Backoff,
            WorkloadState::Failed => ReplicaState::Failed,
            WorkloadState::CrashLoop => ReplicaState::CrashLoop,
            WorkloadState::Exited => ReplicaState::Exited,
        }
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ReplicaView {
    pub index: u32,
    pub node: Option<AgentId>,
    pub region: Option<RegionId>,
    pub state: ReplicaState,
    pub reason: Option<String>,
    pub pid: Option<u32>,
    pub ports: BTreeMap<String, u16>,
    pub restarts: u32,
    pub desired_generation: Option<Generation>,
    pub applied_generation: Option<Generation>,
    pub message: Option<String>,
    /// The agent's health-check verdict, when the service has a check.
    pub health: Option<HealthState>,
    /// How the replica's process last ended.
    pub last_exit: Option<ExitInfo>,
    /// The user and limit mechanism the agent runs it with.
    pub isolation: Option<Isolation>,
    /// Its node has not been heard from since the controller started: the
    /// state shown is the last one stored before, not yet confirmed.
    pub unconfirmed: bool,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceView {
    pub name: ServiceName,
    pub spec: ServiceSpec,
    /// The version of the release `spec.release` names.
    pub version: String,
    pub revision: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub replicas: Vec<ReplicaView>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    pub id: AgentId,
    pub region: RegionId,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    pub online: bool,
    pub healthy: bool,
    /// Not heard from since the controller started: `online`, `healthy`
    /// and the workloads are what was stored before, not yet confirmed.
    /// Cleared by the node's first message; a node that does not answer
    /// the controller's call to announce within `announce_timeout_secs`
    /// turns unhealthy.
    pub unconfirmed: bool,
    pub last_seen: Option<Timestamp>,
    pub key_id: KeyId,
    /// The agent's software version, from its presence.
    pub version: String,
    pub desired_generation: Option<Generation>,
    pub applied_generation: Option<Generation>,
    pub workloads: Vec<WorkloadStatus>,
    pub last_rejection: Option<Rejection>,
    /// The agent cannot write to its data directory (disk full), while it lasts.
    pub storage_problem: Option<StorageProblem>,
    /// `cordoned` or `drained` when an operator set it.
    pub cordon: Option<Cordon>,
    /// Revoked by an operator: certificates refused, nothing placed.
    pub revoked: bool,
    #[schema(value_type = Option<String>, example = "10.0.0.7:7790")]
    pub probe_addr: Option<std::net::SocketAddr>,
    /// `cgroup_v2` or `rlimit`: how the node enforces workload limits.
    pub limits: Option<LimitMechanism>,
    /// The node's latency to each region, with how it was obtained.
    pub latency: BTreeMap<RegionId, crate::latency::Estimate>,
}

/// One replica's view from its node's latest report. The report counts only
/// once the node has applied the desired state that carries this replica,
/// and only for the artifact of the release the service now names; until
/// then it is pending, unless that new version already failed to start.
fn replica_view(
    service: &ServiceRecord,
    index: u32,
    node: Option<&NodeRecord>,
    desired: Option<&DesiredRecord>,
    unconfirmed: bool,
) -> ReplicaView {
    let desired_generation = desired.map(|d| d.generation);
    let status = node.and_then(|n| n.last_status.as_ref());
    let applied_generation = status.and_then(|s| s.applied_generation);
    let of_this_release = |w: &&WorkloadStatus| {
        w.service == service.name
            && service.release.artifact().map(|a| a.sha256) == Some(w.artifact)
    };
    let current = match (status, desired_generation) {
        (Some(s), Some(wanted)) if s.applied_generation.is_some_and(|g| g >= wanted) => {
            s.workloads.iter().find(of_this_release)
        }
        // Not applied yet, but already failed to start (its artifact was
        // refused, say): that is news the operator must see now.
        (Some(s), Some(_)) => s
            .workloads
            .iter()
            .filter(of_this_release)
            .find(|w| w.state == WorkloadState::Failed),
        _ => None,
    };
    ReplicaView {
        index,
        node: node.map(|n| n.id.clone()),
        region: node.map(|n| n.region.clone()),
        state: current.map_or(ReplicaState::Pending, |w| w.state.into()),
        reason: None,
        pid: current.and_then(|w| w.pid),
        ports: current.map(|w| w.ports.clone()).unwrap_or_default(),
        restarts: current.map_or(0, |w| w.restarts),
        desired_generation,
        applied_generation,
        message: current.and_then(|w| w.message.clone()),
        health: current.and_then(|w| w.health),
        last_exit: current.and_then(|w| w.last_exit.clone()),
        isolation: current.and_then(|w| w.isolation.clone()),
        unconfirmed,
    }
}

fn unplaced(index: u32, reason: String) -> ReplicaView {
    ReplicaView {
        index,
        node: None,
        region: None,
        state: ReplicaState::Unplaced,
        reason: Some(reason),
        pid: None,
        ports: BTreeMap::new(),
        restarts: 0,
        desired_generation: None,
        applied_generation: None,
        message: None,
        health: None,
        last_exit: None,
        isolation: None,
        unconfirmed: false,
    }
}

impl App {
    pub(super) fn view_of(&self, service: &ServiceRecord) -> Result<ServiceView, AppError> {
        // Copied out, so the plan's lock is not held with the registry's.
        let planned = self.deployment.service_plan(&service.name);
        let planned = planned.as_ref();
        let nodes = self.nodes.records();
        let mut replicas = Vec::with_capacity(service.spec.replicas as usize);
        for index in 0..service.spec.replicas {
            let decision = planned.and_then(|p| p.iter().find(|r| r.index == index));
            let view = match decision.and_then(|d| d.node.as_ref()) {
                Some(node_id) => {
                    let desired = self.store.desired_state(node_id)?;
                    let node = nodes.get(node_id);
                    let unconfirmed = node.is_some_and(|n| self.nodes.unconfirmed(n));
                    replica_view(service, index, node, desired.as_ref(), unconfirmed)
                }
                None => unplaced(
                    index,
                    decision
                        .and_then(|d| d.reason.clone())
                        .unwrap_or_else(|| "not planned yet".to_owned()),
                ),
            };
            replicas.push(view);
        }
        Ok(ServiceView {
            name: service.name.clone(),
            spec: service.spec.clone(),
            version: service.release.version.to_string(),
            revision: service.revision,
            created_at: service.created_at,
            updated_at: service.updated_at,
            replicas,
        })
    }

    pub fn service(&self, name: &str) -> Result<ServiceView, AppError> {
        let not_found = || AppError::NotFound {
            what: "service",
            name: name.to_owned(),
        };
        let name = ServiceName::new(name).map_err(|_| not_found())?;
        let record = self.store.service(&name)?.ok_or_else(not_found)?;
        self.view_of(&record)
    }

    pub fn services(&self) -> Result<Vec<ServiceView>, AppError> {
        self.store
            .services()?
            .iter()
            .map(|s| self.view_of(s))
            .collect()
    }

    pub(super) fn node_view(
        &self,
        node: &NodeRecord,
        now: Timestamp,
        latency: BTreeMap<RegionId, Estimate>,
    ) -> Result<NodeView, AppError> {
        let status = node.last_status.as_ref();
        Ok(NodeView {
            id: node.id.clone(),
            region: node.region.clone(),
            labels: node.labels.clone(),
            capacity: node.capacity,
            online: node.online,
            healthy: self.nodes.health(node, now).healthy,
            unconfirmed: self.nodes.unconfirmed(node),
            last_seen: node.last_seen,
            key_id: node.public_key.key_id(),
            version: node.version.clone(),
            desired_generation: self.deployment.generation(&node.id),
            applied_generation: node.applied_generation,
            workloads: status.map(|s| s.workloads.clone()).unwrap_or_default(),
            last_rejection: status.and_then(|s| s.last_rejection.clone()),
            storage_problem: status.and_then(|s| s.storage_problem.clone()),
            cordon: node.cordon,
            revoked: node.revoked,
            probe_addr: node.probe_addr,
            limits: node.limits,
            latency,
        })
    }

    pub fn node(&self, id: &str) -> Result<NodeView, AppError> {
        let node = AgentId::new(id)
            .ok()
            .and_then(|id| self.nodes.records().get(&id).cloned())
            .ok_or_else(|| AppError::NotFound {
                what: "node",
                name: id.to_owned(),
            })?;
        let now = self.now();
        self.node_view(&node, now, self.node_latency(&node, now))
    }
}
