//! Reading a workload's log tail on demand: a [`LogRequest`] from the
//! controller (signed by the controller key) on `{prefix}/agents/{id}/logs/request`
//! and the agent's [`LogResponse`] (signed by the node key) on
//! `{prefix}/agents/{id}/logs/response`, matched by `request_id`.
//!
//! Both are bounded: a request names at most [`MAX_LOG_LINES`] lines and
//! expires; an answer's envelope stays under [`MAX_LOG_RESPONSE_BYTES`], the
//! agent dropping the oldest lines to fit and saying so in `truncated`.

use serde::{Deserialize, Serialize};

use crate::id::{AgentId, ServiceName};
use crate::messages::check_schema_version;
use crate::time::Timestamp;

/// DSSE payload types of the two documents.
pub const REQUEST_PAYLOAD_TYPE: &str = "application/vnd.verge.log-request.v1+json";
pub const RESPONSE_PAYLOAD_TYPE: &str = "application/vnd.verge.log-response.v1+json";

/// Largest signed request envelope an agent accepts.
pub const MAX_LOG_REQUEST_BYTES: usize = 4 * 1024;
/// Largest signed response envelope the agent sends and the controller accepts.
pub const MAX_LOG_RESPONSE_BYTES: usize = 96 * 1024;
/// Most lines one request may ask for.
pub const MAX_LOG_LINES: u32 = 1000;
/// Most bytes of log text the agent reads for one answer.
pub const MAX_LOG_TAIL_BYTES: usize = 48 * 1024;
/// Longest request id.
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// Which output of the workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum LogStream {
    #[default]
    Stdout,
    Stderr,
}

impl LogStream {
    /// The file the agent writes this stream to, in the workload directory.
    pub fn file_name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout.log",
            LogStream::Stderr => "stderr.log",
        }
    }
}

/// "Send me the last `lines` lines of `service`'s `stream`."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LogRequest {
    pub schema_version: u32,
    pub agent: AgentId,
    /// Chosen by the requester; echoed in the response.
    pub request_id: String,
    pub service: ServiceName,
    pub stream: LogStream,
    pub lines: u32,
    pub issued_at: Timestamp,
    /// The agent ignores the request after this time (a replayed request
    /// must not make it answer again much later).
    pub expires_at: Timestamp,
}

/// The agent's answer. `error` is set instead of `lines` when the tail
/// cannot be read (no such workload, no log yet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LogResponse {
    pub schema_version: u32,
    pub agent: AgentId,
    pub request_id: String,
    pub service: ServiceName,
    pub stream: LogStream,
    /// Oldest first.
    #[serde(default)]
    pub lines: Vec<String>,
    /// Older lines exist that this answer does not carry.
    #[serde(default)]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Is `id` usable as a request id (1-64 ASCII letters, digits, '-' or '_')?
pub fn is_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_BYTES).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl LogRequest {
    /// Checks the request's own consistency; the error names the field.
    /// Signature, agent id and expiry against the clock are the receiver's checks.
    pub fn validate(&self) -> Result<(), String> {
        check_schema_version(self.schema_version)?;
        if !is_request_id(&self.request_id) {
            return Err(format!(
                "request_id: 1-{MAX_REQUEST_ID_BYTES} ASCII letters, digits, '-' or '_'"
            ));
        }
        if !(1..=MAX_LOG_LINES).contains(&self.lines) {
            return Err(format!("lines: must be 1 to {MAX_LOG_LINES}"));
        }
        if self.expires_at <= self.issued_at {
            return Err("expires_at: must be after issued_at".into());
        }
        Ok(())
    }
}

impl LogResponse {
    /// Checks the answer's own consistency; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        check_schema_version(self.schema_version)?;
        if !is_request_id(&self.request_id) {
            return Err("request_id: not a valid request id".into());
        }
        if self.lines.len() > MAX_LOG_LINES as usize {
            return Err(format!("lines: more than {MAX_LOG_LINES}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::SCHEMA_VERSION;

    fn request() -> LogRequest {
        LogRequest {
            schema_version: SCHEMA_VERSION,
            agent: AgentId::new("edge-1").expect("valid"),
            request_id: "r-1".into(),
            service: ServiceName::new("hello").expect("valid"),
            stream: LogStream::Stderr,
            lines: 10,
            issued_at: Timestamp::from_unix_millis(1),
            expires_at: Timestamp::from_unix_millis(2),
        }
    }

    #[test]
    fn request_validation_names_the_field() {
        assert_eq!(request().validate(), Ok(()));
        let mut r = request();
        r.lines = MAX_LOG_LINES + 1;
        assert!(r.validate().expect_err("too many").starts_with("lines:"));
        let mut r = request();
        r.request_id = "a/b".into();
        assert!(r.validate().expect_err("bad id").starts_with("request_id:"));
        let mut r = request();
        r.expires_at = r.issued_at;
        assert!(
            r.validate()
                .expect_err("expired")
                .starts_with("expires_at:")
        );
    }

    #[test]
    fn streams_name_their_files() {
        assert_eq!(LogStream::Stdout.file_name(), "stdout.log");
        let json = serde_json::to_string(&LogStream::Stderr).expect("serialise");
        assert_eq!(json, "\"stderr\"");
    }
}
