//! Types every part of the app shares: settings, the messages exchanged
//! with the MQTT adapter, and the poison-tolerant lock. A leaf: it imports
//! nothing from the rest of `app`.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use verge_shared::Topics;

use crate::config::{
    AlarmsConfig, AuditConfig, DeployConfig, NodesConfig, PlacementConfig, WatchConfig,
};
use crate::regions::Regions;

/// Most replicas one service may ask for.
pub const MAX_REPLICAS: i64 = 100;

/// What the app needs to know from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub topics: Topics,
    pub deploy: DeployConfig,
    pub nodes: NodesConfig,
    pub placement: PlacementConfig,
    pub regions: Regions,
    pub max_artifact_bytes: u64,
    pub audit: AuditConfig,
    /// `GET /metrics` without a token.
    pub public_metrics: bool,
    pub watch: WatchConfig,
    /// A console session unused this long ends (`[console]`).
    pub console_idle_timeout: Duration,
    /// How much alarm history is kept (`[alarms]`).
    pub alarms: AlarmsConfig,
}

/// A message for the MQTT adapter to publish at QoS 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Kept by the broker for later subscribers (desired states, probe
    /// plans, raised alarms); not for log requests, cleared alarms and
    /// fleet events.
    pub retain: bool,
}

/// A message the MQTT adapter received.
#[derive(Clone, Debug)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
}

/// How an HTTPS request reached the API: the common name of the client
/// certificate the connection presented (verified, not revoked), if any.
/// Absent on plain HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpsClient {
    pub certificate_name: Option<String>,
}

/// Locks a std mutex; a panic elsewhere must not take the controller down with it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
