//! Store-and-forward: the agent's uplink is cut for 60 seconds while it keeps
//! producing telemetry; once the link returns every message it produced is
//! received, counted at the producer (its outbox, read after it stopped) and
//! at a subscriber that stayed connected to the broker throughout.

use std::collections::BTreeMap;
use std::time::Duration;

use verge_shared::telemetry::Telemetry;
use verge_shared::{AgentId, RegionId, Topics};
use verge_tests::faults::read_outbox;
use verge_tests::mqtt::TestClient;
use verge_tests::proxy::Proxy;
use verge_tests::{Cluster, ClusterOptions};

/// What [`receive_until`] drains at the end, until the topic goes quiet.
const TAIL: &str = "the messages still in flight";

/// How long the uplink stays cut.
const OUTAGE: Duration = Duration::from_secs(60);

/// Receives telemetry until `done` holds for the counts by sequence number.
async fn receive_until(
    client: &mut TestClient,
    topic: &str,
    seen: &mut BTreeMap<u64, u32>,
    what: &str,
    done: impl Fn(&BTreeMap<u64, u32>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !done(seen) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; received {} distinct messages, last {:?}",
            seen.len(),
            seen.keys().next_back()
        );
        let Ok(msg) = client.next_on(topic, Duration::from_secs(5)).await else {
            if what == TAIL {
                // Quiet for 5 s after the producer stopped: all arrived.
                return;
            }
            continue;
        };
        let t: Telemetry = serde_json::from_slice(&msg.payload).expect("telemetry parses");
        *seen.entry(t.seq).or_default() += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_produced_during_an_outage_is_delivered_after_it() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster");
    let proxy = Proxy::start(cluster.mqtt_addr).await.expect("proxy");
    let mut receiver = TestClient::connect(cluster.mqtt_addr, "test-telemetry")
        .await
        .expect("mqtt");
    let topic = Topics::default().telemetry(
        &RegionId::new("region-a").expect("region"),
        &AgentId::new("edge-a").expect("id"),
    );
    receiver.subscribe(&topic).await.expect("subscribe");
    cluster
        .add_agent_with(
            "edge-a",
            "region-a",
            proxy.addr,
            "telemetry_interval_secs = 1",
        )
        .await
        .expect("agent");

    let mut seen = BTreeMap::new();
    receive_until(
        &mut receiver,
        &topic,
        &mut seen,
        "telemetry before the outage",
        |s| s.len() >= 3,
    )
    .await;
    let before = *seen.keys().next_back().expect("some telemetry");

    proxy.cut();
    // The outage itself: the agent keeps producing, nothing gets through.
    tokio::time::sleep(OUTAGE).await;
    let during = seen.keys().filter(|&&s| s > before + 1).count();
    proxy.restore();

    // About one message per second was produced while cut: at least 50 of
    // them arrive, and nothing below the highest one is missing.
    receive_until(
        &mut receiver,
        &topic,
        &mut seen,
        "the messages produced during the outage",
        |s| {
            let last = *s.keys().next_back().unwrap_or(&0);
            last >= before + 50 && (1..=last).all(|q| s.contains_key(&q))
        },
    )
    .await;

    // The producer's own count, from its outbox after a clean stop, and
    // the receiver's after everything in flight has arrived.
    let agent = cluster.agent("edge-a");
    agent.stop();
    receive_until(&mut receiver, &topic, &mut seen, TAIL, |_| false).await;
    let outbox = read_outbox(&agent.data_dir).expect("read the outbox");
    let produced = outbox.last_seq;
    let still_queued: Vec<u64> = outbox
        .queued
        .iter()
        .filter(|e| e.topic == topic)
        .map(|e| {
            serde_json::from_slice::<Telemetry>(&e.payload)
                .expect("queued telemetry parses")
                .seq
        })
        .collect();
    assert_eq!(outbox.dropped, 0, "nothing dropped within the quota");
    let lost: Vec<u64> = (1..=produced)
        .filter(|q| !seen.contains_key(q) && !still_queued.contains(q))
        .collect();
    assert!(
        lost.is_empty(),
        "produced {produced}, received {}, still queued {still_queued:?}, lost {lost:?}",
        seen.len()
    );
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    assert_eq!(during, 0, "nothing got through the cut link");
    assert!(
        duplicates <= 32,
        "at most one window of duplicates after the reconnect, got {duplicates}"
    );
}
