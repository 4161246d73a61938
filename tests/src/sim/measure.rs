//! What a fleet benchmark reads from the controller and the system: the
//! ingest-lag histogram and message counters from `GET /metrics`, and a
//! process's CPU time, per thread, from `/proc`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::Api;

/// A histogram's cumulative bucket counts (`le` → count) from OpenMetrics text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets(Vec<(f64, f64)>);

impl Buckets {
    /// The buckets of histogram `name` (without `_bucket`) in `text`.
    pub fn parse(text: &str, name: &str) -> Buckets {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(&prefix)?;
                let (le, rest) = rest.split_once("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                let count = rest.split_whitespace().next()?.parse().ok()?;
                Some((le, count))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets(buckets)
    }

    /// What was observed between `earlier` and this scrape.
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(le, count)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |(_, c)| *c);
                    (*le, count - before)
                })
                .collect(),
        )
    }

    /// How many observations.
    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, c)| *c)
    }

    /// The `q` quantile (0..=1), interpolated linearly within its bucket as
    /// Prometheus' `histogram_quantile` does; `None` without observations.
    /// Past the last finite bound it is that bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &self.0 {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let width = count - lower.1;
                let within = if width > 0.0 {
                    (rank - lower.1) / width
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * within);
            }
            lower = (le, count);
        }
        Some(lower.0)
    }
}

/// The value of the series `series` (name with labels, as written) in
/// OpenMetrics `text`; 0 when absent.
pub fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// `GET /metrics` with the admin token.
pub async fn scrape(api: &Api) -> Result<String> {
    let response = api.open("/metrics", &[]).await?;
    let status = response.status();
    let text = response.text().await.context("GET /metrics body")?;
    anyhow::ensure!(status.is_success(), "GET /metrics: HTTP {status}: {text}");
    Ok(text)
}

/// The controller's view of the fleet, from `GET /api/v1/nodes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetView {
    pub listed: usize,
    pub online: usize,
    pub healthy: usize,
    /// Nodes whose applied generation is the desired one (both set).
    pub converged: usize,
}

/// Reads [`FleetView`] from the node list (one unpaged request).
pub async fn fleet_view(api: &Api) -> Result<FleetView> {
    let list = api.get("/api/v1/nodes").await?;
    let nodes = list["nodes"]
        .as_array()
        .context("GET /api/v1/nodes: no nodes array")?;
    let count = |ok: &dyn Fn(&serde_json::Value) -> bool| nodes.iter().filter(|n| ok(n)).count();
    Ok(FleetView {
        listed: nodes.len(),
        online: count(&|n| n["online"] == true),
        healthy: count(&|n| n["healthy"] == true),
        converged: count(&|n| {
            !n["desired_generation"].is_null() && n["desired_generation"] == n["applied_generation"]
        }),
    })
}

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// One process's CPU time so far, whole and per thread name.
#[derive(Clone, Debug, Default)]
pub struct CpuSample {
    pub total_ticks: u64,
    pub threads: BTreeMap<String, u64>,
}

/// utime + stime of a `/proc/.../stat` line, and the command name.
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 0, utime 11, stime 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

impl CpuSample {
    /// Reads `/proc/<pid>/stat` and every thread's; threads of the same
    /// name (a runtime's workers) are summed.
    pub fn read(pid: u32) -> Result<CpuSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("read /proc/{pid}/stat"))?;
        let (_, total_ticks) = stat_ticks(&stat).context("parse /proc/<pid>/stat")?;
        let mut threads = BTreeMap::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some((name, ticks)) = stat_ticks(&stat) {
                *threads.entry(name).or_insert(0) += ticks;
            }
        }
        Ok(CpuSample {
            total_ticks,
            threads,
        })
    }

    /// CPU % (100 = one core) since `earlier`, over `wall`: the whole
    /// process and the busiest thread groups, busiest first.
    pub fn since(&self, earlier: &CpuSample, wall: Duration) -> (f64, Vec<(String, f64)>) {
        let percent = |ticks: u64| ticks as f64 / TICKS_PER_SEC / wall.as_secs_f64() * 100.0;
        let mut threads: Vec<(String, f64)> = self
            .threads
            .iter()
            .map(|(name, ticks)| {
                let before = earlier.threads.get(name).copied().unwrap_or(0);
                (name.clone(), percent(ticks.saturating_sub(before)))
            })
            .filter(|(_, p)| *p > 0.0)
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        (
            percent(self.total_ticks.saturating_sub(earlier.total_ticks)),
            threads,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE verge_ingest_lag_seconds histogram\n\
        verge_ingest_lag_seconds_bucket{le=\"0.1\"} 50\n\
        verge_ingest_lag_seconds_bucket{le=\"0.5\"} 90\n\
        verge_ingest_lag_seconds_bucket{le=\"1.0\"} 100\n\
        verge_ingest_lag_seconds_bucket{le=\"+Inf\"} 100\n\
        verge_agent_messages_received_total{kind=\"status\"} 7\n";

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = Buckets::parse(TEXT, "verge_ingest_lag_seconds");
        assert_eq!(b.count(), 100.0);
        assert_eq!(b.quantile(0.5), Some(0.1));
        let p99 = b.quantile(0.99).expect("observations");
        assert!((p99 - 0.95).abs() < 1e-9, "{p99}");
        assert_eq!(b.since(&b).quantile(0.5), None);
        assert_eq!(
            value(TEXT, "verge_agent_messages_received_total{kind=\"status\"}"),
            7.0
        );
        assert_eq!(value(TEXT, "verge_nothing"), 0.0);
    }
}
