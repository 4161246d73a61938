//! A real agent's telemetry: on MQTT it describes the host and each
//! workload with the units in its field names; at the controller it is
//! kept and served by `GET /api/v1/nodes/{id}/telemetry`: oldest first,
//! `seq` growing, the CPU use derived between samples of one agent process,
//! and none derived across a restart of the agent (whose `seq` goes on from
//! its disk).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use verge_tests::mqtt::TestClient;
use verge_tests::workload::deploy_hello;
use verge_tests::{Api, Cluster, ClusterOptions, wait_for};

/// How long a condition of a real cluster may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// The node's kept samples, once `done` holds for them.
async fn samples_when(api: &Api, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    wait_for(what, DEADLINE, || async {
        let view = api
            .get("/api/v1/nodes/edge-a/telemetry")
            .await
            .map_err(|e| e.to_string())?;
        let samples = view["samples"].as_array().cloned().unwrap_or_default();
        if view["node"] == "edge-a" && done(&samples) {
            Ok(samples)
        } else {
            Err(view.to_string())
        }
    })
    .await
}

/// A cluster whose one agent, `edge-a` in `region-a`, sends telemetry
/// every second.
async fn edge_a_sampling_every_second() -> Cluster {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let broker = cluster.mqtt_addr;
    cluster
        .add_agent_with("edge-a", "region-a", broker, "telemetry_interval_secs = 1")
        .await
        .expect("agent");
    cluster
}

fn number(sample: &Value, key: &str) -> u64 {
    sample[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is a number in {sample}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agents_telemetry_is_kept_and_served_oldest_first() {
    let mut cluster = edge_a_sampling_every_second().await;
    let api = cluster.api.clone();

    let first = samples_when(&api, "two telemetry samples of edge-a", |s| s.len() >= 2).await;
    for pair in first.windows(2) {
        assert!(
            number(&pair[1], "seq") > number(&pair[0], "seq"),
            "oldest first, seq growing: {first:?}"
        );
    }
    let newest = first.last().expect("samples");
    assert!(number(newest, "agent_rss_bytes") > 0, "{newest}");
    assert!(number(newest, "memory_available_bytes") > 0, "{newest}");
    assert!(number(newest, "disk_free_bytes") > 0, "{newest}");
    assert!(
        newest["agent_cpu_seconds"]
            .as_f64()
            .is_some_and(|s| s > 0.0),
        "{newest}"
    );
    assert_eq!(
        first[0]["agent_cpu_percent"],
        Value::Null,
        "nothing before the first"
    );
    assert!(
        newest["agent_cpu_percent"]
            .as_f64()
            .is_some_and(|p| p >= 0.0),
        "derived from the one before: {newest}"
    );
    let view = api
        .get("/api/v1/nodes/edge-a/telemetry")
        .await
        .expect("view");
    assert_eq!(view["interval_seconds"], 1, "{view}");

    // More arrive: the newest seq and the number kept both grow.
    let (seen, last_seq) = (first.len(), number(newest, "seq"));
    let later = samples_when(&api, "newer telemetry of edge-a", |s| {
        s.len() > seen && s.last().is_some_and(|n| number(n, "seq") > last_seq)
    })
    .await;

    // A restarted agent numbers on from its disk; its CPU time and uptime
    // start over, so no CPU use is derived across the restart.
    let before = number(later.last().expect("samples"), "seq");
    cluster.agent("edge-a").restart().expect("restart");
    let after = samples_when(&api, "telemetry from the restarted agent", |s| {
        s.iter().any(|n| number(n, "seq") > before + 1)
            && s.windows(2).any(|w| {
                number(&w[1], "agent_uptime_seconds") < number(&w[0], "agent_uptime_seconds")
            })
    })
    .await;
    let restart = after
        .windows(2)
        .position(|w| number(&w[1], "agent_uptime_seconds") < number(&w[0], "agent_uptime_seconds"))
        .expect("the restart")
        + 1;
    assert_eq!(
        after[restart]["agent_cpu_percent"],
        Value::Null,
        "the first sample after the restart: {after:?}"
    );
    for pair in after.windows(2) {
        assert!(
            number(&pair[1], "seq") > number(&pair[0], "seq"),
            "every seq once, growing, across the restart: {after:?}"
        );
    }

    let unknown = api
        .request(Method::GET, "/api/v1/nodes/edge-z/telemetry", None)
        .await
        .expect("request");
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
    assert_eq!(unknown.body["error"]["code"], "not_found");
}

/// What a consumer subscribed to the telemetry topic receives: the host's
/// figures and each workload's, every one named with its unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_on_mqtt_describes_the_host_and_each_workload() {
    let cluster = edge_a_sampling_every_second().await;
    let mut consumer = TestClient::connect(cluster.mqtt_addr, "telemetry-consumer")
        .await
        .expect("consumer connects");
    consumer
        .subscribe_acked("verge/v1/telemetry/+/+")
        .await
        .expect("subscribed");
    deploy_hello(&cluster.api, "hello", "hi", "region-a").await;

    let deadline = std::time::Instant::now() + DEADLINE;
    let sample = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no telemetry with the running workload's process within {DEADLINE:?}"
        );
        let message = consumer
            .next_on("verge/v1/telemetry/region-a/edge-a", DEADLINE)
            .await
            .expect("telemetry arrives");
        let sample: Value = serde_json::from_slice(&message.payload).expect("JSON");
        let running = sample["workloads"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w["state"] == "running" && w["process"]["rss_bytes"].as_u64() > Some(0))
        });
        if running {
            break sample;
        }
    };
    assert_eq!(sample["schema_version"], 2, "{sample}");
    let host = &sample["host"];
    for key in [
        "uptime_seconds",
        "cpus",
        "memory_total_bytes",
        "memory_available_bytes",
        "disk_total_bytes",
        "disk_free_bytes",
    ] {
        assert!(number(host, key) > 0, "host.{key} in {sample}");
    }
    assert!(
        host["boot_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{sample}"
    );
    assert!(
        host["cpu_percent"]
            .as_f64()
            .is_some_and(|p| (0.0..=100.0).contains(&p)),
        "after the first sample: {sample}"
    );
    assert!(
        host["network"]
            .as_array()
            .is_some_and(|n| n.iter().all(|i| i["name"] != "lo")),
        "loopback is left out: {sample}"
    );
    let workload = &sample["workloads"][0];
    assert_eq!(workload["service"], "hello", "{sample}");
    assert_eq!(workload["replica"], 0, "{sample}");
    assert!(number(&workload["process"], "rss_bytes") > 0, "{sample}");
    assert!(
        workload["process"]["cpu_seconds"].as_f64().is_some(),
        "{sample}"
    );
    assert!(
        number(&sample["agent_process"], "rss_bytes") > 0,
        "{sample}"
    );
    assert_eq!(sample["interval_seconds"], 1, "{sample}");
}
