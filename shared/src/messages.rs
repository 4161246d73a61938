//! The documents on the wire: desired state (controller → agent), presence,
//! heartbeat and status (agent → controller).
//!
//! Every document carries `schema_version`; readers reject versions they do
//! not know. Every document is sent inside a signed [`crate::Envelope`] whose
//! `payloadType` is the matching constant in [`payload_type`]. Unknown fields
//! are ignored so that a newer minor revision can add optional fields.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::digest::Sha256Digest;
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
    pub const EVENT: &str = "application/vnd.verge.event.v1+json";
}

/// A per-agent counter that grows exactly when that agent's workloads change.
/// Agents accept a desired state only with a generation greater than the last
/// one they accepted.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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

/// A content-addressed artifact: what to fetch and how to check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ArtifactRef {
    pub sha256: Sha256Digest,
    pub size: u64,
}

/// Compute resources, requested by a workload or offered by a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Resources {
    /// Thousandths of a CPU core.
    pub cpu_millis: u32,
    /// Memory in MiB.
    pub memory_mb: u32,
}

/// A named port a workload listens on. Without `port` the agent picks a free
/// one and passes it in `VERGE_PORT_<NAME>`; the status reports the choice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunSpec {
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortSpec>,
    /// When the agent starts the process again after it exits.
    #[serde(skip_serializing_if = "RestartPolicy::is_always")]
    pub restart: RestartPolicy,
    /// Seconds between SIGTERM and SIGKILL on stop; the agent's default
    /// ([`DEFAULT_STOP_GRACE_SECS`]) when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_secs: Option<u32>,
    /// How the agent decides whether the running process is healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// When set, the artifact is a tar.gz archive and this relative path
    /// inside it (no `..`, no leading `/`) is the executable to run. When
    /// absent, the artifact itself is the executable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
}

/// The stop grace period when a run spec gives none.
pub const DEFAULT_STOP_GRACE_SECS: u32 = 10;
/// The longest stop grace period a run spec may ask for.
pub const MAX_STOP_GRACE_SECS: u32 = 300;

/// When a workload's process is started again after it exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum RestartPolicy {
    /// After every exit, with capped exponential backoff.
    #[default]
    Always,
    /// Only after an exit with a non-zero code or by a signal.
    OnFailure,
    /// Never: the exit is reported and the workload stays down.
    Never,
}

impl RestartPolicy {
    fn is_always(&self) -> bool {
        *self == RestartPolicy::Always
    }
}

/// A periodic probe of a running workload. The workload becomes unhealthy
/// after `unhealthy_threshold` consecutive failures and healthy again after
/// `healthy_threshold` consecutive successes; until the first verdict its
/// health is `unknown`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HealthCheck {
    pub probe: Probe,
    #[serde(default = "HealthCheck::default_interval")]
    pub interval_secs: u32,
    #[serde(default = "HealthCheck::default_timeout")]
    pub timeout_secs: u32,
    #[serde(default = "HealthCheck::default_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "HealthCheck::default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

impl HealthCheck {
    fn default_interval() -> u32 {
        10
    }
    fn default_timeout() -> u32 {
        2
    }
    fn default_threshold() -> u32 {
        1
    }
    fn default_unhealthy_threshold() -> u32 {
        3
    }
}

/// What a health check does. Ports are named (one of the run spec's
/// `ports`) so that a port the agent picks can be probed too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Probe {
    /// A TCP connection to `127.0.0.1:<port>` succeeds.
    Tcp { port: String },
    /// `GET <path>` on `127.0.0.1:<port>` answers with a status in
    /// `status_min..=status_max`.
    Http {
        port: String,
        #[serde(default = "Probe::default_path")]
        path: String,
        #[serde(default = "Probe::default_status_min")]
        status_min: u16,
        #[serde(default = "Probe::default_status_max")]
        status_max: u16,
    },
    /// `command` (an argv, never a shell line) exits with code 0. It runs
    /// in the workload's directory, as the workload's user, with its environment.
    Exec { command: Vec<String> },
}

impl Probe {
    fn default_path() -> String {
        "/".to_owned()
    }
    fn default_status_min() -> u16 {
        200
    }
    fn default_status_max() -> u16 {
        399
    }
}

/// One replica of a service on one agent, resolved from its verified
/// release: what the agent runs (and the controller records it issued).
/// Not a wire document by itself; see [`Assignment`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub service: ServiceName,
    /// Index of this replica within the service, from 0.
    pub replica: u32,
    /// The [`crate::Envelope::signed_digest`] of the release it runs.
    pub release: Sha256Digest,
    /// The release's version.
    pub version: semver::Version,
    pub artifact: ArtifactRef,
    #[serde(default)]
    pub run: RunSpec,
    #[serde(default)]
    pub resources: Resources,
}

/// One replica of a service assigned to an agent, as the controller signs
/// it: the release is named by digest, never described.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Assignment {
    pub service: ServiceName,
    /// Index of this replica within the service, from 0.
    pub replica: u32,
    /// The [`crate::Envelope::signed_digest`] of a publisher-signed release.
    pub release: Sha256Digest,
    /// An operator rollback: the release may be older than the one running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
    /// Per-agent settings, passed to the workload as `VERGE_CONFIG_<KEY>`.
    /// Keys are upper-case letters, digits and `_`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

/// Everything one agent must run, signed by the controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DesiredState {
    pub schema_version: u32,
    pub agent: AgentId,
    pub generation: Generation,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// Sorted by service name; at most one workload per service.
    pub workloads: Vec<Assignment>,
}

/// What the controller publishes (retained) on an agent's desired topic:
/// the signed desired state, the signed releases it names, and the current
/// trust bundle. Each part carries its own signatures; the wrapper carries
/// none and is only a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Delivery {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<crate::Envelope>,
    pub desired: crate::Envelope,
    #[serde(default)]
    pub releases: Vec<crate::Envelope>,
}

/// The environment variable prefix of [`Assignment::config`] entries.
pub const CONFIG_ENV_PREFIX: &str = "VERGE_CONFIG_";

/// Checks an assignment's per-agent config; the error names the key.
pub fn validate_config(config: &BTreeMap<String, String>) -> Result<(), String> {
    if config.len() > limits::MAX_CONFIG_ENTRIES {
        return Err(format!(
            "config: at most {} entries",
            limits::MAX_CONFIG_ENTRIES
        ));
    }
    for (key, value) in config {
        let key_ok = (1..=64).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !key_ok {
            return Err(format!(
                "config.{key}: keys are 1-64 upper-case letters, digits and '_'"
            ));
        }
        if value.len() > limits::MAX_CONFIG_VALUE_BYTES || value.contains('\0') {
            return Err(format!(
                "config.{key}: must be at most {} bytes and contain no NUL",
                limits::MAX_CONFIG_VALUE_BYTES
            ));
        }
    }
    Ok(())
}

/// Is `name` usable as a port name or an environment variable suffix?
fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Is `key` a portable environment variable name?
fn is_env_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && key.len() <= 128
}

/// Is `path` a usable archive entrypoint: a non-empty relative path of
/// normal components, within the length bound?
fn validate_entrypoint(path: &str) -> Result<(), String> {
    let normal = |c: &str| !c.is_empty() && c != "." && c != "..";
    if path.len() > limits::MAX_ENTRYPOINT_BYTES
        || path.bytes().any(|b| b.is_ascii_control())
        || !path.split('/').all(normal)
    {
        return Err(format!(
            "entrypoint: {path:?} must be a relative path of at most {} bytes, without '.', '..', empty components or control characters",
            limits::MAX_ENTRYPOINT_BYTES
        ));
    }
    Ok(())
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
        if let Some(grace) = self.stop_grace_secs
            && grace > MAX_STOP_GRACE_SECS
        {
            return Err(format!(
                "stop_grace_secs: {grace} is over the limit of {MAX_STOP_GRACE_SECS}"
            ));
        }
        if let Some(health) = &self.health {
            self.validate_health(health)?;
        }
        if let Some(entrypoint) = &self.entrypoint {
            validate_entrypoint(entrypoint)?;
        }
        Ok(())
    }

    fn validate_health(&self, health: &HealthCheck) -> Result<(), String> {
        let in_range = |field: &str, value: u32, max: u32| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!("health.{field}: {value} is outside 1..={max}"))
            }
        };
        in_range("interval_secs", health.interval_secs, 3600)?;
        in_range("timeout_secs", health.timeout_secs, 600)?;
        in_range("healthy_threshold", health.healthy_threshold, 100)?;
        in_range("unhealthy_threshold", health.unhealthy_threshold, 100)?;
        let known_port = |port: &str| {
            if self.ports.iter().any(|p| p.name == port) {
                Ok(())
            } else {
                Err(format!(
                    "health.probe.port: {port:?} is not one of the workload's ports"
                ))
            }
        };
        match &health.probe {
            Probe::Tcp { port } => known_port(port),
            Probe::Http {
                port,
                path,
                status_min,
                status_max,
            } => {
                known_port(port)?;
                if !path.starts_with('/')
                    || path.len() > 1024
                    || path.bytes().any(|b| b.is_ascii_control() || b == b' ')
                {
                    return Err(
                        "health.probe.path: must start with '/', be at most 1024 bytes and contain no spaces or control characters".into(),
                    );
                }
                if !(100..=599).contains(status_min)
                    || !(100..=599).contains(status_max)
                    || status_min > status_max
                {
                    return Err(format!(
                        "health.probe.status_min: {status_min}..={status_max} is not a range of HTTP statuses (100-599)"
                    ));
                }
                Ok(())
            }
            Probe::Exec { command } => {
                if command.is_empty() || command.len() > limits::MAX_ARGS {
                    return Err(format!(
                        "health.probe.command: 1 to {} arguments",
                        limits::MAX_ARGS
                    ));
                }
                if command
                    .iter()
                    .any(|a| a.len() > limits::MAX_ARG_BYTES || a.contains('\0'))
                {
                    return Err(format!(
                        "health.probe.command: each argument at most {} bytes, no NUL",
                        limits::MAX_ARG_BYTES
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Checks a document's `schema_version`; the error names the field.
pub fn check_schema_version(version: u32) -> Result<(), String> {
    if version == SCHEMA_VERSION {
        Ok(())
    } else {
        Err(format!(
            "schema_version: {version} is not supported (this build reads {SCHEMA_VERSION})"
        ))
    }
}

impl DesiredState {
    /// Checks the document's own consistency: schema, bounds, one workload
    /// per service in sorted order, and each per-agent config. Signature,
    /// agent id, generation, expiry and the releases are the receiver's checks.
    pub fn validate(&self) -> Result<(), String> {
        check_schema_version(self.schema_version)?;
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
            validate_config(&w.config).map_err(|e| format!("workloads[{i}].{e}"))?;
        }
        Ok(())
    }
}

/// Announced (retained) when an agent connects; its Last Will is the same
/// document with `online: false`, signed at connect time. It carries the
/// node's public key, which the controller pins at first contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
    /// Where the agent's probe listener answers latency probes, when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_addr: Option<std::net::SocketAddr>,
    /// How the agent enforces workloads' resource limits (`cgroup_v2` or
    /// `rlimit`); absent from agents that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitMechanism>,
}

/// Sent on an interval (QoS 0) to show the agent is alive; deliberately small.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
    /// It exited quickly too many times in a row; the agent retries only
    /// rarely now. `last_exit` and `message` say why.
    CrashLoop,
    /// It exited and its restart policy says it stays down.
    Exited,
}

/// A workload's health as its health check last judged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum HealthState {
    /// No verdict yet (just started, or thresholds not reached).
    Unknown,
    Healthy,
    Unhealthy,
}

/// How a workload's process last ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExitInfo {
    /// The exit code, when it exited by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal number, when a signal ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub at: Timestamp,
}

/// Which mechanism enforces a workload's resource limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum LimitMechanism {
    /// A cgroup v2 group with `memory.max` and `cpu.max`.
    CgroupV2,
    /// Per-process rlimits (address space, CPU time is not limited).
    Rlimit,
    /// The workload asked for no limits.
    None,
}

/// How the agent confines one workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Isolation {
    pub limits: LimitMechanism,
    /// The user the process runs as.
    pub user: String,
}

/// What an agent reports about one workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
    /// Present when the run spec has a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthState>,
    /// How the process last ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitInfo>,
    /// How the process is confined, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
}

/// Why an agent refused a desired state; machine-readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
    /// An envelope with no signature at all.
    Unsigned,
    /// The desired state names a release digest that was not delivered
    /// with it (mix-and-match).
    ReleaseMissing,
    /// A release not signed by any publisher key of the trust bundle.
    UnknownPublisher,
    /// A release signed by a publisher not allowed that service name.
    PublisherNotAllowed,
    /// A release that is signed but inconsistent (bad run spec, artifacts).
    ReleaseInvalid,
    /// A release of another service than the assignment names.
    ReleaseMismatch,
    /// An older release version than the one running, without an operator
    /// rollback.
    ReleaseRollback,
    /// A trust bundle without a threshold of trusted root signatures.
    ThresholdNotMet,
    /// A trust bundle older than the trusted one, or the same version with
    /// different content.
    StaleTrustBundle,
}

impl From<&VerifyError> for RejectReason {
    fn from(e: &VerifyError) -> Self {
        match e {
            VerifyError::TooLarge { .. } => RejectReason::TooLarge,
            VerifyError::Malformed(_) | VerifyError::BadPayload(_) => RejectReason::Malformed,
            VerifyError::WrongType { .. } => RejectReason::WrongType,
            VerifyError::UnknownKey(_) => RejectReason::UnknownKey,
            VerifyError::BadSignature(_) | VerifyError::Threshold { .. } => {
                RejectReason::BadSignature
            }
            VerifyError::Unsigned => RejectReason::Unsigned,
        }
    }
}

/// The most recent desired state an agent refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Rejection {
    pub reason: RejectReason,
    /// The generation the refused document claimed, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    pub detail: String,
    pub at: Timestamp,
}

/// Why an agent cannot write what it needs to; machine-readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum StorageReason {
    /// The file system of the agent's data directory has no room left.
    DiskFull,
}

/// A storage problem the agent is in. Every Status repeats it until it
/// clears (the agent retries on its own, so it clears when space returns).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StorageProblem {
    pub reason: StorageReason,
    /// What could not be written and how much room was missing.
    pub detail: String,
    /// When the agent first ran into it.
    pub since: Timestamp,
}

/// An agent's report of what it runs. Sent on every change and on reconnect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
    /// Present while the agent cannot write to its data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_problem: Option<StorageProblem>,
}

/// What happened, in a security [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum EventKind {
    /// A desired state was refused; the last good one keeps running.
    DesiredStateRejected,
    /// A trust bundle was refused; the trusted one stays.
    TrustBundleRejected,
    /// A newer trust bundle is trusted from now on.
    TrustBundleUpdated,
    /// A root-signed reset cleared the highest accepted generation.
    GenerationsReset,
    /// The node's client certificate could not be renewed and expires soon.
    CertificateRenewalFailing,
    /// One of the node's alarms is raised (`alarm` says which).
    AlarmRaised,
    /// One of the node's alarms has cleared (`alarm` says which).
    AlarmCleared,
}

impl EventKind {
    /// Its name on the wire (`desired_state_rejected`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DesiredStateRejected => "desired_state_rejected",
            EventKind::TrustBundleRejected => "trust_bundle_rejected",
            EventKind::TrustBundleUpdated => "trust_bundle_updated",
            EventKind::GenerationsReset => "generations_reset",
            EventKind::CertificateRenewalFailing => "certificate_renewal_failing",
            EventKind::AlarmRaised => "alarm_raised",
            EventKind::AlarmCleared => "alarm_cleared",
        }
    }
}

/// A security-relevant event, signed by the node and published through the
/// outbox on `{prefix}/events/{region}/{agent}` for the controller and any
/// consumer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Event {
    pub schema_version: u32,
    pub agent: AgentId,
    pub at: Timestamp,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    /// Which alarm, for `alarm_raised` and `alarm_cleared` (and only those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<crate::alarms::AlarmReport>,
    /// A person-readable explanation, at most [`limits::MAX_MESSAGE_BYTES`].
    pub detail: String,
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

    #[test]
    fn event_kinds_are_named_as_on_the_wire() {
        for kind in [
            EventKind::DesiredStateRejected,
            EventKind::TrustBundleRejected,
            EventKind::TrustBundleUpdated,
            EventKind::GenerationsReset,
            EventKind::CertificateRenewalFailing,
            EventKind::AlarmRaised,
            EventKind::AlarmCleared,
        ] {
            let wire = serde_json::to_value(kind).expect("json");
            assert_eq!(wire.as_str(), Some(kind.as_str()));
        }
    }

    fn workload(service: &str) -> Assignment {
        Assignment {
            service: ServiceName::new(service).expect("valid"),
            replica: 0,
            release: Sha256Digest::of(b"x"),
            rollback: false,
            config: BTreeMap::new(),
        }
    }

    /// A run spec under test, checked the way a release checks it.
    #[derive(Clone, Default)]
    struct W {
        run: RunSpec,
    }

    fn run_spec() -> W {
        W::default()
    }

    fn check(w: &W) -> Result<(), String> {
        w.run
            .validate()
            .map_err(|e| format!("workloads[0].run.{e}"))
    }

    fn desired(workloads: Vec<Assignment>) -> DesiredState {
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

        let mut w = run_spec();
        w.run.env.insert("1BAD".into(), "v".into());
        let err = check(&w).expect_err("bad env");
        assert!(err.starts_with("workloads[0].run.env.1BAD"), "{err}");

        let mut w = run_spec();
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
        let err = check(&w).expect_err("dup port");
        assert!(err.contains("ports[1].name"), "{err}");

        let mut a = workload("a");
        a.config.insert("lower".into(), "v".into());
        let err = desired(vec![a]).validate().expect_err("config key");
        assert!(err.starts_with("workloads[0].config.lower"), "{err}");

        let mut d = desired(vec![]);
        d.schema_version = 2;
        assert!(
            d.validate()
                .expect_err("schema")
                .starts_with("schema_version")
        );
    }

    #[test]
    fn supervision_fields_are_validated_with_their_names() {
        let mut w = run_spec();
        w.run.ports = vec![PortSpec {
            name: "http".into(),
            port: None,
        }];
        w.run.stop_grace_secs = Some(MAX_STOP_GRACE_SECS + 1);
        let err = check(&w).expect_err("grace");
        assert!(err.contains("run.stop_grace_secs"), "{err}");
        w.run.stop_grace_secs = Some(5);
        let health = |probe| HealthCheck {
            probe,
            interval_secs: 1,
            timeout_secs: 1,
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        };
        w.run.health = Some(health(Probe::Tcp {
            port: "admin".into(),
        }));
        let err = check(&w).expect_err("port");
        assert!(err.contains("run.health.probe.port"), "{err}");
        w.run.health = Some(health(Probe::Http {
            port: "http".into(),
            path: "/".into(),
            status_min: 400,
            status_max: 200,
        }));
        let err = check(&w).expect_err("range");
        assert!(err.contains("health.probe.status_min"), "{err}");
        w.run.health = Some(health(Probe::Exec { command: vec![] }));
        assert!(check(&w).is_err());
        w.run.health = Some(health(Probe::Exec {
            command: vec!["true".into()],
        }));
        assert_eq!(check(&w), Ok(()));
        // Defaults fill in what the JSON leaves out, and `always` is not written.
        let json = r#"{"probe": {"type": "http", "port": "http"}}"#;
        let parsed: HealthCheck = serde_json::from_str(json).expect("parse");
        assert_eq!(parsed.interval_secs, 10);
        assert!(matches!(
            parsed.probe,
            Probe::Http {
                status_max: 399,
                ..
            }
        ));
        let text = serde_json::to_string(&RunSpec::default()).expect("serialise");
        assert!(!text.contains("restart"), "{text}");
    }

    #[test]
    fn entrypoints_are_relative_paths_inside_the_archive() {
        let mut w = run_spec();
        for good in ["bin/app", "app", "a/b/c.sh"] {
            w.run.entrypoint = Some(good.into());
            assert_eq!(check(&w), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/bin/app",
            "../app",
            "bin/../../app",
            "bin//app",
            "./app",
            "bin/",
            "a\nb",
        ] {
            w.run.entrypoint = Some(bad.into());
            let err = check(&w).expect_err(bad);
            assert!(err.contains("run.entrypoint"), "{err}");
        }
        w.run.entrypoint = Some("a/".repeat(300) + "b");
        assert!(check(&w).is_err());
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
