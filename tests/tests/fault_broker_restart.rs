//! Fault scenario: Mosquitto, running with `persistence true`, restarted
//! while agents report through it under load.
//!
//! Three agents publish telemetry every second, and every agent is sent a
//! stream of desired states addressed to another agent, each with its own
//! generation: each one it refuses becomes a signed `desired_state_rejected`
//! event through its outbox. The broker is restarted (SIGTERM, which writes
//! its persistence file, then started again) in the middle of that stream.
//! Afterwards the outboxes drain and nothing within quota is lost:
//!
//! - events: sent by the agents (their "Rejected desired state" log lines),
//!   at the broker (a subscriber with a persistent session, so the broker
//!   keeps queueing for it across the restart) and at the receiver, the
//!   controller (`GET /api/v1/events`);
//! - telemetry: sent (each agent's outbox, read after it stopped), at the
//!   broker's subscriber and at the controller (its telemetry history).
//!
//! `cargo nextest run -p verge-tests --test fault_broker_restart --no-capture`

use std::time::{Duration, Instant};

use serde_json::Value;
use verge_shared::messages::{DesiredState, Event};
use verge_shared::{AgentId, Envelope, Generation, RegionId, Timestamp, Topics};
use verge_tests::faults::{
    Tally, Tap, controller_telemetry_seqs, log_generations, mosquitto_sys_line, read_outbox,
    telemetry_seqs,
};
use verge_tests::mqtt::TestClient;
use verge_tests::require::{Tool, missing};
use verge_tests::trust::{delivery, sign_desired};
use verge_tests::{BrokerKind, Cluster, ClusterOptions, wait_for};

const AGENTS: [&str; 3] = ["edge-0", "edge-1", "edge-2"];
/// Refused desired states sent to each agent before and after the restart.
const BURST: u64 = 40;

/// A desired state addressed to another agent, signed by the controller's
/// key: `agent` refuses it (`wrong_agent`) and reports the refusal.
fn misaddressed(cluster: &Cluster, generation: u64) -> Vec<u8> {
    let now = Timestamp::now();
    let doc = DesiredState {
        schema_version: verge_shared::messages::SCHEMA_VERSION,
        agent: AgentId::new("somewhere-else").expect("id"),
        generation: Generation::new(generation),
        issued_at: now,
        expires_at: now.saturating_add(Duration::from_secs(3600)),
        workloads: Vec::new(),
    };
    delivery(
        sign_desired(cluster.controller_signing_key(), &doc),
        Vec::new(),
        None,
    )
}

/// Publishes `BURST` misaddressed desired states to every agent, numbered
/// from `first`; returns the next number.
async fn burst(cluster: &Cluster, topics: &Topics, client_id: &str, first: u64) -> u64 {
    let client = TestClient::connect(cluster.mqtt_addr, client_id)
        .await
        .expect("mqtt");
    let mut generation = first;
    for _ in 0..BURST {
        for id in AGENTS {
            let topic = topics.desired(&AgentId::new(id).expect("id"));
            client
                .publish(&topic, misaddressed(cluster, generation))
                .await
                .expect("publish");
            generation += 1;
        }
    }
    let sent = usize::try_from(generation - first).expect("count");
    wait_for(
        "the broker acknowledged the burst",
        Duration::from_secs(30),
        || async {
            match client.pubacks() {
                n if n >= sent => Ok(()),
                n => Err(format!("{n} of {sent}")),
            }
        },
    )
    .await;
    generation
}

/// Every `desired_state_rejected` event the controller keeps, as
/// (node, generation), a page at a time.
async fn controller_events(api: &verge_tests::Api) -> Result<Vec<(String, u64)>, String> {
    let mut out = Vec::new();
    let mut after: Option<u64> = None;
    // Bounded: the controller keeps at most 10,000 events, 500 a page.
    for _ in 0..25 {
        let mut path =
            "/api/v1/events?source=node&kind=desired_state_rejected&limit=500".to_owned();
        if let Some(id) = after {
            path.push_str(&format!("&after={id}"));
        }
        let page = api.get(&path).await.map_err(|e| e.to_string())?;
        for e in page["events"].as_array().into_iter().flatten() {
            let node = e["node"].as_str().unwrap_or_default().to_owned();
            let generation = e["generation"]
                .as_u64()
                .ok_or(format!("no generation: {e}"))?;
            out.push((node, generation));
        }
        match &page["next_after"] {
            Value::Number(n) => after = n.as_u64(),
            _ => return Ok(out),
        }
    }
    Err("more than 25 pages of events".to_owned())
}

/// The (node, generation) of every refusal event among the tap's messages.
fn tapped_events(tap: &Tap) -> Vec<(String, u64)> {
    tap.messages()
        .iter()
        .filter_map(|m| {
            let envelope = Envelope::parse(&m.payload, usize::MAX).ok()?;
            // Counting only: the controller verifies them with the node's key.
            let event: Event = envelope.peek_unverified().ok()?;
            (event.alarm.is_none()).then_some(())?;
            Some((event.agent.to_string(), event.generation?.get()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "not yet run to completion; run with --run-ignored and see docs/reliability.md"]
async fn reports_survive_a_broker_restart_under_load() {
    if missing(Tool::Mosquitto) {
        return;
    }
    let mut cluster = Cluster::start(ClusterOptions {
        broker: BrokerKind::Mosquitto,
        broker_persistence: true,
        telemetry_history: Some(600),
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster");
    let topics = Topics::default();
    let events_filter = format!("{}/events/+/+", topics.prefix());
    let telemetry_filter = format!("{}/telemetry/+/+", topics.prefix());
    let tap = Tap::start(
        cluster.mqtt_addr,
        "fault-tap",
        &[&events_filter, &telemetry_filter],
    )
    .await
    .expect("tap");
    for id in AGENTS {
        cluster
            .add_agent_with(
                id,
                "region-a",
                cluster.mqtt_addr,
                "telemetry_interval_secs = 1",
            )
            .await
            .expect("agent");
    }
    let api = cluster.api.clone();

    let first = 1_000_000;
    let next = burst(&cluster, &topics, "fault-load-1", first).await;
    eprintln!(
        "broker restart: $SYS before {}",
        mosquitto_sys_line(cluster.mqtt_addr, "fault-sys-1")
            .await
            .expect("$SYS")
    );
    // The agents are still refusing and reporting that burst.
    let restarting = Instant::now();
    cluster.restart_broker().await.expect("broker restarts");
    let down_for = restarting.elapsed();
    let last = burst(&cluster, &topics, "fault-load-2", next).await;
    for id in AGENTS {
        cluster.wait_node_online(id).await;
    }

    // Events: sent (the agents' own logs), at the broker, at the controller.
    let tallies = wait_for(
        "every event the agents sent at the broker's subscriber and the controller",
        Duration::from_secs(120),
        || async {
            let mut sent = Tally::default();
            for agent in &cluster.agents {
                for generation in log_generations(&agent.log_text(), "Rejected desired state.") {
                    sent.sent.insert((agent.id.clone(), generation));
                }
            }
            let mut at_broker = sent.clone();
            for key in tapped_events(&tap) {
                at_broker.receive(key);
            }
            let mut at_controller = sent.clone();
            for key in controller_events(&api).await? {
                at_controller.receive(key);
            }
            let complete = sent.sent.len() as u64 == last - first
                && at_broker.lost().is_empty()
                && at_controller.lost().is_empty();
            if complete {
                Ok((at_broker, at_controller))
            } else {
                Err(format!(
                    "{}; {}",
                    at_broker.summary("at the broker"),
                    at_controller.summary("at the controller")
                ))
            }
        },
    )
    .await;
    let (events_broker, events_controller) = tallies;

    // Telemetry: the agents stop (SIGTERM) and their outboxes are read.
    let mut telemetry = Vec::new();
    let region = RegionId::new("region-a").expect("region");
    for agent in &mut cluster.agents {
        agent.stop();
        let topic = topics.telemetry(&region, &AgentId::new(&agent.id).expect("id"));
        let outbox = read_outbox(&agent.data_dir).expect("outbox");
        let sent = outbox.telemetry_tally(&topic).expect("outbox telemetry");
        telemetry.push((agent.id.clone(), topic, outbox.dropped, sent));
    }
    let mut lines = Vec::new();
    for (id, topic, dropped, sent) in &telemetry {
        let at_broker = wait_for(
            &format!("{id}'s telemetry at the broker's subscriber"),
            Duration::from_secs(30),
            || async {
                let mut tally = sent.clone();
                for seq in telemetry_seqs(&tap.messages(), topic).map_err(|e| e.to_string())? {
                    tally.receive(seq);
                }
                if tally.lost().is_empty() {
                    Ok(tally)
                } else {
                    Err(tally.summary("at the broker"))
                }
            },
        )
        .await;
        let mut at_controller = sent.clone();
        for seq in controller_telemetry_seqs(&api, id)
            .await
            .expect("telemetry")
        {
            at_controller.receive(seq);
        }
        lines.push(format!(
            "{id} outbox dropped {dropped}; {}; {}",
            at_broker.summary("telemetry at the broker"),
            at_controller.summary("telemetry at the controller")
        ));
        assert_eq!(*dropped, 0, "{id}: nothing dropped within the quota");
        assert!(at_controller.lost().is_empty(), "{}", lines.join("\n"));
        assert!(at_broker.unexpected().is_empty() && at_controller.unexpected().is_empty());
    }

    eprintln!(
        "broker restart: down and back in {down_for:?}; $SYS after {}",
        mosquitto_sys_line(cluster.mqtt_addr, "fault-sys-2")
            .await
            .expect("$SYS")
    );
    eprintln!(
        "broker restart: {}",
        events_broker.summary("refusal events at the broker")
    );
    eprintln!(
        "broker restart: {}",
        events_controller.summary("refusal events at the controller")
    );
    for line in &lines {
        eprintln!("broker restart: {line}");
    }
    assert!(events_broker.unexpected().is_empty() && events_controller.unexpected().is_empty());
    // QoS 1 may repeat what was in flight at the restart: at most one
    // outbox window (32) per agent.
    let window = 32 * AGENTS.len() as u32;
    assert!(events_broker.duplicated() <= window);
}
