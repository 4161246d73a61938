//! Garbage on any topic, published straight to the broker, crashes neither
//! side and registers nothing. (Well-formed attacks are in `attacks.rs`.)

use std::time::Duration;

use verge_shared::Topics;
use verge_tests::mqtt::TestClient;
use verge_tests::{Cluster, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_topic_crashes_neither_side() {
    let cluster = Cluster::with_agents(&[("edge-a", "region-a")]).await;
    let api = cluster.api.clone();
    let topics = Topics::default();
    let agent = "edge-a".parse().expect("id");
    let stranger = "nobody".parse().expect("id");
    let junk: [&[u8]; 4] = [
        b"",
        b"\xff\xfe not utf-8",
        b"{\"payloadType\":\"x\",\"payload\":\"!!\",\"signatures\":[]}",
        b"[[[[[[[[[[[[[[[[[[[[[[[[",
    ];
    let attacker = TestClient::connect(cluster.mqtt_addr, "test-garbage")
        .await
        .expect("mqtt");
    let mut n_sent = 0;
    for id in [&agent, &stranger] {
        for channel in verge_shared::topic::Channel::ALL {
            for payload in junk {
                attacker
                    .publish(&topics.agent(id, channel), payload.to_vec())
                    .await
                    .expect("publish");
                n_sent += 1;
            }
        }
    }
    attacker
        .publish("verge/v1/agents/edge-a", b"x".to_vec())
        .await
        .expect("publish");
    assert_eq!(
        n_sent,
        2 * verge_shared::topic::Channel::ALL.len() * junk.len()
    );

    // Both sides still work: the controller answers and keeps hearing the
    // agent's heartbeats, which advance past the garbage.
    let before = api.node("edge-a").await.expect("node")["last_seen"].clone();
    wait_for(
        "a heartbeat after the garbage",
        Duration::from_secs(30),
        || async {
            let node = api.node("edge-a").await.map_err(|e| e.to_string())?;
            if node["last_seen"] != before && node["online"] == true && node["healthy"] == true {
                Ok(())
            } else {
                Err(node.to_string())
            }
        },
    )
    .await;
    let nodes = api.get("/api/v1/nodes").await.expect("nodes");
    let ids: Vec<&str> = nodes["nodes"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, ["edge-a"], "garbage must not register a node");
}
