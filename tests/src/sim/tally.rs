//! What the simulated agents share: how often they report
//! ([`Intervals`]) and what the whole fleet did, counted as it happened
//! ([`Counters`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use verge_shared::topic::Channel;

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
    pub(super) fn count(&self, channel: Channel, queued: bool) {
        let counter = match (queued, channel) {
            (false, _) => &self.dropped,
            (true, Channel::Presence) => &self.presence,
            (true, Channel::Heartbeat) => &self.heartbeat,
            (true, _) => &self.status,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_telemetry(&self, queued: bool) {
        let counter = if queued {
            &self.telemetry
        } else {
            &self.dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn record_backoff(&self, delay: Duration) {
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
