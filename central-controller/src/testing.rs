//! Test fixtures: a real app over a sled store in a temporary directory, and
//! signed agent messages.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use verge_shared::messages::{Presence, Resources, SCHEMA_VERSION, payload_type};
use verge_shared::{AgentId, RegionId, SigningKey, Timestamp, Topics};

use crate::app::{App, Outgoing, Settings};
use crate::artifacts::ArtifactFiles;
use crate::config::{DeployConfig, NodesConfig};
use crate::store::SledStore;

pub struct Fixture {
    pub app: Arc<App>,
    pub outbox_rx: mpsc::UnboundedReceiver<Outgoing>,
    /// Kept so the directory lives as long as the fixture.
    _dir: tempfile::TempDir,
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(&dir.path().join("store")).expect("store"));
    let files = ArtifactFiles::open(dir.path()).expect("artifact dir");
    let key = SigningKey::generate().expect("key").0;
    let settings = Settings {
        topics: Topics::default(),
        deploy: DeployConfig {
            desired_state_ttl: Duration::from_secs(3600),
            republish_interval: Duration::from_secs(60),
        },
        nodes: NodesConfig::default(),
        placement: crate::config::PlacementConfig::default(),
        regions: crate::regions::Regions::default(),
        max_artifact_bytes: 1024,
    };
    let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
    let app = App::new(store, files, key, settings, outbox_tx).expect("app");
    Fixture {
        app,
        outbox_rx,
        _dir: dir,
    }
}

/// A signed online presence for `agent` in `region`.
pub fn presence(key: &SigningKey, agent: &str, region: &str) -> Vec<u8> {
    let document = Presence {
        schema_version: SCHEMA_VERSION,
        agent: AgentId::new(agent).expect("agent"),
        online: true,
        at: Timestamp::now(),
        region: RegionId::new(region).expect("region"),
        labels: Default::default(),
        capacity: Resources {
            cpu_millis: 4000,
            memory_mb: 4096,
        },
        public_key: key.public_key(),
        version: "test".into(),
        probe_addr: None,
    };
    key.sign_json(payload_type::PRESENCE, &document)
}
