//! A real agent's telemetry reaches the controller and is served by
//! `GET /api/v1/nodes/{id}/telemetry`: oldest first, `seq` growing, the CPU
//! use derived between samples of one agent process, and none derived
//! across a restart of the agent (whose `seq` goes on from its disk).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
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

fn number(sample: &Value, key: &str) -> u64 {
    sample[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is a number in {sample}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agents_telemetry_is_kept_and_served_oldest_first() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let broker = cluster.mqtt_addr;
    cluster
        .add_agent_with("edge-a", "region-a", broker, "telemetry_interval_secs = 1")
        .await
        .expect("agent");
    let api = cluster.api.clone();

    let first = samples_when(&api, "two telemetry samples of edge-a", |s| s.len() >= 2).await;
    for pair in first.windows(2) {
        assert!(
            number(&pair[1], "seq") > number(&pair[0], "seq"),
            "oldest first, seq growing: {first:?}"
        );
    }
    let newest = first.last().expect("samples");
    assert!(number(newest, "rss_kib") > 0, "{newest}");
    assert!(number(newest, "cpu_millis") > 0, "{newest}");
    assert_eq!(
        first[0]["cpu_percent"],
        Value::Null,
        "nothing before the first"
    );
    assert!(
        newest["cpu_percent"].as_f64().is_some_and(|p| p >= 0.0),
        "derived from the one before: {newest}"
    );
    let view = api
        .get("/api/v1/nodes/edge-a/telemetry")
        .await
        .expect("view");
    assert_eq!(view["interval_secs"], 1, "{view}");

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
            && s.windows(2)
                .any(|w| number(&w[1], "uptime_secs") < number(&w[0], "uptime_secs"))
    })
    .await;
    let restart = after
        .windows(2)
        .position(|w| number(&w[1], "uptime_secs") < number(&w[0], "uptime_secs"))
        .expect("the restart")
        + 1;
    assert_eq!(
        after[restart]["cpu_percent"],
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
