//! The controller's MQTT client: the only module that knows rumqttc.
//!
//! One task polls the event loop and never awaits anything else (rumqttc
//! deadlocks when the polling task awaits a publish); incoming messages are
//! handed off with `try_send`, publishes run in a separate task.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use verge_shared::limits;
use verge_shared::topic::Channel;

use crate::app::{App, Incoming, Outgoing};
use crate::config::BrokerUrl;

/// The controller's MQTT client id.
pub const CLIENT_ID: &str = "verge-controller";

/// Received messages waiting for the ingest task; beyond this they are dropped
/// (agents resend status and heartbeats, presence is retained), and
/// telemetry already beyond half of it.
const INBOX_CAPACITY: usize = 1024;

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The client's three tasks, not yet started: polling the event loop,
/// publishing the outbox, and handing received messages to the app. Each
/// ends when `cancel` fires; `crate::tasks` starts them.
pub struct ClientTasks {
    pub poll: BoxFuture<'static, ()>,
    pub publish: BoxFuture<'static, ()>,
    pub ingest: BoxFuture<'static, ()>,
}

/// Prepares a client of `url` that publishes what arrives on `outbox_rx`
/// and hands what it receives to `app`, until `cancel`.
pub fn client(
    url: &BrokerUrl,
    app: Arc<App>,
    outbox_rx: mpsc::UnboundedReceiver<Outgoing>,
    cancel: &CancellationToken,
) -> ClientTasks {
    let mut options = MqttOptions::new(CLIENT_ID, url.host.clone(), url.port);
    options
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(15))
        .set_max_packet_size(limits::MAX_MQTT_PACKET_BYTES, limits::MAX_MQTT_PACKET_BYTES);
    let (client, eventloop) = AsyncClient::new(options, 256);
    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_CAPACITY);
    let topics = app.settings().topics.clone();
    ClientTasks {
        poll: Box::pin(poll(
            eventloop,
            client.clone(),
            Arc::clone(&app),
            inbox_tx,
            cancel.clone(),
        )),
        publish: Box::pin(publish(client, topics, outbox_rx, cancel.clone())),
        ingest: Box::pin(ingest(app, inbox_rx, cancel.clone())),
    }
}

async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    app: Arc<App>,
    inbox_tx: mpsc::Sender<Incoming>,
    cancel: CancellationToken,
) {
    let topics = app.settings().topics.clone();
    let mut backoff = MIN_BACKOFF;
    loop {
        let event = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = MIN_BACKOFF;
                info!("Connected to the MQTT broker.");
                // A clean session forgets subscriptions: subscribe on every ConnAck.
                for channel in [
                    Channel::Presence,
                    Channel::Status,
                    Channel::Heartbeat,
                    Channel::Latency,
                    Channel::LogResponse,
                ] {
                    if let Err(e) =
                        client.try_subscribe(topics.all_agents(channel), QoS::AtLeastOnce)
                    {
                        warn!(error = %e, "Could not queue a subscription.");
                    }
                }
                // Telemetry is informational and comes again next interval:
                // QoS 0 spares an acknowledgement per message. Not read at
                // all when no history is kept.
                // Security events, signed by each node: always read.
                if let Err(e) = client.try_subscribe(topics.all_events(), QoS::AtLeastOnce) {
                    warn!(error = %e, "Could not queue a subscription.");
                }
                if app.settings().nodes.telemetry_history > 0
                    && let Err(e) = client.try_subscribe(topics.all_telemetry(), QoS::AtMostOnce)
                {
                    warn!(error = %e, "Could not queue a subscription.");
                }
                app.request_republish();
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                // Telemetry may fill only half of the queue, so that a burst
                // of it (every agent's outbox after an outage) never crowds
                // out a status or a presence.
                if inbox_tx.capacity() < INBOX_CAPACITY / 2
                    && topics.telemetry_route(&publish.topic).is_some()
                {
                    debug!(topic = %publish.topic, "The ingest queue is half full; dropped telemetry.");
                    continue;
                }
                let message = Incoming {
                    topic: publish.topic,
                    payload: publish.payload,
                };
                if inbox_tx.try_send(message).is_err() {
                    warn!("The ingest queue is full; dropped an agent message.");
                }
            }
            Ok(other) => debug!(event = ?other, "MQTT event."),
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "The MQTT connection failed; reconnecting.");
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    // Best effort: the broker notices a vanished client anyway.
    let _ = client.try_disconnect();
}

async fn publish(
    client: AsyncClient,
    topics: verge_shared::Topics,
    mut outbox_rx: mpsc::UnboundedReceiver<Outgoing>,
    cancel: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            message = outbox_rx.recv() => match message {
                Some(message) => message,
                None => break,
            },
        };
        // Retained so that an agent that connects later gets its document;
        // except log requests, which a reconnecting agent must not answer
        // long after the operator gave up.
        // While disconnected this waits for room in rumqttc's request queue;
        // that is fine here because this task is not the one polling.
        let retain = topics
            .route(&message.topic)
            .is_none_or(|r| r.channel != Channel::LogRequest);
        let sent = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            sent = client.publish(message.topic, QoS::AtLeastOnce, retain, message.payload) => sent,
        };
        if let Err(e) = sent {
            warn!(error = %e, "Could not queue a desired state; it is republished on the next interval.");
        }
    }
}

async fn ingest(app: Arc<App>, mut inbox_rx: mpsc::Receiver<Incoming>, cancel: CancellationToken) {
    loop {
        let message = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            message = inbox_rx.recv() => match message {
                Some(message) => message,
                None => break,
            },
        };
        app.ingest(&message.topic, &message.payload, app.now());
    }
}
