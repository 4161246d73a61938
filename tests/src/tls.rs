//! TLS for the harness: HTTP clients that trust the controller's CA, and a
//! raw MQTT-over-TLS probe that reports whether the broker answered a
//! CONNECT with a CONNACK, with or without a client certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How long the probe waits for the broker's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Installs ring as the process-wide rustls provider, so that any reqwest
/// client built without an explicit configuration works too. Idempotent.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: Option<&str>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.unwrap_or_default().as_bytes()) {
        roots.add(cert.context("CA PEM")?)?;
    }
    Ok(roots)
}

/// A client configuration trusting `ca_pem` (nothing when `None`),
/// presenting `identity` (certificate PEM, key PEM) when given.
pub fn client_config(ca_pem: Option<&str>, identity: Option<(&str, &str)>) -> Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?);
    Ok(match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .context("client certificate PEM")?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).context("client key PEM")?;
            builder.with_client_auth_cert(chain, key)?
        }
    })
}

/// An HTTP client trusting the controller's CA (or plain HTTP only).
pub fn http_client(ca_pem: Option<&str>) -> Result<reqwest::Client> {
    http_client_from(ca_pem, None)
}

/// [`http_client`] connecting from `local` (another loopback address is,
/// to the controller, another client).
pub fn http_client_from(
    ca_pem: Option<&str>,
    local: Option<std::net::IpAddr>,
) -> Result<reqwest::Client> {
    install_provider();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(ca_pem, None)?)
        .local_address(local)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// MQTT 3.1.1 CONNECT with a clean session and `client_id`.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x1e];
    body.extend_from_slice(&u16::try_from(id.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10, u8::try_from(body.len()).unwrap_or(0)];
    packet.extend_from_slice(&body);
    packet
}

/// Sends CONNECT and reads the answer: `Ok(())` only for an accepting CONNACK.
async fn connect_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    client_id: &str,
) -> Result<()> {
    stream.write_all(&connect_packet(client_id)).await?;
    stream.flush().await?;
    let mut answer = [0u8; 4];
    tokio::time::timeout(ANSWER_TIMEOUT, stream.read_exact(&mut answer))
        .await
        .context("no answer in time")??;
    if answer != [0x20, 0x02, 0x00, 0x00] {
        bail!("answer {answer:02x?} is not an accepting CONNACK");
    }
    Ok(())
}

/// Connects to the broker at `addr` over TLS (verifying it against
/// `ca_pem`), optionally with a client certificate, and sends CONNECT.
/// `Ok(())` means the broker accepted the client.
pub async fn mqtt_tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    client_id: &str,
) -> Result<()> {
    let config = client_config(Some(ca_pem), identity)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = tokio::time::timeout(ANSWER_TIMEOUT, connector.connect(name, tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
    connect_over(&mut tls, client_id).await
}

/// Sends a plain-TCP MQTT CONNECT to `addr`; `Ok(())` means a CONNACK came back.
pub async fn mqtt_plain_connect(addr: SocketAddr, client_id: &str) -> Result<()> {
    let mut tcp = TcpStream::connect(addr).await?;
    connect_over(&mut tcp, client_id).await
}
