//! A simulated agent: the agent's real intake decision
//! (`edge_agent::intake`) and reconcile plan (`edge_agent::reconcile`),
//! with workloads that run as entries in a map instead of processes, and
//! the signed reports an agent sends.

use std::collections::BTreeMap;
use std::time::Duration;

use central_controller::testing::presence_at;
use edge_agent::intake::{self, Context, Decision, ResolvedState};
use edge_agent::reconcile;
use verge_shared::announce::AnnounceRequest;
use verge_shared::messages::{
    Heartbeat, Rejection, SCHEMA_VERSION, Status, Workload, WorkloadState, WorkloadStatus,
    payload_type,
};
use verge_shared::trust::TrustBundle;
use verge_shared::{AgentId, Generation, RegionId, ServiceName, SigningKey, Timestamp, Topics};

/// An agent's node: what survives the agent process (the persisted state,
/// the running workloads) and what does not.
#[derive(Debug)]
pub struct SimAgent {
    pub id: AgentId,
    pub region: RegionId,
    key: SigningKey,
    /// The last accepted desired state, persisted before it is acted on.
    pub accepted: Option<ResolvedState>,
    /// Every generation this agent accepted, in order (never forgotten,
    /// for the invariant that they only grow).
    pub accepted_log: Vec<Generation>,
    /// What runs on the node, by service: kept across an agent crash (the
    /// restarted agent adopts it), lost when the node itself goes down.
    pub running: BTreeMap<ServiceName, Workload>,
    /// Whether the agent process runs.
    pub up: bool,
    /// Whether the node is powered (a dead node runs nothing).
    pub powered: bool,
    /// Whether the agent's link to the broker is cut.
    pub partitioned: bool,
    /// Whether the broker counts the agent as connected.
    pub connected: bool,
    pub last_rejection: Option<Rejection>,
    pub next_heartbeat: Duration,
    pub started_at: Duration,
    pub n_rejected: u64,
    /// When the last call to announce that was answered was issued.
    last_announce: Option<Timestamp>,
}

/// A report the agent publishes: topic, payload, retained.
pub type Report = (String, Vec<u8>, bool);

impl SimAgent {
    pub fn new(id: AgentId, region: RegionId, key: SigningKey) -> Self {
        Self {
            id,
            region,
            key,
            accepted: None,
            accepted_log: Vec::new(),
            running: BTreeMap::new(),
            up: true,
            powered: true,
            partitioned: false,
            connected: false,
            last_rejection: None,
            next_heartbeat: Duration::ZERO,
            started_at: Duration::ZERO,
            n_rejected: 0,
            last_announce: None,
        }
    }

    /// A delivery on the agent's desired topic: the real intake decision,
    /// then (on accept) persist and reconcile. Returns the status to send
    /// when anything changed.
    pub fn on_desired(
        &mut self,
        payload: &[u8],
        trust: &TrustBundle,
        topics: &Topics,
        now: Timestamp,
    ) -> Option<Report> {
        let delivery = match intake::parse_delivery(payload) {
            Ok(d) => d,
            Err((reason, detail)) => {
                return Some(self.rejected(
                    Rejection {
                        reason,
                        generation: None,
                        detail,
                        at: now,
                    },
                    topics,
                ));
            }
        };
        let running = self
            .accepted
            .as_ref()
            .map(|a| a.workloads.as_slice())
            .unwrap_or_default();
        let ctx = Context {
            trust,
            me: &self.id,
            last: self.accepted.as_ref().map(|a| a.generation),
            running,
            now,
        };
        match intake::check(&delivery, &ctx) {
            Ok(Decision::Accept(state)) => {
                self.accepted_log.push(state.generation);
                self.accepted = Some(state);
                self.last_rejection = None;
                self.reconcile();
                Some(self.status(topics, now))
            }
            Ok(Decision::IgnoreSame) => None,
            Err(rejection) => Some(self.rejected(rejection, topics)),
        }
    }

    /// The controller's call to announce, checked as the agent checks it
    /// (signed by a controller key, not expired, newer than the last one
    /// answered): the spread to answer within, if it is to be answered.
    pub fn on_announce(
        &mut self,
        payload: &[u8],
        trust: &TrustBundle,
        now: Timestamp,
    ) -> Option<u32> {
        let request =
            AnnounceRequest::open(payload, &trust.controllers, now, self.last_announce).ok()?;
        self.last_announce = Some(request.issued_at);
        Some(request.spread_ms)
    }

    fn rejected(&mut self, rejection: Rejection, topics: &Topics) -> Report {
        self.n_rejected += 1;
        let at = rejection.at;
        self.last_rejection = Some(rejection);
        self.status(topics, at)
    }

    /// One reconcile pass with the agent's real plan; every launch
    /// succeeds (there are no processes to fail).
    pub fn reconcile(&mut self) {
        let desired = self
            .accepted
            .as_ref()
            .map(|a| a.workloads.clone())
            .unwrap_or_default();
        let plan = reconcile::plan(&desired, &self.running);
        for service in &plan.stop {
            self.running.remove(service);
        }
        for w in plan.replace.into_iter().chain(plan.start) {
            self.running.insert(w.service.clone(), w);
        }
    }

    /// The signed presence the agent publishes on connect (`online`) or
    /// leaves as its Last Will.
    pub fn presence(&self, topics: &Topics, online: bool, now: Timestamp) -> Report {
        (
            topics.presence(&self.id),
            presence_at(
                &self.key,
                self.id.as_str(),
                self.region.as_str(),
                online,
                now,
            ),
            true,
        )
    }

    /// A signed status of what runs and what was last refused.
    pub fn status(&self, topics: &Topics, now: Timestamp) -> Report {
        let status = Status {
            schema_version: SCHEMA_VERSION,
            agent: self.id.clone(),
            at: now,
            applied_generation: self.accepted.as_ref().map(|a| a.generation),
            workloads: self
                .running
                .values()
                .map(|w| WorkloadStatus {
                    service: w.service.clone(),
                    replica: w.replica,
                    artifact: w.artifact.sha256,
                    state: WorkloadState::Running,
                    pid: None,
                    restarts: 0,
                    ports: Default::default(),
                    message: None,
                    health: None,
                    last_exit: None,
                    isolation: None,
                })
                .collect(),
            last_rejection: self.last_rejection.clone(),
            storage_problem: None,
        };
        (
            topics.status(&self.id),
            self.key.sign_json(payload_type::STATUS, &status),
            false,
        )
    }

    /// A signed heartbeat.
    pub fn heartbeat(&self, topics: &Topics, uptime: Duration, now: Timestamp) -> Report {
        let heartbeat = Heartbeat {
            schema_version: SCHEMA_VERSION,
            agent: self.id.clone(),
            at: now,
            uptime_secs: uptime.as_secs(),
            applied_generation: self.accepted.as_ref().map(|a| a.generation),
        };
        (
            topics.heartbeat(&self.id),
            self.key.sign_json(payload_type::HEARTBEAT, &heartbeat),
            false,
        )
    }
}
