//! Alarms, in the manner of StarlingX fault management: a fixed catalogue
//! (id, code, title, severity, entity type, probable cause, repair action),
//! the entity an alarm is about, what agents report and what the
//! controller publishes, and the [`Debounce`] rule both sides use so a
//! flapping condition does not storm.
//!
//! Who observes a condition raises and clears it. An agent reports its own
//! alarms as signed [`Event`](crate::messages::Event)s of kind
//! `alarm_raised` / `alarm_cleared` through its outbox; the controller
//! verifies them, adds its own fleet-level alarms, keeps one [`Alarm`] per
//! (alarm id, entity) and publishes it retained on
//! [`Topics::alarm`](crate::topic::Topics::alarm) while it is raised.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{AgentId, RegionId, ServiceName};
use crate::time::Timestamp;

/// The version of the [`Alarm`] document.
pub const ALARM_SCHEMA_VERSION: u32 = 1;

/// How urgent an alarm is, most urgent first (ITU X.733, as StarlingX).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Severity {
    Critical,
    Major,
    Minor,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Major => "major",
            Severity::Minor => "minor",
            Severity::Warning => "warning",
        }
    }
}

/// What kind of thing an alarm is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum EntityType {
    /// An edge node (`node=edge-1`).
    Node,
    /// One service's workload on one node (`node=edge-1,service=web`).
    Workload,
    /// One replica of a service (`service=web,replica=2`).
    Replica,
    /// The central controller (`controller`).
    Controller,
}

/// Which side watches for a condition and raises its alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Observer {
    Agent,
    Controller,
}

/// One entry of the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Definition {
    pub id: AlarmId,
    /// A stable numeric code (`300.001`): the first part groups the alarms
    /// of one area (100 node, 200 workload, 300 security, 400 placement,
    /// 500 controller).
    pub code: &'static str,
    pub title: &'static str,
    pub severity: Severity,
    pub entity_type: EntityType,
    pub observer: Observer,
    pub probable_cause: &'static str,
    pub repair: &'static str,
    /// How long the condition must hold before the alarm is raised.
    pub raise_after_secs: u64,
    /// How long the condition must be absent before a raised alarm clears.
    pub clear_after_secs: u64,
}

macro_rules! catalogue {
    ($($variant:ident = $wire:literal { $($field:ident: $value:expr),* $(,)? })*) => {
        /// An alarm of the catalogue (docs/alarms.md).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        pub enum AlarmId {
            $($variant,)*
        }

        impl AlarmId {
            /// Every alarm, in catalogue order.
            pub const ALL: &'static [AlarmId] = &[$(AlarmId::$variant,)*];

            /// Its name on the wire and in topics (`node_offline`, ...).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(AlarmId::$variant => $wire,)*
                }
            }

            /// Its entry in the catalogue.
            pub fn definition(self) -> &'static Definition {
                match self {
                    $(AlarmId::$variant => &Definition { id: AlarmId::$variant, $($field: $value),* },)*
                }
            }
        }
    };
}

catalogue! {
    NodeOffline = "node_offline" {
        code: "100.001",
        title: "Node offline",
        severity: Severity::Major,
        entity_type: EntityType::Node,
        observer: Observer::Controller,
        probable_cause: "The node stopped sending heartbeats or its Last Will was published: power, network or agent failure.",
        repair: "Check the node's power and network, then `systemctl status verge-agent` on it. Its replicas move elsewhere after failover_grace_secs.",
        raise_after_secs: 0,
        clear_after_secs: 0,
    }
    NodeClockSkewed = "node_clock_skewed" {
        code: "100.002",
        title: "Node clock skewed",
        severity: Severity::Minor,
        entity_type: EntityType::Node,
        observer: Observer::Controller,
        probable_cause: "The node's clock differs from the controller's by more than 30 s; signed documents may look expired or not yet valid to it.",
        repair: "Enable time synchronisation on the node (chrony or systemd-timesyncd) and check that it reaches its NTP servers.",
        raise_after_secs: 60,
        clear_after_secs: 60,
    }
    DiskLow = "disk_low" {
        code: "100.003",
        title: "Disk space low",
        severity: Severity::Warning,
        entity_type: EntityType::Node,
        observer: Observer::Agent,
        probable_cause: "Less than 10% of the filesystem holding the agent's data directory is free.",
        repair: "Free space on the node: old logs, unused files, or lower the artifact cache quota (cache_quota_bytes).",
        raise_after_secs: 60,
        clear_after_secs: 300,
    }
    DiskFull = "disk_full" {
        code: "100.004",
        title: "Disk full",
        severity: Severity::Critical,
        entity_type: EntityType::Node,
        observer: Observer::Agent,
        probable_cause: "Less than 2% of the data directory's filesystem is free, or the agent cannot write to it: desired states and reports cannot be saved.",
        repair: "Free space on the node at once; the agent keeps running what it has but cannot accept changes until it can write.",
        raise_after_secs: 0,
        clear_after_secs: 60,
    }
    OutboxDropping = "outbox_dropping" {
        code: "100.005",
        title: "Reports dropped",
        severity: Severity::Major,
        entity_type: EntityType::Node,
        observer: Observer::Agent,
        probable_cause: "The agent's outbox reached outbox_quota_bytes while the broker was out of reach and dropped its oldest reports.",
        repair: "Restore the node's connection to the broker; raise outbox_quota_bytes if outages this long are expected.",
        raise_after_secs: 0,
        clear_after_secs: 600,
    }
    WorkloadCrashLoop = "workload_crash_loop" {
        code: "200.001",
        title: "Workload crash loop",
        severity: Severity::Major,
        entity_type: EntityType::Workload,
        observer: Observer::Agent,
        probable_cause: "The workload exited again and again shortly after each start; the agent restarts it with a growing backoff.",
        repair: "Read its log (`verge logs <service>`); fix the release or its configuration and apply a new one.",
        raise_after_secs: 0,
        clear_after_secs: 60,
    }
    WorkloadUnhealthy = "workload_unhealthy" {
        code: "200.002",
        title: "Workload unhealthy",
        severity: Severity::Minor,
        entity_type: EntityType::Workload,
        observer: Observer::Agent,
        probable_cause: "The workload runs but its health check has failed for 30 s.",
        repair: "Read its log and check what the health check probes (port, path, command).",
        raise_after_secs: 30,
        clear_after_secs: 30,
    }
    DesiredStateRefused = "desired_state_refused" {
        code: "300.001",
        title: "Desired state refused",
        severity: Severity::Critical,
        entity_type: EntityType::Node,
        observer: Observer::Agent,
        probable_cause: "The node refused a desired state (bad signature, wrong agent, old generation, expired, unknown release): a fault or an attack. The last good state keeps running.",
        repair: "Read the event's reason. A signature or key problem means checking the trust bundle and the controller's key; an old generation after a restore needs a root-signed generation reset.",
        raise_after_secs: 0,
        clear_after_secs: 0,
    }
    TrustBundleRefused = "trust_bundle_refused" {
        code: "300.002",
        title: "Trust bundle refused",
        severity: Severity::Critical,
        entity_type: EntityType::Node,
        observer: Observer::Agent,
        probable_cause: "The node refused a trust bundle (too few root signatures, an older version, expired): a fault or an attack. The trusted bundle stays.",
        repair: "Check the bundle's version and signatures with `verge-admin verify`; install a bundle signed by the threshold of current root keys.",
        raise_after_secs: 0,
        clear_after_secs: 0,
    }
    TrustBundleExpiring = "trust_bundle_expiring" {
        code: "300.003",
        title: "Trust bundle expiring",
        severity: Severity::Major,
        entity_type: EntityType::Node,
        observer: Observer::Agent,
        probable_cause: "The node's trust bundle expires within 30 days; after that it refuses every desired state.",
        repair: "Sign and install a new bundle version (docs/operators/keys.md).",
        raise_after_secs: 0,
        clear_after_secs: 0,
    }
    CertificateRenewalFailing = "certificate_renewal_failing" {
        code: "300.004",
        title: "Certificate renewal failing",
        severity: Severity::Minor,
        entity_type: EntityType::Node,
        observer: Observer::Agent,
        probable_cause: "The node could not renew its client certificate; it retries with a backoff.",
        repair: "Check that the node reaches the controller's API and that it was not revoked.",
        raise_after_secs: 0,
        clear_after_secs: 0,
    }
    CertificateExpiring = "certificate_expiring" {
        code: "300.005",
        title: "Node certificate expiring",
        severity: Severity::Major,
        entity_type: EntityType::Node,
        observer: Observer::Agent,
        probable_cause: "The node's client certificate expires within 7 days (or a sixth of its lifetime, if shorter) and has not been renewed; after that it cannot connect.",
        repair: "Restore the node's access to the controller's API so renewal succeeds, or enroll it again with a new token.",
        raise_after_secs: 0,
        clear_after_secs: 0,
    }
    ReplicaUnplaced = "replica_unplaced" {
        code: "400.001",
        title: "Replica unplaced",
        severity: Severity::Major,
        entity_type: EntityType::Replica,
        observer: Observer::Controller,
        probable_cause: "No eligible node can take the replica (region, latency target, capacity, cordons); the reason is in the alarm.",
        repair: "Read the reason: add or uncordon nodes in the region, relax the latency target, or lower the replica count.",
        raise_after_secs: 30,
        clear_after_secs: 0,
    }
    LatencyTargetViolated = "latency_target_violated" {
        code: "400.002",
        title: "Latency target violated",
        severity: Severity::Minor,
        entity_type: EntityType::Replica,
        observer: Observer::Controller,
        probable_cause: "The replica's node has measured a latency above the service's target for 5 minutes.",
        repair: "Check the network between the node and the region's users; add nodes nearer to them.",
        raise_after_secs: 300,
        clear_after_secs: 120,
    }
    ControllerCertificateExpiring = "controller_certificate_expiring" {
        code: "500.001",
        title: "Controller certificate expiring",
        severity: Severity::Major,
        entity_type: EntityType::Controller,
        observer: Observer::Controller,
        probable_cause: "The controller's CA or server certificate expires within 30 days.",
        repair: "Renew it as docs/operators/install.md describes before it expires; nodes cannot connect afterwards.",
        raise_after_secs: 0,
        clear_after_secs: 0,
    }
    ControllerBrokerLost = "controller_broker_lost" {
        code: "500.002",
        title: "Controller lost its broker",
        severity: Severity::Critical,
        entity_type: EntityType::Controller,
        observer: Observer::Controller,
        probable_cause: "The controller has not been connected to the MQTT broker for 30 s: no desired state reaches a node and no report arrives.",
        repair: "Check the broker (`systemctl status mosquitto`), its address in controller.toml and the controller's log.",
        raise_after_secs: 30,
        clear_after_secs: 0,
    }
}

impl fmt::Display for AlarmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AlarmId {
    type Err = UnknownAlarm;
    fn from_str(s: &str) -> Result<Self, UnknownAlarm> {
        AlarmId::ALL
            .iter()
            .copied()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownAlarm(s.chars().take(80).collect()))
    }
}

/// A name that is not in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown alarm {0:?}; see docs/alarms.md for the catalogue")]
pub struct UnknownAlarm(pub String);

/// What an alarm is about. Which fields are set follows the alarm's
/// [`EntityType`]; [`Entity::instance`] writes it as StarlingX writes an
/// entity instance id (`node=edge-1,service=web`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Entity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u32>,
}

impl Entity {
    pub fn node(node: AgentId) -> Self {
        Self {
            node: Some(node),
            ..Self::default()
        }
    }

    pub fn workload(node: AgentId, service: ServiceName) -> Self {
        Self {
            node: Some(node),
            service: Some(service),
            replica: None,
        }
    }

    pub fn replica(service: ServiceName, replica: u32) -> Self {
        Self {
            node: None,
            service: Some(service),
            replica: Some(replica),
        }
    }

    pub fn controller() -> Self {
        Self::default()
    }

    /// The entity as one topic segment: `node=edge-1`,
    /// `node=edge-1,service=web`, `service=web,replica=2`, or `controller`.
    pub fn instance(&self) -> String {
        let mut parts = Vec::new();
        if let Some(node) = &self.node {
            parts.push(format!("node={node}"));
        }
        if let Some(service) = &self.service {
            parts.push(format!("service={service}"));
        }
        if let Some(replica) = self.replica {
            parts.push(format!("replica={replica}"));
        }
        if parts.is_empty() {
            "controller".to_owned()
        } else {
            parts.join(",")
        }
    }

    /// Whether the fields set are the ones `entity_type` needs.
    pub fn fits(&self, entity_type: EntityType) -> bool {
        let shape = (
            self.node.is_some(),
            self.service.is_some(),
            self.replica.is_some(),
        );
        shape
            == match entity_type {
                EntityType::Node => (true, false, false),
                EntityType::Workload => (true, true, false),
                EntityType::Replica => (false, true, true),
                EntityType::Controller => (false, false, false),
            }
    }
}

/// Raised or cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum AlarmState {
    Raised,
    Cleared,
}

/// What an agent says about one of its alarms, inside a signed event of
/// kind `alarm_raised` or `alarm_cleared`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AlarmReport {
    pub id: AlarmId,
    pub entity: Entity,
}

/// Who acknowledged an alarm, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Acknowledgement {
    /// The user (and token name) who acknowledged it.
    pub by: String,
    pub at: Timestamp,
}

/// One alarm as the controller keeps and publishes it: retained on its
/// topic while raised, published once more (not retained) when it clears.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Alarm {
    pub schema_version: u32,
    /// Unique per raise: grows with every alarm the controller raises.
    pub instance: u64,
    pub id: AlarmId,
    /// The catalogue's code, title and severity, repeated so that a
    /// consumer needs no copy of the catalogue.
    pub code: String,
    pub title: String,
    pub severity: Severity,
    pub entity_type: EntityType,
    pub entity: Entity,
    /// [`Entity::instance`], as in the topic.
    pub entity_instance: String,
    /// The node's region for node and workload alarms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<RegionId>,
    pub state: AlarmState,
    pub observer: Observer,
    pub raised_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<Timestamp>,
    /// What the observer said at the latest raise, at most
    /// [`MAX_MESSAGE_BYTES`](crate::limits::MAX_MESSAGE_BYTES).
    pub reason: String,
    pub probable_cause: String,
    pub repair: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<Acknowledgement>,
    /// Set while an operator suppresses this alarm id: still kept and
    /// listed, but not published on MQTT.
    #[serde(default)]
    pub suppressed: bool,
}

/// What [`Debounce::observe`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Raise,
    Clear,
}

/// Hysteresis for one (alarm, entity): raise once the condition has held
/// for `raise_after`, clear once it has been absent for `clear_after`; a
/// condition that flickers inside either window changes nothing. Pure:
/// the caller passes the time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Debounce {
    raised: bool,
    /// Since when the observed condition disagrees with `raised`.
    pending_since: Option<Timestamp>,
}

impl Debounce {
    /// One whose alarm is already raised (kept across a restart): the
    /// condition must now be absent for the clear hold.
    pub fn raised() -> Self {
        Self {
            raised: true,
            pending_since: None,
        }
    }

    pub fn is_raised(&self) -> bool {
        self.raised
    }

    /// Feeds one observation; returns a transition when one is due.
    pub fn observe(
        &mut self,
        definition: &Definition,
        condition: bool,
        now: Timestamp,
    ) -> Option<Transition> {
        if condition == self.raised {
            self.pending_since = None;
            return None;
        }
        let since = *self.pending_since.get_or_insert(now);
        let hold_secs = if condition {
            definition.raise_after_secs
        } else {
            definition.clear_after_secs
        };
        if now.unix_millis().saturating_sub(since.unix_millis()) < hold_secs * 1000 {
            return None;
        }
        self.raised = condition;
        self.pending_since = None;
        Some(if condition {
            Transition::Raise
        } else {
            Transition::Clear
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_millis(secs * 1000)
    }

    #[test]
    fn the_catalogue_is_consistent() {
        let mut codes = std::collections::BTreeSet::new();
        for &id in AlarmId::ALL {
            let d = id.definition();
            assert_eq!(d.id, id, "{id}");
            assert!(codes.insert(d.code), "code {} is used twice", d.code);
            assert_eq!(
                serde_json::to_value(id).expect("json").as_str(),
                Some(id.as_str())
            );
            assert_eq!(id.as_str().parse::<AlarmId>(), Ok(id));
            assert!(!d.title.is_empty() && !d.probable_cause.is_empty() && !d.repair.is_empty());
        }
        assert!("no_such_alarm".parse::<AlarmId>().is_err());
    }

    #[test]
    fn entity_instances_are_single_topic_segments() {
        let node = AgentId::new("edge-1.lab").expect("id");
        let web = ServiceName::new("web").expect("name");
        let cases = [
            (
                Entity::node(node.clone()),
                EntityType::Node,
                "node=edge-1.lab",
            ),
            (
                Entity::workload(node, web.clone()),
                EntityType::Workload,
                "node=edge-1.lab,service=web",
            ),
            (
                Entity::replica(web, 2),
                EntityType::Replica,
                "service=web,replica=2",
            ),
            (Entity::controller(), EntityType::Controller, "controller"),
        ];
        for (entity, kind, instance) in cases {
            assert_eq!(entity.instance(), instance);
            assert!(entity.fits(kind), "{instance}");
            assert!(!instance.contains(['/', '+', '#']));
        }
        assert!(!Entity::controller().fits(EntityType::Node));
    }

    #[test]
    fn debounce_raises_after_the_hold_and_ignores_flicker() {
        let d = AlarmId::WorkloadUnhealthy.definition(); // 30 s either way
        let mut b = Debounce::default();
        assert_eq!(b.observe(d, true, at(0)), None);
        assert_eq!(b.observe(d, false, at(10)), None, "a flicker resets");
        assert_eq!(b.observe(d, true, at(20)), None);
        assert_eq!(b.observe(d, true, at(49)), None);
        assert_eq!(b.observe(d, true, at(50)), Some(Transition::Raise));
        assert!(b.is_raised());
        assert_eq!(b.observe(d, true, at(60)), None, "raised once");
        assert_eq!(b.observe(d, false, at(70)), None);
        assert_eq!(
            b.observe(d, true, at(80)),
            None,
            "back before the clear hold"
        );
        assert_eq!(b.observe(d, false, at(90)), None);
        assert_eq!(b.observe(d, false, at(120)), Some(Transition::Clear));
        assert!(!b.is_raised());
    }

    #[test]
    fn debounce_without_holds_follows_at_once() {
        let d = AlarmId::NodeOffline.definition();
        let mut b = Debounce::default();
        assert_eq!(b.observe(d, true, at(1)), Some(Transition::Raise));
        assert_eq!(b.observe(d, false, at(1)), Some(Transition::Clear));
    }
}
