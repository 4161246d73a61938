//! The Verge edge agent: verifies signed desired state, runs workloads as
//! processes and reports their status.
//!
//! The flow reads as one line:
//! `mqtt → intake (verify, check generation, persist) → watch channel → reconciler → runtime`.
//!
//! - [`config`]: TOML configuration with environment overrides;
//! - [`mqtt`]: the broker connection (the only module that knows rumqttc);
//! - [`intake`]: the pure accept / ignore / reject decision;
//! - [`state`]: the last accepted desired state (sled) and the node key;
//! - [`artifacts`]: the content-addressed artifact cache;
//! - [`reconcile`]: the pure plan and the loop applying it;
//! - [`runtime`]: workload processes and their supervision;
//! - [`report`]: the status board and the signed documents built from it.

pub mod artifacts;
pub mod config;
pub mod intake;
pub mod mqtt;
pub mod reconcile;
pub mod report;
pub mod runtime;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use verge_shared::messages::DesiredState;

pub use config::{Config, EX_CONFIG};

use crate::artifacts::ArtifactCache;
use crate::intake::Decision;
use crate::reconcile::Reconciler;
use crate::report::{Board, Identity, Reporter};
use crate::runtime::{Placement, ProcessRuntime, RestartPolicy};
use crate::state::{Accepted, SledStore, StateStore};

/// Status changes within this window go out as one Status.
const STATUS_DEBOUNCE: Duration = Duration::from_millis(200);

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
    #[error("a core task ended unexpectedly: {0}")]
    TaskDied(String),
}

impl AgentError {
    /// The sysexits(3) code the binary exits with.
    pub fn exit_code(&self) -> u8 {
        match self {
            // EX_CANTCREAT: the data directory or its files are unusable.
            AgentError::DataDir { .. } | AgentError::State(_) => 73,
            // EX_SOFTWARE: an internal failure; the service manager restarts us.
            AgentError::TaskDied(_) => 70,
        }
    }
}

/// Runs the agent until `shutdown` is cancelled, then stops every workload,
/// says goodbye to the broker and returns `Ok(())`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    let data_dir = prepare_data_dir(&config.data_dir)?;
    let key = state::load_or_create_node_key(&data_dir.join("node.key"))?;
    let store: Arc<dyn StateStore> = Arc::new(SledStore::open(&data_dir.join("state"))?);
    let accepted = store.load()?;
    let applied = accepted.as_ref().map(|a| a.desired.generation);
    info!(agent = %config.id, key = %key.key_id(), generation = ?applied, "Agent starting.");

    let board = Arc::new(Board::new(applied));
    let policy = RestartPolicy::default();
    let workloads_dir = data_dir.join("workloads");
    // Before launching anything: no duplicate of a workload a killed agent left running.
    runtime::kill_stale(&workloads_dir, policy.grace).await;
    let runtime = Arc::new(ProcessRuntime::new(
        workloads_dir,
        Placement {
            agent: config.id.clone(),
            region: config.region.clone(),
        },
        policy,
        board.clone(),
    ));
    let artifacts_dir = data_dir.join("artifacts");
    let artifacts =
        ArtifactCache::open(&artifacts_dir, &config.controller_url).map_err(|source| {
            AgentError::DataDir {
                path: artifacts_dir,
                source,
            }
        })?;
    let reporter = Arc::new(Reporter::new(
        key,
        Identity {
            agent: config.id.clone(),
            region: config.region.clone(),
            labels: config.labels.clone(),
            capacity: config.capacity.resolve(),
        },
        board.clone(),
    ));

    let (desired_tx, desired_rx) = watch::channel(accepted.map(|a| Arc::new(a.desired)));
    let (inbox_tx, inbox_rx) = watch::channel(None::<Bytes>);
    let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();

    let mqtt_stop = CancellationToken::new();
    let mqtt = tokio::spawn(mqtt::run(
        mqtt::Settings {
            broker: config.broker.clone(),
            topics: config.topics.clone(),
            keep_alive: config.keep_alive,
        },
        reporter,
        inbox_tx,
        outbox_rx,
        mqtt_stop.clone(),
    ));

    // Core tasks run until `stop`; if one ends on its own, the agent exits
    // and its service manager restarts it.
    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();
    tasks.spawn(intake_loop(
        config.clone(),
        store,
        board.clone(),
        inbox_rx,
        desired_tx,
        stop.clone(),
    ));
    let reconciler = Reconciler {
        runtime: runtime.clone(),
        artifacts: Arc::new(artifacts),
        board: board.clone(),
    };
    let reconcile_stop = stop.clone();
    tasks.spawn(async move { reconciler.run(desired_rx, reconcile_stop).await });
    tasks.spawn(status_loop(board, outbox_tx.clone(), stop.clone()));
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
    // No adoption of running workloads across agent restarts yet, so
    // leaving them would orphan them: stop them gracefully.
    runtime.stop_all().await;
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

/// Checks each received desired state; persists and publishes accepted ones.
async fn intake_loop(
    config: Config,
    store: Arc<dyn StateStore>,
    board: Arc<Board>,
    mut inbox_rx: watch::Receiver<Option<Bytes>>,
    desired_tx: watch::Sender<Option<Arc<DesiredState>>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            changed = inbox_rx.changed() => if changed.is_err() { break },
        }
        let Some(bytes) = inbox_rx.borrow_and_update().clone() else {
            continue;
        };
        let decision = intake::check(
            &bytes,
            &config.controller_public_key,
            &config.id,
            board.accepted(),
            verge_shared::Timestamp::now(),
        );
        match decision {
            Ok(Decision::Accept(desired)) => {
                let generation = desired.generation;
                let accepted = Accepted {
                    envelope: bytes.to_vec(),
                    desired,
                };
                // Persist before acting: a crash after this point replays it.
                let store = store.clone();
                let saved =
                    tokio::task::spawn_blocking(move || store.save(&accepted).map(|()| accepted))
                        .await;
                match saved {
                    Ok(Ok(accepted)) => {
                        info!(agent = %config.id, generation = %generation, "Accepted desired state.");
                        board.set_accepted(generation);
                        desired_tx.send_replace(Some(Arc::new(accepted.desired)));
                    }
                    Ok(Err(e)) => {
                        error!(agent = %config.id, generation = %generation, error = %e, "Cannot persist the desired state; not applying it.");
                    }
                    Err(e) => {
                        error!(agent = %config.id, generation = %generation, error = %e, "Persisting the desired state failed.");
                    }
                }
            }
            Ok(Decision::IgnoreSame) => {
                debug!(agent = %config.id, "Ignored a republished desired state of the applied generation.");
            }
            Err(rejection) => {
                warn!(agent = %config.id, reason = ?rejection.reason, generation = ?rejection.generation, detail = %rejection.detail, "Rejected desired state.");
                board.set_rejection(rejection);
            }
        }
    }
}

/// Publishes a Status after each burst of board changes.
async fn status_loop(
    board: Arc<Board>,
    outbox_tx: mpsc::UnboundedSender<mqtt::Outgoing>,
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
        if outbox_tx.send(mqtt::Outgoing::Status).is_err() {
            break;
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
