//! The events part: the security and alarm events agents sign and publish
//! (a refused desired state or trust bundle, a new trust bundle, a
//! generation reset, a certificate that cannot be renewed, an alarm raised
//! or cleared) and the controller's own fleet lifecycle events (a service
//! created, a replica moved, a node offline, an alarm raised), the most
//! recent of them fleet-wide in one bounded ring, each with an id that only
//! grows, for `GET /api/v1/events` and the watch stream.
//!
//! In memory only: a restarted controller starts with an empty ring (the
//! agents' outboxes do not send old events again). A part of the app: the
//! use case checks the envelope and the node before it pushes; its lock is a
//! leaf, held for one push or copy.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use verge_shared::alarms::AlarmReport;
use verge_shared::fleet::FleetEventKind;
use verge_shared::messages::{Event, EventKind, RejectReason};
use verge_shared::{AgentId, Generation, RegionId, ServiceName, Sha256Digest, Timestamp};

use super::types::lock;

/// Events kept fleet-wide; a few hundred bytes each, so about 3 MB.
pub(super) const EVENT_HISTORY: usize = 10_000;

/// Who reported an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    /// A node, signed by its key.
    Node,
    /// The controller: a fleet lifecycle event.
    Controller,
}

impl EventSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Node => "node",
            EventSource::Controller => "controller",
        }
    }
}

/// What happened: a node's event kind or a fleet event kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RecordKind {
    Node(EventKind),
    Controller(FleetEventKind),
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Node(kind) => kind.as_str(),
            RecordKind::Controller(kind) => kind.as_str(),
        }
    }
}

/// One event as the API shows it: a node's (`source: node`) or the
/// controller's (`source: controller`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EventRecord {
    /// Grows by one per event the controller kept (not the agent's), in
    /// one sequence for both sources.
    pub id: u64,
    pub source: EventSource,
    /// The node that reported it, or that a fleet event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<AgentId>,
    /// The node's region; absent for fleet-wide events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<RegionId>,
    /// When it happened: for a node's event, by the node's clock.
    pub at: Timestamp,
    /// When the controller received (or recorded) it.
    pub received_at: Timestamp,
    #[schema(value_type = String)]
    pub kind: RecordKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<Sha256Digest>,
    /// Which alarm, for the `alarm_*` kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm: Option<AlarmReport>,
    /// Who did it, for what an operator did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub detail: String,
}

impl EventRecord {
    /// A node's signed event from `region`, received at `now`, before it
    /// has its id.
    pub(super) fn from_node(region: RegionId, event: Event, now: Timestamp) -> Self {
        let (service, replica) = match &event.alarm {
            Some(report) => (report.entity.service.clone(), report.entity.replica),
            None => (None, None),
        };
        Self {
            id: 0,
            source: EventSource::Node,
            node: Some(event.agent),
            region: Some(region),
            at: event.at,
            received_at: now,
            kind: RecordKind::Node(event.kind),
            reason: event.reason,
            generation: event.generation,
            service,
            replica,
            release: None,
            alarm: event.alarm,
            actor: None,
            detail: event.detail,
        }
    }
}

/// The most recent events, oldest first.
#[derive(Debug)]
pub(super) struct EventLog {
    limit: usize,
    ring: Mutex<(u64, VecDeque<EventRecord>)>,
}

impl EventLog {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            ring: Mutex::new((0, VecDeque::new())),
        }
    }

    /// Keeps `event` from `region` as the newest, dropping the oldest
    /// beyond the limit; returns it with its id.
    pub(super) fn push(&self, region: RegionId, event: Event, now: Timestamp) -> EventRecord {
        self.push_record(EventRecord::from_node(region, event, now))
    }

    /// Keeps `record` as the newest with the next id (whatever its `id`
    /// said), dropping the oldest beyond the limit; returns it with its id.
    pub(super) fn push_record(&self, mut record: EventRecord) -> EventRecord {
        let mut ring = lock(&self.ring);
        ring.0 += 1;
        record.id = ring.0;
        if ring.1.len() == self.limit {
            ring.1.pop_front();
        }
        ring.1.push_back(record.clone());
        record
    }

    /// Up to `limit` events after id `after` that `keep` accepts, oldest
    /// first, and whether more follow.
    pub(super) fn after(
        &self,
        after: u64,
        limit: usize,
        keep: impl Fn(&EventRecord) -> bool,
    ) -> (Vec<EventRecord>, bool) {
        let ring = lock(&self.ring);
        // Ids are consecutive in the ring: skip straight to the first newer.
        let start = ring
            .1
            .front()
            .map_or(0, |first| after.saturating_sub(first.id - 1))
            .min(ring.1.len() as u64) as usize;
        let mut found = ring.1.range(start..).filter(|r| keep(r));
        let page: Vec<EventRecord> = found.by_ref().take(limit).cloned().collect();
        let more = found.next().is_some();
        (page, more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(agent: &str, detail: &str) -> Event {
        Event {
            schema_version: verge_shared::messages::SCHEMA_VERSION,
            agent: AgentId::new(agent).expect("id"),
            at: Timestamp::from_unix_millis(1),
            kind: EventKind::DesiredStateRejected,
            reason: Some(RejectReason::BadSignature),
            generation: None,
            alarm: None,
            detail: detail.into(),
        }
    }

    fn region() -> RegionId {
        RegionId::new("eu").expect("region")
    }

    #[test]
    fn keeps_the_newest_up_to_the_limit_with_growing_ids() {
        let log = EventLog::new(3);
        for i in 0..5 {
            let record = log.push(
                region(),
                event("edge-a", &i.to_string()),
                Timestamp::from_unix_millis(2),
            );
            assert_eq!(record.id, i + 1);
        }
        let (all, more) = log.after(0, 10, |_| true);
        assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(!more);
        let (page, more) = log.after(3, 1, |_| true);
        assert_eq!((page[0].id, more), (4, true));
        assert!(log.after(5, 10, |_| true).0.is_empty());
        assert!(log.after(u64::MAX, 10, |_| true).0.is_empty());
    }

    #[test]
    fn a_filter_pages_over_what_it_keeps() {
        let log = EventLog::new(100);
        for i in 0..10 {
            let agent = if i % 2 == 0 { "edge-a" } else { "edge-b" };
            log.push(region(), event(agent, "x"), Timestamp::from_unix_millis(2));
        }
        let only_b = |r: &EventRecord| r.node.as_ref().is_some_and(|n| n.as_str() == "edge-b");
        let (page, more) = log.after(0, 3, only_b);
        assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 4, 6]);
        assert!(more);
        let (rest, more) = log.after(6, 3, only_b);
        assert_eq!(rest.iter().map(|r| r.id).collect::<Vec<_>>(), [8, 10]);
        assert!(!more);
    }
}
