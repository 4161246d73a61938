//! The agent's own alarms through a real controller, agent and broker: a
//! workload that crash-loops produces exactly one signed `alarm_raised`
//! event for `workload_crash_loop` on the agent's events topic, and a fixed
//! release that then runs for the clear hold (60 s) exactly one
//! `alarm_cleared`, both verified with the node's key.

use std::time::Duration;

use serde_json::json;
use verge_shared::alarms::AlarmId;
use verge_shared::messages::{Event, EventKind, payload_type};
use verge_shared::{Envelope, PublicKey, SigningKey, Topics, limits};
use verge_tests::Cluster;
use verge_tests::mqtt::TestClient;
use verge_tests::workload::{hello_artifact, hello_spec};

/// Crash-loop detection takes about 15 s of backoff, then the alarm task's
/// next look (5 s).
const RAISE_DEADLINE: Duration = Duration::from_secs(60);
/// The fixed release's deployment, the 60 s clear hold and the next look.
const CLEAR_DEADLINE: Duration = Duration::from_secs(120);

/// The crash-loop alarm events of `service` received within `deadline`,
/// until one of `until` arrives; each verified with the node key.
async fn crash_loop_events(
    events: &mut TestClient,
    topic: &str,
    node_key: &PublicKey,
    service: &str,
    deadline: Duration,
    until: Option<EventKind>,
) -> Vec<Event> {
    let end = tokio::time::Instant::now() + deadline;
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        let Ok(msg) = events.next_on(topic, left).await else {
            assert!(
                until.is_none(),
                "no {until:?} within {deadline:?}; saw {seen:?}"
            );
            return seen;
        };
        let event: Event = Envelope::parse(&msg.payload, limits::MAX_EVENT_BYTES)
            .expect("an event envelope")
            .open(payload_type::EVENT, node_key)
            .expect("signed with the node's key");
        let ours = event.alarm.as_ref().is_some_and(|a| {
            a.id == AlarmId::WorkloadCrashLoop
                && a.entity.service.as_ref().map(|s| s.as_str()) == Some(service)
                && a.entity.node.as_ref().map(|n| n.as_str()) == Some("edge-a")
        });
        if ours {
            let kind = event.kind;
            seen.push(event);
            if Some(kind) == until {
                return seen;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_raises_one_signed_alarm_and_a_fixed_release_clears_it() {
    let cluster = Cluster::with_agents(&[("edge-a", "region-a")]).await;
    let api = cluster.api.clone();
    let node_key = SigningKey::from_pkcs8(
        &std::fs::read(cluster.agents[0].data_dir.join("node.key")).expect("node.key"),
    )
    .expect("node key")
    .public_key();
    let topic = Topics::default().events(
        &"region-a".parse().expect("region"),
        &"edge-a".parse().expect("id"),
    );
    let mut events = TestClient::connect(cluster.mqtt_addr, "alarm-watcher")
        .await
        .expect("connect");
    events
        .subscribe_acked("verge/v1/events/#")
        .await
        .expect("subscribed");
    let hello = api.upload_artifact(hello_artifact()).await.expect("upload");

    // Exits at once with code 3, over and over.
    let mut looping = hello_spec(&hello, "loop", 1, &[]);
    looping["args"] = json!([
        "--greeting",
        "loop",
        "--exit-after",
        "0",
        "--exit-code",
        "3"
    ]);
    let reply = api.put_service("looper", &looping).await.expect("PUT");
    assert!(reply.status.is_success(), "{reply:?}");
    let raised = crash_loop_events(
        &mut events,
        &topic,
        &node_key,
        "looper",
        RAISE_DEADLINE,
        Some(EventKind::AlarmRaised),
    )
    .await;
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert!(
        raised[0].detail.contains("crash loop") && raised[0].detail.contains("code 3"),
        "the detail says what was seen: {}",
        raised[0].detail
    );

    // A fixed release: it keeps running, and after a minute the alarm clears.
    let fixed = hello_spec(&hello, "fixed", 1, &[]);
    let reply = api.put_service("looper", &fixed).await.expect("PUT");
    assert!(reply.status.is_success(), "{reply:?}");
    let cleared = crash_loop_events(
        &mut events,
        &topic,
        &node_key,
        "looper",
        CLEAR_DEADLINE,
        Some(EventKind::AlarmCleared),
    )
    .await;
    let kinds: Vec<EventKind> = cleared.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::AlarmCleared],
        "no second raise before the clear"
    );
    // And nothing more: two looks of the alarm task later, still quiet.
    let after = crash_loop_events(
        &mut events,
        &topic,
        &node_key,
        "looper",
        Duration::from_secs(11),
        None,
    )
    .await;
    assert!(after.is_empty(), "{after:?}");
}
