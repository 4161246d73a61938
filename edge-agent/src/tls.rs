//! The agent's TLS identity: its client certificate, key and the
//! controller's CA under `<data_dir>/tls/`, and the rustls client
//! configurations built from them (ring provider).
//!
//! The MQTT configuration's client-certificate resolver reads the current
//! certificate from shared state, so a renewed certificate is used from the
//! next TLS handshake on without restarting anything.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use verge_shared::Timestamp;

/// Something in the TLS files or configuration is not usable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

    /// Stores a certificate, its key (mode 0600) and the CA, each durably
    /// ([`verge_durable`]); the certificate last, as the commit point.
    pub fn store(&self, cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<(), TlsError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| file_error(&self.dir, e))?;
        write_durably(&self.key(), key_pem.as_bytes(), verge_durable::PRIVATE)?;
        write_durably(&self.ca(), ca_pem.as_bytes(), verge_durable::PUBLIC)?;
        write_durably(&self.cert(), cert_pem.as_bytes(), verge_durable::PUBLIC)
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

fn file_error(path: &Path, source: std::io::Error) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path` durably with `mode` ([`verge_durable`]).
pub fn write_durably(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    verge_durable::write_with_mode(path, contents, mode).map_err(|e| file_error(path, e))
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

/// The validity of a DER certificate (RFC 5280, section 4.1): the fifth
/// field of `tbsCertificate`, read with `der` rather than a whole X.509
/// parser (the agent needs nothing else from its certificate).
fn validity(cert: &[u8]) -> der::Result<(Timestamp, Timestamp)> {
    use der::asn1::{AnyRef, ContextSpecific};
    use der::{Decode as _, Reader as _, TagNumber};
    fn skip_rest<'a>(r: &mut der::SliceReader<'a>) -> der::Result<()> {
        r.read_slice(r.remaining_len()).map(|_| ())
    }
    let mut reader = der::SliceReader::new(cert)?;
    let validity = reader.sequence(|certificate| {
        let validity = certificate.sequence(|tbs| {
            ContextSpecific::<AnyRef<'_>>::decode_explicit(tbs, TagNumber(0))?; // version
            AnyRef::decode(tbs)?; // serialNumber
            AnyRef::decode(tbs)?; // signature
            AnyRef::decode(tbs)?; // issuer
            let validity = tbs.sequence(|v| der::Result::Ok((time(v)?, time(v)?)))?;
            skip_rest(tbs)?;
            der::Result::Ok(validity)
        })?;
        skip_rest(certificate)?;
        der::Result::Ok(validity)
    })?;
    reader.finish()?;
    Ok(validity)
}

/// `Time ::= CHOICE { utcTime UTCTime, generalTime GeneralizedTime }`.
fn time(r: &mut der::SliceReader<'_>) -> der::Result<Timestamp> {
    use der::asn1::{GeneralizedTime, UtcTime};
    use der::{Decode as _, Tag};
    let since_epoch = match Tag::peek(r)? {
        Tag::UtcTime => UtcTime::decode(r)?.to_unix_duration(),
        _ => GeneralizedTime::decode(r)?.to_unix_duration(),
    };
    Ok(Timestamp::from_unix_millis(
        u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
    ))
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
        let (not_before, not_after) = validity(first).map_err(|e| TlsError::Invalid {
            what: "the client certificate",
            detail: e.to_string(),
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["node-1".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        params
            .self_signed(&key)
            .expect("certificate")
            .der()
            .to_vec()
    }

    #[test]
    fn validity_reads_utc_and_generalized_times() {
        // Before 2050 the dates are UTCTime, from 2050 on GeneralizedTime.
        let (from, to) = validity(&certificate((2026, 1, 2), (2031, 5, 6))).expect("validity");
        assert_eq!(from.unix_millis(), 1_767_312_000_000);
        assert_eq!(to.unix_millis(), 1_935_792_000_000);
        let (_, to) = validity(&certificate((2026, 1, 2), (2051, 7, 8))).expect("validity");
        assert_eq!(to.unix_millis(), 2_572_387_200_000);
    }

    #[test]
    fn validity_refuses_what_is_not_a_certificate() {
        let der = certificate((2026, 1, 2), (2031, 5, 6));
        assert!(validity(&der[..der.len() / 2]).is_err(), "truncated");
        assert!(
            validity(b"\x30\x03\x02\x01\x01").is_err(),
            "a sequence of one integer"
        );
        assert!(validity(b"not der at all").is_err());
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(validity(&trailing).is_err(), "bytes after the certificate");
    }
}
