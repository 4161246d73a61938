//! Intake of agent messages: presence (pins the node key at first contact),
//! heartbeat and status; telemetry goes on to `telemetry_ingest.rs`.
//! Anything unverifiable is logged, counted and ignored.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use tracing::{debug, info, warn};
use verge_shared::latency::{self, LatencyReport};
use verge_shared::messages::{Heartbeat, Presence, SCHEMA_VERSION, Status, payload_type};
use verge_shared::topic::Channel;
use verge_shared::{AgentId, Envelope, Timestamp, VerifyError, limits};

use super::composition::App;
use super::held::HeldMessage;
use super::logs::LogResponseError;
use super::metrics::{Kind, Outcome, Reason};
use crate::store::{Durability, NodeRecord, StoreError};

/// Why an agent message was ignored.
#[derive(Debug, thiserror::Error)]
pub(super) enum IngestError {
    #[error("topic is not an agent topic of this controller")]
    UnknownTopic,
    #[error(transparent)]
    LogResponse(#[from] LogResponseError),
    #[error("controllers do not read desired-state topics")]
    NotForUs,
    #[error(transparent)]
    Envelope(#[from] VerifyError),
    #[error("payload names agent {0}, not the topic's agent")]
    AgentMismatch(AgentId),
    #[error("schema_version {0} is not supported")]
    Schema(u32),
    #[error("the agent id {0:?} is reserved for the controller's probe listener")]
    ReservedId(&'static str),
    #[error("no presence has been seen from this agent, so its key is unknown")]
    UnknownAgent,
    #[error("the node is revoked")]
    Revoked,
    #[error("invalid document: {0}")]
    Invalid(String),
    #[error("{0} bytes is over the {1}-byte bound")]
    TooLarge(usize, usize),
    #[error("payload names region {0}, not the topic's")]
    RegionMismatch(verge_shared::RegionId),
    #[error("seq {seq} is not above {last}, the newest kept: a duplicate or out of order")]
    StaleSeq { seq: u64, last: u64 },
    #[error("refused alarm report: {0}")]
    Alarm(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IngestError {
    /// A short, fixed name for the metrics' `reason` label.
    fn reason(&self) -> &'static str {
        match self {
            IngestError::UnknownTopic => "unknown_topic",
            IngestError::LogResponse(_) => "log_response",
            IngestError::NotForUs => "not_for_us",
            IngestError::Envelope(_) => "bad_envelope",
            IngestError::AgentMismatch(_) => "agent_mismatch",
            IngestError::Schema(_) => "schema",
            IngestError::ReservedId(_) => "reserved_id",
            IngestError::UnknownAgent => "unknown_agent",
            IngestError::Revoked => "revoked",
            IngestError::Invalid(_) => "invalid",
            IngestError::TooLarge(..) => "too_large",
            IngestError::RegionMismatch(_) => "region_mismatch",
            IngestError::StaleSeq { .. } => "stale_seq",
            IngestError::Alarm(_) => "alarm",
            IngestError::Store(_) => "store",
        }
    }
}

pub(super) fn check_header(
    topic_agent: &AgentId,
    agent: &AgentId,
    schema_version: u32,
) -> Result<(), IngestError> {
    check_versioned(topic_agent, agent, schema_version, SCHEMA_VERSION)
}

/// [`check_header`] for a document with a schema version of its own
/// (telemetry's is `expected`).
pub(super) fn check_versioned(
    topic_agent: &AgentId,
    agent: &AgentId,
    schema_version: u32,
    expected: u32,
) -> Result<(), IngestError> {
    if agent != topic_agent {
        return Err(IngestError::AgentMismatch(agent.clone()));
    }
    if agent.as_str() == latency::CONTROLLER_TARGET {
        return Err(IngestError::ReservedId(latency::CONTROLLER_TARGET));
    }
    if schema_version != expected {
        return Err(IngestError::Schema(schema_version));
    }
    Ok(())
}

impl App {
    /// Handles one message from the broker. Never fails: problems are logged
    /// at warn and counted. A signed message from an agent whose presence
    /// has not been processed yet is held (`held.rs`) and handled right
    /// after that presence.
    pub fn ingest(&self, topic: &str, payload: &[u8], now: Timestamp) {
        self.handle(topic, payload, now, false);
    }

    /// [`App::ingest`], or with `replay` a held message handled again.
    fn handle(&self, topic: &str, payload: &[u8], now: Timestamp, replay: bool) {
        let topics = &self.settings.topics;
        let route = topics.route(topic);
        let telemetry = match route {
            Some(_) => None,
            None => topics.telemetry_route(topic),
        };
        let event = match (&route, &telemetry) {
            (None, None) => topics.events_route(topic),
            _ => None,
        };
        let kind = match (&route, &telemetry, &event) {
            (Some(r), _, _) => r.channel.segment(),
            (None, Some(_), _) => "telemetry",
            (None, None, Some(_)) => "event",
            (None, None, None) => "unknown",
        };
        if !replay {
            self.metrics.received.get_or_create(&Kind { kind }).inc();
        }
        let result = match &route {
            None => match (&telemetry, &event) {
                (Some(telemetry), _) => self.ingest_telemetry(telemetry, payload, now),
                (None, Some(event)) => self.ingest_event(event, payload, now),
                (None, None) => Err(IngestError::UnknownTopic),
            },
            Some(route) if self.nodes.is_revoked(&route.agent) => Err(IngestError::Revoked),
            Some(route) => match route.channel {
                Channel::Presence => self.ingest_presence(&route.agent, payload, now),
                Channel::Heartbeat => self.ingest_heartbeat(&route.agent, payload, now),
                Channel::Status => self.ingest_status(&route.agent, payload, now),
                Channel::Desired => Err(IngestError::NotForUs),
                Channel::Latency => self.ingest_latency(&route.agent, payload, now),
                Channel::Probes | Channel::LogRequest => Err(IngestError::NotForUs),
                Channel::LogResponse => self
                    .ingest_log_response(&route.agent, payload)
                    .map_err(IngestError::from),
            },
        };
        // Signed messages before their agent's presence wait for it;
        // telemetry is informational and comes again next interval.
        let signed_by = match (&route, &event) {
            (Some(r), _) => Some(&r.agent),
            (None, Some(e)) => Some(&e.agent),
            (None, None) => None,
        };
        if !replay
            && matches!(result, Err(IngestError::UnknownAgent))
            && signed_by.is_some_and(|agent| self.hold(agent, topic, payload, now))
        {
            return;
        }
        // Telemetry is unsigned: it counts no verification.
        let verified = match &result {
            _ if telemetry.is_some() => None,
            Ok(()) => Some("ok"),
            Err(IngestError::Envelope(_)) => Some("failed"),
            Err(_) => None,
        };
        if let Some(result) = verified {
            self.metrics
                .verifications
                .get_or_create(&Outcome { result })
                .inc();
        }
        match result {
            Ok(()) => {
                if let Some(r) = route.as_ref().filter(|r| r.channel == Channel::Presence) {
                    self.replay_held(&r.agent, now);
                }
            }
            Err(e) => {
                let agent = match (&route, telemetry.as_ref().or(event.as_ref())) {
                    (Some(r), _) => r.agent.as_str(),
                    (None, Some(t)) => t.agent.as_str(),
                    (None, None) => "?",
                };
                self.count_refusal(agent, topic, payload.len(), &e);
            }
        }
    }

    /// Counts a message the MQTT client dropped before ingest because its
    /// queue was full (`reason`: `queue_full`, or `telemetry_backlog` for
    /// telemetry beyond half of it).
    pub fn count_dropped_before_ingest(&self, reason: &'static str) {
        self.metrics.refused.get_or_create(&Reason { reason }).inc();
        self.n_rejected.fetch_add(1, Ordering::Relaxed);
    }

    fn count_refusal(&self, agent: &str, topic: &str, bytes: usize, e: &IngestError) {
        self.metrics
            .refused
            .get_or_create(&Reason { reason: e.reason() })
            .inc();
        self.n_rejected.fetch_add(1, Ordering::Relaxed);
        let topic: String = topic.chars().take(200).collect();
        // Redelivered telemetry is routine after every reconnect.
        if matches!(e, IngestError::StaleSeq { .. }) {
            debug!(agent, topic, error = %e, "Ignored an agent message.");
        } else {
            warn!(agent, topic, bytes, error = %e, "Ignored an agent message.");
        }
    }

    /// Holds a message from `agent` until its presence; `false` when the
    /// held messages' bounds leave no room for it.
    fn hold(&self, agent: &AgentId, topic: &str, payload: &[u8], now: Timestamp) -> bool {
        let outcome = self.held.hold(HeldMessage {
            agent: agent.clone(),
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            received: now,
        });
        self.count_expired(outcome.expired);
        if outcome.held {
            self.metrics.held.inc();
            debug!(agent = %agent, topic, "Held a message that came before its agent's presence.");
        }
        outcome.held
    }

    /// Counts held messages whose agent's presence never came.
    pub(super) fn count_expired(&self, expired: usize) {
        if expired > 0 {
            self.metrics
                .refused
                .get_or_create(&Reason {
                    reason: "held_expired",
                })
                .inc_by(expired as u64);
            self.n_rejected.fetch_add(expired as u64, Ordering::Relaxed);
            warn!(
                messages = expired,
                "Dropped agent messages whose agent's presence did not come within the hold time."
            );
        }
    }

    /// Handles what `agent` sent before its presence, in arrival order, as
    /// heard at `now` (the presence's time, so that the node's last contact
    /// never goes back).
    fn replay_held(&self, agent: &AgentId, now: Timestamp) {
        for message in self.held.take(agent) {
            self.metrics.replayed.inc();
            self.handle(&message.topic, &message.payload, now, true);
        }
    }

    fn ingest_presence(
        &self,
        agent: &AgentId,
        payload: &[u8],
        now: Timestamp,
    ) -> Result<(), IngestError> {
        let envelope = Envelope::parse(payload, limits::MAX_PRESENCE_BYTES)?;
        // First contact: the envelope must verify with the key it carries,
        // which is then pinned. Afterwards only the pinned key counts.
        let key = match self.nodes.pinned_key(agent) {
            Some(key) => key,
            None => envelope.peek_unverified::<Presence>()?.public_key,
        };
        let presence: Presence = envelope.open(payload_type::PRESENCE, &key)?;
        check_header(agent, &presence.agent, presence.schema_version)?;
        // An enrolled node stays in the region its token bound it to.
        if let Some(identity) = self.store.identity(agent)?
            && identity.region != presence.region
        {
            return Err(IngestError::Invalid(format!(
                "presence names region {}, but the node enrolled in {}",
                presence.region, identity.region
            )));
        }

        let (record, changed, pinned, was_online) = {
            let mut nodes = self.nodes.records();
            let pinned = !nodes.contains_key(agent);
            let node = nodes.entry(agent.clone()).or_insert_with(|| NodeRecord {
                id: agent.clone(),
                region: presence.region.clone(),
                labels: BTreeMap::new(),
                capacity: presence.capacity,
                public_key: key,
                version: presence.version.clone(),
                online: false,
                // Never seen online: no failover grace to give.
                offline_since: Some(Timestamp::from_unix_millis(0)),
                last_seen: None,
                applied_generation: None,
                last_status: None,
                cordon: None,
                probe_addr: presence.probe_addr,
                limits: presence.limits,
                revoked: false,
            });
            let was_online = node.online;
            let changed = pinned
                || node.region != presence.region
                || node.labels != presence.labels
                || node.capacity != presence.capacity
                || node.online != presence.online
                || node.probe_addr != presence.probe_addr;
            node.region = presence.region.clone();
            node.labels = presence.labels.clone();
            node.capacity = presence.capacity;
            node.version = presence.version.clone();
            node.probe_addr = presence.probe_addr;
            node.limits = presence.limits;
            if presence.online {
                node.online = true;
                node.offline_since = None;
                node.last_seen = Some(now);
            } else if node.online {
                node.online = false;
                node.offline_since = Some(now);
            }
            (node.clone(), changed, pinned, was_online)
        };
        if pinned {
            info!(agent = %agent, key_id = %key.key_id(), region = %record.region, "Pinned the key of a new agent.");
        }
        if changed {
            info!(agent = %agent, online = record.online, region = %record.region, "Node registry changed.");
            self.store.put_node(&record, Durability::Flush)?;
            self.deployment.request_replan();
            let action = match (pinned, was_online, record.online) {
                (true, _, _) => "registered",
                (false, false, true) => "online",
                (false, true, false) => "offline",
                (false, _, _) => "updated",
            };
            self.node_changed(agent, action);
        }
        Ok(())
    }

    /// Records how long ago an agent signed a message the ingest task is
    /// handling now (`verge_ingest_lag_seconds`): the broker, the MQTT
    /// client and the ingest queue together. Presence is left out: it is
    /// retained and its Last Will is signed at connection time, so its
    /// `at` is old by design. A clock ahead of ours counts as no lag.
    pub(super) fn observe_lag(&self, at: Timestamp, now: Timestamp) {
        self.metrics
            .ingest_lag_seconds
            .observe(now.saturating_since(at).as_secs_f64());
    }

    /// Verifies a heartbeat or status with the agent's pinned key.
    pub(super) fn open_pinned<T: serde::de::DeserializeOwned>(
        &self,
        agent: &AgentId,
        payload: &[u8],
        limit: usize,
        payload_type: &str,
    ) -> Result<T, IngestError> {
        let envelope = Envelope::parse(payload, limit)?;
        let key = self
            .nodes
            .pinned_key(agent)
            .ok_or(IngestError::UnknownAgent)?;
        Ok(envelope.open(payload_type, &key)?)
    }

    fn ingest_heartbeat(
        &self,
        agent: &AgentId,
        payload: &[u8],
        now: Timestamp,
    ) -> Result<(), IngestError> {
        let heartbeat: Heartbeat = self.open_pinned(
            agent,
            payload,
            limits::MAX_HEARTBEAT_BYTES,
            payload_type::HEARTBEAT,
        )?;
        check_header(agent, &heartbeat.agent, heartbeat.schema_version)?;
        self.observe_lag(heartbeat.at, now);
        // Health changes are noticed by the periodic health check; a heartbeat
        // alone never triggers a re-plan.
        if let Some(node) = self.nodes.records().get_mut(agent) {
            node.last_seen = Some(now);
            if heartbeat.applied_generation.is_some() {
                node.applied_generation = heartbeat.applied_generation;
            }
        }
        self.observe_clock(agent, heartbeat.at, now);
        Ok(())
    }

    fn ingest_latency(
        &self,
        agent: &AgentId,
        payload: &[u8],
        now: Timestamp,
    ) -> Result<(), IngestError> {
        let report: LatencyReport = self.open_pinned(
            agent,
            payload,
            latency::MAX_REPORT_BYTES,
            latency::REPORT_PAYLOAD_TYPE,
        )?;
        check_header(agent, &report.agent, report.schema_version)?;
        self.observe_lag(report.at, now);
        report.validate().map_err(IngestError::Invalid)?;
        // Reports wait in the agent's outbox while its uplink is down; samples
        // older than the window would pass for fresh ones, so they are dropped.
        if now.saturating_since(report.at) > self.settings.placement.latency_window {
            debug!(agent = %agent, at = %report.at, "Dropped a latency report older than the window.");
            return Ok(());
        }
        // A re-plan follows on the next health tick if the figures moved a replica.
        self.record_latency(&report, now);
        Ok(())
    }

    fn ingest_status(
        &self,
        agent: &AgentId,
        payload: &[u8],
        now: Timestamp,
    ) -> Result<(), IngestError> {
        let status: Status = self.open_pinned(
            agent,
            payload,
            limits::MAX_STATUS_BYTES,
            payload_type::STATUS,
        )?;
        check_header(agent, &status.agent, status.schema_version)?;
        self.observe_lag(status.at, now);
        let changed = self.nodes.records().get_mut(agent).map(|node| {
            // Every status repeats the last rejection; report each one once.
            let previous = node.last_status.as_ref().and_then(|s| s.last_rejection.as_ref());
            if let Some(rejection) = &status.last_rejection
                && previous != Some(rejection)
            {
                warn!(agent = %agent, reason = ?rejection.reason, detail = %rejection.detail, "The agent reports a rejected desired state.");
            }
            let had_problem = node
                .last_status
                .as_ref()
                .is_some_and(|s| s.storage_problem.is_some());
            match &status.storage_problem {
                Some(problem) if !had_problem => {
                    warn!(agent = %agent, reason = ?problem.reason, detail = %problem.detail, "The agent reports a storage problem.");
                }
                None if had_problem => info!(agent = %agent, "The agent's storage problem cleared."),
                _ => {}
            }
            node.last_seen = Some(now);
            if status.applied_generation.is_some() {
                node.applied_generation = status.applied_generation;
            }
            // Agents repeat their status on reconnect; only news is a change.
            let news = node
                .last_status
                .as_ref()
                .is_none_or(|old| Status { at: status.at, ..old.clone() } != status);
            node.last_status = Some(status);
            (node.clone(), news)
        });
        if let Some((record, news)) = changed {
            // Kept for the API across restarts; losing the latest one is harmless.
            self.store.put_node(&record, Durability::Lazy)?;
            if news {
                self.node_changed(agent, "status");
            }
        }
        Ok(())
    }
}
