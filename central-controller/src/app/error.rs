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
    /// The cap on concurrent watchers (`watch.max_watchers`) was reached.
    #[error("{max} watchers are connected, the most this controller allows (watch.max_watchers)")]
    TooManyWatchers { max: usize },
    #[error("TLS and node identities are disabled on this controller ([tls] enabled = false)")]
    TlsDisabled,
    /// The system random source failed.
    #[error("the system random source failed")]
    Random,
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
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        AppError::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }
}
