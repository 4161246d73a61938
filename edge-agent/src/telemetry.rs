//! Periodic telemetry: the host, each workload, the agent's own process,
//! and its cache and outbox counters, queued in the disk outbox on
//! `{prefix}/telemetry/{region}/{id}` with a sequence number
//! (`verge_shared::telemetry` describes every field).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};
use verge_shared::limits::MAX_WORKLOADS_PER_AGENT;
use verge_shared::messages::WorkloadState;
use verge_shared::telemetry::{
    OutboxMetrics, TELEMETRY_SCHEMA_VERSION, Telemetry, WorkloadMetrics,
};
use verge_shared::{AgentId, RegionId, Timestamp};

use crate::artifacts::ArtifactCache;
use crate::host::{self, CpuTimes};
use crate::outbox::Outbox;
use crate::report::Board;
use crate::ticks::Ticks;

/// Everything one sample is built from.
pub struct Sampler {
    pub agent: AgentId,
    pub region: RegionId,
    pub topic: String,
    /// Whose file system's size and free space are reported.
    pub data_dir: PathBuf,
    pub interval: Duration,
    pub board: Arc<Board>,
    pub artifacts: Arc<ArtifactCache>,
    pub outbox: Arc<Outbox>,
}

impl Sampler {
    /// One sample; `outbox` is read before the push (which holds the
    /// outbox's lock while it numbers the message), `cpu` holds the host's
    /// CPU counters of the previous sample.
    pub fn sample(&self, seq: u64, outbox: OutboxMetrics, cpu: &mut Option<CpuTimes>) -> Telemetry {
        let host = host::read_host(&self.data_dir, cpu);
        let uptime = host.uptime_seconds;
        let workloads = self
            .board
            .workloads()
            .into_iter()
            .take(MAX_WORKLOADS_PER_AGENT)
            .map(|w| WorkloadMetrics {
                process: w
                    .pid
                    .filter(|_| w.state == WorkloadState::Running)
                    .and_then(|pid| host::read_process(pid, uptime)),
                service: w.service,
                replica: w.replica,
                state: w.state,
                health: w.health,
                restarts: w.restarts,
                last_exit: w.last_exit,
            })
            .collect();
        let agent_process = host::read_process(std::process::id(), uptime).unwrap_or_default();
        Telemetry {
            schema_version: TELEMETRY_SCHEMA_VERSION,
            agent: self.agent.clone(),
            region: self.region.clone(),
            seq,
            at: Timestamp::now(),
            interval_seconds: self.interval.as_secs(),
            host,
            agent_process,
            workloads,
            cache: self.artifacts.metrics(),
            outbox,
        }
    }
}

/// Queues one telemetry sample every `sampler.interval` until `stop`.
pub async fn telemetry_loop(sampler: Sampler, stop: CancellationToken) {
    let mut ticks = Ticks::every(sampler.interval);
    let sampler = Arc::new(sampler);
    let cpu = Arc::new(Mutex::new(None));
    while ticks.next(&stop).await {
        let (s, cpu) = (sampler.clone(), cpu.clone());
        // The push is flushed to disk: keep it off the runtime thread.
        let pushed = tokio::task::spawn_blocking(move || {
            let outbox = s.outbox.metrics();
            let mut cpu = cpu.lock().unwrap_or_else(PoisonError::into_inner);
            s.outbox.push_numbered(&s.topic, |seq| {
                serde_json::to_vec(&s.sample(seq, outbox, &mut cpu)).unwrap_or_default()
            })
        })
        .await;
        match pushed {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.is_disk_full() => {
                error!(error = %e, "The disk is full: this telemetry sample is lost.");
            }
            Ok(Err(e)) => warn!(error = %e, "Cannot queue telemetry; this sample is lost."),
            Err(e) => warn!(error = %e, "Queueing telemetry failed."),
        }
    }
}
