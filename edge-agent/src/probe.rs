//! Latency probes: one UDP socket that answers other agents' probes and
//! sends this agent's own, in rounds, to the targets of the controller's
//! signed probe plan; each round's samples leave as a signed latency report
//! through the outbox.
//!
//! The listener answers only exact probe requests (13 bytes, see
//! `verge_shared::latency`), with a reply of the same size, at most
//! [`verge_shared::latency::MAX_ANSWERS_PER_SEC`] per second (the
//! controller's listener applies the same [`AnswerBudget`]); everything else is dropped unread
//! beyond the first bytes, so it can be neither flooded into work nor used
//! to amplify traffic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ring::rand::SecureRandom as _;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use verge_shared::latency::{
    AnswerBudget, LatencySample, MAX_PLAN_BYTES, MAX_RTT_MICROS, PLAN_PAYLOAD_TYPE, PROBE_LEN,
    Probe, ProbePlan,
};
use verge_shared::messages::SCHEMA_VERSION;
use verge_shared::{AgentId, Envelope, PublicKey};

use crate::outbox::Outbox;
use crate::report::Signer;

/// Probes sent to each target per round.
const PROBES_PER_TARGET: usize = 3;
/// How long a round waits for answers; later answers count as lost.
const ROUND_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a probe plan was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the envelope does not verify: {0}")]
    Envelope(#[source] verge_shared::VerifyError),
    #[error("the plan is invalid: {0}")]
    Invalid(String),
    #[error("the plan is for agent {0}")]
    WrongAgent(AgentId),
    #[error("the plan is not newer than the one in use")]
    Stale,
}

/// The pure accept / refuse decision for a received probe plan: the
/// controller's signature, this agent's id, the bounds, and an `issued_at`
/// later than the plan in use.
pub fn accept_plan(
    bytes: &[u8],
    controller_keys: &[PublicKey],
    agent: &AgentId,
    current: Option<&ProbePlan>,
) -> Result<ProbePlan, PlanError> {
    let envelope = Envelope::parse(bytes, MAX_PLAN_BYTES).map_err(PlanError::Envelope)?;
    let plan: ProbePlan = envelope
        .open_any(PLAN_PAYLOAD_TYPE, controller_keys)
        .map_err(PlanError::Envelope)?;
    if plan.schema_version != SCHEMA_VERSION {
        return Err(PlanError::Invalid(format!(
            "schema_version {} is not supported",
            plan.schema_version
        )));
    }
    if &plan.agent != agent {
        return Err(PlanError::WrongAgent(plan.agent));
    }
    plan.validate().map_err(PlanError::Invalid)?;
    if current.is_some_and(|c| plan.issued_at <= c.issued_at) {
        return Err(PlanError::Stale);
    }
    Ok(plan)
}

/// One round of probes in flight.
struct Round {
    deadline: Instant,
    /// nonce → (target index, sent at).
    pending: HashMap<u64, (usize, Instant)>,
    samples: Vec<LatencySample>,
}

/// What the probe task needs besides its socket.
pub struct Prober {
    pub agent: AgentId,
    /// Whose signatures on probe plans count (the trust bundle's controller keys).
    pub controller_keys: Box<dyn Fn() -> Vec<PublicKey> + Send + Sync>,
    pub signer: Arc<Signer>,
    pub outbox: Arc<Outbox>,
    /// The topic latency reports go to.
    pub topic: String,
}

impl Prober {
    /// Answers probes and runs rounds until `stop`. Plans arrive on `plans_rx`.
    pub async fn run(
        self,
        socket: UdpSocket,
        mut plans_rx: watch::Receiver<Option<Bytes>>,
        stop: CancellationToken,
    ) {
        let rng = ring::rand::SystemRandom::new();
        let mut plan: Option<ProbePlan> = None;
        let mut round: Option<Round> = None;
        let mut next_round = Instant::now();
        let mut limit = AnswerBudget::new(Instant::now());
        // One byte more than a probe, so that a longer datagram is noticed.
        let mut buf = [0u8; PROBE_LEN + 1];
        loop {
            let wake = round.as_ref().map_or(next_round, |r| r.deadline);
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                changed = plans_rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let Some(bytes) = plans_rx.borrow_and_update().clone() else { continue };
                    match accept_plan(&bytes, &(self.controller_keys)(), &self.agent, plan.as_ref()) {
                        Ok(accepted) => {
                            info!(agent = %self.agent, n_targets = accepted.targets.len(), interval_secs = accepted.interval_secs, "Accepted a probe plan.");
                            plan = Some(accepted);
                            next_round = Instant::now();
                        }
                        Err(PlanError::Stale) => debug!(agent = %self.agent, "Ignored a probe plan that is not newer."),
                        Err(e) => warn!(agent = %self.agent, error = %e, "Refused a probe plan."),
                    }
                }
                received = socket.recv_from(&mut buf) => match received {
                    Ok((n, from)) => {
                        self.handle(&socket, &buf[..n], from, &mut limit, round.as_mut());
                    }
                    Err(e) => debug!(error = %e, "A probe datagram could not be read."),
                },
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if let Some(open) = round.take() {
                        self.report(open).await;
                    }
                    if let Some(plan) = plan.as_ref().filter(|p| !p.targets.is_empty()) {
                        round = Some(start_round(&socket, plan, &rng, now));
                        next_round = now + Duration::from_secs(plan.interval_secs.into());
                    } else {
                        // Nothing to probe: check again when a plan arrives.
                        next_round = now + Duration::from_secs(3600);
                    }
                }
            }
        }
    }

    fn handle(
        &self,
        socket: &UdpSocket,
        bytes: &[u8],
        from: SocketAddr,
        limit: &mut AnswerBudget,
        round: Option<&mut Round>,
    ) {
        match Probe::decode(bytes) {
            Some(Probe::Request { .. }) => {
                if let Some(answer) = limit.answer(bytes, Instant::now()) {
                    // try_send: a full socket buffer drops the answer, as a loaded network would.
                    let _ = socket.try_send_to(&answer, from);
                }
            }
            Some(Probe::Response { nonce }) => {
                let Some(round) = round else { return };
                if let Some((target, sent)) = round.pending.remove(&nonce) {
                    let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                    if micros <= MAX_RTT_MICROS {
                        round.samples[target].rtt_micros.push(micros);
                    }
                }
            }
            None => {}
        }
    }

    /// Counts what did not come back and queues the signed report.
    async fn report(&self, mut round: Round) {
        for (target, _) in round.pending.values() {
            round.samples[*target].lost += 1;
        }
        let envelope = self.signer.latency(round.samples);
        let (outbox, topic) = (self.outbox.clone(), self.topic.clone());
        // The push is flushed to disk: keep it off the runtime thread.
        match tokio::task::spawn_blocking(move || outbox.push(&topic, &envelope)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "Cannot queue a latency report; the next round sends a fresh one.")
            }
            Err(e) => warn!(error = %e, "Queueing a latency report failed."),
        }
    }
}

fn start_round(
    socket: &UdpSocket,
    plan: &ProbePlan,
    rng: &ring::rand::SystemRandom,
    now: Instant,
) -> Round {
    let mut round = Round {
        deadline: now + ROUND_TIMEOUT,
        pending: HashMap::new(),
        samples: plan
            .targets
            .iter()
            .map(|t| LatencySample {
                target: t.agent.clone(),
                rtt_micros: Vec::new(),
                lost: 0,
            })
            .collect(),
    };
    for (i, target) in plan.targets.iter().enumerate() {
        for _ in 0..PROBES_PER_TARGET {
            let mut nonce = [0u8; 8];
            if rng.fill(&mut nonce).is_err() {
                continue;
            }
            let nonce = u64::from_be_bytes(nonce);
            let sent = socket.try_send_to(&Probe::Request { nonce }.encode(), target.addr);
            match sent {
                Ok(_) => {
                    round.pending.insert(nonce, (i, Instant::now()));
                }
                Err(e) => {
                    debug!(target = %target.agent, error = %e, "A probe could not be sent.");
                    round.samples[i].lost += 1;
                }
            }
        }
    }
    round
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_shared::latency::ProbeTarget;
    use verge_shared::{SigningKey, Timestamp};

    fn plan(agent: &str, at: u64) -> ProbePlan {
        ProbePlan {
            schema_version: SCHEMA_VERSION,
            agent: AgentId::new(agent).expect("id"),
            issued_at: Timestamp::from_unix_millis(at),
            interval_secs: 5,
            targets: vec![ProbeTarget {
                agent: AgentId::new("peer").expect("id"),
                addr: "127.0.0.1:9".parse().expect("addr"),
            }],
        }
    }

    #[test]
    fn plans_are_accepted_only_signed_for_us_and_newer() {
        let (key, _) = SigningKey::generate().expect("key");
        let (other, _) = SigningKey::generate().expect("key");
        let me = AgentId::new("me").expect("id");
        let sign = |k: &SigningKey, p: &ProbePlan| k.sign_json(PLAN_PAYLOAD_TYPE, p);
        let first = accept_plan(&sign(&key, &plan("me", 10)), &[key.public_key()], &me, None)
            .expect("accepted");
        assert_eq!(
            accept_plan(
                &sign(&key, &plan("me", 10)),
                &[key.public_key()],
                &me,
                Some(&first)
            ),
            Err(PlanError::Stale)
        );
        assert!(matches!(
            accept_plan(
                &sign(&other, &plan("me", 11)),
                &[key.public_key()],
                &me,
                None
            ),
            Err(PlanError::Envelope(_))
        ));
        assert!(matches!(
            accept_plan(
                &sign(&key, &plan("you", 11)),
                &[key.public_key()],
                &me,
                None
            ),
            Err(PlanError::WrongAgent(_))
        ));
        let mut bad = plan("me", 11);
        bad.interval_secs = 0;
        assert!(matches!(
            accept_plan(&sign(&key, &bad), &[key.public_key()], &me, None),
            Err(PlanError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn the_listener_answers_only_probe_requests() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let (key, _) = SigningKey::generate().expect("key");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let outbox = Arc::new(Outbox::open(&db, dir.path().to_owned(), 1 << 20).expect("outbox"));
        let signer = Arc::new(Signer::new(
            SigningKey::generate().expect("key").0,
            crate::report::Identity {
                agent: AgentId::new("me").expect("id"),
                region: verge_shared::RegionId::new("r").expect("region"),
                labels: Default::default(),
                capacity: Default::default(),
                probe_addr: Some(addr),
                limits: None,
            },
            Arc::new(crate::report::Board::new(None)),
        ));
        let prober = Prober {
            agent: AgentId::new("me").expect("id"),
            controller_keys: Box::new(move || vec![key.public_key()]),
            signer,
            outbox,
            topic: "t".into(),
        };
        let (_plans_tx, plans_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(prober.run(socket, plans_rx, stop.clone()));

        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        client.send_to(b"garbage", addr).await.expect("send");
        client
            .send_to(&Probe::Response { nonce: 1 }.encode(), addr)
            .await
            .expect("send");
        client
            .send_to(&Probe::Request { nonce: 42 }.encode(), addr)
            .await
            .expect("send");
        let mut buf = [0u8; 64];
        let (n, from) = tokio::time::timeout(Duration::from_secs(10), client.recv_from(&mut buf))
            .await
            .expect("an answer in time")
            .expect("recv");
        assert_eq!(from, addr);
        assert_eq!(
            Probe::decode(&buf[..n]),
            Some(Probe::Response { nonce: 42 })
        );
        // Only the request was answered.
        let more =
            tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await;
        assert!(more.is_err(), "a non-request got an answer");
        stop.cancel();
        task.await.expect("probe task");
    }
}
