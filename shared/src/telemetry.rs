//! Telemetry: what an agent publishes for consumers (Telegraf, Node-RED,
//! scripts) on `{prefix}/telemetry/{region}/{id}`.
//!
//! It is plain versioned JSON (not a signed envelope: the controller never
//! acts on it) and travels through the agent's disk outbox, so it carries a
//! per-agent sequence number `seq` that grows by one per message the agent
//! produced. A consumer finds gaps (messages the outbox dropped over
//! its quota, also counted in `outbox.dropped`) and duplicates (QoS 1 is
//! at-least-once) from it.

use serde::{Deserialize, Serialize};

use crate::id::{AgentId, RegionId};
use crate::time::Timestamp;

/// Largest telemetry document a consumer needs to accept.
pub const MAX_TELEMETRY_BYTES: usize = 4 * 1024;

/// Counters of the agent's artifact cache since the agent started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheMetrics {
    /// Artifacts found in the cache when a workload needed them.
    pub hits: u64,
    /// Artifacts that had to be downloaded.
    pub misses: u64,
    /// Bytes received from the controller (including resumed parts).
    pub bytes_fetched: u64,
    /// Entries removed to stay within the cache quota.
    pub evictions: u64,
    /// Entries removed because they were partial or did not match their digest.
    pub corrupt_removed: u64,
    /// Bytes the cache holds now.
    pub bytes_cached: u64,
}

/// The state of the agent's disk outbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutboxMetrics {
    /// Messages waiting for the broker's acknowledgement.
    pub queued: u64,
    /// Bytes they take.
    pub queued_bytes: u64,
    /// Messages dropped (oldest first) to stay within the byte quota, ever.
    pub dropped: u64,
}

/// One periodic sample of the agent's own resource use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Telemetry {
    pub schema_version: u32,
    pub agent: AgentId,
    pub region: RegionId,
    /// Per-agent message sequence number.
    pub seq: u64,
    pub at: Timestamp,
    pub uptime_secs: u64,
    /// Resident set size of the agent process, KiB.
    pub rss_kib: u64,
    /// CPU time the agent process used since it started, milliseconds.
    pub cpu_millis: u64,
    /// Workloads the agent currently reports.
    pub workloads: u32,
    pub cache: CacheMetrics,
    pub outbox: OutboxMetrics,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::SCHEMA_VERSION;

    #[test]
    fn telemetry_round_trips_and_stays_small() {
        let t = Telemetry {
            schema_version: SCHEMA_VERSION,
            agent: AgentId::new("edge-1").expect("valid"),
            region: RegionId::new("local").expect("valid"),
            seq: u64::MAX,
            at: Timestamp::from_unix_millis(1),
            uptime_secs: u64::MAX,
            rss_kib: u64::MAX,
            cpu_millis: u64::MAX,
            workloads: u32::MAX,
            cache: CacheMetrics {
                hits: u64::MAX,
                ..CacheMetrics::default()
            },
            outbox: OutboxMetrics::default(),
        };
        let json = serde_json::to_vec(&t).expect("serialise");
        assert!(json.len() <= MAX_TELEMETRY_BYTES);
        assert_eq!(
            serde_json::from_slice::<Telemetry>(&json).expect("parse"),
            t
        );
    }
}
