//! The attack suite against real agent processes: each attack of the TUF and
//! Uptane threat models that crosses the network is published straight to
//! the broker (or made through the controller), and each must be refused
//! with its reason while the workload that was running keeps running with
//! the same pid. Attacks that do not cross the network are unit tests:
//! `verge_shared::trust` (threshold, rotation, roles), `edge_agent::intake`
//! (every refusal reason), `edge_agent::archive` (archive entries), and the
//! artifact cache (size and digest while streaming). docs/security.md lists
//! them all.

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use verge_shared::messages::{Delivery, DesiredState, Event, payload_type};
use verge_shared::trust::{Publisher, Release, payload_type as trust_type};
use verge_shared::{Envelope, Generation, SigningKey, Timestamp, Topics};
use verge_tests::mqtt::{TestClient, retained};
use verge_tests::trust::{delivery, sign_by, sign_desired, sign_release};
use verge_tests::workload::{RunningReplica, ask, hello_artifact, hello_spec, wait_running};
use verge_tests::{Api, Cluster, wait_for};

fn key() -> SigningKey {
    SigningKey::generate().expect("key").0
}

/// What is deployed and retained for edge-a once `hello` runs `v2`.
struct Scene {
    cluster: Cluster,
    api: Api,
    topic: String,
    running: RunningReplica,
    /// The retained delivery of the running generation, and its parts.
    desired: DesiredState,
    release_v2: Envelope,
    release: Release,
    /// The retained delivery of the generation before (v1).
    old_delivery: Vec<u8>,
    attacker: TestClient,
}

async fn current_delivery(cluster: &Cluster, topic: &str, generation: u64, id: &str) -> Delivery {
    wait_for(
        &format!("retained delivery of generation {generation}"),
        Duration::from_secs(60),
        || async {
            let msg = retained(cluster.mqtt_addr, id, topic)
                .await
                .map_err(|e| e.to_string())?;
            let d: Delivery = serde_json::from_slice(&msg.payload).map_err(|e| e.to_string())?;
            let doc: DesiredState = d
                .desired
                .open(
                    payload_type::DESIRED_STATE,
                    &cluster.roles.controller.public_key(),
                )
                .map_err(|e| e.to_string())?;
            if doc.generation.get() == generation {
                Ok(d)
            } else {
                Err(format!("generation {}", doc.generation))
            }
        },
    )
    .await
}

async fn scene() -> Scene {
    let cluster = Cluster::with_agents(&[("edge-a", "region-a"), ("edge-b", "region-b")]).await;
    let api = cluster.api.clone();
    let topic = Topics::default().desired(&"edge-a".parse().expect("id"));
    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    api.put_service("hello", &hello_spec(&artifact, "v1", 1, &["region-a"]))
        .await
        .expect("PUT v1");
    let v1 = wait_running(&api, "hello", "v1").await.remove(0);
    let old = current_delivery(&cluster, &topic, v1.applied_generation, "watch-1").await;
    api.put_service("hello", &hello_spec(&artifact, "v2", 1, &["region-a"]))
        .await
        .expect("PUT v2");
    let running = wait_running(&api, "hello", "v2").await.remove(0);
    let current = current_delivery(&cluster, &topic, running.applied_generation, "watch-2").await;
    let desired: DesiredState = current
        .desired
        .open(
            payload_type::DESIRED_STATE,
            &cluster.roles.controller.public_key(),
        )
        .expect("controller signed");
    let release_v2 = current.releases[0].clone();
    let release: Release = release_v2.peek_unverified().expect("release");
    let attacker = TestClient::connect(cluster.mqtt_addr, "attacker")
        .await
        .expect("mqtt");
    Scene {
        cluster,
        api,
        topic,
        running,
        desired,
        release_v2,
        release,
        old_delivery: serde_json::to_vec(&old).expect("json"),
        attacker,
    }
}

impl Scene {
    /// A desired state like the running one, `ahead` generations newer,
    /// naming `release`.
    fn desired_naming(&self, ahead: u64, release: &Envelope) -> DesiredState {
        let mut doc = self.desired.clone();
        doc.generation = Generation::new(doc.generation.get() + ahead);
        doc.issued_at = Timestamp::now();
        doc.expires_at = doc.issued_at.saturating_add(Duration::from_secs(3600));
        doc.workloads[0].release = release.signed_digest().expect("digest");
        doc
    }

    /// A complete delivery signed with the (stolen) controller key.
    fn forged(&self, ahead: u64, release: &Envelope) -> Vec<u8> {
        let doc = self.desired_naming(ahead, release);
        delivery(
            sign_desired(&self.cluster.roles.controller, &doc),
            vec![release.clone()],
            None,
        )
    }

    /// Publishes `payload` on edge-a's desired topic and waits until edge-a
    /// reports a new refusal with `reason`; then checks the workload.
    async fn refused(&self, attack: &str, payload: Vec<u8>, reason: &str) {
        let before = self.api.node("edge-a").await.expect("node")["last_rejection"].clone();
        self.attacker
            .publish(&self.topic, payload)
            .await
            .expect("publish");
        wait_for(
            &format!("{attack}: refused with {reason}"),
            Duration::from_secs(30),
            || async {
                let node = self.api.node("edge-a").await.map_err(|e| e.to_string())?;
                let last = &node["last_rejection"];
                if *last != before && last["reason"] == reason {
                    Ok(())
                } else {
                    Err(last.to_string())
                }
            },
        )
        .await;
        self.still_running(attack).await;
    }

    /// A subscriber to edge-a's security events.
    async fn events(&self) -> TestClient {
        let events = TestClient::connect(self.cluster.mqtt_addr, "events")
            .await
            .expect("mqtt");
        events.subscribe(&events_topic()).await.expect("subscribe");
        events
    }

    /// The workload that ran before the attack still runs, same pid, same
    /// generation, and answers itself.
    async fn still_running(&self, attack: &str) {
        let now = wait_running(&self.api, "hello", "v2").await.remove(0);
        assert_eq!(
            now.pid, self.running.pid,
            "{attack}: the workload was restarted"
        );
        assert_eq!(
            now.applied_generation, self.running.applied_generation,
            "{attack}: the applied generation moved"
        );
        let answer = ask(now.port).await.expect("workload answers");
        assert_eq!(answer["pid"], self.running.pid, "{attack}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_on_the_desired_state_channel_are_refused_and_the_workload_keeps_running() {
    let s = scene().await;
    let roles = s.cluster.roles.clone();
    let b64 = base64::engine::general_purpose::STANDARD;

    // Arbitrary software: an unsigned release, one signed by an unknown key,
    // and one signed by the controller key (which alone cannot introduce code).
    let mut unsigned = s.release_v2.clone();
    unsigned.signatures.clear();
    s.refused(
        "unsigned release",
        s.forged(1, &unsigned),
        "unknown_publisher",
    )
    .await;
    let mut evil = s.release.clone();
    evil.run.args = vec!["--greeting".into(), "pwned".into()];
    let by_stranger = sign_release(&evil, &[&key()]);
    s.refused(
        "release by an unknown key",
        s.forged(2, &by_stranger),
        "unknown_publisher",
    )
    .await;
    let by_controller = sign_release(&evil, &[&roles.controller]);
    s.refused(
        "compromised controller key signs code",
        s.forged(3, &by_controller),
        "unknown_publisher",
    )
    .await;

    // Tampered payloads: the desired state, and a release whose bytes no
    // longer match the digest the controller signed (mix-and-match).
    let mut tampered = sign_desired(&roles.controller, &s.desired_naming(4, &s.release_v2));
    tampered.payload =
        b64.encode(serde_json::to_vec(&s.desired_naming(40, &s.release_v2)).expect("json"));
    s.refused(
        "tampered desired state",
        delivery(tampered, vec![s.release_v2.clone()], None),
        "bad_signature",
    )
    .await;
    let mut altered = s.release_v2.clone();
    altered.payload = b64.encode(serde_json::to_vec(&evil).expect("json"));
    let doc = s.desired_naming(5, &s.release_v2);
    s.refused(
        "tampered release",
        delivery(sign_desired(&roles.controller, &doc), vec![altered], None),
        "release_missing",
    )
    .await;
    let genuine_other = sign_release(&evil, &[&roles.publisher]);
    s.refused(
        "mix-and-match: a release never signed together with the desired state",
        delivery(
            sign_desired(&roles.controller, &doc),
            vec![genuine_other],
            None,
        ),
        "release_missing",
    )
    .await;

    // Rollback: a replayed older generation; an older release version.
    s.refused(
        "replayed older generation",
        s.old_delivery.clone(),
        "stale_generation",
    )
    .await;
    let mut older = s.release.clone();
    older.version = "0.9.0".parse().expect("version");
    let older = sign_release(&older, &[&roles.publisher]);
    s.refused(
        "older release version",
        s.forged(6, &older),
        "release_rollback",
    )
    .await;

    // Replay of another agent's desired state.
    let mut doc_b = s.desired_naming(7, &s.release_v2);
    doc_b.agent = "edge-b".parse().expect("id");
    s.refused(
        "another agent's desired state",
        delivery(
            sign_desired(&roles.controller, &doc_b),
            vec![s.release_v2.clone()],
            None,
        ),
        "wrong_agent",
    )
    .await;

    // Freeze: an expired desired state.
    let mut stale = s.desired_naming(8, &s.release_v2);
    stale.issued_at = Timestamp::from_unix_millis(Timestamp::now().unix_millis() - 7_200_000);
    stale.expires_at = stale.issued_at.saturating_add(Duration::from_secs(3600));
    s.refused(
        "expired desired state",
        delivery(
            sign_desired(&roles.controller, &stale),
            vec![s.release_v2.clone()],
            None,
        ),
        "expired",
    )
    .await;

    // Endless data and junk.
    s.refused(
        "oversized delivery",
        vec![b' '; verge_shared::limits::MAX_DELIVERY_BYTES + 1],
        "too_large",
    )
    .await;
    s.refused(
        "malformed delivery",
        b"{\"desired\": 7".to_vec(),
        "malformed",
    )
    .await;
}

/// A rogue trust bundle (signed by a root the agent does not trust) that
/// lists the attacker as a publisher: the bundle is refused with an event,
/// and the attacker's release with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_trust_bundle_is_refused_with_an_event() {
    let s = scene().await;
    let roles = s.cluster.roles.clone();
    let mut events = s.events().await;

    let (rogue_root, rogue_publisher) = (key(), key());
    let mut bundle = roles.bundle(99);
    bundle.root.keys = vec![rogue_root.public_key()];
    bundle.publishers.push(Publisher {
        name: "rogue".into(),
        key: rogue_publisher.public_key(),
        services: vec!["*".into()],
    });
    let rogue_bundle = sign_by(trust_type::TRUST_BUNDLE, &bundle, &[&rogue_root]);
    let mut evil = s.release.clone();
    evil.run.args = vec!["--greeting".into(), "pwned".into()];
    let evil = sign_release(&evil, &[&rogue_publisher]);
    let doc = s.desired_naming(1, &evil);
    s.refused(
        "rogue trust bundle",
        delivery(
            sign_desired(&roles.controller, &doc),
            vec![evil],
            Some(rogue_bundle),
        ),
        "unknown_publisher",
    )
    .await;
    // The agent told everyone: one event for the bundle, one for the state
    // (and, besides, alarms raised for both refusals).
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let event = next_event(&mut events, "").await;
        if event.alarm.is_some() {
            continue;
        }
        kinds.push((
            serde_json::to_value(event.kind).expect("json"),
            serde_json::to_value(event.reason).expect("json"),
        ));
    }
    assert!(
        kinds.contains(&(
            Value::from("trust_bundle_rejected"),
            Value::from("threshold_not_met")
        )),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(
            Value::from("desired_state_rejected"),
            Value::from("unknown_publisher")
        )),
        "{kinds:?}"
    );
    // The controller verified both with edge-a's key and serves them.
    let kept = wait_for(
        "both events at GET /api/v1/events",
        Duration::from_secs(30),
        || async {
            let page = s
                .api
                .get("/api/v1/events?node=edge-a")
                .await
                .map_err(|e| e.to_string())?;
            let kinds: Vec<(Value, Value)> = page["events"]
                .as_array()
                .map(|events| {
                    events
                        .iter()
                        .map(|e| (e["kind"].clone(), e["reason"].clone()))
                        .collect()
                })
                .unwrap_or_default();
            if kinds.contains(&(
                Value::from("trust_bundle_rejected"),
                Value::from("threshold_not_met"),
            )) && kinds.contains(&(
                Value::from("desired_state_rejected"),
                Value::from("unknown_publisher"),
            )) {
                Ok(page)
            } else {
                Err(page.to_string())
            }
        },
    )
    .await;
    for event in kept["events"].as_array().expect("events") {
        assert_eq!(event["node"], "edge-a", "{event}");
        assert!(event["id"].as_u64().is_some_and(|id| id > 0), "{event}");
    }
}

/// A stolen controller key signs a huge generation (fast-forward): the
/// agent takes it and then refuses the real controller's next one. The
/// operator recovers with a root-signed bundle that drops the stolen key
/// and resets generations; a publisher revoked in the same bundle loses its
/// power at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_forward_is_recovered_by_a_root_signed_reset() {
    let s = scene().await;
    let roles = s.cluster.roles.clone();
    let (stolen, side_publisher) = (key(), key());

    // Version 2 lists a second controller key (later stolen) and a second
    // publisher allowed only `db-*` services.
    let mut v2 = roles.bundle(2);
    v2.controllers.push(stolen.public_key());
    v2.publishers.push(Publisher {
        name: "db team".into(),
        key: side_publisher.public_key(),
        services: vec!["db-*".into()],
    });
    let signed =
        serde_json::to_vec(&sign_by(trust_type::TRUST_BUNDLE, &v2, &[&roles.root])).expect("json");
    let mut events = s.events().await;
    let reply = s
        .api
        .request(reqwest::Method::PUT, "/api/v1/trust", Some(signed.into()))
        .await
        .expect("PUT trust");
    assert_eq!(reply.body["version"], 2, "{}", reply.body);
    // The controller sends it with the next delivery; wait until edge-a says so.
    next_event(&mut events, "trust_bundle_updated").await;

    // A publisher allowed only db-* cannot publish hello.
    let mut hijack = s.release.clone();
    hijack.run.args = vec!["--greeting".into(), "pwned".into()];
    let by_db_team = sign_release(&hijack, &[&side_publisher]);
    s.refused(
        "publisher not allowed the service",
        s.forged(1, &by_db_team),
        "publisher_not_allowed",
    )
    .await;

    // Fast-forward: the stolen key signs generation +1000 of the same work.
    let ff = s.desired_naming(1000, &s.release_v2);
    s.attacker
        .publish(
            &s.topic,
            delivery(sign_desired(&stolen, &ff), vec![s.release_v2.clone()], None),
        )
        .await
        .expect("publish");
    wait_for(
        "the fast-forwarded generation is accepted",
        Duration::from_secs(30),
        || async {
            let node = s.api.node("edge-a").await.map_err(|e| e.to_string())?;
            if node["last_status"]["applied_generation"] == ff.generation.get()
                || node["applied_generation"] == ff.generation.get()
            {
                Ok(())
            } else {
                Err(node["applied_generation"].to_string())
            }
        },
    )
    .await;
    // The real controller's next generation is now refused as stale.
    let artifact = api_artifact(&s.api).await;
    s.api
        .put_service("hello", &hello_spec(&artifact, "v3", 1, &["region-a"]))
        .await
        .expect("PUT v3");
    wait_for("v3 refused as stale", Duration::from_secs(30), || async {
        let node = s.api.node("edge-a").await.map_err(|e| e.to_string())?;
        if node["last_rejection"]["reason"] == "stale_generation" {
            Ok(())
        } else {
            Err(node["last_rejection"].to_string())
        }
    })
    .await;

    // Recovery: version 3 drops the stolen key and the db team, and resets.
    let mut v3 = roles.bundle(3);
    v3.reset_generations = true;
    let signed =
        serde_json::to_vec(&sign_by(trust_type::TRUST_BUNDLE, &v3, &[&roles.root])).expect("json");
    let reply = s
        .api
        .request(reqwest::Method::PUT, "/api/v1/trust", Some(signed.into()))
        .await
        .expect("PUT trust");
    assert_eq!(reply.body["installed"], true, "{}", reply.body);
    let v3_running = wait_running(&s.api, "hello", "v3").await.remove(0);
    assert!(v3_running.applied_generation < ff.generation.get());

    // The stolen key is now unknown; the revoked publisher too.
    let again = s.desired_naming(2000, &s.release_v2);
    let before = s.api.node("edge-a").await.expect("node")["last_rejection"].clone();
    s.attacker
        .publish(
            &s.topic,
            delivery(
                sign_desired(&stolen, &again),
                vec![s.release_v2.clone()],
                None,
            ),
        )
        .await
        .expect("publish");
    wait_for("stolen key refused", Duration::from_secs(30), || async {
        let node = s.api.node("edge-a").await.map_err(|e| e.to_string())?;
        let last = &node["last_rejection"];
        if *last != before && last["reason"] == "unknown_key" {
            Ok(())
        } else {
            Err(last.to_string())
        }
    })
    .await;
    let mut db = s.release.clone();
    db.service = "db-main".parse().expect("name");
    let by_revoked = serde_json::to_vec(&sign_release(&db, &[&side_publisher])).expect("json");
    let reply = s.api.post_release(by_revoked).await.expect("POST release");
    assert_eq!(
        reply.status,
        reqwest::StatusCode::BAD_REQUEST,
        "{}",
        reply.body
    );
    let still = wait_running(&s.api, "hello", "v3").await.remove(0);
    assert_eq!(
        still.pid, v3_running.pid,
        "the recovered workload keeps running"
    );
}

fn events_topic() -> String {
    Topics::default().events(
        &"region-a".parse().expect("region"),
        &"edge-a".parse().expect("id"),
    )
}

/// The next security event from edge-a (of `kind`, unless empty), its
/// signature checked with the node key the controller pinned.
async fn next_event(events: &mut TestClient, kind: &str) -> Event {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = events
            .next_on(&events_topic(), left)
            .await
            .unwrap_or_else(|e| panic!("waiting for a {kind:?} event: {e}"));
        let envelope: Envelope = serde_json::from_slice(&msg.payload).expect("envelope");
        let event: Event = envelope.peek_unverified().expect("event");
        if kind.is_empty() || serde_json::to_value(event.kind).expect("json") == kind {
            return event;
        }
    }
}

/// The artifact hello-edge runs, as already uploaded.
async fn api_artifact(api: &Api) -> String {
    api.upload_artifact(hello_artifact()).await.expect("upload")
}

/// Arguments and environment values reach the workload as they are, never
/// through a shell: shell syntax in them runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argv_and_env_values_are_never_interpreted_by_a_shell() {
    let cluster = Cluster::with_agents(&[("edge-a", "region-a")]).await;
    let api = cluster.api.clone();
    let marker = tempfile::tempdir().expect("tempdir");
    let file = marker.path().join("pwned");
    let greeting = format!(
        "$(touch {f}); `touch {f}` && touch {f} | touch {f}",
        f = file.display()
    );
    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    let mut spec = hello_spec(&artifact, &greeting, 1, &["region-a"]);
    spec["env"] = serde_json::json!({"LD_PRELOAD_NOT": format!("$(touch {})", file.display())});
    api.put_service("hello", &spec)
        .await
        .expect("PUT")
        .ok()
        .expect("accepted");
    let running = wait_running(&api, "hello", &greeting).await.remove(0);
    assert!(running.pid > 0);
    assert!(!file.exists(), "a shell ran part of an argument");
}

/// A greeting, bytes that make the artifact new, how the served copy is
/// corrupted, and what the refusal says.
type Corruption = (&'static str, &'static [u8], fn(&mut Vec<u8>), &'static str);

/// The controller (or anything between it and the node) serves other bytes
/// than a release declares: a tampered artifact of the declared size, then
/// one that never ends. The agent refuses both while streaming, says why on
/// the replica, and the previous version keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_endless_artifacts_never_run() {
    let s = scene().await;
    let store = s.cluster.controller_data.join("artifacts/sha256");
    let cases: [Corruption; 2] = [
        (
            "v3",
            b"\n#tampered",
            |bytes| bytes[1000] ^= 0xff,
            "hashes to",
        ),
        (
            "v4",
            b"\n#endless",
            |bytes| bytes.extend(std::iter::repeat_n(0u8, 1 << 20)),
            "more than the declared",
        ),
    ];
    for (greeting, suffix, corrupt, reason) in cases {
        let mut bytes = hello_artifact();
        bytes.extend_from_slice(suffix);
        let sha = s.api.upload_artifact(bytes.clone()).await.expect("upload");
        // What the controller serves from now on.
        corrupt(&mut bytes);
        std::fs::write(store.join(&sha), &bytes).expect("tamper with the stored file");
        s.api
            .put_service("hello", &hello_spec(&sha, greeting, 1, &["region-a"]))
            .await
            .expect("PUT")
            .ok()
            .expect("accepted: the release itself is genuine");
        let replica = verge_tests::workload::wait_replica(
            &s.api,
            "hello",
            0,
            &format!("{greeting}: refused with {reason:?}"),
            Duration::from_secs(60),
            |r| {
                r["state"] == "failed"
                    && r["message"].as_str().is_some_and(|m| {
                        m.contains(reason) && m.contains("previous version keeps running")
                    })
            },
        )
        .await;
        assert!(replica["pid"].is_null(), "{replica}");
        // The old process still answers, with its old greeting.
        let answer = ask(s.running.port)
            .await
            .expect("the previous version answers");
        assert_eq!(answer["pid"], s.running.pid, "{greeting}");
        assert_eq!(answer["greeting"], "v2", "{greeting}");
        // Nothing of it landed in the agent's cache.
        let cached = s.cluster.agents[0]
            .data_dir
            .join("artifacts/sha256")
            .join(&sha);
        assert!(
            !cached.exists(),
            "{greeting}: a refused artifact was cached"
        );
    }
}
