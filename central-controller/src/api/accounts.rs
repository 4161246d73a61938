//! Handlers for operator accounts: sign-in, who am I, users (admin), API
//! tokens (one's own; an admin's: anyone's), passwords.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::audit::Attempted;
use super::auth::client_ip;
use super::body::read_json;
use super::error::ApiError;
use super::state::ApiState;
use crate::app::{ApiTokenRequest, LoginRequest, Principal, Role, Source, UserRequest};

/// `POST /api/v1/login`: a user name and password for an API token.
pub(super) async fn login(State(state): State<ApiState>, request: Request) -> Response {
    let source = Source::of(client_ip(&request));
    let (parts, body) = request.into_parts();
    let login: LoginRequest = match read_json(&parts.headers, body).await {
        Ok(login) => login,
        Err(e) => return e.into_response(),
    };
    let user = login.user.clone();
    let mut response = match state.app.login(login, source).await {
        Ok(token) => (StatusCode::CREATED, Json(token)).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    };
    response.extensions_mut().insert(Attempted(user));
    response
}

pub(super) async fn whoami(Extension(principal): Extension<Principal>) -> Response {
    Json(principal).into_response()
}

pub(super) async fn list_users(State(state): State<ApiState>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "users": state.app.users()? })).into_response())
}

pub(super) async fn get_user(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.app.user(&name)?).into_response())
}

pub(super) async fn create_user(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: UserRequest = read_json(&headers, body).await?;
    let user = state.app.create_user(request).await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

pub(super) async fn delete_user(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.app.delete_user(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordRequest {
    password: String,
}

pub(super) async fn set_password(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: PasswordRequest = read_json(&headers, body).await?;
    let user = state
        .app
        .set_password(&principal, &name, request.password)
        .await?;
    Ok(Json(user).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoleRequest {
    role: Role,
}

pub(super) async fn set_role(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: RoleRequest = read_json(&headers, body).await?;
    Ok(Json(state.app.set_role(&name, request.role)?).into_response())
}

pub(super) async fn create_api_token(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: ApiTokenRequest = read_json(&headers, body).await?;
    let token = state.app.create_api_token(&principal, request)?;
    Ok((StatusCode::CREATED, Json(token)).into_response())
}

pub(super) async fn list_api_tokens(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    Ok(Json(json!({ "api_tokens": state.app.api_tokens(&principal)? })).into_response())
}

pub(super) async fn revoke_api_token(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.app.revoke_api_token(&principal, &id)?;
    Ok(StatusCode::NO_CONTENT)
}
