//! Latency measurement on the wire: the probe datagram agents exchange, the
//! signed [`ProbePlan`] in which the controller names each agent's probe
//! targets (`agents/{id}/probes`, retained), and the signed
//! [`LatencyReport`] of samples an agent sends on `agents/{id}/latency`.
//!
//! Probe targets travel in their own document rather than in the desired
//! state so that a node joining or leaving never bumps other agents'
//! generations: the generation still grows exactly when workloads change.
//!
//! A probe is one fixed-size UDP datagram: `VPRQ` (request) or `VPRS`
//! (response), one version byte and an 8-byte nonce. A listener answers a
//! request by sending the same bytes back with the response magic; anything
//! else (other sizes, other magic, other versions) is dropped unanswered, so
//! a probe listener can never be used to amplify traffic.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::id::AgentId;
use crate::time::Timestamp;

/// DSSE payload type of a [`LatencyReport`].
pub const REPORT_PAYLOAD_TYPE: &str = "application/vnd.verge.latency.v1+json";

/// DSSE payload type of a [`ProbePlan`].
pub const PLAN_PAYLOAD_TYPE: &str = "application/vnd.verge.probe-plan.v1+json";

/// Largest signed latency report the controller accepts.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;

/// Largest signed probe plan an agent accepts.
pub const MAX_PLAN_BYTES: usize = 8 * 1024;

/// Bounds on the probing interval a plan may ask for.
pub const MIN_INTERVAL_SECS: u32 = 1;
pub const MAX_INTERVAL_SECS: u32 = 3600;

/// Most probe targets one agent is given, and so most samples in a report.
pub const MAX_TARGETS: usize = 16;

/// Longest round-trip time worth reporting; slower answers count as lost.
pub const MAX_RTT_MICROS: u32 = 10_000_000;

/// The size of every probe datagram, request or response.
pub const PROBE_LEN: usize = 13;

const REQUEST_MAGIC: &[u8; 4] = b"VPRQ";
const RESPONSE_MAGIC: &[u8; 4] = b"VPRS";
const PROBE_VERSION: u8 = 1;

/// A probe datagram, understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Request { nonce: u64 },
    Response { nonce: u64 },
}

impl Probe {
    /// The datagram's bytes.
    pub fn encode(self) -> [u8; PROBE_LEN] {
        let (magic, nonce) = match self {
            Probe::Request { nonce } => (REQUEST_MAGIC, nonce),
            Probe::Response { nonce } => (RESPONSE_MAGIC, nonce),
        };
        let mut out = [0; PROBE_LEN];
        out[..4].copy_from_slice(magic);
        out[4] = PROBE_VERSION;
        out[5..].copy_from_slice(&nonce.to_be_bytes());
        out
    }

    /// Parses a datagram; `None` for anything that is not exactly a probe.
    pub fn decode(bytes: &[u8]) -> Option<Probe> {
        if bytes.len() != PROBE_LEN || bytes[4] != PROBE_VERSION {
            return None;
        }
        let mut nonce = [0; 8];
        nonce.copy_from_slice(&bytes[5..]);
        let nonce = u64::from_be_bytes(nonce);
        match &bytes[..4] {
            m if m == REQUEST_MAGIC => Some(Probe::Request { nonce }),
            m if m == RESPONSE_MAGIC => Some(Probe::Response { nonce }),
            _ => None,
        }
    }

    /// What a listener sends back: the response to a request, nothing otherwise.
    pub fn answer(self) -> Option<Probe> {
        match self {
            Probe::Request { nonce } => Some(Probe::Response { nonce }),
            Probe::Response { .. } => None,
        }
    }
}

/// The target id under which the controller's own probe listener appears in
/// probe plans and latency reports. No agent may register with this id.
pub const CONTROLLER_TARGET: &str = "controller";

/// Most probe requests a listener answers per second; more are dropped.
pub const MAX_ANSWERS_PER_SEC: u32 = 200;

/// A probe listener's answer budget: at most [`MAX_ANSWERS_PER_SEC`] per
/// one-second window. Pure (the caller passes the time), shared by the
/// agents' and the controller's listeners.
#[derive(Clone, Copy, Debug)]
pub struct AnswerBudget {
    window_start: Instant,
    used: u32,
}

impl AnswerBudget {
    pub fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            used: 0,
        }
    }

    /// The answer to a datagram, if it is a probe request and the budget
    /// allows one more answer at `now`; `None` means send nothing.
    pub fn answer(&mut self, datagram: &[u8], now: Instant) -> Option<[u8; PROBE_LEN]> {
        let answer = Probe::decode(datagram)?.answer()?;
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.used = 0;
        }
        self.used += 1;
        (self.used <= MAX_ANSWERS_PER_SEC).then(|| answer.encode())
    }
}

/// A peer an agent measures: its id and the address its probe listener
/// answers on. Carried in the desired state the controller signs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ProbeTarget {
    pub agent: AgentId,
    pub addr: SocketAddr,
}

/// The peers one agent measures, and how often; signed by the controller
/// and published retained on `agents/{id}/probes`. An agent accepts a plan
/// only with an `issued_at` later than the last one it accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ProbePlan {
    pub schema_version: u32,
    pub agent: AgentId,
    pub issued_at: Timestamp,
    /// Seconds between probing rounds; one report follows each round.
    pub interval_secs: u32,
    /// Sorted by agent id, at most [`MAX_TARGETS`].
    pub targets: Vec<ProbeTarget>,
}

impl ProbePlan {
    /// Checks the bounds; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.targets.len() > MAX_TARGETS {
            return Err(format!("targets: at most {MAX_TARGETS}"));
        }
        if !(MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&self.interval_secs) {
            return Err(format!(
                "interval_secs: {} is outside {MIN_INTERVAL_SECS}..={MAX_INTERVAL_SECS}",
                self.interval_secs
            ));
        }
        if self.targets.iter().any(|t| t.agent == self.agent) {
            return Err("targets: an agent never probes itself".into());
        }
        Ok(())
    }
}

/// The result of probing one target during one round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LatencySample {
    pub target: AgentId,
    /// Round-trip times of the answered probes, in microseconds.
    #[serde(default)]
    pub rtt_micros: Vec<u32>,
    /// Probes that got no answer within the round.
    #[serde(default)]
    pub lost: u32,
}

/// Most round-trip times one sample may carry.
pub const MAX_RTTS_PER_SAMPLE: usize = 8;

/// An agent's measurements since its previous report, signed by its node key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LatencyReport {
    pub schema_version: u32,
    pub agent: AgentId,
    pub at: Timestamp,
    pub samples: Vec<LatencySample>,
}

impl LatencyReport {
    /// Checks the bounds; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.samples.len() > MAX_TARGETS {
            return Err(format!("samples: at most {MAX_TARGETS}"));
        }
        for (i, s) in self.samples.iter().enumerate() {
            if s.rtt_micros.len() > MAX_RTTS_PER_SAMPLE {
                return Err(format!(
                    "samples[{i}].rtt_micros: at most {MAX_RTTS_PER_SAMPLE} values"
                ));
            }
            if let Some(rtt) = s.rtt_micros.iter().find(|r| **r > MAX_RTT_MICROS) {
                return Err(format!(
                    "samples[{i}].rtt_micros: {rtt} is over {MAX_RTT_MICROS}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_budget_answers_only_requests_and_at_most_its_rate() {
        let start = Instant::now();
        let mut budget = AnswerBudget::new(start);
        let request = Probe::Request { nonce: 9 }.encode();
        assert_eq!(
            budget.answer(&request, start),
            Some(Probe::Response { nonce: 9 }.encode())
        );
        assert_eq!(
            budget.answer(&Probe::Response { nonce: 9 }.encode(), start),
            None
        );
        assert_eq!(budget.answer(&request[..12], start), None);
        for _ in 1..MAX_ANSWERS_PER_SEC {
            assert!(budget.answer(&request, start).is_some());
        }
        assert_eq!(budget.answer(&request, start), None, "over the rate");
        let later = start + Duration::from_secs(1);
        assert!(budget.answer(&request, later).is_some(), "a new window");
    }

    #[test]
    fn probes_round_trip_and_only_requests_are_answered() {
        let request = Probe::Request { nonce: 7 };
        let bytes = request.encode();
        assert_eq!(Probe::decode(&bytes), Some(request));
        let answer = request.answer().expect("requests are answered");
        assert_eq!(answer, Probe::Response { nonce: 7 });
        assert_eq!(answer.answer(), None, "responses are never answered");
        assert_eq!(Probe::decode(&answer.encode()), Some(answer));
    }

    #[test]
    fn anything_but_an_exact_probe_is_refused() {
        let bytes = Probe::Request { nonce: 1 }.encode();
        assert_eq!(Probe::decode(&bytes[..12]), None);
        assert_eq!(Probe::decode(&[bytes.as_slice(), &[0]].concat()), None);
        let mut other = bytes;
        other[0] = b'X';
        assert_eq!(Probe::decode(&other), None);
        let mut version = bytes;
        version[4] = 2;
        assert_eq!(Probe::decode(&version), None);
    }

    #[test]
    fn reports_are_bounded() {
        let sample = LatencySample {
            target: AgentId::new("b").expect("id"),
            rtt_micros: vec![1; MAX_RTTS_PER_SAMPLE + 1],
            lost: 0,
        };
        let report = LatencyReport {
            schema_version: 1,
            agent: AgentId::new("a").expect("id"),
            at: Timestamp::from_unix_millis(1),
            samples: vec![sample],
        };
        let err = report.validate().expect_err("too many rtts");
        assert!(err.starts_with("samples[0].rtt_micros"), "{err}");
    }
}
