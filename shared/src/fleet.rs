//! Fleet lifecycle events: what the controller saw or did (a service
//! created, a replica moved, a node offline, a release uploaded, an alarm
//! raised), published on [`Topics::fleet_events`](crate::topic::Topics::fleet_events)
//! for consumers and listed with the agents' own events at
//! `GET /api/v1/events`.

use serde::{Deserialize, Serialize};

use crate::alarms::AlarmReport;
use crate::digest::Sha256Digest;
use crate::id::{AgentId, RegionId, ServiceName};
use crate::time::Timestamp;

/// The version of the [`FleetEvent`] document.
pub const FLEET_EVENT_SCHEMA_VERSION: u32 = 1;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum FleetEventKind {
    ServiceCreated,
    ServiceUpdated,
    ServiceDeleted,
    /// A replica was given a node for the first time.
    ReplicaPlaced,
    /// A replica left one node for another (`detail` says why).
    ReplicaMoved,
    /// A replica has no node (`detail` carries the scheduler's reason).
    ReplicaUnplaced,
    NodeEnrolled,
    NodeOnline,
    NodeOffline,
    NodeCordoned,
    NodeUncordoned,
    NodeDrained,
    NodeRevoked,
    ReleaseUploaded,
    TrustBundleInstalled,
    AlarmRaised,
    AlarmCleared,
    AlarmAcknowledged,
    AlarmSuppressed,
    AlarmUnsuppressed,
}

impl FleetEventKind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [FleetEventKind] = &[
        FleetEventKind::ServiceCreated,
        FleetEventKind::ServiceUpdated,
        FleetEventKind::ServiceDeleted,
        FleetEventKind::ReplicaPlaced,
        FleetEventKind::ReplicaMoved,
        FleetEventKind::ReplicaUnplaced,
        FleetEventKind::NodeEnrolled,
        FleetEventKind::NodeOnline,
        FleetEventKind::NodeOffline,
        FleetEventKind::NodeCordoned,
        FleetEventKind::NodeUncordoned,
        FleetEventKind::NodeDrained,
        FleetEventKind::NodeRevoked,
        FleetEventKind::ReleaseUploaded,
        FleetEventKind::TrustBundleInstalled,
        FleetEventKind::AlarmRaised,
        FleetEventKind::AlarmCleared,
        FleetEventKind::AlarmAcknowledged,
        FleetEventKind::AlarmSuppressed,
        FleetEventKind::AlarmUnsuppressed,
    ];

    /// Its name on the wire (`service_created`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FleetEventKind::ServiceCreated => "service_created",
            FleetEventKind::ServiceUpdated => "service_updated",
            FleetEventKind::ServiceDeleted => "service_deleted",
            FleetEventKind::ReplicaPlaced => "replica_placed",
            FleetEventKind::ReplicaMoved => "replica_moved",
            FleetEventKind::ReplicaUnplaced => "replica_unplaced",
            FleetEventKind::NodeEnrolled => "node_enrolled",
            FleetEventKind::NodeOnline => "node_online",
            FleetEventKind::NodeOffline => "node_offline",
            FleetEventKind::NodeCordoned => "node_cordoned",
            FleetEventKind::NodeUncordoned => "node_uncordoned",
            FleetEventKind::NodeDrained => "node_drained",
            FleetEventKind::NodeRevoked => "node_revoked",
            FleetEventKind::ReleaseUploaded => "release_uploaded",
            FleetEventKind::TrustBundleInstalled => "trust_bundle_installed",
            FleetEventKind::AlarmRaised => "alarm_raised",
            FleetEventKind::AlarmCleared => "alarm_cleared",
            FleetEventKind::AlarmAcknowledged => "alarm_acknowledged",
            FleetEventKind::AlarmSuppressed => "alarm_suppressed",
            FleetEventKind::AlarmUnsuppressed => "alarm_unsuppressed",
        }
    }
}

/// One fleet lifecycle event. Not signed: consumers trust the broker's
/// access control, under which only the controller may publish it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FleetEvent {
    pub schema_version: u32,
    /// Grows by one per event, in the same sequence as the agents' events
    /// at `GET /api/v1/events`.
    pub id: u64,
    pub at: Timestamp,
    pub kind: FleetEventKind,
    /// The node's region for node events; absent for fleet-wide ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<RegionId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u32>,
    /// The release, for releases and service changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Sha256Digest>,
    /// Which alarm, for the `alarm_*` kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<AlarmReport>,
    /// Who did it, for what an operator did (`alice (token ci)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// A person-readable explanation, at most
    /// [`MAX_MESSAGE_BYTES`](crate::limits::MAX_MESSAGE_BYTES).
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_named_as_on_the_wire() {
        for &kind in FleetEventKind::ALL {
            let wire = serde_json::to_value(kind).expect("json");
            assert_eq!(wire.as_str(), Some(kind.as_str()));
        }
    }
}
