//! The watch stream against a real controller: a real agent joining and a
//! deploy seen as typed changes; resumption with `Last-Event-ID` that
//! loses and repeats nothing; `relist` after a controller restart; a
//! reader that never reads dropped while the controller stays healthy;
//! the watcher cap's documented error.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use verge_tests::mqtt::TestClient;
use verge_tests::node::FakeNode;
use verge_tests::sse::{self, SseEvent, SseStream};
use verge_tests::workload::{hello_artifact, hello_spec};
use verge_tests::{Cluster, ClusterOptions, wait_for};

/// Generous for a loaded 2-core machine; a healthy run takes milliseconds.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

async fn cluster(watch: &str) -> Cluster {
    Cluster::start(ClusterOptions {
        controller_extra: format!("[watch]\nkeep_alive_secs = 1\n{watch}"),
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster starts")
}

async fn open(cluster: &Cluster, query: &str, last_event_id: Option<u64>) -> SseStream {
    sse::watch(&cluster.api, query, last_event_id)
        .await
        .expect("request")
        .unwrap_or_else(|refused| panic!("watch refused: {refused:?}"))
}

/// Reads events until one passes `wanted`; returns every event read.
async fn read_until(
    stream: &mut SseStream,
    what: &str,
    wanted: impl Fn(&SseEvent) -> bool,
) -> Vec<SseEvent> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.next(left).await {
            Ok(Some(event)) => {
                let done = wanted(&event);
                seen.push(event);
                if done {
                    return seen;
                }
            }
            Ok(None) => panic!("the stream ended waiting for {what}; saw {seen:#?}"),
            Err(e) => panic!("{e:#} waiting for {what}; saw {seen:#?}"),
        }
    }
}

fn is(event: &SseEvent, kind: &str, action: &str) -> bool {
    event.event == kind && event.data["action"] == action
}

async fn create_token(cluster: &Cluster) -> String {
    cluster.api.create_token("eu", 1).await.expect("token").0
}

#[tokio::test]
async fn an_agent_joining_and_a_deploy_are_seen_as_node_release_replica_and_service_changes() {
    let mut cluster = cluster("").await;
    let mut stream = open(&cluster, "", None).await;
    let sync = stream
        .next(EVENT_TIMEOUT)
        .await
        .expect("sync")
        .expect("event");
    assert_eq!(sync.event, "sync");
    let head = sync.id.expect("the sync carries the current id");

    cluster
        .add_agent("edge-a", "region-a")
        .await
        .expect("agent starts");
    let seen = read_until(&mut stream, "edge-a registered", |e| {
        is(e, "node", "registered")
    })
    .await;
    assert_consecutive(head, &seen);
    let registered = seen.last().expect("event");
    assert_eq!(registered.data["object"]["id"], "edge-a");
    assert_eq!(registered.data["object"]["region"], "region-a");
    assert!(registered.id.expect("id") > head);

    let artifact = cluster
        .api
        .upload_artifact(hello_artifact())
        .await
        .expect("upload");
    let reply = cluster
        .api
        .put_service("hello", &hello_spec(&artifact, "v1", 1, &["region-a"]))
        .await
        .expect("PUT");
    assert_eq!(reply.status, 201, "{}", reply.body);
    let seen = read_until(&mut stream, "the service created", |e| {
        is(e, "service", "created")
    })
    .await;
    assert_consecutive(registered.id.expect("id"), &seen);
    let release = seen
        .iter()
        .find(|e| is(e, "release", "uploaded"))
        .expect("release event");
    assert_eq!(release.data["object"]["service"], "hello");
    let placed = seen
        .iter()
        .find(|e| is(e, "replica", "placed"))
        .expect("replica event");
    assert_eq!(placed.data["object"]["node"], "edge-a");
    assert_eq!(placed.data["object"]["region"], "region-a");
    assert_eq!(placed.data["object"]["service"], "hello");
    // The agent then reports the replica running: a node status change.
    read_until(&mut stream, "edge-a reporting hello running", |e| {
        is(e, "node", "status")
            && e.data["object"]["workloads"].as_array().is_some_and(|w| {
                w.iter()
                    .any(|w| w["service"] == "hello" && w["state"] == "running")
            })
    })
    .await;

    cluster.agent("edge-a").stop();
    let seen = read_until(&mut stream, "edge-a offline", |e| is(e, "node", "offline")).await;
    assert_eq!(seen.last().expect("event").data["object"]["online"], false);
}

/// The ids of `events` grow by exactly one from `after`: nothing skipped.
fn assert_consecutive(after: u64, events: &[SseEvent]) {
    let ids: Vec<u64> = events.iter().map(|e| e.id.expect("id")).collect();
    let expected: Vec<u64> = (after + 1..=after + ids.len() as u64).collect();
    assert_eq!(ids, expected, "{events:#?}");
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_gets_exactly_the_missed_changes() {
    let cluster = cluster("").await;
    let mut first = open(&cluster, "?kind=token", None).await;
    first
        .next(EVENT_TIMEOUT)
        .await
        .expect("sync")
        .expect("event");

    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(create_token(&cluster).await);
    }
    let mut read = Vec::new();
    for _ in 0..2 {
        read.push(
            first
                .next(EVENT_TIMEOUT)
                .await
                .expect("read")
                .expect("event"),
        );
    }
    let last_id = read[1].id.expect("id");
    drop(first);
    for _ in 0..5 {
        created.push(create_token(&cluster).await);
    }

    // Resumed: the eight not read, each once, in order; then live.
    let mut resumed = open(&cluster, "?kind=token", Some(last_id)).await;
    let mut missed = Vec::new();
    for _ in 0..8 {
        missed.push(
            resumed
                .next(EVENT_TIMEOUT)
                .await
                .expect("replay")
                .expect("event"),
        );
    }
    let ids: Vec<u64> = missed.iter().map(|e| e.id.expect("id")).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    assert!(ids[0] > last_id);
    let tokens = |events: &[SseEvent]| -> Vec<String> {
        events
            .iter()
            .map(|e| e.data["object"]["id"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let all: Vec<String> = tokens(&read).into_iter().chain(tokens(&missed)).collect();
    assert_eq!(all, created, "every token once, none lost, none repeated");
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), 10);

    // Nothing more is pending: a quiet stream carries keep-alive comments
    // (every second here), then the next live change.
    let comments = resumed.comments;
    assert!(
        resumed.next(Duration::from_secs(5)).await.is_err(),
        "nothing more to replay"
    );
    assert!(
        resumed.comments > comments,
        "keep-alive comments on a quiet stream"
    );
    let live = create_token(&cluster).await;
    let next = resumed
        .next(EVENT_TIMEOUT)
        .await
        .expect("live")
        .expect("event");
    assert_eq!(next.data["object"]["id"], live);
    assert_eq!(next.data["action"], "created");

    // ?since= resumes the same way, for clients that cannot send the header.
    let mut by_query = open(&cluster, &format!("?kind=token&since={last_id}"), None).await;
    let first_again = by_query
        .next(EVENT_TIMEOUT)
        .await
        .expect("replay")
        .expect("event");
    assert_eq!(first_again.id, Some(ids[0]));

    // Bad filters are refused by name.
    for (query, field) in [
        ("?kind=nodes", "kind"),
        ("?region=Not%20A%20Region", "region"),
        ("?since=x", "since"),
    ] {
        let refused = sse::watch(&cluster.api, query, None)
            .await
            .expect("request")
            .expect_err("refused");
        assert_eq!(refused.status, 400, "{query}");
        assert_eq!(
            refused.body["error"]["field"], field,
            "{query}: {}",
            refused.body
        );
    }
}

#[tokio::test]
async fn a_watcher_returning_after_a_controller_restart_is_told_to_relist() {
    let mut cluster = cluster("").await;
    let mut stream = open(&cluster, "", None).await;
    stream
        .next(EVENT_TIMEOUT)
        .await
        .expect("sync")
        .expect("event");
    create_token(&cluster).await;
    let before = stream
        .next(EVENT_TIMEOUT)
        .await
        .expect("token")
        .expect("event");
    let last_id = before.id.expect("id");
    drop(stream);

    cluster
        .start_controller()
        .await
        .expect("controller restarts");
    let mut returning = open(&cluster, "", Some(last_id)).await;
    let relist = returning
        .next(EVENT_TIMEOUT)
        .await
        .expect("relist")
        .expect("event");
    assert_eq!(relist.event, "relist", "{relist:?}");
    assert_eq!(relist.data["reason"], "restarted");
    let head = relist.id.expect("the relist carries the current id");
    assert!(
        head > last_id,
        "ids never go back across a restart: {head} after {last_id}"
    );
    // Then live, above every id of the previous run.
    let token = create_token(&cluster).await;
    let next = read_until(&mut returning, "the new token", |e| {
        is(e, "token", "created")
    })
    .await;
    let next = next.last().expect("event");
    assert_eq!(next.data["object"]["id"], token);
    assert!(next.id.expect("id") > head);
}

/// A watch request over a socket with a 4 KiB receive buffer whose reader
/// reads nothing until told to.
async fn never_reading(cluster: &Cluster) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = cluster
        .api
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("the API address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(addr).await.expect("connect");
    let request = format!(
        "GET /api/v1/watch HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        cluster.api.token()
    );
    stream.write_all(request.as_bytes()).await.expect("request");
    stream
}

#[tokio::test]
async fn a_reader_that_never_reads_is_dropped_and_the_controller_stays_healthy() {
    let cluster = cluster("queue = 64\nmax_watchers = 2\n").await;
    let mut slow = never_reading(&cluster).await;
    let mut keeping_up = open(&cluster, "", None).await;
    keeping_up
        .next(EVENT_TIMEOUT)
        .await
        .expect("sync")
        .expect("event");

    // The cap: two watchers are connected, a third is refused as documented.
    let refused = wait_for("the third watcher refused", EVENT_TIMEOUT, || async {
        match sse::watch(&cluster.api, "", None).await {
            Ok(Err(reply)) => Ok(reply),
            Ok(Ok(_)) => Err("accepted: the slow watcher is not registered yet".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.error_code(),
        "too_many_watchers",
        "{}",
        refused.body
    );

    // A node reports big statuses until the slow watcher's queue overflows
    // and its place is freed; the other watcher reads every one.
    let mqtt = TestClient::connect(cluster.mqtt_addr, "watch-test")
        .await
        .expect("mqtt");
    let node = FakeNode::new("fake-1", "eu").expect("node");
    node.announce(&mqtt).await.expect("presence");
    read_until(&mut keeping_up, "fake-1 registered", |e| {
        is(e, "node", "registered")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n_sent = 0u64;
    let mut last_read = None;
    let third = loop {
        assert!(
            Instant::now() < deadline,
            "the slow watcher was never dropped after {n_sent} changes"
        );
        // Fewer than a queue at a time, so the reading watcher never falls
        // a queue behind.
        for _ in 0..10 {
            n_sent += 1;
            node.report(&mqtt, "web", format!("{n_sent:08}{}", "x".repeat(16_000)))
                .await
                .expect("status");
        }
        // The other watcher gets each change, in order, none skipped.
        let seen = read_until(&mut keeping_up, "the latest status", |e| {
            e.data["object"]["workloads"][0]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("{n_sent:08}")))
        })
        .await;
        for event in &seen {
            let id = event.id.expect("id");
            if let Some(previous) = last_read {
                assert_eq!(
                    id,
                    previous + 1,
                    "consecutive ids on the watcher that keeps up"
                );
            }
            last_read = Some(id);
        }
        if let Ok(Ok(third)) = sse::watch(&cluster.api, "", None).await {
            break third;
        }
    };
    drop(third);
    println!("the slow watcher was dropped after {n_sent} changes of 16 KB");
    let health: Value = cluster.api.get("/healthz").await.expect("healthz");
    assert_eq!(health["status"], "ok");

    // Read at last, the slow stream holds what was queued, then `dropped`
    // naming the slow consumer, then the end of the response.
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            let n = slow.read(&mut buffer).await.expect("read");
            received.extend_from_slice(&buffer[..n]);
            if n == 0 || received.ends_with(b"\r\n0\r\n\r\n") {
                return;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&received);
    assert!(
        ended.is_ok(),
        "the slow stream did not end; read {} bytes",
        received.len()
    );
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    let dropped = text.find("event: dropped").expect("a dropped event");
    assert!(
        text[dropped..].contains("slow_consumer"),
        "{}",
        &text[dropped..]
    );
}
