//! The Verge edge agent: verifies signed desired state, runs workloads as
//! processes and reports their status.
//!
//! The flow reads as one line:
//! `mqtt → intake (verify, check generation, persist) → watch channel → reconciler → runtime`.
//!
//! This file is the map and the wiring: [`run`] opens the durable state,
//! builds the shared parts, names the channels between the tasks and starts
//! every long-running task from one place, with one shutdown. The tasks
//! themselves live in [`tasks`] or beside what they drive.
//!
//! - [`alarms`]: the agent's alarm book (raise and clear with hysteresis);
//! - [`config`]: TOML configuration with environment overrides;
//! - [`enroll`]: token enrollment and online certificate renewal;
//! - [`tls`]: the client certificate and the rustls configurations;
//! - [`mqtt`]: the broker connection (the only module that knows rumqttc);
//! - [`intake`]: the pure accept / ignore / reject decision;
//! - [`trust`]: the trust bundle held (root-signed keys of every role);
//! - [`state`]: the last accepted desired state (sled) and the node key;
//! - [`archive`]: safe extraction of tar.gz artifacts;
//! - [`artifacts`]: the content-addressed artifact cache;
//! - [`http`]: the small HTTP client for artifacts, enrollment and renewal;
//! - [`cgroup`]: cgroup v2 detection and per-workload groups with limits;
//! - [`disk`]: free space, the cache's reserve and "disk full" errors;
//! - [`error`](mod@error): the error-chain helper every module may use (a leaf);
//! - [`fake`]: in-memory [`runtime::Runtime`] and [`state::StateStore`] for tests;
//! - [`reconcile`]: the pure plan and the loop applying it;
//! - [`runtime`]: workload processes, adopted across agent restarts;
//! - [`supervise`]: one workload's restart policy, crash loops and graceful stop;
//! - [`health`]: TCP, HTTP and exec health checks;
//! - [`host`]: the host's and a process's figures from `/proc` and `/sys`;
//! - [`logs`]: rotated workload logs and their tail for log requests;
//! - [`manifest`]: what an extracted archive holds, checked at start;
//! - [`confine`]: the workload user and its limits (the `exec-workload` helper);
//! - [`report`]: the status board and the signed documents built from it;
//! - [`outbox`]: status, telemetry and other reports on disk until acknowledged;
//! - [`telemetry`]: the periodic telemetry sample;
//! - [`probe`]: the latency probe listener and the probing rounds;
//! - [`tasks`]: the intake, status, log-request and heartbeat tasks;
//! - [`ticks`]: the periodic timer of the timed loops.

pub mod alarms;
pub mod archive;
pub mod artifacts;
pub mod cgroup;
pub mod config;
pub mod confine;
pub mod data_format;
pub mod disk;
pub mod enroll;
pub mod error;
pub mod fake;
pub mod health;
pub mod host;
pub mod http;
pub mod intake;
pub mod logs;
pub mod manifest;
pub mod mqtt;
pub mod outbox;
pub mod probe;
pub mod reconcile;
pub mod report;
pub mod runtime;
pub mod state;
pub mod supervise;
pub mod tasks;
pub mod telemetry;
pub mod ticks;
pub mod tls;
pub mod trust;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use verge_shared::messages::{DEFAULT_STOP_GRACE_SECS, LimitMechanism};

pub use config::{Config, EX_CONFIG};

use crate::artifacts::ArtifactCache;
use crate::confine::Launcher;
use crate::outbox::Outbox;
use crate::reconcile::Reconciler;
use crate::report::{Board, EventSink, Identity, Signer};
use crate::runtime::{Placement, ProcessRuntime};
use crate::state::{SledStore, StateStore};
use crate::supervise::RestartTiming;
use crate::trust::TrustStore;

/// Log requests waiting to be answered; more are dropped (the controller
/// times out and the operator asks again).
const LOG_REQUESTS_QUEUED: usize = 8;

/// Why the agent stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    DataFormat(#[from] verge_durable::format::FormatError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    #[error(transparent)]
    Trust(#[from] trust::TrustLoadError),
    #[error("a core task ended unexpectedly: {0}")]
    TaskDied(String),
    #[error(transparent)]
    WorkloadUser(#[from] confine::ConfineError),
    #[error("cannot find the agent's own executable, which starts workloads: {0}")]
    SelfExe(#[source] std::io::Error),
    #[error("cannot listen for latency probes on {address}: {source}")]
    ProbeListen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Enroll(#[from] enroll::EnrollError),
    #[error("the TLS configuration for the broker is unusable: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("the raised alarms in {path}: {source}")]
    AlarmStore {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
}

impl AgentError {
    /// The sysexits(3) code the binary exits with.
    pub fn exit_code(&self) -> u8 {
        match self {
            // EX_CANTCREAT: the data directory or its files are unusable.
            AgentError::DataDir { .. }
            | AgentError::State(_)
            | AgentError::Outbox(_)
            | AgentError::AlarmStore { .. }
            | AgentError::DataFormat(verge_durable::format::FormatError::Io { .. }) => 73,
            // EX_CONFIG: a newer release's data directory (a downgrade), or
            // another program's: a restart cannot help.
            AgentError::DataFormat(_) => EX_CONFIG,
            // EX_SOFTWARE: an internal failure; the service manager restarts us.
            AgentError::TaskDied(_) => 70,
            // EX_CONFIG: the configured workload user is unusable.
            AgentError::WorkloadUser(_) => EX_CONFIG,
            // EX_CONFIG: no trust bundle, or an unusable one.
            AgentError::Trust(_) => EX_CONFIG,
            // EX_OSERR.
            AgentError::SelfExe(_) => 71,
            // EX_UNAVAILABLE: the probe address is taken or not ours.
            AgentError::ProbeListen { .. } => 69,
            // No certificate and no usable token, or the token was refused:
            // EX_CONFIG; otherwise the controller was unreachable: EX_UNAVAILABLE.
            AgentError::Enroll(e) if e.is_config() => EX_CONFIG,
            AgentError::Enroll(_) => 69,
            AgentError::Tls(_) => EX_CONFIG,
        }
    }
}

/// Runs the agent until `shutdown` is cancelled, then stops every workload,
/// says goodbye to the broker and returns `Ok(())`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    // Identity and durable state, in the order a cold start needs them.
    let data_dir = prepare_data_dir(&config.data_dir)?;
    let key = state::load_or_create_node_key(&data_dir.join("node.key"))?;
    // With a TLS URL: the stored certificate, or enrollment with the token.
    let identity = match enroll::wants_tls(&config) {
        true => Some(enroll::prepare(&config, &data_dir, key.public_key()).await?),
        false => None,
    };
    // The node's client certificate goes to the broker and with artifact
    // downloads (the controller serves an artifact over HTTPS only to the
    // nodes whose desired state runs it).
    let client_tls = identity
        .as_ref()
        .map(|i| tls::mutual_config(&i.ca_pem, i.current.clone()))
        .transpose()?
        .map(Arc::new);
    let mqtt_tls = client_tls.clone().filter(|_| config.broker.tls);
    let sled_store = SledStore::open(&data_dir.join("state"))?;
    let outbox = Arc::new(Outbox::open(
        sled_store.db(),
        data_dir.join("state"),
        config.outbox_quota_bytes,
    )?);
    let trust = Arc::new(TrustStore::open(
        sled_store.db(),
        config.trust_bundle_file.as_deref(),
        &data_dir,
        verge_shared::Timestamp::now(),
    )?);
    let raised_alarms = tasks::alarms::RaisedStore::open(sled_store.db()).map_err(|source| {
        AgentError::AlarmStore {
            path: data_dir.join("state"),
            source,
        }
    })?;
    let state_store: Arc<dyn StateStore> = Arc::new(sled_store);
    let accepted = state_store.load()?;
    let applied = accepted.as_ref().map(|a| a.desired.generation);
    info!(agent = %config.id, key = %key.key_id(), generation = ?applied, "Agent starting.");

    // The parts the tasks share.
    let board = Arc::new(Board::new(applied));
    let workloads_dir = data_dir.join("workloads");
    let launcher = confined_launcher(&config)?;
    let limits_in_force = launcher.mechanism();
    let runtime = Arc::new(ProcessRuntime::new(
        workloads_dir.clone(),
        Placement {
            agent: config.id.clone(),
            region: config.region.clone(),
        },
        RestartTiming::default(),
        launcher,
        board.clone(),
    ));
    // Before the first reconcile pass: take over what a previous run left
    // running, so nothing is started twice and nothing runs unaccounted for.
    let grace = Duration::from_secs(DEFAULT_STOP_GRACE_SECS.into());
    runtime.adopt(grace).await;
    let artifacts_dir = data_dir.join("artifacts");
    let artifacts = Arc::new(
        ArtifactCache::open(
            &artifacts_dir,
            &config.controller_url,
            config.cache_quota_bytes,
        )
        .map_err(|source| AgentError::DataDir {
            path: artifacts_dir,
            source,
        })?
        .with_https(client_tls),
    );
    let probe_socket = bind_probe_socket(&config).await?;
    let signer = Arc::new(Signer::new(
        key,
        Identity {
            agent: config.id.clone(),
            region: config.region.clone(),
            labels: config.labels.clone(),
            capacity: config.capacity.resolve(),
            probe_addr: probe_socket.as_ref().map(|(_, addr)| *addr),
            limits: Some(limits_in_force),
        },
        board.clone(),
    ));
    let events = EventSink {
        signer: signer.clone(),
        outbox: outbox.clone(),
        topic: config.topics.events(&config.region, &config.id),
    };

    // The channels between the tasks, named for what flows through them.
    // Raw deliveries on the desired-state topic, MQTT → intake (latest only).
    let (delivery_tx, delivery_rx) = watch::channel(None::<Bytes>);
    // Verified and persisted desired states, intake → reconciler (latest only).
    let (accepted_state_tx, accepted_state_rx) =
        watch::channel(accepted.map(|a| Arc::new(a.desired)));
    // Probe plans, MQTT → prober (latest only).
    let probe_plan_tx = Arc::new(watch::channel(None::<Bytes>).0);
    // The controller's calls to announce, MQTT → announce task (latest only).
    let (announce_tx, announce_rx) = watch::channel(None::<Bytes>);
    // Log requests, MQTT → log-request task (bounded; more are dropped).
    let (log_request_tx, log_request_rx) = mpsc::channel(LOG_REQUESTS_QUEUED);
    // Heartbeats and log answers, tasks → MQTT publisher. (Status, telemetry
    // and events go through the disk `outbox` instead.)
    let (outgoing_tx, outgoing_rx) = mpsc::unbounded_channel();
    // When a Status last went out, MQTT → heartbeat task.
    let (status_sent_tx, status_sent_rx) = watch::channel(None);
    // What intake and certificate renewal observe about the node's alarms,
    // → alarm task (unbounded: a few per refused document or renewal).
    let (alarm_tx, alarm_rx) = alarms::Observations::channel();
    // Start-up ends its wait for the broker's copy of the desired state
    // (tasks::reconcile) when intake has handled a delivery or the broker
    // turns out to be unreachable.
    let broker_spoke = Arc::new(Notify::new());

    // The MQTT adapter outlives the other tasks so that it can say goodbye.
    let mqtt_stop = CancellationToken::new();
    let mqtt = tokio::spawn(mqtt::run(
        mqtt::Settings {
            broker: config.broker.clone(),
            topics: config.topics.clone(),
            keep_alive: config.keep_alive,
            status_sent_tx,
            probe_plan_tx: probe_plan_tx.clone(),
            log_request_tx,
            announce_tx,
            unreachable: broker_spoke.clone(),
            tls: mqtt_tls,
        },
        signer.clone(),
        delivery_tx,
        outgoing_rx,
        outbox.clone(),
        mqtt_stop.clone(),
    ));

    // Every long-running task starts here and runs until `stop`; if one ends
    // on its own, the agent exits and its service manager restarts it.
    let stop = shutdown.child_token();
    let mut long_running = JoinSet::new();
    long_running.spawn(
        tasks::intake::Intake {
            config: config.clone(),
            store: state_store,
            trust: trust.clone(),
            board: board.clone(),
            events: events.clone(),
            alarms: alarm_tx.clone(),
            accepted_state_tx,
        }
        .run(delivery_rx, broker_spoke.clone(), stop.clone()),
    );
    long_running.spawn(
        tasks::alarms::AlarmWatch {
            agent: config.id.clone(),
            board: board.clone(),
            outbox: outbox.clone(),
            events: events.clone(),
            raised: raised_alarms,
            desired: accepted_state_rx.clone(),
            disk_space: tasks::alarms::disk_space_of(data_dir.clone()),
            trust_expiry: {
                let trust = trust.clone();
                Box::new(move || trust.expires_at())
            },
            certificate_validity: identity.as_ref().map(|i| {
                let current = i.current.clone();
                Box::new(move || {
                    let material = current.get();
                    (material.not_before, material.not_after)
                }) as tasks::alarms::Validity
            }),
            tick: tasks::alarms::ALARM_TICK,
        }
        .run(alarm_rx, stop.clone()),
    );
    long_running.spawn(tasks::reconcile::run_after_startup(
        Reconciler {
            runtime: runtime.clone(),
            artifacts: artifacts.clone(),
            board: board.clone(),
        },
        accepted_state_rx,
        broker_spoke,
        stop.clone(),
    ));
    long_running.spawn(tasks::status::run(
        board.clone(),
        signer.clone(),
        outbox.clone(),
        config.topics.status(&config.id),
        data_dir.clone(),
        stop.clone(),
    ));
    long_running.spawn(telemetry::telemetry_loop(
        telemetry::Sampler {
            agent: config.id.clone(),
            region: config.region.clone(),
            topic: config.topics.telemetry(&config.region, &config.id),
            data_dir: config.data_dir.clone(),
            interval: config.telemetry_interval,
            board: board.clone(),
            artifacts,
            outbox: outbox.clone(),
        },
        stop.clone(),
    ));
    if let Some((socket, _)) = probe_socket {
        let prober = probe::Prober {
            agent: config.id.clone(),
            controller_keys: {
                let trust = trust.clone();
                Box::new(move || trust.controller_keys())
            },
            signer: signer.clone(),
            outbox: outbox.clone(),
            topic: config
                .topics
                .agent(&config.id, verge_shared::topic::Channel::Latency),
        };
        long_running.spawn(prober.run(socket, probe_plan_tx.subscribe(), stop.clone()));
    }
    long_running.spawn(tasks::announce::run(
        trust.clone(),
        announce_rx,
        outgoing_tx.clone(),
        stop.clone(),
    ));
    long_running.spawn(tasks::log_requests::run(
        config.clone(),
        trust,
        workloads_dir,
        signer.clone(),
        log_request_rx,
        outgoing_tx.clone(),
        stop.clone(),
    ));
    if let Some(identity) = identity {
        long_running.spawn(enroll::renewal_loop(
            identity,
            config.controller_url.clone(),
            signer.clone(),
            board.clone(),
            events.clone(),
            alarm_tx,
            stop.clone(),
        ));
    }
    long_running.spawn(tasks::heartbeat::run(
        config.heartbeat_interval,
        status_sent_rx,
        outgoing_tx,
        stop.clone(),
    ));

    // Shutdown: asked for, or a task died; then drain the tasks, leave or
    // stop the workloads, and let the MQTT adapter say goodbye.
    let mut result = Ok(());
    tokio::select! {
        // Shutdown first: cancelling it also ends the core tasks (child token),
        // which must not be mistaken for a failure.
        biased;
        () = shutdown.cancelled() => info!(agent = %config.id, "Shutting down."),
        ended = long_running.join_next() => {
            let detail = match ended {
                Some(Err(e)) => e.to_string(),
                _ => "returned early".to_owned(),
            };
            error!(agent = %config.id, detail = %detail, "A core task ended; stopping the agent.");
            result = Err(AgentError::TaskDied(detail));
        }
    }
    stop.cancel();
    while long_running.join_next().await.is_some() {}
    // Workloads outlive the agent (the next run adopts them) unless the
    // configuration asks for a clean slate, as development mode does.
    if config.stop_workloads_on_exit {
        runtime.stop_all().await;
    } else {
        runtime.detach_all().await;
    }
    mqtt_stop.cancel();
    if let Err(e) = mqtt.await {
        warn!(error = %e, "The MQTT task failed.");
    }
    info!(agent = %config.id, "Agent stopped.");
    result
}

/// How workloads are started: through the agent's own executable (the
/// `exec-workload` helper), as the configured user, with cgroup v2 limits
/// where the machine has them and rlimits otherwise.
fn confined_launcher(config: &Config) -> Result<Launcher, AgentError> {
    let helper = std::env::current_exe().map_err(AgentError::SelfExe)?;
    let cgroups = cgroup::Cgroups::detect()
        .inspect_err(|why| info!(reason = %why, "cgroup v2 is not usable here; workload limits are rlimits (memory only)."))
        .ok();
    let launcher = Launcher::helper(helper, config.workload_user.as_deref(), cgroups)?;
    let limits = match launcher.mechanism() {
        LimitMechanism::CgroupV2 => "cgroup v2 (memory.max, cpu.max)",
        _ => "rlimit (memory only)",
    };
    info!(agent = %config.id, user = %launcher.user_name(), limits, "Workloads run confined.");
    Ok(launcher)
}

/// The latency probe socket and the address announced for it, when probes
/// are configured.
async fn bind_probe_socket(
    config: &Config,
) -> Result<Option<(tokio::net::UdpSocket, std::net::SocketAddr)>, AgentError> {
    let Some(probe) = config.probe else {
        return Ok(None);
    };
    let fail = |source| AgentError::ProbeListen {
        address: probe.listen,
        source,
    };
    let socket = tokio::net::UdpSocket::bind(probe.listen)
        .await
        .map_err(fail)?;
    let bound = socket.local_addr().map_err(fail)?;
    info!(agent = %config.id, listen = %bound, advertise = ?probe.advertise, "Listening for latency probes.");
    Ok(Some((socket, probe.advertise.unwrap_or(bound))))
}

/// Creates the data directory, brings it to the current format and returns
/// its absolute path (workload pid files record absolute artifact paths,
/// checked against /proc).
fn prepare_data_dir(path: &std::path::Path) -> Result<PathBuf, AgentError> {
    let fail = |source| AgentError::DataDir {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(fail)?;
    let path = std::fs::canonicalize(path).map_err(fail)?;
    // Before anything in it is read or written: a newer release's directory
    // is refused untouched.
    data_format::open(&path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_sysexits() {
        let io = || std::io::Error::other("x");
        assert_eq!(
            AgentError::DataDir {
                path: PathBuf::from("/x"),
                source: io()
            }
            .exit_code(),
            73
        );
        assert_eq!(AgentError::TaskDied("x".into()).exit_code(), 70);
        assert_eq!(EX_CONFIG, 78);
    }

    #[test]
    fn a_data_dir_is_stamped_and_a_newer_one_refused_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("node.key"), b"format 1 data").expect("write");
        prepare_data_dir(dir.path()).expect("format 1 opens");
        let stamped = std::fs::read_to_string(dir.path().join("FORMAT")).expect("FORMAT");
        assert_eq!(stamped, "edge-agent 2\n");

        std::fs::write(dir.path().join("FORMAT"), "edge-agent 3\n").expect("write");
        let err = prepare_data_dir(dir.path()).expect_err("a downgrade");
        assert_eq!(err.exit_code(), EX_CONFIG);
        let message = err.to_string();
        assert!(message.contains("format version 3"), "{message}");
        assert!(message.contains("up to 2"), "{message}");
        let after = std::fs::read_to_string(dir.path().join("FORMAT")).expect("FORMAT");
        assert_eq!(after, "edge-agent 3\n", "left untouched");
    }
}
