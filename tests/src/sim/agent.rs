//! One simulated agent: a real MQTT session under its own node key that
//! behaves towards the controller as an agent does — signed presence on
//! every connect, a signed offline Last Will, heartbeats and telemetry at
//! its intervals, and every desired state put through the agent's own
//! intake decision (`edge_agent::intake`) and acknowledged with a signed
//! status carrying `applied_generation`. It runs no processes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;
use edge_agent::intake::{self, Decision};
use edge_agent::mqtt::{BACKOFF_INITIAL, BACKOFF_MAX, jitter};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use verge_shared::messages::{Rejection, Workload, bounded_message};
use verge_shared::telemetry::{TELEMETRY_SCHEMA_VERSION, Telemetry};
use verge_shared::topic::{Channel, Topics};
use verge_shared::trust::TrustBundle;
use verge_shared::{AgentId, Generation, RegionId, Timestamp, limits};

use super::tally::{Counters, Intervals};
use crate::node::{FakeNode, running};

/// Requests queued towards one session's event loop; more are counted as
/// dropped, never awaited (as the agent does).
const REQUEST_CAPACITY: usize = 16;
/// The agent's default MQTT keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the driver reads of one agent while it runs.
#[derive(Debug, Default)]
pub struct AgentState {
    /// The last accepted generation (0: none yet).
    pub applied: AtomicU64,
    /// When the last accepted generation was acknowledged (its status
    /// handed to the MQTT client).
    acked_at: Mutex<Option<Instant>>,
    /// Whether the session is up (between CONNACK and a connection error).
    pub connected: AtomicBool,
    /// Sessions established so far (CONNACKs).
    pub sessions: AtomicU64,
}

impl AgentState {
    /// When the last accepted generation was acknowledged.
    pub fn acked_at(&self) -> Option<Instant> {
        *self.acked_at.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One agent's session and what it has accepted.
pub(super) struct SimAgent {
    pub(super) node: FakeNode,
    pub(super) agent: AgentId,
    pub(super) region: RegionId,
    pub(super) trust: Arc<TrustBundle>,
    pub(super) state: Arc<AgentState>,
    pub(super) counters: Arc<Counters>,
    pub(super) intervals: Intervals,
    pub(super) broker: std::net::SocketAddr,
    /// The last accepted generation and what it runs (the intake context).
    pub(super) last: Option<Generation>,
    pub(super) running: Vec<Workload>,
    pub(super) last_rejection: Option<Rejection>,
    pub(super) started: Instant,
    pub(super) telemetry_seq: u64,
}

/// A fraction in [0, 1) from the system's random source.
fn fraction(rng: &ring::rand::SystemRandom) -> f64 {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 4];
    match rng.fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

/// A timer that first fires at a random point within `period` (so that a
/// fleet started at once does not report in lockstep), then every `period`.
fn spread_interval(rng: &ring::rand::SystemRandom, period: Duration) -> tokio::time::Interval {
    let first = tokio::time::Instant::now() + period.mul_f64(fraction(rng));
    let mut interval = tokio::time::interval_at(first, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

impl SimAgent {
    /// Runs the session until the task is aborted: connects, reconnects
    /// with the agent's jittered backoff, reports and acknowledges.
    pub(super) async fn run(mut self) {
        let topics = Topics::default();
        let desired = topics.desired(&self.agent);
        let mut options = MqttOptions::new(
            self.agent.as_str(),
            self.broker.ip().to_string(),
            self.broker.port(),
        );
        options
            .set_clean_session(false)
            .set_keep_alive(KEEP_ALIVE)
            .set_max_packet_size(limits::MAX_MQTT_PACKET_BYTES, limits::MAX_MQTT_PACKET_BYTES)
            .set_request_channel_capacity(REQUEST_CAPACITY);
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let rng = ring::rand::SystemRandom::new();
        let mut heartbeat = spread_interval(&rng, self.intervals.heartbeat);
        let mut telemetry = spread_interval(&rng, self.intervals.telemetry);
        let mut backoff = BACKOFF_INITIAL;
        self.arm_last_will(&mut eventloop);
        loop {
            let connected = self.state.connected.load(Ordering::Relaxed);
            tokio::select! {
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = BACKOFF_INITIAL;
                        self.state.connected.store(true, Ordering::Relaxed);
                        self.state.sessions.fetch_add(1, Ordering::Relaxed);
                        self.counters.connects.fetch_add(1, Ordering::Relaxed);
                        if client.try_subscribe(desired.as_str(), QoS::AtLeastOnce).is_err() {
                            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        let presence = self.node.presence_payload(true);
                        self.publish(&client, Channel::Presence, true, presence);
                        let status = self.status();
                        self.publish(&client, Channel::Status, false, status);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == desired => {
                        if let Some(status) = self.intake(&p.payload) {
                            self.publish(&client, Channel::Status, false, status);
                            if self.last_rejection.is_none() {
                                *self.state.acked_at.lock().unwrap_or_else(PoisonError::into_inner) =
                                    Some(Instant::now());
                                let applied = self.last.map_or(0, Generation::get);
                                self.state.applied.store(applied, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        self.counters.pubacks.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        self.state.connected.store(false, Ordering::Relaxed);
                        self.counters.connection_errors.fetch_add(1, Ordering::Relaxed);
                        let delay = jitter(&rng, backoff);
                        self.counters.record_backoff(delay);
                        tokio::time::sleep(delay).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        self.arm_last_will(&mut eventloop);
                    }
                },
                _ = heartbeat.tick(), if connected => {
                    let uptime = self.started.elapsed().as_secs();
                    let payload = self.node.heartbeat_payload(uptime, self.last);
                    self.publish(&client, Channel::Heartbeat, false, payload);
                }
                _ = telemetry.tick(), if connected => {
                    let payload = self.telemetry();
                    self.publish_telemetry(&client, &topics, payload);
                }
            }
        }
    }

    /// The offline presence the broker publishes if the session is lost,
    /// signed afresh before every connection attempt.
    fn arm_last_will(&self, eventloop: &mut EventLoop) {
        match (
            self.node.presence_payload(false),
            self.node.topic(Channel::Presence),
        ) {
            (Ok(payload), Ok(topic)) => {
                eventloop.mqtt_options.set_last_will(LastWill::new(
                    topic,
                    payload,
                    QoS::AtLeastOnce,
                    true,
                ));
            }
            _ => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues one report on the agent's `channel` (heartbeats at QoS 0, the
    /// rest at QoS 1, presence retained), counting it by kind.
    fn publish(
        &self,
        client: &AsyncClient,
        channel: Channel,
        retain: bool,
        payload: Result<Vec<u8>>,
    ) {
        let qos = match channel {
            Channel::Heartbeat => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        let topic = Topics::default().agent(&self.agent, channel);
        let queued = payload.is_ok_and(|p| client.try_publish(topic, qos, retain, p).is_ok());
        self.counters.count(channel, queued);
    }

    fn publish_telemetry(&self, client: &AsyncClient, topics: &Topics, payload: Vec<u8>) {
        let topic = topics.telemetry(&self.region, &self.agent);
        let queued = client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .is_ok();
        self.counters.count_telemetry(queued);
    }

    /// The signed status: the accepted generation, its workloads running,
    /// the last rejection.
    fn status(&self) -> Result<Vec<u8>> {
        let workloads = self
            .running
            .iter()
            .map(|w| running(w.service.clone(), w.replica, w.artifact.sha256))
            .collect();
        self.node
            .status_payload(self.last, workloads, self.last_rejection.clone())
    }

    /// Puts a delivery through the agent's intake decision; returns the
    /// status to send (an acknowledgement or a rejection), or `None` when
    /// the generation was already accepted.
    fn intake(&mut self, bytes: &[u8]) -> Option<Result<Vec<u8>>> {
        self.counters.deliveries.fetch_add(1, Ordering::Relaxed);
        let now = Timestamp::now();
        let decision = intake::parse_delivery(bytes)
            .map_err(|(reason, detail)| Rejection {
                reason,
                generation: None,
                detail: bounded_message(&detail),
                at: now,
            })
            .and_then(|delivery| {
                let ctx = intake::Context {
                    trust: &self.trust,
                    me: &self.agent,
                    last: self.last,
                    running: &self.running,
                    now,
                };
                intake::check(&delivery, &ctx)
            });
        match decision {
            Ok(Decision::Accept(resolved)) => {
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                self.last = Some(resolved.generation);
                self.running = resolved.workloads;
                self.last_rejection = None;
            }
            Ok(Decision::IgnoreSame) => {
                self.counters.ignored.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(rejection) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                self.last_rejection = Some(rejection);
            }
        }
        Some(self.status())
    }

    /// One telemetry message: the agent's shape with the host's figures
    /// left at zero (the controller keeps them, nothing reads them).
    fn telemetry(&mut self) -> Vec<u8> {
        self.telemetry_seq += 1;
        let telemetry = Telemetry {
            schema_version: TELEMETRY_SCHEMA_VERSION,
            agent: self.agent.clone(),
            region: self.region.clone(),
            seq: self.telemetry_seq,
            at: Timestamp::now(),
            interval_seconds: self.intervals.telemetry.as_secs(),
            host: Default::default(),
            agent_process: Default::default(),
            workloads: Vec::new(),
            cache: Default::default(),
            outbox: Default::default(),
        };
        // Serialising plain data cannot fail.
        serde_json::to_vec(&telemetry).unwrap_or_default()
    }
}
