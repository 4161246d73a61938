//! A node without an agent process: its own key, and signed presence and
//! status documents, for tests and benchmarks that need many nodes or many
//! changes cheaply. What the controller does with them is real.

use anyhow::{Context, Result};
use verge_shared::messages::{
    Presence, Resources, SCHEMA_VERSION, Status, WorkloadState, WorkloadStatus, payload_type,
};
use verge_shared::{AgentId, RegionId, ServiceName, Sha256Digest, SigningKey, Timestamp};

use crate::mqtt::TestClient;

/// A node's identity as it signs its reports.
pub struct FakeNode {
    pub id: String,
    pub region: String,
    key: SigningKey,
}

impl FakeNode {
    pub fn new(id: &str, region: &str) -> Result<Self> {
        Ok(Self {
            id: id.to_owned(),
            region: region.to_owned(),
            key: SigningKey::generate().context("key")?.0,
        })
    }

    /// Announces the node online (its key is pinned at first contact).
    pub async fn announce(&self, mqtt: &TestClient) -> Result<()> {
        let presence = Presence {
            schema_version: SCHEMA_VERSION,
            agent: AgentId::new(self.id.as_str())?,
            online: true,
            at: Timestamp::now(),
            region: RegionId::new(self.region.as_str())?,
            labels: Default::default(),
            capacity: Resources {
                cpu_millis: 4000,
                memory_mb: 4096,
            },
            public_key: self.key.public_key(),
            version: "fake".into(),
            probe_addr: None,
            limits: None,
        };
        let payload = self.key.sign_json(payload_type::PRESENCE, &presence);
        mqtt.publish(&format!("verge/v1/agents/{}/presence", self.id), payload)
            .await
    }

    /// Reports one workload of `service` whose message is `message`: a
    /// status with news, so the controller records a `node` change.
    pub async fn report(&self, mqtt: &TestClient, service: &str, message: String) -> Result<()> {
        let status = Status {
            schema_version: SCHEMA_VERSION,
            agent: AgentId::new(self.id.as_str())?,
            at: Timestamp::now(),
            applied_generation: None,
            workloads: vec![WorkloadStatus {
                service: ServiceName::new(service)?,
                replica: 0,
                artifact: Sha256Digest::of(b"fake"),
                state: WorkloadState::Running,
                pid: None,
                restarts: 0,
                ports: Default::default(),
                message: Some(message),
                health: None,
                last_exit: None,
                isolation: None,
            }],
            last_rejection: None,
            storage_problem: None,
        };
        let payload = self.key.sign_json(payload_type::STATUS, &status);
        mqtt.publish(&format!("verge/v1/agents/{}/status", self.id), payload)
            .await
    }
}
