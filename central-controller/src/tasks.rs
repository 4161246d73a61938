//! Every long-running task of the controller, started from one place.
//!
//! [`spawn_all`] starts them on one [`TaskTracker`]; each ends when the one
//! [`CancellationToken`] fires, and [`crate::Controller::wait`] drains the
//! tracker with a deadline. Nothing else in the crate spawns a task that
//! outlives a request (per-connection tasks inside a server are the
//! server's own).
//!
//! | task | what it does |
//! |---|---|
//! | terminator | TLS in front of the embedded broker (TLS on, embedded broker) |
//! | mqtt poll / publish / ingest | the controller's MQTT client |
//! | deployment loop | health tick, re-plan on node changes, periodic republish ([`App::run_background`]) |
//! | broker upkeep | renews the client certificate for an external broker, rewrites the CRL ([`broker_client::run_upkeep`]) |
//! | probe listener | answers agents' latency probes (when configured) |
//! | API server | HTTP or HTTPS |

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::app::{App, Outgoing};
use crate::config::BrokerUrl;
use crate::tls::Revocations;
use crate::{broker_client, mqtt, probe, terminator, tls};

/// The TLS front of the embedded broker.
pub(crate) struct Terminator {
    pub listener: TcpListener,
    pub config: Arc<rustls::ServerConfig>,
    /// The embedded broker's internal (loopback) address.
    pub upstream: SocketAddr,
    pub revocations: Arc<Revocations>,
}

/// Everything the tasks need, prepared (and every socket bound) by `start`.
pub(crate) struct TaskInputs {
    pub app: Arc<App>,
    pub broker_url: BrokerUrl,
    /// TLS and login for an external broker.
    pub broker_access: mqtt::Access,
    /// Keeps the client certificate for an external `mqtts://` broker current.
    pub broker_upkeep: Option<broker_client::Upkeep>,
    pub outbox_rx: mpsc::UnboundedReceiver<Outgoing>,
    pub terminator: Option<Terminator>,
    pub probe_socket: Option<UdpSocket>,
    pub api_listener: TcpListener,
    pub router: axum::Router,
    /// With a configuration, the API speaks HTTPS.
    pub https: Option<Arc<rustls::ServerConfig>>,
}

/// Starts every long-running task; returns the closed tracker to wait on.
pub(crate) fn spawn_all(inputs: TaskInputs, cancel: &CancellationToken) -> TaskTracker {
    let tracker = TaskTracker::new();
    if let Some(front) = inputs.terminator {
        tracker.spawn(terminator::run(
            front.listener,
            front.config,
            front.upstream,
            front.revocations,
            Arc::clone(&inputs.app),
            cancel.clone(),
        ));
    }
    let client = mqtt::client(
        &inputs.broker_url,
        inputs.broker_access,
        Arc::clone(&inputs.app),
        inputs.outbox_rx,
        cancel,
    );
    tracker.spawn(client.poll);
    tracker.spawn(client.publish);
    tracker.spawn(client.ingest);
    tracker.spawn(Arc::clone(&inputs.app).run_background(cancel.clone()));
    tracker.spawn(broker_client::run_upkeep(
        Arc::clone(&inputs.app),
        inputs.broker_upkeep,
        cancel.clone(),
    ));
    if let Some(socket) = inputs.probe_socket {
        tracker.spawn(probe::serve(socket, cancel.clone()));
    }
    let shutdown = cancel.clone();
    match inputs.https {
        Some(server_config) => {
            tracker.spawn(tls::serve_https(
                inputs.api_listener,
                server_config,
                inputs.router,
                shutdown,
            ));
        }
        None => {
            let listener = inputs.api_listener;
            let router = inputs.router;
            tracker.spawn(async move {
                let service = router.into_make_service_with_connect_info::<SocketAddr>();
                let served = axum::serve(listener, service)
                    .with_graceful_shutdown(async move { shutdown.cancelled().await })
                    .await;
                if let Err(e) = served {
                    warn!(error = %e, "The HTTP server stopped with an error.");
                }
            });
        }
    }
    tracker.close();
    tracker
}
