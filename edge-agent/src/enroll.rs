//! Enrollment with a bootstrap token, and online certificate renewal.
//!
//! First start with a TLS URL and no certificate: the agent makes a P-256
//! key and a CSR locally and posts them with the token (over HTTPS verified
//! against `ca_file`); the certificate, key and CA land under
//! `<data_dir>/tls/`. The token is used once and written nowhere.
//!
//! Renewal runs at 2/3 of the certificate's lifetime, signed by the node
//! key; the new certificate goes to disk and into the resolver the MQTT
//! connection reads at every handshake, so nothing restarts. Failures are
//! retried with capped backoff, and with less than 1/6 of the lifetime left
//! they are logged as warnings and put on the status board. A node that was
//! offline past its expiry keeps running its workloads and renews when the
//! controller answers again (within the controller's renewal grace); its
//! MQTT reconnects succeed from then on.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use verge_shared::enroll::{EnrollRequest, EnrollResponse, RenewalResponse};
use verge_shared::{AgentId, PublicKey, Timestamp};

use crate::alarms::Observations;
use crate::config::Config;
use crate::http::{self, HttpError};
use crate::report::{Board, EventSink, Signer};
use crate::tls::{self, CurrentCert, Material, TlsError, TlsFiles};
use verge_shared::alarms::AlarmId;
use verge_shared::messages::EventKind;

/// Largest answer accepted from the enrollment and renewal endpoints.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// How long one enrollment or renewal request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The client for enrollment and renewal; `REQUEST_TIMEOUT` bounds the whole exchange.
const CLIENT: http::Client = http::Client {
    connect_timeout: REQUEST_TIMEOUT,
    read_timeout: REQUEST_TIMEOUT,
};
/// Longest wait between renewal attempts.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Why the agent could not get or load its TLS identity.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "the agent has no certificate in {0} and no enrollment token: set enroll_token (or VERGE_AGENT_ENROLL_TOKEN) with a token from `verge token create`"
    )]
    NotEnrolled(String),
    #[error("enrollment needs the controller's CA certificate: set ca_file")]
    NoCaFile,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot make a key or CSR: {0}")]
    Key(#[source] rcgen::Error),
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: HttpError,
    },
    #[error("{url}: the answer does not parse: {source}")]
    BadAnswer {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{url} refused: HTTP {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
}

impl EnrollError {
    /// Whether retrying cannot help (the binary exits with EX_CONFIG): no
    /// token or CA file, or the controller refused the request (4xx).
    pub fn is_config(&self) -> bool {
        match self {
            EnrollError::NotEnrolled(_) | EnrollError::NoCaFile => true,
            EnrollError::Refused { status, .. } => (400..500).contains(status),
            _ => false,
        }
    }
}

/// The agent's TLS identity in use.
#[derive(Clone, Debug)]
pub struct Identity {
    pub files: TlsFiles,
    pub ca_pem: String,
    pub current: Arc<CurrentCert>,
    /// Server verification against `ca_pem` without a client certificate,
    /// for renewal (which may need to happen after the certificate expired).
    pub https: Arc<rustls::ClientConfig>,
}

/// Whether the configuration asks for TLS anywhere.
pub fn wants_tls(config: &Config) -> bool {
    config.broker.tls || config.controller_url.starts_with("https://")
}

/// Loads the stored identity, or enrolls with the configured token.
pub async fn prepare(
    config: &Config,
    data_dir: &Path,
    node_key: PublicKey,
) -> Result<Identity, EnrollError> {
    let files = TlsFiles::new(data_dir);
    if files.enrolled() {
        let (material, ca_pem) = files.load()?;
        let https = Arc::new(tls::server_only_config(&ca_pem)?);
        info!(agent = %config.id, not_after = %material.not_after, "Loaded the node certificate.");
        return Ok(Identity {
            files,
            ca_pem,
            current: CurrentCert::new(material),
            https,
        });
    }
    let token = config
        .enroll_token
        .as_ref()
        .ok_or_else(|| EnrollError::NotEnrolled(files.dir.display().to_string()))?;
    let ca_file = config.ca_file.as_ref().ok_or(EnrollError::NoCaFile)?;
    let ca_pem = std::fs::read_to_string(ca_file).map_err(|source| TlsError::File {
        path: ca_file.clone(),
        source,
    })?;
    // The configured CA verifies HTTPS from enrollment on, in this run;
    // the next start uses the stored copy of the controller's CA.
    let https = Arc::new(tls::server_only_config(&ca_pem)?);
    let (key_pem, csr_pem) = key_and_csr(&config.id)?;
    let request = EnrollRequest {
        token: token.expose().to_owned(),
        agent_id: config.id.clone(),
        csr_pem,
        node_public_key: node_key,
    };
    let url = format!("{}/api/v1/enroll", config.controller_url);
    let response: EnrollResponse = post(
        &Some(https.clone()),
        &url,
        serde_json::to_vec(&request).unwrap_or_default(),
    )
    .await?;
    let material = Material::from_pem(&response.certificate_pem, &key_pem)?;
    files.store(&response.certificate_pem, &key_pem, &response.ca_pem)?;
    if let Some(bundle) = &response.trust_bundle {
        let bytes = serde_json::to_vec_pretty(bundle).unwrap_or_default();
        tls::write_durably(
            &data_dir.join("trust-bundle.json"),
            &bytes,
            verge_durable::PUBLIC,
        )?;
    }
    if response.region != config.region {
        warn!(agent = %config.id, configured = %config.region, token = %response.region,
            "The enrollment token binds this node to another region than its configuration names.");
    }
    info!(agent = %config.id, broker = %response.broker_url, region = %response.region,
        not_after = %material.not_after, "Enrolled with the controller.");
    Ok(Identity {
        files,
        https,
        ca_pem: response.ca_pem,
        current: CurrentCert::new(material),
    })
}

/// A new P-256 key (PEM) and a CSR for it naming `agent`.
fn key_and_csr(agent: &AgentId) -> Result<(String, String), EnrollError> {
    let key = rcgen::KeyPair::generate().map_err(EnrollError::Key)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, agent.as_str());
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(EnrollError::Key)?;
    Ok((key.serialize_pem(), csr))
}

/// Posts `body` (JSON) and reads a bounded JSON answer.
async fn post<T: serde::de::DeserializeOwned>(
    https: &http::Tls,
    url: &str,
    body: Vec<u8>,
) -> Result<T, EnrollError> {
    let http = |source: HttpError| EnrollError::Http {
        url: url.to_owned(),
        source,
    };
    let exchange = async {
        let response = CLIENT.post_json_with(https, url, body).await?;
        let status = response.status;
        Ok((status, response.bytes(MAX_RESPONSE_BYTES).await?))
    };
    let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| http(HttpError::ReadTimeout(REQUEST_TIMEOUT)))?
        .map_err(http)?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        return Err(EnrollError::Refused {
            url: url.to_owned(),
            status: status.as_u16(),
            message,
        });
    }
    serde_json::from_slice(&bytes).map_err(|source| EnrollError::BadAnswer {
        url: url.to_owned(),
        source,
    })
}

/// Renews the certificate at 2/3 of its lifetime, until `stop`.
pub async fn renewal_loop(
    identity: Identity,
    controller_url: String,
    signer: Arc<Signer>,
    board: Arc<Board>,
    events: EventSink,
    alarms: Observations,
    stop: CancellationToken,
) {
    let agent = signer.agent().clone();
    let url = format!("{controller_url}/api/v1/nodes/{agent}/certificate");
    loop {
        let material = identity.current.get();
        let wait = material.renew_at().saturating_since(Timestamp::now());
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let lifetime = material.not_after.saturating_since(material.not_before);
        let cap = (lifetime / 10).clamp(Duration::from_secs(1), MAX_RETRY);
        let mut backoff = Duration::from_secs(1).min(cap);
        loop {
            match renew_once(&identity, &url, &signer).await {
                Ok(renewed) => {
                    info!(agent = %agent, not_after = %renewed.not_after, "Renewed the node certificate.");
                    alarms.observe(
                        AlarmId::CertificateRenewalFailing,
                        false,
                        format!(
                            "renewed; the certificate is valid until {}",
                            renewed.not_after
                        ),
                    );
                    identity.current.swap(renewed);
                    board.set_certificate_warning(None);
                    break;
                }
                Err(e) => {
                    alarms.observe(
                        AlarmId::CertificateRenewalFailing,
                        true,
                        format!(
                            "renewal failed (retrying within {} s); the certificate expires at {}: {e}",
                            backoff.as_secs(),
                            material.not_after
                        ),
                    );
                    let now = Timestamp::now();
                    if now >= material.warn_at() {
                        let text = format!(
                            "certificate renewal keeps failing; the certificate expires at {}: {e}",
                            material.not_after
                        );
                        warn!(agent = %agent, expires_at = %material.not_after, error = %e, "Certificate renewal keeps failing close to expiry.");
                        // One alarm per episode, not per retry.
                        if board.certificate_warning().is_none() {
                            events
                                .raise(EventKind::CertificateRenewalFailing, None, None, &text)
                                .await;
                        }
                        board.set_certificate_warning(Some(text));
                    } else {
                        info!(agent = %agent, error = %e, retry_in = ?backoff, "Certificate renewal failed; retrying.");
                    }
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(cap);
                }
            }
        }
    }
}

/// One signed renewal request; the new certificate is stored before it is used.
async fn renew_once(
    identity: &Identity,
    url: &str,
    signer: &Signer,
) -> Result<Material, EnrollError> {
    let (key_pem, csr_pem) = key_and_csr(signer.agent())?;
    let envelope = signer.renewal_request(csr_pem);
    let response: RenewalResponse = post(&Some(identity.https.clone()), url, envelope).await?;
    let material = Material::from_pem(&response.certificate_pem, &key_pem)?;
    identity
        .files
        .store(&response.certificate_pem, &key_pem, &response.ca_pem)?;
    Ok(material)
}
