//! The fleet benchmark: N simulated agents (real MQTT sessions with their
//! own keys, `verge_tests::sim`) against a real controller, with the
//! embedded broker or Mosquitto. Prints figures; asserts nothing.
//!
//! ```text
//! cargo run --release -p verge-tests --bin verge-sim -- --agents 1000 \
//!     [--broker embedded|mosquitto] [--profile default|aggressive] [--secs 60] \
//!     [--scenario steady,fanout,storm,restart] [--per-region 100] [--connect-rate 500]
//! ```
//!
//! - `steady`: ingest lag p50/p99 (the controller's `verge_ingest_lag_seconds`
//!   over `--secs`), the controller's (and Mosquitto's) CPU and RSS, the
//!   busiest threads, messages sent vs received.
//! - `fanout`: one service per region (`--per-region` agents each, one
//!   replica per agent: the scheduler places at most 100 replicas of a
//!   service), deployed, then changed: from the first PUT until every agent
//!   has acknowledged the new generation, p50/p99/max per agent.
//! - `storm`: Mosquitto restarted under the fleet (with the embedded broker:
//!   skipped); until every session is back and the controller lists every
//!   node online, with the reconnect delays the agents' jitter chose.
//! - `restart`: the controller restarted (with the embedded broker, the
//!   broker too); until every session is back and the API lists every node
//!   online and converged.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use verge_tests::bench::{arg, arg_text, build, percentile, rss_kib};
use verge_tests::node::registered;
use verge_tests::sim::measure::{Buckets, CpuSample, FleetView, fleet_view, scrape, value};
use verge_tests::sim::{Fleet, FleetOptions, Intervals, raise_fd_limit};
use verge_tests::{BrokerKind, Cluster, ClusterOptions};

const LAG: &str = "verge_ingest_lag_seconds";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Waits (at most `timeout`) until `done` holds for the controller's view;
/// returns the view and the time taken.
async fn wait_view(
    cluster: &Cluster,
    timeout: Duration,
    done: impl Fn(&FleetView) -> bool,
) -> Result<(FleetView, Duration)> {
    let began = Instant::now();
    loop {
        let view = fleet_view(&cluster.api).await?;
        if done(&view) {
            return Ok((view, began.elapsed()));
        }
        if began.elapsed() > timeout {
            bail!("the controller's view after {timeout:?}: {view:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn steady(cluster: &Cluster, fleet: &Fleet, secs: u64) -> Result<()> {
    let controller = cluster.controller_pid().context("controller pid")?;
    let mosquitto = cluster.mosquitto_pid();
    let before = scrape(&cluster.api).await?;
    let sent_before = fleet.counters.sent();
    let cpu_before = CpuSample::read(controller)?;
    let broker_before = mosquitto.map(CpuSample::read).transpose()?;
    let sim_before = CpuSample::read(std::process::id())?;
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let wall = began.elapsed();
    let after = scrape(&cluster.api).await?;
    let (cpu, threads) = CpuSample::read(controller)?.since(&cpu_before, wall);
    let (sim_cpu, _) = CpuSample::read(std::process::id())?.since(&sim_before, wall);
    let lag = Buckets::parse(&after, LAG).since(&Buckets::parse(&before, LAG));
    let n = fleet.states.len();
    #[allow(clippy::cast_precision_loss)]
    let thousands = n as f64 / 1000.0;
    let rss = rss_kib(controller).unwrap_or_default();
    println!(
        "steady {secs} s: ingest lag p50 {:.1} ms, p99 {:.1} ms over {} messages ({:.0}/s); load {}",
        lag.quantile(0.5).unwrap_or_default() * 1e3,
        lag.quantile(0.99).unwrap_or_default() * 1e3,
        lag.count(),
        lag.count() / wall.as_secs_f64(),
        load_average()
    );
    println!(
        "  controller: CPU {cpu:.1} % ({:.1} % per 1,000 agents), RSS {} MiB ({:.1} MiB per 1,000 agents); simulator CPU {sim_cpu:.1} %",
        cpu / thousands,
        rss / 1024,
        rss as f64 / 1024.0 / thousands
    );
    let busiest: Vec<String> = threads
        .iter()
        .take(5)
        .map(|(name, p)| format!("{name} {p:.1} %"))
        .collect();
    println!("  controller threads: {}", busiest.join(", "));
    if let (Some(pid), Some(before)) = (mosquitto, broker_before) {
        let (broker_cpu, _) = CpuSample::read(pid)?.since(&before, wall);
        println!(
            "  mosquitto: CPU {broker_cpu:.1} %, RSS {} MiB",
            rss_kib(pid).unwrap_or_default() / 1024
        );
    }
    let sent_after = fleet.counters.sent();
    let counts: Vec<String> = sent_before
        .iter()
        .zip(sent_after)
        .map(|((kind, was), (_, now))| {
            let series = format!("verge_agent_messages_received_total{{kind=\"{kind}\"}}");
            format!(
                "{kind} {} sent / {} received",
                now - was,
                value(&after, &series) - value(&before, &series)
            )
        })
        .collect();
    println!("  messages in the window: {}", counts.join(", "));
    println!(
        "  dropped in the simulator {}, refused by the controller {} (all time)",
        fleet.counters.dropped.load(Ordering::Relaxed),
        after
            .lines()
            .filter(|l| l.starts_with("verge_agent_messages_refused_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    );
    Ok(())
}

/// One service per region, each with one replica per agent of the region.
fn specs(fleet: &Fleet, artifact: &str, version: u32) -> Vec<(String, serde_json::Value)> {
    let mut regions: Vec<(String, usize)> = Vec::new();
    for region in &fleet.regions {
        match regions.last_mut() {
            Some((name, n)) if name == region => *n += 1,
            _ => regions.push((region.clone(), 1)),
        }
    }
    regions
        .into_iter()
        .map(|(region, n)| {
            let spec = json!({
                "artifact": artifact,
                "replicas": n,
                "regions": [region],
                "args": ["--version", version.to_string()],
                "resources": {"cpu_millis": 10, "memory_mb": 8},
            });
            (format!("sim-{region}"), spec)
        })
        .collect()
}

/// PUTs every spec at once (releases signed and uploaded first, outside the
/// timing) and times until every agent acknowledges.
async fn deploy(cluster: &Cluster, fleet: &Fleet, artifact: &str, version: u32) -> Result<()> {
    let specs = specs(fleet, artifact, version);
    for (name, spec) in &specs {
        if let Err(reply) = cluster.api.release_from_spec(name, spec).await? {
            bail!("release of {name} refused: {}", reply.body);
        }
    }
    let before = fleet.applied();
    let began = Instant::now();
    let mut puts = tokio::task::JoinSet::new();
    for (name, spec) in specs {
        let api = cluster.api.clone();
        puts.spawn(async move { (api.put_service(&name, &spec).await, name) });
    }
    while let Some(done) = puts.join_next().await {
        let (reply, name) = done?;
        let reply = reply?;
        if !reply.status.is_success() {
            bail!("PUT {name}: {} {}", reply.status, reply.body);
        }
    }
    let puts_took = began.elapsed();
    let took = fleet
        .wait_applied_above(&before, began, Duration::from_secs(300))
        .await?;
    let (view, converged) = wait_view(cluster, Duration::from_secs(300), |v| {
        v.converged == fleet.states.len()
    })
    .await?;
    println!(
        "fan-out v{version} to {} agents: acknowledged p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms after the first PUT \
         (the PUTs took {:.0} ms); the API showed all converged {:.0} ms after the last ack ({view:?}); load {}",
        took.len(),
        ms(percentile(&took, 50.0).unwrap_or_default()),
        ms(percentile(&took, 99.0).unwrap_or_default()),
        ms(took.last().copied().unwrap_or_default()),
        ms(puts_took),
        ms(converged),
        load_average()
    );
    Ok(())
}

async fn fanout(cluster: &Cluster, fleet: &Fleet) -> Result<()> {
    let artifact = cluster.api.upload_artifact(b"verge-sim".to_vec()).await?;
    deploy(cluster, fleet, &artifact, 1).await?;
    deploy(cluster, fleet, &artifact, 2).await?;
    println!(
        "  deliveries {}, accepted {}, same generation again {}, rejected {}",
        fleet.counters.deliveries.load(Ordering::Relaxed),
        fleet.counters.accepted.load(Ordering::Relaxed),
        fleet.counters.ignored.load(Ordering::Relaxed),
        fleet.counters.rejected.load(Ordering::Relaxed)
    );
    Ok(())
}

/// After a broker or controller restart (`began`, with the sessions
/// counted just before in `sessions`): when the sessions came back (a
/// timeline of how many were), when the API listed every node online again.
/// `reconnect`: whether the restart closes the sessions (not a controller
/// restart with Mosquitto).
async fn recovery(
    cluster: &Cluster,
    fleet: &Fleet,
    began: Instant,
    sessions: &[u64],
    reconnect: bool,
    what: &str,
) -> Result<()> {
    let n = fleet.states.len();
    let mut timeline = Vec::new();
    let mut next_mark = Duration::ZERO;
    // Bounded: at most five minutes.
    while reconnect && fleet.n_back(sessions) < n {
        if began.elapsed() > Duration::from_secs(300) {
            bail!(
                "{} of {n} sessions back within five minutes",
                fleet.n_back(sessions)
            );
        }
        if began.elapsed() >= next_mark {
            timeline.push(format!(
                "{:.1} s: {}",
                next_mark.as_secs_f64(),
                fleet.n_back(sessions)
            ));
            next_mark += Duration::from_millis(2500);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = began.elapsed();
    let (view, _) = wait_view(cluster, Duration::from_secs(300), |v| {
        v.online == n && v.healthy == n && v.converged == v.listed
    })
    .await?;
    let (min, mean, max) = fleet.counters.backoff_ms();
    println!(
        "{what} under {n} agents: sessions back after {:.1} s, the API listed all online and converged {:.1} s after the restart began ({view:?}); load {}",
        back.as_secs_f64(),
        began.elapsed().as_secs_f64(),
        load_average()
    );
    if reconnect {
        println!("  sessions back: {}", timeline.join(", "));
        println!(
            "  reconnect delays chosen: min {min} ms, mean {mean} ms, max {max} ms over {} connection errors",
            fleet.counters.connection_errors.load(Ordering::Relaxed)
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let agents = usize::try_from(arg("--agents", 1000))?;
    let secs = arg("--secs", 60);
    let per_region = usize::try_from(arg("--per-region", 100))?;
    let connect_rate = u32::try_from(arg("--connect-rate", 500))?;
    let broker = match arg_text("--broker", "embedded").as_str() {
        "embedded" => BrokerKind::Embedded,
        "mosquitto" => BrokerKind::Mosquitto,
        other => bail!("--broker {other:?}: expected embedded or mosquitto"),
    };
    let profile = arg_text("--profile", "default");
    let intervals = Intervals::profile(&profile)?;
    let scenarios = arg_text("--scenario", "steady,fanout");
    let (was, now) = raise_fd_limit()?;
    println!(
        "verge-sim ({} build): {agents} agents ({per_region} per region), {broker:?} broker, \
         {profile} profile (heartbeat {:?}, telemetry {:?}); open-files limit raised from {was} to {now}; load {}",
        build(),
        intervals.heartbeat,
        intervals.telemetry,
        load_average()
    );
    let mut cluster = Cluster::start(ClusterOptions {
        broker,
        default_intervals: true,
        controller_log_filter: Some("info".into()),
        ..ClusterOptions::default()
    })
    .await?;
    let fleet = Fleet::start(&FleetOptions {
        agents,
        per_region,
        broker: cluster.mqtt_addr,
        intervals,
        trust_bundle: std::fs::read(&cluster.bundle_file)?,
        connect_rate,
    })
    .await?;
    let connected = fleet.wait_connected(Duration::from_secs(300)).await?;
    registered(&cluster, u64::try_from(agents)?).await?;
    println!(
        "{agents} sessions up {:.1} s after the last was started; all registered",
        connected.as_secs_f64()
    );
    // The start-up burst settles before anything is measured.
    tokio::time::sleep(Duration::from_secs(10)).await;
    for scenario in scenarios.split(',') {
        match scenario {
            "steady" => steady(&cluster, &fleet, secs).await?,
            "fanout" => fanout(&cluster, &fleet).await?,
            "storm" if broker == BrokerKind::Mosquitto => {
                let sessions = fleet.sessions();
                let began = Instant::now();
                cluster.restart_broker().await?;
                recovery(
                    &cluster,
                    &fleet,
                    began,
                    &sessions,
                    true,
                    "Mosquitto restart",
                )
                .await?;
            }
            "storm" => println!(
                "storm: needs --broker mosquitto (the embedded broker restarts with the controller: see restart)"
            ),
            "restart" => {
                let sessions = fleet.sessions();
                let began = Instant::now();
                cluster.start_controller().await?;
                let reconnect = broker == BrokerKind::Embedded;
                recovery(
                    &cluster,
                    &fleet,
                    began,
                    &sessions,
                    reconnect,
                    "controller restart",
                )
                .await?;
            }
            other => bail!("--scenario {other:?}: expected steady, fanout, storm or restart"),
        }
    }
    Ok(())
}
