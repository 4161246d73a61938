//! Security and alarm events from agents into the events part and onto the
//! watch stream (an alarm event also raises or clears the alarm), and the
//! agents' and the controller's events read back a page at a time for the
//! API.
//!
//! Unlike telemetry, an event is signed by the node's key: it is opened with
//! the key pinned for that node, so only the node itself can report one. Its
//! topic's region must be the node's own.

use serde::Serialize;
use tracing::warn;
use verge_shared::messages::{Event, EventKind, payload_type};
use verge_shared::topic::TelemetryRoute;
use verge_shared::{AgentId, Timestamp, limits};

use super::changes::{Change, ChangeKind, Scope};
use super::composition::App;
use super::events::{EventRecord, EventSource};
use super::ingest::{IngestError, check_header};

/// Most events one page of `GET /api/v1/events` holds.
pub const MAX_EVENT_PAGE: usize = 500;

/// Which events a page holds.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only events after this id (0: from the oldest kept).
    pub after: u64,
    pub node: Option<AgentId>,
    pub region: Option<verge_shared::RegionId>,
    pub source: Option<EventSource>,
    /// The event kind's wire name (`node_offline`, `desired_state_rejected`, ...).
    pub kind: Option<String>,
    pub service: Option<verge_shared::ServiceName>,
}

/// One page of events, oldest first.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub events: Vec<EventRecord>,
    /// Pass as `after` for the next page; `null` when this one is the last
    /// for now (newer events may arrive: ask again with the last id).
    pub next_after: Option<u64>,
}

impl App {
    /// Keeps one signed event from a known node that is not revoked, logs
    /// it, and sends it to watchers of the `event` kind.
    pub(super) fn ingest_event(
        &self,
        route: &TelemetryRoute,
        payload: &[u8],
        now: Timestamp,
    ) -> Result<(), IngestError> {
        if self.nodes.is_revoked(&route.agent) {
            return Err(IngestError::Revoked);
        }
        let event: Event = self.open_pinned(
            &route.agent,
            payload,
            limits::MAX_EVENT_BYTES,
            payload_type::EVENT,
        )?;
        check_header(&route.agent, &event.agent, event.schema_version)?;
        let region = self
            .nodes
            .records()
            .get(&route.agent)
            .map(|node| node.region.clone())
            .ok_or(IngestError::UnknownAgent)?;
        if region != route.region {
            return Err(IngestError::RegionMismatch(route.region.clone()));
        }
        // An alarm report is checked (and raised or cleared) before it is kept.
        if matches!(event.kind, EventKind::AlarmRaised | EventKind::AlarmCleared) {
            self.ingest_alarm_event(&region, &event)?;
        } else {
            warn!(agent = %event.agent, kind = event.kind.as_str(), reason = ?event.reason, detail = %event.detail,
                "The agent reports a security event.");
        }
        let action = event.kind.as_str();
        let record = self.events.push(region.clone(), event, now);
        self.record_change(Change {
            kind: ChangeKind::Event,
            action,
            regions: Scope::Of(vec![region]),
            services: record
                .service
                .clone()
                .map_or(Scope::Nothing, |s| Scope::Of(vec![s])),
            object: serde_json::to_string(&record).unwrap_or_else(|_| "null".to_owned()),
        });
        Ok(())
    }

    /// Up to `limit` (at most [`MAX_EVENT_PAGE`]) events that `filter`
    /// keeps, oldest first.
    pub fn events(&self, filter: &EventFilter, limit: usize) -> EventPage {
        let limit = limit.clamp(1, MAX_EVENT_PAGE);
        let (events, more) = self.events.after(filter.after, limit, |r| {
            filter
                .node
                .as_ref()
                .is_none_or(|n| r.node.as_ref() == Some(n))
                && filter
                    .region
                    .as_ref()
                    .is_none_or(|g| r.region.as_ref() == Some(g))
                && filter.source.is_none_or(|s| s == r.source)
                && filter.kind.as_ref().is_none_or(|k| k == r.kind.as_str())
                && filter
                    .service
                    .as_ref()
                    .is_none_or(|s| r.service.as_ref() == Some(s))
        });
        let next_after = more.then(|| events.last().map(|r| r.id)).flatten();
        EventPage { events, next_after }
    }
}
