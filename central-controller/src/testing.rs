//! Test fixtures: a real app over a sled store in a temporary directory, or
//! over a [`MemoryStore`] with a [`ManualClock`]; the captured MQTT outbox;
//! and signed agent messages.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use verge_shared::messages::{
    Heartbeat, PortSpec, Presence, Resources, RunSpec, SCHEMA_VERSION, WorkloadState, payload_type,
};
use verge_shared::telemetry::{
    CacheMetrics, HostMetrics, OutboxMetrics, ProcessMetrics, TELEMETRY_SCHEMA_VERSION, Telemetry,
    WorkloadMetrics,
};
use verge_shared::trust::{
    MediaType, Publisher, Release, ReleaseArtifact, RootRole, TrustBundle,
    payload_type as trust_type,
};
use verge_shared::{AgentId, PublicKey, RegionId, ServiceName, SigningKey, Timestamp, Topics};

use crate::app::{App, Clock, ManualClock, Outgoing, ServiceRequest, Settings, SystemClock};
use crate::artifacts::ArtifactFiles;
use crate::config::{DeployConfig, NodesConfig};
use crate::store::{MemoryStore, SledStore, Store};
use crate::trust::TrustState;

pub struct Fixture {
    pub app: Arc<App>,
    /// Allowed every service by the fixture's trust bundle.
    pub publisher: SigningKey,
    pub outbox_rx: mpsc::UnboundedReceiver<Outgoing>,
    /// Kept so the directory lives as long as the fixture.
    _dir: tempfile::TempDir,
}

/// The app over a sled store in a temporary directory, on the wall clock.
pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(&dir.path().join("store")).expect("store"));
    fixture_in(dir, store, Arc::new(SystemClock), |_| {})
}

/// The app over an in-memory store and a clock that moves only when told.
pub struct MemoryFixture {
    pub fx: Fixture,
    pub store: Arc<MemoryStore>,
    pub clock: Arc<ManualClock>,
}

/// The app over `MemoryStore` and a `ManualClock` standing at the wall
/// clock's time (trust bundles and releases are signed with real times).
pub fn memory_fixture() -> MemoryFixture {
    memory_fixture_with(|_| {})
}

/// [`memory_fixture`] with settings changed by `tweak`.
pub fn memory_fixture_with(tweak: impl FnOnce(&mut Settings)) -> MemoryFixture {
    memory_fixture_on(
        Arc::new(MemoryStore::new()),
        Arc::new(ManualClock::new(Timestamp::now())),
        tweak,
    )
}

/// [`memory_fixture_with`] over an existing store and clock: a controller
/// restarted on what the previous one stored.
pub fn memory_fixture_on(
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    tweak: impl FnOnce(&mut Settings),
) -> MemoryFixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = fixture_in(
        dir,
        Arc::clone(&store) as Arc<dyn Store>,
        Arc::clone(&clock) as Arc<dyn Clock>,
        tweak,
    );
    MemoryFixture { fx, store, clock }
}

fn fixture_in(
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    tweak: impl FnOnce(&mut Settings),
) -> Fixture {
    let files = ArtifactFiles::open(dir.path()).expect("artifact dir");
    let key = SigningKey::generate().expect("key").0;
    let publisher = SigningKey::generate().expect("key").0;
    let bundle_file = dir.path().join("bundle.json");
    std::fs::write(
        &bundle_file,
        trust_bundle(&key.public_key(), &publisher.public_key()),
    )
    .expect("write bundle");
    let trust = Arc::new(
        TrustState::load(
            dir.path(),
            Some(&bundle_file),
            key.public_key(),
            Timestamp::now(),
        )
        .expect("trust"),
    );
    let mut settings = Settings {
        topics: Topics::default(),
        deploy: DeployConfig {
            desired_state_ttl: Duration::from_secs(3600),
            republish_interval: Duration::from_secs(60),
        },
        nodes: NodesConfig::default(),
        placement: crate::config::PlacementConfig::default(),
        regions: crate::regions::Regions::default(),
        max_artifact_bytes: 1024,
        audit: crate::config::AuditConfig::default(),
        public_metrics: false,
        watch: crate::config::WatchConfig::default(),
        console_idle_timeout: Duration::from_secs(1800),
        alarms: crate::config::AlarmsConfig::default(),
    };
    tweak(&mut settings);
    let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
    let app = App::new(store, files, key, trust, settings, outbox_tx, clock).expect("app");
    Fixture {
        app,
        publisher,
        outbox_rx,
        _dir: dir,
    }
}

/// A trust bundle (signed by a throwaway root key) listing `controller`
/// and `publisher`, the latter allowed every service.
pub fn trust_bundle(controller: &PublicKey, publisher: &PublicKey) -> Vec<u8> {
    let root = SigningKey::generate().expect("key").0;
    let now = Timestamp::now();
    let bundle = TrustBundle {
        schema_version: SCHEMA_VERSION,
        version: 1,
        issued_at: now,
        expires_at: now.saturating_add(Duration::from_secs(3600)),
        root: RootRole {
            keys: vec![root.public_key()],
            threshold: 1,
        },
        controllers: vec![*controller],
        publishers: vec![Publisher {
            name: "test publisher".into(),
            key: *publisher,
            services: vec!["*".into()],
        }],
        reset_generations: false,
    };
    root.sign_json(trust_type::TRUST_BUNDLE, &bundle)
}

impl Fixture {
    /// Every message the app handed to the MQTT adapter since the last call,
    /// in order: the captured outbox.
    pub fn sent(&mut self) -> Vec<Outgoing> {
        std::iter::from_fn(|| self.outbox_rx.try_recv().ok()).collect()
    }

    /// Uploads `artifact` and a release of `service` running it with `args`
    /// and an `http` port; returns the release digest.
    pub async fn release(&self, service: &str, artifact: &'static [u8], args: &[&str]) -> String {
        let body =
            futures_util::stream::iter([Ok::<_, String>(bytes::Bytes::from_static(artifact))]);
        let stored = self.app.upload_artifact(body).await.expect("upload").0;
        let release = Release {
            schema_version: SCHEMA_VERSION,
            service: ServiceName::new(service).expect("service"),
            version: semver::Version::new(1, 0, 0),
            issued_at: Timestamp::now(),
            artifacts: vec![ReleaseArtifact {
                sha256: stored.sha256,
                size: stored.size,
                media_type: MediaType::Executable,
            }],
            run: RunSpec {
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                ports: vec![PortSpec {
                    name: "http".into(),
                    port: None,
                }],
                ..RunSpec::default()
            },
            resources: Resources::default(),
        };
        let envelope = self.publisher.sign_json(trust_type::RELEASE, &release);
        let (record, _) = self.app.upload_release(&envelope).expect("release");
        record.digest.to_string()
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
        limits: None,
    };
    key.sign_json(payload_type::PRESENCE, &document)
}

/// A signed heartbeat of `agent` sent at `at`, saying it applied `applied`.
pub fn heartbeat(key: &SigningKey, agent: &str, at: Timestamp, applied: Option<u64>) -> Vec<u8> {
    key.sign_json(
        payload_type::HEARTBEAT,
        &Heartbeat {
            schema_version: SCHEMA_VERSION,
            agent: AgentId::new(agent).expect("agent"),
            at,
            uptime_secs: 5,
            applied_generation: applied.map(verge_shared::Generation::new),
        },
    )
}

/// A telemetry message as `agent` in `region` publishes it: sequence
/// number `seq`, produced at `at` by an agent process up for `uptime_secs`
/// that used `cpu_millis` of CPU time, on a host 25 % busy.
pub fn telemetry(
    agent: &str,
    region: &str,
    seq: u64,
    at: Timestamp,
    cpu_millis: u64,
    uptime_secs: u64,
) -> Vec<u8> {
    let document = Telemetry {
        schema_version: TELEMETRY_SCHEMA_VERSION,
        agent: AgentId::new(agent).expect("agent"),
        region: RegionId::new(region).expect("region"),
        seq,
        at,
        interval_seconds: 60,
        host: HostMetrics {
            cpu_percent: Some(25.0),
            memory_available_bytes: 512 << 20,
            disk_free_bytes: 8 << 30,
            ..HostMetrics::default()
        },
        agent_process: ProcessMetrics {
            uptime_seconds: uptime_secs,
            rss_bytes: 20 << 20,
            cpu_seconds: cpu_millis as f64 / 1000.0,
        },
        workloads: vec![WorkloadMetrics {
            service: ServiceName::new("web").expect("service"),
            replica: 0,
            state: WorkloadState::Running,
            health: None,
            restarts: 0,
            process: None,
            last_exit: None,
        }],
        cache: CacheMetrics {
            cached_bytes: 4096,
            ..CacheMetrics::default()
        },
        outbox: OutboxMetrics {
            queued: 2,
            dropped: 1,
            ..OutboxMetrics::default()
        },
    };
    serde_json::to_vec(&document).expect("serialise")
}

/// A service request for `release` with `replicas`, spread over nodes.
pub fn service_request(release: &str, replicas: i64) -> ServiceRequest {
    serde_json::from_value(serde_json::json!({
        "release": release,
        "replicas": replicas,
        "placement": {"spread": "node"},
    }))
    .expect("request")
}
