//! The controller's certificate authority: created at first start in
//! `<data_dir>/ca/`, it issues the server certificate of the API and the
//! broker listener, short-lived client certificates for enrolled agents
//! (from their CSRs, naming the agent id the controller decided), the
//! controller's own client certificate for external brokers, and the CRL.
//!
//! The only module that knows rcgen and x509-parser.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::SecureRandom as _;
use verge_shared::{AgentId, Timestamp};

/// The common name of the controller's own client certificate.
pub const CONTROLLER_CN: &str = "controller";
/// A consumer's certificate common name (and broker user name) is this
/// followed by its name. `+` is in no agent id, and Mosquitto applies no
/// `pattern` line to a user name that holds it (docs/consumers.md).
pub const CONSUMER_PREFIX: &str = "consumer+";
/// The SAN URI scheme that carries a consumer's name and regions:
/// `verge:consumer:<name>;regions=*` or `;regions=eu-west,us-east`.
const CONSUMER_URI: &str = "verge:consumer:";
/// How long a consumer certificate is valid.
pub const CONSUMER_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// How long the CA, server and controller certificates are valid (ten
/// years for the CA, one year for the others; both are re-issued at start).
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
const SERVICE_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// Issued certificates start a little in the past, for clocks that lag:
/// this much, but at most a tenth of the lifetime, so that a short-lived
/// certificate's "2/3 of the lifetime" still lies ahead when it is issued.
const BACKDATE: Duration = Duration::from_secs(300);
/// How long a CRL says it stays current. It is rewritten on every
/// revocation, at start and daily ([`CRL_REFRESH`]); a broker that reads it
/// (Mosquitto's `crlfile`) must be reloaded within this time or it refuses
/// every client once its copy has expired.
const CRL_VALIDITY: Duration = Duration::from_secs(7 * 86_400);
/// How often the running controller rewrites the CRL.
pub const CRL_REFRESH: Duration = Duration::from_secs(86_400);
/// The controller's own client certificate is re-issued when it has less
/// than this left (a third of its one-year life): at start, or by the
/// daily check of a running controller.
pub const CONTROLLER_RENEW_BEFORE: Duration = Duration::from_secs(120 * 86_400);

/// A CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not usable: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("the certificate signing request is not usable: {0}")]
    Csr(String),
    #[error("cannot issue a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("the system random source failed")]
    Random,
}

/// A certificate the CA issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// Lower-case hex of the serial number.
    pub serial: String,
    pub not_after: Timestamp,
    pub pem: String,
}

/// A revoked certificate, as listed in the CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedSerial {
    pub serial: String,
    pub revoked_at: Timestamp,
}

/// A certificate plus its private key, both PEM.
#[derive(Clone)]
pub struct KeyedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for KeyedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedCertificate(..)")
    }
}

/// The CA: its key and certificate, loaded from or created in `dir`.
pub struct Ca {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path` durably with `mode` ([`verge_durable::write_with_mode`]):
/// after a crash `path` holds its old contents or `contents`.
pub fn write_private(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    verge_durable::write_with_mode(path, contents, mode).map_err(io_error(path))
}

fn offset_time(t: Timestamp) -> time::OffsetDateTime {
    let nanos = i128::from(t.unix_millis()) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A client certificate's parameters: CN `common_name`, one SAN URI, a
/// fresh random serial (returned in hex), client authentication only.
fn client_params(common_name: &str, uri: &str) -> Result<(CertificateParams, String), CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.subject_alt_names = vec![SanType::URI(
        uri.try_into()
            .map_err(|e: rcgen::Error| CaError::Csr(e.to_string()))?,
    )];
    let serial = random_serial()?;
    let serial_hex = hex::encode(serial.to_bytes());
    params.serial_number = Some(serial);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    Ok((params, serial_hex))
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    // Positive and without a leading zero byte, so the DER encoding is the
    // same 16 bytes everywhere the serial is compared.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn validity(params: &mut CertificateParams, now: Timestamp, lifetime: Duration) -> Timestamp {
    let backdate = BACKDATE.min(lifetime / 10);
    let not_before = Timestamp::from_unix_millis(
        now.unix_millis()
            .saturating_sub(u64::try_from(backdate.as_millis()).unwrap_or(0)),
    );
    let not_after = now.saturating_add(lifetime);
    params.not_before = offset_time(not_before);
    params.not_after = offset_time(not_after);
    not_after
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Verge");
    dn.push(DnType::CommonName, common_name);
    dn
}

impl Ca {
    /// Loads the CA from `dir` (`ca.key`, mode 0600, and `ca.pem`), creating
    /// both at first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.pem");
        match std::fs::read_to_string(&key_path) {
            Ok(key_pem) => {
                let invalid = |detail: String| CaError::Invalid {
                    path: key_path.clone(),
                    detail,
                };
                let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(e.to_string()))?;
                let ca_pem = std::fs::read_to_string(&cert_path).map_err(io_error(&cert_path))?;
                let issuer =
                    Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| CaError::Invalid {
                        path: cert_path.clone(),
                        detail: e.to_string(),
                    })?;
                Ok(Self {
                    dir: dir.to_owned(),
                    issuer,
                    ca_pem,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::default();
                params.distinguished_name = name("Verge controller CA");
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                params.serial_number = Some(random_serial()?);
                validity(&mut params, Timestamp::now(), CA_VALIDITY);
                let cert = params.self_signed(&key)?;
                write_private(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
                write_private(&cert_path, cert.pem().as_bytes(), 0o644)?;
                let issuer = Issuer::new(params, key);
                Ok(Self {
                    dir: dir.to_owned(),
                    issuer,
                    ca_pem: cert.pem(),
                })
            }
            Err(e) => Err(io_error(&key_path)(e)),
        }
    }

    /// The CA certificate (PEM), the root every party verifies against.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Where the CA's files live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn issue_keyed(
        &self,
        mut params: CertificateParams,
        eku: ExtendedKeyUsagePurpose,
    ) -> Result<KeyedCertificate, CaError> {
        let key = KeyPair::generate()?;
        params.serial_number = Some(random_serial()?);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, Timestamp::now(), SERVICE_VALIDITY);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(KeyedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate for the API and the broker listener, for these
    /// DNS names and IP addresses.
    pub fn issue_server(&self, names: &[String]) -> Result<KeyedCertificate, CaError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = name(names.first().map_or("verge", String::as_str));
        self.issue_keyed(params, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// The controller's own client certificate (CN `controller`), for
    /// brokers that authenticate clients by certificate.
    pub fn issue_controller_client(&self) -> Result<KeyedCertificate, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(CONTROLLER_CN);
        self.issue_keyed(params, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// The controller's client certificate kept in `<dir>/controller.pem`
    /// and `controller.key`: reused while it is from this CA and has more
    /// than [`CONTROLLER_RENEW_BEFORE`] left, otherwise issued anew and
    /// written there. Returns it, its expiry, and whether it is new.
    pub fn controller_client(
        &self,
        now: Timestamp,
    ) -> Result<(KeyedCertificate, Timestamp, bool), CaError> {
        let cert_path = self.dir.join("controller.pem");
        let key_path = self.dir.join("controller.key");
        let kept = std::fs::read_to_string(&cert_path)
            .ok()
            .zip(std::fs::read_to_string(&key_path).ok())
            .and_then(|(cert_pem, key_pem)| {
                let not_after = self.issued_here(&cert_pem)?;
                KeyPair::from_pem(&key_pem).ok()?;
                Some((KeyedCertificate { cert_pem, key_pem }, not_after))
            });
        let renew_at = |not_after: Timestamp| {
            not_after.unix_millis() < now.saturating_add(CONTROLLER_RENEW_BEFORE).unix_millis()
        };
        match kept {
            Some((keyed, not_after)) if !renew_at(not_after) => Ok((keyed, not_after, false)),
            _ => {
                let keyed = self.issue_controller_client()?;
                let not_after =
                    self.issued_here(&keyed.cert_pem)
                        .ok_or_else(|| CaError::Invalid {
                            path: cert_path.clone(),
                            detail: "the new certificate does not parse".into(),
                        })?;
                write_private(&key_path, keyed.key_pem.as_bytes(), 0o600)?;
                write_private(&cert_path, keyed.cert_pem.as_bytes(), 0o644)?;
                Ok((keyed, not_after, true))
            }
        }
    }

    /// The expiry of `cert_pem` if this CA issued it (its authority key
    /// identifier is the CA's subject key identifier).
    fn issued_here(&self, cert_pem: &str) -> Option<Timestamp> {
        let key_id =
            |pem: &str, authority: bool| -> Option<(Vec<u8>, Timestamp)> {
                let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
                let cert = pem.parse_x509().ok()?;
                let id =
                    cert.extensions()
                        .iter()
                        .find_map(|e| match e.parsed_extension() {
                            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(
                                aki,
                            ) if authority => aki.key_identifier.as_ref().map(|k| k.0.to_vec()),
                            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(ski)
                                if !authority =>
                            {
                                Some(ski.0.to_vec())
                            }
                            _ => None,
                        })?;
                let seconds = cert.validity().not_after.timestamp();
                let not_after = Timestamp::from_unix_millis(
                    u64::try_from(seconds).unwrap_or(0).saturating_mul(1000),
                );
                Some((id, not_after))
            };
        let (ca_id, _) = key_id(&self.ca_pem, false)?;
        let (issuer_id, not_after) = key_id(cert_pem, true)?;
        (ca_id == issuer_id).then_some(not_after)
    }

    /// Writes a server certificate for a broker (Mosquitto's `certfile` and
    /// `keyfile`) for these DNS names and IP addresses into `out`, with
    /// the CA certificate (`cafile`) and, when the controller has written
    /// one, its CRL (`crlfile`): `server.crt`, `server.key` (mode 0600),
    /// `ca.crt`, `ca.crl`. Returns the server certificate's expiry.
    pub fn write_broker_files(&self, names: &[String], out: &Path) -> Result<Timestamp, CaError> {
        std::fs::create_dir_all(out).map_err(io_error(out))?;
        let server = self.issue_server(names)?;
        let not_after = self
            .issued_here(&server.cert_pem)
            .ok_or_else(|| CaError::Invalid {
                path: out.join("server.crt"),
                detail: "the new certificate does not parse".into(),
            })?;
        write_private(&out.join("server.key"), server.key_pem.as_bytes(), 0o600)?;
        write_private(&out.join("server.crt"), server.cert_pem.as_bytes(), 0o644)?;
        write_private(&out.join("ca.crt"), self.ca_pem.as_bytes(), 0o644)?;
        let crl_path = self.dir.join("crl.pem");
        match std::fs::read(&crl_path) {
            Ok(crl) => write_private(&out.join("ca.crl"), &crl, 0o644)?,
            // The controller has not written one yet: a list from this CA
            // that revokes nothing, so that `crlfile` can be enabled now.
            // The controller's own list replaces it once it runs.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let pem = self.crl_pem(&[], Timestamp::now())?;
                write_private(&out.join("ca.crl"), pem.as_bytes(), 0o644)?;
            }
            Err(e) => return Err(io_error(&crl_path)(e)),
        }
        Ok(not_after)
    }

    /// A client certificate for `agent` over the key in `csr_pem`, valid for
    /// `lifetime` from `now`. Whatever names the CSR asks for are ignored:
    /// the subject is the agent id the controller decided, with the SAN URI
    /// `verge:agent:<id>`.
    pub fn issue_client(
        &self,
        csr_pem: &str,
        agent: &AgentId,
        lifetime: Duration,
        now: Timestamp,
    ) -> Result<Issued, CaError> {
        if csr_pem.len() > verge_shared::enroll::MAX_CSR_PEM_BYTES {
            return Err(CaError::Csr(format!(
                "it is {} bytes, over the limit of {}",
                csr_pem.len(),
                verge_shared::enroll::MAX_CSR_PEM_BYTES
            )));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let (mut params, serial_hex) =
            client_params(agent.as_str(), &format!("verge:agent:{agent}"))?;
        let not_after = validity(&mut params, now, lifetime);
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = request.signed_by(&self.issuer)?;
        Ok(Issued {
            serial: serial_hex,
            not_after,
            pem: cert.pem(),
        })
    }

    /// A read-only consumer's client certificate: CN
    /// `consumer+<name>`, its regions in a SAN URI (`*` for all). Over the
    /// key in `csr_pem` when given (its names are ignored), else over a key
    /// made here, returned PEM with the certificate.
    pub fn issue_consumer(
        &self,
        name: &str,
        regions: &[String],
        csr_pem: Option<&str>,
        now: Timestamp,
    ) -> Result<(Issued, Option<String>), CaError> {
        let scope = if regions.is_empty() {
            "*".to_owned()
        } else {
            regions.join(",")
        };
        let (mut params, serial_hex) = client_params(
            &format!("{CONSUMER_PREFIX}{name}"),
            &format!("{CONSUMER_URI}{name};regions={scope}"),
        )?;
        let not_after = validity(&mut params, now, CONSUMER_VALIDITY);
        let (pem, key_pem) = match csr_pem {
            Some(csr_pem) => {
                if csr_pem.len() > verge_shared::enroll::MAX_CSR_PEM_BYTES {
                    return Err(CaError::Csr(format!(
                        "it is {} bytes, over the limit of {}",
                        csr_pem.len(),
                        verge_shared::enroll::MAX_CSR_PEM_BYTES
                    )));
                }
                let csr = CertificateSigningRequestParams::from_pem(csr_pem)
                    .map_err(|e| CaError::Csr(e.to_string()))?;
                let request = CertificateSigningRequestParams {
                    params,
                    public_key: csr.public_key,
                };
                (request.signed_by(&self.issuer)?.pem(), None)
            }
            None => {
                let key = KeyPair::generate()?;
                let cert = params.signed_by(&key, &self.issuer)?;
                (cert.pem(), Some(key.serialize_pem()))
            }
        };
        Ok((
            Issued {
                serial: serial_hex,
                not_after,
                pem,
            },
            key_pem,
        ))
    }

    /// Writes `<dir>/crl.pem` listing `revoked` (for Mosquitto's `crlfile`).
    pub fn write_crl(&self, revoked: &[RevokedSerial], now: Timestamp) -> Result<(), CaError> {
        let pem = self.crl_pem(revoked, now)?;
        write_private(&self.dir.join("crl.pem"), pem.as_bytes(), 0o644)
    }

    /// A CRL listing `revoked`, signed now, PEM.
    fn crl_pem(&self, revoked: &[RevokedSerial], now: Timestamp) -> Result<String, CaError> {
        let revoked_certs = revoked
            .iter()
            .filter_map(|r| {
                let bytes = hex::decode(&r.serial).ok()?;
                Some(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: offset_time(r.revoked_at),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: offset_time(now),
            next_update: offset_time(now.saturating_add(CRL_VALIDITY)),
            crl_number: SerialNumber::from_slice(&now.unix_millis().to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer)?;
        Ok(crl.pem()?)
    }
}

/// What the TLS layer needs to know about a verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject common name: an agent id, or [`CONTROLLER_CN`].
    pub common_name: String,
    /// Lower-case hex of the serial number.
    pub serial: String,
    pub not_after: Timestamp,
}

/// Reads the subject CN, serial and expiry of a DER certificate.
pub fn peer_identity(der: &[u8]) -> Result<PeerIdentity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("the certificate has no subject common name")?
        .to_owned();
    let serial = hex::encode(cert.raw_serial());
    let seconds = cert.validity().not_after.timestamp();
    let not_after =
        Timestamp::from_unix_millis(u64::try_from(seconds).unwrap_or(0).saturating_mul(1000));
    Ok(PeerIdentity {
        common_name,
        serial,
        not_after,
    })
}

/// What a consumer certificate allows: read-only, in these regions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerScope {
    pub name: String,
    /// Empty for every region.
    pub regions: Vec<String>,
}

/// Whether the verified certificate `der` is a consumer's: `Ok(None)` for
/// an agent or the controller, `Ok(Some)` with its scope for a consumer,
/// and an error for a consumer name without a readable scope (refused,
/// never taken as unlimited).
pub fn consumer_scope(der: &[u8]) -> Result<Option<ConsumerScope>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let Some(name) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .and_then(|cn| cn.strip_prefix(CONSUMER_PREFIX))
    else {
        return Ok(None);
    };
    let uris = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let scope = uris
        .iter()
        .find_map(|uri| uri.strip_prefix(CONSUMER_URI))
        .and_then(|rest| rest.split_once(";regions="))
        .filter(|(named, _)| *named == name)
        .map(|(_, regions)| regions)
        .ok_or_else(|| format!("the consumer certificate of {name:?} names no regions"))?;
    let regions = match scope {
        "*" => Vec::new(),
        list => list.split(',').map(str::to_owned).collect(),
    };
    if regions.iter().any(|r| r.is_empty() || r == "*") {
        return Err(format!(
            "the consumer certificate of {name:?} has a malformed region list"
        ));
    }
    Ok(Some(ConsumerScope {
        name: name.to_owned(),
        regions,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn csr(common_name: &str) -> String {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    #[test]
    fn ca_is_created_once_and_issues_client_certificates_for_the_decided_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Ca::load_or_create(dir.path()).expect("load");
        assert_eq!(ca.ca_pem(), again.ca_pem());

        // The CSR asks for "edge-admin"; the controller decides "edge-7".
        let agent = AgentId::new("edge-7").expect("id");
        let now = Timestamp::now();
        let issued = again
            .issue_client(&csr("edge-admin"), &agent, Duration::from_secs(60), now)
            .expect("issue");
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(issued.pem.as_bytes())
            .map(|d: rustls_pki_types::CertificateDer<'static>| d)
            .expect("pem");
        let peer = peer_identity(&der).expect("parse");
        assert_eq!(peer.common_name, "edge-7");
        assert_eq!(peer.serial, issued.serial);
        assert_eq!(
            peer.not_after.unix_millis() / 1000,
            issued.not_after.unix_millis() / 1000
        );
        // Signed by the CA: a rustls verifier rooted at the CA accepts it.
        crate::tls::verify_with_ca(ca.ca_pem(), &der).expect("chains to the CA");
        // ...and one rooted at another CA does not.
        let other = tempfile::tempdir().expect("tempdir");
        let other = Ca::load_or_create(other.path()).expect("other CA");
        assert!(crate::tls::verify_with_ca(other.ca_pem(), &der).is_err());

        assert!(matches!(
            ca.issue_client("not a csr", &agent, Duration::from_secs(60), now),
            Err(CaError::Csr(_))
        ));
    }

    #[test]
    fn consumer_certificates_carry_their_scope_and_no_agent_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let now = Timestamp::now();
        let regions = ["eu-west".to_owned(), "us-east".to_owned()];
        let (issued, key) = ca
            .issue_consumer("grafana", &regions, None, now)
            .expect("issue");
        assert!(key.is_some(), "the key is made here without a CSR");
        let der: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(issued.pem.as_bytes()).expect("pem");
        crate::tls::verify_with_ca(ca.ca_pem(), &der).expect("chains to the CA");
        let peer = peer_identity(&der).expect("parse");
        assert_eq!(peer.common_name, "consumer+grafana");
        assert!(AgentId::new(peer.common_name.as_str()).is_err());
        assert_eq!(
            consumer_scope(&der).expect("scope"),
            Some(ConsumerScope {
                name: "grafana".into(),
                regions: regions.to_vec(),
            })
        );
        // Every region, over a CSR's key (no key returned).
        let (all, key) = ca
            .issue_consumer("telegraf", &[], Some(&csr("edge-1")), now)
            .expect("issue");
        assert!(key.is_none());
        let der: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(all.pem.as_bytes()).expect("pem");
        assert_eq!(
            peer_identity(&der).expect("parse").common_name,
            "consumer+telegraf"
        );
        assert_eq!(
            consumer_scope(&der).expect("scope").map(|s| s.regions),
            Some(Vec::new())
        );
        // An agent's certificate is not a consumer's.
        let agent = ca
            .issue_client(
                &csr("x"),
                &AgentId::new("edge-1").expect("id"),
                Duration::from_secs(60),
                now,
            )
            .expect("issue");
        let der: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(agent.pem.as_bytes()).expect("pem");
        assert_eq!(consumer_scope(&der).expect("scope"), None);
    }

    #[test]
    fn crl_lists_the_revoked_serials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let agent = AgentId::new("edge-1").expect("id");
        let now = Timestamp::now();
        let issued = ca
            .issue_client(&csr("x"), &agent, Duration::from_secs(60), now)
            .expect("issue");
        ca.write_crl(
            &[RevokedSerial {
                serial: issued.serial.clone(),
                revoked_at: now,
            }],
            now,
        )
        .expect("crl");
        let pem = std::fs::read(dir.path().join("crl.pem")).expect("crl file");
        let der: rustls_pki_types::CertificateRevocationListDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(&pem).expect("crl pem");
        let (_, crl) = x509_parser::parse_x509_crl(&der).expect("crl parses");
        let serials: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect();
        assert_eq!(serials, vec![issued.serial]);
    }
}
