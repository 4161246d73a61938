//! Verge central controller: HTTP API, scheduler, desired-state signer,
//! embedded MQTT broker and store, started by [`start`].
//!
//! Layers point one way: [`api`] → [`app`] → [`store`] and [`scheduler`];
//! [`mqtt`] is the only module that knows rumqttc, [`broker`] the only one
//! that knows rumqttd.

pub mod api;
pub mod app;
pub mod artifacts;
pub mod broker;
pub mod config;
pub mod dev;
pub mod keys;
pub mod latency;
pub mod mqtt;
pub mod probe;
pub mod regions;
pub mod scheduler;
pub mod store;
#[cfg(test)]
mod testing;
pub mod trust;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use verge_shared::PublicKey;

use crate::app::{App, Settings};
use crate::config::{BrokerEndpoint, BrokerUrl, Config};

/// How long tasks get to finish after shutdown is requested.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Keys(#[from] keys::KeyFileError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Regions(#[from] regions::RegionsError),
    #[error("cannot listen for HTTP on {address}: {source}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Trust(#[from] trust::TrustLoadError),
    #[error("cannot listen for probes (UDP) on {address}: {source}")]
    ProbeListen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// A started controller.
pub struct Controller {
    /// Where the API actually listens (the port is resolved when 0 was asked).
    pub api_addr: SocketAddr,
    /// The broker URL the controller (and agents) connect to.
    pub broker_url: BrokerUrl,
    pub public_key: PublicKey,
    pub admin_token: keys::AdminToken,
    pub data_dir: PathBuf,
    tracker: TaskTracker,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("api_addr", &self.api_addr)
            .finish_non_exhaustive()
    }
}

/// Starts everything `config` describes; it all stops when `cancel` fires.
pub async fn start(config: Config, cancel: CancellationToken) -> Result<Controller, StartError> {
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let regions = match &config.placement.regions_file {
        Some(path) => regions::Regions::load(path)?,
        None => regions::Regions::default(),
    };
    let key = keys::load_or_create_signing_key(&data_dir)?;
    let trust = Arc::new(trust::TrustState::load(
        &data_dir,
        config.trust.bundle_file.as_deref(),
        key.public_key(),
        verge_shared::Timestamp::now(),
    )?);
    let admin_token = keys::load_or_create_admin_token(&data_dir)?;
    let store: Arc<dyn store::Store> = Arc::new(store::SledStore::open(&data_dir.join("store"))?);
    let files =
        artifacts::ArtifactFiles::open(&data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.join("artifacts"),
            source,
        })?;

    if let BrokerEndpoint::Embedded(listen) = config.broker.endpoint {
        let started = tokio::task::spawn_blocking(move || broker::start(listen)).await;
        started.unwrap_or_else(|e| Err(broker::BrokerError::Thread(std::io::Error::other(e))))?;
        info!(address = %listen, "The embedded MQTT broker accepts connections.");
    }
    let broker_url = config.broker.endpoint.client_url();

    // Bound before anything is published, so every probe plan naming the
    // controller names a listener that answers.
    let probe_socket = match config.placement.probe_listen {
        Some(address) => Some(
            tokio::net::UdpSocket::bind(address)
                .await
                .map_err(|source| StartError::ProbeListen { address, source })?,
        ),
        None => None,
    };

    let settings = Settings {
        topics: config.broker.topics.clone(),
        deploy: config.deploy,
        nodes: config.nodes,
        placement: config.placement,
        regions,
        max_artifact_bytes: config.api.max_artifact_bytes,
    };
    let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
    let public_key = key.public_key();
    let app = App::new(store, files, key, trust, settings, outbox_tx)?;

    let tracker = TaskTracker::new();
    mqtt::spawn(&broker_url, Arc::clone(&app), outbox_rx, &tracker, &cancel);
    tracker.spawn(Arc::clone(&app).run_background(cancel.clone()));
    if let Some(socket) = probe_socket {
        tracker.spawn(probe::serve(socket, cancel.clone()));
    }

    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .map_err(|source| StartError::Listen {
            address: config.api.listen,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| StartError::Listen {
        address: config.api.listen,
        source,
    })?;
    let router = api::router(app, keys::TokenCheck::new(&admin_token.value));
    let shutdown = cancel.clone();
    tracker.spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "The HTTP server stopped with an error.");
        }
    });
    tracker.close();
    info!(api = %api_addr, broker = %broker_url, key_id = %public_key.key_id(), "The controller is running.");
    Ok(Controller {
        api_addr,
        broker_url,
        public_key,
        admin_token,
        data_dir,
        tracker,
    })
}

impl Controller {
    /// Waits for every task to finish after cancellation, at most
    /// [`DRAIN_DEADLINE`] once it has been requested.
    pub async fn wait(self, cancel: &CancellationToken) {
        cancel.cancelled().await;
        if tokio::time::timeout(DRAIN_DEADLINE, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(deadline = ?DRAIN_DEADLINE, "Some tasks did not stop in time; exiting anyway.");
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = interrupt.recv() => info!("Received SIGINT; shutting down."),
        _ = terminate.recv() => info!("Received SIGTERM; shutting down."),
    }
    Ok(())
}
