//! Agents' security events through `App::ingest`, over the in-memory store
//! and a manual clock: kept and streamed when the node itself signed them,
//! refused and counted otherwise.

use verge_shared::messages::{Event, EventKind, RejectReason, SCHEMA_VERSION, payload_type};
use verge_shared::{AgentId, SigningKey};

use super::*;
use crate::store::Role;
use crate::testing::{MemoryFixture, memory_fixture, presence};

/// A fixture where `edge-a` (region `eu`) has announced itself with `key`.
fn with_node(key: &SigningKey) -> MemoryFixture {
    let mf = memory_fixture();
    mf.fx.app.ingest(
        "verge/v1/agents/edge-a/presence",
        &presence(key, "edge-a", "eu"),
        mf.clock.now(),
    );
    assert_eq!(mf.fx.app.rejected_messages(), 0, "the presence is taken");
    mf
}

fn event(agent: &str, detail: &str) -> Event {
    Event {
        schema_version: SCHEMA_VERSION,
        agent: AgentId::new(agent).expect("id"),
        at: verge_shared::Timestamp::from_unix_millis(1_800_000_000_000),
        kind: EventKind::DesiredStateRejected,
        reason: Some(RejectReason::BadSignature),
        generation: None,
        alarm: None,
        detail: detail.into(),
    }
}

fn signed(key: &SigningKey, event: &Event) -> Vec<u8> {
    key.sign_json(payload_type::EVENT, event)
}

/// The nodes' events kept (not the controller's fleet events).
fn details(mf: &MemoryFixture) -> Vec<String> {
    let filter = EventFilter {
        source: Some(EventSource::Node),
        ..EventFilter::default()
    };
    let page = mf.fx.app.events(&filter, MAX_EVENT_PAGE);
    page.events.into_iter().map(|e| e.detail).collect()
}

#[tokio::test]
async fn a_nodes_signed_event_is_kept_and_streamed() {
    let key = SigningKey::generate().expect("key").0;
    let mf = with_node(&key);
    let now = mf.clock.now();
    mf.fx.app.ingest(
        "verge/v1/events/eu/edge-a",
        &signed(&key, &event("edge-a", "bad signature on generation 7")),
        now,
    );
    assert_eq!(mf.fx.app.rejected_messages(), 0);
    let page = mf.fx.app.events(&EventFilter::default(), 10);
    assert_eq!(page.events.len(), 1);
    let kept = &page.events[0];
    assert_eq!(
        (
            kept.id,
            kept.node.as_ref().map(|n| n.as_str()),
            kept.region.as_ref().map(|r| r.as_str())
        ),
        (1, Some("edge-a"), Some("eu"))
    );
    assert_eq!(kept.kind, RecordKind::Node(EventKind::DesiredStateRejected));
    assert_eq!(kept.received_at, now);
    assert_eq!(page.next_after, None);

    let streamed = mf.fx.app.recent_changes(Role::Viewer, 10);
    let change = streamed
        .iter()
        .find(|c| c.kind == ChangeKind::Event)
        .expect("the event on the watch stream");
    assert!(
        change.data.contains("desired_state_rejected"),
        "{}",
        change.data
    );
    assert!(
        change.data.contains("bad signature on generation 7"),
        "{}",
        change.data
    );
}

#[tokio::test]
async fn events_not_signed_by_the_node_itself_are_refused() {
    let key = SigningKey::generate().expect("key").0;
    let mf = with_node(&key);
    let now = mf.clock.now();
    let stranger = SigningKey::generate().expect("key").0;
    let cases = [
        // Another key in the node's name.
        (
            "verge/v1/events/eu/edge-a",
            signed(&stranger, &event("edge-a", "forged")),
        ),
        // The node's key, but another node's name inside.
        (
            "verge/v1/events/eu/edge-a",
            signed(&key, &event("edge-b", "renamed")),
        ),
        // The node's own event under another region.
        (
            "verge/v1/events/us/edge-a",
            signed(&key, &event("edge-a", "moved")),
        ),
        // A node nobody knows.
        (
            "verge/v1/events/eu/edge-z",
            signed(&key, &event("edge-z", "unknown")),
        ),
        // Not an envelope at all, and one over the size bound.
        ("verge/v1/events/eu/edge-a", b"{not json".to_vec()),
        (
            "verge/v1/events/eu/edge-a",
            vec![b' '; verge_shared::limits::MAX_EVENT_BYTES + 1],
        ),
    ];
    for (topic, payload) in &cases {
        mf.fx.app.ingest(topic, payload, now);
    }
    // The unknown node's event waits for a presence that never comes
    // (first contact may reorder topics), then is refused too.
    assert_eq!(mf.fx.app.rejected_messages(), cases.len() as u64 - 1);
    mf.clock.advance(super::held::HOLD_FOR);
    mf.fx.app.health_tick(mf.clock.now()).await;
    assert_eq!(mf.fx.app.rejected_messages(), cases.len() as u64);
    assert!(details(&mf).is_empty(), "{:?}", details(&mf));

    mf.fx.app.revoke_node("edge-a").await.expect("revoke");
    mf.fx.app.ingest(
        "verge/v1/events/eu/edge-a",
        &signed(&key, &event("edge-a", "after revocation")),
        now,
    );
    assert!(details(&mf).is_empty());
}

#[tokio::test]
async fn pages_follow_the_ids_and_filters() {
    let key_a = SigningKey::generate().expect("key").0;
    let mf = with_node(&key_a);
    let key_b = SigningKey::generate().expect("key").0;
    mf.fx.app.ingest(
        "verge/v1/agents/edge-b/presence",
        &presence(&key_b, "edge-b", "us"),
        mf.clock.now(),
    );
    for i in 0..6 {
        let (key, agent, region) = if i % 2 == 0 {
            (&key_a, "edge-a", "eu")
        } else {
            (&key_b, "edge-b", "us")
        };
        mf.fx.app.ingest(
            &format!("verge/v1/events/{region}/{agent}"),
            &signed(key, &event(agent, &i.to_string())),
            mf.clock.now(),
        );
    }
    let only_b = EventFilter {
        node: Some(AgentId::new("edge-b").expect("id")),
        ..EventFilter::default()
    };
    let first = mf.fx.app.events(&only_b, 2);
    let ids: Vec<u64> = first.events.iter().map(|e| e.id).collect();
    assert_eq!(ids, [2, 4]);
    assert_eq!(first.next_after, Some(4));
    let rest = mf.fx.app.events(
        &EventFilter {
            after: 4,
            ..only_b.clone()
        },
        2,
    );
    assert_eq!(rest.events.iter().map(|e| e.id).collect::<Vec<_>>(), [6]);
    assert_eq!(rest.next_after, None);
    let eu = EventFilter {
        region: Some(verge_shared::RegionId::new("eu").expect("region")),
        ..EventFilter::default()
    };
    assert_eq!(mf.fx.app.events(&eu, 10).events.len(), 3);
}
