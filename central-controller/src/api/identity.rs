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
use crate::app::TokenRequest;

pub(super) async fn create_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: TokenRequest = read_json(&headers, body).await?;
    let token = state.app.create_token(request)?;
    Ok((StatusCode::CREATED, Json(token)).into_response())
}

pub(super) async fn list_tokens(State(state): State<ApiState>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "tokens": state.app.tokens()? })).into_response())
}

pub(super) async fn revoke_token(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.app.revoke_token(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn enroll(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: EnrollRequest = read_json(&headers, body).await?;
    Ok(Json(state.app.enroll(request).await?).into_response())
}

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

pub(super) async fn revoke_node(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.app.revoke_node(&id).await?).into_response())
}
