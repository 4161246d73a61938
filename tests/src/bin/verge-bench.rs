//! Prints Verge's headline figures: binary sizes, deploy latency and idle
//! memory, measured on real processes on this machine.
//!
//! ```text
//! cargo build --release --workspace
//! cargo run --release -p verge-tests --bin verge-bench [-- --runs 7 --idle-secs 60]
//! ```
//!
//! Deploy latency is the time from the `PUT /api/v1/services/{name}` request
//! to both replicas answering from their processes with the new greeting, on
//! a 3-agent cluster over the embedded broker. Idle RSS is read from
//! `/proc/<pid>/status` after the cluster has sat connected and idle.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use verge_tests::bench::{arg, build, rss_kib};
use verge_tests::cluster::binary;
use verge_tests::workload::{ask, hello_artifact, hello_spec};
use verge_tests::{Api, Cluster, ClusterOptions};

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Polls (every 10 ms, for at most 60 s) until every replica of `service`
/// answers from its own process with `greeting`.
async fn until_answering(api: &Api, service: &str, greeting: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(view) = api.service(service).await {
            let replicas = view["replicas"].as_array().cloned().unwrap_or_default();
            let mut n_answering = 0;
            for r in &replicas {
                if let Some(port) = r["ports"]["http"].as_u64()
                    && let Ok(answer) = ask(port).await
                    && answer["greeting"] == greeting
                {
                    n_answering += 1;
                }
            }
            if !replicas.is_empty() && n_answering == replicas.len() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("{service} did not answer with {greeting:?} within 60 s")
}

#[tokio::main]
async fn main() -> Result<()> {
    let runs = arg("--runs", 7);
    let idle_secs = arg("--idle-secs", 60);
    println!("Verge benchmark ({} build)", build());
    for name in ["edge-agent", "central-controller", "hello-edge"] {
        let size = std::fs::metadata(binary(name))?.len();
        println!("binary {name:<20} {:>6.2} MiB", size as f64 / 1048576.0);
    }

    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    for (id, region) in [
        ("edge-a", "region-a"),
        ("edge-b", "region-b"),
        ("edge-c", "region-c"),
    ] {
        cluster.add_agent(id, region).await?;
    }
    let api = cluster.api.clone();
    let artifact = api.upload_artifact(hello_artifact()).await?;
    let mut latencies = Vec::new();
    for run in 0..runs {
        let greeting = format!("run-{run}");
        let spec = hello_spec(&artifact, &greeting, 2, &["region-a", "region-b"]);
        let started = Instant::now();
        let reply = api.put_service("bench", &spec).await?;
        anyhow::ensure!(reply.status.is_success(), "PUT failed: {}", reply.body);
        until_answering(&api, "bench", &greeting).await?;
        let took = started.elapsed();
        println!(
            "deploy run {run}: PUT → 2 replicas answering in {:>5} ms",
            took.as_millis()
        );
        latencies.push(took);
    }
    let med = median(latencies.clone());
    println!(
        "deploy latency: median {} ms, min {} ms, max {} ms over {runs} runs",
        med.as_millis(),
        latencies.iter().min().map_or(0, Duration::as_millis),
        latencies.iter().max().map_or(0, Duration::as_millis),
    );

    api.delete_service("bench").await?;
    println!("idling {idle_secs} s with 3 agents connected and no workloads ...");
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let controller_pid = cluster.controller_pid().context("controller runs")?;
    println!(
        "idle RSS central-controller (with embedded broker): {} KiB",
        rss_kib(controller_pid).unwrap_or(0)
    );
    for agent in &cluster.agents {
        let pid = agent.pid().context("agent runs")?;
        println!(
            "idle RSS edge-agent {}: {} KiB",
            agent.id,
            rss_kib(pid).unwrap_or(0)
        );
    }
    Ok(())
}
