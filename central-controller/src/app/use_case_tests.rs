//! The deployment use cases over the fakes: an in-memory store that can be
//! told to fail, the captured MQTT outbox and a manual clock, so timeouts
//! are crossed by moving the clock, never by waiting.

use std::collections::BTreeMap;
use std::time::Duration;

use verge_shared::messages::{Delivery, DesiredState, payload_type};
use verge_shared::{AgentId, SigningKey};

use super::*;
use crate::store::{Store as _, StoreError};
use crate::testing::{MemoryFixture, memory_fixture, presence, service_request as request};

const ONE_SECOND: Duration = Duration::from_secs(1);

/// The desired states the app sent since the last call, by agent, each
/// checked to be signed by the controller and sent on that agent's topic.
/// Other messages (probe plans) are left out.
fn published(mf: &mut MemoryFixture) -> Vec<(AgentId, DesiredState)> {
    let key = mf.fx.app.public_key();
    let topics = mf.fx.app.settings().topics.clone();
    mf.fx
        .sent()
        .into_iter()
        .filter_map(|m| {
            let route = topics.route(&m.topic)?;
            (route.channel == verge_shared::topic::Channel::Desired).then_some((route.agent, m))
        })
        .map(|(agent, m)| {
            let delivery: Delivery = serde_json::from_slice(&m.payload).expect("delivery");
            let desired: DesiredState = delivery
                .desired
                .open(payload_type::DESIRED_STATE, &key)
                .expect("signed by the controller");
            assert_eq!(desired.agent, agent, "sent on the agent's own topic");
            (agent, desired)
        })
        .collect()
}

/// Announces `agents` (online, region `eu`) at the clock's time; returns their keys.
fn announce(mf: &MemoryFixture, agents: &[&str]) -> BTreeMap<String, SigningKey> {
    agents
        .iter()
        .map(|id| {
            let key = SigningKey::generate().expect("key").0;
            announce_with(mf, id, &key);
            ((*id).to_owned(), key)
        })
        .collect()
}

/// A presence of `id` (online, region `eu`) signed with `key`, at the clock's time.
fn announce_with(mf: &MemoryFixture, id: &str, key: &SigningKey) {
    mf.fx.app.ingest(
        &format!("verge/v1/agents/{id}/presence"),
        &presence(key, id, "eu"),
        mf.clock.now(),
    );
}

/// A fleet of `agents` (online, region `eu`) and an uploaded release of
/// `web`, with nothing sent yet; returns the fixture, the release digest
/// and the agents' keys.
async fn fleet(agents: &[&str]) -> (MemoryFixture, String, BTreeMap<String, SigningKey>) {
    let mut mf = memory_fixture();
    let keys = announce(&mf, agents);
    let digest = mf.fx.release("web", b"binary", &[]).await;
    mf.fx.sent();
    (mf, digest, keys)
}

/// Deploys `replicas` of `web` from `digest`.
async fn deploy(mf: &MemoryFixture, digest: &str, replicas: i64) {
    mf.fx
        .app
        .put_service("web", request(digest, replicas))
        .await
        .expect("put");
}

/// Moves the clock by `by`, hears from `alive` only, and runs a health tick.
async fn tick(mf: &MemoryFixture, keys: &BTreeMap<String, SigningKey>, alive: &str, by: Duration) {
    mf.clock.advance(by);
    keep_alive(mf, keys, &[alive]);
    mf.fx
        .app
        .reconcile(mf.clock.now(), false)
        .await
        .expect("tick");
}

/// A presence from every agent in `keys` at the clock's time (it counts as hearing from them).
fn keep_alive(mf: &MemoryFixture, keys: &BTreeMap<String, SigningKey>, only: &[&str]) {
    for id in only {
        announce_with(mf, id, &keys[*id]);
    }
}

fn replica_nodes(mf: &MemoryFixture, service: &str) -> Vec<Option<String>> {
    mf.fx
        .app
        .service(service)
        .expect("service")
        .replicas
        .iter()
        .map(|r| r.node.as_ref().map(|n| n.to_string()))
        .collect()
}

#[tokio::test]
async fn deploying_a_service_publishes_one_signed_desired_state_per_agent_at_generation_1() {
    let (mut mf, digest, _) = fleet(&["edge-a", "edge-b", "edge-c"]).await;

    deploy(&mf, &digest, 2).await;

    let docs = published(&mut mf);
    let agents: Vec<&AgentId> = docs.iter().map(|(a, _)| a).collect();
    assert_eq!(
        docs.len(),
        2,
        "one document per agent with work: {agents:?}"
    );
    assert_ne!(agents[0], agents[1], "one document per agent");
    for (agent, desired) in &docs {
        assert_eq!(desired.generation.get(), 1, "{agent}");
        assert_eq!(desired.workloads.len(), 1, "{agent}");
    }
    let stored = mf.store.desired_states().expect("stored");
    assert_eq!(stored.len(), 2, "every published document was stored");
    // Node views show the stored generation without reading the store.
    for record in &stored {
        let view = mf.fx.app.node(record.agent.as_str()).expect("node");
        assert_eq!(view.desired_generation, Some(record.generation));
    }
}

#[tokio::test]
async fn an_unchanged_re_put_publishes_nothing() {
    let (mut mf, digest, _) = fleet(&["edge-a", "edge-b"]).await;
    deploy(&mf, &digest, 2).await;
    assert_eq!(published(&mut mf).len(), 2);

    let (_, created) = mf
        .fx
        .app
        .put_service("web", request(&digest, 2))
        .await
        .expect("put again");
    assert!(!created);
    assert!(
        published(&mut mf).is_empty(),
        "nothing changed, nothing sent"
    );
    assert!(
        mf.store
            .desired_states()
            .expect("stored")
            .iter()
            .all(|d| d.generation.get() == 1)
    );
}

#[tokio::test]
async fn a_silent_node_goes_unhealthy_after_the_timeout_and_loses_its_replicas_after_the_grace() {
    let (mut mf, digest, keys) = fleet(&["edge-a", "edge-b"]).await;
    deploy(&mf, &digest, 1).await;
    let docs = published(&mut mf);
    assert_eq!(docs.len(), 1);
    let silent = docs[0].0.to_string();
    let other = if silent == "edge-a" {
        "edge-b"
    } else {
        "edge-a"
    };
    let nodes = mf.fx.app.settings().nodes;

    // Just before the timeout: still healthy, nothing moves.
    tick(&mf, &keys, other, nodes.heartbeat_timeout - ONE_SECOND).await;
    assert!(mf.fx.app.node(&silent).expect("node").healthy);
    assert!(published(&mut mf).is_empty());

    // Past the timeout: unhealthy, but within the grace the replica stays.
    tick(&mf, &keys, other, 2 * ONE_SECOND).await;
    assert!(!mf.fx.app.node(&silent).expect("node").healthy);
    assert!(mf.fx.app.node(other).expect("node").healthy);
    assert!(
        published(&mut mf).is_empty(),
        "nothing moves within the grace"
    );
    assert_eq!(replica_nodes(&mf, "web"), [Some(silent.clone())]);

    // Past the grace: the replica moves to the node still heard from.
    tick(&mf, &keys, other, nodes.failover_grace).await;
    let docs: BTreeMap<String, DesiredState> = published(&mut mf)
        .into_iter()
        .map(|(a, d)| (a.to_string(), d))
        .collect();
    assert_eq!(docs.len(), 2, "{docs:?}");
    assert_eq!(docs[other].workloads.len(), 1);
    assert_eq!(docs[other].generation.get(), 1);
    assert!(docs[&silent].workloads.is_empty());
    assert_eq!(docs[&silent].generation.get(), 2);
    assert_eq!(replica_nodes(&mf, "web"), [Some(other.to_owned())]);
}

#[tokio::test]
async fn a_failed_desired_state_write_publishes_nothing() {
    let (mut mf, digest, _) = fleet(&["edge-a"]).await;

    mf.store.refuse_writes_to(&["desired"]);
    let result = mf.fx.app.put_service("web", request(&digest, 1)).await;
    assert!(
        matches!(
            result,
            Err(AppError::Store(StoreError::Refused { tree: "desired" }))
        ),
        "{result:?}"
    );
    assert!(
        published(&mut mf).is_empty(),
        "nothing unstored is published"
    );
    mf.fx
        .app
        .republish_all(mf.clock.now())
        .await
        .expect("republish");
    assert!(published(&mut mf).is_empty(), "nothing stored to republish");

    // Once the store works again the next trigger deploys generation 1.
    mf.store.refuse_writes_to(&[]);
    mf.fx
        .app
        .reconcile(mf.clock.now(), true)
        .await
        .expect("plan");
    let docs = published(&mut mf);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].1.generation.get(), 1);
}

#[tokio::test]
async fn generations_only_grow_and_grow_exactly_when_workloads_change() {
    let (mut mf, first, _) = fleet(&["edge-a", "edge-b", "edge-c"]).await;
    let mut last: BTreeMap<AgentId, DesiredState> = BTreeMap::new();
    let mut n_published = 0;
    let steps: [(&str, i64); 6] = [
        ("put", 1),
        ("put", 3),
        ("put", 2),
        ("delete", 0),
        ("put", 2),
        ("republish", 0),
    ];
    for (step, replicas) in steps {
        match step {
            "put" => deploy(&mf, &first, replicas).await,
            "delete" => mf.fx.app.delete_service("web").await.expect("delete"),
            _ => mf
                .fx
                .app
                .republish_all(mf.clock.now())
                .await
                .expect("republish"),
        }
        mf.clock.advance(ONE_SECOND);
        for (agent, desired) in published(&mut mf) {
            n_published += 1;
            if let Some(before) = last.get(&agent) {
                assert!(desired.generation >= before.generation, "{agent} went back");
                let changed = desired.workloads != before.workloads;
                assert_eq!(
                    desired.generation > before.generation,
                    changed,
                    "{agent}: the generation grows exactly when workloads change ({step})"
                );
            } else {
                assert_eq!(desired.generation.get(), 1, "{agent} starts at 1");
            }
            last.insert(agent, desired);
        }
    }
    assert!(
        n_published >= 8,
        "the steps published {n_published} documents"
    );
}

#[tokio::test]
async fn of_two_writers_who_read_the_same_revision_only_the_first_lands() {
    let (mut mf, digest, _) = fleet(&["edge-a", "edge-b", "edge-c"]).await;
    let app = &mf.fx.app;
    let (created, _) = app
        .put_service_expecting("web", request(&digest, 1), &Expect::Absent)
        .await
        .expect("create");
    assert_eq!(created.revision, 1);
    let again = app
        .put_service_expecting("web", request(&digest, 3), &Expect::Absent)
        .await;
    assert!(
        matches!(again, Err(AppError::PreconditionFailed { .. })),
        "{again:?}"
    );
    published(&mut mf);

    // Both read revision 1; the first write moves it to 2.
    let read = Expect::OneOf(vec![created.revision]);
    let (first, _) = mf
        .fx
        .app
        .put_service_expecting("web", request(&digest, 2), &read)
        .await
        .expect("first writer");
    assert_eq!(first.revision, 2);
    let n_first = published(&mut mf).len();
    assert!(n_first > 0, "the first write is deployed");
    let second = mf
        .fx
        .app
        .put_service_expecting("web", request(&digest, 3), &read)
        .await;
    let Err(AppError::PreconditionFailed { message }) = second else {
        panic!("the second writer must be refused: {second:?}");
    };
    assert!(message.contains("revision 2"), "{message}");
    assert!(
        published(&mut mf).is_empty(),
        "the refused write sent nothing"
    );
    let view = mf.fx.app.service("web").expect("view");
    assert_eq!(
        (view.revision, view.replicas.len()),
        (2, 2),
        "the first write stands"
    );

    // A stale delete is refused too; a current one deletes.
    let stale = mf.fx.app.delete_service_expecting("web", &read).await;
    assert!(
        matches!(stale, Err(AppError::PreconditionFailed { .. })),
        "{stale:?}"
    );
    mf.fx
        .app
        .delete_service_expecting("web", &Expect::OneOf(vec![2]))
        .await
        .expect("delete at the current revision");
    let gone = mf
        .fx
        .app
        .delete_service_expecting("web", &Expect::Exists)
        .await;
    assert!(
        matches!(gone, Err(AppError::PreconditionFailed { .. })),
        "{gone:?}"
    );
}

#[tokio::test]
async fn a_heartbeat_before_its_presence_is_held_and_handled_after_it() {
    let mf = memory_fixture();
    let key = SigningKey::generate().expect("key").0;
    let at = mf.clock.now();
    mf.fx.app.ingest(
        "verge/v1/agents/edge-a/heartbeat",
        &crate::testing::heartbeat(&key, "edge-a", at, Some(3)),
        at,
    );
    assert!(
        mf.fx.app.node("edge-a").is_err(),
        "not registered before its presence"
    );
    mf.clock.advance(ONE_SECOND);
    announce_with(&mf, "edge-a", &key);

    let view = mf.fx.app.node("edge-a").expect("registered");
    assert_eq!(
        view.applied_generation.map(|g| g.get()),
        Some(3),
        "the held heartbeat was handled after the presence"
    );
    assert_eq!(
        view.last_seen,
        Some(mf.clock.now()),
        "last contact never goes back"
    );
    assert_eq!(mf.fx.app.rejected_messages(), 0, "nothing dropped");
}

#[tokio::test]
async fn a_message_whose_presence_never_comes_is_dropped_after_the_hold_and_counted() {
    let mf = memory_fixture();
    let key = SigningKey::generate().expect("key").0;
    let at = mf.clock.now();
    mf.fx.app.ingest(
        "verge/v1/agents/edge-a/heartbeat",
        &crate::testing::heartbeat(&key, "edge-a", at, None),
        at,
    );
    assert_eq!(mf.fx.app.rejected_messages(), 0, "held, not yet refused");
    mf.clock.advance(Duration::from_secs(31));
    let later = mf.clock.now();
    mf.fx.app.count_expired(mf.fx.app.held.expire(later));
    assert_eq!(
        mf.fx.app.rejected_messages(),
        1,
        "refused once the hold ran out"
    );
    announce_with(&mf, "edge-a", &key);
    assert_eq!(
        mf.fx.app.node("edge-a").expect("node").applied_generation,
        None,
        "an expired message is not replayed"
    );
}

#[tokio::test]
async fn after_a_restart_nodes_are_unconfirmed_until_heard_and_silent_ones_fail_the_call_to_announce()
 {
    let (mf, digest, keys) = fleet(&["edge-a", "edge-b"]).await;
    deploy(&mf, &digest, 2).await;
    mf.clock.advance(ONE_SECOND);
    let mut again = crate::testing::memory_fixture_on(
        std::sync::Arc::clone(&mf.store),
        std::sync::Arc::clone(&mf.clock),
        |_| {},
    );
    again
        .fx
        .app
        .reconcile(again.clock.now(), true)
        .await
        .expect("plan");
    for id in ["edge-a", "edge-b"] {
        let view = again.fx.app.node(id).expect("node");
        assert!(
            view.online && view.healthy && view.unconfirmed,
            "{id} as stored, marked: {view:?}"
        );
    }
    let service = again.fx.app.service("web").expect("service");
    assert!(
        service.replicas.iter().all(|r| r.unconfirmed),
        "{service:?}"
    );
    again.fx.sent();

    again.fx.app.ask_to_announce(again.clock.now());
    let calls: Vec<Outgoing> = again
        .fx
        .sent()
        .into_iter()
        .filter(|m| m.topic == "verge/v1/announce")
        .collect();
    assert_eq!(calls.len(), 1, "one call for the whole fleet");
    assert!(!calls[0].retain, "a call is not retained");
    let request: verge_shared::announce::AnnounceRequest =
        verge_shared::Envelope::parse(&calls[0].payload, verge_shared::announce::MAX_REQUEST_BYTES)
            .expect("envelope")
            .open(
                verge_shared::announce::PAYLOAD_TYPE,
                &again.fx.app.public_key(),
            )
            .expect("signed by the controller");
    assert_eq!(request.spread_ms, 10_000, "a third of the 30 s deadline");

    again.clock.advance(ONE_SECOND);
    announce_with(&again, "edge-a", &keys["edge-a"]);
    assert!(!again.fx.app.node("edge-a").expect("node").unconfirmed);
    again.clock.advance(Duration::from_secs(28));
    assert!(
        again.fx.app.node("edge-b").expect("node").healthy,
        "still within the deadline"
    );
    again.clock.advance(ONE_SECOND);
    let (a, b) = (
        again.fx.app.node("edge-a").expect("node"),
        again.fx.app.node("edge-b").expect("node"),
    );
    assert!(a.healthy, "answered: {a:?}");
    assert!(
        !b.healthy && b.unconfirmed,
        "silent 30 s after the call: {b:?}"
    );
}
