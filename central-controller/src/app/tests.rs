//! Use-case tests over a real sled store: generations, deletes, key pinning.

use verge_shared::messages::{Delivery, DesiredState, payload_type};
use verge_shared::{Generation, Sha256Digest, SigningKey, Timestamp, limits};

use super::*;
use crate::testing::{Fixture, fixture, presence};

fn request(release: &str, replicas: i64) -> ServiceRequest {
    serde_json::from_value(serde_json::json!({
        "release": release,
        "replicas": replicas,
    }))
    .expect("request")
}

/// A release of `web` running `bytes` with `--greeting hi`.
async fn upload(fx: &Fixture, bytes: &'static [u8]) -> String {
    fx.release("web", bytes, &["--greeting", "hi"]).await
}

/// The desired states published since the last call, with the release
/// envelopes each delivery carried.
fn published(fx: &mut Fixture) -> Vec<DesiredState> {
    let key = fx.app.public_key();
    std::iter::from_fn(|| fx.outbox_rx.try_recv().ok())
        // Fleet events and alarms are not desired states.
        .filter(|m| m.topic.contains("/agents/"))
        .map(|m| {
            let delivery: Delivery = serde_json::from_slice(&m.payload).expect("delivery");
            assert!(m.payload.len() <= limits::MAX_DELIVERY_BYTES);
            assert!(
                delivery.trust.is_some(),
                "every delivery carries the trust bundle"
            );
            let desired: DesiredState = delivery
                .desired
                .open(payload_type::DESIRED_STATE, &key)
                .expect("signed by the controller");
            let delivered: Vec<_> = delivery
                .releases
                .iter()
                .map(|r| r.signed_digest().expect("digest"))
                .collect();
            for w in &desired.workloads {
                assert!(
                    delivered.contains(&w.release),
                    "release delivered with its desired state"
                );
            }
            desired
        })
        .collect()
}

#[tokio::test]
async fn generation_grows_only_when_workloads_change_and_delete_empties() {
    let mut fx = fixture();
    let agent_key = SigningKey::generate().expect("key").0;
    let now = Timestamp::now();
    fx.app.ingest(
        "verge/v1/agents/edge-a/presence",
        &presence(&agent_key, "edge-a", "eu"),
        now,
    );
    fx.app.reconcile(now, true).await.expect("plan");
    assert!(published(&mut fx).is_empty(), "no work, no document");

    let digest = upload(&fx, b"binary").await;
    let (view, created) = fx
        .app
        .put_service("web", request(&digest, 1))
        .await
        .expect("put");
    assert!(created);
    assert_eq!(
        view.replicas[0].node.as_ref().map(|n| n.as_str()),
        Some("edge-a")
    );
    let docs = published(&mut fx);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].generation, Generation::new(1));
    assert_eq!(docs[0].workloads[0].release.to_string(), digest);

    // Same spec again, and a forced re-plan: nothing new is issued.
    let (_, created) = fx
        .app
        .put_service("web", request(&digest, 1))
        .await
        .expect("put again");
    assert!(!created);
    fx.app
        .reconcile(Timestamp::now(), true)
        .await
        .expect("plan");
    assert!(published(&mut fx).is_empty());

    // Republishing re-sends the same generation.
    fx.app
        .republish_all(Timestamp::now())
        .await
        .expect("republish");
    let docs = published(&mut fx);
    assert_eq!(
        docs.iter().map(|d| d.generation.get()).collect::<Vec<_>>(),
        [1]
    );

    fx.app.delete_service("web").await.expect("delete");
    let docs = published(&mut fx);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].generation, Generation::new(2));
    assert!(docs[0].workloads.is_empty());
    assert!(matches!(
        fx.app.delete_service("web").await,
        Err(AppError::NotFound { .. })
    ));
}

#[tokio::test]
async fn unplaceable_replicas_are_stored_with_a_reason() {
    let mut fx = fixture();
    let digest = upload(&fx, b"binary").await;
    let (view, _) = fx
        .app
        .put_service("web", request(&digest, 2))
        .await
        .expect("put");
    assert!(
        view.replicas
            .iter()
            .all(|r| r.state == views::ReplicaState::Unplaced)
    );
    assert_eq!(
        view.replicas[0].reason.as_deref(),
        Some("0/0 nodes: no nodes are registered")
    );
    assert!(published(&mut fx).is_empty());
}

#[tokio::test]
async fn keys_are_pinned_at_first_contact() {
    let fx = fixture();
    let first = SigningKey::generate().expect("key").0;
    let impostor = SigningKey::generate().expect("key").0;
    let now = Timestamp::now();
    fx.app.ingest(
        "verge/v1/agents/edge-a/presence",
        &presence(&first, "edge-a", "eu"),
        now,
    );
    assert_eq!(fx.app.rejected_messages(), 0);
    let pinned = fx.app.node("edge-a").expect("node").key_id;
    assert_eq!(pinned, first.public_key().key_id());

    fx.app.ingest(
        "verge/v1/agents/edge-a/presence",
        &presence(&impostor, "edge-a", "us"),
        now,
    );
    assert_eq!(fx.app.rejected_messages(), 1);
    assert_eq!(fx.app.node("edge-a").expect("node").region.as_str(), "eu");

    // A payload naming another agent than its topic is ignored.
    fx.app.ingest(
        "verge/v1/agents/edge-b/presence",
        &presence(&first, "edge-a", "eu"),
        now,
    );
    assert_eq!(fx.app.rejected_messages(), 2);
    // Garbage and oversize payloads are counted, never fatal.
    fx.app
        .ingest("verge/v1/agents/edge-a/status", b"{not json", now);
    fx.app
        .ingest("verge/v1/agents/edge-a/heartbeat", &[b' '; 4096], now);
    assert_eq!(fx.app.rejected_messages(), 4);
}

#[tokio::test]
async fn invalid_fields_are_named() {
    let fx = fixture();
    let digest = upload(&fx, b"binary").await;
    let field_of = |r: Result<(ServiceView, bool), AppError>| match r {
        Err(AppError::InvalidField { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    };
    assert_eq!(
        field_of(fx.app.put_service("web", request(&digest, 101)).await),
        "replicas"
    );
    assert_eq!(
        field_of(fx.app.put_service("Bad_Name", request(&digest, 1)).await),
        "name"
    );
    let missing = Sha256Digest::of(b"never uploaded").to_string();
    assert_eq!(
        field_of(fx.app.put_service("web", request(&missing, 1)).await),
        "release"
    );
    // A release of `web` cannot be deployed as another service.
    assert_eq!(
        field_of(fx.app.put_service("api", request(&digest, 1)).await),
        "release"
    );
    let mut bad_config = request(&digest, 1);
    bad_config.config.insert("lower".into(), "x".into());
    assert_eq!(
        field_of(fx.app.put_service("web", bad_config).await),
        "config.lower"
    );
}
