//! What the controller stores: the records, their errors, and the [`Store`]
//! contract every implementation keeps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use verge_shared::alarms::{Alarm, AlarmId, Entity};
use verge_shared::messages::{Assignment, LimitMechanism, Resources, Status, Workload};
use verge_shared::trust::Release;
use verge_shared::{
    AgentId, Envelope, Generation, PublicKey, RegionId, ServiceName, Sha256Digest, Timestamp,
};

/// What a failed store operation was about.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O failed: {0}")]
    Sled(#[from] sled::Error),
    /// A [`MemoryStore`](super::MemoryStore) told to refuse writes.
    #[error("the store refused the write to {tree}")]
    Refused { tree: &'static str },
    #[error("stored record {key:?} in {tree} is unreadable: {detail}")]
    Corrupt {
        tree: &'static str,
        key: String,
        detail: String,
    },
}

/// A service as the operator declared it (validated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceSpec {
    /// The signed digest of the release every replica runs.
    pub release: Sha256Digest,
    pub replicas: u32,
    pub regions: Vec<RegionId>,
    /// An operator rollback to an older release version than replicas run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
    /// Per-agent settings (`VERGE_CONFIG_<KEY>` in the workload).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Latency target, spread and priority.
    #[serde(default)]
    pub placement: PlacementSpec,
}

/// Where and how a service's replicas are placed (validated).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[derive(utoipa::ToSchema)]
pub struct PlacementSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySpec>,
    /// Replicas per region of `latency.to`; the spec's `replicas` is then
    /// this times the number of those regions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas_per_region: Option<u32>,
    pub spread: SpreadSpec,
    /// Higher places first.
    pub priority: u32,
}

/// "Within `max_ms` of every region in `to`, at `percentile`."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LatencySpec {
    pub to: Vec<RegionId>,
    pub max_ms: u32,
    /// 50, 90 or 99.
    pub percentile: u8,
}

/// How replicas are spread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
pub enum SpreadSpec {
    #[default]
    Zone,
    Node,
}

/// An operator's hold on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
pub enum Cordon {
    /// Takes no new replicas, keeps what it runs.
    Cordoned,
    /// Takes no replicas; what it ran is placed elsewhere.
    Drained,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub name: ServiceName,
    pub spec: ServiceSpec,
    /// The release `spec.release` names, as verified when the spec was stored.
    pub release: Release,
    /// Grows by one whenever the spec changes.
    pub revision: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The registry entry of one node (edge agent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: AgentId,
    pub region: RegionId,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    /// Pinned at first contact; every later message must verify with it.
    pub public_key: PublicKey,
    pub version: String,
    pub online: bool,
    /// When the node was last reported offline; `None` while online.
    pub offline_since: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    pub applied_generation: Option<Generation>,
    pub last_status: Option<Status>,
    /// Set by the operator (cordon, drain), cleared by uncordon.
    #[serde(default)]
    pub cordon: Option<Cordon>,
    /// Where the node's probe listener answers, from its presence.
    #[serde(default)]
    pub probe_addr: Option<std::net::SocketAddr>,
    /// How the node enforces workload limits, from its presence.
    #[serde(default)]
    pub limits: Option<LimitMechanism>,
    /// Revoked by an operator: placed nothing, heard from no more, until it
    /// enrolls again with a new token.
    #[serde(default)]
    pub revoked: bool,
}

/// A bootstrap token, kept only as the SHA-256 of its text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub sha256: Sha256Digest,
    pub region: RegionId,
    pub uses_left: u32,
    pub expires_at: Timestamp,
    pub created_at: Timestamp,
    pub revoked: bool,
}

/// What an operator account or API token may do; each role includes the
/// ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
pub enum Role {
    /// Reads everything except secrets.
    Viewer,
    /// Services, releases, artifacts, cordon and drain, tokens.
    Operator,
    /// Users, the trust bundle, revocation: everything.
    Admin,
}

/// An operator account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub role: Role,
    /// The argon2id hash in PHC string form; `None` until a password is set
    /// (the bootstrap `admin` account signs in with the admin token).
    pub password: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A named API token of one user, kept only as the SHA-256 of its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    pub id: String,
    pub user: String,
    pub name: String,
    /// At most the user's role; the lower of the two applies.
    pub role: Role,
    pub sha256: Sha256Digest,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// One entry of the audit log: a mutation, or a refused authentication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Grows by one per entry; the log's order.
    pub seq: u64,
    pub at: Timestamp,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// What an audit entry says about its request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// The user, when the request was authenticated (or the name a sign-in
    /// was for).
    pub actor: Option<String>,
    /// The API token's name (`admin-token` for the bootstrap token).
    pub token: Option<String>,
    pub role: Option<Role>,
    /// The client's IP address.
    pub source: Option<String>,
    pub method: String,
    /// The route pattern, e.g. `/api/v1/services/{name}`.
    pub route: String,
    /// The path below `/api/v1/`, e.g. `services/web`.
    pub target: String,
    pub status: u16,
    /// The API error code when the request failed.
    pub error: Option<String>,
}

/// A client certificate issued to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// Lower-case hex of the serial number.
    pub serial: String,
    pub not_after: Timestamp,
}

/// An enrolled node's identity: its pinned node key and its certificates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub agent: AgentId,
    pub public_key: PublicKey,
    pub region: RegionId,
    pub enrolled_at: Timestamp,
    /// Certificates not yet long expired, oldest first; the last is current.
    pub certificates: Vec<IssuedCert>,
    /// Set by revocation, cleared by a new enrollment.
    pub revoked_at: Option<Timestamp>,
    /// Serials revoked and not yet expired, kept across re-enrollment so
    /// that an old certificate stays refused (and listed in the CRL).
    #[serde(default)]
    pub revoked_serials: Vec<IssuedCert>,
}

/// A read-only consumer identity (docs/consumers.md, "Credentials").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerRecord {
    /// Its name: letters, digits, `-`, `_`, `.`; the broker user name is
    /// `consumer+<name>`.
    pub name: String,
    /// The regions it may read; empty for every region.
    pub regions: Vec<RegionId>,
    /// Its live credential; `None` once deleted.
    pub credential: Option<ConsumerCredential>,
    pub created_at: Timestamp,
    /// Certificates revoked and not yet expired (listed in the CRL), kept
    /// when the name is issued again.
    #[serde(default)]
    pub revoked_serials: Vec<IssuedCert>,
}

/// How a consumer proves who it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerCredential {
    /// A client certificate from the controller's CA.
    Certificate(IssuedCert),
    /// A password, kept only as Mosquitto's `$7$` PBKDF2-SHA512 hash.
    Password { hash: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub sha256: Sha256Digest,
    pub size: u64,
    pub created_at: Timestamp,
}

/// A publisher-signed release the controller accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// The envelope's signed digest: how desired states name it.
    pub digest: Sha256Digest,
    pub envelope: Envelope,
    pub release: Release,
    /// The name of the publisher whose key signed it, from the trust bundle.
    pub publisher: String,
    pub created_at: Timestamp,
}

/// The signed desired state last issued to one agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRecord {
    pub agent: AgentId,
    pub generation: Generation,
    /// The exact envelope JSON of the signed desired state.
    pub envelope: Vec<u8>,
    /// What was signed: releases by digest.
    pub assignments: Vec<Assignment>,
    /// What the agent runs once it resolves those releases.
    pub workloads: Vec<Workload>,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
}

/// Who suppressed an alarm id, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Suppression {
    /// The user and token name (`alice (token ci)`).
    pub by: String,
    pub at: Timestamp,
}

/// What the alarms keep beside the alarms themselves: the last instance
/// number given out (it only grows, across restarts) and the suppressed
/// alarm ids.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmMeta {
    pub last_instance: u64,
    #[serde(default)]
    pub suppressed: BTreeMap<AlarmId, Suppression>,
}

/// Whether a write must reach the disk before the call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    Flush,
    Lazy,
}

/// The controller's persistent state. Implementations are synchronous and
/// cheap enough to call from async code for single records.
pub trait Store: Send + Sync {
    fn services(&self) -> Result<Vec<ServiceRecord>, StoreError>;
    fn service(&self, name: &ServiceName) -> Result<Option<ServiceRecord>, StoreError>;
    /// Durable.
    fn put_service(&self, record: &ServiceRecord) -> Result<(), StoreError>;
    /// Durable; `false` when there was no such service.
    fn delete_service(&self, name: &ServiceName) -> Result<bool, StoreError>;

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    fn put_node(&self, record: &NodeRecord, durability: Durability) -> Result<(), StoreError>;

    fn artifact(&self, digest: &Sha256Digest) -> Result<Option<ArtifactRecord>, StoreError>;
    /// Durable.
    fn put_artifact(&self, record: &ArtifactRecord) -> Result<(), StoreError>;

    fn releases(&self) -> Result<Vec<ReleaseRecord>, StoreError>;
    fn release(&self, digest: &Sha256Digest) -> Result<Option<ReleaseRecord>, StoreError>;
    /// Durable.
    fn put_release(&self, record: &ReleaseRecord) -> Result<(), StoreError>;

    fn desired_states(&self) -> Result<Vec<DesiredRecord>, StoreError>;
    fn desired_state(&self, agent: &AgentId) -> Result<Option<DesiredRecord>, StoreError>;
    /// Durable: a desired state is stored before it is published.
    fn put_desired(&self, record: &DesiredRecord) -> Result<(), StoreError>;

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Durable: a spent use must not come back after a crash.
    fn put_token(&self, record: &TokenRecord) -> Result<(), StoreError>;

    fn users(&self) -> Result<Vec<UserRecord>, StoreError>;
    fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Durable.
    fn put_user(&self, record: &UserRecord) -> Result<(), StoreError>;
    /// Durable; `false` when there was no such user.
    fn delete_user(&self, name: &str) -> Result<bool, StoreError>;

    fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError>;
    fn api_token(&self, id: &str) -> Result<Option<ApiTokenRecord>, StoreError>;
    /// Durable: a revocation must not come undone after a crash.
    fn put_api_token(&self, record: &ApiTokenRecord) -> Result<(), StoreError>;
    /// Durable.
    fn delete_api_token(&self, id: &str) -> Result<(), StoreError>;

    /// Appends one entry (written lazily: sled flushes it within half a
    /// second).
    fn put_audit(&self, record: &AuditRecord) -> Result<(), StoreError>;
    /// Up to `max` entries with `seq` below `before` (all when `None`),
    /// newest first.
    fn audit_before(&self, before: Option<u64>, max: usize)
    -> Result<Vec<AuditRecord>, StoreError>;
    /// Up to `max` of the oldest entries, oldest first.
    fn audit_oldest(&self, max: usize) -> Result<Vec<AuditRecord>, StoreError>;
    /// The `seq` of the newest entry.
    fn audit_last_seq(&self) -> Result<Option<u64>, StoreError>;
    /// Removes every entry with `seq` up to and including `through`.
    fn delete_audit_through(&self, through: u64) -> Result<(), StoreError>;

    /// Bytes the store takes on disk (0 in memory).
    fn size_on_disk(&self) -> Result<u64, StoreError>;

    fn identities(&self) -> Result<Vec<IdentityRecord>, StoreError>;
    fn identity(&self, agent: &AgentId) -> Result<Option<IdentityRecord>, StoreError>;
    /// Durable.
    fn put_identity(&self, record: &IdentityRecord) -> Result<(), StoreError>;

    /// Every active (raised) alarm, in (id, entity) order.
    fn active_alarms(&self) -> Result<Vec<Alarm>, StoreError>;
    /// Durable: keyed by (id, entity), replacing the one there.
    fn put_active_alarm(&self, alarm: &Alarm) -> Result<(), StoreError>;
    /// Durable.
    fn delete_active_alarm(&self, id: AlarmId, entity: &Entity) -> Result<(), StoreError>;
    /// Cleared alarms kept for the history, oldest (lowest instance) first.
    fn alarm_history(&self) -> Result<Vec<Alarm>, StoreError>;
    /// Appends a cleared alarm to the history (written lazily).
    fn put_alarm_history(&self, alarm: &Alarm) -> Result<(), StoreError>;
    /// Removes every history entry with an instance up to and including `through`.
    fn delete_alarm_history_through(&self, through: u64) -> Result<(), StoreError>;
    fn alarm_meta(&self) -> Result<AlarmMeta, StoreError>;
    /// Durable: an instance number must never be given out twice.
    fn put_alarm_meta(&self, meta: &AlarmMeta) -> Result<(), StoreError>;
    /// Every consumer, deleted ones (kept for their revoked serials) too.
    fn consumers(&self) -> Result<Vec<ConsumerRecord>, StoreError>;
    /// Durable.
    fn put_consumer(&self, record: &ConsumerRecord) -> Result<(), StoreError>;
}
