//! What the agent reports: a [`Board`] that the runtime, the reconciler and
//! intake write into, and a [`Signer`] that turns it into signed Status,
//! Heartbeat and Presence envelopes.
//!
//! Building an envelope is synchronous and cheap, so the MQTT adapter can
//! build a fresh Status on every ConnAck without awaiting anything.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;
use verge_shared::messages::{
    Heartbeat, LimitMechanism, Presence, Rejection, Resources, SCHEMA_VERSION, Status,
    StorageProblem, StorageReason, WorkloadState, WorkloadStatus, bounded_message, payload_type,
};
use verge_shared::{AgentId, Generation, RegionId, ServiceName, SigningKey, Timestamp};

/// The agent's current view of itself, shared by every task.
#[derive(Default)]
pub struct Board {
    inner: Mutex<BoardState>,
    changed: Notify,
}

#[derive(Clone, Default, PartialEq)]
struct BoardState {
    /// The last desired state intake accepted (and persisted).
    accepted: Option<Generation>,
    /// The last desired state a reconcile pass fully applied; what Status
    /// and Heartbeat report, so "applied" means the workloads match it.
    applied: Option<Generation>,
    last_rejection: Option<Rejection>,
    /// Workloads the runtime owns (started, possibly backing off).
    running: BTreeMap<ServiceName, WorkloadStatus>,
    /// Desired workloads the runtime does not run yet (pending, fetching,
    /// failed to fetch); written by the reconciler.
    waiting: BTreeMap<ServiceName, WorkloadStatus>,
    /// Who currently cannot write for lack of disk space.
    disk_full: BTreeMap<DiskUser, StorageProblem>,
    /// Set while certificate renewal keeps failing close to expiry.
    certificate_warning: Option<String>,
}

/// The parts of the agent that report running out of disk space; each
/// clears its own report once it can write again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiskUser {
    /// Downloads, extractions and workload records (the reconciler).
    Artifacts,
    /// The outbox of Status and telemetry.
    Outbox,
    /// The store of the accepted desired state.
    State,
}

impl Board {
    /// A board for an agent whose store holds `accepted`; nothing is
    /// applied until the first reconcile pass succeeds.
    pub fn new(accepted: Option<Generation>) -> Self {
        let board = Self::default();
        board.lock().accepted = accepted;
        board
    }

    fn lock(&self) -> MutexGuard<'_, BoardState> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies `change`; only a real change wakes the status debouncer, so
    /// the reconciler's periodic pass (which rewrites the same notes) sends
    /// nothing on an idle node.
    fn update(&self, change: impl FnOnce(&mut BoardState)) {
        let changed = {
            let mut state = self.lock();
            let before = state.clone();
            change(&mut state);
            *state != before
        };
        if changed {
            // One waiter (the status debouncer); a stored permit means no change is lost.
            self.changed.notify_one();
        }
    }

    /// Resolves after the next change (or at once if one happened unobserved).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Forgets a change not yet observed: called just before a Status is
    /// built, which includes it. Without this, the changes made while the
    /// sender waited out its debounce sent the same Status a second time.
    pub fn forget_pending_change(&self) {
        use futures_util::FutureExt as _;
        // A stored permit completes the first poll, which consumes it.
        let _ = self.changed.notified().now_or_never();
    }

    pub fn accepted(&self) -> Option<Generation> {
        self.lock().accepted
    }

    pub fn set_accepted(&self, generation: Generation) {
        self.lock().accepted = Some(generation);
    }

    pub fn applied(&self) -> Option<Generation> {
        self.lock().applied
    }

    /// Records a fully applied generation; a repeat is no change.
    pub fn set_applied(&self, generation: Generation) {
        if self.applied() != Some(generation) {
            self.update(|s| s.applied = Some(generation));
        }
    }

    /// The most recent refusal, if any.
    pub fn last_rejection(&self) -> Option<Rejection> {
        self.lock().last_rejection.clone()
    }

    /// Records (or with `None` clears) that certificate renewal keeps failing.
    pub fn set_certificate_warning(&self, warning: Option<String>) {
        self.lock().certificate_warning = warning;
    }

    /// Why certificate renewal keeps failing close to expiry, if it does.
    pub fn certificate_warning(&self) -> Option<String> {
        self.lock().certificate_warning.clone()
    }

    pub fn set_rejection(&self, rejection: Rejection) {
        self.update(|s| s.last_rejection = Some(rejection));
    }

    /// Records the runtime's view of one workload; it supersedes any
    /// reconciler note for the same service.
    pub fn set_running(&self, status: WorkloadStatus) {
        self.update(|s| {
            s.waiting.remove(&status.service);
            s.running.insert(status.service.clone(), status);
        });
    }

    /// Records a health verdict on a workload the runtime owns; a no-op
    /// for one it does not (any more).
    pub fn set_health(&self, service: &ServiceName, health: verge_shared::messages::HealthState) {
        self.update(|s| {
            if let Some(status) = s.running.get_mut(service) {
                status.health = Some(health);
            }
        });
    }

    pub fn remove_running(&self, service: &ServiceName) {
        self.update(|s| {
            s.running.remove(service);
        });
    }

    /// Replaces all reconciler notes at once (one per desired workload the
    /// runtime does not run yet).
    pub fn set_waiting(&self, waiting: BTreeMap<ServiceName, WorkloadStatus>) {
        self.update(|s| s.waiting = waiting);
    }

    /// Records that `user` cannot write for lack of space. A repeat keeps
    /// the time it started, so retries do not count as changes.
    pub fn set_disk_full(&self, user: DiskUser, detail: &str) {
        self.update(|s| {
            let since = s
                .disk_full
                .get(&user)
                .map_or_else(Timestamp::now, |p| p.since);
            s.disk_full.insert(
                user,
                StorageProblem {
                    reason: StorageReason::DiskFull,
                    detail: bounded_message(detail),
                    since,
                },
            );
        });
    }

    /// `user` could write again.
    pub fn clear_disk_full(&self, user: DiskUser) {
        self.update(|s| {
            s.disk_full.remove(&user);
        });
    }

    /// The oldest storage problem, while some part cannot write.
    pub fn storage_problem(&self) -> Option<StorageProblem> {
        self.snapshot().2
    }

    /// The runtime's view of one workload.
    pub fn running(&self, service: &ServiceName) -> Option<WorkloadStatus> {
        self.lock().running.get(service).cloned()
    }

    /// The reconciler's notes on workloads that failed to start.
    pub fn failed_waiting(&self) -> BTreeMap<ServiceName, WorkloadStatus> {
        let s = self.lock();
        s.waiting
            .iter()
            .filter(|(_, w)| w.state == WorkloadState::Failed)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every workload, sorted by service: the runtime's entries take
    /// precedence, except over a failed replacement.
    pub fn workloads(&self) -> Vec<WorkloadStatus> {
        let s = self.lock();
        let mut all = s.waiting.clone();
        for (service, status) in &s.running {
            // A replacement that failed to start (its artifact was refused,
            // say) is what the operator must see; the running predecessor is
            // named in its message.
            let blocked = all
                .get(service)
                .is_some_and(|w| w.state == WorkloadState::Failed && w.artifact != status.artifact);
            if !blocked {
                all.insert(service.clone(), status.clone());
            }
        }
        all.into_values().collect()
    }

    /// What a Status carries besides the workloads; of several storage
    /// problems, the oldest.
    fn snapshot(
        &self,
    ) -> (
        Option<Generation>,
        Option<Rejection>,
        Option<StorageProblem>,
    ) {
        let s = self.lock();
        let storage = s.disk_full.values().min_by_key(|p| p.since).cloned();
        (s.applied, s.last_rejection.clone(), storage)
    }
}

/// A workload that is not running, in `state`, with an optional reason.
pub fn waiting_status(
    workload: &verge_shared::messages::Workload,
    state: WorkloadState,
    message: Option<String>,
) -> WorkloadStatus {
    WorkloadStatus {
        service: workload.service.clone(),
        replica: workload.replica,
        artifact: workload.artifact.sha256,
        state,
        pid: None,
        restarts: 0,
        ports: BTreeMap::new(),
        message,
        health: None,
        last_exit: None,
        isolation: None,
    }
}

/// Who this node is, as announced in Presence.
#[derive(Clone, Debug)]
pub struct Identity {
    pub agent: AgentId,
    pub region: RegionId,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    /// Where the probe listener answers, announced in Presence.
    pub probe_addr: Option<std::net::SocketAddr>,
    /// How workloads' resource limits are enforced, announced in Presence.
    pub limits: Option<LimitMechanism>,
}

/// Signs the agent's documents with its node key.
pub struct Signer {
    key: SigningKey,
    identity: Identity,
    board: std::sync::Arc<Board>,
    started: Instant,
}

impl Signer {
    pub fn new(key: SigningKey, identity: Identity, board: std::sync::Arc<Board>) -> Self {
        Self {
            key,
            identity,
            board,
            started: Instant::now(),
        }
    }

    pub fn agent(&self) -> &AgentId {
        &self.identity.agent
    }

    /// A signed Presence envelope; `online: false` is the Last Will and the
    /// goodbye before a clean disconnect.
    pub fn presence(&self, online: bool) -> Vec<u8> {
        let doc = Presence {
            schema_version: SCHEMA_VERSION,
            agent: self.identity.agent.clone(),
            online,
            at: Timestamp::now(),
            region: self.identity.region.clone(),
            labels: self.identity.labels.clone(),
            capacity: self.identity.capacity,
            public_key: self.key.public_key(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            probe_addr: self.identity.probe_addr,
            limits: self.identity.limits,
        };
        self.key.sign_json(payload_type::PRESENCE, &doc)
    }

    /// A signed Status envelope with every workload.
    pub fn status(&self) -> Vec<u8> {
        self.key
            .sign_json(payload_type::STATUS, &self.status_document())
    }

    pub fn status_document(&self) -> Status {
        let (applied_generation, last_rejection, storage_problem) = self.board.snapshot();
        Status {
            schema_version: SCHEMA_VERSION,
            agent: self.identity.agent.clone(),
            at: Timestamp::now(),
            applied_generation,
            workloads: self.board.workloads(),
            last_rejection,
            storage_problem,
        }
    }

    /// A signed security event.
    pub fn event(
        &self,
        kind: verge_shared::messages::EventKind,
        reason: Option<verge_shared::messages::RejectReason>,
        generation: Option<Generation>,
        detail: &str,
    ) -> Vec<u8> {
        let doc = verge_shared::messages::Event {
            schema_version: SCHEMA_VERSION,
            agent: self.identity.agent.clone(),
            at: Timestamp::now(),
            kind,
            reason,
            generation,
            alarm: None,
            detail: verge_shared::messages::bounded_message(detail),
        };
        self.key.sign_json(payload_type::EVENT, &doc)
    }

    /// A signed `alarm_raised` or `alarm_cleared` event about `alarm`.
    pub fn alarm_event(
        &self,
        transition: verge_shared::alarms::Transition,
        alarm: verge_shared::alarms::AlarmReport,
        detail: &str,
    ) -> Vec<u8> {
        use verge_shared::messages::EventKind;
        let doc = verge_shared::messages::Event {
            schema_version: SCHEMA_VERSION,
            agent: self.identity.agent.clone(),
            at: Timestamp::now(),
            kind: match transition {
                verge_shared::alarms::Transition::Raise => EventKind::AlarmRaised,
                verge_shared::alarms::Transition::Clear => EventKind::AlarmCleared,
            },
            reason: None,
            generation: None,
            alarm: Some(alarm),
            detail: verge_shared::messages::bounded_message(detail),
        };
        self.key.sign_json(payload_type::EVENT, &doc)
    }

    /// A signed latency report of one probing round.
    pub fn latency(&self, samples: Vec<verge_shared::latency::LatencySample>) -> Vec<u8> {
        let doc = verge_shared::latency::LatencyReport {
            schema_version: SCHEMA_VERSION,
            agent: self.identity.agent.clone(),
            at: Timestamp::now(),
            samples,
        };
        self.key
            .sign_json(verge_shared::latency::REPORT_PAYLOAD_TYPE, &doc)
    }

    /// A signed log response within [`MAX_LOG_RESPONSE_BYTES`](verge_shared::logs::MAX_LOG_RESPONSE_BYTES): the oldest
    /// lines are dropped (and `truncated` set) until it fits.
    pub fn log_response(&self, mut response: verge_shared::logs::LogResponse) -> Vec<u8> {
        use verge_shared::logs::{MAX_LOG_RESPONSE_BYTES, RESPONSE_PAYLOAD_TYPE};
        loop {
            let envelope = self.key.sign_json(RESPONSE_PAYLOAD_TYPE, &response);
            if envelope.len() <= MAX_LOG_RESPONSE_BYTES || response.lines.is_empty() {
                return envelope;
            }
            // Escaping can inflate text a lot: drop a share, not one line.
            let drop = response.lines.len().div_ceil(4);
            response.lines.drain(..drop);
            response.truncated = true;
        }
    }

    /// A signed Heartbeat envelope.
    /// A certificate renewal request for a new CSR, signed by the node key.
    pub fn renewal_request(&self, csr_pem: String) -> Vec<u8> {
        let request = verge_shared::enroll::RenewalRequest {
            schema_version: verge_shared::enroll::RENEWAL_SCHEMA_VERSION,
            agent: self.identity.agent.clone(),
            csr_pem,
            at: verge_shared::Timestamp::now(),
        };
        self.key
            .sign_json(verge_shared::enroll::RENEWAL_PAYLOAD_TYPE, &request)
    }

    pub fn heartbeat(&self) -> Vec<u8> {
        let doc = Heartbeat {
            schema_version: SCHEMA_VERSION,
            agent: self.identity.agent.clone(),
            at: Timestamp::now(),
            uptime_secs: self.started.elapsed().as_secs(),
            applied_generation: self.board.applied(),
        };
        self.key.sign_json(payload_type::HEARTBEAT, &doc)
    }
}

/// Where security events go: signed with the node key, queued in the disk
/// outbox for `{prefix}/events/{region}/{agent}`.
#[derive(Clone)]
pub struct EventSink {
    pub signer: std::sync::Arc<Signer>,
    pub outbox: std::sync::Arc<crate::outbox::Outbox>,
    pub topic: String,
}

impl EventSink {
    /// Signs and queues one event; a failure to queue is logged (the event
    /// is then in the log only).
    pub async fn raise(
        &self,
        kind: verge_shared::messages::EventKind,
        reason: Option<verge_shared::messages::RejectReason>,
        generation: Option<Generation>,
        detail: &str,
    ) {
        let envelope = self.signer.event(kind, reason, generation, detail);
        if let Err(e) = self.queue(envelope).await {
            tracing::warn!(agent = %self.signer.agent(), ?kind, error = %e, "Cannot queue a security event; it is in the log only.");
        }
    }

    /// Queues one signed event envelope (durable when this returns).
    pub async fn queue(&self, envelope: Vec<u8>) -> Result<(), String> {
        let (outbox, topic) = (self.outbox.clone(), self.topic.clone());
        match tokio::task::spawn_blocking(move || outbox.push(&topic, &envelope)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use verge_shared::messages::Workload;
    use verge_shared::{Envelope, limits};

    fn workload(service: &str) -> Workload {
        crate::fake::workload(service, service.as_bytes())
    }

    fn identity() -> Identity {
        Identity {
            agent: AgentId::new("edge-1").expect("valid"),
            region: RegionId::new("local").expect("valid"),
            labels: BTreeMap::new(),
            capacity: Resources::default(),
            probe_addr: None,
            limits: None,
        }
    }

    #[test]
    fn status_merges_runtime_and_reconciler_views_and_verifies() {
        let board = Arc::new(Board::new(Some(Generation::new(4))));
        board.set_applied(Generation::new(4));
        let (key, _) = SigningKey::generate().expect("key");
        let public = key.public_key();
        let identity = identity();
        let signer = Signer::new(key, identity, board.clone());
        let (a, b) = (workload("a"), workload("b"));
        board.set_waiting(
            [
                (
                    a.service.clone(),
                    waiting_status(&a, WorkloadState::Fetching, None),
                ),
                (
                    b.service.clone(),
                    waiting_status(&b, WorkloadState::Pending, None),
                ),
            ]
            .into(),
        );
        let mut running = waiting_status(&b, WorkloadState::Running, None);
        running.pid = Some(42);
        board.set_running(running);

        let envelope = Envelope::parse(&signer.status(), limits::MAX_STATUS_BYTES).expect("parse");
        let status: Status = envelope
            .open(payload_type::STATUS, &public)
            .expect("signed by the node key");
        assert_eq!(status.applied_generation, Some(Generation::new(4)));
        let states: Vec<_> = status.workloads.iter().map(|w| w.state).collect();
        assert_eq!(states, [WorkloadState::Fetching, WorkloadState::Running]);

        let presence = Envelope::parse(&signer.presence(false), limits::MAX_PRESENCE_BYTES)
            .expect("parse")
            .open::<Presence>(payload_type::PRESENCE, &public)
            .expect("verify");
        assert!(!presence.online);
        assert_eq!(presence.public_key, public);
        assert!(signer.heartbeat().len() <= limits::MAX_HEARTBEAT_BYTES);
    }

    #[test]
    fn disk_full_is_reported_until_each_user_clears_it() {
        let (key, _) = SigningKey::generate().expect("key");
        let board = Arc::new(Board::new(None));
        let identity = identity();
        let signer = Signer::new(key, identity, board.clone());
        assert_eq!(signer.status_document().storage_problem, None);
        board.set_disk_full(DiskUser::Artifacts, "no room for the artifact");
        let first = signer.status_document().storage_problem.expect("reported");
        assert_eq!(first.reason, StorageReason::DiskFull);
        assert_eq!(first.detail, "no room for the artifact");
        // A retry that fails the same way is the same problem, same start.
        board.set_disk_full(DiskUser::Artifacts, "no room for the artifact");
        board.set_disk_full(DiskUser::Outbox, "no room for a status");
        assert_eq!(signer.status_document().storage_problem, Some(first));
        board.clear_disk_full(DiskUser::Artifacts);
        let left = signer
            .status_document()
            .storage_problem
            .expect("outbox still full");
        assert_eq!(left.detail, "no room for a status");
        board.clear_disk_full(DiskUser::Outbox);
        assert_eq!(signer.status_document().storage_problem, None);
    }

    // Paused time: the timeouts below resolve as soon as nothing else can run.
    #[tokio::test(start_paused = true)]
    async fn only_a_real_change_wakes_the_status_sender() {
        let board = Board::new(None);
        let a = workload("a");
        let note = || {
            [(
                a.service.clone(),
                waiting_status(&a, WorkloadState::Fetching, None),
            )]
            .into()
        };
        board.set_waiting(note());
        // The first change left a permit: consumed at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), board.changed())
            .await
            .expect("a new note is a change");
        board.set_waiting(note());
        board.set_applied(Generation::new(1));
        board.set_applied(Generation::new(1));
        tokio::time::timeout(std::time::Duration::from_secs(5), board.changed())
            .await
            .expect("the new generation is a change");
        // The same notes and generation again: nothing to send.
        board.set_waiting(note());
        board.set_applied(Generation::new(1));
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(5), board.changed())
                .await
                .is_err(),
            "a rewrite of the same state must not wake the sender"
        );
    }

    #[tokio::test]
    async fn a_change_included_in_a_status_does_not_send_it_again() {
        let board = Board::new(None);
        board.set_applied(Generation::new(1));
        board.set_applied(Generation::new(2));
        // The sender is about to build a Status, which shows generation 2.
        board.forget_pending_change();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), board.changed())
                .await
                .is_err(),
            "nothing changed since the status was built"
        );
        board.set_applied(Generation::new(3));
        tokio::time::timeout(std::time::Duration::from_secs(5), board.changed())
            .await
            .expect("a later change still wakes the sender");
    }
}
