//! Many nodes starting at once lose nothing at first contact: each sends
//! its signed presence, then at once a status (QoS 1) and a heartbeat
//! (QoS 0, as agents do), and the broker may hand the controller the
//! heartbeat or the status before the presence that pins the node's key.
//! Counted: every status and every heartbeat sent is accepted (each shows in
//! the node's view), and the controller's metrics count no refused message.

use std::time::Duration;

use verge_tests::mqtt::TestClient;
use verge_tests::node::{FakeNode, registered};
use verge_tests::{Cluster, ClusterOptions, wait_for};

/// Nodes starting at once (three messages each stay well under the
/// controller's ingest queue of 1,024).
const NODES: u64 = 200;
/// The generation each node's heartbeat says it applied.
const APPLIED: u64 = 7;

/// The value of every sample of `metric` in the OpenMetrics `text`, summed.
fn metric_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(cluster: &Cluster) -> String {
    let api = &cluster.api;
    api.http()
        .get(format!("{}/metrics", api.base))
        .bearer_auth(api.token())
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_at_once_lose_no_message_sent_before_their_presence_is_in() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let mqtt = TestClient::connect(cluster.mqtt_addr, "first-contact")
        .await
        .expect("mqtt");
    let nodes: Vec<FakeNode> = (0..NODES)
        .map(|i| FakeNode::new(&format!("fc{i:03}"), "eu-west").expect("node"))
        .collect();
    let (mut statuses, mut heartbeats) = (0u64, 0u64);
    for node in &nodes {
        node.announce(&mqtt).await.expect("presence");
        node.report(&mqtt, "web", "first".into())
            .await
            .expect("status");
        statuses += 1;
        node.heartbeat(&mqtt, APPLIED).await.expect("heartbeat");
        heartbeats += 1;
    }
    registered(&cluster, NODES)
        .await
        .expect("every node registered");

    // Every status shows as the node's workload, every heartbeat as its
    // applied generation.
    let api = cluster.api.clone();
    let (with_status, with_heartbeat) =
        wait_for("every status and heartbeat accepted", Duration::from_secs(60), || async {
            let page = api
                .get("/api/v1/nodes?prefix=fc")
                .await
                .map_err(|e| e.to_string())?;
            let list = page["nodes"].as_array().cloned().unwrap_or_default();
            let with_status = list
                .iter()
                .filter(|n| n["workloads"].as_array().is_some_and(|w| w.len() == 1))
                .count() as u64;
            let with_heartbeat = list
                .iter()
                .filter(|n| n["applied_generation"] == APPLIED)
                .count() as u64;
            if with_status == NODES && with_heartbeat == NODES {
                Ok((with_status, with_heartbeat))
            } else {
                Err(format!(
                    "{with_status} of {NODES} statuses and {with_heartbeat} of {NODES} heartbeats accepted"
                ))
            }
        })
        .await;

    let metrics = scrape(&cluster).await;
    let refused = metric_sum(&metrics, "verge_agent_messages_refused_total");
    let held = metric_sum(&metrics, "verge_agent_messages_held_total");
    let replayed = metric_sum(&metrics, "verge_agent_messages_replayed_total");
    println!(
        "sent {statuses} statuses and {heartbeats} heartbeats from {NODES} new nodes; accepted \
         {with_status} and {with_heartbeat}; {held} came before their presence and were held, \
         {replayed} replayed; {refused} refused"
    );
    assert_eq!(refused, 0.0, "no agent message refused:\n{metrics}");
    assert_eq!(held, replayed, "every held message was handled");
}
