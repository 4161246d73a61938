//! `App`: the parts composed, with the settings and handles every use case shares.
//!
//! The use-case files (`catalog.rs`, `reconcile.rs`, `ingest.rs`, …) each add
//! an `impl App` block over these fields; this file holds no use case.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use verge_shared::{AgentId, PublicKey, SigningKey, Timestamp};

use super::access::Access;
use super::alarms::Alarms;
use super::changes::Changes;
use super::clock::Clock;
use super::deployment::Deployment;
use super::events::{EVENT_HISTORY, EventLog};
use super::held::Held;
use super::identity::Identity;
use super::metrics::{Kind, Metrics};
use super::nodes::Nodes;
use super::probes::Probes;
use super::sessions::Sessions;
use super::telemetry::TelemetryHistory;
use super::types::{Outgoing, Settings};
use super::waiting::Pending;
use crate::artifacts::ArtifactFiles;
use crate::store::{Store, StoreError};
use crate::trust::TrustState;

/// The controller's use cases over one store and one signing key.
pub struct App {
    pub(super) store: Arc<dyn Store>,
    pub(super) files: ArtifactFiles,
    pub(super) key: SigningKey,
    pub(super) trust: Arc<TrustState>,
    pub(super) settings: Settings,
    pub(super) outbox: mpsc::UnboundedSender<Outgoing>,
    /// Every time-based decision reads this clock.
    pub(super) clock: Arc<dyn Clock>,
    pub(super) n_rejected: AtomicU64,
    /// The parts, each with its own state and lock (lower parts first).
    pub(super) nodes: Nodes,
    pub(super) probes: Probes,
    pub(super) identity: Identity,
    pub(super) logs: Pending,
    pub(super) deployment: Deployment,
    pub(super) access: Access,
    pub(super) metrics: Metrics,
    pub(super) changes: Changes,
    pub(super) sessions: Sessions,
    pub(super) telemetry: TelemetryHistory,
    pub(super) events: EventLog,
    pub(super) alarms: Alarms,
    pub(super) held: Held,
}

impl App {
    /// Loads the node registry; publishing goes to `outbox`, and every
    /// time-based decision (health, grace, expiry) reads `clock`.
    pub fn new(
        store: Arc<dyn Store>,
        files: ArtifactFiles,
        key: SigningKey,
        trust: Arc<TrustState>,
        settings: Settings,
        outbox: mpsc::UnboundedSender<Outgoing>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, StoreError> {
        let nodes = Nodes::new(store.nodes()?, clock.now(), settings.nodes);
        let deployment = Deployment::default();
        for desired in store.desired_states()? {
            deployment.stored(&desired.agent, desired.generation);
        }
        let changes = Changes::new(clock.now(), settings.watch);
        let sessions = Sessions::new(settings.console_idle_timeout);
        let telemetry = TelemetryHistory::new(settings.nodes.telemetry_history);
        let alarms = Alarms::new(
            store.active_alarms()?,
            store.alarm_history()?,
            store.alarm_meta()?,
            settings.alarms,
            clock.now(),
        );
        Ok(Arc::new(Self {
            store,
            files,
            key,
            trust,
            settings,
            outbox,
            clock,
            n_rejected: AtomicU64::new(0),
            nodes,
            probes: Probes::default(),
            identity: Identity::default(),
            logs: Pending::default(),
            deployment,
            access: Access::default(),
            metrics: Metrics::default(),
            changes,
            sessions,
            telemetry,
            events: EventLog::new(EVENT_HISTORY),
            alarms,
            held: Held::default(),
        }))
    }

    /// The time by the app's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// How many agent messages were ignored (unsigned, oversize, malformed, ...).
    pub fn rejected_messages(&self) -> u64 {
        self.n_rejected.load(Ordering::Relaxed)
    }

    /// Hands `message` to the MQTT client, counted as `kind`; `false` when
    /// the client is gone (shutting down).
    pub(super) fn send(&self, kind: &'static str, message: Outgoing) -> bool {
        self.metrics.published.get_or_create(&Kind { kind }).inc();
        self.outbox.send(message).is_ok()
    }

    /// Asks the background loop to republish every desired state (on ConnAck).
    pub fn request_republish(&self) {
        self.deployment.request_republish();
    }

    /// Whether messages from this node are to be ignored.
    pub(super) fn is_revoked(&self, agent: &AgentId) -> bool {
        self.nodes.is_revoked(agent)
    }
}
