//! The documents on the wire: desired state (controller → agent), presence,
//! heartbeat and status (agent → controller).
//!
//! Every document carries `schema_version`; readers reject versions they do
//! not know. Every document is sent inside a signed [`crate::Envelope`] whose
//! `payloadType` is the matching constant in [`payload_type`]. Unknown fields
//! are ignored so that a newer minor revision can add optional fields.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::dsse::{PublicKey, VerifyError};
use crate::id::{AgentId, RegionId, ServiceName};
use crate::limits;
use crate::time::Timestamp;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// DSSE payload types, one per document kind.
pub mod payload_type {
    pub const DESIRED_STATE: &str = "application/vnd.verge.desired-state.v1+json";
    pub const PRESENCE: &str = "application/vnd.verge.presence.v1+json";
    pub const HEARTBEAT: &str = "application/vnd.verge.heartbeat.v1+json";
    pub const STATUS: &str = "application/vnd.verge.status.v1+json";
}

/// A per-agent counter that grows exactly when that agent's workloads change.
/// Agents accept a desired state only with a generation greater than the last
/// one they accepted.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Generation(u64);

impl Generation {
    pub const ZERO: Generation = Generation(0);

    pub fn new(n: u64) -> Self {
        Self(n)
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The next generation, saturating (2^64 changes will not happen).
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A SHA-256 digest, lower-case hex in JSON and URLs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, data);
        let mut out = [0; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Takes the result of an incremental `ring::digest::Context` for SHA-256.
    pub fn from_ring(d: ring::digest::Digest) -> Self {
        let mut out = [0; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

impl FromStr for Sha256Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "{:?} is not a sha256 digest (64 lower-case hex digits)",
                s.chars().take(80).collect::<String>()
            ));
        }
        let mut out = [0; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| e.to_string())?;
        Ok(Self(out))
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A content-addressed artifact: what to fetch and how to check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub sha256: Sha256Digest,
    pub size: u64,
}

/// Compute resources, requested by a workload or offered by a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// Thousandths of a CPU core.
    pub cpu_millis: u32,
    /// Memory in MiB.
    pub memory_mb: u32,
}

/// A named port a workload listens on. Without `port` the agent picks a free
/// one and passes it in `VERGE_PORT_<NAME>`; the status reports the choice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// How to run a workload. The artifact itself is the executable; it is run
/// directly with `args` (never through a shell) and `env` added to a minimal
/// environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSpec {
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortSpec>,
}

/// One replica of a service assigned to one agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub service: ServiceName,
    /// Index of this replica within the service, from 0.
    pub replica: u32,
    pub artifact: ArtifactRef,
    #[serde(default)]
    pub run: RunSpec,
    #[serde(default)]
    pub resources: Resources,
}

/// Everything one agent must run, signed by the controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub schema_version: u32,
    pub agent: AgentId,
    pub generation: Generation,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// Sorted by service name; at most one workload per service.
    pub workloads: Vec<Workload>,
}

/// Is `name` usable as a port name or an environment variable suffix?
fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Is `key` a portable environment variable name?
pub fn is_env_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && key.len() <= 128
}

impl RunSpec {
    /// Checks the bounds and formats of a run spec. The error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.args.len() > limits::MAX_ARGS {
            return Err(format!("args: at most {} arguments", limits::MAX_ARGS));
        }
        for (i, arg) in self.args.iter().enumerate() {
            if arg.len() > limits::MAX_ARG_BYTES || arg.contains('\0') {
                return Err(format!(
                    "args[{i}]: must be at most {} bytes and contain no NUL",
                    limits::MAX_ARG_BYTES
                ));
            }
        }
        if self.env.len() > limits::MAX_ENV_VARS {
            return Err(format!("env: at most {} variables", limits::MAX_ENV_VARS));
        }
        for (key, value) in &self.env {
            if !is_env_name(key) || key.starts_with("VERGE_") {
                return Err(format!(
                    "env.{key}: names are letters, digits and '_', not starting with a digit or VERGE_"
                ));
            }
            if value.len() > limits::MAX_ENV_VALUE_BYTES || value.contains('\0') {
                return Err(format!(
                    "env.{key}: must be at most {} bytes and contain no NUL",
                    limits::MAX_ENV_VALUE_BYTES
                ));
            }
        }
        if self.ports.len() > limits::MAX_PORTS {
            return Err(format!("ports: at most {} ports", limits::MAX_PORTS));
        }
        for (i, port) in self.ports.iter().enumerate() {
            if !is_port_name(&port.name) {
                return Err(format!(
                    "ports[{i}].name: 1-15 lower-case letters, digits and '-'"
                ));
            }
            if port.port == Some(0) {
                return Err(format!(
                    "ports[{i}].port: must be 1-65535 (omit it for a dynamic port)"
                ));
            }
            if self.ports[..i].iter().any(|p| p.name == port.name) {
                return Err(format!("ports[{i}].name: {:?} appears twice", port.name));
            }
        }
        Ok(())
    }
}

impl DesiredState {
    /// Checks the document's own consistency: schema, bounds, one workload
    /// per service in sorted order, and each run spec. Signature, agent id,
    /// generation and expiry are the receiver's checks.
    pub fn validate(&self) -> Result<(), String> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(format!(
                "schema_version: {} is not supported (this build reads {SCHEMA_VERSION})",
                self.schema_version
            ));
        }
        if self.workloads.len() > limits::MAX_WORKLOADS_PER_AGENT {
            return Err(format!(
                "workloads: at most {} per agent",
                limits::MAX_WORKLOADS_PER_AGENT
            ));
        }
        if self.expires_at <= self.issued_at {
            return Err("expires_at: must be after issued_at".into());
        }
        for (i, w) in self.workloads.iter().enumerate() {
            if i > 0 && self.workloads[i - 1].service >= w.service {
                return Err(format!(
                    "workloads[{i}].service: {} is out of order or repeated",
                    w.service
                ));
            }
            w.run
                .validate()
                .map_err(|e| format!("workloads[{i}].run.{e}"))?;
        }
        Ok(())
    }
}

/// Announced (retained) when an agent connects; its Last Will is the same
/// document with `online: false`, signed at connect time. It carries the
/// node's public key, which the controller pins at first contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub schema_version: u32,
    pub agent: AgentId,
    pub online: bool,
    pub at: Timestamp,
    pub region: RegionId,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    pub public_key: PublicKey,
    /// The agent's software version.
    pub version: String,
}

/// Sent on an interval (QoS 0) to show the agent is alive; deliberately small.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub schema_version: u32,
    pub agent: AgentId,
    pub at: Timestamp,
    pub uptime_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_generation: Option<Generation>,
}

/// The lifecycle state of one workload on an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadState {
    /// Accepted, not started yet.
    Pending,
    /// Its artifact is being downloaded.
    Fetching,
    /// The process runs.
    Running,
    /// The process exited and waits for its restart delay.
    Backoff,
    /// It cannot run (artifact unavailable or corrupt, process cannot start).
    Failed,
}

/// What an agent reports about one workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    pub service: ServiceName,
    pub replica: u32,
    pub artifact: Sha256Digest,
    pub state: WorkloadState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why an agent refused a desired state; machine-readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    TooLarge,
    Malformed,
    WrongType,
    UnknownKey,
    BadSignature,
    UnsupportedSchema,
    Invalid,
    WrongAgent,
    StaleGeneration,
    Expired,
}

impl From<&VerifyError> for RejectReason {
    fn from(e: &VerifyError) -> Self {
        match e {
            VerifyError::TooLarge { .. } => RejectReason::TooLarge,
            VerifyError::Malformed(_) | VerifyError::BadPayload(_) => RejectReason::Malformed,
            VerifyError::WrongType { .. } => RejectReason::WrongType,
            VerifyError::UnknownKey(_) => RejectReason::UnknownKey,
            VerifyError::BadSignature(_) => RejectReason::BadSignature,
        }
    }
}

/// The most recent desired state an agent refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub reason: RejectReason,
    /// The generation the refused document claimed, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    pub detail: String,
    pub at: Timestamp,
}

/// An agent's report of what it runs. Sent on every change and on reconnect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub schema_version: u32,
    pub agent: AgentId,
    pub at: Timestamp,
    /// The generation of the desired state the agent has accepted and applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_generation: Option<Generation>,
    pub workloads: Vec<WorkloadStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rejection: Option<Rejection>,
}

/// Truncates free text to the wire limit on a character boundary.
pub fn bounded_message(text: &str) -> String {
    if text.len() <= limits::MAX_MESSAGE_BYTES {
        return text.to_owned();
    }
    let mut end = limits::MAX_MESSAGE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(service: &str) -> Workload {
        Workload {
            service: ServiceName::new(service).expect("valid"),
            replica: 0,
            artifact: ArtifactRef {
                sha256: Sha256Digest::of(b"x"),
                size: 1,
            },
            run: RunSpec::default(),
            resources: Resources::default(),
        }
    }

    fn desired(workloads: Vec<Workload>) -> DesiredState {
        DesiredState {
            schema_version: SCHEMA_VERSION,
            agent: AgentId::new("a").expect("valid"),
            generation: Generation::new(1),
            issued_at: Timestamp::from_unix_millis(1),
            expires_at: Timestamp::from_unix_millis(2),
            workloads,
        }
    }

    #[test]
    fn digest_parses_only_lower_case_hex_of_the_right_length() {
        let d = Sha256Digest::of(b"hello");
        assert_eq!(
            d.to_string(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(d.to_string().parse::<Sha256Digest>(), Ok(d));
        assert!("2CF24D".parse::<Sha256Digest>().is_err());
        assert!(
            d.to_string()
                .to_uppercase()
                .parse::<Sha256Digest>()
                .is_err()
        );
    }

    #[test]
    fn desired_state_validation_names_the_field() {
        assert_eq!(
            desired(vec![workload("a"), workload("b")]).validate(),
            Ok(())
        );
        let dup = desired(vec![workload("a"), workload("a")]).validate();
        assert!(dup.expect_err("dup").starts_with("workloads[1].service"));

        let mut w = workload("a");
        w.run.env.insert("1BAD".into(), "v".into());
        let err = desired(vec![w]).validate().expect_err("bad env");
        assert!(err.starts_with("workloads[0].run.env.1BAD"), "{err}");

        let mut w = workload("a");
        w.run.ports = vec![
            PortSpec {
                name: "http".into(),
                port: None,
            },
            PortSpec {
                name: "http".into(),
                port: Some(80),
            },
        ];
        let err = desired(vec![w]).validate().expect_err("dup port");
        assert!(err.contains("ports[1].name"), "{err}");

        let mut d = desired(vec![]);
        d.schema_version = 2;
        assert!(
            d.validate()
                .expect_err("schema")
                .starts_with("schema_version")
        );
    }

    #[test]
    fn documents_round_trip_through_json() {
        let d = desired(vec![workload("web")]);
        let json = serde_json::to_string(&d).expect("serialise");
        assert_eq!(
            serde_json::from_str::<DesiredState>(&json).expect("parse"),
            d
        );
    }

    #[test]
    fn bounded_message_cuts_on_a_char_boundary() {
        let long = "é".repeat(limits::MAX_MESSAGE_BYTES);
        let cut = bounded_message(&long);
        assert!(cut.len() <= limits::MAX_MESSAGE_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
