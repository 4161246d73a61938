//! TLS for the controller (rustls with the ring provider): server
//! configurations for the API (client certificate optional) and the broker
//! listener (client certificate required), both refusing revoked
//! certificates at the handshake, the HTTPS accept loop of the API, and the
//! client configuration for an external `mqtts://` broker.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::client::ResolvesClientCert;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::app::HttpsClient;
use crate::ca::{KeyedCertificate, PeerIdentity, peer_identity};

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most concurrent HTTPS connections to the API; more are closed at once.
const MAX_API_CONNECTIONS: usize = 1024;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// A TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} is not usable: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The ring crypto provider; used explicitly everywhere so that no process
/// depends on a process-wide default having been installed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide provider (first thing in `main`).
pub fn install_provider() {
    // Fails only when a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Pem {
            what: "the CA certificate",
            detail: e.to_string(),
        })?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem {
            what: "the CA certificate",
            detail: "there is no certificate in it".into(),
        });
    }
    Ok(Arc::new(roots))
}

/// The client certificate the controller presents to an external broker.
/// Renewal swaps it; every later handshake (each reconnect) presents the
/// new one, and a connection already open is left alone.
#[derive(Debug)]
pub struct ClientIdentity {
    current: RwLock<Arc<CertifiedKey>>,
}

fn certified_key(keyed: &KeyedCertificate) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(keyed.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "the client certificate",
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "the client certificate",
            detail: "there is no certificate in it".into(),
        });
    }
    let key =
        PrivateKeyDer::from_pem_slice(keyed.key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "the client key",
            detail: e.to_string(),
        })?;
    let signing = provider().key_provider.load_private_key(key)?;
    let certified = CertifiedKey::new(chain, signing);
    // A key that does not belong to the certificate would only show as a
    // refused handshake at the broker; say so now.
    certified.keys_match().map_err(|e| TlsError::Pem {
        what: "the client key",
        detail: format!("it does not match the certificate: {e}"),
    })?;
    Ok(Arc::new(certified))
}

impl ClientIdentity {
    pub fn new(keyed: &KeyedCertificate) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            current: RwLock::new(certified_key(keyed)?),
        }))
    }

    /// From the next handshake on, presents `keyed`.
    pub fn swap(&self, keyed: &KeyedCertificate) -> Result<(), TlsError> {
        let key = certified_key(keyed)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
        Ok(())
    }
}

impl ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client configuration for an external `mqtts://` broker: its
/// certificate must chain to `ca_pem`, and `identity` is presented when the
/// broker asks for a client certificate.
pub fn broker_client_config(
    ca_pem: &str,
    identity: Arc<ClientIdentity>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = Arc::unwrap_or_clone(roots(ca_pem)?);
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_cert_resolver(identity),
    ))
}

/// Revoked agents and certificate serials, shared by every TLS listener.
/// Listeners watch [`Revocations::subscribe`] to close live connections.
#[derive(Debug)]
pub struct Revocations {
    state: RwLock<RevokedSet>,
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct RevokedSet {
    agents: HashSet<String>,
    serials: HashSet<String>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            state: RwLock::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Revocations {
    /// Whether a certificate is refused: its serial or its agent is revoked.
    pub fn is_revoked(&self, peer: &PeerIdentity) -> bool {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.serials.contains(&peer.serial) || state.agents.contains(&peer.common_name)
    }

    /// Revokes an agent and these serials; live connections are told.
    pub fn revoke(&self, agent: &str, serials: impl IntoIterator<Item = String>) {
        {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            state.agents.insert(agent.to_owned());
            state.serials.extend(serials);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Refuses these serials (certificates revoked before a re-enrollment).
    pub fn revoke_serials(&self, serials: impl IntoIterator<Item = String>) {
        self.state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .serials
            .extend(serials);
    }

    /// Lets an agent in again (it enrolled anew); its revoked serials stay refused.
    pub fn reinstate(&self, agent: &str) {
        self.state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .agents
            .remove(agent);
    }

    /// Notified on every revocation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// WebPKI client verification against the CA, then a revocation check.
#[derive(Debug)]
struct RevokingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revocations: Arc<Revocations>,
}

impl ClientCertVerifier for RevokingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let peer = peer_identity(end_entity).map_err(rustls::Error::General)?;
        if self.revocations.is_revoked(&peer) {
            warn!(agent = %peer.common_name, serial = %peer.serial, "Refused a revoked client certificate.");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether the listener demands a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// The API: operators use the bearer token; a presented certificate
    /// must still verify and not be revoked.
    Optional,
    /// The broker listener.
    Required,
}

/// A server configuration with `server` as the certificate, verifying
/// client certificates against `ca_pem` and `revocations`.
pub fn server_config(
    ca_pem: &str,
    server: &KeyedCertificate,
    client_auth: ClientAuth,
    revocations: Arc<Revocations>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider.clone());
    let inner = match client_auth {
        ClientAuth::Optional => builder.allow_unauthenticated().build()?,
        ClientAuth::Required => builder.build()?,
    };
    let verifier = Arc::new(RevokingVerifier { inner, revocations });
    let chain = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "the server certificate",
            detail: e.to_string(),
        })?;
    let key =
        PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "the server key",
            detail: e.to_string(),
        })?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Checks that `der` chains to `ca_pem` as a client certificate (tests and
/// diagnostics).
pub fn verify_with_ca(ca_pem: &str, der: &CertificateDer<'_>) -> Result<(), TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider()).build()?;
    verifier.verify_client_cert(der, &[], UnixTime::now())?;
    Ok(())
}

/// Admits TCP connections to a TLS listener, at most `limit` at once: a
/// connection over the limit is closed at once, and accept errors (out of
/// file descriptors, say) are retried after a pause.
pub struct Admission {
    limit: Arc<Semaphore>,
    max: usize,
    what: &'static str,
}

impl Admission {
    pub fn new(max: usize, what: &'static str) -> Self {
        Self {
            limit: Arc::new(Semaphore::new(max)),
            max,
            what,
        }
    }

    /// The next admitted connection with its permit (held for as long as
    /// the connection lives), or `None` once `cancel` fires.
    pub async fn next(
        &self,
        listener: &TcpListener,
        cancel: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        loop {
            let (tcp, peer) = tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(what = self.what, error = %e, "Accepting a connection failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            match Arc::clone(&self.limit).try_acquire_owned() {
                Ok(permit) => return Some((tcp, peer, permit)),
                Err(_) => {
                    warn!(what = self.what, %peer, limit = self.max, "Too many connections; closed a new one.");
                }
            }
        }
    }
}

/// Serves `router` over HTTPS on `listener` until `cancel`: bounded
/// connections, a handshake deadline, and a header deadline per request.
pub async fn serve_https(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    router: Router,
    cancel: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(config);
    let admission = Admission::new(MAX_API_CONNECTIONS, "HTTPS");
    let connections = TaskTracker::new();
    while let Some((tcp, peer, permit)) = admission.next(&listener, &cancel).await {
        let acceptor = acceptor.clone();
        let router = router.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    return debug!(%peer, error = %e, "A TLS handshake on the API failed.");
                }
                Err(_) => return debug!(%peer, "A TLS handshake on the API timed out."),
            };
            serve_connection(tls, peer, router, cancel).await;
        });
    }
    connections.close();
    connections.wait().await;
}

async fn serve_connection(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    router: Router,
    cancel: CancellationToken,
) {
    // Verified (and checked against revocation) during the handshake.
    let client = HttpsClient {
        certificate_name: tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|der| peer_identity(der).ok())
            .map(|peer| peer.common_name),
    };
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        // What `into_make_service_with_connect_info` gives plain HTTP.
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        request.extensions_mut().insert(client.clone());
        router.clone().oneshot(request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(e) = served {
                debug!(%peer, error = %e, "An HTTPS connection ended with an error.");
            }
        }
        () = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
        }
    }
}
