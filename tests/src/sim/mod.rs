//! The fleet simulator: N agents in one process, each a real MQTT session
//! with its own node key ([`agent`]), against a real controller and broker;
//! and what a fleet benchmark reads from the controller ([`measure`]).
//! `src/bin/verge-sim.rs` drives it; `tests/fleet_sim.rs` runs a small
//! fleet in CI.

pub mod agent;
pub mod measure;
pub mod tally;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tokio::task::JoinSet;
use verge_shared::trust::TrustBundle;
use verge_shared::{AgentId, RegionId, Timestamp};

use crate::node::FakeNode;
pub use agent::AgentState;
use agent::SimAgent;
pub use tally::{Counters, Intervals};

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
