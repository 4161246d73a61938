//! The audit trail at the API's edge: every change and every refused
//! authentication is recorded after its response is made; and
//! `GET /api/v1/audit` lists the log.
//!
//! Query: `actor` (user), `target` (a path below `/api/v1/`, with
//! everything under it), `since` and `until` (RFC 3339), `limit` (1 to
//! 1000, default 100) and `cursor` (the previous page's `next_cursor`).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use verge_shared::Timestamp;

use super::auth::client_ip;
use super::error::{ApiError, ErrorCode};
use super::query::{cursor, cursor_param, limit_param, only_known};
use super::state::ApiState;
use crate::app::{AuditEntry, AuditFilter, MAX_AUDIT_PAGE, Principal};

const PARAMS: [&str; 6] = ["actor", "target", "since", "until", "limit", "cursor"];
const CURSOR_PREFIX: &str = "audit-before:";
const DEFAULT_LIMIT: usize = 100;

/// The user name a sign-in was for, put in its response so that the audit
/// log names it whether the attempt succeeded or not.
#[derive(Clone, Debug)]
pub(super) struct Attempted(pub String);

/// Records the request once its response is made, when it changed
/// something or was refused for its credentials or role.
pub(super) async fn record(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    // Cheap copies; the strings are made only for a request that is recorded.
    let method = request.method().clone();
    let uri = request.uri().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let ip = client_ip(&request);
    let response = next.run(request).await;
    let status = response.status();
    let change = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let refused = matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
    );
    if change || refused {
        let principal = response.extensions().get::<Principal>();
        let attempted = response.extensions().get::<Attempted>();
        state.app.record_audit(AuditEntry {
            actor: principal
                .map(|p| p.user.clone())
                .or_else(|| attempted.map(|a| a.0.clone())),
            token: principal.map(|p| p.token.clone()),
            role: principal.map(|p| p.role),
            source: ip.map(|ip| ip.to_canonical().to_string()),
            method: method.to_string(),
            route: route.map(|r| r.as_str().to_owned()).unwrap_or_default(),
            target: uri
                .path()
                .strip_prefix("/api/v1/")
                .unwrap_or(uri.path())
                .to_owned(),
            status: status.as_u16(),
            error: response
                .extensions()
                .get::<ErrorCode>()
                .map(|c| c.0.to_owned()),
        });
    }
    response
}

fn time(query: &BTreeMap<String, String>, name: &str) -> Result<Option<Timestamp>, ApiError> {
    query
        .get(name)
        .map(|t| {
            serde_json::from_value::<Timestamp>(json!(t)).map_err(|_| {
                ApiError::invalid_field(name, format!("{t:?} is not an RFC 3339 time"))
            })
        })
        .transpose()
}

/// The list query, checked; every error names its parameter: the filter,
/// where the page starts (entries older than this `seq`) and its length.
pub(super) fn parse(
    query: &BTreeMap<String, String>,
) -> Result<(AuditFilter, Option<u64>, usize), ApiError> {
    only_known(query, &PARAMS)?;
    let filter = AuditFilter {
        actor: query.get("actor").cloned(),
        target: query.get("target").map(|t| t.trim_matches('/').to_owned()),
        since: time(query, "since")?,
        until: time(query, "until")?,
    };
    let before = cursor_param(query, CURSOR_PREFIX, |p| p.parse().ok())?;
    let limit = limit_param(query, MAX_AUDIT_PAGE)?.unwrap_or(DEFAULT_LIMIT);
    Ok((filter, before, limit))
}

/// The cursor of the page that starts below `seq`.
pub(super) fn cursor_for(seq: u64) -> String {
    cursor(CURSOR_PREFIX, &seq.to_string())
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "accounts",
    params(
        ("actor" = Option<String>, Query, description = "Entries of this user"),
        ("target" = Option<String>, Query, description = "A path below `/api/v1/`, with everything under it"),
        ("since" = Option<String>, Query, format = DateTime, description = "Entries at or after this time (RFC 3339)"),
        ("until" = Option<String>, Query, format = DateTime, description = "Entries before this time (RFC 3339)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)"),
        ("cursor" = Option<String>, Query, description = "The previous page's `next_cursor`, as it came")),
    responses(
        (status = 200, description = "One page of entries", body = super::openapi::AuditList),
        (status = 400, description = "`invalid_field`: an unknown parameter or a bad value (named)", body = super::error::ErrorBody)))]
pub(super) async fn list(
    State(state): State<ApiState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let (filter, before, limit) = parse(&query)?;
    let page = state.app.audit(&filter, before, limit)?;
    Ok(Json(json!({
        "entries": page.entries,
        "next_cursor": page.next.map(cursor_for),
    }))
    .into_response())
}
