//! The agent's TLS identity: its client certificate, key and the
//! controller's CA under `<data_dir>/tls/`, and the rustls client
//! configurations built from them (ring provider).
//!
//! The MQTT configuration's client-certificate resolver reads the current
//! certificate from shared state, so a renewed certificate is used from the
//! next TLS handshake on without restarting anything.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use verge_shared::Timestamp;

/// Something in the TLS files or configuration is not usable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The ring provider, used explicitly by every configuration here.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The files of the agent's TLS identity.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub dir: PathBuf,
}

impl TlsFiles {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("tls"),
        }
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Whether an enrollment has left a certificate here.
    pub fn enrolled(&self) -> bool {
        self.cert().exists() && self.key().exists() && self.ca().exists()
    }

    /// Stores a certificate, its key (mode 0600) and the CA, each by
    /// temp file and rename; the certificate last, as the commit point.
    pub fn store(&self, cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<(), TlsError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| file_error(&self.dir, e))?;
        write_atomic(&self.key(), key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.ca(), ca_pem.as_bytes(), 0o644)?;
        write_atomic(&self.cert(), cert_pem.as_bytes(), 0o644)
    }

    fn read(&self, path: &Path) -> Result<String, TlsError> {
        std::fs::read_to_string(path).map_err(|e| file_error(path, e))
    }

    /// Loads the stored certificate and key.
    pub fn load(&self) -> Result<(Material, String), TlsError> {
        let cert = self.read(&self.cert())?;
        let key = self.read(&self.key())?;
        let ca = self.read(&self.ca())?;
        Ok((Material::from_pem(&cert, &key)?, ca))
    }
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

/// Writes a file by temp file, fsync and rename, with `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| file_error(&tmp, e))?;
    file.write_all(contents).map_err(|e| file_error(&tmp, e))?;
    file.sync_all().map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}

/// A certificate with its key, ready for rustls, and its validity.
#[derive(Clone)]
pub struct Material {
    pub key: Arc<CertifiedKey>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn to_timestamp(t: x509_parser::time::ASN1Time) -> Timestamp {
    Timestamp::from_unix_millis(
        u64::try_from(t.timestamp())
            .unwrap_or(0)
            .saturating_mul(1000),
    )
}

impl Material {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Invalid {
                what: "the client certificate",
                detail: e.to_string(),
            })?;
        let first = chain.first().ok_or(TlsError::Invalid {
            what: "the client certificate",
            detail: "no certificate in the PEM".into(),
        })?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(first).map_err(|e| TlsError::Invalid {
                what: "the client certificate",
                detail: e.to_string(),
            })?;
        let not_before = to_timestamp(parsed.validity().not_before);
        let not_after = to_timestamp(parsed.validity().not_after);
        let key_der =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Invalid {
                what: "the client key",
                detail: e.to_string(),
            })?;
        let signing = provider().key_provider.load_private_key(key_der)?;
        Ok(Self {
            key: Arc::new(CertifiedKey::new(chain, signing)),
            not_before,
            not_after,
        })
    }

    /// When to renew: at 2/3 of the lifetime.
    pub fn renew_at(&self) -> Timestamp {
        let lifetime = self.not_after.saturating_since(self.not_before);
        self.not_before.saturating_add(lifetime * 2 / 3)
    }

    /// When renewal failing becomes an alarm: 1/6 of the lifetime left.
    pub fn warn_at(&self) -> Timestamp {
        let lifetime = self.not_after.saturating_since(self.not_before);
        self.not_before.saturating_add(lifetime * 5 / 6)
    }
}

/// The certificate the agent presents now; swapped by renewal.
#[derive(Debug)]
pub struct CurrentCert {
    current: RwLock<Material>,
}

impl CurrentCert {
    pub fn new(material: Material) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(material),
        })
    }

    pub fn get(&self) -> Material {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// From now on, every new TLS handshake presents `material`.
    pub fn swap(&self, material: Material) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = material;
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get().key)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Invalid {
            what: "the CA certificate",
            detail: e.to_string(),
        })?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Invalid {
            what: "the CA certificate",
            detail: "no certificate in the PEM".into(),
        });
    }
    Ok(roots)
}

/// Server verification against the controller's CA, presenting `current`
/// as the client certificate (MQTT).
pub fn mutual_config(ca_pem: &str, current: Arc<CurrentCert>) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_cert_resolver(current))
}

/// Server verification against the controller's CA, no client certificate
/// (enrollment, renewal and artifact downloads over HTTPS).
pub fn server_only_config(ca_pem: &str) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth())
}

/// The HTTPS configuration of this process, set once when the agent has its CA.
static HTTPS: OnceLock<ClientConfig> = OnceLock::new();

/// Makes HTTP clients built from now on verify HTTPS servers against `ca_pem`.
pub fn set_https_roots(ca_pem: &str) -> Result<(), TlsError> {
    let config = server_only_config(ca_pem)?;
    // A second call (same CA) keeps the first configuration.
    let _ = HTTPS.set(config);
    Ok(())
}

/// A reqwest client builder with this process's TLS configuration: the
/// controller's CA once known, otherwise one that trusts nothing (plain
/// HTTP only). reqwest never falls back to a default crypto provider.
pub fn http_client_builder() -> Result<reqwest::ClientBuilder, TlsError> {
    let config = match HTTPS.get() {
        Some(config) => config.clone(),
        None => ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth(),
    };
    Ok(reqwest::Client::builder().tls_backend_preconfigured(config))
}
