//! The watch stream over the fakes: changes recorded by the real use cases
//! (ingest, catalog, reconcile, enroll), numbered, filtered, buffered for
//! resumption and fanned out through bounded queues. Nothing waits: a
//! watcher's queued frames are read with `now_or_never`.

use std::time::Duration;

use futures_util::FutureExt as _;
use serde_json::Value;
use verge_shared::SigningKey;

use super::*;
use crate::testing::{MemoryFixture, memory_fixture, presence, service_request as request};

/// One frame as a client sees it: SSE id, event name, parsed data.
#[derive(Debug)]
struct Seen {
    id: Option<u64>,
    event: &'static str,
    data: Value,
}

/// Every frame the watcher has ready now, without waiting; and whether
/// the stream ended. Unconstrained: Tokio's per-task budget would
/// otherwise report a full queue empty after 128 reads in a test that
/// never yields.
fn drain(watch: &mut Watch) -> (Vec<Seen>, bool) {
    let mut seen = Vec::new();
    loop {
        match tokio::task::unconstrained(watch.next()).now_or_never() {
            Some(Some(frame)) => seen.push(Seen {
                id: frame.id,
                event: frame.event,
                data: serde_json::from_str(frame.data()).expect("data is JSON"),
            }),
            Some(None) => return (seen, true),
            None => return (seen, false),
        }
    }
}

fn announce(mf: &MemoryFixture, id: &str, region: &str) -> SigningKey {
    let key = SigningKey::generate().expect("key").0;
    mf.fx.app.ingest(
        &format!("verge/v1/agents/{id}/presence"),
        &presence(&key, id, region),
        mf.clock.now(),
    );
    key
}

fn token(mf: &MemoryFixture, region: &str) -> TokenView {
    mf.fx
        .app
        .create_token(TokenRequest {
            region: region.into(),
            uses: None,
            ttl_secs: None,
        })
        .expect("token")
}

fn kinds_and_actions(seen: &[Seen]) -> Vec<(String, String)> {
    seen.iter()
        .map(|s| {
            (
                s.event.to_owned(),
                s.data["action"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// A watch of every change, from now.
fn watch_all(mf: &MemoryFixture) -> Watch {
    mf.fx
        .app
        .watch(WatchFilter::default(), None)
        .expect("watch")
}

fn ids(seen: &[Seen]) -> Vec<u64> {
    seen.iter().filter_map(|s| s.id).collect()
}

#[tokio::test]
async fn a_deploy_is_seen_as_node_release_replica_and_service_changes_with_consecutive_ids() {
    let mf = memory_fixture();
    let mut watch = watch_all(&mf);
    let (opening, _) = drain(&mut watch);
    assert_eq!(opening.len(), 1, "{opening:?}");
    assert_eq!(opening[0].event, "sync");
    let head = opening[0].id.expect("sync carries the current id");

    announce(&mf, "edge-a", "eu");
    announce(&mf, "edge-b", "us");
    let digest = mf.fx.release("web", b"binary", &[]).await;
    mf.fx
        .app
        .put_service("web", request(&digest, 2))
        .await
        .expect("put");

    let (seen, ended) = drain(&mut watch);
    assert!(!ended);
    assert_eq!(
        kinds_and_actions(&seen),
        [
            ("node", "registered"),
            ("node", "registered"),
            ("release", "uploaded"),
            ("replica", "placed"),
            ("replica", "placed"),
            ("service", "created"),
        ]
        .map(|(k, a)| (k.to_owned(), a.to_owned()))
    );
    // Consecutive from the sync's id: none skipped, none repeated.
    let expected: Vec<u64> = (head + 1..=head + 6).collect();
    assert_eq!(ids(&seen), expected);
    for s in &seen {
        assert_eq!(s.data["id"], s.id.expect("changes carry ids"), "{s:?}");
        assert_eq!(s.data["kind"], s.event);
        assert!(s.data["at"].is_string());
    }
    // Objects are the current views.
    assert_eq!(seen[0].data["object"]["id"], "edge-a");
    assert_eq!(seen[0].data["object"]["online"], true);
    assert_eq!(seen[2].data["object"]["digest"], digest);
    let placed: Vec<&Value> = seen[3..5].iter().map(|s| &s.data["object"]).collect();
    assert_eq!(placed[0]["service"], "web");
    assert!(
        placed
            .iter()
            .all(|p| p["node"].is_string() && p["region"].is_string())
    );
    assert_eq!(
        seen[5].data["object"]["replicas"].as_array().map(Vec::len),
        Some(2)
    );

    // An unchanged re-put changes nothing, so nothing is recorded.
    mf.fx
        .app
        .put_service("web", request(&digest, 2))
        .await
        .expect("put again");
    assert!(drain(&mut watch).0.is_empty());

    // Scaling to 3 on two nodes: one replica cannot be placed, with a reason.
    mf.fx
        .app
        .put_service("web", request(&digest, 3))
        .await
        .expect("scale");
    let (seen, _) = drain(&mut watch);
    assert_eq!(
        kinds_and_actions(&seen),
        [("replica", "unplaced"), ("service", "updated")]
            .map(|(k, a)| (k.to_owned(), a.to_owned()))
    );
    assert!(
        seen[0].data["object"]["reason"].is_string(),
        "{:?}",
        seen[0]
    );

    mf.fx.app.delete_service("web").await.expect("delete");
    let (seen, _) = drain(&mut watch);
    assert_eq!(
        kinds_and_actions(&seen),
        [
            ("service", "deleted"),
            ("replica", "removed"),
            ("replica", "removed"),
            ("replica", "removed"),
        ]
        .map(|(k, a)| (k.to_owned(), a.to_owned()))
    );
    assert_eq!(seen[0].data["object"], serde_json::json!({"name": "web"}));
}

#[tokio::test]
async fn health_cordon_and_failover_are_node_and_replica_changes() {
    let mf = memory_fixture();
    let keys = [
        ("edge-a", announce(&mf, "edge-a", "eu")),
        ("edge-b", announce(&mf, "edge-b", "eu")),
    ];
    let digest = mf.fx.release("web", b"binary", &[]).await;
    mf.fx
        .app
        .put_service("web", request(&digest, 1))
        .await
        .expect("put");
    let silent = mf.fx.app.service("web").expect("view").replicas[0]
        .node
        .clone()
        .expect("placed")
        .to_string();
    let (alive, alive_key) = keys
        .iter()
        .find(|(id, _)| *id != silent)
        .expect("the other node");
    let mut watch = mf
        .fx
        .app
        .watch(
            WatchFilter {
                kinds: Some(vec![ChangeKind::Node, ChangeKind::Replica]),
                ..WatchFilter::default()
            },
            None,
        )
        .expect("watch");
    drain(&mut watch);

    // Moves the clock, hears from the live node only, runs a health tick.
    let tick = |by: Duration| {
        mf.clock.advance(by);
        mf.fx.app.ingest(
            &format!("verge/v1/agents/{alive}/presence"),
            &presence(alive_key, alive, "eu"),
            mf.clock.now(),
        );
        mf.fx.app.reconcile(mf.clock.now(), false)
    };
    let nodes = mf.fx.app.settings().nodes;
    tick(nodes.heartbeat_timeout + Duration::from_secs(1))
        .await
        .expect("tick");
    let (seen, _) = drain(&mut watch);
    assert_eq!(
        kinds_and_actions(&seen),
        [("node", "health")].map(|(k, a)| (k.to_owned(), a.to_owned()))
    );
    assert_eq!(seen[0].data["object"]["id"], silent);
    assert_eq!(seen[0].data["object"]["healthy"], false);

    // Past the grace its replica moves, naming where it was.
    tick(nodes.failover_grace).await.expect("tick");
    let (seen, _) = drain(&mut watch);
    let moved = seen
        .iter()
        .find(|s| s.event == "replica")
        .expect("the replica moved");
    assert_eq!(moved.data["action"], "placed");
    assert_eq!(moved.data["object"]["node"], *alive);
    assert_eq!(moved.data["object"]["previous_node"], silent);

    mf.fx
        .app
        .set_cordon(alive, Some(Cordon::Drained))
        .await
        .expect("drain");
    let (seen, _) = drain(&mut watch);
    let actions = kinds_and_actions(&seen);
    assert!(
        actions.contains(&("node".into(), "drained".into())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("replica".into(), "unplaced".into())),
        "{actions:?}"
    );
}

#[tokio::test]
async fn filters_by_kind_region_and_service_leave_out_the_rest() {
    let mf = memory_fixture();
    let watch_with =
        |kinds: Option<Vec<ChangeKind>>, region: Option<&str>, service: Option<&str>| {
            mf.fx
                .app
                .watch(
                    WatchFilter {
                        kinds,
                        region: region.map(|r| verge_shared::RegionId::new(r).expect("region")),
                        service: service.map(|s| verge_shared::ServiceName::new(s).expect("name")),
                    },
                    None,
                )
                .expect("watch")
        };
    let mut tokens_only = watch_with(Some(vec![ChangeKind::Token]), None, None);
    let mut in_us = watch_with(None, Some("us"), None);
    let mut of_web = watch_with(None, None, Some("web"));
    for w in [&mut tokens_only, &mut in_us, &mut of_web] {
        drain(w);
    }

    announce(&mf, "edge-eu", "eu");
    announce(&mf, "edge-us", "us");
    token(&mf, "us");
    token(&mf, "eu");
    let digest = mf.fx.release("web", b"binary", &[]).await;
    mf.fx.release("api", b"other", &[]).await;
    mf.fx
        .app
        .put_service("web", request(&digest, 1))
        .await
        .expect("put");

    let (seen, _) = drain(&mut tokens_only);
    assert_eq!(
        kinds_and_actions(&seen),
        [("token", "created"), ("token", "created")].map(|(k, a)| (k.to_owned(), a.to_owned()))
    );
    assert!(
        seen.iter().all(|s| s.data["object"].get("token").is_none()),
        "a token's text never goes out: {seen:?}"
    );

    // In `us`: that node, that token, and the service (allowed everywhere);
    // no release (they have no region), nothing of `eu`.
    let (seen, _) = drain(&mut in_us);
    let actions = kinds_and_actions(&seen);
    assert_eq!(actions[0], ("node".into(), "registered".into()));
    assert_eq!(seen[0].data["object"]["id"], "edge-us");
    assert_eq!(actions[1], ("token".into(), "created".into()));
    assert_eq!(seen[1].data["object"]["region"], "us");
    assert!(
        actions.contains(&("service".into(), "created".into())),
        "{actions:?}"
    );
    assert!(!actions.iter().any(|(k, _)| k == "release"), "{actions:?}");
    for s in seen.iter().filter(|s| s.event == "replica") {
        assert_eq!(s.data["object"]["region"], "us", "{s:?}");
    }

    // Of `web`: its release, replica and service; not `api`'s release.
    let (seen, _) = drain(&mut of_web);
    assert_eq!(
        kinds_and_actions(&seen),
        [
            ("release", "uploaded"),
            ("replica", "placed"),
            ("service", "created"),
        ]
        .map(|(k, a)| (k.to_owned(), a.to_owned()))
    );
    assert_eq!(seen[0].data["object"]["service"], "web");
}

#[tokio::test]
async fn a_watcher_resumes_after_its_last_id_or_is_told_to_relist() {
    let mf = memory_fixture();
    let mut first = watch_all(&mf);
    let start = drain(&mut first).0[0].id.expect("sync id");
    for _ in 0..10 {
        token(&mf, "eu");
    }
    let (seen, _) = drain(&mut first);
    let last_read = seen[3].id.expect("id");
    drop(first);

    // Resuming after the fourth: exactly the six that followed, in order.
    let mut resumed = mf
        .fx
        .app
        .watch(WatchFilter::default(), Some(last_read))
        .expect("resume");
    let (replayed, _) = drain(&mut resumed);
    assert_eq!(
        ids(&replayed),
        (last_read + 1..=start + 10).collect::<Vec<_>>()
    );
    // ...then live, with no gap between the replay and the live changes.
    token(&mf, "eu");
    let (live, _) = drain(&mut resumed);
    assert_eq!(ids(&live), [start + 11]);
    // Resuming at the head replays nothing.
    let mut at_head = mf
        .fx
        .app
        .watch(WatchFilter::default(), Some(start + 11))
        .expect("watch");
    assert!(drain(&mut at_head).0.is_empty());

    // Ids from before this controller started, or never given out: relist.
    for (since, reason) in [(1, "restarted"), (start + 1000, "unknown_id")] {
        let mut stale = mf
            .fx
            .app
            .watch(WatchFilter::default(), Some(since))
            .expect("watch");
        let (seen, _) = drain(&mut stale);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].event, "relist");
        assert_eq!(seen[0].data["reason"], reason);
        assert_eq!(seen[0].id, Some(start + 11), "live from the current id");
    }

    // Once the buffer has moved past an id, resuming from it means relisting.
    let buffer = mf.fx.app.settings().watch.buffer;
    for _ in 0..buffer {
        token(&mf, "eu");
    }
    let mut behind = mf
        .fx
        .app
        .watch(WatchFilter::default(), Some(last_read))
        .expect("watch");
    let (seen, _) = drain(&mut behind);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].data["reason"], "too_old");
    // The oldest id still held resumes whole.
    let oldest = start + 12;
    let mut edge = mf
        .fx
        .app
        .watch(WatchFilter::default(), Some(oldest - 1))
        .expect("watch");
    assert_eq!(drain(&mut edge).0.len(), buffer);
}

#[tokio::test]
async fn a_watcher_a_whole_queue_behind_is_dropped_told_why_and_can_resume() {
    let mf = memory_fixture();
    let queue = mf.fx.app.settings().watch.queue;
    let mut slow = watch_all(&mf);
    let mut keeping_up = watch_all(&mf);
    let start = drain(&mut slow).0[0].id.expect("sync id");
    drain(&mut keeping_up);
    assert_eq!(mf.fx.app.changes.n_watchers(), 2);

    // The slow one reads nothing while one more change than its queue holds
    // is recorded; the other keeps up.
    let mut read_by_the_other = Vec::new();
    for _ in 0..=queue {
        token(&mf, "eu");
        read_by_the_other.extend(ids(&drain(&mut keeping_up).0));
    }
    assert_eq!(read_by_the_other.len(), queue + 1);
    assert_eq!(
        mf.fx.app.changes.n_watchers(),
        1,
        "the slow watcher is unregistered at once, its place freed"
    );

    // It gets what was queued, then `dropped` naming its last id, then the end.
    let (seen, ended) = drain(&mut slow);
    assert!(ended);
    assert_eq!(seen.len(), queue + 1);
    let last = seen[queue - 1].id.expect("id");
    assert_eq!(last, start + queue as u64);
    let dropped = &seen[queue];
    assert_eq!((dropped.event, dropped.id), ("dropped", None));
    assert_eq!(dropped.data["reason"], "slow_consumer");
    assert_eq!(dropped.data["last_id"], last);

    // Reconnecting with that id gets exactly the change it missed.
    let mut again = mf
        .fx
        .app
        .watch(WatchFilter::default(), Some(last))
        .expect("watch");
    assert_eq!(ids(&drain(&mut again).0), [start + queue as u64 + 1]);
}

#[tokio::test]
async fn the_watcher_cap_is_a_clear_error_and_a_closed_watch_frees_its_place() {
    let mf = memory_fixture();
    let max = mf.fx.app.settings().watch.max_watchers;
    let mut watches: Vec<Watch> = (0..max)
        .map(|_| mf.fx.app.watch(WatchFilter::default(), None).expect("room"))
        .collect();
    match mf.fx.app.watch(WatchFilter::default(), None) {
        Err(AppError::TooManyWatchers { max: said }) => assert_eq!(said, max),
        other => panic!("expected the cap, got {other:?}"),
    }
    watches.pop();
    mf.fx
        .app
        .watch(WatchFilter::default(), None)
        .expect("a place was freed");
}

#[tokio::test]
async fn shutdown_ends_every_watch_stream_after_what_was_queued() {
    let mf = memory_fixture();
    let mut watch = watch_all(&mf);
    drain(&mut watch);
    token(&mf, "eu");
    mf.fx.app.changes.close();
    let (seen, ended) = drain(&mut watch);
    assert_eq!(
        kinds_and_actions(&seen),
        [("token".to_owned(), "created".to_owned())]
    );
    assert!(ended, "the stream ends, with no dropped event");
    let mut late = watch_all(&mf);
    let (seen, ended) = drain(&mut late);
    assert_eq!(seen.len(), 1, "only the sync: {seen:?}");
    assert!(ended);
}

#[tokio::test]
async fn account_changes_are_user_and_api_token_changes_without_secrets() {
    let mf = memory_fixture();
    let app = &mf.fx.app;
    app.install_admin_token("the admin token").expect("admin");
    let mut watch = watch_all(&mf);
    let _ = drain(&mut watch);

    let user = UserRequest {
        name: "otto".into(),
        role: Role::Operator,
        password: "a long enough password".into(),
    };
    app.create_user(user).await.expect("user");
    let admin = app
        .authenticate("the admin token", Source::Unknown)
        .expect("admin");
    let made = app
        .create_api_token(
            &admin,
            ApiTokenRequest {
                name: "ci".into(),
                role: None,
                ttl_secs: None,
                user: Some("otto".into()),
            },
        )
        .expect("token");
    app.revoke_api_token(&admin, &made.id).expect("revoke");
    app.set_role("otto", Role::Viewer).expect("role");
    app.delete_user("otto").expect("delete");

    let (seen, _) = drain(&mut watch);
    let expected = [
        ("user", "created"),
        ("api_token", "created"),
        ("api_token", "revoked"),
        ("user", "role_changed"),
        ("user", "deleted"),
    ];
    assert_eq!(
        kinds_and_actions(&seen),
        expected
            .iter()
            .map(|(k, a)| ((*k).to_owned(), (*a).to_owned()))
            .collect::<Vec<_>>()
    );
    let secret = made.token.expect("shown once");
    for s in &seen {
        let text = s.data.to_string();
        assert!(
            !text.contains(&secret) && !text.contains("argon2"),
            "{text}"
        );
    }
}
