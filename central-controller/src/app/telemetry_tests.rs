//! Telemetry through `App::ingest`, over the in-memory store and a manual
//! clock: what is kept per node, what is refused and counted, and the view
//! the API and the console read.

use std::time::Duration;

use verge_shared::{SigningKey, Timestamp};

use super::*;
use crate::testing::{MemoryFixture, memory_fixture, memory_fixture_with, presence, telemetry};

const TOPIC: &str = "verge/v1/telemetry/eu/edge-a";

/// A fixture where `edge-a` (region `eu`) has announced itself.
fn with_node(history: usize) -> MemoryFixture {
    let mf = memory_fixture_with(|s| s.nodes.telemetry_history = history);
    let key = SigningKey::generate().expect("key").0;
    mf.fx.app.ingest(
        "verge/v1/agents/edge-a/presence",
        &presence(&key, "edge-a", "eu"),
        mf.clock.now(),
    );
    assert_eq!(mf.fx.app.rejected_messages(), 0, "the presence is taken");
    mf
}

/// `seq` from `edge-a`, produced `secs` seconds after `start`.
fn send(mf: &MemoryFixture, start: Timestamp, seq: u64, secs: u64, cpu_millis: u64) {
    let at = start.saturating_add(Duration::from_secs(secs));
    mf.fx.app.ingest(
        TOPIC,
        &telemetry("edge-a", "eu", seq, at, cpu_millis, 100 + secs),
        mf.clock.now(),
    );
}

fn seqs(mf: &MemoryFixture) -> Vec<u64> {
    let view = mf.fx.app.node_telemetry("edge-a").expect("known node");
    view.samples.iter().map(|s| s.seq).collect()
}

/// The count of `verge_agent_messages_refused_total` for `reason`.
fn refused(mf: &MemoryFixture, reason: &str) -> u64 {
    let text = mf.fx.app.metrics_text().expect("metrics");
    let prefix = format!("verge_agent_messages_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

#[tokio::test]
async fn a_nodes_latest_samples_are_kept_up_to_the_setting() {
    let mf = with_node(3);
    let start = mf.clock.now();
    for seq in 1..=5 {
        send(&mf, start, seq, seq * 60, seq * 600);
    }
    assert_eq!(seqs(&mf), [3, 4, 5], "the oldest go first");
    let view = mf.fx.app.node_telemetry("edge-a").expect("view");
    assert_eq!(view.node.as_str(), "edge-a");
    assert_eq!(view.interval_seconds, Some(60));
    let newest = view.samples.last().expect("a sample");
    assert_eq!(
        (newest.agent_rss_bytes, newest.workloads, newest.cache_bytes),
        (20 << 20, 1, 4096)
    );
    assert_eq!((newest.outbox_queued, newest.outbox_dropped), (2, 1));
    assert_eq!(newest.agent_cpu_percent, Some(1.0), "600 ms in 60 s");
    assert_eq!(newest.host_cpu_percent, Some(25.0));
    assert_eq!(newest.memory_available_bytes, 512 << 20);
    let text = mf.fx.app.metrics_text().expect("metrics");
    assert!(
        text.contains("verge_agent_messages_received_total{kind=\"telemetry\"} 5"),
        "{text}"
    );
    assert!(
        !text.contains("verge_signature_verifications_total{result=\"failed\"}"),
        "telemetry is unsigned: {text}"
    );
}

#[tokio::test]
async fn duplicates_and_late_samples_are_dropped_and_counted() {
    let mf = with_node(60);
    let start = mf.clock.now();
    send(&mf, start, 1, 0, 0);
    send(&mf, start, 2, 60, 100);
    // QoS 1 redelivers after a reconnect; an older one may come last.
    send(&mf, start, 2, 60, 100);
    send(&mf, start, 1, 0, 0);
    // A gap (dropped by the agent's outbox) is fine.
    send(&mf, start, 5, 240, 400);
    assert_eq!(seqs(&mf), [1, 2, 5]);
    assert_eq!(refused(&mf, "stale_seq"), 2);
}

#[tokio::test]
async fn telemetry_of_unknown_or_revoked_nodes_is_refused() {
    let mf = with_node(60);
    let now = mf.clock.now();
    mf.fx.app.ingest(
        "verge/v1/telemetry/eu/edge-z",
        &telemetry("edge-z", "eu", 1, now, 0, 1),
        now,
    );
    assert_eq!(refused(&mf, "unknown_agent"), 1);
    assert!(matches!(
        mf.fx.app.node_telemetry("edge-z"),
        Err(AppError::NotFound { .. })
    ));

    send(&mf, now, 1, 0, 0);
    assert_eq!(seqs(&mf), [1]);
    mf.fx.app.revoke_node("edge-a").await.expect("revoke");
    assert!(seqs(&mf).is_empty(), "revocation forgets the history");
    send(&mf, now, 2, 60, 0);
    assert_eq!(refused(&mf, "revoked"), 1);
    assert!(seqs(&mf).is_empty());
}

#[tokio::test]
async fn telemetry_that_does_not_match_its_topic_or_bounds_is_refused() {
    let mf = with_node(60);
    let now = mf.clock.now();
    let cases: [(&str, Vec<u8>, &str); 6] = [
        (
            TOPIC,
            telemetry("edge-b", "eu", 1, now, 0, 1),
            "agent_mismatch",
        ),
        (
            TOPIC,
            telemetry("edge-a", "us", 1, now, 0, 1),
            "region_mismatch",
        ),
        (TOPIC, b"{not json".to_vec(), "invalid"),
        (
            TOPIC,
            vec![b' '; verge_shared::telemetry::MAX_TELEMETRY_BYTES + 1],
            "too_large",
        ),
        (
            TOPIC,
            String::from_utf8(telemetry("edge-a", "eu", 1, now, 0, 1))
                .expect("UTF-8")
                .replace("\"schema_version\":2", "\"schema_version\":1")
                .into_bytes(),
            "schema",
        ),
        (
            "verge/v1/telemetry/eu/edge-a/x",
            telemetry("edge-a", "eu", 1, now, 0, 1),
            "unknown_topic",
        ),
    ];
    for (topic, payload, reason) in cases {
        mf.fx.app.ingest(topic, &payload, now);
        assert_eq!(refused(&mf, reason), 1, "{reason}");
    }
    assert!(seqs(&mf).is_empty());
}

#[tokio::test]
async fn cpu_use_starts_over_when_the_agent_restarts() {
    let mf = with_node(60);
    let start = mf.clock.now();
    send(&mf, start, 1, 0, 5_000);
    send(&mf, start, 2, 10, 5_500);
    // The agent restarted: its CPU time starts from zero, seq goes on.
    send(&mf, start, 3, 20, 200);
    send(&mf, start, 4, 30, 300);
    let view = mf.fx.app.node_telemetry("edge-a").expect("view");
    let cpu: Vec<Option<f64>> = view.samples.iter().map(|s| s.agent_cpu_percent).collect();
    assert_eq!(cpu, [None, Some(5.0), None, Some(1.0)]);
}

#[tokio::test]
async fn a_history_of_zero_keeps_nothing() {
    let mf = with_node(0);
    send(&mf, mf.clock.now(), 1, 0, 0);
    assert!(seqs(&mf).is_empty());
    assert_eq!(mf.fx.app.rejected_messages(), 0);
    // Without the setting's node: the default keeps 60.
    let mf = memory_fixture();
    assert_eq!(mf.fx.app.settings().nodes.telemetry_history, 60);
}
