//! A small simulated fleet against a real controller and its embedded
//! broker: 100 agents (real MQTT sessions, each with its own node key,
//! signed presence, heartbeats, telemetry and Last Will) register, a
//! deployment with one replica on each reaches and is acknowledged by every
//! one through the agent's own intake decision, the API lists them all
//! online and converged, and the controller received every report the
//! simulator sent, each one timed by the ingest-lag histogram.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use verge_tests::node::registered;
use verge_tests::sim::measure::{Buckets, FleetView, fleet_view, scrape, value};
use verge_tests::sim::{Fleet, FleetOptions, Intervals};
use verge_tests::{Cluster, ClusterOptions, wait_for};

const AGENTS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_registers_acknowledges_a_deployment_and_is_counted() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let fleet = Fleet::start(&FleetOptions {
        agents: AGENTS,
        per_region: AGENTS,
        broker: cluster.mqtt_addr,
        intervals: Intervals {
            heartbeat: Duration::from_secs(1),
            telemetry: Duration::from_secs(2),
        },
        trust_bundle: std::fs::read(&cluster.bundle_file).expect("bundle"),
        connect_rate: 200,
    })
    .await
    .expect("fleet starts");
    fleet
        .wait_connected(Duration::from_secs(45))
        .await
        .expect("every session up");
    registered(&cluster, AGENTS as u64)
        .await
        .expect("registered");

    let artifact = cluster
        .api
        .upload_artifact(b"fleet-sim".to_vec())
        .await
        .expect("upload");
    let spec = json!({
        "artifact": artifact,
        "replicas": AGENTS,
        "regions": [fleet.regions[0]],
        "resources": {"cpu_millis": 10, "memory_mb": 8},
    });
    let before = fleet.applied();
    assert!(
        before.iter().all(|g| *g == 0),
        "nothing deployed yet: {before:?}"
    );
    let reply = cluster.api.put_service("sim", &spec).await.expect("PUT");
    assert!(reply.status.is_success(), "{}", reply.body);
    let acked = fleet
        .wait_applied_above(&before, Instant::now(), Duration::from_secs(45))
        .await
        .expect("every agent acknowledges the deployment");
    assert_eq!(acked.len(), AGENTS);
    assert_eq!(fleet.counters.rejected.load(Ordering::Relaxed), 0);

    let view = wait_for(
        "every node online and converged",
        Duration::from_secs(45),
        || async {
            let view = fleet_view(&cluster.api).await.map_err(|e| e.to_string())?;
            let whole = FleetView {
                listed: AGENTS,
                online: AGENTS,
                healthy: AGENTS,
                converged: AGENTS,
            };
            if view == whole {
                Ok(view)
            } else {
                Err(format!("{view:?}"))
            }
        },
    )
    .await;
    assert_eq!(view.listed, AGENTS);
    let service = cluster.api.service("sim").await.expect("service view");
    let replicas = service["replicas"].as_array().expect("replicas");
    let mut nodes: Vec<&str> = replicas.iter().filter_map(|r| r["node"].as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!(nodes.len(), AGENTS, "one replica on each agent: {service}");

    assert!(
        replicas.iter().all(|r| r["state"] == "running"),
        "every replica reported running: {service}"
    );

    // Every report the fleet sent arrives (loopback, no reconnects); each
    // signed report but presence, and each telemetry message, is timed once
    // by the lag histogram (counted and timed in the same ingest call).
    assert_eq!(fleet.counters.dropped.load(Ordering::Relaxed), 0);
    let text = wait_for(
        "the controller received every report sent",
        Duration::from_secs(30),
        || async {
            // Read before the scrape: the fleet keeps reporting meanwhile.
            let sent = fleet.counters.sent();
            let text = scrape(&cluster.api).await.map_err(|e| e.to_string())?;
            let received = |kind: &str| {
                value(
                    &text,
                    &format!("verge_agent_messages_received_total{{kind=\"{kind}\"}}"),
                )
            };
            let mut missing: Vec<String> = sent
                .iter()
                .filter(|(kind, n)| received(kind) < *n as f64)
                .map(|(kind, n)| format!("{kind}: {} of {n}", received(kind)))
                .collect();
            let timed: f64 = ["heartbeat", "status", "telemetry", "latency"]
                .iter()
                .map(|k| received(k))
                .sum();
            let lag = Buckets::parse(&text, "verge_ingest_lag_seconds").count();
            if lag != timed {
                missing.push(format!("{lag} lag observations for {timed} timed messages"));
            }
            if missing.is_empty() {
                Ok(text)
            } else {
                Err(missing.join(", "))
            }
        },
    )
    .await;
    for (kind, n) in fleet.counters.sent() {
        assert!(n > 0, "the fleet sent no {kind}");
    }
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("verge_agent_messages_refused_total"))
        .collect();
    assert!(refused.is_empty(), "nothing refused: {refused:?}");
    assert_eq!(fleet.n_connected(), AGENTS);
}
