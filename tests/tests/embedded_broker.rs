//! What any client can do on the embedded rumqttd broker, which has no topic
//! ACLs: read every agent's desired state, presence and status, publish on
//! another agent's topics, replace a retained desired state, and take over
//! another agent's client id. The agents and the controller act only on
//! documents signed by the right key, so these are confidentiality and
//! availability gaps, not integrity ones. The table in docs/security.md
//! ("What a client can do on the embedded broker") is checked here.

use std::time::Duration;

use rumqttc::SubscribeReasonCode;
use verge_shared::messages::{Delivery, DesiredState, Presence, payload_type};
use verge_shared::{Envelope, PublicKey, Topics, limits};
use verge_tests::mqtt::TestClient;
use verge_tests::workload::{hello_artifact, hello_spec, wait_running};
use verge_tests::{Cluster, wait_for};

const DEADLINE: Duration = Duration::from_secs(30);

/// Whether `payload` is a delivery whose desired state the controller signed.
fn genuine(payload: &[u8], controller: &PublicKey) -> Result<(), String> {
    if payload.len() > limits::MAX_DELIVERY_BYTES {
        return Err(format!("{} bytes", payload.len()));
    }
    let delivery: Delivery = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let _: DesiredState = delivery
        .desired
        .open(payload_type::DESIRED_STATE, controller)
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_client_reads_and_writes_every_agents_topics() {
    let cluster = Cluster::with_agents(&[("edge-b", "region-a")]).await;
    let api = cluster.api.clone();
    let topics = Topics::default();
    let b = "edge-b".parse().expect("id");
    let (desired, presence, status) = (topics.desired(&b), topics.presence(&b), topics.status(&b));
    let controller_key = cluster.roles.controller.public_key();
    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    api.put_service("hello", &hello_spec(&artifact, "v1", 1, &["region-a"]))
        .await
        .expect("PUT");
    wait_running(&api, "hello", "v1").await;

    // Reading: a client that calls itself edge-a gets edge-b's signed desired
    // state and presence (both retained) and its live status.
    let mut spy = TestClient::connect(cluster.mqtt_addr, "edge-a")
        .await
        .expect("anyone connects");
    let code = spy.subscribe_acked("#").await.expect("SUBACK");
    assert!(matches!(code, SubscribeReasonCode::Success(_)), "{code:?}");
    // Retained messages come in any order: read until both have come.
    let (mut got_desired, mut got_presence) = (None, false);
    while got_desired.is_none() || !got_presence {
        let msg = spy
            .next(DEADLINE)
            .await
            .expect("edge-b's retained messages");
        got_presence |= msg.topic == presence;
        if msg.topic == desired {
            got_desired = Some(msg.payload);
        }
    }
    genuine(&got_desired.unwrap_or_default(), &controller_key).expect("edge-b's delivery");

    // Writing: a status published as edge-b reaches every subscriber (the
    // controller drops it: it is not signed by edge-b's node key).
    let forger = TestClient::connect(cluster.mqtt_addr, "forger")
        .await
        .expect("anyone connects");
    forger
        .publish(&status, b"forged status".to_vec())
        .await
        .expect("publish");
    let mut delivered = false;
    // Bounded: edge-b's own status messages may come first.
    for _ in 0..100 {
        let msg = spy.next_on(&status, DEADLINE).await.expect("status");
        if msg.payload == b"forged status" {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "the forged status reaches subscribers");

    // A retained forgery replaces edge-b's desired state at the broker until
    // the controller republishes it; the agent refuses it and keeps running.
    forger
        .publish_retained(&desired, b"forged desired".to_vec())
        .await
        .expect("publish");
    wait_for(
        "the forgery to be the retained desired state",
        DEADLINE,
        || async {
            let got = verge_tests::mqtt::retained(cluster.mqtt_addr, "reader-1", &desired)
                .await
                .map_err(|e| e.to_string())?;
            match got.payload.as_slice() {
                b"forged desired" => Ok(()),
                _ => Err("still the genuine one".to_owned()),
            }
        },
    )
    .await;
    wait_for(
        "the controller to republish",
        Duration::from_secs(60),
        || async {
            let got = verge_tests::mqtt::retained(cluster.mqtt_addr, "reader-2", &desired)
                .await
                .map_err(|e| e.to_string())?;
            genuine(&got.payload, &controller_key)
        },
    )
    .await;
    wait_running(&api, "hello", "v1").await;

    // Client id takeover: connecting as edge-b closes the agent's connection.
    let mut watcher = TestClient::connect(cluster.mqtt_addr, "watcher")
        .await
        .expect("anyone connects");
    watcher.subscribe_acked(&presence).await.expect("SUBACK");
    let impostor = TestClient::connect(cluster.mqtt_addr, "edge-b")
        .await
        .expect("anyone connects");
    // The agent's connection is cut: the broker publishes its Last Will,
    // then the agent reconnects, which in turn cuts the impostor off.
    let mut online = Vec::new();
    while online.len() < 2 {
        let msg = watcher
            .next_on(&presence, DEADLINE)
            .await
            .expect("presence");
        if !msg.retain {
            let envelope =
                Envelope::parse(&msg.payload, limits::MAX_PRESENCE_BYTES).expect("parse");
            let doc: Presence = envelope.peek_unverified().expect("presence");
            online.push(doc.online);
        }
    }
    assert_eq!(
        online,
        [false, true],
        "edge-b's Last Will, then its reconnection"
    );
    wait_for("the agent to take its client id back", DEADLINE, || async {
        match impostor.is_connected() {
            true => Err("the impostor is still connected".to_owned()),
            false => Ok(()),
        }
    })
    .await;
}
