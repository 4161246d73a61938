//! The identity part: the CA and its rules (when TLS is on) and the lock
//! that serialises token uses, enrollments, renewals and revocations.
//!
//! A part of the app: the use cases over it live in `enroll`. Its lock is
//! taken before the node registry's and released before any `await`, so an
//! enrollment never waits for a deployment.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use super::types::lock;
use crate::ca::Ca;
use crate::tls::Revocations;

/// The controller's CA and the rules it issues certificates by.
pub struct Pki {
    pub ca: Ca,
    pub revocations: Arc<Revocations>,
    pub client_cert_ttl: Duration,
    pub renew_grace: Duration,
    /// Where agents connect (`mqtts://host:port`), sent at enrollment.
    pub broker_url: String,
    /// `<data_dir>/trust/bundle.json`, sent at enrollment when it exists.
    pub trust_bundle: PathBuf,
}

/// The CA (set once, at start) and the enrollment lock.
#[derive(Default)]
pub(crate) struct Identity {
    pki: OnceLock<Pki>,
    enrolling: Mutex<()>,
}

impl Identity {
    /// Sets the CA; `false` (and the first one kept) if it was already set.
    pub(crate) fn set_pki(&self, pki: Pki) -> bool {
        self.pki.set(pki).is_ok()
    }

    /// The CA, when TLS is enabled.
    pub(crate) fn pki(&self) -> Option<&Pki> {
        self.pki.get()
    }

    /// Serialises token uses, enrollments, renewals and revocations.
    pub(crate) fn serialise(&self) -> MutexGuard<'_, ()> {
        lock(&self.enrolling)
    }
}
