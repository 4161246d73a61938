//! Prints how the node list answers at fleet size: p50/p99 of
//! `GET /api/v1/nodes?limit=100` and of a filtered page, with many
//! concurrent clients, against a real controller whose registry holds N
//! nodes. Asserts nothing.
//!
//! ```text
//! cargo run --release -p verge-tests --bin api-bench [-- --nodes 10000 --clients 200 --requests 25]
//! ```
//!
//! The nodes are announced by signed presence messages over the embedded
//! broker from one MQTT client (no agent processes: the registry is what is
//! measured), spread over 50 regions.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use verge_tests::bench::{arg, build, percentile};
use verge_tests::mqtt::TestClient;
use verge_tests::node::{FakeNode, registered};
use verge_tests::{Cluster, ClusterOptions};

const REGIONS: u64 = 50;
/// Presences sent before waiting for them to register.
const BATCH: u64 = 500;

/// Every client sends `requests` GETs of `path` one after another; returns
/// all latencies, sorted.
async fn hammer(
    cluster: &Cluster,
    path: &str,
    clients: u64,
    requests: u64,
) -> Result<Vec<Duration>> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let api = cluster.api.clone();
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            for _ in 0..requests {
                let started = Instant::now();
                let page = api.get(&path).await?;
                took.push(started.elapsed());
                ensure!(page["nodes"].is_array(), "{path}: {page}");
            }
            Ok::<_, anyhow::Error>(took)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort();
    Ok(all)
}

#[tokio::main]
async fn main() -> Result<()> {
    let nodes = arg("--nodes", 10_000);
    let clients = arg("--clients", 200);
    let requests = arg("--requests", 25);
    println!(
        "api-bench ({} build): {nodes} nodes in {REGIONS} regions, {clients} clients x {requests} requests",
        build()
    );
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let mqtt = TestClient::connect(cluster.mqtt_addr, "api-bench").await?;
    let started = Instant::now();
    for i in 0..nodes {
        let tier = if i % 4 == 0 { "gpu" } else { "cpu" };
        FakeNode::new(&format!("node-{i:05}"), &format!("region-{}", i % REGIONS))?
            .with_label("tier", tier)
            .announce(&mqtt)
            .await?;
        // In batches, each registered before the next is sent, so that a
        // stall shows where it happened.
        if (i + 1) % BATCH == 0 || i + 1 == nodes {
            registered(&cluster, i + 1).await?;
        }
    }
    println!(
        "registered {nodes} nodes in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    for (name, path) in [
        (
            "first page, limit=100",
            "/api/v1/nodes?limit=100".to_owned(),
        ),
        (
            "filtered page (region, state, label), limit=100",
            "/api/v1/nodes?region=region-7&state=healthy&label=tier=gpu&limit=100".to_owned(),
        ),
    ] {
        // One warm-up pass, then the measured one.
        hammer(&cluster, &path, clients, 1).await?;
        let began = Instant::now();
        let took = hammer(&cluster, &path, clients, requests).await?;
        let wall = began.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let rate = took.len() as f64 / wall;
        println!(
            "{name}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} requests ({rate:.0}/s)",
            percentile(&took, 50.0).unwrap_or_default().as_secs_f64() * 1e3,
            percentile(&took, 99.0).unwrap_or_default().as_secs_f64() * 1e3,
            took.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
            took.len()
        );
    }
    let began = Instant::now();
    let all = cluster.api.get("/api/v1/nodes").await?;
    println!(
        "one unpaged list of all {} nodes: {:.0} ms",
        all["nodes"].as_array().map_or(0, Vec::len),
        began.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
