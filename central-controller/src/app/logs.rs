//! Workload log tails, fetched from the agent on demand: the controller
//! signs a [`LogRequest`], publishes it (not retained) to the agent's
//! `logs/request` topic and waits, at most [`LOG_TIMEOUT`], for the signed
//! [`LogResponse`] carrying the same `request_id` on `logs/response`.
//! The waiting requests are the part in `waiting.rs`.

use std::time::Duration;

use ring::rand::SecureRandom as _;
use serde::Serialize;
use tracing::debug;
use verge_shared::logs::{
    LogRequest, LogResponse, LogStream, MAX_LOG_RESPONSE_BYTES, REQUEST_PAYLOAD_TYPE,
    RESPONSE_PAYLOAD_TYPE,
};
use verge_shared::messages::SCHEMA_VERSION;
use verge_shared::{AgentId, Envelope, ServiceName, VerifyError};

use super::composition::App;
use super::error::AppError;
use super::types::Outgoing;

/// Why a log response was ignored.
#[derive(Debug, thiserror::Error)]
pub(super) enum LogResponseError {
    #[error("log response: no presence has been seen from this agent, so its key is unknown")]
    UnknownAgent,
    #[error("log response: {0}")]
    Envelope(#[source] VerifyError),
    #[error("log response: invalid document: {0}")]
    Invalid(String),
    #[error("log response: payload names agent {0}, not the topic's agent")]
    AgentMismatch(AgentId),
}

/// How long the API waits for an agent's answer.
pub const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// A log tail as the API returns it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LogTail {
    pub node: AgentId,
    pub service: ServiceName,
    pub stream: LogStream,
    /// Oldest first.
    pub lines: Vec<String>,
    /// Older lines exist that are not shown.
    pub truncated: bool,
}

fn request_id() -> String {
    let mut bytes = [0u8; 12];
    // A failing system RNG leaves zeros: ids then only risk colliding with
    // each other, which the waiter map turns into a timeout, not a mix-up.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    hex::encode(bytes)
}

impl App {
    /// The last `lines` lines of `service`'s `stream` on node `node`.
    pub async fn node_logs(
        &self,
        node: &str,
        service: &str,
        stream: LogStream,
        lines: u32,
    ) -> Result<LogTail, AppError> {
        let node_id = AgentId::new(node).map_err(|_| AppError::NotFound {
            what: "node",
            name: node.to_owned(),
        })?;
        let service = ServiceName::new(service).map_err(|_| AppError::NotFound {
            what: "service",
            name: service.to_owned(),
        })?;
        self.fetch_logs(node_id, service, stream, lines).await
    }

    /// The log tail of replica `index` of `service`, from the node it is placed on.
    pub async fn replica_logs(
        &self,
        service: &str,
        index: u32,
        stream: LogStream,
        lines: u32,
    ) -> Result<LogTail, AppError> {
        let view = self.service(service)?;
        let replica = view
            .replicas
            .iter()
            .find(|r| r.index == index)
            .ok_or_else(|| AppError::NotFound {
                what: "replica",
                name: format!("{service}/{index}"),
            })?;
        let node = replica.node.clone().ok_or_else(|| {
            AppError::invalid(
                "index",
                format!("replica {index} of {service} is not placed on any node"),
            )
        })?;
        self.fetch_logs(node, view.name, stream, lines).await
    }

    async fn fetch_logs(
        &self,
        node: AgentId,
        service: ServiceName,
        stream: LogStream,
        lines: u32,
    ) -> Result<LogTail, AppError> {
        let online = self.nodes.records().get(&node).map(|n| n.online);
        match online {
            None => {
                return Err(AppError::NotFound {
                    what: "node",
                    name: node.to_string(),
                });
            }
            Some(false) => {
                return Err(AppError::AgentUnavailable(format!(
                    "node {node} is offline; its logs can be read once it reconnects"
                )));
            }
            Some(true) => {}
        }
        let now = self.now();
        let request = LogRequest {
            schema_version: SCHEMA_VERSION,
            agent: node.clone(),
            request_id: request_id(),
            service: service.clone(),
            stream,
            lines,
            issued_at: now,
            expires_at: now.saturating_add(LOG_TIMEOUT),
        };
        request.validate().map_err(|e| match e.split_once(": ") {
            Some((field, message)) => AppError::invalid(field, message),
            None => AppError::invalid("lines", e),
        })?;
        let (_waiter, rx) = self.logs.wait_for(request.request_id.clone());
        let payload = self.key.sign_json(REQUEST_PAYLOAD_TYPE, &request);
        let message = Outgoing {
            topic: self.settings.topics.log_request(&node),
            payload,
            // A reconnecting agent must not answer long after the operator gave up.
            retain: false,
        };
        if !self.send("log_request", message) {
            return Err(AppError::AgentUnavailable(
                "the controller's MQTT client is not running".into(),
            ));
        }
        let response = match tokio::time::timeout(LOG_TIMEOUT, rx).await {
            Ok(Ok(response)) => response,
            _ => {
                return Err(AppError::AgentUnavailable(format!(
                    "node {node} did not answer the log request within {} s",
                    LOG_TIMEOUT.as_secs()
                )));
            }
        };
        if let Some(error) = response.error {
            return Err(AppError::NotFound {
                what: "log",
                name: format!("{service} on {node}: {error}"),
            });
        }
        Ok(LogTail {
            node,
            service,
            stream,
            lines: response.lines,
            truncated: response.truncated,
        })
    }

    /// Hands a log response from `agent` to the request waiting for it.
    /// The envelope must verify with the agent's pinned key.
    pub(super) fn ingest_log_response(
        &self,
        agent: &AgentId,
        payload: &[u8],
    ) -> Result<(), LogResponseError> {
        let key = self
            .nodes
            .records()
            .get(agent)
            .map(|n| n.public_key)
            .ok_or(LogResponseError::UnknownAgent)?;
        let response: LogResponse = Envelope::parse(payload, MAX_LOG_RESPONSE_BYTES)
            .and_then(|e| e.open(RESPONSE_PAYLOAD_TYPE, &key))
            .map_err(LogResponseError::Envelope)?;
        response.validate().map_err(LogResponseError::Invalid)?;
        if &response.agent != agent {
            return Err(LogResponseError::AgentMismatch(response.agent));
        }
        let request_id = response.request_id.clone();
        if !self.logs.answer(response) {
            debug!(agent = %agent, request_id = %request_id, "A log response came after its request gave up.");
        }
        Ok(())
    }
}
