//! The Verge edge agent: verifies signed desired state, runs workloads as
//! processes and reports their status.
//!
//! The flow reads as one line:
//! `mqtt → intake (verify, check generation, persist) → watch channel → reconciler → runtime`.
//!
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
//! - [`reconcile`]: the pure plan and the loop applying it;
//! - [`runtime`]: workload processes, adopted across agent restarts;
//! - [`supervise`]: one workload's restart policy, crash loops and graceful stop;
//! - [`health`]: TCP, HTTP and exec health checks;
//! - [`logs`]: rotated workload logs and their tail for log requests;
//! - [`manifest`]: what an extracted archive holds, checked at start;
//! - [`limits`]: the workload user and rlimits (the `exec-workload` helper);
//! - [`report`]: the status board and the signed documents built from it;
//! - [`outbox`]: status, telemetry and other reports on disk until acknowledged;
//! - [`telemetry`]: the periodic telemetry sample;
//! - [`probe`]: the latency probe listener and the probing rounds.

pub mod archive;
pub mod artifacts;
pub mod cgroup;
pub mod config;
pub mod disk;
pub mod enroll;
pub mod health;
pub mod http;
pub mod intake;
pub mod limits;
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
pub mod telemetry;
pub mod tls;
pub mod trust;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use verge_shared::messages::{
    DEFAULT_STOP_GRACE_SECS, EventKind, LimitMechanism, RejectReason, Rejection,
};

pub use config::{Config, EX_CONFIG};

use crate::artifacts::ArtifactCache;
use crate::intake::{Decision, ResolvedState};
use crate::limits::Launcher;
use crate::outbox::Outbox;
use crate::reconcile::Reconciler;
use crate::report::{Board, DiskUser, EventSink, Identity, Reporter};
use crate::runtime::{Placement, ProcessRuntime};
use crate::state::{Accepted, SledStore, StateStore};
use crate::supervise::RestartTiming;
use crate::trust::{OfferError, Offered, TrustStore};

/// Log requests waiting to be answered; more are dropped (the controller
/// times out and the operator asks again).
const LOG_REQUESTS_QUEUED: usize = 8;

/// How long a starting agent waits for the broker's retained desired state
/// before it starts workloads from the one it stored. A node back from a
/// power cut must not start a replica the controller moved away while it was
/// gone; with the broker unreachable the wait ends at the first failed
/// connection attempt, so offline autonomy is not delayed.
const STARTUP_WAIT: Duration = Duration::from_secs(3);

/// Status changes within this window go out as one Status.
const STATUS_DEBOUNCE: Duration = Duration::from_millis(200);
/// The first and the longest wait before persisting an accepted desired
/// state is tried again.
const SAVE_RETRY_INITIAL: Duration = Duration::from_secs(1);
const SAVE_RETRY_MAX: Duration = Duration::from_secs(30);

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
    State(#[from] state::StateError),
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    #[error(transparent)]
    Trust(#[from] trust::TrustLoadError),
    #[error("a core task ended unexpectedly: {0}")]
    TaskDied(String),
    #[error(transparent)]
    WorkloadUser(#[from] limits::LimitsError),
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
}

impl AgentError {
    /// The sysexits(3) code the binary exits with.
    pub fn exit_code(&self) -> u8 {
        match self {
            // EX_CANTCREAT: the data directory or its files are unusable.
            AgentError::DataDir { .. } | AgentError::State(_) | AgentError::Outbox(_) => 73,
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
    let data_dir = prepare_data_dir(&config.data_dir)?;
    let key = state::load_or_create_node_key(&data_dir.join("node.key"))?;
    // With a TLS URL: the stored certificate, or enrollment with the token.
    let identity = match enroll::wants_tls(&config) {
        true => Some(enroll::prepare(&config, &data_dir, key.public_key()).await?),
        false => None,
    };
    let mqtt_tls = match (&identity, config.broker.tls) {
        (Some(identity), true) => Some(Arc::new(tls::mutual_config(
            &identity.ca_pem,
            identity.current.clone(),
        )?)),
        _ => None,
    };
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
    let store: Arc<dyn StateStore> = Arc::new(sled_store);
    let accepted = store.load()?;
    let applied = accepted.as_ref().map(|a| a.desired.generation);
    info!(agent = %config.id, key = %key.key_id(), generation = ?applied, "Agent starting.");

    let board = Arc::new(Board::new(applied));
    let workloads_dir = data_dir.join("workloads");
    let helper = std::env::current_exe().map_err(AgentError::SelfExe)?;
    let cgroups = cgroup::Cgroups::detect()
        .inspect_err(|why| info!(reason = %why, "cgroup v2 is not usable here; workload limits are rlimits (memory only)."))
        .ok();
    let launcher = Launcher::helper(helper, config.workload_user.as_deref(), cgroups)?;
    let limits_in_force = launcher.mechanism();
    let limits = match limits_in_force {
        LimitMechanism::CgroupV2 => "cgroup v2 (memory.max, cpu.max)",
        _ => "rlimit (memory only)",
    };
    info!(agent = %config.id, user = %launcher.user_name(), limits, "Workloads run confined.");
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
        })?,
    );
    let status_topic = config.topics.status(&config.id);
    let sampler = telemetry::Sampler {
        agent: config.id.clone(),
        region: config.region.clone(),
        topic: config.topics.telemetry(&config.region, &config.id),
        board: board.clone(),
        artifacts: artifacts.clone(),
        outbox: outbox.clone(),
    };
    let probe_socket = match config.probe {
        Some(probe) => {
            let fail = |source| AgentError::ProbeListen {
                address: probe.listen,
                source,
            };
            let socket = tokio::net::UdpSocket::bind(probe.listen)
                .await
                .map_err(fail)?;
            let bound = socket.local_addr().map_err(fail)?;
            info!(agent = %config.id, listen = %bound, advertise = ?probe.advertise, "Listening for latency probes.");
            Some((socket, probe.advertise.unwrap_or(bound)))
        }
        None => None,
    };
    let probe_addr = probe_socket.as_ref().map(|(_, addr)| *addr);
    // Probe plans from the broker; only the latest matters.
    let probes_tx = Arc::new(watch::channel(None::<Bytes>).0);
    let reporter = Arc::new(Reporter::new(
        key,
        Identity {
            agent: config.id.clone(),
            region: config.region.clone(),
            labels: config.labels.clone(),
            capacity: config.capacity.resolve(),
            probe_addr,
            limits: Some(limits_in_force),
        },
        board.clone(),
    ));
    let reporter_for_probes = reporter.clone();
    let events = EventSink {
        reporter: reporter.clone(),
        outbox: outbox.clone(),
        topic: config.topics.events(&config.region, &config.id),
    };

    let (desired_tx, desired_rx) = watch::channel(accepted.map(|a| Arc::new(a.desired)));
    let (inbox_tx, inbox_rx) = watch::channel(None::<Bytes>);
    let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
    let (log_requests_tx, log_requests_rx) = mpsc::channel(LOG_REQUESTS_QUEUED);

    // Start-up ends its wait for the broker's copy of the desired state
    // (see STARTUP_WAIT) when intake has handled a document or the broker
    // turns out to be unreachable.
    let startup = Arc::new(Notify::new());
    let mqtt_stop = CancellationToken::new();
    let mqtt = tokio::spawn(mqtt::run(
        mqtt::Settings {
            broker: config.broker.clone(),
            topics: config.topics.clone(),
            keep_alive: config.keep_alive,
            heartbeat_interval: config.heartbeat_interval,
            probes_tx: probes_tx.clone(),
            log_requests: log_requests_tx,
            unreachable: startup.clone(),
            tls: mqtt_tls,
        },
        reporter.clone(),
        inbox_tx,
        outbox_rx,
        outbox.clone(),
        mqtt_stop.clone(),
    ));

    // Core tasks run until `stop`; if one ends on its own, the agent exits
    // and its service manager restarts it.
    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();
    tasks.spawn(
        Intake {
            config: config.clone(),
            store,
            trust: trust.clone(),
            board: board.clone(),
            events: events.clone(),
            desired_tx,
        }
        .run(inbox_rx, startup.clone(), stop.clone()),
    );
    let reconciler = Reconciler {
        runtime: runtime.clone(),
        artifacts,
        board: board.clone(),
    };
    let reconcile_stop = stop.clone();
    tasks.spawn(async move {
        // Adopted workloads already run; what the stored state would start
        // waits until the broker had its chance to deliver a newer one.
        tokio::select! {
            biased;
            () = reconcile_stop.cancelled() => return,
            () = startup.notified() => {}
            () = tokio::time::sleep(STARTUP_WAIT) => debug!("No desired state from the broker yet; applying the stored one."),
        }
        reconciler.run(desired_rx, reconcile_stop).await
    });
    tasks.spawn(status_loop(
        board.clone(),
        reporter.clone(),
        outbox.clone(),
        status_topic,
        data_dir.clone(),
        stop.clone(),
    ));
    tasks.spawn(telemetry::telemetry_loop(
        sampler,
        config.telemetry_interval,
        stop.clone(),
    ));
    if let Some((socket, _)) = probe_socket {
        let prober = probe::Prober {
            agent: config.id.clone(),
            controller_keys: {
                let trust = trust.clone();
                Box::new(move || trust.controller_keys())
            },
            reporter: reporter_for_probes,
            outbox: outbox.clone(),
            topic: config
                .topics
                .agent(&config.id, verge_shared::topic::Channel::Latency),
        };
        tasks.spawn(prober.run(socket, probes_tx.subscribe(), stop.clone()));
    }
    tasks.spawn(log_request_loop(
        config.clone(),
        trust,
        workloads_dir,
        reporter.clone(),
        log_requests_rx,
        outbox_tx.clone(),
        stop.clone(),
    ));
    if let Some(identity) = identity {
        tasks.spawn(enroll::renewal_loop(
            identity,
            config.controller_url.clone(),
            reporter.clone(),
            board.clone(),
            events.clone(),
            stop.clone(),
        ));
    }
    tasks.spawn(heartbeat_loop(
        config.heartbeat_interval,
        outbox_tx,
        stop.clone(),
    ));

    let mut result = Ok(());
    tokio::select! {
        // Shutdown first: cancelling it also ends the core tasks (child token),
        // which must not be mistaken for a failure.
        biased;
        () = shutdown.cancelled() => info!(agent = %config.id, "Shutting down."),
        ended = tasks.join_next() => {
            let detail = match ended {
                Some(Err(e)) => e.to_string(),
                _ => "returned early".to_owned(),
            };
            error!(agent = %config.id, detail = %detail, "A core task ended; stopping the agent.");
            result = Err(AgentError::TaskDied(detail));
        }
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}
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

/// Creates the data directory and returns its absolute path (workload
/// pid files record absolute artifact paths, checked against /proc).
fn prepare_data_dir(path: &std::path::Path) -> Result<PathBuf, AgentError> {
    let fail = |source| AgentError::DataDir {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(fail)?;
    std::fs::canonicalize(path).map_err(fail)
}

/// Checks each received delivery; persists and publishes accepted desired
/// states, takes newer trust bundles, and reports every refusal.
struct Intake {
    config: Config,
    store: Arc<dyn StateStore>,
    trust: Arc<TrustStore>,
    board: Arc<Board>,
    events: EventSink,
    desired_tx: watch::Sender<Option<Arc<ResolvedState>>>,
}

/// What became of one delivery.
enum Handled {
    Done,
    /// Accepted but not persisted (disk full, say): try again later.
    RetrySave,
    /// The store cannot write even with space free again: stop the agent so
    /// that its service manager starts it afresh (docs/storage.md).
    StoreStuck,
}

impl Intake {
    async fn run(
        self,
        mut inbox_rx: watch::Receiver<Option<Bytes>>,
        handled: Arc<Notify>,
        stop: CancellationToken,
    ) {
        // An accepted document that could not be persisted is tried again
        // until it is, or until a newer one arrives: the broker delivers a
        // retained document only once per subscription.
        let mut unsaved: Option<Bytes> = None;
        let mut retry_delay = SAVE_RETRY_INITIAL;
        loop {
            let retry = async {
                match unsaved {
                    Some(_) => tokio::time::sleep(retry_delay).await,
                    None => std::future::pending().await,
                }
            };
            let bytes = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                changed = inbox_rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let Some(bytes) = inbox_rx.borrow_and_update().clone() else {
                        continue;
                    };
                    // Whatever the decision, the broker has spoken: start-up may go on.
                    handled.notify_one();
                    unsaved = None;
                    retry_delay = SAVE_RETRY_INITIAL;
                    bytes
                }
                () = retry => {
                    retry_delay = (retry_delay * 2).min(SAVE_RETRY_MAX);
                    match unsaved.take() {
                        Some(bytes) => bytes,
                        None => continue,
                    }
                }
            };
            match self.handle(&bytes).await {
                Handled::Done => {}
                Handled::RetrySave => unsaved = Some(bytes),
                Handled::StoreStuck => return,
            }
        }
    }

    async fn handle(&self, bytes: &[u8]) -> Handled {
        let now = verge_shared::Timestamp::now();
        let delivery = match intake::parse_delivery(bytes) {
            Ok(delivery) => delivery,
            Err((reason, detail)) => {
                self.rejected(Rejection {
                    reason,
                    generation: None,
                    detail: verge_shared::messages::bounded_message(&detail),
                    at: now,
                })
                .await;
                return Handled::Done;
            }
        };
        if let Some(bundle) = &delivery.trust {
            self.offer_trust(bundle, now).await;
        }
        let bundle = self.trust.bundle();
        let current = self.desired_tx.borrow().clone();
        let last = if self.trust.reset_pending() {
            None
        } else {
            self.board.accepted()
        };
        let decision = intake::check(
            &delivery,
            &intake::Context {
                trust: &bundle,
                me: &self.config.id,
                last,
                running: current.as_ref().map_or(&[], |c| c.workloads.as_slice()),
                now,
            },
        );
        match decision {
            Ok(Decision::Accept(desired)) => return self.accept(bytes, desired).await,
            Ok(Decision::IgnoreSame) => {
                debug!(agent = %self.config.id, "Ignored a republished desired state of the applied generation.");
            }
            Err(rejection) => self.rejected(rejection).await,
        }
        Handled::Done
    }

    async fn accept(&self, bytes: &[u8], desired: ResolvedState) -> Handled {
        let generation = desired.generation;
        let accepted = Accepted {
            envelope: bytes.to_vec(),
            desired,
        };
        // Persist before acting: a crash after this point replays it.
        let store = self.store.clone();
        let saved =
            tokio::task::spawn_blocking(move || store.save(&accepted).map(|()| accepted)).await;
        match saved {
            Ok(Ok(accepted)) => {
                info!(agent = %self.config.id, generation = %generation, "Accepted desired state.");
                if self.trust.reset_pending()
                    && let Err(e) = self.trust.clear_reset()
                {
                    warn!(error = %e, "Cannot record that the generation reset was used; it applies once more after a restart.");
                }
                self.board.clear_disk_full(DiskUser::State);
                self.board.set_accepted(generation);
                self.desired_tx
                    .send_replace(Some(Arc::new(accepted.desired)));
                Handled::Done
            }
            Ok(Err(e)) => {
                if e.is_disk_full() && store_stuck(&self.config.data_dir) {
                    return Handled::StoreStuck;
                }
                error!(agent = %self.config.id, generation = %generation, error = %e, "Cannot persist the desired state; not applying it yet.");
                if e.is_disk_full() {
                    self.board.set_disk_full(DiskUser::State, &e.to_string());
                }
                Handled::RetrySave
            }
            Err(e) => {
                error!(agent = %self.config.id, generation = %generation, error = %e, "Persisting the desired state failed.");
                Handled::Done
            }
        }
    }

    /// Reports a refused desired state: status, a security event (once per
    /// distinct refusal, not on every republish) and a log line.
    async fn rejected(&self, rejection: Rejection) {
        warn!(agent = %self.config.id, reason = ?rejection.reason, generation = ?rejection.generation, detail = %rejection.detail, "Rejected desired state.");
        let repeated = self.board.last_rejection().is_some_and(|last| {
            (last.reason, last.generation, &last.detail)
                == (rejection.reason, rejection.generation, &rejection.detail)
        });
        if !repeated {
            self.events
                .raise(
                    EventKind::DesiredStateRejected,
                    Some(rejection.reason),
                    rejection.generation,
                    &rejection.detail,
                )
                .await;
        }
        self.board.set_rejection(rejection);
    }

    async fn offer_trust(&self, bundle: &verge_shared::Envelope, now: verge_shared::Timestamp) {
        let bytes = serde_json::to_vec(bundle).unwrap_or_default();
        match self.trust.offer(&bytes, now) {
            Ok(Offered::Unchanged) => {}
            Ok(Offered::Updated { version, reset }) => {
                info!(agent = %self.config.id, version, reset, "Trusting a newer trust bundle.");
                let detail = format!("trust bundle version {version} is trusted from now on");
                self.events
                    .raise(EventKind::TrustBundleUpdated, None, None, &detail)
                    .await;
                if reset {
                    self.events
                        .raise(
                            EventKind::GenerationsReset,
                            None,
                            self.board.accepted(),
                            "a root-signed reset cleared the highest accepted generation",
                        )
                        .await;
                }
            }
            // The controller's copy may lag one the operator installed by file.
            Err(OfferError::Refused(e @ verge_shared::trust::TrustError::Stale { .. })) => {
                debug!(agent = %self.config.id, error = %e, "Ignored an older trust bundle.");
            }
            Err(OfferError::Store(e)) => {
                error!(agent = %self.config.id, error = %e, "Cannot store a newer trust bundle; it is taken with the next delivery.");
            }
            Err(OfferError::Refused(e)) => {
                warn!(agent = %self.config.id, error = %e, "Rejected a trust bundle; keeping the trusted one.");
                let reason = RejectReason::from(&e);
                self.events
                    .raise(
                        EventKind::TrustBundleRejected,
                        Some(reason),
                        None,
                        &e.to_string(),
                    )
                    .await;
            }
        }
    }
}

/// After a store write failed for lack of space: has the space come back
/// while the store still refuses? sled keeps the first I/O error of its log
/// and fails every later write with it, even once there is room again
/// (docs/storage.md#disk-full), so only a new agent process can write: the
/// caller ends its task, which stops the agent (workloads keep running and
/// are adopted), and the service manager starts it again.
fn store_stuck(data_dir: &std::path::Path) -> bool {
    let stuck = disk::free_bytes(data_dir).is_ok_and(|free| free >= disk::RESERVE_BYTES);
    if stuck {
        error!(data_dir = %data_dir.display(), "The state store still fails with \"no space left\" although space has returned (sled keeps its first write error); stopping so that a restart opens it afresh.");
    }
    stuck
}

/// Queues a Status in the outbox after each burst of board changes.
async fn status_loop(
    board: Arc<Board>,
    reporter: Arc<Reporter>,
    outbox: Arc<Outbox>,
    topic: String,
    data_dir: PathBuf,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = board.changed() => {}
        }
        // Coalesce the changes of one reconcile pass into one message.
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = tokio::time::sleep(STATUS_DEBOUNCE) => {}
        }
        // The Status built below carries every change made so far; one made
        // from here on wakes the loop again.
        board.forget_pending_change();
        let (outbox, reporter, topic) = (outbox.clone(), reporter.clone(), topic.clone());
        // The push is flushed to disk: keep it off the runtime thread.
        let pushed =
            tokio::task::spawn_blocking(move || outbox.push(&topic, &reporter.status())).await;
        match pushed {
            Ok(Ok(())) => board.clear_disk_full(DiskUser::Outbox),
            Ok(Err(e)) if e.is_disk_full() => {
                if store_stuck(&data_dir) {
                    return;
                }
                error!(error = %e, "The disk is full: a Status cannot be queued; the next change after space returns sends a full one.");
                board.set_disk_full(DiskUser::Outbox, &e.to_string());
            }
            Ok(Err(e)) => {
                warn!(error = %e, "Cannot queue a Status; the next change or reconnect sends a full one.");
            }
            Err(e) => warn!(error = %e, "Queueing a Status failed."),
        }
    }
}

/// Answers log requests, one at a time, from the workloads' log files.
async fn log_request_loop(
    config: Config,
    trust: Arc<TrustStore>,
    workloads_dir: PathBuf,
    reporter: Arc<Reporter>,
    mut requests_rx: mpsc::Receiver<Bytes>,
    outbox_tx: mpsc::UnboundedSender<mqtt::Outgoing>,
    stop: CancellationToken,
) {
    loop {
        let bytes = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            next = requests_rx.recv() => match next {
                Some(bytes) => bytes,
                None => break,
            },
        };
        let (keys, agent, dir) = (
            trust.controller_keys(),
            config.id.clone(),
            workloads_dir.clone(),
        );
        // File reads: off the runtime thread.
        let answered = tokio::task::spawn_blocking(move || {
            logs::answer(&bytes, &keys, &agent, &dir, verge_shared::Timestamp::now())
        })
        .await;
        match answered {
            Ok(Ok(response)) => {
                debug!(agent = %config.id, service = %response.service, request_id = %response.request_id, n_lines = response.lines.len(), "Answering a log request.");
                let envelope = reporter.log_response(response);
                if outbox_tx
                    .send(mqtt::Outgoing::LogResponse(envelope))
                    .is_err()
                {
                    break;
                }
            }
            Ok(Err(reason)) => {
                warn!(agent = %config.id, reason = %reason, "Ignored a log request.");
            }
            Err(e) => warn!(error = %e, "Answering a log request failed."),
        }
    }
}

async fn heartbeat_loop(
    interval: Duration,
    outbox_tx: mpsc::UnboundedSender<mqtt::Outgoing>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        if outbox_tx.send(mqtt::Outgoing::Heartbeat).is_err() {
            break;
        }
    }
}

/// `e` and its sources, joined by ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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
}
