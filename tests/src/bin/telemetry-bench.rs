//! Prints what one telemetry sample costs the agent and the uplink: the CPU
//! time to read the host's figures and ten workloads' processes from `/proc`
//! and `/sys` and encode the JSON, the size of that message, and the
//! traffic it makes at several intervals. Asserts nothing.
//!
//! ```text
//! cargo run --release -p verge-tests --bin telemetry-bench [-- --samples 2000 --runs 5 --workloads 10]
//! ```
//!
//! The workloads are real processes (`sleep`) started for the run and
//! stopped after it. A sample here is what the agent's telemetry task does
//! for one message (`edge_agent::host` for the host and each process, then
//! `serde_json`), without the outbox's disk write, which every outbox
//! message costs alike. CPU time is this process's user + system time from
//! `/proc/self/stat` (10 ms ticks, hence many samples per run), divided by
//! the samples; the figure is the median of the runs.

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use edge_agent::host;
use verge_shared::messages::WorkloadState;
use verge_shared::telemetry::{
    CacheMetrics, OutboxMetrics, TELEMETRY_SCHEMA_VERSION, Telemetry, WorkloadMetrics,
};
use verge_shared::{AgentId, RegionId, ServiceName, Timestamp};
use verge_tests::bench::{arg, percentile};

/// This process's user + system CPU time, in seconds.
fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("read /proc/self/stat")?;
    let (_, rest) = stat.rsplit_once(')').context("a stat line")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// The processes standing in for workloads; killed when dropped.
struct Workloads(Vec<Child>);

impl Drop for Workloads {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One telemetry message as the agent builds it.
fn sample(seq: u64, pids: &[u32], cpu: &mut Option<host::CpuTimes>) -> Vec<u8> {
    let host = host::read_host(std::path::Path::new("."), cpu);
    let uptime = host.uptime_seconds;
    let workloads = pids
        .iter()
        .enumerate()
        .map(|(i, pid)| WorkloadMetrics {
            service: ServiceName::new(format!("service-{i:02}")).expect("service name"),
            replica: 0,
            state: WorkloadState::Running,
            health: None,
            restarts: 0,
            process: host::read_process(*pid, uptime),
            last_exit: None,
        })
        .collect();
    let telemetry = Telemetry {
        schema_version: TELEMETRY_SCHEMA_VERSION,
        agent: AgentId::new("edge-0001").expect("agent id"),
        region: RegionId::new("eu-west").expect("region"),
        seq,
        at: Timestamp::now(),
        interval_seconds: 900,
        agent_process: host::read_process(std::process::id(), uptime).unwrap_or_default(),
        host,
        workloads,
        cache: CacheMetrics::default(),
        outbox: OutboxMetrics::default(),
    };
    serde_json::to_vec(&telemetry).expect("telemetry encodes")
}

/// Bytes on the wire for one message of `payload` bytes on the topic
/// `verge/v1/telemetry/eu-west/edge-0001`: the MQTT PUBLISH (fixed header,
/// topic, packet id) and its PUBACK, each in a TLS 1.3 record (22 bytes of
/// header, tag and content type). TCP/IP headers are left out, as in the
/// agent-footprint figures.
fn wire_bytes(payload: usize) -> usize {
    let topic = "verge/v1/telemetry/eu-west/edge-0001".len();
    let publish = 1 + 3 + 2 + topic + 2 + payload;
    let puback = 4;
    publish + puback + 2 * 22
}

fn main() -> Result<()> {
    let samples = arg("--samples", 2000);
    let runs = arg("--runs", 5);
    let count = arg("--workloads", 10);
    let children = (0..count)
        .map(|_| {
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .context("start sleep")
        })
        .collect::<Result<Vec<_>>>()?;
    let workloads = Workloads(children);
    let pids: Vec<u32> = workloads.0.iter().map(Child::id).collect();

    let mut cpu_per_sample = Vec::new();
    let mut wall_per_sample = Vec::new();
    let mut cpu = None;
    let mut bytes = 0;
    for run in 1..=runs {
        let (cpu_before, wall_before) = (cpu_seconds()?, Instant::now());
        for seq in 0..samples {
            bytes = std::hint::black_box(sample(seq, &pids, &mut cpu)).len();
        }
        let cpu_us = (cpu_seconds()? - cpu_before) * 1e6 / samples as f64;
        let wall_us = wall_before.elapsed().as_secs_f64() * 1e6 / samples as f64;
        println!("run {run}: {cpu_us:.0} µs CPU and {wall_us:.0} µs wall per sample");
        cpu_per_sample.push(cpu_us);
        wall_per_sample.push(wall_us);
    }
    cpu_per_sample.sort_by(f64::total_cmp);
    wall_per_sample.sort_by(f64::total_cmp);
    let median = |v: &[f64]| percentile(v, 50.0).unwrap_or(f64::NAN);
    let empty = sample(0, &[], &mut cpu).len();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\none sample with {count} workloads: {:.0} µs CPU, {:.0} µs wall (median of {runs} runs of {samples}; load average {})",
        median(&cpu_per_sample),
        median(&wall_per_sample),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("message: {empty} bytes with no workloads, {bytes} bytes with {count}");
    for interval in [10, 60, 900] {
        let kbit = |payload: usize| (wire_bytes(payload) * 8) as f64 / interval as f64 / 1000.0;
        println!(
            "every {interval:>3} s: {:.4} kbit/s with no workloads, {:.4} kbit/s with {count} (MQTT and TLS framing included)",
            kbit(empty),
            kbit(bytes)
        );
    }
    Ok(())
}
