//! The controller's call to announce: an [`AnnounceRequest`], signed by the
//! controller key, on `{prefix}/announce` (one topic for the whole fleet).
//!
//! A controller publishes one whenever it connects to the broker (at start
//! and after every reconnect) to learn at once which nodes are alive,
//! instead of trusting the registry it stored before. Every agent that
//! accepts it answers within `spread_ms` (a random delay, so that a large
//! fleet does not answer in the same instant) with its presence, a status
//! and a heartbeat. A node that has not answered within the controller's
//! `announce_timeout` is treated as not responding.
//!
//! An agent answers a request once: only one issued after the last it
//! answered, and only before its `expires_at`, so a replayed request makes
//! no agent answer again.

use serde::{Deserialize, Serialize};

use crate::dsse::{Envelope, PublicKey};
use crate::messages::check_schema_version;
use crate::time::Timestamp;

/// DSSE payload type of the request.
pub const PAYLOAD_TYPE: &str = "application/vnd.verge.announce-request.v1+json";

/// Largest signed request envelope an agent accepts.
pub const MAX_REQUEST_BYTES: usize = 1024;

/// The longest spread a request may ask for, in milliseconds.
pub const MAX_SPREAD_MS: u32 = 60_000;

/// How long after it is issued a request is answered (generous, so that an
/// agent whose clock is minutes off still answers).
pub const VALID_FOR_SECS: u64 = 600;

/// The controller asks every agent to announce itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AnnounceRequest {
    pub schema_version: u32,
    pub issued_at: Timestamp,
    /// Agents ignore the request after this time.
    pub expires_at: Timestamp,
    /// Each agent answers after a random delay below this many milliseconds.
    pub spread_ms: u32,
}

impl AnnounceRequest {
    /// Checks the request's own consistency; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        check_schema_version(self.schema_version)?;
        if self.expires_at <= self.issued_at {
            return Err("expires_at: must be after issued_at".into());
        }
        if self.spread_ms > MAX_SPREAD_MS {
            return Err(format!("spread_ms: at most {MAX_SPREAD_MS}"));
        }
        Ok(())
    }

    /// Opens a request from `bytes` for an agent whose clock says `now` and
    /// that last answered the request issued at `last`: signed by one of
    /// `controller_keys`, consistent, not expired, and newer than `last`.
    /// The error says why it is not to be answered.
    pub fn open(
        bytes: &[u8],
        controller_keys: &[PublicKey],
        now: Timestamp,
        last: Option<Timestamp>,
    ) -> Result<Self, String> {
        let request: Self = Envelope::parse(bytes, MAX_REQUEST_BYTES)
            .and_then(|e| e.open_any(PAYLOAD_TYPE, controller_keys))
            .map_err(|e| e.to_string())?;
        request.validate()?;
        if request.expires_at <= now {
            return Err(format!("the request expired at {}", request.expires_at));
        }
        if let Some(last) = last
            && request.issued_at <= last
        {
            return Err(format!(
                "issued at {}, not after the request last answered ({last})",
                request.issued_at
            ));
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;
    use crate::messages::SCHEMA_VERSION;

    fn request(issued_ms: u64, spread_ms: u32) -> AnnounceRequest {
        AnnounceRequest {
            schema_version: SCHEMA_VERSION,
            issued_at: Timestamp::from_unix_millis(issued_ms),
            expires_at: Timestamp::from_unix_millis(issued_ms + VALID_FOR_SECS * 1000),
            spread_ms,
        }
    }

    #[test]
    fn a_signed_fresh_newer_request_is_answered_and_nothing_else() {
        let controller = SigningKey::generate().expect("key").0;
        let other = SigningKey::generate().expect("key").0;
        let keys = [controller.public_key()];
        let signed = controller.sign_json(PAYLOAD_TYPE, &request(1_000, 500));
        let now = Timestamp::from_unix_millis(2_000);
        assert_eq!(
            AnnounceRequest::open(&signed, &keys, now, None),
            Ok(request(1_000, 500))
        );
        let forged = other.sign_json(PAYLOAD_TYPE, &request(1_000, 500));
        assert!(AnnounceRequest::open(&forged, &keys, now, None).is_err());
        let replayed = AnnounceRequest::open(
            &signed,
            &keys,
            now,
            Some(Timestamp::from_unix_millis(1_000)),
        );
        assert!(replayed.is_err_and(|e| e.contains("not after")));
        let late = Timestamp::from_unix_millis(1_000 + VALID_FOR_SECS * 1000);
        assert!(
            AnnounceRequest::open(&signed, &keys, late, None).is_err_and(|e| e.contains("expired"))
        );
        let wide = controller.sign_json(PAYLOAD_TYPE, &request(1_000, MAX_SPREAD_MS + 1));
        assert!(
            AnnounceRequest::open(&wide, &keys, now, None).is_err_and(|e| e.contains("spread_ms"))
        );
        let other_type = controller.sign_json("application/json", &request(1_000, 500));
        assert!(AnnounceRequest::open(&other_type, &keys, now, None).is_err());
    }
}
