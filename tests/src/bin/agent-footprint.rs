//! Prints the edge agent's footprint on this machine: stripped binary size,
//! idle RSS with 0 and 10 workloads (median of several runs), idle CPU,
//! idle control-plane bytes on the wire, and start-up times.
//!
//! ```text
//! cargo run --release -p verge-tests --bin agent-footprint [-- --runs 3 --idle-secs 60 --tls --cgroup]
//! ```
//!
//! Each run starts a controller (embedded broker) and one release agent with
//! the default intervals (agent: heartbeat 120 s, keep-alive 15 s, telemetry
//! 900 s; controller: desired state republished on connect and every 6 h).
//! The agent reaches the broker through a counting TCP proxy, so the bytes
//! are what crosses its uplink in both directions. RSS is VmRSS from
//! `/proc/<pid>/status` after the idle window; CPU is utime + stime from
//! `/proc/<pid>/stat` over the window, scaled to an hour; bytes likewise.
//! Start → connected is the time from spawning the agent until it logs
//! the broker's CONNACK (its log is polled every millisecond); start →
//! first desired state applied is
//! until a workload deployed before the agent existed answers on its port.
//! With `--cgroup` the agent also runs in a 64 MB, one-core cgroup (v1).
//! With `--tls` the controller runs with TLS (HTTPS API, client
//! certificates at the broker) and the agent starts with only a bootstrap
//! token and the CA file: start → connected then includes enrollment (key,
//! CSR, HTTPS round trip) and the mutual-TLS handshake, and the idle bytes
//! include TLS record overhead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use verge_tests::bench::{arg, rss_kib};
use verge_tests::cluster::{binary, free_port};
use verge_tests::proxy::Proxy;
use verge_tests::workload::{ask, hello_artifact, hello_spec};
use verge_tests::{Cluster, ClusterOptions};

/// utime + stime of `pid` in seconds (USER_HZ is 100).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn median<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}

/// One idle measurement.
#[derive(Clone, Copy, Debug)]
struct Sample {
    rss_kib: u64,
    cpu_secs_per_hour: f64,
    bytes_per_hour: f64,
    to_connected: Duration,
    to_applied: Duration,
}

fn write_config(dir: &Path, cluster: &Cluster, broker: std::net::SocketAddr) -> Result<PathBuf> {
    let config = dir.join("agent.toml");
    let (scheme, ca_line) = match &cluster.ca_pem {
        Some(pem) => {
            let ca_file = dir.join("ca.pem");
            std::fs::write(&ca_file, pem)?;
            ("mqtts", format!("ca_file = \"{}\"\n", ca_file.display()))
        }
        None => ("mqtt", String::new()),
    };
    std::fs::write(
        &config,
        format!(
            "id = \"bench-1\"\nregion = \"bench\"\ndata_dir = \"{data}\"\n\
             broker_url = \"{scheme}://{broker}\"\ncontroller_url = \"{api}\"\n{ca_line}\
             trust_bundle_file = \"{bundle}\"\n\
             # Its workloads end with it: the benchmark leaves nothing running.\n\
             stop_workloads_on_exit = true\n\n[capacity]\ncpu_millis = 4000\nmemory_mb = 4096\n",
            data = dir.join("data").display(),
            api = cluster.api.base,
            bundle = cluster.bundle_file.display(),
        ),
    )?;
    Ok(config)
}

/// The cgroup v1 groups of the confined run.
fn cgroup_dirs() -> [PathBuf; 2] {
    let name = format!("verge-footprint-{}", std::process::id());
    ["memory", "cpu"].map(|controller| Path::new("/sys/fs/cgroup").join(controller).join(&name))
}

/// Puts `pid` into a fresh cgroup v1 memory (64 MB) and cpu (one core) group.
fn confine(pid: u32) -> Result<()> {
    let [memory, cpu] = cgroup_dirs();
    std::fs::create_dir_all(&memory).context("create the memory cgroup")?;
    std::fs::create_dir_all(&cpu).context("create the cpu cgroup")?;
    std::fs::write(memory.join("memory.limit_in_bytes"), "67108864")?;
    std::fs::write(cpu.join("cpu.cfs_period_us"), "100000")?;
    std::fs::write(cpu.join("cpu.cfs_quota_us"), "100000")?;
    std::fs::write(memory.join("cgroup.procs"), pid.to_string())?;
    std::fs::write(cpu.join("cgroup.procs"), pid.to_string())?;
    Ok(())
}

async fn run_once(workloads: usize, idle: Duration, cgroup: bool, tls: bool) -> Result<Sample> {
    let cluster = Cluster::start(ClusterOptions {
        default_intervals: true,
        tls,
        ..ClusterOptions::default()
    })
    .await?;
    // The token lives in the agent's environment only, as in production.
    let token = match tls {
        true => Some(cluster.api.create_token("bench", 1).await?.1),
        false => None,
    };
    let proxy = Proxy::start(cluster.mqtt_addr).await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &cluster, proxy.addr)?;
    let artifact = cluster.api.upload_artifact(hello_artifact()).await?;
    // Deployed before the agent exists: placed when it comes online.
    let ports: Vec<u16> = (0..workloads.max(1)).map(|_| free_port()).collect();
    for (i, port) in ports.iter().enumerate() {
        let mut spec = hello_spec(&artifact, "bench", 1, &["bench"]);
        spec["ports"] = json!([{ "name": "http", "port": port }]);
        spec["resources"] = json!({ "cpu_millis": 10, "memory_mb": 8 });
        cluster
            .api
            .put_service(&format!("w{i}"), &spec)
            .await?
            .ok()?;
    }
    let log = dir.path().join("agent.log");
    let mut command = Command::new(binary("edge-agent"));
    command
        .arg("--config")
        .arg(&config)
        // Warnings, and the one line that says the broker answered.
        .env("RUST_LOG", "warn,edge_agent::mqtt=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log)?));
    if let Some(token) = &token {
        command.env("VERGE_AGENT_ENROLL_TOKEN", token);
    }
    let started = Instant::now();
    let mut agent: Child = command.spawn()?;
    if cgroup {
        confine(agent.id())?;
    }
    let deadline = started + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)?.contains("Connected to the broker.") {
        if Instant::now() > deadline {
            bail!(
                "the agent did not connect within 60 s: {}",
                std::fs::read_to_string(&log)?
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let to_connected = started.elapsed();
    while ask(u64::from(ports[0])).await.is_err() {
        if Instant::now() > deadline {
            bail!("the first workload did not answer within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let to_applied = started.elapsed();
    if workloads == 0 {
        cluster.api.delete_service("w0").await?.ok()?;
    }
    // Let the fleet settle (all answering or all gone), then measure idle.
    let settle = Instant::now() + Duration::from_secs(60);
    loop {
        let mut n = 0;
        for port in &ports {
            n += usize::from(ask(u64::from(*port)).await.is_ok());
        }
        if n == workloads {
            break;
        }
        if Instant::now() > settle {
            bail!("{n} of {workloads} workloads answer after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Idle starts when the controller has the agent's last Status: the
    // generation it was sent applied and every workload running. Before
    // that, the Status saying so is still deployment traffic.
    loop {
        let node = cluster.api.node("bench-1").await?;
        let running = node["workloads"]
            .as_array()
            .map(|w| w.iter().filter(|w| w["state"] == "running").count());
        if node["applied_generation"] == node["desired_generation"] && running == Some(workloads) {
            break;
        }
        if Instant::now() > settle {
            bail!("the node did not settle within 60 s, so there is no idle to measure: {node}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = agent.id();
    let (cpu0, bytes0) = (cpu_secs(pid).unwrap_or(0.0), proxy.bytes());
    tokio::time::sleep(idle).await;
    let (cpu1, bytes1) = (cpu_secs(pid).unwrap_or(0.0), proxy.bytes());
    let rss = rss_kib(pid).context("agent RSS")?;
    let scale = 3600.0 / idle.as_secs_f64();
    let moved = (bytes1.0 + bytes1.1).saturating_sub(bytes0.0 + bytes0.1);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = agent.wait();
    if cgroup {
        // Empty once the agent and its workloads are gone.
        for dir in cgroup_dirs() {
            let _ = std::fs::remove_dir(dir);
        }
    }
    drop(cluster);
    Ok(Sample {
        rss_kib: rss,
        cpu_secs_per_hour: (cpu1 - cpu0) * scale,
        bytes_per_hour: moved as f64 * scale,
        to_connected,
        to_applied,
    })
}

fn report(label: &str, samples: &[Sample]) {
    let rss = median(samples.iter().map(|s| s.rss_kib).collect());
    let cpu = median(samples.iter().map(|s| s.cpu_secs_per_hour).collect());
    let bytes = median(samples.iter().map(|s| s.bytes_per_hour).collect());
    let connected = median(samples.iter().map(|s| s.to_connected).collect());
    let applied = median(samples.iter().map(|s| s.to_applied).collect());
    println!(
        "{label}: RSS {:.1} MiB (runs: {:?} KiB); CPU {cpu:.2} s/idle hour ({:.4} % of a core); \
         control traffic {:.0} bytes/idle hour ({:.4} kbit/s); start→connected {connected:?}; \
         start→first desired state applied {applied:?}",
        rss as f64 / 1024.0,
        samples.iter().map(|s| s.rss_kib).collect::<Vec<_>>(),
        cpu / 36.0,
        bytes,
        bytes * 8.0 / 3600.0 / 1000.0,
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let runs = arg("--runs", 3).max(1);
    let idle = Duration::from_secs(arg("--idle-secs", 60));
    let cgroup = std::env::args().any(|a| a == "--cgroup");
    let tls = std::env::args().any(|a| a == "--tls");
    let agent = binary("edge-agent");
    let size = std::fs::metadata(&agent)?.len();
    println!(
        "edge-agent binary ({}): {:.2} MiB ({size} bytes); transport: {}",
        agent.display(),
        size as f64 / 1_048_576.0,
        if tls {
            "TLS (enrolled with a token, mutual TLS to the broker)"
        } else {
            "plain TCP"
        }
    );
    for workloads in [0usize, 10] {
        let mut samples = Vec::new();
        for _ in 0..runs {
            samples.push(run_once(workloads, idle, false, tls).await?);
        }
        report(
            &format!("{workloads} workloads, median of {runs}"),
            &samples,
        );
    }
    if cgroup {
        match run_once(10, idle, true, tls).await {
            Ok(sample) => report("10 workloads in a 64 MB / 1-core cgroup", &[sample]),
            Err(e) => println!("64 MB / 1-core cgroup run failed: {e:#}"),
        }
    }
    Ok(())
}
