//! Alarms through the use cases, over the in-memory store, a manual clock
//! and the captured MQTT outbox: what is published (and retained) on
//! raise and clear, de-duplication, hysteresis, suppression,
//! acknowledgement, refused agent reports, and a restart.

use std::sync::Arc;
use std::time::Duration;

use verge_shared::alarms::{Alarm, AlarmId, AlarmReport, AlarmState, Entity};
use verge_shared::fleet::{FleetEvent, FleetEventKind};
use verge_shared::messages::{Event, EventKind, Presence, Resources, SCHEMA_VERSION, payload_type};
use verge_shared::{AgentId, RegionId, ServiceName, SigningKey, Timestamp};

use super::*;
use crate::store::Role;
use crate::testing::{MemoryFixture, memory_fixture, memory_fixture_on, presence, service_request};

fn agent(name: &str) -> AgentId {
    AgentId::new(name).expect("id")
}

/// A fixture where `edge-a` (region `eu`) has announced itself with `key`.
fn with_node(key: &SigningKey) -> MemoryFixture {
    let mut mf = memory_fixture();
    mf.fx.app.ingest(
        "verge/v1/agents/edge-a/presence",
        &presence(key, "edge-a", "eu"),
        mf.clock.now(),
    );
    assert_eq!(mf.fx.app.rejected_messages(), 0, "the presence is taken");
    mf.fx.sent();
    mf
}

fn principal() -> Principal {
    Principal {
        user: "alice".into(),
        token_id: "t1".into(),
        token: "laptop".into(),
        role: Role::Operator,
    }
}

fn alarm_event(from: &str, kind: EventKind, id: AlarmId, entity: Entity) -> Event {
    Event {
        schema_version: SCHEMA_VERSION,
        agent: agent(from),
        at: Timestamp::from_unix_millis(1_800_000_000_000),
        kind,
        reason: None,
        generation: None,
        alarm: Some(AlarmReport { id, entity }),
        detail: "4% free on /var/lib/verge".into(),
    }
}

fn send_event(mf: &MemoryFixture, key: &SigningKey, event: &Event) {
    mf.fx.app.ingest(
        "verge/v1/events/eu/edge-a",
        &key.sign_json(payload_type::EVENT, event),
        mf.clock.now(),
    );
}

/// The messages sent on alarm topics since the last call: (topic, retained,
/// the alarm, or `None` for an empty payload).
fn alarm_messages(mf: &mut MemoryFixture) -> Vec<(String, bool, Option<Alarm>)> {
    mf.fx
        .sent()
        .into_iter()
        .filter(|m| m.topic.starts_with("verge/v1/alarms/"))
        .map(|m| {
            let alarm = (!m.payload.is_empty())
                .then(|| serde_json::from_slice::<Alarm>(&m.payload).expect("an alarm"));
            (m.topic, m.retain, alarm)
        })
        .collect()
}

fn fleet_kinds(mf: &MemoryFixture) -> Vec<FleetEventKind> {
    let filter = EventFilter {
        source: Some(EventSource::Controller),
        ..EventFilter::default()
    };
    mf.fx
        .app
        .events(&filter, MAX_EVENT_PAGE)
        .events
        .into_iter()
        .filter_map(|e| match e.kind {
            RecordKind::Controller(kind) => Some(kind),
            RecordKind::Node(_) => None,
        })
        .collect()
}

fn active(mf: &MemoryFixture) -> Vec<Alarm> {
    mf.fx
        .app
        .alarms(&AlarmFilter::default(), MAX_ALARM_PAGE)
        .alarms
}

const DISK_TOPIC: &str = "verge/v1/alarms/eu/disk_low/node=edge-a";

#[tokio::test]
async fn an_agents_alarm_is_retained_while_raised_and_removed_when_cleared() {
    let key = SigningKey::generate().expect("key").0;
    let mut mf = with_node(&key);
    let entity = Entity::node(agent("edge-a"));
    send_event(
        &mf,
        &key,
        &alarm_event(
            "edge-a",
            EventKind::AlarmRaised,
            AlarmId::DiskLow,
            entity.clone(),
        ),
    );
    assert_eq!(mf.fx.app.rejected_messages(), 0);
    let sent = alarm_messages(&mut mf);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (topic, retained, alarm) = &sent[0];
    assert_eq!((topic.as_str(), *retained), (DISK_TOPIC, true));
    let alarm = alarm.as_ref().expect("the alarm");
    assert_eq!(
        (
            alarm.instance,
            alarm.state,
            alarm.region.as_ref().map(RegionId::as_str)
        ),
        (1, AlarmState::Raised, Some("eu"))
    );
    assert_eq!(alarm.reason, "4% free on /var/lib/verge");

    // The same raise again changes nothing on MQTT.
    send_event(
        &mf,
        &key,
        &alarm_event(
            "edge-a",
            EventKind::AlarmRaised,
            AlarmId::DiskLow,
            entity.clone(),
        ),
    );
    assert!(alarm_messages(&mut mf).is_empty(), "no republish storm");
    assert_eq!(active(&mf).len(), 1);

    send_event(
        &mf,
        &key,
        &alarm_event("edge-a", EventKind::AlarmCleared, AlarmId::DiskLow, entity),
    );
    let sent = alarm_messages(&mut mf);
    assert_eq!(sent.len(), 2, "{sent:?}");
    let (topic, retained, cleared) = &sent[0];
    assert_eq!((topic.as_str(), *retained), (DISK_TOPIC, false));
    let cleared = cleared.as_ref().expect("the cleared alarm");
    assert_eq!((cleared.instance, cleared.state), (1, AlarmState::Cleared));
    assert_eq!(
        sent[1],
        (DISK_TOPIC.to_owned(), true, None),
        "retained copy removed"
    );
    assert!(active(&mf).is_empty());
    let history = mf.fx.app.alarms(
        &AlarmFilter {
            state: AlarmStates::Cleared,
            ..AlarmFilter::default()
        },
        10,
    );
    assert_eq!(history.alarms.len(), 1);
    assert_eq!(
        fleet_kinds(&mf),
        [FleetEventKind::AlarmRaised, FleetEventKind::AlarmCleared]
    );
    let changes = mf.fx.app.recent_changes(Role::Viewer, 50);
    let alarm_actions: Vec<&str> = changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Alarm)
        .map(|c| {
            if c.data.contains("\"action\":\"raised\"") {
                "raised"
            } else {
                "cleared"
            }
        })
        .collect();
    assert_eq!(alarm_actions, ["cleared", "raised"], "newest first");
}

#[tokio::test]
async fn agent_alarm_reports_that_do_not_fit_are_refused_and_counted() {
    let key = SigningKey::generate().expect("key").0;
    let mut mf = with_node(&key);
    let web = ServiceName::new("web").expect("name");
    let cases = [
        // Observed by the controller, not the agent.
        (AlarmId::NodeOffline, Entity::node(agent("edge-a"))),
        // A node alarm about a workload.
        (
            AlarmId::DiskLow,
            Entity::workload(agent("edge-a"), web.clone()),
        ),
        // Another node's entity.
        (AlarmId::DiskLow, Entity::node(agent("edge-b"))),
        (
            AlarmId::WorkloadCrashLoop,
            Entity::workload(agent("edge-b"), web),
        ),
    ];
    for (n, (id, entity)) in cases.into_iter().enumerate() {
        send_event(
            &mf,
            &key,
            &alarm_event("edge-a", EventKind::AlarmRaised, id, entity),
        );
        assert_eq!(mf.fx.app.rejected_messages(), n as u64 + 1, "{id}");
    }
    assert!(active(&mf).is_empty());
    assert!(alarm_messages(&mut mf).is_empty());
    assert!(
        mf.fx
            .app
            .events(&EventFilter::default(), 10)
            .events
            .is_empty()
    );
    let metrics = mf.fx.app.metrics_text().expect("metrics");
    assert!(metrics.contains("reason=\"alarm\"} 4"), "{metrics}");
}

fn offline_presence(key: &SigningKey) -> Vec<u8> {
    let document = Presence {
        schema_version: SCHEMA_VERSION,
        agent: agent("edge-a"),
        online: false,
        at: Timestamp::now(),
        region: RegionId::new("eu").expect("region"),
        labels: Default::default(),
        capacity: Resources {
            cpu_millis: 4000,
            memory_mb: 4096,
        },
        public_key: key.public_key(),
        version: "test".into(),
        probe_addr: None,
        limits: None,
    };
    key.sign_json(payload_type::PRESENCE, &document)
}

#[tokio::test]
async fn a_node_offline_is_alarmed_and_cleared_when_it_returns_and_a_restart_keeps_it() {
    let key = SigningKey::generate().expect("key").0;
    let mut mf = with_node(&key);
    mf.fx
        .app
        .reconcile(mf.clock.now(), true)
        .await
        .expect("plan");
    assert!(active(&mf).is_empty());
    // The Last Will.
    mf.fx.app.ingest(
        "verge/v1/agents/edge-a/presence",
        &offline_presence(&key),
        mf.clock.now(),
    );
    mf.fx
        .app
        .reconcile(mf.clock.now(), true)
        .await
        .expect("plan");
    let raised = active(&mf);
    assert_eq!(raised.len(), 1);
    assert_eq!(
        (raised[0].id, raised[0].entity_instance.as_str()),
        (AlarmId::NodeOffline, "node=edge-a")
    );
    let topic = "verge/v1/alarms/eu/node_offline/node=edge-a";
    let sent = alarm_messages(&mut mf);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].0.as_str(), sent[0].1), (topic, true));
    assert_eq!(
        fleet_kinds(&mf),
        [FleetEventKind::AlarmRaised, FleetEventKind::NodeOffline]
    );
    // Every reconnect republishes it, retained.
    mf.fx
        .app
        .republish_all(mf.clock.now())
        .await
        .expect("republish");
    let sent = alarm_messages(&mut mf);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].0.as_str(), sent[0].1), (topic, true));

    // A restarted controller keeps the alarm and the instance counter.
    let mut again = memory_fixture_on(Arc::clone(&mf.store), Arc::clone(&mf.clock), |_| {});
    let kept = active(&again);
    assert_eq!(kept, raised);
    again
        .fx
        .app
        .reconcile(again.clock.now(), true)
        .await
        .expect("plan");
    assert_eq!(active(&again).len(), 1, "still offline");
    alarm_messages(&mut again);

    // Back online: cleared, its retained copy removed.
    again.fx.app.ingest(
        "verge/v1/agents/edge-a/presence",
        &presence(&key, "edge-a", "eu"),
        again.clock.now(),
    );
    again
        .fx
        .app
        .reconcile(again.clock.now(), true)
        .await
        .expect("plan");
    assert!(active(&again).is_empty());
    let sent = alarm_messages(&mut again);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!((sent[0].0.as_str(), sent[0].1), (topic, false));
    assert_eq!(sent[1], (topic.to_owned(), true, None));
    assert!(fleet_kinds(&again).contains(&FleetEventKind::NodeOnline));

    // The next alarm continues the count.
    again.fx.app.ingest(
        "verge/v1/agents/edge-a/presence",
        &offline_presence(&key),
        again.clock.now(),
    );
    again
        .fx
        .app
        .reconcile(again.clock.now(), true)
        .await
        .expect("plan");
    assert_eq!(active(&again)[0].instance, 2);
}

fn heartbeat(key: &SigningKey, at: Timestamp) -> Vec<u8> {
    crate::testing::heartbeat(key, "edge-a", at, None)
}

#[tokio::test]
async fn a_skewed_clock_is_alarmed_only_after_its_hold_time() {
    let key = SigningKey::generate().expect("key").0;
    let mut mf = with_node(&key);
    let skewed = |mf: &MemoryFixture| {
        let at = mf.clock.now().saturating_add(Duration::from_secs(45));
        mf.fx.app.ingest(
            "verge/v1/agents/edge-a/heartbeat",
            &heartbeat(&key, at),
            mf.clock.now(),
        );
    };
    skewed(&mf);
    mf.clock.advance(Duration::from_secs(30));
    skewed(&mf);
    assert!(active(&mf).is_empty(), "within the 60 s hold");
    // A good heartbeat in between resets the hold.
    mf.fx.app.ingest(
        "verge/v1/agents/edge-a/heartbeat",
        &heartbeat(&key, mf.clock.now()),
        mf.clock.now(),
    );
    mf.clock.advance(Duration::from_secs(31));
    skewed(&mf);
    assert!(active(&mf).is_empty(), "the hold started again");
    mf.clock.advance(Duration::from_secs(60));
    skewed(&mf);
    let raised = active(&mf);
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].id, AlarmId::NodeClockSkewed);
    assert!(raised[0].reason.contains("ahead"), "{}", raised[0].reason);
    assert_eq!(alarm_messages(&mut mf).len(), 1);
    assert_eq!(mf.fx.app.rejected_messages(), 0);
}

#[tokio::test]
async fn suppression_stops_publishing_and_acknowledgement_records_who() {
    let key = SigningKey::generate().expect("key").0;
    let mut mf = with_node(&key);
    let entity = Entity::node(agent("edge-a"));
    send_event(
        &mf,
        &key,
        &alarm_event(
            "edge-a",
            EventKind::AlarmRaised,
            AlarmId::DiskLow,
            entity.clone(),
        ),
    );
    alarm_messages(&mut mf);
    let instance = active(&mf)[0].instance;

    let acked = mf
        .fx
        .app
        .acknowledge_alarm(instance, &principal())
        .expect("acknowledged");
    let ack = acked.acknowledged.expect("acknowledgement");
    assert_eq!(
        (ack.by.as_str(), ack.at),
        ("alice (token laptop)", mf.clock.now())
    );
    assert!(matches!(
        mf.fx.app.acknowledge_alarm(instance + 1, &principal()),
        Err(AppError::NotFound { .. })
    ));

    let entry = mf
        .fx
        .app
        .set_alarm_suppressed(AlarmId::DiskLow, true, &principal())
        .expect("suppressed");
    assert_eq!(
        entry.suppressed.map(|s| s.by),
        Some("alice (token laptop)".to_owned())
    );
    assert_eq!(
        alarm_messages(&mut mf),
        [(DISK_TOPIC.to_owned(), true, None)],
        "the retained copy is removed"
    );
    // Suppressed: kept and listed, not published, not even on reconnect.
    mf.fx
        .app
        .republish_all(mf.clock.now())
        .await
        .expect("republish");
    assert!(alarm_messages(&mut mf).is_empty());
    assert!(active(&mf)[0].suppressed);
    send_event(
        &mf,
        &key,
        &alarm_event(
            "edge-a",
            EventKind::AlarmCleared,
            AlarmId::DiskLow,
            entity.clone(),
        ),
    );
    assert!(alarm_messages(&mut mf).is_empty());
    send_event(
        &mf,
        &key,
        &alarm_event("edge-a", EventKind::AlarmRaised, AlarmId::DiskLow, entity),
    );
    assert!(alarm_messages(&mut mf).is_empty());
    assert_eq!(active(&mf).len(), 1);

    let entry = mf
        .fx
        .app
        .set_alarm_suppressed(AlarmId::DiskLow, false, &principal())
        .expect("unsuppressed");
    assert!(entry.suppressed.is_none());
    let sent = alarm_messages(&mut mf);
    assert_eq!(sent.len(), 1, "the active alarm is published again");
    assert_eq!((sent[0].0.as_str(), sent[0].1), (DISK_TOPIC, true));
    let kinds = fleet_kinds(&mf);
    for kind in [
        FleetEventKind::AlarmAcknowledged,
        FleetEventKind::AlarmSuppressed,
        FleetEventKind::AlarmUnsuppressed,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} in {kinds:?}");
    }
    let catalogue = mf.fx.app.alarm_catalogue();
    assert_eq!(catalogue.alarms.len(), AlarmId::ALL.len());
}

#[tokio::test]
async fn the_controller_alarms_a_lost_broker_after_30_seconds() {
    let mut mf = memory_fixture();
    let app = Arc::clone(&mf.fx.app);
    app.broker_connected(mf.clock.now());
    app.broker_disconnected(mf.clock.now());
    mf.clock.advance(Duration::from_secs(29));
    app.broker_disconnected(mf.clock.now());
    app.observe_controller(mf.clock.now());
    assert!(active(&mf).is_empty());
    mf.clock.advance(Duration::from_secs(1));
    app.observe_controller(mf.clock.now());
    let raised = active(&mf);
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].id, AlarmId::ControllerBrokerLost);
    app.broker_connected(mf.clock.now());
    assert!(active(&mf).is_empty());
    let all = mf.fx.sent();
    let topic = "verge/v1/alarms/_fleet/controller_broker_lost/controller";
    assert_eq!(
        all.iter()
            .filter(|m| m.topic.starts_with("verge/v1/alarms/"))
            .map(|m| (m.topic.as_str(), m.retain, !m.payload.is_empty()))
            .collect::<Vec<_>>(),
        [
            (topic, true, true),
            (topic, false, true),
            (topic, true, false)
        ]
    );
    // Raise and clear are fleet events too, on the fleet-wide topic, not retained.
    let fleet: Vec<FleetEventKind> = all
        .iter()
        .filter(|m| m.topic == "verge/v1/fleet/events/_fleet")
        .map(|m| {
            assert!(!m.retain);
            serde_json::from_slice::<FleetEvent>(&m.payload)
                .expect("a fleet event")
                .kind
        })
        .collect();
    assert_eq!(
        fleet,
        [FleetEventKind::AlarmRaised, FleetEventKind::AlarmCleared]
    );
}

#[tokio::test]
async fn certificates_expiring_within_30_days_are_alarmed() {
    let mf = memory_fixture();
    let now = mf.clock.now();
    mf.fx.app.watch_certificates(vec![
        (
            "CA".into(),
            now.saturating_add(Duration::from_secs(3650 * 86_400)),
        ),
        (
            "server".into(),
            now.saturating_add(Duration::from_secs(20 * 86_400)),
        ),
    ]);
    let raised = active(&mf);
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].id, AlarmId::ControllerCertificateExpiring);
    assert!(raised[0].reason.contains("server"), "{}", raised[0].reason);
    mf.fx.app.watch_certificates(vec![(
        "server".into(),
        now.saturating_add(Duration::from_secs(365 * 86_400)),
    )]);
    assert!(active(&mf).is_empty());
}

#[tokio::test]
async fn an_unplaced_replica_is_alarmed_after_30_seconds_and_cleared_when_gone() {
    let mut mf = memory_fixture();
    let digest = mf.fx.release("web", b"binary", &["--greeting", "hi"]).await;
    mf.fx
        .app
        .put_service("web", service_request(&digest, 1))
        .await
        .expect("put");
    mf.fx.app.observe_placement(mf.clock.now());
    assert!(active(&mf).is_empty(), "within the hold");
    mf.clock.advance(Duration::from_secs(30));
    mf.fx.app.observe_placement(mf.clock.now());
    let raised = active(&mf);
    assert_eq!(raised.len(), 1);
    assert_eq!(
        (raised[0].id, raised[0].entity_instance.as_str()),
        (AlarmId::ReplicaUnplaced, "service=web,replica=0")
    );
    assert!(!raised[0].reason.is_empty());
    let kinds = fleet_kinds(&mf);
    assert!(kinds.contains(&FleetEventKind::ServiceCreated), "{kinds:?}");
    assert!(
        kinds.contains(&FleetEventKind::ReplicaUnplaced),
        "{kinds:?}"
    );
    mf.fx.app.delete_service("web").await.expect("delete");
    mf.fx.app.observe_placement(mf.clock.now());
    assert!(active(&mf).is_empty());
    let sent = alarm_messages(&mut mf);
    assert_eq!(sent.len(), 3, "raise, clear, removal: {sent:?}");
    let metrics = mf.fx.app.metrics_text().expect("metrics");
    assert!(
        metrics.contains("verge_alarms_active{severity=\"major\"} 0"),
        "{metrics}"
    );
}

/// docs/alarms.md's catalogue table lists exactly `AlarmId::ALL`, with
/// each id's code, severity, entity, observer and title.
#[test]
fn the_documented_catalogue_is_the_codes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/alarms.md");
    let text = std::fs::read_to_string(&path).expect("docs/alarms.md");
    let rows: Vec<Vec<String>> = text
        .lines()
        .skip_while(|l| !l.starts_with("<!-- alarm catalogue"))
        .skip(3)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect();
    let documented: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r[0].trim_matches('`').to_owned(),
                r[1].clone(),
                r[2].clone(),
                r[3].clone(),
                r[4].clone(),
                r[5].clone(),
            ]
        })
        .collect();
    let code: Vec<[String; 6]> = AlarmId::ALL
        .iter()
        .map(|id| {
            let d = id.definition();
            let wire = |v: serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            [
                id.as_str().to_owned(),
                d.code.to_owned(),
                d.severity.as_str().to_owned(),
                wire(serde_json::to_value(d.entity_type).expect("json")),
                wire(serde_json::to_value(d.observer).expect("json")),
                d.title.to_owned(),
            ]
        })
        .collect();
    assert_eq!(documented, code, "docs/alarms.md's catalogue table");
}
