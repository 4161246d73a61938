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
use crate::app::{
    ApiTokenRequest, ApiTokenView, LoginRequest, Principal, Role, Source, UserRequest, UserView,
};

/// `POST /api/v1/login`: a user name and password for an API token.
/// Signs in with a user name and password for an API token named `login`.
#[utoipa::path(post, path = "/api/v1/login", tag = "accounts",
    request_body(content = LoginRequest, content_type = "application/json",
        example = json!({"user": "alice", "password": "correct horse battery", "ttl_secs": 43200})),
    responses(
        (status = 201, description = "The new token, with its text", body = ApiTokenView),
        (status = 400, description = "`invalid_json`: not JSON of this shape (an unknown field is named); `invalid_field`: a value is not acceptable (named)", body = super::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 64 KiB", body = super::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not sent as `application/json`", body = super::error::ErrorBody),
        (status = 401, description = "`unauthorized`: a wrong user name or password", body = super::error::ErrorBody),
        (status = 429, description = "`too_many_attempts`: too many failures from this address; `Retry-After` says how many seconds to wait", body = super::error::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait")))))]
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

/// Who the request's token is.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "accounts",
    responses((status = 200, description = "The user, token and role in force", body = Principal)))]
pub(super) async fn whoami(Extension(principal): Extension<Principal>) -> Response {
    Json(principal).into_response()
}

#[utoipa::path(get, path = "/api/v1/users", tag = "accounts",
    responses((status = 200, description = "Every user", body = super::openapi::UserList)))]
pub(super) async fn list_users(State(state): State<ApiState>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "users": state.app.users()? })).into_response())
}

#[utoipa::path(get, path = "/api/v1/users/{name}", tag = "accounts",
    params(("name" = String, Path, description = "The user name")),
    responses((status = 200, description = "The user", body = UserView), (status = 404, description = "`not_found`: no such user", body = super::error::ErrorBody)))]
pub(super) async fn get_user(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.app.user(&name)?).into_response())
}

#[utoipa::path(post, path = "/api/v1/users", tag = "accounts",
    request_body(content = UserRequest, content_type = "application/json",
        example = json!({"name": "alice", "role": "operator", "password": "correct horse battery"})),
    responses(
        (status = 201, description = "The user", body = UserView),
        (status = 400, description = "`invalid_json`: not JSON of this shape (an unknown field is named); `invalid_field`: a value is not acceptable (named)", body = super::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 64 KiB", body = super::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not sent as `application/json`", body = super::error::ErrorBody),
        (status = 409, description = "`user_exists`: the name is taken", body = super::error::ErrorBody)))]
pub(super) async fn create_user(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: UserRequest = read_json(&headers, body).await?;
    let user = state.app.create_user(request).await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

/// Deletes a user and every token of theirs.
#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "accounts",
    params(("name" = String, Path, description = "The user name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`not_found`: no such user", body = super::error::ErrorBody),
        (status = 409, description = "`last_admin`: the last admin stays", body = super::error::ErrorBody)))]
pub(super) async fn delete_user(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.app.delete_user(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordRequest {
    password: String,
}

/// Sets a password: one's own with any role, anyone's as an admin.
#[utoipa::path(put, path = "/api/v1/users/{name}/password", tag = "accounts",
    params(("name" = String, Path, description = "The user name")),
    request_body(content = PasswordRequest, content_type = "application/json",
        example = json!({"password": "correct horse battery"})),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 400, description = "`invalid_json`: not JSON of this shape (an unknown field is named); `invalid_field`: a value is not acceptable (named)", body = super::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 64 KiB", body = super::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not sent as `application/json`", body = super::error::ErrorBody),
        (status = 404, description = "`not_found`: no such user", body = super::error::ErrorBody)))]
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RoleRequest {
    role: Role,
}

/// Changes a user's role; their tokens act with it at once.
#[utoipa::path(put, path = "/api/v1/users/{name}/role", tag = "accounts",
    params(("name" = String, Path, description = "The user name")),
    request_body(content = RoleRequest, content_type = "application/json", example = json!({"role": "viewer"})),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 400, description = "`invalid_json`: not JSON of this shape (an unknown field is named); `invalid_field`: a value is not acceptable (named)", body = super::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 64 KiB", body = super::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not sent as `application/json`", body = super::error::ErrorBody),
        (status = 404, description = "`not_found`: no such user", body = super::error::ErrorBody),
        (status = 409, description = "`last_admin`: the last admin stays an admin", body = super::error::ErrorBody)))]
pub(super) async fn set_role(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: RoleRequest = read_json(&headers, body).await?;
    Ok(Json(state.app.set_role(&name, request.role)?).into_response())
}

/// A named API token; its text is shown only in this reply.
#[utoipa::path(post, path = "/api/v1/api-tokens", tag = "accounts",
    request_body(content = ApiTokenRequest, content_type = "application/json",
        example = json!({"name": "ci", "role": "operator", "ttl_secs": 2592000})),
    responses(
        (status = 201, description = "The token, with its text", body = ApiTokenView),
        (status = 400, description = "`invalid_json`: not JSON of this shape (an unknown field is named); `invalid_field`: a value is not acceptable (named)", body = super::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 64 KiB", body = super::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not sent as `application/json`", body = super::error::ErrorBody),
        (status = 403, description = "`forbidden`: a role above the caller's or the user's, or another user's token without the admin role", body = super::error::ErrorBody),
        (status = 404, description = "`not_found`: no such user", body = super::error::ErrorBody)))]
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

/// The caller's API tokens, or every user's for an admin; never their text.
#[utoipa::path(get, path = "/api/v1/api-tokens", tag = "accounts",
    responses((status = 200, description = "The tokens", body = super::openapi::ApiTokenList)))]
pub(super) async fn list_api_tokens(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    Ok(Json(json!({ "api_tokens": state.app.api_tokens(&principal)? })).into_response())
}

/// Revokes one of the caller's API tokens (an admin: anyone's).
#[utoipa::path(delete, path = "/api/v1/api-tokens/{id}", tag = "accounts",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "`not_found`: no such token of the caller's", body = super::error::ErrorBody)))]
pub(super) async fn revoke_api_token(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.app.revoke_api_token(&principal, &id)?;
    Ok(StatusCode::NO_CONTENT)
}
