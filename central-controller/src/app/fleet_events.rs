//! Fleet lifecycle events: what the controller saw or did, kept in the
//! events part with the agents' events (one id sequence), published QoS 1
//! not retained on `fleet/events/{region|_fleet}`. They are not watch
//! changes of their own: what they report already is one (a service, a
//! replica, a node, an alarm).

use verge_shared::alarms::AlarmReport;
use verge_shared::fleet::{FLEET_EVENT_SCHEMA_VERSION, FleetEvent, FleetEventKind};
use verge_shared::{AgentId, RegionId, ServiceName, Sha256Digest};

use super::alarms::bounded_text;
use super::composition::App;
use super::events::{EventRecord, EventSource, RecordKind};
use super::types::Outgoing;

/// A fleet event as a use case describes it, before it has an id.
#[derive(Clone, Debug)]
pub(super) struct FleetNote {
    pub(super) kind: FleetEventKind,
    /// The node's region for node events; `None` for fleet-wide ones.
    pub(super) region: Option<RegionId>,
    pub(super) node: Option<AgentId>,
    pub(super) service: Option<ServiceName>,
    pub(super) replica: Option<u32>,
    pub(super) release: Option<Sha256Digest>,
    pub(super) alarm: Option<AlarmReport>,
    pub(super) actor: Option<String>,
    pub(super) detail: String,
}

impl FleetNote {
    /// An event of `kind` about nothing in particular yet.
    pub(super) fn new(kind: FleetEventKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            region: None,
            node: None,
            service: None,
            replica: None,
            release: None,
            alarm: None,
            actor: None,
            detail: detail.into(),
        }
    }
}

impl App {
    /// Keeps, publishes and records one fleet event.
    pub(super) fn fleet_event(&self, note: FleetNote) {
        let now = self.now();
        let record = self.events.push_record(EventRecord {
            id: 0,
            source: EventSource::Controller,
            node: note.node,
            region: note.region,
            at: now,
            received_at: now,
            kind: RecordKind::Controller(note.kind),
            reason: None,
            generation: None,
            service: note.service,
            replica: note.replica,
            release: note.release,
            alarm: note.alarm,
            actor: note.actor,
            detail: bounded_text(&note.detail),
        });
        let event = FleetEvent {
            schema_version: FLEET_EVENT_SCHEMA_VERSION,
            id: record.id,
            at: now,
            kind: note.kind,
            region: record.region.clone(),
            node: record.node.clone(),
            service: record.service.clone(),
            replica: record.replica,
            release: record.release,
            alarm: record.alarm.clone(),
            actor: record.actor.clone(),
            detail: record.detail.clone(),
        };
        self.send(
            "fleet_event",
            Outgoing {
                topic: self.settings.topics.fleet_events(record.region.as_ref()),
                payload: serde_json::to_vec(&event).unwrap_or_default(),
                retain: false,
            },
        );
    }
}
