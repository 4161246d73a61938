//! Telemetry from agents into the telemetry part, and one node's history
//! read back for the API and the console.
//!
//! Telemetry is plain JSON, not signed: anyone who may publish on a node's
//! telemetry topic can write in its name. It is therefore informational
//! only: it is kept to be looked at and never drives a decision (health,
//! placement, failover read heartbeats, status and presence, all signed).

use verge_shared::telemetry::{MAX_TELEMETRY_BYTES, TELEMETRY_SCHEMA_VERSION, Telemetry};
use verge_shared::topic::TelemetryRoute;
use verge_shared::{AgentId, Timestamp};

use super::composition::App;
use super::error::AppError;
use super::ingest::{IngestError, check_versioned};
use super::telemetry::{NotNewer, Sample, TelemetryView, view};

impl App {
    /// Keeps one telemetry message in its node's history: bounded before
    /// it is parsed, of a known schema, naming the topic's agent and region,
    /// from a node the registry knows and has not revoked, and newer (by
    /// `seq`) than the newest kept. QoS 1 redelivers after a reconnect, so
    /// duplicates are routine; they are dropped and counted like any refusal.
    pub(super) fn ingest_telemetry(
        &self,
        route: &TelemetryRoute,
        payload: &[u8],
        now: Timestamp,
    ) -> Result<(), IngestError> {
        if self.telemetry.limit() == 0 {
            return Ok(());
        }
        if payload.len() > MAX_TELEMETRY_BYTES {
            return Err(IngestError::TooLarge(payload.len(), MAX_TELEMETRY_BYTES));
        }
        let telemetry: Telemetry = serde_json::from_slice(payload)
            .map_err(|e| IngestError::Invalid(format!("telemetry: {e}")))?;
        check_versioned(
            &route.agent,
            &telemetry.agent,
            telemetry.schema_version,
            TELEMETRY_SCHEMA_VERSION,
        )?;
        if telemetry.region != route.region {
            return Err(IngestError::RegionMismatch(telemetry.region));
        }
        match self.nodes.records().get(&route.agent) {
            None => return Err(IngestError::UnknownAgent),
            Some(node) if node.revoked => return Err(IngestError::Revoked),
            Some(_) => {}
        }
        self.observe_lag(telemetry.at, now);
        self.telemetry
            .push(&route.agent, Sample::of(&telemetry))
            .map_err(|NotNewer { last }| IngestError::StaleSeq {
                seq: telemetry.seq,
                last,
            })
    }

    /// The telemetry kept for node `id`, oldest first; empty when none
    /// arrived yet (or `[nodes] telemetry_history` is 0).
    pub fn node_telemetry(&self, id: &str) -> Result<TelemetryView, AppError> {
        let not_found = || AppError::NotFound {
            what: "node",
            name: id.to_owned(),
        };
        let agent = AgentId::new(id).map_err(|_| not_found())?;
        if !self.nodes.records().contains_key(&agent) {
            return Err(not_found());
        }
        let samples = self.telemetry.samples(&agent);
        Ok(view(agent, &samples))
    }
}
