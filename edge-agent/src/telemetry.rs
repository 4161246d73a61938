//! Periodic telemetry: the agent's own resource use and its cache and
//! outbox counters, queued in the disk outbox on
//! `{prefix}/telemetry/{region}/{id}` with a sequence number.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};
use verge_shared::messages::SCHEMA_VERSION;
use verge_shared::telemetry::{OutboxMetrics, Telemetry};
use verge_shared::{AgentId, RegionId, Timestamp};

use crate::artifacts::ArtifactCache;
use crate::outbox::Outbox;
use crate::report::Board;
use crate::ticks::Ticks;

/// Everything one sample is built from.
pub struct Sampler {
    pub agent: AgentId,
    pub region: RegionId,
    pub topic: String,
    pub board: Arc<Board>,
    pub artifacts: Arc<ArtifactCache>,
    pub outbox: Arc<Outbox>,
}

impl Sampler {
    /// One sample; `outbox` is read before the push (which holds the
    /// outbox's lock while it numbers the message).
    fn sample(&self, seq: u64, started: Instant, outbox: OutboxMetrics) -> Telemetry {
        Telemetry {
            schema_version: SCHEMA_VERSION,
            agent: self.agent.clone(),
            region: self.region.clone(),
            seq,
            at: Timestamp::now(),
            uptime_secs: started.elapsed().as_secs(),
            rss_kib: std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|s| rss_kib(&s))
                .unwrap_or(0),
            cpu_millis: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|s| cpu_millis(&s))
                .unwrap_or(0),
            workloads: u32::try_from(self.board.workloads().len()).unwrap_or(u32::MAX),
            cache: self.artifacts.metrics(),
            outbox,
        }
    }
}

/// Queues one telemetry sample every `interval` until `stop`.
pub async fn telemetry_loop(sampler: Sampler, interval: Duration, stop: CancellationToken) {
    let started = Instant::now();
    let sampler = Arc::new(sampler);
    let mut ticks = Ticks::every(interval);
    while ticks.next(&stop).await {
        let s = sampler.clone();
        // The push is flushed to disk: keep it off the runtime thread.
        let pushed = tokio::task::spawn_blocking(move || {
            let outbox = s.outbox.metrics();
            s.outbox.push_numbered(&s.topic, |seq| {
                serde_json::to_vec(&s.sample(seq, started, outbox)).unwrap_or_default()
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

/// Resident set size from the text of `/proc/self/statm` (pages → KiB,
/// assuming 4 KiB pages, which every target of the agent uses).
fn rss_kib(statm: &str) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

/// User + system CPU time from the text of `/proc/self/stat`, in ms
/// (the kernel reports clock ticks of 1/100 s to user space).
fn cpu_millis(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        assert_eq!(rss_kib("1000 250 30 1 0 80 0\n"), Some(1000));
        assert_eq!(rss_kib("junk"), None);
        let stat = "42 (edge agent) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0";
        assert_eq!(cpu_millis(stat), Some(100));
        assert!(cpu_millis("42 (x").is_none());
        assert!(
            std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|s| cpu_millis(&s))
                .is_some()
        );
    }
}
