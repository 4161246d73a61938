//! Read-only consumers on the embedded broker, end to end: a real
//! controller with TLS, real token-enrolled agents in two regions, and
//! consumer certificates issued by `POST /api/v1/consumers`.
//!
//! A consumer subscribed to `verge/v1/#` receives presence and telemetry
//! but never a desired state, a status or a heartbeat while a service is
//! deployed; a region-limited one only its region's telemetry and no
//! presence; a consumer's PUBLISH closes its connection and reaches no
//! subscriber; a CONNECT with a Will is refused; a deleted consumer is cut
//! off at once and cannot connect again.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use rumqttc::{LastWill, QoS, SubscribeReasonCode};
use serde_json::{Value, json};
use verge_tests::mqtt::{Message, TestClient};
use verge_tests::tls::client_config;
use verge_tests::workload::deploy_hello;
use verge_tests::{Cluster, ClusterOptions, wait_for};

/// How long a message, a reconnect or a log line may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// The topics' kinds: `agents/edge-a/status` → `agents/status`,
/// `telemetry/region-a/edge-a` → `telemetry/region-a`,
/// `fleet/events/region-a` as it is.
fn kind(topic: &str) -> String {
    let rest = topic.strip_prefix("verge/v1/").unwrap_or(topic);
    let levels: Vec<&str> = rest.split('/').collect();
    match levels.as_slice() {
        ["agents", _, channel, ..] => format!("agents/{channel}"),
        ["fleet", "events", region] => format!("fleet/events/{region}"),
        [first, region, ..] => format!("{first}/{region}"),
        _ => rest.to_owned(),
    }
}

struct Issued {
    cert: String,
    key: String,
}

async fn issue(cluster: &Cluster, body: Value) -> Issued {
    let reply = cluster
        .api
        .request(
            Method::POST,
            "/api/v1/consumers",
            Some(body.to_string().into()),
        )
        .await
        .expect("POST /api/v1/consumers");
    assert_eq!(reply.status, 201, "{}", reply.body);
    let text = |k: &str| reply.body[k].as_str().expect(k).to_owned();
    assert!(text("user").starts_with("consumer+"));
    Issued {
        cert: text("certificate_pem"),
        key: text("key_pem"),
    }
}

async fn connect(cluster: &Cluster, who: &Issued, client_id: &str) -> anyhow::Result<TestClient> {
    let ca = cluster.ca_pem.clone().expect("CA");
    let tls = client_config(Some(&ca), Some((&who.cert, &who.key))).expect("TLS config");
    TestClient::connect_tls(cluster.mqtt_addr, client_id, tls).await
}

/// Reads `client`'s messages until `done` says enough (or fails at the deadline).
async fn collect(
    client: &mut TestClient,
    what: &str,
    mut done: impl FnMut(&BTreeMap<String, usize>, &[Message]) -> bool,
) -> (BTreeMap<String, usize>, Vec<Message>) {
    let mut counts = BTreeMap::new();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done(&counts, &seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = client
            .next(left)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:#}; seen so far {counts:?}"));
        *counts.entry(kind(&message.topic)).or_insert(0) += 1;
        seen.push(message);
    }
    (counts, seen)
}

async fn refusals(cluster: &Cluster, reason: &str) -> u64 {
    let text = cluster
        .api
        .http()
        .get(format!("{}/metrics", cluster.api.base))
        .bearer_auth(cluster.api.token())
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    let prefix = format!("verge_broker_consumer_refusals_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_read_what_they_may_publish_nothing_and_are_cut_off_when_deleted() {
    let mut cluster = Cluster::start(ClusterOptions {
        tls: true,
        ..ClusterOptions::default()
    })
    .await
    .expect("a TLS cluster starts");
    for (id, region) in [("edge-a", "region-a"), ("edge-b", "region-b")] {
        let (_, token) = cluster.api.create_token(region, 1).await.expect("token");
        let env = vec![("VERGE_AGENT_ENROLL_TOKEN".to_owned(), token)];
        let broker = cluster.mqtt_addr;
        cluster
            .spawn_agent(id, region, broker, "telemetry_interval_secs = 1", env)
            .expect("agent starts");
        cluster.wait_node_online(id).await;
    }

    let everything = issue(&cluster, json!({"name": "dashboard"})).await;
    let limited = issue(
        &cluster,
        json!({"name": "region-a-only", "regions": ["region-a"]}),
    )
    .await;
    let witness_cert = issue(&cluster, json!({"name": "witness"})).await;
    // Not an agent: neither the API nor the broker takes it for one.
    let listed = cluster.api.get("/api/v1/consumers").await.expect("list");
    assert_eq!(listed["consumers"].as_array().map(Vec::len), Some(3));
    assert!(!listed.to_string().contains("PRIVATE KEY"));

    let mut all = connect(&cluster, &everything, "dashboard")
        .await
        .expect("connects");
    let code = all.subscribe_acked("verge/v1/#").await.expect("SUBACK");
    assert!(matches!(code, SubscribeReasonCode::Success(_)), "{code:?}");
    // Only what it may not read: refused.
    let code = all
        .subscribe_acked("verge/v1/agents/+/desired")
        .await
        .expect("SUBACK");
    assert_eq!(code, SubscribeReasonCode::Failure);
    let mut some = connect(&cluster, &limited, "region-a-only")
        .await
        .expect("connects");
    let code = some.subscribe_acked("#").await.expect("SUBACK");
    assert!(matches!(code, SubscribeReasonCode::Success(_)), "{code:?}");
    let mut witness = connect(&cluster, &witness_cert, "witness")
        .await
        .expect("connects");
    witness.subscribe_acked("verge/v1/#").await.expect("SUBACK");

    // Deploy while they listen: desired states and statuses flow.
    deploy_hello(&cluster.api, "hello", "v1", "region-a").await;
    let (counts, _) = collect(&mut all, "the unlimited consumer", |counts, _| {
        counts.get("telemetry/region-a").copied().unwrap_or(0) >= 3
            && counts.get("telemetry/region-b").copied().unwrap_or(0) >= 3
            && counts.contains_key("agents/presence")
    })
    .await;
    for never in [
        "desired",
        "status",
        "heartbeat",
        "logs",
        "probes",
        "latency",
    ] {
        assert!(
            !counts.contains_key(&format!("agents/{never}")),
            "the consumer got {never}: {counts:?}"
        );
    }
    let (counts, _) = collect(&mut some, "the region-limited consumer", |counts, _| {
        counts.get("telemetry/region-a").copied().unwrap_or(0) >= 3
    })
    .await;
    // Its region's telemetry, and its region's alarms and fleet events if
    // any were published meanwhile; nothing of region-b, the fleet-wide
    // segment or presence (which names no region).
    assert!(
        counts.keys().all(|k| [
            "telemetry/region-a",
            "alarms/region-a",
            "fleet/events/region-a"
        ]
        .contains(&k.as_str())),
        "only its region's topics: {counts:?}"
    );

    // A consumer forges edge-a's presence: its connection is closed and
    // nobody receives it.
    let before = refusals(&cluster, "publish").await;
    all.publish("verge/v1/agents/edge-a/presence", b"forged".to_vec())
        .await
        .expect("queued");
    wait_for("the forger to be disconnected", DEADLINE, || async {
        if all.is_connected() {
            Err("still connected".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(refusals(&cluster, "publish").await, before + 1);
    // The witness reads presence too: by the time it has seen fresh
    // telemetry from both agents, the forgery would have arrived.
    let (_, seen) = collect(&mut witness, "the witness", |counts, _| {
        counts.get("telemetry/region-a").copied().unwrap_or(0) >= 2
            && counts.get("telemetry/region-b").copied().unwrap_or(0) >= 2
    })
    .await;
    assert!(
        seen.iter().all(|m| m.payload != b"forged"),
        "the forged presence was delivered"
    );

    // A Will is refused at CONNECT.
    let ca = cluster.ca_pem.clone().expect("CA");
    let tls = client_config(Some(&ca), Some((&everything.cert, &everything.key))).expect("TLS");
    let mut options = TestClient::options(cluster.mqtt_addr, "with-will");
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(tls)),
    ));
    options.set_last_will(LastWill::new(
        "verge/v1/agents/edge-a/presence",
        "gone",
        QoS::AtLeastOnce,
        true,
    ));
    assert!(TestClient::connect_with(options).await.is_err());
    assert!(refusals(&cluster, "will").await >= 1);

    // Deleting the limited consumer cuts it off at once; it cannot come back.
    let reply = cluster
        .api
        .request(Method::DELETE, "/api/v1/consumers/region-a-only", None)
        .await
        .expect("DELETE");
    assert_eq!(reply.status, 204, "{}", reply.body);
    wait_for(
        "the deleted consumer to be disconnected",
        DEADLINE,
        || async {
            if some.is_connected() {
                Err("still connected".to_owned())
            } else {
                Ok(())
            }
        },
    )
    .await;
    let again = connect(&cluster, &limited, "region-a-only").await;
    let Err(e) = again else {
        panic!("a deleted consumer connected again");
    };
    assert!(format!("{e:#}").contains("Revoked"), "{e:#}");
    // The others are untouched.
    connect(&cluster, &everything, "dashboard-2")
        .await
        .expect("a live consumer still connects");
    assert!(witness.is_connected());
}
