//! The events part: the security events agents sign and publish (a refused
//! desired state or trust bundle, a new trust bundle, a generation reset, a
//! certificate that cannot be renewed), the most recent of them fleet-wide
//! in a bounded ring, each with an id that only grows, for
//! `GET /api/v1/events` and the watch stream.
//!
//! In memory only: a restarted controller starts with an empty ring (the
//! agents' outboxes do not send old events again). A part of the app: the
//! use case checks the envelope and the node before it pushes; its lock is a
//! leaf, held for one push or copy.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use verge_shared::messages::{Event, EventKind, RejectReason};
use verge_shared::{AgentId, Generation, RegionId, Timestamp};

use super::types::lock;

/// Events kept fleet-wide; a few hundred bytes each, so about 3 MB.
pub(super) const EVENT_HISTORY: usize = 10_000;

/// One event as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EventRecord {
    /// Grows by one per event the controller kept (not the agent's).
    pub id: u64,
    pub node: AgentId,
    pub region: RegionId,
    /// When the agent saw it happen, by its clock.
    pub at: Timestamp,
    /// When the controller received it.
    pub received_at: Timestamp,
    pub kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    pub detail: String,
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
        let mut ring = lock(&self.ring);
        ring.0 += 1;
        let record = EventRecord {
            id: ring.0,
            node: event.agent,
            region,
            at: event.at,
            received_at: now,
            kind: event.kind,
            reason: event.reason,
            generation: event.generation,
            detail: event.detail,
        };
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
        let only_b = |r: &EventRecord| r.node.as_str() == "edge-b";
        let (page, more) = log.after(0, 3, only_b);
        assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 4, 6]);
        assert!(more);
        let (rest, more) = log.after(6, 3, only_b);
        assert_eq!(rest.iter().map(|r| r.id).collect::<Vec<_>>(), [8, 10]);
        assert!(!more);
    }
}
