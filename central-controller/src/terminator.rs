//! The TLS front of the embedded broker: accepts TLS on the broker's
//! configured address, requires a client certificate issued by the
//! controller's CA and not revoked, then relays bytes to rumqttd on an
//! internal loopback-only plain port. A revocation closes the revoked
//! node's live connections at once.
//!
//! Agents' and the controller's bytes are relayed as they are. A read-only
//! consumer's connection (its certificate says so, see
//! [`crate::ca::consumer_scope`]) goes through [`consumer_guard`]
//! instead: its packets are framed and checked, any PUBLISH or Will
//! closes it, and its subscriptions are narrowed to what it may read.
//!
//! rumqttd's own TLS brings an old rustls and cannot check revocation,
//! hence this relay; rumqttd itself never listens beyond loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::app::App;
use crate::ca::{ConsumerScope, consumer_scope, peer_identity};
use crate::consumer_guard::{self, Guard, Verdict};
use crate::tls::{Admission, HANDSHAKE_TIMEOUT, Revocations};
use verge_shared::limits::MAX_MQTT_PACKET_BYTES;

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
    app: Arc<App>,
    cancel: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(config);
    let admission = Admission::new(MAX_CONNECTIONS, "broker");
    let connections = TaskTracker::new();
    while let Some((tcp, peer, permit)) = admission.next(&listener, &cancel).await {
        let acceptor = acceptor.clone();
        let revocations = Arc::clone(&revocations);
        let cancel = cancel.clone();
        let app = Arc::clone(&app);
        connections.spawn(async move {
            let _permit = permit;
            relay(acceptor, tcp, peer, upstream, &revocations, &app, &cancel).await;
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
    app: &App,
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
    let Some(cert) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .cloned()
    else {
        return warn!(%peer, "A broker connection has no client certificate.");
    };
    let Ok(identity) = peer_identity(&cert) else {
        return warn!(%peer, "A broker connection has no readable client certificate.");
    };
    let consumer = match consumer_scope(&cert) {
        Ok(scope) => scope,
        Err(e) => {
            return warn!(%peer, consumer = %identity.common_name, error = %e, "Refused a consumer certificate without a readable scope.");
        }
    };
    let mut inner = match tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(upstream)).await
    {
        Ok(Ok(inner)) => inner,
        Ok(Err(e)) => return warn!(%upstream, error = %e, "Cannot reach the internal broker port."),
        Err(_) => return warn!(%upstream, "Connecting to the internal broker port timed out."),
    };
    debug!(%peer, agent = %identity.common_name, "Relaying a broker connection.");
    let dropped = if let Some(scope) = consumer {
        let guard = guard_for(&scope, app);
        let guarded = guarded_relay(&mut tls, &mut inner, guard);
        tokio::pin!(guarded);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Some("the controller is stopping".to_owned()),
                changed = revoked.changed() => {
                    if changed.is_err() || revocations.is_revoked(&identity) {
                        break Some("its certificate was revoked".to_owned());
                    }
                }
                ended = &mut guarded => match ended {
                    Ended::Closed => break None,
                    Ended::Refused(refusal, detail) => {
                        app.count_consumer_refusal(refusal.label());
                        warn!(%peer, consumer = %identity.common_name, reason = %detail,
                            "Closed a read-only consumer's broker connection.");
                        break Some(detail);
                    }
                },
            }
        }
    } else {
        // One copy future for the whole connection: recreating it would lose
        // bytes it had read but not yet written.
        let copy = tokio::io::copy_bidirectional(&mut tls, &mut inner);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Some("the controller is stopping".to_owned()),
                changed = revoked.changed() => {
                    if changed.is_err() || revocations.is_revoked(&identity) {
                        break Some("its certificate was revoked".to_owned());
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
        info!(%peer, agent = %identity.common_name, %reason, "Closed a broker connection.");
        let _ = inner.shutdown().await;
        let _ = tls.shutdown().await;
    }
}

fn guard_for(scope: &ConsumerScope, app: &App) -> Guard {
    let prefix = app.settings().topics.prefix().to_owned();
    Guard::new(
        format!("consumer:{}", scope.name),
        consumer_guard::readable_filters(&prefix, &scope.regions),
    )
}

/// How a consumer's guarded relay ended.
enum Ended {
    /// Either side closed the connection, or it failed.
    Closed,
    /// The guard refused a packet.
    Refused(consumer_guard::Refusal, String),
}

/// Relays a consumer's connection packet by packet through `guard`; the
/// broker's packets go back unchanged except the SUBACKs of narrowed
/// subscriptions.
async fn guarded_relay<C, B>(client: &mut C, broker: &mut B, mut guard: Guard) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    // The broker's own packets are bounded by its settings; a little
    // headroom over a client's limit for the headers it rewrites.
    const FROM_BROKER_MAX: usize = 2 * MAX_MQTT_PACKET_BYTES;
    let mut from_client: Vec<u8> = Vec::with_capacity(4096);
    let mut from_broker: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut chunk_b = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = client.read(&mut chunk) => {
                let n = match read {
                    Ok(0) | Err(_) => return Ended::Closed,
                    Ok(n) => n,
                };
                from_client.extend_from_slice(&chunk[..n]);
                loop {
                    let len = match consumer_guard::frame(&from_client, MAX_MQTT_PACKET_BYTES) {
                        Ok(Some(len)) => len,
                        Ok(None) => break,
                        Err(e) => return Ended::Refused(consumer_guard::Refusal::Malformed, e.to_string()),
                    };
                    let packet: Vec<u8> = from_client.drain(..len).collect();
                    let sent = match guard.client_packet(&packet) {
                        Verdict::Forward => send(broker, &packet).await,
                        Verdict::Replace(bytes) => send(broker, &bytes).await,
                        Verdict::Answer(bytes) => send(client, &bytes).await,
                        Verdict::Close(refusal) => {
                            let detail = match refusal {
                                consumer_guard::Refusal::Publish => "it sent a PUBLISH; consumers are read-only",
                                consumer_guard::Refusal::Will => "its CONNECT carries a Will; consumers publish nothing",
                                consumer_guard::Refusal::Protocol => "it broke the MQTT 3.1.1 protocol",
                                consumer_guard::Refusal::Malformed => "it sent a malformed packet",
                            };
                            return Ended::Refused(refusal, detail.to_owned());
                        }
                    };
                    if sent.is_err() {
                        return Ended::Closed;
                    }
                }
            }
            read = broker.read(&mut chunk_b) => {
                let n = match read {
                    Ok(0) | Err(_) => return Ended::Closed,
                    Ok(n) => n,
                };
                from_broker.extend_from_slice(&chunk_b[..n]);
                loop {
                    let len = match consumer_guard::frame(&from_broker, FROM_BROKER_MAX) {
                        Ok(Some(len)) => len,
                        Ok(None) => break,
                        Err(e) => {
                            debug!(error = %e, "The broker sent a consumer an unframeable packet.");
                            return Ended::Closed;
                        }
                    };
                    let packet: Vec<u8> = from_broker.drain(..len).collect();
                    let sent = match guard.broker_packet(&packet) {
                        Some(bytes) => send(client, &bytes).await,
                        None => send(client, &packet).await,
                    };
                    if sent.is_err() {
                        return Ended::Closed;
                    }
                }
            }
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(to: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    to.write_all(bytes).await?;
    to.flush().await
}
