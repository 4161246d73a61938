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
    /// For a restart with the same keys.
    keys: Keys,
    /// The artifact files and the trust bundle; shared with a restarted
    /// controller, removed when the last one is dropped.
    dir: Arc<tempfile::TempDir>,
}

/// The app over a sled store in a temporary directory, on the wall clock.
pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(&dir.path().join("store")).expect("store"));
    fixture_in(dir, store, Arc::new(SystemClock), BUNDLE_LIFETIME, |_| {})
}

/// How long the fixtures' trust bundles are valid.
const BUNDLE_LIFETIME: Duration = Duration::from_secs(3600);

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
        BUNDLE_LIFETIME,
        tweak,
    );
    MemoryFixture { fx, store, clock }
}

/// [`memory_fixture`] whose trust bundle stays valid for `bundle_lifetime`
/// from now: for runs that move the manual clock further than an hour.
pub fn memory_fixture_lasting(bundle_lifetime: Duration) -> MemoryFixture {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(Timestamp::now()));
    let fx = fixture_in(
        tempfile::tempdir().expect("tempdir"),
        Arc::clone(&store) as Arc<dyn Store>,
        Arc::clone(&clock) as Arc<dyn Clock>,
        bundle_lifetime,
        |_| {},
    );
    MemoryFixture { fx, store, clock }
}

fn fixture_in(
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    bundle_lifetime: Duration,
    tweak: impl FnOnce(&mut Settings),
) -> Fixture {
    let keys = Keys {
        controller: SigningKey::generate().expect("key").1,
        publisher: SigningKey::generate().expect("key").1,
    };
    let (key, publisher) = keys.open();
    std::fs::write(
        dir.path().join("bundle.json"),
        trust_bundle_lasting(&key.public_key(), &publisher.public_key(), bundle_lifetime),
    )
    .expect("write bundle");
    start(Arc::new(dir), keys, store, clock, tweak)
}

/// The controller's and the publisher's keys as PKCS#8.
#[derive(Clone)]
struct Keys {
    controller: Vec<u8>,
    publisher: Vec<u8>,
}

impl Keys {
    fn open(&self) -> (SigningKey, SigningKey) {
        (
            SigningKey::from_pkcs8(&self.controller).expect("controller key"),
            SigningKey::from_pkcs8(&self.publisher).expect("publisher key"),
        )
    }
}

/// The app over `dir` (artifact files and `bundle.json`) with `keys`.
fn start(
    dir: Arc<tempfile::TempDir>,
    keys: Keys,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    tweak: impl FnOnce(&mut Settings),
) -> Fixture {
    let files = ArtifactFiles::open(dir.path()).expect("artifact dir");
    let (key, publisher) = keys.open();
    let trust = Arc::new(
        TrustState::load(
            dir.path(),
            Some(&dir.path().join("bundle.json")),
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
        keys,
        dir,
    }
}

impl MemoryFixture {
    /// The controller started again on what this one stored, with the same
    /// key, trust bundle and artifact files: a crash and restart, as far as
    /// the app can tell (what was only in memory is gone).
    pub fn restarted(&self, tweak: impl FnOnce(&mut Settings)) -> MemoryFixture {
        let fx = start(
            Arc::clone(&self.fx.dir),
            self.fx.keys.clone(),
            Arc::clone(&self.store) as Arc<dyn Store>,
            Arc::clone(&self.clock) as Arc<dyn Clock>,
            tweak,
        );
        MemoryFixture {
            fx,
            store: Arc::clone(&self.store),
            clock: Arc::clone(&self.clock),
        }
    }
}

/// A trust bundle (signed by a throwaway root key) listing `controller`
/// and `publisher`, the latter allowed every service.
pub fn trust_bundle(controller: &PublicKey, publisher: &PublicKey) -> Vec<u8> {
    trust_bundle_lasting(controller, publisher, BUNDLE_LIFETIME)
}

/// [`trust_bundle`], valid for `lifetime` from now.
pub fn trust_bundle_lasting(
    controller: &PublicKey,
    publisher: &PublicKey,
    lifetime: Duration,
) -> Vec<u8> {
    let root = SigningKey::generate().expect("key").0;
    let now = Timestamp::now();
    let bundle = TrustBundle {
        schema_version: SCHEMA_VERSION,
        version: 1,
        issued_at: now,
        expires_at: now.saturating_add(lifetime),
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
        self.release_version(
            service,
            semver::Version::new(1, 0, 0),
            bytes::Bytes::from_static(artifact),
            args,
        )
        .await
    }

    /// [`Fixture::release`] of `version`, from artifact bytes made at run time.
    pub async fn release_version(
        &self,
        service: &str,
        version: semver::Version,
        artifact: bytes::Bytes,
        args: &[&str],
    ) -> String {
        let body = futures_util::stream::iter([Ok::<_, String>(artifact)]);
        let stored = self.app.upload_artifact(body).await.expect("upload").0;
        let release = Release {
            schema_version: SCHEMA_VERSION,
            service: ServiceName::new(service).expect("service"),
            version,
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
    presence_at(key, agent, region, true, Timestamp::now())
}

/// A signed presence for `agent` in `region`, `online` or not (an
/// agent's Last Will), made `at`.
pub fn presence_at(
    key: &SigningKey,
    agent: &str,
    region: &str,
    online: bool,
    at: Timestamp,
) -> Vec<u8> {
    let document = Presence {
        schema_version: SCHEMA_VERSION,
        agent: AgentId::new(agent).expect("agent"),
        online,
        at,
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
