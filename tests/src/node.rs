//! A node without an agent process: its own key, and signed presence,
//! status and heartbeat documents, for tests and benchmarks that need many
//! nodes or many changes cheaply (and for the fleet simulator's agents,
//! `sim`). What the controller does with them is real.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use verge_shared::messages::{
    Heartbeat, Presence, Rejection, Resources, SCHEMA_VERSION, Status, WorkloadState,
    WorkloadStatus, payload_type,
};
use verge_shared::topic::{Channel, Topics};
use verge_shared::{
    AgentId, Generation, RegionId, ServiceName, Sha256Digest, SigningKey, Timestamp,
};

use crate::Cluster;
use crate::mqtt::TestClient;

/// A node's identity as it signs its reports.
pub struct FakeNode {
    pub id: String,
    pub region: String,
    labels: BTreeMap<String, String>,
    key: SigningKey,
}

impl FakeNode {
    pub fn new(id: &str, region: &str) -> Result<Self> {
        Ok(Self {
            id: id.to_owned(),
            region: region.to_owned(),
            labels: BTreeMap::new(),
            key: SigningKey::generate().context("key")?.0,
        })
    }

    /// The node with a label in its presence.
    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Announces the node online (its key is pinned at first contact).
    pub async fn announce(&self, mqtt: &TestClient) -> Result<()> {
        self.presence(mqtt, true).await
    }

    /// A signed presence saying the node is `online` or not (what an
    /// agent's Last Will says).
    pub async fn presence(&self, mqtt: &TestClient, online: bool) -> Result<()> {
        mqtt.publish(
            &self.topic(Channel::Presence)?,
            self.presence_payload(online)?,
        )
        .await
    }

    /// Reports one workload of `service` whose message is `message`: a
    /// status with news, so the controller records a `node` change.
    pub async fn report(&self, mqtt: &TestClient, service: &str, message: String) -> Result<()> {
        let workload = WorkloadStatus {
            message: Some(message),
            ..running(ServiceName::new(service)?, 0, Sha256Digest::of(b"fake"))
        };
        let payload = self.status_payload(None, vec![workload], None)?;
        mqtt.publish(&self.topic(Channel::Status)?, payload).await
    }

    /// The node's topic for `channel` under the default prefix.
    pub fn topic(&self, channel: Channel) -> Result<String> {
        Ok(Topics::default().agent(&AgentId::new(self.id.as_str())?, channel))
    }

    /// The signed presence document: `online`, or the offline one an
    /// agent leaves as its Last Will.
    pub fn presence_payload(&self, online: bool) -> Result<Vec<u8>> {
        let presence = Presence {
            schema_version: SCHEMA_VERSION,
            agent: AgentId::new(self.id.as_str())?,
            online,
            at: Timestamp::now(),
            region: RegionId::new(self.region.as_str())?,
            labels: self.labels.clone(),
            capacity: Resources {
                cpu_millis: 4000,
                memory_mb: 4096,
            },
            public_key: self.key.public_key(),
            version: "fake".into(),
            probe_addr: None,
            limits: None,
        };
        Ok(self.key.sign_json(payload_type::PRESENCE, &presence))
    }

    /// A signed heartbeat saying the node applied generation `applied`,
    /// at QoS 0 as an agent sends it.
    pub async fn heartbeat(&self, mqtt: &TestClient, applied: u64) -> Result<()> {
        let payload = self.heartbeat_payload(1, Some(Generation::new(applied)))?;
        mqtt.publish_at_most_once(&self.topic(Channel::Heartbeat)?, payload)
            .await
    }

    /// A signed status: `applied` (the generation acknowledged), what runs,
    /// and the last rejected desired state.
    pub fn status_payload(
        &self,
        applied: Option<Generation>,
        workloads: Vec<WorkloadStatus>,
        last_rejection: Option<Rejection>,
    ) -> Result<Vec<u8>> {
        let status = Status {
            schema_version: SCHEMA_VERSION,
            agent: AgentId::new(self.id.as_str())?,
            at: Timestamp::now(),
            applied_generation: applied,
            workloads,
            last_rejection,
            storage_problem: None,
        };
        Ok(self.key.sign_json(payload_type::STATUS, &status))
    }

    /// A signed heartbeat.
    pub fn heartbeat_payload(
        &self,
        uptime_secs: u64,
        applied: Option<Generation>,
    ) -> Result<Vec<u8>> {
        let heartbeat = Heartbeat {
            schema_version: SCHEMA_VERSION,
            agent: AgentId::new(self.id.as_str())?,
            at: Timestamp::now(),
            uptime_secs,
            applied_generation: applied,
        };
        Ok(self.key.sign_json(payload_type::HEARTBEAT, &heartbeat))
    }
}

/// A workload reported running with no pid, health or ports.
pub fn running(service: ServiceName, replica: u32, artifact: Sha256Digest) -> WorkloadStatus {
    WorkloadStatus {
        service,
        replica,
        artifact,
        state: WorkloadState::Running,
        pid: None,
        restarts: 0,
        ports: Default::default(),
        message: None,
        health: None,
        last_exit: None,
        isolation: None,
    }
}

/// How many nodes the controller's registry holds (from the regions view).
pub async fn n_nodes(cluster: &Cluster) -> Result<u64> {
    let regions = cluster.api.get("/api/v1/regions").await?;
    Ok(regions["regions"]
        .as_array()
        .context("regions")?
        .iter()
        .filter_map(|r| r["nodes"].as_u64())
        .sum())
}

/// Waits (at most a minute) until the registry holds `n` nodes.
pub async fn registered(cluster: &Cluster, n: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = n_nodes(cluster).await?;
        if seen >= n {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{seen} of the {n} nodes announced so far registered within a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
