//! The telemetry part: each known node's latest telemetry samples, a ring of
//! at most `[nodes] telemetry_history` compact [`Sample`]s per node, and the
//! view of one ring with the CPU use derived between samples.
//!
//! Telemetry is unsigned and informational: it is kept to be looked at
//! (`GET /api/v1/nodes/{id}/telemetry`, the console's charts) and nothing
//! the controller decides ever reads it. It lives in memory only; a
//! restarted controller starts with empty rings.
//!
//! A part of the app: it knows nothing of the node registry (the use case
//! checks that a node is known before it pushes). Its lock is a leaf, held
//! for one push, copy or removal.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use verge_shared::telemetry::Telemetry;
use verge_shared::{AgentId, Timestamp};

use super::types::lock;

/// One telemetry message, reduced to what the history shows.
///
/// 80 bytes (seven 8-byte, four 4-byte and one 2-byte field, padded;
/// checked by a test): the default 60 samples are 4,800 bytes per node,
/// plus 100 to 200 bytes for the ring, its map entry and the node id, so
/// about 50 MB for 10,000 nodes (and 1440 samples, the most, about 1.2 GB).
/// Counters that cannot reach 2^32 in practice (the agent's RSS in KiB and
/// uptime in seconds, workloads, queued messages) are kept in 32 bits and
/// saturate; the host's CPU use in tenths of a percent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sample {
    pub(super) at: Timestamp,
    pub(super) seq: u64,
    pub(super) cpu_millis: u64,
    pub(super) cache_bytes: u64,
    pub(super) outbox_dropped: u64,
    pub(super) memory_available_bytes: u64,
    pub(super) disk_free_bytes: u64,
    pub(super) rss_kib: u32,
    pub(super) uptime_secs: u32,
    pub(super) workloads: u32,
    pub(super) outbox_queued: u32,
    /// [`NO_HOST_CPU`] when the agent did not say.
    pub(super) host_cpu_tenths: u16,
}

/// `host_cpu_tenths` of a sample without the host's CPU use.
const NO_HOST_CPU: u16 = u16::MAX;

fn saturate(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

impl Sample {
    pub(super) fn of(t: &Telemetry) -> Self {
        let process = &t.agent_process;
        Self {
            at: t.at,
            seq: t.seq,
            // `as` saturates, and a negative or NaN figure becomes 0.
            cpu_millis: (process.cpu_seconds * 1000.0) as u64,
            cache_bytes: t.cache.cached_bytes,
            outbox_dropped: t.outbox.dropped,
            memory_available_bytes: t.host.memory_available_bytes,
            disk_free_bytes: t.host.disk_free_bytes,
            rss_kib: saturate(process.rss_bytes / 1024),
            uptime_secs: saturate(process.uptime_seconds),
            workloads: saturate(t.workloads.len() as u64),
            outbox_queued: saturate(t.outbox.queued),
            host_cpu_tenths: t
                .host
                .cpu_percent
                .map_or(NO_HOST_CPU, |p| (p.clamp(0.0, 100.0) * 10.0).round() as u16),
        }
    }
}

/// Why a sample was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct NotNewer {
    /// The newest sequence number kept for that node.
    pub(super) last: u64,
}

/// The latest samples of every node that sent some.
#[derive(Debug)]
pub(super) struct TelemetryHistory {
    /// Samples kept per node; 0 keeps none.
    limit: usize,
    rings: Mutex<HashMap<AgentId, VecDeque<Sample>>>,
}

impl TelemetryHistory {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            rings: Mutex::default(),
        }
    }

    /// Samples kept per node (0: telemetry is not kept at all).
    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    /// Keeps `sample` as `agent`'s newest, dropping its oldest beyond the
    /// limit. A sample whose `seq` is not above the newest kept one (a
    /// redelivered duplicate, or one that arrived out of order) is not kept.
    pub(super) fn push(&self, agent: &AgentId, sample: Sample) -> Result<(), NotNewer> {
        if self.limit == 0 {
            return Ok(());
        }
        let mut rings = lock(&self.rings);
        let ring = match rings.get_mut(agent) {
            Some(ring) => ring,
            None => rings
                .entry(agent.clone())
                // Exactly the limit: the ring never grows past it.
                .or_insert_with(|| VecDeque::with_capacity(self.limit)),
        };
        if let Some(newest) = ring.back()
            && sample.seq <= newest.seq
        {
            return Err(NotNewer { last: newest.seq });
        }
        if ring.len() == self.limit {
            ring.pop_front();
        }
        ring.push_back(sample);
        Ok(())
    }

    /// `agent`'s kept samples, oldest first.
    pub(super) fn samples(&self, agent: &AgentId) -> Vec<Sample> {
        lock(&self.rings)
            .get(agent)
            .map(|ring| ring.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Drops everything kept for `agent` (revoked, or enrolled again: its
    /// sequence numbers start over).
    pub(super) fn forget(&self, agent: &AgentId) {
        lock(&self.rings).remove(agent);
    }
}

/// One node's history as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TelemetryView {
    pub node: AgentId,
    /// How often the agent sends telemetry, as seen in the samples (the
    /// median time per sequence number between neighbours); `None` with
    /// fewer than two samples.
    pub interval_seconds: Option<u64>,
    /// Oldest first.
    pub samples: Vec<TelemetryPoint>,
}

/// One sample, with the agent's CPU use since the one before it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TelemetryPoint {
    pub seq: u64,
    pub at: Timestamp,
    /// The busy share of all the host's CPUs over the agent's last
    /// interval (100 = every CPU busy); `None` in an agent's first sample.
    pub host_cpu_percent: Option<f64>,
    pub memory_available_bytes: u64,
    /// Of the agent's data directory's file system.
    pub disk_free_bytes: u64,
    /// The agent process's resident memory (to the KiB).
    pub agent_rss_bytes: u64,
    /// CPU time the agent used since it started (to the millisecond).
    pub agent_cpu_seconds: f64,
    /// The agent's CPU use since the previous sample, in percent of one
    /// core; `None` for the first sample and after the agent restarted (its
    /// CPU time or uptime went down).
    pub agent_cpu_percent: Option<f64>,
    pub agent_uptime_seconds: u64,
    pub workloads: u32,
    pub outbox_queued: u64,
    pub outbox_dropped: u64,
    pub cache_bytes: u64,
}

/// CPU use between two samples of one agent process, in percent of one
/// core, to two decimals; `None` when they are not of the same process or
/// not in time order.
fn cpu_percent(before: &Sample, after: &Sample) -> Option<f64> {
    let restarted = after.cpu_millis < before.cpu_millis || after.uptime_secs < before.uptime_secs;
    let elapsed_ms = after
        .at
        .unix_millis()
        .checked_sub(before.at.unix_millis())?;
    if restarted || elapsed_ms == 0 {
        return None;
    }
    let used_ms = after.cpu_millis - before.cpu_millis;
    let percent = used_ms as f64 * 100.0 / elapsed_ms as f64;
    Some((percent * 100.0).round() / 100.0)
}

/// The median time per sequence number between neighbouring samples,
/// rounded to whole seconds: the agent's interval, whatever was lost between.
fn interval_secs(samples: &[Sample]) -> Option<u64> {
    let mut per_seq: Vec<u64> = samples
        .windows(2)
        .filter_map(|w| {
            let elapsed = w[1].at.unix_millis().checked_sub(w[0].at.unix_millis())?;
            Some(elapsed / (w[1].seq - w[0].seq).max(1))
        })
        .collect();
    if per_seq.is_empty() {
        return None;
    }
    per_seq.sort_unstable();
    Some((per_seq[per_seq.len() / 2] + 500) / 1000)
}

/// The view of `node`'s `samples` (oldest first).
pub(super) fn view(node: AgentId, samples: &[Sample]) -> TelemetryView {
    let points = samples
        .iter()
        .enumerate()
        .map(|(i, s)| TelemetryPoint {
            seq: s.seq,
            at: s.at,
            host_cpu_percent: (s.host_cpu_tenths != NO_HOST_CPU)
                .then(|| f64::from(s.host_cpu_tenths) / 10.0),
            memory_available_bytes: s.memory_available_bytes,
            disk_free_bytes: s.disk_free_bytes,
            agent_rss_bytes: u64::from(s.rss_kib) * 1024,
            agent_cpu_seconds: s.cpu_millis as f64 / 1000.0,
            agent_cpu_percent: i.checked_sub(1).and_then(|p| cpu_percent(&samples[p], s)),
            agent_uptime_seconds: s.uptime_secs.into(),
            workloads: s.workloads,
            outbox_queued: s.outbox_queued.into(),
            outbox_dropped: s.outbox_dropped,
            cache_bytes: s.cache_bytes,
        })
        .collect();
    TelemetryView {
        node,
        interval_seconds: interval_secs(samples),
        samples: points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str) -> AgentId {
        AgentId::new(id).expect("valid id")
    }

    /// A sample `secs` seconds into the test with `cpu_millis` used.
    fn sample(seq: u64, secs: u64, cpu_millis: u64) -> Sample {
        Sample {
            at: Timestamp::from_unix_millis(1_800_000_000_000 + secs * 1000),
            seq,
            cpu_millis,
            cache_bytes: 0,
            outbox_dropped: 0,
            memory_available_bytes: 0,
            disk_free_bytes: 0,
            rss_kib: 20_000,
            uptime_secs: u32::try_from(secs).expect("small"),
            workloads: 0,
            outbox_queued: 0,
            host_cpu_tenths: NO_HOST_CPU,
        }
    }

    #[test]
    fn a_sample_stays_80_bytes() {
        assert_eq!(std::mem::size_of::<Sample>(), 80);
    }

    #[test]
    fn each_ring_keeps_the_newest_samples_up_to_the_limit() {
        let history = TelemetryHistory::new(3);
        let (a, b) = (agent("edge-a"), agent("edge-b"));
        for seq in 1..=5 {
            history.push(&a, sample(seq, seq * 60, 0)).expect("newer");
        }
        history.push(&b, sample(7, 60, 0)).expect("another node");
        let seqs =
            |id: &AgentId| -> Vec<u64> { history.samples(id).iter().map(|s| s.seq).collect() };
        assert_eq!(seqs(&a), [3, 4, 5]);
        assert_eq!(seqs(&b), [7]);
        assert_eq!(
            lock(&history.rings).get(&a).map(VecDeque::capacity),
            Some(3),
            "allocated once, exactly"
        );
        history.forget(&a);
        assert!(history.samples(&a).is_empty());
    }

    #[test]
    fn only_a_higher_seq_is_kept() {
        let history = TelemetryHistory::new(10);
        let a = agent("edge-a");
        history.push(&a, sample(5, 0, 0)).expect("first");
        assert_eq!(history.push(&a, sample(5, 0, 0)), Err(NotNewer { last: 5 }));
        assert_eq!(
            history.push(&a, sample(3, 60, 0)),
            Err(NotNewer { last: 5 })
        );
        // A gap (samples the agent's outbox dropped) is fine.
        history.push(&a, sample(9, 60, 0)).expect("newer");
        assert_eq!(history.samples(&a).len(), 2);
    }

    #[test]
    fn a_limit_of_zero_keeps_nothing() {
        let history = TelemetryHistory::new(0);
        let a = agent("edge-a");
        history
            .push(&a, sample(1, 0, 0))
            .expect("accepted, not kept");
        assert!(history.samples(&a).is_empty());
        assert!(lock(&history.rings).is_empty());
    }

    #[test]
    fn cpu_use_is_derived_between_samples_of_one_process() {
        let samples = [
            sample(1, 0, 1_000),
            // 600 ms of CPU in 60 s: 1 %.
            sample(2, 60, 1_600),
            // Lost seq 3; 1.2 s in 120 s: still 1 %.
            sample(4, 180, 2_800),
            // Restarted: less CPU time than before.
            sample(5, 240, 50),
            sample(6, 300, 350),
        ];
        let view = view(agent("edge-a"), &samples);
        let cpu: Vec<Option<f64>> = view.samples.iter().map(|p| p.agent_cpu_percent).collect();
        assert_eq!(cpu, [None, Some(1.0), Some(1.0), None, Some(0.5)]);
        assert_eq!(view.interval_seconds, Some(60));
        assert_eq!(view.samples[2].seq, 4);
        assert_eq!(view.samples[2].agent_rss_bytes, 20_000 * 1024);
        assert_eq!(view.samples[2].host_cpu_percent, None);
    }

    #[test]
    fn a_restart_shows_in_the_uptime_even_if_the_cpu_time_grew() {
        let mut before = sample(1, 0, 1_000);
        before.uptime_secs = 600;
        let mut after = sample(2, 60, 5_000);
        assert_eq!(cpu_percent(&before, &after), None, "up 60 s after 600 s");
        after.uptime_secs = 660;
        assert_eq!(cpu_percent(&before, &after), Some(6.67));
        // Samples out of time order (the agent's clock stepped back) give none either.
        assert_eq!(
            cpu_percent(&sample(2, 60, 2_000), &sample(3, 30, 3_000)),
            None
        );
        assert_eq!(interval_secs(&[sample(1, 0, 0)]), None);
    }
}
