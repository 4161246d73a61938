//! Handlers for read-only consumer identities (admin): issue, list, delete.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::body::read_json;
use super::error::ApiError;
use super::state::ApiState;
use crate::app::{ConsumerRequest, ConsumerView};

/// Issues a read-only consumer identity: a client certificate (with its
/// key, unless a CSR was sent, and the CA) or a password, shown only in
/// this reply.
#[utoipa::path(post, path = "/api/v1/consumers", tag = "identity",
    request_body(content = ConsumerRequest, content_type = "application/json",
        example = json!({"name": "grafana", "regions": ["eu-west"], "credential": "certificate"})),
    responses(
        (status = 201, description = "The consumer, with its credential", body = ConsumerView),
        (status = 400, description = "`invalid_json`: not JSON of this shape (an unknown field is named); `invalid_field`: a value is not acceptable (named)", body = super::error::ErrorBody),
        (status = 409, description = "`consumer_exists`: a consumer has this name; `tls_disabled`: the controller runs with `[tls] enabled = false`", body = super::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 64 KiB", body = super::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not sent as `application/json`", body = super::error::ErrorBody)))]
pub(super) async fn create(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: ConsumerRequest = read_json(&headers, body).await?;
    let consumer = state.app.create_consumer(request)?;
    Ok((StatusCode::CREATED, Json(consumer)).into_response())
}

/// Every consumer, without secrets.
#[utoipa::path(get, path = "/api/v1/consumers", tag = "identity",
    responses(
        (status = 200, description = "The consumers", body = super::openapi::ConsumerList)))]
pub(super) async fn list(State(state): State<ApiState>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "consumers": state.app.consumers()? })).into_response())
}

/// Deletes a consumer: its certificate is revoked (its broker connections
/// closed, the CRL rewritten) or its password removed.
#[utoipa::path(delete, path = "/api/v1/consumers/{name}", tag = "identity",
    params(("name" = String, Path, description = "The consumer's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`not_found`: no such consumer", body = super::error::ErrorBody),
        (status = 409, description = "`tls_disabled`: the controller runs with `[tls] enabled = false`", body = super::error::ErrorBody)))]
pub(super) async fn delete(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.app.delete_consumer(&name)?;
    Ok(StatusCode::NO_CONTENT)
}
