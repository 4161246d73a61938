//! The fleet simulator: N agents in one process, each a real MQTT session
//! with its own node key ([`agent`]), against a real controller and broker;
//! and what a fleet benchmark reads from the controller ([`measure`]).
//! `src/bin/verge-sim.rs` drives it; `tests/fleet_sim.rs` runs a small
//! fleet in CI.

pub mod agent;
pub mod measure;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::task::JoinSet;
use verge_shared::topic::Channel;
use verge_shared::trust::TrustBundle;
use verge_shared::{AgentId, RegionId, Timestamp};

use crate::node::FakeNode;
pub use agent::AgentState;
use agent::SimAgent;

/// How often each agent reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intervals {
    pub heartbeat: Duration,
    pub telemetry: Duration,
}

impl Intervals {
    /// The agent's defaults (`heartbeat_interval_secs`, `telemetry_interval_secs`).
    pub const DEFAULT: Intervals = Intervals {
        heartbeat: Duration::from_secs(edge_agent::config::DEFAULT_HEARTBEAT_SECS),
        telemetry: Duration::from_secs(edge_agent::config::DEFAULT_TELEMETRY_SECS),
    };
    /// A fleet configured to report often: heartbeat 10 s, telemetry 30 s.
    pub const AGGRESSIVE: Intervals = Intervals {
        heartbeat: Duration::from_secs(10),
        telemetry: Duration::from_secs(30),
    };

    /// `default` or `aggressive`.
    pub fn profile(name: &str) -> Result<Intervals> {
        match name {
            "default" => Ok(Self::DEFAULT),
            "aggressive" => Ok(Self::AGGRESSIVE),
            other => bail!("--profile {other:?}: expected default or aggressive"),
        }
    }
}

/// What the whole fleet did, counted as it happened.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sessions established (CONNACKs), reconnections included.
    pub connects: AtomicU64,
    pub connection_errors: AtomicU64,
    /// Reports queued to the MQTT client, by kind.
    pub presence: AtomicU64,
    pub status: AtomicU64,
    pub heartbeat: AtomicU64,
    pub telemetry: AtomicU64,
    /// Reports that could not be queued (the session's queue full).
    pub dropped: AtomicU64,
    /// PUBACKs received for QoS 1 reports.
    pub pubacks: AtomicU64,
    /// Desired states received, and what intake decided.
    pub deliveries: AtomicU64,
    pub accepted: AtomicU64,
    pub ignored: AtomicU64,
    pub rejected: AtomicU64,
    /// Reconnect delays chosen, in milliseconds: the sum and the extremes,
    /// to show the jitter spreading a reconnect storm.
    backoff_sum_ms: AtomicU64,
    backoff_min_ms: AtomicU64,
    backoff_max_ms: AtomicU64,
}

impl Counters {
    fn count(&self, channel: Channel, queued: bool) {
        let counter = match (queued, channel) {
            (false, _) => &self.dropped,
            (true, Channel::Presence) => &self.presence,
            (true, Channel::Heartbeat) => &self.heartbeat,
            (true, _) => &self.status,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn count_telemetry(&self, queued: bool) {
        let counter = if queued {
            &self.telemetry
        } else {
            &self.dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn record_backoff(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.backoff_sum_ms.fetch_add(ms, Ordering::Relaxed);
        // 0 means "none yet" for the minimum.
        let _ = self
            .backoff_min_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (m == 0 || ms < m).then_some(ms.max(1))
            });
        self.backoff_max_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// The reconnect delays chosen so far: (min, mean, max) in ms.
    pub fn backoff_ms(&self) -> (u64, u64, u64) {
        let n = self.connection_errors.load(Ordering::Relaxed).max(1);
        (
            self.backoff_min_ms.load(Ordering::Relaxed),
            self.backoff_sum_ms.load(Ordering::Relaxed) / n,
            self.backoff_max_ms.load(Ordering::Relaxed),
        )
    }

    /// The reports by kind, as the controller's
    /// `verge_agent_messages_received_total` names them.
    pub fn sent(&self) -> [(&'static str, u64); 4] {
        [
            ("presence", self.presence.load(Ordering::Relaxed)),
            ("status", self.status.load(Ordering::Relaxed)),
            ("heartbeat", self.heartbeat.load(Ordering::Relaxed)),
            ("telemetry", self.telemetry.load(Ordering::Relaxed)),
        ]
    }
}

/// How to build a fleet.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    pub agents: usize,
    /// Agents per region: agent `i` is `sim-{i}` in `region-{i / per_region}`.
    pub per_region: usize,
    pub broker: SocketAddr,
    pub intervals: Intervals,
    /// The signed trust bundle the agents start from (the cluster's).
    pub trust_bundle: Vec<u8>,
    /// New sessions started per second (rumqttd accepts one per ms).
    pub connect_rate: u32,
}

/// A running simulated fleet; every session is dropped with it.
pub struct Fleet {
    pub ids: Vec<String>,
    pub regions: Vec<String>,
    pub states: Vec<Arc<AgentState>>,
    pub counters: Arc<Counters>,
    tasks: JoinSet<()>,
}

/// The region of agent `i`.
pub fn region_of(i: usize, per_region: usize) -> String {
    format!("region-{:03}", i / per_region.max(1))
}

impl Fleet {
    /// Starts every agent's session, `connect_rate` a second; returns once
    /// all are started (not yet connected: see [`Fleet::wait_connected`]).
    pub async fn start(options: &FleetOptions) -> Result<Fleet> {
        let trust = Arc::new(
            TrustBundle::verify_initial(&options.trust_bundle, Timestamp::now())
                .context("the fleet's trust bundle")?
                .bundle,
        );
        let counters = Arc::new(Counters::default());
        let mut fleet = Fleet {
            ids: Vec::with_capacity(options.agents),
            regions: Vec::with_capacity(options.agents),
            states: Vec::with_capacity(options.agents),
            counters: Arc::clone(&counters),
            tasks: JoinSet::new(),
        };
        let pause = Duration::from_secs(1) / options.connect_rate.max(1);
        let began = tokio::time::Instant::now();
        for i in 0..options.agents {
            let id = format!("sim-{i:05}");
            let region = region_of(i, options.per_region);
            let state = Arc::new(AgentState::default());
            let agent = SimAgent {
                node: FakeNode::new(&id, &region)?,
                agent: AgentId::new(id.as_str())?,
                region: RegionId::new(region.as_str())?,
                trust: Arc::clone(&trust),
                state: Arc::clone(&state),
                counters: Arc::clone(&counters),
                intervals: options.intervals,
                broker: options.broker,
                last: None,
                running: Vec::new(),
                last_rejection: None,
                started: Instant::now(),
                telemetry_seq: 0,
            };
            fleet.tasks.spawn(agent.run());
            fleet.ids.push(id);
            fleet.regions.push(region);
            fleet.states.push(state);
            let due = began + pause * u32::try_from(i + 1).unwrap_or(u32::MAX);
            tokio::time::sleep_until(due).await;
        }
        Ok(fleet)
    }

    /// How many sessions are up now.
    pub fn n_connected(&self) -> usize {
        self.states
            .iter()
            .filter(|s| s.connected.load(Ordering::Relaxed))
            .count()
    }

    /// Waits (at most `timeout`) until every session is up; returns how
    /// long that took.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<Duration> {
        let began = Instant::now();
        loop {
            let up = self.n_connected();
            if up == self.states.len() {
                return Ok(began.elapsed());
            }
            ensure!(
                began.elapsed() < timeout,
                "{up} of {} simulated agents connected within {timeout:?}",
                self.states.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every agent's sessions so far (see [`Fleet::n_back`]).
    pub fn sessions(&self) -> Vec<u64> {
        self.states
            .iter()
            .map(|s| s.sessions.load(Ordering::Relaxed))
            .collect()
    }

    /// How many agents are connected in a session newer than their count
    /// in `before` (from [`Fleet::sessions`]): back after an outage.
    pub fn n_back(&self, before: &[u64]) -> usize {
        self.states
            .iter()
            .zip(before)
            .filter(|(s, was)| {
                s.connected.load(Ordering::Relaxed) && s.sessions.load(Ordering::Relaxed) > **was
            })
            .count()
    }

    /// Every agent's last accepted generation (0: none).
    pub fn applied(&self) -> Vec<u64> {
        self.states
            .iter()
            .map(|s| s.applied.load(Ordering::Relaxed))
            .collect()
    }

    /// Waits (at most `timeout`) until every agent has accepted a
    /// generation above its entry in `before`; returns, per agent, the time
    /// from `since` to its acknowledgement, sorted.
    pub async fn wait_applied_above(
        &self,
        before: &[u64],
        since: Instant,
        timeout: Duration,
    ) -> Result<Vec<Duration>> {
        loop {
            let behind = self
                .applied()
                .iter()
                .zip(before)
                .filter(|(now, was)| now <= was)
                .count();
            if behind == 0 {
                break;
            }
            ensure!(
                since.elapsed() < timeout,
                "{behind} of {} simulated agents acknowledged no new generation within {timeout:?} \
                 ({} deliveries, {} rejected)",
                self.states.len(),
                self.counters.deliveries.load(Ordering::Relaxed),
                self.counters.rejected.load(Ordering::Relaxed),
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut took: Vec<Duration> = self
            .states
            .iter()
            .map(|s| {
                s.acked_at()
                    .map_or(Duration::ZERO, |at| at.saturating_duration_since(since))
            })
            .collect();
        took.sort();
        Ok(took)
    }
}

/// Raises this process's soft limit on open files to its hard limit (a
/// session is a socket); returns (old soft, new soft).
pub fn raise_fd_limit() -> Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(RLIMIT_NOFILE)")?;
    }
    let (now, _) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    Ok((soft, now))
}
