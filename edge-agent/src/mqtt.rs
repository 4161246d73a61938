//! The MQTT adapter: the only module that knows rumqttc.
//!
//! One task drives the event loop. It never awaits a channel or
//! `client.publish()` (rumqttc deadlocks when the polling task does); it uses
//! `try_*` calls and hands received desired states on through a `watch`
//! channel, where only the latest one matters. A second task publishes
//! Status and Heartbeat envelopes as the agent asks for them (whether a
//! heartbeat is due is the heartbeat task's rule, [`crate::tasks::heartbeat`]).
//!
//! On every ConnAck the agent subscribes to its desired topic again (the
//! broker may have lost the session) and publishes an online Presence and a
//! full Status, which also makes up for anything dropped while offline.
//!
//! Status changes, telemetry and other reports go through the disk [`Outbox`]: the
//! publishing task hands at most `OUTBOX_WINDOW` entries to rumqttc and an
//! entry leaves the outbox only when the broker's PUBACK for its packet
//! arrives. rumqttc reports packet ids only in events, so every publish is
//! tagged in the order it is queued (`Link`) and the tags are matched to
//! `Outgoing::Publish(pkid)` events, which come in the same order. When the
//! connection drops, rumqttc's own retransmission queue is emptied of
//! publishes and the outbox resends everything unacknowledged from its
//! oldest entry after the next ConnAck, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use ring::rand::SecureRandom as _;
use rumqttc::{
    AsyncClient, ClientError, Event, EventLoop, LastWill, MqttOptions, Outgoing as MqttOutgoing,
    Packet, QoS, Request, TlsConfiguration, Transport,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use verge_shared::{Topics, limits};

use crate::config::BrokerAddr;
use crate::outbox::Outbox;
use crate::report::Signer;

/// The first reconnect delay (before jitter); doubled after each failure.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// The longest reconnect delay (before jitter). With the jitter (½ to 1½
/// of it), every agent is back within 15 s of a broker's return, well
/// inside the 30 s a returning controller (whose embedded broker went away
/// with it) gives nodes to answer its call to announce (docs/protocol.md,
/// "Calls to announce").
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long the goodbye (offline Presence, DISCONNECT) may take at shutdown.
const GOODBYE_DEADLINE: Duration = Duration::from_secs(3);
/// Requests queued towards the event loop; more are dropped, not awaited.
const REQUEST_CAPACITY: usize = 64;
/// Most outbox messages handed to rumqttc and not yet acknowledged; well
/// below [`REQUEST_CAPACITY`] and rumqttc's in-flight limit (100).
const OUTBOX_WINDOW: usize = 32;

/// What the agent asks the adapter to publish; the envelope is built at
/// publish time so it is always current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    Heartbeat,
    /// A signed answer to a log request (QoS 1, not kept in the outbox: a
    /// lost answer makes the operator's request time out, nothing more).
    LogResponse(Vec<u8>),
    /// The answer to the controller's call to announce: a presence, a
    /// status and a heartbeat, as on connecting.
    Announce,
}

/// Connection settings taken from the agent configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub broker: BrokerAddr,
    pub topics: Topics,
    pub keep_alive: Duration,
    /// Told when a Status from the outbox is handed to rumqttc (the
    /// heartbeat task skips a heartbeat after a recent Status).
    pub status_sent_tx: watch::Sender<Option<Instant>>,
    /// Where received log requests go (bounded; more are dropped).
    pub log_request_tx: mpsc::Sender<Bytes>,
    /// Where the controller's calls to announce go (only the latest matters).
    pub announce_tx: watch::Sender<Option<Bytes>>,
    /// Where received probe plans go (retained on `agents/{id}/probes`;
    /// only the latest matters).
    pub probe_plan_tx: Arc<watch::Sender<Option<Bytes>>>,
    /// Told when a connection attempt fails, so that start-up does not wait
    /// for a desired state from a broker it cannot reach.
    pub unreachable: Arc<Notify>,
    /// TLS with the client certificate (`mqtts://`); its resolver presents
    /// the current certificate at every handshake.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Runs the MQTT connection until `stop`, then says goodbye: an explicit
/// offline Presence (a clean DISCONNECT suppresses the Last Will) and a
/// DISCONNECT, within a deadline.
pub async fn run(
    settings: Settings,
    signer: Arc<Signer>,
    delivery_tx: watch::Sender<Option<Bytes>>,
    outgoing_rx: mpsc::UnboundedReceiver<Outgoing>,
    outbox: Arc<Outbox>,
    stop: CancellationToken,
) {
    let agent = signer.agent().clone();
    let topics = OwnTopics {
        desired: settings.topics.desired(&agent),
        presence: settings.topics.presence(&agent),
        status: settings.topics.status(&agent),
        heartbeat: settings.topics.heartbeat(&agent),
        log_request: settings.topics.log_request(&agent),
        log_response: settings.topics.log_response(&agent),
        announce: settings.topics.announce(),
        probes: settings
            .topics
            .agent(&agent, verge_shared::topic::Channel::Probes),
    };
    let mut options = MqttOptions::new(
        agent.as_str(),
        settings.broker.host.clone(),
        settings.broker.port,
    );
    options
        .set_clean_session(false)
        .set_keep_alive(settings.keep_alive)
        .set_max_packet_size(limits::MAX_MQTT_PACKET_BYTES, limits::MAX_MQTT_PACKET_BYTES)
        .set_request_channel_capacity(REQUEST_CAPACITY);
    if let Some(tls) = &settings.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let topics = Arc::new(topics);
    let link = Arc::new(Link::new(client.clone(), settings.status_sent_tx.clone()));
    let publisher = tokio::spawn(publish_loop(
        link.clone(),
        signer.clone(),
        topics.clone(),
        outgoing_rx,
        outbox.clone(),
        stop.clone(),
    ));

    let mut backoff = BACKOFF_INITIAL;
    let rng = ring::rand::SystemRandom::new();
    // The Last Will is signed afresh before every connection attempt.
    arm_last_will(&mut eventloop, &signer, &topics);
    loop {
        let event = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                info!(agent = %agent, session_present = ack.session_present, "Connected to the broker.");
                backoff = BACKOFF_INITIAL;
                link.connected(outbox.first_key());
                let results = [
                    client.try_subscribe(topics.desired.clone(), QoS::AtLeastOnce),
                    client.try_subscribe(topics.log_request.clone(), QoS::AtLeastOnce),
                    client.try_subscribe(topics.probes.clone(), QoS::AtLeastOnce),
                    client.try_subscribe(topics.announce.clone(), QoS::AtLeastOnce),
                    publish_presence_and_status(&link, &signer, &topics),
                ];
                for e in results.into_iter().filter_map(Result::err) {
                    warn!(agent = %agent, error = %e, "Cannot queue a request after connecting.");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if publish.topic == topics.desired {
                    debug!(agent = %agent, n_bytes = publish.payload.len(), "Received a desired state.");
                    delivery_tx.send_replace(Some(publish.payload));
                } else if publish.topic == topics.probes {
                    debug!(agent = %agent, n_bytes = publish.payload.len(), "Received a probe plan.");
                    settings.probe_plan_tx.send_replace(Some(publish.payload));
                } else if publish.topic == topics.announce {
                    debug!(agent = %agent, "Received a call to announce.");
                    settings.announce_tx.send_replace(Some(publish.payload));
                } else if publish.topic == topics.log_request {
                    if settings.log_request_tx.try_send(publish.payload).is_err() {
                        warn!(agent = %agent, "Dropped a log request: too many are waiting.");
                    }
                } else {
                    debug!(agent = %agent, topic = %publish.topic, "Ignored a message on an unexpected topic.");
                }
            }
            Ok(Event::Outgoing(MqttOutgoing::Publish(pkid))) => link.sent(pkid),
            Ok(Event::Outgoing(MqttOutgoing::AwaitAck(_))) => link.held_back(),
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(key) = link.acknowledged(ack.pkid)
                    && let Err(e) = outbox.ack(key)
                {
                    warn!(agent = %agent, key, error = %e, "Cannot remove an acknowledged message from the outbox; it will be sent again.");
                }
            }
            Ok(_) => {}
            Err(e) => {
                settings.unreachable.notify_one();
                link.disconnected(&mut eventloop);
                let delay = jitter(&rng, backoff);
                warn!(agent = %agent, error = %e, retry_in = ?delay, "MQTT connection lost; reconnecting.");
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                arm_last_will(&mut eventloop, &signer, &topics);
            }
        }
    }
    let _ = publisher.await;
    goodbye(&link, &mut eventloop, &signer, &topics).await;
}

/// What one queued publish is, so its PUBACK can be traced to the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    Other,
    Outbox(u64),
}

#[derive(Debug, Default)]
struct Flight {
    connected: bool,
    /// Publishes handed to rumqttc and not yet sent, in queue order.
    queued: VecDeque<Tag>,
    /// A publish rumqttc holds back on a packet-id collision.
    held_back: Option<Tag>,
    /// Sent outbox entries waiting for their PUBACK, by packet id.
    awaiting: HashMap<u16, u64>,
    /// The next outbox key to hand over while connected.
    cursor: u64,
}

impl Flight {
    fn outbox_in_flight(&self) -> usize {
        let tagged = self
            .queued
            .iter()
            .chain(&self.held_back)
            .filter(|t| matches!(t, Tag::Outbox(_)))
            .count();
        tagged + self.awaiting.len()
    }
}

/// The client plus the tags of everything it was asked to publish. Every
/// publish goes through [`Link::publish`] or [`Link::send_outbox`], which
/// queue the request and its tag under one lock, so tags stay in request order.
struct Link {
    client: AsyncClient,
    flight: Mutex<Flight>,
    /// Wakes the publishing task: connected, or room in the window.
    wake: Notify,
    /// When a status was last handed to rumqttc.
    status_sent_tx: watch::Sender<Option<Instant>>,
}

impl Link {
    fn new(client: AsyncClient, status_sent_tx: watch::Sender<Option<Instant>>) -> Self {
        Self {
            client,
            flight: Mutex::new(Flight::default()),
            wake: Notify::new(),
            status_sent_tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Flight> {
        self.flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), ClientError> {
        let mut f = self.lock();
        self.client.try_publish(topic, qos, retain, payload)?;
        f.queued.push_back(Tag::Other);
        Ok(())
    }

    /// Hands outbox entries from the cursor to rumqttc, up to the window.
    fn send_outbox(
        &self,
        outbox: &Outbox,
        status_topic: &str,
    ) -> Result<(), crate::outbox::OutboxError> {
        let mut f = self.lock();
        let room = OUTBOX_WINDOW.saturating_sub(f.outbox_in_flight());
        if !f.connected || room == 0 {
            return Ok(());
        }
        for entry in outbox.entries_from(f.cursor, room)? {
            let is_status = entry.topic == status_topic;
            let queued = self.client.try_publish(
                entry.topic,
                QoS::AtLeastOnce,
                false,
                entry.payload.to_vec(),
            );
            if queued.is_err() {
                // The request queue is full; the next wake-up retries.
                break;
            }
            f.queued.push_back(Tag::Outbox(entry.key));
            f.cursor = entry.key + 1;
            if is_status {
                self.status_sent_tx.send_replace(Some(Instant::now()));
            }
        }
        Ok(())
    }

    /// After ConnAck: resend the outbox from its oldest entry.
    fn connected(&self, first_key: u64) {
        let mut f = self.lock();
        f.connected = true;
        f.cursor = first_key;
        drop(f);
        self.wake.notify_one();
    }

    /// rumqttc wrote a publish with `pkid` (0 for QoS 0).
    fn sent(&self, pkid: u16) {
        let mut f = self.lock();
        let tag = f.held_back.take().or_else(|| f.queued.pop_front());
        if let (Some(Tag::Outbox(key)), true) = (tag, pkid != 0) {
            f.awaiting.insert(pkid, key);
        }
    }

    /// rumqttc holds the next publish back until a packet id is free.
    fn held_back(&self) {
        let mut f = self.lock();
        f.held_back = f.queued.pop_front();
    }

    /// The outbox key whose PUBACK this is, if it was an outbox entry.
    fn acknowledged(&self, pkid: u16) -> Option<u64> {
        let key = self.lock().awaiting.remove(&pkid);
        self.wake.notify_one();
        key
    }

    /// The connection dropped: forget what was in flight, and take the
    /// publishes out of rumqttc's resend queue (and their not yet reported
    /// events) so the outbox alone decides what is sent again, in order.
    fn disconnected(&self, eventloop: &mut EventLoop) {
        let mut f = self.lock();
        let unreported = eventloop
            .state
            .events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::Outgoing(MqttOutgoing::Publish(_) | MqttOutgoing::AwaitAck(_))
                )
            })
            .count();
        let unsent = eventloop
            .pending
            .iter()
            .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0))
            .count();
        for _ in 0..unreported + unsent {
            f.queued.pop_front();
        }
        eventloop.state.events.retain(|e| {
            !matches!(
                e,
                Event::Outgoing(MqttOutgoing::Publish(_) | MqttOutgoing::AwaitAck(_))
            )
        });
        eventloop
            .pending
            .retain(|r| !matches!(r, Request::Publish(_)));
        eventloop.state.collision = None;
        f.held_back = None;
        f.awaiting.clear();
        f.connected = false;
    }
}

/// The agent's own topics, built once.
struct OwnTopics {
    desired: String,
    presence: String,
    status: String,
    heartbeat: String,
    log_request: String,
    log_response: String,
    probes: String,
    announce: String,
}

/// Queues an online Presence (retained) and a full Status: what the agent
/// says on every connect and when the controller calls it to announce.
fn publish_presence_and_status(
    link: &Link,
    signer: &Signer,
    topics: &OwnTopics,
) -> Result<(), ClientError> {
    link.publish(
        topics.presence.clone(),
        QoS::AtLeastOnce,
        true,
        signer.presence(true),
    )?;
    link.publish(
        topics.status.clone(),
        QoS::AtLeastOnce,
        false,
        signer.status(),
    )
}

fn arm_last_will(eventloop: &mut EventLoop, signer: &Signer, topics: &OwnTopics) {
    eventloop.mqtt_options.set_last_will(LastWill::new(
        topics.presence.clone(),
        signer.presence(false),
        QoS::AtLeastOnce,
        true,
    ));
}

/// `base` scaled by a random factor in [0.5, 1.0), so a fleet that lost the
/// same broker does not reconnect in lockstep.
pub fn jitter(rng: &ring::rand::SystemRandom, base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let fraction = if rng.fill(&mut byte).is_ok() {
        f64::from(byte[0]) / 512.0
    } else {
        0.25
    };
    base.mul_f64(0.5 + fraction)
}

async fn publish_loop(
    link: Arc<Link>,
    signer: Arc<Signer>,
    topics: Arc<OwnTopics>,
    mut outgoing_rx: mpsc::UnboundedReceiver<Outgoing>,
    outbox: Arc<Outbox>,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = link.wake.notified() => None,
            () = outbox.pushed() => None,
            next = outgoing_rx.recv() => match next {
                Some(next) => Some(next),
                None => break,
            },
        };
        let Some(next) = next else {
            if let Err(e) = link.send_outbox(&outbox, &topics.status) {
                warn!(error = %e, "Cannot read the outbox; its messages wait for the next attempt.");
            }
            continue;
        };
        // try_publish: while offline the request queue fills and further
        // heartbeats are dropped; they only say "alive now" anyway.
        let (kind, result) = match next {
            Outgoing::Heartbeat => (
                "heartbeat",
                link.publish(
                    topics.heartbeat.clone(),
                    QoS::AtMostOnce,
                    false,
                    signer.heartbeat(),
                ),
            ),
            Outgoing::LogResponse(payload) => (
                "log response",
                link.publish(
                    topics.log_response.clone(),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                ),
            ),
            Outgoing::Announce => (
                "announcement",
                publish_presence_and_status(&link, &signer, &topics).and_then(|()| {
                    link.publish(
                        topics.heartbeat.clone(),
                        QoS::AtMostOnce,
                        false,
                        signer.heartbeat(),
                    )
                }),
            ),
        };
        if let Err(e) = result {
            debug!(kind, error = %e, "Dropped an outgoing message while the broker is unreachable.");
        }
    }
}

async fn goodbye(link: &Link, eventloop: &mut EventLoop, signer: &Signer, topics: &OwnTopics) {
    let queued = link
        .publish(
            topics.presence.clone(),
            QoS::AtLeastOnce,
            true,
            signer.presence(false),
        )
        .and_then(|()| link.client.try_disconnect());
    if let Err(e) = queued {
        warn!(error = %e, "Cannot queue the goodbye; the Last Will reports the agent offline.");
        return;
    }
    let drained = tokio::time::timeout(GOODBYE_DEADLINE, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(MqttOutgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    match drained {
        Ok(()) => info!("Disconnected from the broker."),
        Err(_) => warn!("The broker did not take the goodbye in time."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_full_backoff() {
        let rng = ring::rand::SystemRandom::new();
        for _ in 0..100 {
            let d = jitter(&rng, Duration::from_secs(2));
            assert!(
                d >= Duration::from_secs(1) && d < Duration::from_secs(2),
                "{d:?}"
            );
        }
    }
}
