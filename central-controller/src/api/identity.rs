//! Handlers for node identity: bootstrap tokens (admin), enrollment (the
//! token in the body), signed certificate renewal (the node key), revocation.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use serde_json::json;
use verge_shared::enroll::{EnrollRequest, MAX_RENEWAL_BYTES};

use super::body::read_json;
use super::error::ApiError;
use super::state::ApiState;
use crate::app::{NodeView, TokenRequest, TokenView};
use verge_shared::enroll::{EnrollResponse, RenewalResponse};
use verge_shared::{AgentId, Envelope};

/// Creates a bootstrap token; its text is shown only in this reply.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "identity",
    request_body(content = TokenRequest, content_type = "application/json",
        example = json!({"region": "eu-west", "uses": 1, "ttl_secs": 86400})),
    responses(
        (status = 201, description = "The token, with its text", body = TokenView),
        (status = 400, description = "`invalid_json`: not JSON of this shape (an unknown field is named); `invalid_field`: a value is not acceptable (named)", body = super::error::ErrorBody),
        (status = 409, description = "`tls_disabled`: the controller runs with `[tls] enabled = false`", body = super::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 64 KiB", body = super::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not sent as `application/json`", body = super::error::ErrorBody)))]
pub(super) async fn create_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: TokenRequest = read_json(&headers, body).await?;
    let token = state.app.create_token(request)?;
    Ok((StatusCode::CREATED, Json(token)).into_response())
}

/// Every bootstrap token, without its text.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "identity",
    responses(
        (status = 200, description = "The tokens", body = super::openapi::TokenList),
        (status = 409, description = "`tls_disabled`: the controller runs with `[tls] enabled = false`", body = super::error::ErrorBody)))]
pub(super) async fn list_tokens(State(state): State<ApiState>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "tokens": state.app.tokens()? })).into_response())
}

/// Revokes a bootstrap token: it enrolls nobody from now on.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "identity",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "`not_found`: no such token", body = super::error::ErrorBody),
        (status = 409, description = "`tls_disabled`: the controller runs with `[tls] enabled = false`", body = super::error::ErrorBody)))]
pub(super) async fn revoke_token(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.app.revoke_token(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enrolls a node with a bootstrap token (in the body; no bearer token).
#[utoipa::path(post, path = "/api/v1/enroll", tag = "identity",
    request_body(content = EnrollRequest, content_type = "application/json", example = json!({
        "token": "vbt_…", "agent_id": "edge-a",
        "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\n…\n-----END CERTIFICATE REQUEST-----\n",
        "node_public_key": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="})),
    responses(
        (status = 200, description = "The node's certificate and what it needs to connect", body = EnrollResponse),
        (status = 400, description = "`invalid_json`: not JSON of this shape (an unknown field is named); `invalid_field`: a value is not acceptable (named)", body = super::error::ErrorBody),
        (status = 401, description = "`token_unknown`: a token this controller never issued, or a wrong secret", body = super::error::ErrorBody),
        (status = 403, description = "`token_spent`, `token_expired`, `token_revoked`: the token has no uses left, is past its TTL or was revoked; `agent_enrolled`: the id is enrolled with another node key", body = super::error::ErrorBody),
        (status = 409, description = "`tls_disabled`: the controller runs with `[tls] enabled = false`", body = super::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 64 KiB", body = super::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not sent as `application/json`", body = super::error::ErrorBody)))]
pub(super) async fn enroll(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: EnrollRequest = read_json(&headers, body).await?;
    Ok(Json(state.app.enroll(request).await?).into_response())
}

/// Renews a node's certificate: a DSSE envelope of type
/// `application/vnd.verge.renewal.v1+json` signed by the node's pinned key.
#[utoipa::path(post, path = "/api/v1/nodes/{id}/certificate", tag = "identity",
    params(("id" = AgentId, Path, description = "The node id")),
    request_body(content = Envelope, content_type = "application/json",
        description = "Signed over `{\"schema_version\": 1, \"agent\", \"csr_pem\", \"at\"}`; at most 16 KiB",
        example = json!({"payloadType": "application/vnd.verge.renewal.v1+json", "payload": "eyJzY2hlbWFfdmVyc2lvbiI6MX0=",
            "signatures": [{"keyid": "…", "sig": "…"}]})),
    responses(
        (status = 200, description = "The new certificate", body = RenewalResponse),
        (status = 400, description = "`invalid_field`: not a renewal envelope of this node (named)", body = super::error::ErrorBody),
        (status = 401, description = "`bad_signature`: not signed by the node's pinned key", body = super::error::ErrorBody),
        (status = 403, description = "`node_revoked`: the node is revoked; `renewal_grace_passed`: its certificate expired longer than `tls.renew_grace_secs` ago; `stale_request`: `at` is more than 5 min off the controller's clock", body = super::error::ErrorBody),
        (status = 404, description = "`not_found`: no such node", body = super::error::ErrorBody),
        (status = 409, description = "`tls_disabled`: the controller runs with `[tls] enabled = false`", body = super::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 16 KiB", body = super::error::ErrorBody)))]
pub(super) async fn renew_certificate(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = http_body_util::Limited::new(body, MAX_RENEWAL_BYTES)
        .collect()
        .await
        .map_err(|_| {
            ApiError::too_large(format!(
                "renewal requests are limited to {MAX_RENEWAL_BYTES} bytes"
            ))
        })?
        .to_bytes();
    Ok(Json(state.app.renew_certificate(&id, &bytes)?).into_response())
}

/// Revokes a node: its certificates are refused and nothing is placed on it.
#[utoipa::path(post, path = "/api/v1/nodes/{id}/revoke", tag = "nodes",
    params(("id" = AgentId, Path, description = "The node id")),
    responses(
        (status = 200, description = "The node, with `\"revoked\": true`", body = NodeView),
        (status = 404, description = "`not_found`: no such node", body = super::error::ErrorBody)))]
pub(super) async fn revoke_node(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.app.revoke_node(&id).await?).into_response())
}
