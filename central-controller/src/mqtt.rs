//! The controller's MQTT client: the only module that knows rumqttc.
//!
//! One task polls the event loop and never awaits anything else (rumqttc
//! deadlocks when the polling task awaits a publish); incoming messages are
//! handed off with `try_send`, publishes run in a separate task.
//!
//! An external broker may be reached over TLS (`mqtts://`, with the client
//! certificate of [`Access::tls`]) and with a login; a failed connection
//! (refused, a TLS error, a broker that went away) is retried with a
//! jittered, doubling backoff.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use ring::rand::SecureRandom as _;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
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

/// How the client gets into the broker beyond its address.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// TLS (`mqtts://`): verifies the broker, presents a client certificate.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub login: Option<Login>,
}

/// An MQTT user name and password.
#[derive(Clone)]
pub struct Login {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

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
    access: Access,
    app: Arc<App>,
    outbox_rx: mpsc::UnboundedReceiver<Outgoing>,
    cancel: &CancellationToken,
) -> ClientTasks {
    let mut options = MqttOptions::new(CLIENT_ID, url.host.clone(), url.port);
    options
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(15))
        .set_max_packet_size(limits::MAX_MQTT_PACKET_BYTES, limits::MAX_MQTT_PACKET_BYTES);
    if let Some(tls) = access.tls {
        // rumqttc verifies the certificate against `url.host` (a name or an
        // IP address, which the broker's certificate must list).
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    }
    if let Some(login) = access.login {
        options.set_credentials(login.username, login.password);
    }
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
    let rng = ring::rand::SystemRandom::new();
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
                app.broker_connected(app.now());
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
                // After the subscriptions, so that no answer is missed.
                app.ask_to_announce(app.now());
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                // Telemetry may fill only half of the queue, so that a burst
                // of it (every agent's outbox after an outage) never crowds
                // out a status or a presence.
                if inbox_tx.capacity() < INBOX_CAPACITY / 2
                    && topics.telemetry_route(&publish.topic).is_some()
                {
                    debug!(topic = %publish.topic, "The ingest queue is half full; dropped telemetry.");
                    app.count_dropped_before_ingest("telemetry_backlog");
                    continue;
                }
                let message = Incoming {
                    topic: publish.topic,
                    payload: publish.payload,
                };
                if inbox_tx.try_send(message).is_err() {
                    warn!("The ingest queue is full; dropped an agent message.");
                    app.count_dropped_before_ingest("queue_full");
                }
            }
            Ok(other) => debug!(event = ?other, "MQTT event."),
            Err(e) => {
                app.broker_disconnected(app.now());
                let delay = jitter(&rng, backoff);
                warn!(error = %e, retry_in = ?delay, "The MQTT connection failed; reconnecting.");
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    // Best effort: the broker notices a vanished client anyway.
    let _ = client.try_disconnect();
}

/// Between half and all of `backoff`, so that a restarted broker is not
/// met by every reconnect at the same instant.
fn jitter(rng: &ring::rand::SystemRandom, backoff: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let fraction = match rng.fill(&mut byte) {
        Ok(()) => f64::from(byte[0]) / 255.0,
        Err(_) => 1.0,
    };
    backoff.mul_f64(0.5 + fraction / 2.0)
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
        // The app says what is retained (so that an agent that connects
        // later gets its document), and log requests never are, whatever
        // it says: a reconnecting agent must not answer long after the
        // operator gave up.
        // While disconnected this waits for room in rumqttc's request queue;
        // that is fine here because this task is not the one polling.
        let retain = message.retain
            && topics
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
