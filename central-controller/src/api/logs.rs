//! Log tail routes: the agent is asked on demand over MQTT (see
//! `app::logs`), so these answer 504 `agent_unavailable` when the node is
//! offline or silent.
//!
//! Query: `stream` (`stdout`, the default, or `stderr`) and `lines`
//! (1 to 1000, default 100).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use verge_shared::logs::{LogStream, MAX_LOG_LINES};
use verge_shared::{AgentId, ServiceName};

use super::error::ApiError;
use super::query::only_known;
use super::state::ApiState;
use crate::app::LogTail;

const DEFAULT_LINES: u32 = 100;

/// `stream` and `lines` from the query string, each checked and named.
fn parse(query: &BTreeMap<String, String>) -> Result<(LogStream, u32), ApiError> {
    only_known(query, &["stream", "lines"])?;
    let stream = match query.get("stream").map(String::as_str) {
        None | Some("stdout") => LogStream::Stdout,
        Some("stderr") => LogStream::Stderr,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "stream",
                format!("{other:?} is not stdout or stderr"),
            ));
        }
    };
    let lines = match query.get("lines") {
        None => DEFAULT_LINES,
        Some(text) => text
            .parse()
            .ok()
            .filter(|n| (1..=MAX_LOG_LINES).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_field("lines", format!("must be 1 to {MAX_LOG_LINES}"))
            })?,
    };
    Ok((stream, lines))
}

/// `GET /api/v1/nodes/{id}/workloads/{service}/logs`
#[utoipa::path(get, path = "/api/v1/nodes/{id}/workloads/{service}/logs", tag = "nodes",
    params(("id" = AgentId, Path, description = "The node id"), ("service" = ServiceName, Path, description = "The service name"),
        ("stream" = Option<String>, Query, description = "`stdout` (the default) or `stderr`"),
        ("lines" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "How many of the last lines (default 100)")),
    responses(
        (status = 200, description = "The log tail, oldest line first", body = LogTail),
        (status = 400, description = "`invalid_field`: an unknown parameter or a bad value (named)", body = super::error::ErrorBody),
        (status = 404, description = "`not_found`: no such node, service, replica or workload", body = super::error::ErrorBody),
        (status = 504, description = "`agent_unavailable`: the node is offline or did not answer within 10 s", body = super::error::ErrorBody)))]
pub(super) async fn node_workload_logs(
    State(state): State<ApiState>,
    Path((node, service)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let (stream, lines) = parse(&query)?;
    let tail = state.app.node_logs(&node, &service, stream, lines).await?;
    Ok(Json(tail).into_response())
}

/// `GET /api/v1/services/{name}/replicas/{index}/logs`
#[utoipa::path(get, path = "/api/v1/services/{name}/replicas/{index}/logs", tag = "services",
    params(("name" = ServiceName, Path, description = "The service name"), ("index" = u32, Path, description = "The replica's index"),
        ("stream" = Option<String>, Query, description = "`stdout` (the default) or `stderr`"),
        ("lines" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "How many of the last lines (default 100)")),
    responses(
        (status = 200, description = "The log tail, oldest line first", body = LogTail),
        (status = 400, description = "`invalid_field`: an unknown parameter or a bad value (named)", body = super::error::ErrorBody),
        (status = 404, description = "`not_found`: no such node, service, replica or workload", body = super::error::ErrorBody),
        (status = 504, description = "`agent_unavailable`: the node is offline or did not answer within 10 s", body = super::error::ErrorBody)))]
pub(super) async fn replica_logs(
    State(state): State<ApiState>,
    Path((service, index)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let index: u32 = index.parse().map_err(|_| {
        ApiError::invalid_field("index", format!("{index:?} is not a replica index"))
    })?;
    let (stream, lines) = parse(&query)?;
    let tail = state
        .app
        .replica_logs(&service, index, stream, lines)
        .await?;
    Ok(Json(tail).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::query::of as query;

    #[test]
    fn query_parameters_are_checked_and_named() {
        assert_eq!(
            parse(&query(&[])).expect("defaults"),
            (LogStream::Stdout, DEFAULT_LINES)
        );
        assert_eq!(
            parse(&query(&[("stream", "stderr"), ("lines", "5")])).expect("valid"),
            (LogStream::Stderr, 5)
        );
        for (bad, field) in [
            (query(&[("lines", "0")]), "lines"),
            (query(&[("lines", "1001")]), "lines"),
            (query(&[("stream", "both")]), "stream"),
            (query(&[("tail", "1")]), "tail"),
        ] {
            let e = parse(&bad).expect_err("invalid");
            assert_eq!(e.field.as_deref(), Some(field));
        }
    }
}
