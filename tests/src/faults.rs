//! Counting for fault scenarios: what a sender sent, what a subscriber at
//! the broker saw and what the receiver got, compared into lost, duplicated
//! and unexpected messages; a subscriber with a persistent session that
//! rides out broker restarts; Mosquitto's own `$SYS` counters.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use verge_shared::telemetry::Telemetry;

use crate::mqtt::TestClient;

/// Messages identified by a key (a sequence number, an (agent, generation)
/// pair): those sent, those still waiting at the sender (not lost yet), and
/// how often each was received.
#[derive(Clone, Debug)]
pub struct Tally<K: Ord> {
    pub sent: BTreeSet<K>,
    pub pending: BTreeSet<K>,
    pub received: BTreeMap<K, u32>,
}

impl<K: Ord> Default for Tally<K> {
    fn default() -> Self {
        Self {
            sent: BTreeSet::new(),
            pending: BTreeSet::new(),
            received: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone + fmt::Debug> Tally<K> {
    /// Records one arrival of `key`.
    pub fn receive(&mut self, key: K) {
        *self.received.entry(key).or_default() += 1;
    }

    /// Sent, neither received nor still waiting at the sender.
    pub fn lost(&self) -> Vec<K> {
        self.sent
            .iter()
            .filter(|k| !self.received.contains_key(k) && !self.pending.contains(k))
            .cloned()
            .collect()
    }

    /// Every arrival after a key's first.
    pub fn duplicated(&self) -> u32 {
        self.received.values().map(|n| n.saturating_sub(1)).sum()
    }

    /// Received but never sent.
    pub fn unexpected(&self) -> Vec<K> {
        self.received
            .keys()
            .filter(|k| !self.sent.contains(k))
            .cloned()
            .collect()
    }

    /// One line for the test's output: `what: sent … received … lost …`.
    pub fn summary(&self, what: &str) -> String {
        let lost = self.lost();
        let unexpected = self.unexpected();
        format!(
            "{what}: sent {} · received {} distinct ({} in all) · still queued {} · \
             lost {} {lost:?} · duplicated {} · unexpected {} {unexpected:?}",
            self.sent.len(),
            self.received.len(),
            self.received.values().sum::<u32>(),
            self.pending.len(),
            lost.len(),
            self.duplicated(),
            unexpected.len(),
        )
    }
}

/// A subscriber at the broker with a persistent session (clean session
/// off, QoS 1) that reconnects after every error, so a broker that keeps
/// sessions across a restart delivers what it queued meanwhile. Counts
/// every message it receives; stops when dropped.
pub struct Tap {
    messages: Arc<Mutex<Vec<crate::mqtt::Message>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    /// Connects as `client_id`, subscribes to `filters` and waits for the
    /// subscription to be acknowledged.
    pub async fn start(addr: SocketAddr, client_id: &str, filters: &[&str]) -> Result<Tap> {
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(5));
        options.set_clean_session(false);
        let max = verge_shared::limits::MAX_MQTT_PACKET_BYTES;
        options.set_max_packet_size(max, max);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        for filter in filters {
            client.subscribe(*filter, QoS::AtLeastOnce).await?;
        }
        let messages = Arc::new(Mutex::new(Vec::new()));
        let kept = messages.clone();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            // Ends only when the tap is dropped (the task is aborted); an
            // error waits before the event loop reconnects.
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        kept.lock().expect("tap lock").push(crate::mqtt::Message {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), subscribed_rx)
            .await
            .context("no SUBACK for the tap within 30 s")?
            .context("the tap's MQTT task ended")?;
        Ok(Tap { messages, task })
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<crate::mqtt::Message> {
        self.messages.lock().expect("tap lock").clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Mosquitto's own counters (`$SYS/broker/...`, relative to that prefix:
/// `publish/messages/received`, `messages/stored`, `clients/connected`, …),
/// read from the retained `$SYS` messages. They count since the broker's
/// last start and over every client.
pub async fn mosquitto_sys(addr: SocketAddr, client_id: &str) -> Result<BTreeMap<String, String>> {
    let mut client = TestClient::connect(addr, client_id).await?;
    client.subscribe("$SYS/broker/#").await?;
    let mut values = BTreeMap::new();
    // Mosquitto sends the whole retained set at once: read until it pauses.
    while let Ok(msg) = client.next(Duration::from_secs(2)).await {
        if let Some(name) = msg.topic.strip_prefix("$SYS/broker/") {
            values.insert(
                name.to_owned(),
                String::from_utf8_lossy(&msg.payload).into_owned(),
            );
        }
    }
    Ok(values)
}

/// The `$SYS` counters a fault scenario prints.
pub const SYS_COUNTERS: [&str; 6] = [
    "publish/messages/received",
    "publish/messages/sent",
    "publish/messages/dropped",
    "messages/stored",
    "clients/connected",
    "store/messages/count",
];

/// [`mosquitto_sys`] as one line of the counters in [`SYS_COUNTERS`].
pub async fn mosquitto_sys_line(addr: SocketAddr, client_id: &str) -> Result<String> {
    let values = mosquitto_sys(addr, client_id).await?;
    Ok(SYS_COUNTERS
        .iter()
        .map(|name| {
            format!(
                "{name}={}",
                values.get(*name).map(String::as_str).unwrap_or("-")
            )
        })
        .collect::<Vec<_>>()
        .join(" "))
}

/// The generation on every line of an agent's `log` that contains
/// `message` (`Accepted desired state.`, `Rejected desired state.`): the
/// first number after `generation=`.
pub fn log_generations(log: &str, message: &str) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains(message))
        .filter_map(|line| {
            let rest = &line[line.find("generation=")? + "generation=".len()..];
            let digits = rest.trim_start_matches(|c: char| !c.is_ascii_digit());
            let end = digits
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(digits.len());
            digits[..end].parse().ok()
        })
        .collect()
}

/// What a stopped agent's outbox holds: the last sequence number it gave
/// out, how many entries its quota dropped, and the entries still queued.
pub struct OutboxContents {
    pub last_seq: u64,
    pub dropped: u64,
    pub queued: Vec<edge_agent::outbox::Entry>,
}

/// Opens the outbox in a stopped agent's data directory.
pub fn read_outbox(data_dir: &Path) -> Result<OutboxContents> {
    let state = data_dir.join("state");
    let db = sled::Config::new()
        .path(&state)
        .open()
        .with_context(|| format!("open the agent state at {}", state.display()))?;
    let outbox = edge_agent::outbox::Outbox::open(&db, state, u64::MAX)?;
    let queued = outbox.entries_from(outbox.first_key(), usize::MAX)?;
    Ok(OutboxContents {
        last_seq: outbox.last_seq(),
        dropped: outbox.metrics().dropped,
        queued,
    })
}

impl OutboxContents {
    /// The telemetry an agent produced on `topic` (every numbered message
    /// is a telemetry sample: its `seq` is the outbox's sequence number),
    /// with the samples still queued as pending.
    pub fn telemetry_tally(&self, topic: &str) -> Result<Tally<u64>> {
        let mut tally = Tally::default();
        tally.sent.extend(1..=self.last_seq);
        for entry in self.queued.iter().filter(|e| e.topic == topic) {
            let sample: Telemetry = serde_json::from_slice(&entry.payload)
                .with_context(|| format!("queued telemetry on {topic}"))?;
            tally.pending.insert(sample.seq);
        }
        Ok(tally)
    }
}

/// The telemetry sequence numbers among `messages` on `topic`.
pub fn telemetry_seqs(messages: &[crate::mqtt::Message], topic: &str) -> Result<Vec<u64>> {
    messages
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| {
            serde_json::from_slice::<Telemetry>(&m.payload)
                .map(|t| t.seq)
                .with_context(|| format!("telemetry on {topic}"))
        })
        .collect()
}

/// The telemetry sequence numbers the controller keeps for node `id`
/// (`GET /api/v1/nodes/{id}/telemetry`).
pub async fn controller_telemetry_seqs(api: &crate::Api, id: &str) -> Result<Vec<u64>> {
    let page = api.get(&format!("/api/v1/nodes/{id}/telemetry")).await?;
    let samples = page["samples"]
        .as_array()
        .with_context(|| format!("no samples in {page}"))?;
    samples
        .iter()
        .map(|s| s["seq"].as_u64().with_context(|| format!("no seq in {s}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_names_what_was_lost_duplicated_and_unexpected() {
        let mut t = Tally::default();
        t.sent.extend([1, 2, 3, 4]);
        t.pending.insert(4);
        for k in [1, 1, 3, 9] {
            t.receive(k);
        }
        assert_eq!(t.lost(), vec![2]);
        assert_eq!(t.duplicated(), 1);
        assert_eq!(t.unexpected(), vec![9]);
        assert!(t.summary("x").contains("lost 1 [2]"), "{}", t.summary("x"));
    }

    #[test]
    fn generations_are_read_from_log_lines() {
        let log = "INFO Accepted desired state. agent=edge-a generation=7\n\
                   WARN Rejected desired state. agent=edge-a reason=WrongAgent \
                   generation=Some(Generation(1000003)) detail=x\n\
                   INFO Connected to the broker.\n";
        assert_eq!(log_generations(log, "Accepted desired state."), vec![7]);
        assert_eq!(
            log_generations(log, "Rejected desired state."),
            vec![1000003]
        );
    }
}
