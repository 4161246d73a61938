//! Nodes without agent processes: signed presence messages, for tests and
//! benchmarks that need a large registry rather than running workloads.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use verge_shared::messages::{Presence, Resources, SCHEMA_VERSION, payload_type};
use verge_shared::{AgentId, RegionId, SigningKey, Timestamp};

use crate::Cluster;
use crate::mqtt::TestClient;

/// Publishes a presence for `id` in `region` (with the label `tier`),
/// signed by `key`; `online: false` is what an agent's Last Will says.
pub async fn announce(
    mqtt: &TestClient,
    key: &SigningKey,
    id: &str,
    region: &str,
    tier: &str,
    online: bool,
) -> Result<()> {
    let presence = Presence {
        schema_version: SCHEMA_VERSION,
        agent: AgentId::new(id)?,
        online,
        at: Timestamp::now(),
        region: RegionId::new(region)?,
        labels: [("tier".to_owned(), tier.to_owned())].into_iter().collect(),
        capacity: Resources {
            cpu_millis: 4000,
            memory_mb: 4096,
        },
        public_key: key.public_key(),
        version: "simulated".into(),
        probe_addr: None,
        limits: None,
    };
    let payload = key.sign_json(payload_type::PRESENCE, &presence);
    mqtt.publish(&format!("verge/v1/agents/{id}/presence"), payload)
        .await
}

/// A new node key.
pub fn node_key() -> Result<SigningKey> {
    Ok(SigningKey::generate().context("node key")?.0)
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
