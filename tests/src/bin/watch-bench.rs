//! Prints how the watch stream fans changes out: N watchers on a real
//! controller while nodes report R status changes a second, with the
//! delivery lag (from the node's publish to the watcher's parsed event)
//! at p50/p99/max, every change counted at every watcher, and the
//! controller's RSS before, at its peak and after. Asserts nothing.
//!
//! ```text
//! cargo run --release -p verge-tests --bin watch-bench [-- --watchers 100 --rate 1000 --secs 10 --nodes 100]
//! ```
//!
//! The nodes are fake (signed presence and status over the embedded broker
//! from one MQTT client, no agent processes): what is measured is the
//! controller's ingest, its change feed and the SSE streams.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use verge_tests::bench::{arg, build, percentile, rss_kib};
use verge_tests::mqtt::TestClient;
use verge_tests::node::FakeNode;
use verge_tests::sse;
use verge_tests::{Cluster, ClusterOptions};

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The `p`th percentile of `sorted` microseconds, in milliseconds (NaN
/// when nothing was measured).
fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    percentile(sorted, p).map_or(f64::NAN, |micros| micros as f64 / 1000.0)
}

/// What one watcher saw: the lag of every status change, and whether its
/// stream was dropped.
struct Seen {
    lags_us: Vec<u64>,
    dropped: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let watchers = arg("--watchers", 100);
    let rate = arg("--rate", 1000);
    let secs = arg("--secs", 10);
    let n_nodes = arg("--nodes", 100);
    println!(
        "watch-bench ({} build): {watchers} watchers, {rate} changes/s for {secs} s from {n_nodes} nodes",
        build()
    );
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let pid = cluster.controller_pid().context("controller pid")?;
    let mqtt = TestClient::connect(cluster.mqtt_addr, "watch-bench").await?;
    let nodes: Vec<FakeNode> = (0..n_nodes)
        .map(|i| FakeNode::new(&format!("node-{i:04}"), &format!("region-{}", i % 10)))
        .collect::<Result<_>>()?;

    // Every node registered, seen on a watch, before the watchers connect.
    let mut probe = sse::watch(&cluster.api, "?kind=node", None)
        .await?
        .map_err(|r| anyhow::anyhow!("watch refused: {r:?}"))?;
    for node in &nodes {
        node.announce(&mqtt).await?;
    }
    let mut registered = 0;
    while registered < n_nodes {
        let event = probe
            .next(Duration::from_secs(60))
            .await?
            .context("stream ended")?;
        if event.data["action"] == "registered" {
            registered += 1;
        }
    }
    drop(probe);

    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let mut stream = sse::watch(&cluster.api, "?kind=node", None)
            .await?
            .map_err(|r| anyhow::anyhow!("watch refused: {r:?}"))?;
        let expected = rate * secs;
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen {
                lags_us: Vec::with_capacity(usize::try_from(expected).unwrap_or(0)),
                dropped: false,
            };
            while (seen.lags_us.len() as u64) < expected {
                let Ok(Some(event)) = stream.next(Duration::from_secs(30)).await else {
                    break;
                };
                if event.event == "dropped" {
                    seen.dropped = true;
                    break;
                }
                let sent = event.data["object"]["workloads"][0]["message"]
                    .as_str()
                    .and_then(|m| m.parse::<u64>().ok());
                if let Some(sent) = sent {
                    seen.lags_us.push(micros_now().saturating_sub(sent));
                }
            }
            seen
        }));
    }
    let rss_before = rss_kib(pid).context("controller RSS")?;

    // The load: `rate` statuses a second in 10 ms slices, round robin over
    // the nodes, each carrying its send time.
    let per_slice = (rate / 100).max(1);
    let mut slice = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let mut n_sent = 0u64;
    let mut rss_peak = rss_before;
    let mut i = 0usize;
    while n_sent < rate * secs {
        slice.tick().await;
        for _ in 0..per_slice.min(rate * secs - n_sent) {
            nodes[i % nodes.len()]
                .report(&mqtt, "bench", micros_now().to_string())
                .await?;
            i += 1;
            n_sent += 1;
        }
        if n_sent.is_multiple_of(rate) {
            rss_peak = rss_peak.max(rss_kib(pid).unwrap_or(0));
        }
    }
    let send_secs = started.elapsed().as_secs_f64();

    let mut lags = Vec::new();
    let mut n_dropped = 0;
    let mut short = 0u64;
    for task in tasks {
        let seen = task.await?;
        n_dropped += u64::from(seen.dropped);
        short += n_sent.saturating_sub(seen.lags_us.len() as u64);
        lags.extend(seen.lags_us);
    }
    let rss_after = rss_kib(pid).context("controller RSS")?;
    lags.sort_unstable();
    #[allow(clippy::cast_precision_loss)]
    let achieved = n_sent as f64 / send_secs;
    println!("sent {n_sent} status changes in {send_secs:.1} s ({achieved:.0}/s)");
    println!(
        "delivered {} of {} (changes x watchers); {short} missing; {n_dropped} watchers dropped as slow",
        lags.len(),
        n_sent * watchers
    );
    println!(
        "delivery lag: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile_ms(&lags, 50.0),
        percentile_ms(&lags, 99.0),
        percentile_ms(&lags, 100.0)
    );
    println!(
        "controller RSS: {:.1} MiB before, {:.1} MiB peak, {:.1} MiB after",
        rss_before as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    if short > 0 {
        bail!("{short} deliveries missing");
    }
    Ok(())
}
