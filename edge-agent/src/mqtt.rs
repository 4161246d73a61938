//! The MQTT adapter: the only module that knows rumqttc.
//!
//! One task drives the event loop. It never awaits a channel or
//! `client.publish()` (rumqttc deadlocks when the polling task does); it uses
//! `try_*` calls and hands received desired states on through a `watch`
//! channel, where only the latest one matters. A second task publishes
//! Status and Heartbeat envelopes as the agent asks for them.
//!
//! On every ConnAck the agent subscribes to its desired topic again (the
//! broker may have lost the session) and publishes an online Presence and a
//! full Status, which also makes up for anything dropped while offline.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ring::rand::SecureRandom as _;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing as MqttOutgoing, Packet, QoS,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use verge_shared::{Topics, limits};

use crate::config::BrokerAddr;
use crate::report::Reporter;

const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long the goodbye (offline Presence, DISCONNECT) may take at shutdown.
const GOODBYE_DEADLINE: Duration = Duration::from_secs(3);
/// Requests queued towards the event loop; more are dropped, not awaited.
const REQUEST_CAPACITY: usize = 64;

/// What the agent asks the adapter to publish; the envelope is built at
/// publish time so it is always current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outgoing {
    Status,
    Heartbeat,
}

/// Connection settings taken from the agent configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub broker: BrokerAddr,
    pub topics: Topics,
    pub keep_alive: Duration,
}

/// Runs the MQTT connection until `stop`, then says goodbye: an explicit
/// offline Presence (a clean DISCONNECT suppresses the Last Will) and a
/// DISCONNECT, within a deadline.
pub async fn run(
    settings: Settings,
    reporter: Arc<Reporter>,
    desired_tx: watch::Sender<Option<Bytes>>,
    outbox_rx: mpsc::UnboundedReceiver<Outgoing>,
    stop: CancellationToken,
) {
    let agent = reporter.agent().clone();
    let topics = OwnTopics {
        desired: settings.topics.desired(&agent),
        presence: settings.topics.presence(&agent),
        status: settings.topics.status(&agent),
        heartbeat: settings.topics.heartbeat(&agent),
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
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let topics = Arc::new(topics);
    let publisher = tokio::spawn(publish_loop(
        client.clone(),
        reporter.clone(),
        topics.clone(),
        outbox_rx,
        stop.clone(),
    ));

    let mut backoff = BACKOFF_INITIAL;
    let rng = ring::rand::SystemRandom::new();
    // The Last Will is signed afresh before every connection attempt.
    arm_last_will(&mut eventloop, &reporter, &topics);
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
                let results = [
                    client.try_subscribe(topics.desired.clone(), QoS::AtLeastOnce),
                    client.try_publish(
                        topics.presence.clone(),
                        QoS::AtLeastOnce,
                        true,
                        reporter.presence(true),
                    ),
                    client.try_publish(
                        topics.status.clone(),
                        QoS::AtLeastOnce,
                        false,
                        reporter.status(),
                    ),
                ];
                for e in results.into_iter().filter_map(Result::err) {
                    warn!(agent = %agent, error = %e, "Cannot queue a request after connecting.");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if publish.topic == topics.desired {
                    debug!(agent = %agent, n_bytes = publish.payload.len(), "Received a desired state.");
                    desired_tx.send_replace(Some(publish.payload));
                } else {
                    debug!(agent = %agent, topic = %publish.topic, "Ignored a message on an unexpected topic.");
                }
            }
            Ok(_) => {}
            Err(e) => {
                let delay = jitter(&rng, backoff);
                warn!(agent = %agent, error = %e, retry_in = ?delay, "MQTT connection lost; reconnecting.");
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                arm_last_will(&mut eventloop, &reporter, &topics);
            }
        }
    }
    let _ = publisher.await;
    goodbye(&client, &mut eventloop, &reporter, &topics).await;
}

/// The agent's own topics, built once.
struct OwnTopics {
    desired: String,
    presence: String,
    status: String,
    heartbeat: String,
}

fn arm_last_will(eventloop: &mut EventLoop, reporter: &Reporter, topics: &OwnTopics) {
    eventloop.mqtt_options.set_last_will(LastWill::new(
        topics.presence.clone(),
        reporter.presence(false),
        QoS::AtLeastOnce,
        true,
    ));
}

/// `base` scaled by a random factor in [0.5, 1.0), so a fleet that lost the
/// same broker does not reconnect in lockstep.
fn jitter(rng: &ring::rand::SystemRandom, base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let fraction = if rng.fill(&mut byte).is_ok() {
        f64::from(byte[0]) / 512.0
    } else {
        0.25
    };
    base.mul_f64(0.5 + fraction)
}

async fn publish_loop(
    client: AsyncClient,
    reporter: Arc<Reporter>,
    topics: Arc<OwnTopics>,
    mut outbox_rx: mpsc::UnboundedReceiver<Outgoing>,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            next = outbox_rx.recv() => next,
        };
        let Some(next) = next else { break };
        // try_publish: while offline the request queue fills and further
        // messages are dropped; the full Status sent on reconnect covers them.
        let result = match next {
            Outgoing::Status => client.try_publish(
                topics.status.clone(),
                QoS::AtLeastOnce,
                false,
                reporter.status(),
            ),
            Outgoing::Heartbeat => client.try_publish(
                topics.heartbeat.clone(),
                QoS::AtMostOnce,
                false,
                reporter.heartbeat(),
            ),
        };
        if let Err(e) = result {
            debug!(kind = ?next, error = %e, "Dropped an outgoing message while the broker is unreachable.");
        }
    }
}

async fn goodbye(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    reporter: &Reporter,
    topics: &OwnTopics,
) {
    let queued = client
        .try_publish(
            topics.presence.clone(),
            QoS::AtLeastOnce,
            true,
            reporter.presence(false),
        )
        .and_then(|()| client.try_disconnect());
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
