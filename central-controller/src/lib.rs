//! Verge central controller: HTTP API, scheduler, desired-state signer,
//! embedded MQTT broker and store, started by [`start`].
//!
//! Layers point one way: [`api`] → [`app`] → [`store`] and the pure
//! [`verge_scheduler`];
//! [`mqtt`] is the only module that knows rumqttc, [`broker`] the only one
//! that knows rumqttd, [`ca`] the only one that knows rcgen. With TLS on,
//! [`tls`] serves the API over HTTPS and [`terminator`] fronts the embedded
//! broker, requiring client certificates; with an external broker,
//! [`broker_client`] gives the MQTT client its TLS identity and login.

pub mod api;
pub mod app;
pub mod artifacts;
pub mod broker;
pub mod broker_client;
pub mod ca;
pub mod config;
pub mod consumer_guard;
pub mod keys;
pub mod latency;
pub mod mqtt;
pub mod probe;
pub mod regions;
pub mod store;
mod tasks;
pub mod terminator;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
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
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    BrokerClient(#[from] broker_client::BrokerClientError),
    #[error("loading revoked nodes")]
    Revocations(#[source] app::AppError),
    #[error("installing the admin token as the admin account's token")]
    AdminToken(#[source] app::AppError),
}

impl StartError {
    /// Whether the configuration is what must change (a trust bundle or
    /// regions file it names), so that a restart alone cannot help: the
    /// binary then exits 78, which the systemd unit does not restart on.
    pub fn is_configuration(&self) -> bool {
        matches!(self, Self::Trust(_) | Self::Regions(_))
    }
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
    /// Whether the API speaks HTTPS and the broker listener requires client certificates.
    pub tls: bool,
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

    let tls = match config.tls.enabled {
        true => Some(TlsParts::prepare(&config, &data_dir)?),
        false => None,
    };
    let (broker_access, broker_upkeep) =
        broker_client::prepare(&config, verge_shared::Timestamp::now())?;
    // With TLS, rumqttd listens on an internal loopback port behind the
    // terminator, and the controller's own client uses that port.
    let (broker_url, terminator) = match (&config.broker.endpoint, &tls) {
        (BrokerEndpoint::Embedded(listen), Some(_)) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|source| StartError::Listen {
                    address: *listen,
                    source,
                })?;
            let internal = internal_broker_address()?;
            start_embedded_broker(internal).await?;
            info!(address = %listen, "The broker listener requires TLS client certificates.");
            (
                config.broker.endpoint.client_url_at(internal),
                Some(listener),
            )
        }
        (BrokerEndpoint::Embedded(listen), None) => {
            start_embedded_broker(*listen).await?;
            (config.broker.endpoint.client_url(), None)
        }
        (BrokerEndpoint::External(_), _) => (config.broker.endpoint.client_url(), None),
    };

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
        placement: config.placement.clone(),
        regions,
        max_artifact_bytes: config.api.max_artifact_bytes,
        audit: config.audit,
        public_metrics: config.api.public_metrics,
        watch: config.watch,
        console_idle_timeout: config.console.idle_timeout,
        alarms: config.alarms,
    };
    let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
    let public_key = key.public_key();
    let app = App::new(
        store,
        files,
        key,
        trust,
        settings,
        outbox_tx,
        Arc::new(app::SystemClock),
    )?;

    let tls_configs = match tls {
        Some(parts) => Some(parts.install(&app, &config)?),
        None => None,
    };
    let terminator = match (terminator, &config.broker.endpoint, &tls_configs) {
        (Some(listener), BrokerEndpoint::Embedded(_), Some(configs)) => Some(tasks::Terminator {
            listener,
            config: Arc::clone(&configs.broker),
            upstream: SocketAddr::from(([127, 0, 0, 1], broker_url.port)),
            revocations: Arc::clone(&configs.revocations),
        }),
        _ => None,
    };

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
    app.install_admin_token(&admin_token.value)
        .map_err(StartError::AdminToken)?;
    let router = api::router(Arc::clone(&app));
    let tracker = tasks::spawn_all(
        tasks::TaskInputs {
            app,
            broker_url: broker_url.clone(),
            broker_access,
            broker_upkeep,
            outbox_rx,
            terminator,
            probe_socket,
            api_listener: listener,
            router,
            https: tls_configs.as_ref().map(|c| Arc::clone(&c.api)),
        },
        &cancel,
    );
    let tls = tls_configs.is_some();
    info!(api = %api_addr, tls, broker = %broker_url, key_id = %public_key.key_id(), "The controller is running.");
    Ok(Controller {
        api_addr,
        broker_url,
        public_key,
        admin_token,
        data_dir,
        tls,
        tracker,
    })
}

async fn start_embedded_broker(listen: SocketAddr) -> Result<(), StartError> {
    let started = tokio::task::spawn_blocking(move || broker::start(listen)).await;
    started.unwrap_or_else(|e| Err(broker::BrokerError::Thread(std::io::Error::other(e))))?;
    info!(address = %listen, "The embedded MQTT broker accepts connections.");
    Ok(())
}

/// A free loopback port for rumqttd behind the terminator. The port is
/// released before rumqttd binds it; the broker's readiness check catches
/// the rare case that another process took it in between.
fn internal_broker_address() -> Result<SocketAddr, StartError> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let fail = |source| StartError::Listen {
        address: any,
        source,
    };
    std::net::TcpListener::bind(any)
        .and_then(|l| l.local_addr())
        .map_err(fail)
}

/// The CA and the certificates issued at start, before the app exists.
struct TlsParts {
    ca: ca::Ca,
    server: ca::KeyedCertificate,
}

/// The TLS server configurations the listeners use.
struct TlsConfigs {
    api: Arc<rustls::ServerConfig>,
    broker: Arc<rustls::ServerConfig>,
    revocations: Arc<tls::Revocations>,
}

impl TlsParts {
    /// Loads or creates the CA, issues the server certificate (written
    /// next to the CA as `server.pem`/`server.key`) and makes sure the
    /// controller's client certificate (`controller.pem`/`controller.key`,
    /// kept until it nears expiry) exists.
    fn prepare(config: &Config, data_dir: &std::path::Path) -> Result<Self, StartError> {
        let ca = ca::Ca::load_or_create(&data_dir.join("ca"))?;
        let server = ca.issue_server(&config.tls.server_names)?;
        let dir = ca.dir();
        ca::write_private(&dir.join("server.pem"), server.cert_pem.as_bytes(), 0o644)?;
        ca::write_private(&dir.join("server.key"), server.key_pem.as_bytes(), 0o600)?;
        ca.controller_client(verge_shared::Timestamp::now())?;
        Ok(Self { ca, server })
    }

    /// Gives the app its CA and loads the revocations; returns the listeners' configurations.
    fn install(self, app: &App, config: &Config) -> Result<TlsConfigs, StartError> {
        let revocations = Arc::new(tls::Revocations::default());
        let api = tls::server_config(
            self.ca.ca_pem(),
            &self.server,
            tls::ClientAuth::Optional,
            Arc::clone(&revocations),
        )?;
        let broker = tls::server_config(
            self.ca.ca_pem(),
            &self.server,
            tls::ClientAuth::Required,
            Arc::clone(&revocations),
        )?;
        // What agents are told at enrollment: `broker.advertise_url`, or
        // the external broker's URL, or the embedded listener's address.
        let broker_url = match &config.broker.endpoint {
            _ if config.broker.advertise_url.is_some() => config
                .broker
                .advertise_url
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            BrokerEndpoint::Embedded(listen) => {
                let host = if listen.ip().is_unspecified() {
                    config
                        .tls
                        .server_names
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "localhost".to_owned())
                } else {
                    listen.ip().to_string()
                };
                format!("mqtts://{}", host_port(&host, listen.port()))
            }
            BrokerEndpoint::External(url) => url.to_string(),
        };
        // Checked at start and on every health tick (controller_certificate_expiring).
        let expiries = [
            ("CA", self.ca.ca_pem()),
            ("server", self.server.cert_pem.as_str()),
        ]
        .into_iter()
        .filter_map(|(name, pem)| Some((name.to_owned(), certificate_not_after(pem)?)))
        .collect();
        app.set_pki(app::Pki {
            ca: self.ca,
            revocations: Arc::clone(&revocations),
            client_cert_ttl: config.tls.client_cert_ttl,
            renew_grace: config.tls.renew_grace,
            broker_url,
            trust_bundle: config.data_dir.join("trust").join("bundle.json"),
        });
        app.load_revocations().map_err(StartError::Revocations)?;
        app.watch_certificates(expiries);
        Ok(TlsConfigs {
            api,
            broker,
            revocations,
        })
    }
}

/// When the first certificate of `pem` expires.
fn certificate_not_after(pem: &str) -> Option<verge_shared::Timestamp> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let seconds = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(verge_shared::Timestamp::from_unix_millis(
        seconds.saturating_mul(1000),
    ))
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Controller {
    /// Waits for every task to finish after cancellation, at most
    /// `DRAIN_DEADLINE` once it has been requested.
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
