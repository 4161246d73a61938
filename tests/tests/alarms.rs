//! Alarms end to end: a real controller and a real agent on the embedded
//! broker. A killed agent raises `node_offline` (retained on its topic, so
//! a fresh subscriber gets it; listed by the API; a fleet event); its
//! return clears it (published once, the retained copy removed, in the
//! history); acknowledgement and suppression go through the API and are
//! audited.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use verge_tests::mqtt::TestClient;
use verge_tests::{Cluster, wait_for};

/// How long a condition of the real cluster may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

const TOPIC: &str = "verge/v1/alarms/eu/node_offline/node=edge-a";

async fn alarms(cluster: &Cluster, query: &str) -> Result<Vec<Value>, String> {
    let page = cluster
        .api
        .get(&format!("/api/v1/alarms{query}"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(page["alarms"].as_array().cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_raises_node_offline_and_its_return_clears_it() {
    let mut cluster = Cluster::with_agents(&[("edge-a", "eu")]).await;
    let mut watcher = TestClient::connect(cluster.mqtt_addr, "alarm-watcher")
        .await
        .expect("subscriber connects");
    watcher
        .subscribe_acked("verge/v1/alarms/#")
        .await
        .expect("subscribed");

    cluster.agent("edge-a").kill();

    // Raised: retained on its topic, and in the API.
    let raised = watcher
        .next_on(TOPIC, DEADLINE)
        .await
        .expect("the raised alarm on its topic");
    let alarm: Value = serde_json::from_slice(&raised.payload).expect("an alarm");
    assert_eq!(alarm["state"], "raised", "{alarm}");
    assert_eq!(alarm["id"], "node_offline");
    let instance = alarm["instance"].as_u64().expect("instance");
    let fresh = verge_tests::mqtt::retained(cluster.mqtt_addr, "late-subscriber", TOPIC)
        .await
        .expect("a fresh subscriber gets the retained alarm");
    assert!(fresh.retain, "delivered as retained");
    let retained: Value = serde_json::from_slice(&fresh.payload).expect("an alarm");
    assert_eq!(retained["instance"], instance);
    let listed = alarms(&cluster, "").await.expect("alarms");
    assert!(
        listed
            .iter()
            .any(|a| a["instance"] == instance && a["entity_instance"] == "node=edge-a"),
        "{listed:?}"
    );
    let events = cluster
        .api
        .get("/api/v1/events?source=controller&kind=node_offline")
        .await
        .expect("events");
    assert_eq!(
        events["events"][0]["node"], "edge-a",
        "a node_offline fleet event: {events}"
    );

    // Acknowledged by an operator, and audited.
    let acked = cluster
        .api
        .request(
            Method::POST,
            &format!("/api/v1/alarms/{instance}/acknowledge"),
            None,
        )
        .await
        .expect("acknowledge")
        .ok()
        .expect("acknowledged");
    assert!(
        acked["acknowledged"]["by"]
            .as_str()
            .is_some_and(|by| by.starts_with("admin")),
        "{acked}"
    );
    let missing = cluster
        .api
        .request(Method::POST, "/api/v1/alarms/999999/acknowledge", None)
        .await
        .expect("acknowledge");
    assert_eq!(missing.error_code(), "not_found");

    // Back: cleared on MQTT (published once, then the retained copy removed).
    cluster.agent("edge-a").restart().expect("agent restarts");
    let cleared = watcher
        .next_on(TOPIC, DEADLINE)
        .await
        .expect("the clear on the topic");
    assert!(!cleared.retain);
    let cleared: Value = serde_json::from_slice(&cleared.payload).expect("the cleared alarm");
    assert_eq!(
        (cleared["state"].as_str(), cleared["instance"].as_u64()),
        (Some("cleared"), Some(instance))
    );
    let removal = watcher
        .next_on(TOPIC, DEADLINE)
        .await
        .expect("the empty retained payload");
    assert!(removal.payload.is_empty(), "{removal:?}");
    wait_for("the alarm cleared in the API", DEADLINE, || async {
        let active = alarms(&cluster, "?alarm=node_offline").await?;
        let history = alarms(&cluster, "?state=cleared").await?;
        if active.is_empty() && history.iter().any(|a| a["instance"] == instance) {
            Ok(())
        } else {
            Err(format!("active {active:?}, history {history:?}"))
        }
    })
    .await;
    // A fresh subscriber no longer gets a retained copy.
    let mut late = TestClient::connect(cluster.mqtt_addr, "after-clear")
        .await
        .expect("connects");
    late.subscribe_acked(TOPIC).await.expect("subscribed");
    match late.next(Duration::from_secs(2)).await {
        Err(_) => {}
        Ok(m) => assert!(m.payload.is_empty(), "retained copy still there: {m:?}"),
    }

    // Suppressed: the next raise is listed but not published.
    let entry = cluster
        .api
        .request(
            Method::POST,
            "/api/v1/alarms/catalogue/node_offline/suppress",
            None,
        )
        .await
        .expect("suppress")
        .ok()
        .expect("suppressed");
    assert!(entry["suppressed"]["by"].is_string(), "{entry}");
    let unknown = cluster
        .api
        .request(Method::POST, "/api/v1/alarms/catalogue/nope/suppress", None)
        .await
        .expect("suppress");
    assert_eq!(unknown.error_code(), "not_found");
    assert!(
        unknown.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("docs/alarms.md")),
        "{}",
        unknown.body
    );
    cluster.agent("edge-a").kill();
    wait_for("the suppressed alarm listed", DEADLINE, || async {
        let active = alarms(&cluster, "?alarm=node_offline").await?;
        match active.first() {
            Some(a) if a["suppressed"] == true => Ok(()),
            _ => Err(format!("{active:?}")),
        }
    })
    .await;
    match watcher.next_on(TOPIC, Duration::from_secs(2)).await {
        Err(_) => {}
        Ok(m) => panic!("a suppressed alarm was published: {m:?}"),
    }

    let audit = cluster.api.get("/api/v1/audit").await.expect("audit");
    let routes: Vec<&str> = audit["entries"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["route"].as_str()).collect())
        .unwrap_or_default();
    for route in [
        "/api/v1/alarms/{instance}/acknowledge",
        "/api/v1/alarms/catalogue/{alarm}/suppress",
    ] {
        assert!(routes.contains(&route), "{route} audited: {routes:?}");
    }
}
