//! Telemetry: what an agent publishes for consumers (Telegraf, Node-RED,
//! scripts) on `{prefix}/telemetry/{region}/{id}`: the host (CPU, load,
//! memory, disk, network, temperatures), each workload, and the agent
//! itself, every field named with its unit (`_bytes`, `_seconds`,
//! `_percent`, `_celsius`).
//!
//! It is plain versioned JSON (not a signed envelope: the controller never
//! acts on it) and travels through the agent's disk outbox, so it carries a
//! per-agent sequence number `seq` that grows by one per message the agent
//! produced. A consumer finds gaps (messages the outbox dropped over
//! its quota, also counted in `outbox.dropped`) and duplicates (QoS 1 is
//! at-least-once) from it.
//!
//! Schema version 2 replaced version 1's `uptime_secs`, `rss_kib`,
//! `cpu_millis` (CPU *time*, which releases use for millicores) and the
//! workload count with `agent_process`, `host` and `workloads`, and renamed
//! the cache's `bytes_fetched` and `bytes_cached` to `fetched_bytes` and
//! `cached_bytes` (docs/protocol.md).

use serde::{Deserialize, Serialize};

use crate::id::{AgentId, RegionId, ServiceName};
use crate::messages::{ExitInfo, HealthState, WorkloadState};
use crate::time::Timestamp;

/// The telemetry document's own schema version.
pub const TELEMETRY_SCHEMA_VERSION: u32 = 2;

/// Largest telemetry document a consumer needs to accept.
pub const MAX_TELEMETRY_BYTES: usize = 64 * 1024;

/// Most network interfaces and temperature sensors one sample lists.
pub const MAX_INTERFACES: usize = 16;
pub const MAX_SENSORS: usize = 16;

/// Counters of the agent's artifact cache since the agent started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CacheMetrics {
    /// Artifacts found in the cache when a workload needed them.
    pub hits: u64,
    /// Artifacts that had to be downloaded.
    pub misses: u64,
    /// Bytes received from the controller (including resumed parts).
    pub fetched_bytes: u64,
    /// Entries removed to stay within the cache quota.
    pub evictions: u64,
    /// Entries removed because they were partial or did not match their digest.
    pub corrupt_removed: u64,
    /// Bytes the cache holds now.
    pub cached_bytes: u64,
}

/// The state of the agent's disk outbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OutboxMetrics {
    /// Messages waiting for the broker's acknowledgement.
    pub queued: u64,
    /// Bytes they take.
    pub queued_bytes: u64,
    /// Messages dropped (oldest first) to stay within the byte quota, ever.
    pub dropped: u64,
}

/// One process: the agent itself, or a workload's main process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ProcessMetrics {
    /// Since the process started.
    pub uptime_seconds: u64,
    /// Resident memory.
    pub rss_bytes: u64,
    /// User and system CPU time used since it started.
    pub cpu_seconds: f64,
}

/// The machine the agent runs on, read from `/proc` and `/sys`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HostMetrics {
    /// Changes at every boot (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    pub uptime_seconds: u64,
    /// Logical CPUs.
    pub cpus: u32,
    /// Busy share of all CPUs since the previous sample (100 = every CPU
    /// busy); absent in an agent's first sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f32>,
    /// Load averages over 1, 5 and 15 minutes.
    pub load_1: f32,
    pub load_5: f32,
    pub load_15: f32,
    pub memory_total_bytes: u64,
    /// What the kernel estimates can be given to new work without swapping.
    pub memory_available_bytes: u64,
    /// The file system of the agent's data directory.
    pub disk_total_bytes: u64,
    /// Free for unprivileged users (what the agent's cache can still use).
    pub disk_free_bytes: u64,
    /// Non-loopback interfaces, at most [`MAX_INTERFACES`].
    pub network: Vec<InterfaceMetrics>,
    /// Thermal zones where the host exposes them, at most [`MAX_SENSORS`].
    pub temperatures: Vec<Temperature>,
}

/// Bytes through one network interface since boot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InterfaceMetrics {
    pub name: String,
    pub received_bytes: u64,
    pub sent_bytes: u64,
}

/// One thermal zone's reading.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Temperature {
    /// The zone's type as the kernel names it (`x86_pkg_temp`, `cpu-thermal`).
    pub sensor: String,
    pub celsius: f32,
}

/// One workload as the agent runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WorkloadMetrics {
    pub service: ServiceName,
    pub replica: u32,
    pub state: WorkloadState,
    /// Present when the workload has a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthState>,
    pub restarts: u32,
    /// Its main process, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessMetrics>,
    /// How the process last ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitInfo>,
}

/// One periodic sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Telemetry {
    /// [`TELEMETRY_SCHEMA_VERSION`].
    pub schema_version: u32,
    pub agent: AgentId,
    pub region: RegionId,
    /// Per-agent message sequence number.
    pub seq: u64,
    pub at: Timestamp,
    /// How often the agent samples (`telemetry_interval_secs`).
    pub interval_seconds: u64,
    pub host: HostMetrics,
    /// The agent's own process.
    pub agent_process: ProcessMetrics,
    pub workloads: Vec<WorkloadMetrics>,
    pub cache: CacheMetrics,
    pub outbox: OutboxMetrics,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_WORKLOADS_PER_AGENT;

    /// The largest document an agent can produce: every list full, every
    /// name at its longest.
    #[test]
    fn the_largest_sample_fits_and_round_trips() {
        let long = |n: usize| "x".repeat(n);
        let t = Telemetry {
            schema_version: TELEMETRY_SCHEMA_VERSION,
            agent: AgentId::new("a".repeat(63)).expect("valid"),
            region: RegionId::new("r".repeat(63)).expect("valid"),
            seq: u64::MAX,
            at: Timestamp::from_unix_millis(1),
            interval_seconds: u64::MAX,
            host: HostMetrics {
                boot_id: long(36),
                uptime_seconds: u64::MAX,
                cpus: u32::MAX,
                cpu_percent: Some(100.0),
                load_1: f32::MAX,
                load_5: f32::MAX,
                load_15: f32::MAX,
                memory_total_bytes: u64::MAX,
                memory_available_bytes: u64::MAX,
                disk_total_bytes: u64::MAX,
                disk_free_bytes: u64::MAX,
                network: vec![
                    InterfaceMetrics {
                        name: long(15),
                        received_bytes: u64::MAX,
                        sent_bytes: u64::MAX,
                    };
                    MAX_INTERFACES
                ],
                temperatures: vec![
                    Temperature {
                        sensor: long(32),
                        celsius: -273.15,
                    };
                    MAX_SENSORS
                ],
            },
            agent_process: ProcessMetrics {
                uptime_seconds: u64::MAX,
                rss_bytes: u64::MAX,
                cpu_seconds: 1e15,
            },
            workloads: vec![
                WorkloadMetrics {
                    service: ServiceName::new("s".repeat(63)).expect("valid"),
                    replica: u32::MAX,
                    state: WorkloadState::CrashLoop,
                    health: Some(HealthState::Unhealthy),
                    restarts: u32::MAX,
                    process: None,
                    last_exit: Some(ExitInfo {
                        code: Some(i32::MIN),
                        signal: None,
                        at: Timestamp::from_unix_millis(1),
                    }),
                };
                MAX_WORKLOADS_PER_AGENT
            ],
            cache: CacheMetrics {
                hits: u64::MAX,
                ..CacheMetrics::default()
            },
            outbox: OutboxMetrics::default(),
        };
        let json = serde_json::to_vec(&t).expect("serialise");
        assert!(
            json.len() <= MAX_TELEMETRY_BYTES,
            "{} bytes over the limit of {MAX_TELEMETRY_BYTES}",
            json.len()
        );
        assert_eq!(
            serde_json::from_slice::<Telemetry>(&json).expect("parse"),
            t
        );
    }
}
