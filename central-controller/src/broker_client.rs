//! How the controller's own MQTT client gets into an external broker: the
//! CA it verifies the broker's certificate against (`broker.ca_file`, or
//! its own CA), the client certificate it presents (its own, CN
//! `controller`, issued from its CA and renewed; or the operator's
//! `broker.cert_file`/`key_file`, reread when they change) and an optional
//! login (`broker.username`, `broker.password_file`). Also keeps the CRL
//! that such a broker reads (`<data_dir>/ca/crl.pem`) from expiring.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use verge_shared::Timestamp;

use crate::app::App;
use crate::ca::{self, Ca, KeyedCertificate};
use crate::config::{BrokerEndpoint, Config};
use crate::mqtt::{Access, Login};
use crate::tls::{self, ClientIdentity};

/// How often a running controller renews its certificate when due,
/// rereads the operator's certificate files and rewrites the CRL.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(12 * 3600);
/// Most bytes read from a password file.
const MAX_PASSWORD_BYTES: u64 = 4096;

/// Why the broker client could not be prepared; each names the field.
#[derive(Debug, thiserror::Error)]
pub enum BrokerClientError {
    #[error("broker.{field}: cannot read {path}: {source}")]
    Read {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("broker.{field}: {path} is not usable: {detail}")]
    Invalid {
        field: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("the controller's client certificate for the broker: {0}")]
    Ca(#[from] ca::CaError),
    #[error("the controller's client certificate for the broker: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Where the presented certificate comes from, for its upkeep.
enum Source {
    /// Issued by the controller's CA and kept in `<data_dir>/ca/`.
    Own(Box<Ca>),
    /// The operator's files, as last read.
    Files {
        cert: PathBuf,
        key: PathBuf,
        loaded: KeyedCertificate,
    },
}

/// The client's TLS identity and what keeps it current.
pub struct Upkeep {
    identity: Arc<ClientIdentity>,
    source: Source,
}

fn read(field: &'static str, path: &Path) -> Result<String, BrokerClientError> {
    use std::io::Read as _;
    let fail = |source| BrokerClientError::Read {
        field,
        path: path.to_owned(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(fail)?
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(fail)?;
    Ok(text)
}

fn read_files(cert: &Path, key: &Path) -> Result<KeyedCertificate, BrokerClientError> {
    Ok(KeyedCertificate {
        cert_pem: read("cert_file", cert)?,
        key_pem: read("key_file", key)?,
    })
}

/// Reads the login's password: the file's first line, which must not be empty.
fn read_password(path: &Path) -> Result<String, BrokerClientError> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PASSWORD_BYTES).read_to_end(&mut bytes))
        .map_err(|source| BrokerClientError::Read {
            field: "password_file",
            path: path.to_owned(),
            source,
        })?;
    let invalid = |detail: &str| BrokerClientError::Invalid {
        field: "password_file",
        path: path.to_owned(),
        detail: detail.to_owned(),
    };
    let text = String::from_utf8(bytes).map_err(|_| invalid("it is not UTF-8 text"))?;
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        return Err(invalid("its first line (the password) is empty"));
    }
    Ok(password.to_owned())
}

/// Prepares the client's access to the broker `config` names: TLS and a
/// login for an external broker, nothing for the embedded one (reached
/// over loopback). Returns the access and, with TLS, its upkeep.
pub fn prepare(
    config: &Config,
    now: Timestamp,
) -> Result<(Access, Option<Upkeep>), BrokerClientError> {
    let BrokerEndpoint::External(url) = &config.broker.endpoint else {
        return Ok((Access::default(), None));
    };
    let client = &config.broker.client;
    let login = match &client.login {
        Some((username, password_file)) => Some(Login {
            username: username.clone(),
            password: read_password(password_file)?,
        }),
        None => None,
    };
    if !url.tls {
        return Ok((Access { tls: None, login }, None));
    }
    let ca_dir = config.data_dir.join("ca");
    let (ca_pem, ca_field, ca_path) = match &client.ca_file {
        Some(path) => (read("ca_file", path)?, "ca_file", path.clone()),
        None => {
            let ca = Ca::load_or_create(&ca_dir)?;
            (ca.ca_pem().to_owned(), "ca_file", ca_dir.join("ca.pem"))
        }
    };
    let (keyed, source) = match &client.cert {
        Some((cert, key)) => {
            let loaded = read_files(cert, key)?;
            let source = Source::Files {
                cert: cert.clone(),
                key: key.clone(),
                loaded: loaded.clone(),
            };
            (loaded, source)
        }
        None => {
            let ca = Ca::load_or_create(&ca_dir)?;
            let (keyed, not_after, issued) = ca.controller_client(now)?;
            log_own(&ca_dir, not_after, issued);
            (keyed, Source::Own(Box::new(ca)))
        }
    };
    let identity = ClientIdentity::new(&keyed).map_err(|e| match &source {
        Source::Files { cert, .. } => BrokerClientError::Invalid {
            field: "cert_file",
            path: cert.clone(),
            detail: e.to_string(),
        },
        Source::Own(_) => BrokerClientError::Tls(e),
    })?;
    let tls = tls::broker_client_config(&ca_pem, Arc::clone(&identity)).map_err(|e| {
        BrokerClientError::Invalid {
            field: ca_field,
            path: ca_path,
            detail: e.to_string(),
        }
    })?;
    Ok((
        Access {
            tls: Some(tls),
            login,
        },
        Some(Upkeep { identity, source }),
    ))
}

/// The `broker-cert` command: a server certificate for an external broker
/// from the controller's CA (created if it does not exist yet) for
/// `names`, written into `out` with the CA certificate and the CRL.
/// Returns what to tell the operator.
pub fn write_broker_files(
    config: &Config,
    names: &[String],
    out: &Path,
) -> Result<String, BrokerClientError> {
    let ca = Ca::load_or_create(&config.data_dir.join("ca"))?;
    let not_after = ca.write_broker_files(names, out)?;
    Ok(format!(
        "Wrote server.crt and server.key (for {}, valid until {not_after}), ca.crt and ca.crl to {}.\n\
         Let the broker's user read them (server.key is mode 0600), and issue a new one before that date.",
        names.join(", "),
        out.display()
    ))
}

fn log_own(ca_dir: &Path, not_after: Timestamp, issued: bool) {
    let path = ca_dir.join("controller.pem");
    if issued {
        info!(path = %path.display(), %not_after, "Issued the controller's client certificate for the broker (CN controller).");
    } else {
        info!(path = %path.display(), %not_after, "Using the controller's client certificate for the broker (CN controller).");
    }
}

impl Upkeep {
    /// Renews the controller's own certificate when due, or takes up the
    /// operator's files when they changed. A failure keeps the current one.
    fn check(&mut self, now: Timestamp) {
        match &mut self.source {
            Source::Own(ca) => match ca.controller_client(now) {
                Ok((keyed, not_after, true)) => {
                    log_own(ca.dir(), not_after, true);
                    if let Err(e) = self.identity.swap(&keyed) {
                        warn!(error = %e, "Cannot use the renewed client certificate; keeping the current one.");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "Cannot renew the controller's client certificate; retrying later.");
                }
            },
            Source::Files { cert, key, loaded } => match read_files(cert, key) {
                Ok(keyed)
                    if keyed.cert_pem != loaded.cert_pem || keyed.key_pem != loaded.key_pem =>
                {
                    match self.identity.swap(&keyed) {
                        Ok(()) => {
                            info!(path = %cert.display(), "Took up the changed broker client certificate; the next connection presents it.");
                            *loaded = keyed;
                        }
                        Err(e) => {
                            warn!(path = %cert.display(), error = %e, "The changed broker client certificate is not usable; keeping the current one.");
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "Cannot reread the broker client certificate; keeping the current one.")
                }
            },
        }
    }
}

/// Every 12 hours until `cancel`: the client certificate's
/// upkeep (when there is one) and a fresh CRL (when TLS is on).
pub async fn run_upkeep(app: Arc<App>, mut upkeep: Option<Upkeep>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(UPKEEP_INTERVAL) => {}
        }
        if let Some(upkeep) = &mut upkeep {
            upkeep.check(Timestamp::now());
        }
        if let Err(e) = app.refresh_crl() {
            warn!(error = %e, "Cannot rewrite the CRL; retrying later.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_the_first_line_and_never_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("password");
        std::fs::write(&path, "s3cret\n").expect("write");
        assert_eq!(read_password(&path).expect("password"), "s3cret");
        std::fs::write(&path, "\nsecond").expect("write");
        let e = read_password(&path).expect_err("empty").to_string();
        assert!(e.starts_with("broker.password_file:"), "{e}");
        let e = read_password(&dir.path().join("none"))
            .expect_err("missing")
            .to_string();
        assert!(e.starts_with("broker.password_file: cannot read"), "{e}");
    }

    #[test]
    fn the_own_certificate_is_kept_until_due_and_renewed_by_the_upkeep() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("CA");
        let now = Timestamp::now();
        let (first, not_after, issued) = ca.controller_client(now).expect("issue");
        assert!(issued);
        let (again, _, issued) = ca.controller_client(now).expect("keep");
        assert!(!issued, "a certificate with a year left is kept");
        assert_eq!(first.cert_pem, again.cert_pem);
        // Near its expiry (as seen from a later "now") it is re-issued.
        let later = Timestamp::from_unix_millis(
            not_after.unix_millis() - ca::CONTROLLER_RENEW_BEFORE.as_millis() as u64 + 1000,
        );
        let identity = ClientIdentity::new(&first).expect("identity");
        let mut upkeep = Upkeep {
            identity,
            source: Source::Own(Box::new(ca)),
        };
        upkeep.check(later);
        let renewed = std::fs::read_to_string(dir.path().join("controller.pem")).expect("pem");
        assert_ne!(renewed, first.cert_pem);
        // A certificate from another CA is not kept either.
        let other = tempfile::tempdir().expect("tempdir");
        let other = Ca::load_or_create(other.path()).expect("other CA");
        let foreign = other.issue_controller_client().expect("foreign");
        std::fs::write(dir.path().join("controller.pem"), &foreign.cert_pem).expect("write");
        std::fs::write(dir.path().join("controller.key"), &foreign.key_pem).expect("write");
        let ca = Ca::load_or_create(dir.path()).expect("CA");
        let (_, _, issued) = ca.controller_client(now).expect("reissue");
        assert!(issued, "a certificate from another CA is replaced");
    }
}
