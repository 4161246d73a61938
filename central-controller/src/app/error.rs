//! The app's error: one kind per way a use case fails, each mapped to one
//! HTTP status by the api. A leaf apart from the signing step's error.

use std::path::PathBuf;

use super::deployer::SignError;
pub use crate::artifacts::UploadError;
use crate::ca::CaError;
use crate::store::StoreError;
pub use crate::trust::InstallError;

/// Why a use case failed; the API maps each kind to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{what} {name:?} does not exist")]
    NotFound { what: &'static str, name: String },
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sign(#[from] SignError),
    /// A trust bundle that cannot be installed.
    #[error(transparent)]
    Trust(#[from] InstallError),
    /// An agent did not (or cannot) answer a request in time.
    #[error("{0}")]
    AgentUnavailable(String),
    /// A token, signature or node was refused (401 when `unauthorized`, else 403).
    #[error("{message}")]
    Denied {
        unauthorized: bool,
        code: &'static str,
        message: String,
    },
    /// A conditional write whose condition (`If-Match`, `If-None-Match`)
    /// does not hold.
    #[error("{message}")]
    PreconditionFailed { message: String },
    /// The request conflicts with what exists (409).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Too many failed sign-ins from the request's source (429).
    #[error("too many failed attempts from this address; retry in {} s", retry_after.as_secs())]
    Throttled { retry_after: std::time::Duration },
    /// The cap on concurrent watchers (`watch.max_watchers`) was reached.
    #[error("{max} watchers are connected, the most this controller allows (watch.max_watchers)")]
    TooManyWatchers { max: usize },
    #[error("TLS and node identities are disabled on this controller ([tls] enabled = false)")]
    TlsDisabled,
    /// The system random source failed.
    #[error("the system random source failed")]
    Random,
    /// Hashing or checking a password failed (a bug, not bad input).
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// The CA failed to issue a certificate or write the CRL.
    #[error("the certificate authority failed")]
    Ca(#[source] CaError),
    /// The trust bundle handed out at enrollment cannot be read.
    #[error("cannot read the trust bundle {path}")]
    BundleFile {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl AppError {
    /// 403 with `code`.
    pub(crate) fn denied(code: &'static str, message: impl Into<String>) -> Self {
        AppError::Denied {
            unauthorized: false,
            code,
            message: message.into(),
        }
    }

    /// 401 with `code`.
    pub(crate) fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        AppError::Denied {
            unauthorized: true,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        AppError::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// `bytes` random bytes from the system source, in hex.
pub(crate) fn random_hex(bytes: usize) -> Result<String, AppError> {
    use ring::rand::SecureRandom as _;
    let mut raw = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| AppError::Random)?;
    Ok(hex::encode(raw))
}
