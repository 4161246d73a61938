//! Desired states that must be refused, published straight to the broker as
//! an attacker or a broken client would: each is rejected with a reason the
//! controller shows, and the running workload is untouched. Garbage on any
//! topic crashes neither side.

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use verge_shared::messages::{DesiredState, payload_type};
use verge_shared::{Envelope, Generation, PublicKey, SigningKey, Timestamp, Topics, limits};
use verge_tests::mqtt::{TestClient, retained};
use verge_tests::workload::{hello_artifact, hello_spec, wait_running};
use verge_tests::{Cluster, wait_for};

fn spec(artifact: &str, greeting: &str) -> Value {
    hello_spec(artifact, greeting, 1, &["region-a"])
}

fn sign(key: &SigningKey, doc: &DesiredState) -> Vec<u8> {
    key.sign_json(payload_type::DESIRED_STATE, doc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_rejects_forged_foreign_expired_and_replayed_desired_states() {
    let cluster = Cluster::with_agents(&[("edge-a", "region-a")]).await;
    let api = cluster.api.clone();
    let topics = Topics::default();
    let desired_topic = topics.desired(&"edge-a".parse().expect("id"));
    let controller_key = cluster.controller_signing_key();
    let controller_public =
        PublicKey::from_base64(&cluster.controller_public_key).expect("public key");

    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    api.put_service("hello", &spec(&artifact, "v1"))
        .await
        .expect("PUT");
    wait_running(&api, "hello", "v1").await;
    // The retained generation that is about to become old: the replay below.
    let old = retained(cluster.mqtt_addr, "test-watcher-1", &desired_topic)
        .await
        .expect("retained");

    api.put_service("hello", &spec(&artifact, "v2"))
        .await
        .expect("PUT");
    let running = wait_running(&api, "hello", "v2").await.remove(0);
    let mut watcher = TestClient::connect(cluster.mqtt_addr, "test-watcher-2")
        .await
        .expect("mqtt");
    watcher.subscribe(&desired_topic).await.expect("subscribe");
    // The controller may republish the same generation; read until v2 shows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (current_env, current_doc) = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = watcher
            .next_on(&desired_topic, left)
            .await
            .expect("desired state v2");
        let env = Envelope::parse(&msg.payload, limits::MAX_DESIRED_STATE_BYTES).expect("parse");
        let doc: DesiredState = env
            .open(payload_type::DESIRED_STATE, &controller_public)
            .expect("verify");
        if doc.generation.get() == running.applied_generation {
            break (env, doc);
        }
    };
    let ahead = Generation::new(current_doc.generation.get() + 10);

    let tampered = {
        let mut doc = current_doc.clone();
        doc.generation = ahead;
        let mut env = current_env.clone();
        env.payload = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&doc).expect("json"));
        serde_json::to_vec(&env).expect("json")
    };
    let unknown_key = {
        let mut doc = current_doc.clone();
        doc.generation = ahead;
        sign(&SigningKey::generate().expect("key").0, &doc)
    };
    let other_agent = {
        let mut doc = current_doc.clone();
        doc.generation = ahead;
        doc.agent = "edge-b".parse().expect("id");
        sign(&controller_key, &doc)
    };
    let expired = {
        let mut doc = current_doc.clone();
        doc.generation = ahead;
        let hour = Duration::from_secs(3600);
        let now = Timestamp::now().unix_millis();
        doc.issued_at = Timestamp::from_unix_millis(now - 2 * 3_600_000);
        doc.expires_at = doc.issued_at.saturating_add(hour);
        sign(&controller_key, &doc)
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad_signature", tampered),
        ("unknown_key", unknown_key),
        ("wrong_agent", other_agent),
        ("expired", expired),
        ("stale_generation", old.payload),
        ("malformed", b"{\"payloadType\": 7".to_vec()),
        ("too_large", vec![b' '; limits::MAX_DESIRED_STATE_BYTES + 1]),
    ];

    let attacker = TestClient::connect(cluster.mqtt_addr, "test-attacker")
        .await
        .expect("mqtt");
    for (reason, payload) in cases {
        attacker
            .publish(&desired_topic, payload)
            .await
            .expect("publish");
        wait_for(
            &format!("a {reason} rejection"),
            Duration::from_secs(30),
            || async {
                let node = api.node("edge-a").await.map_err(|e| e.to_string())?;
                if node["last_rejection"]["reason"] == reason {
                    Ok(())
                } else {
                    Err(node["last_rejection"].to_string())
                }
            },
        )
        .await;
        // The last good state keeps running, untouched.
        let now = wait_running(&api, "hello", "v2").await.remove(0);
        assert_eq!(now.pid, running.pid, "{reason}: the workload was restarted");
        assert_eq!(
            now.applied_generation, running.applied_generation,
            "{reason}"
        );
    }
}

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
