//! The TLS front of the embedded broker: accepts TLS on the broker's
//! configured address, requires a client certificate issued by the
//! controller's CA and not revoked, then relays bytes to rumqttd on an
//! internal loopback-only plain port. A revocation closes the revoked
//! node's live connections at once.
//!
//! rumqttd's own TLS brings an old rustls and cannot check revocation,
//! hence this relay; rumqttd itself never listens beyond loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::ca::peer_identity;
use crate::tls::{Admission, HANDSHAKE_TIMEOUT, Revocations};

/// Most concurrent broker connections through the terminator.
pub const MAX_CONNECTIONS: usize = 10_000;
/// How long connecting to the internal broker port may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Relays verified TLS connections on `listener` to `upstream` until `cancel`.
pub async fn run(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    upstream: SocketAddr,
    revocations: Arc<Revocations>,
    cancel: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(config);
    let admission = Admission::new(MAX_CONNECTIONS, "broker");
    let connections = TaskTracker::new();
    while let Some((tcp, peer, permit)) = admission.next(&listener, &cancel).await {
        let acceptor = acceptor.clone();
        let revocations = Arc::clone(&revocations);
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _permit = permit;
            relay(acceptor, tcp, peer, upstream, &revocations, &cancel).await;
        });
    }
    connections.close();
    connections.wait().await;
}

async fn relay(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    upstream: SocketAddr,
    revocations: &Revocations,
    cancel: &CancellationToken,
) {
    // Subscribed before the handshake, so a revocation during it is seen.
    let mut revoked = revocations.subscribe();
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return info!(%peer, error = %e, "Refused a broker connection at the TLS handshake.");
        }
        Err(_) => return info!(%peer, "A broker TLS handshake timed out."),
    };
    // The verifier demanded a certificate, so there is one.
    let Some(identity) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| peer_identity(cert).ok())
    else {
        return warn!(%peer, "A broker connection has no readable client certificate.");
    };
    let mut inner = match tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(upstream)).await
    {
        Ok(Ok(inner)) => inner,
        Ok(Err(e)) => return warn!(%upstream, error = %e, "Cannot reach the internal broker port."),
        Err(_) => return warn!(%upstream, "Connecting to the internal broker port timed out."),
    };
    debug!(%peer, agent = %identity.common_name, "Relaying a broker connection.");
    let dropped = {
        // One copy future for the whole connection: recreating it would lose
        // bytes it had read but not yet written.
        let copy = tokio::io::copy_bidirectional(&mut tls, &mut inner);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Some("the controller is stopping"),
                changed = revoked.changed() => {
                    if changed.is_err() || revocations.is_revoked(&identity) {
                        break Some("its certificate was revoked");
                    }
                }
                copied = &mut copy => {
                    if let Err(e) = copied {
                        debug!(%peer, error = %e, "A broker connection ended with an error.");
                    }
                    break None;
                }
            }
        }
    };
    if let Some(reason) = dropped {
        info!(%peer, agent = %identity.common_name, reason, "Closed a broker connection.");
        let _ = inner.shutdown().await;
        let _ = tls.shutdown().await;
    }
}
