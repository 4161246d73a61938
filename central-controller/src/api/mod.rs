//! The HTTP API (axum): thin handlers over [`App`], bearer-token auth with
//! roles, an audit trail, bounded bodies and JSON errors.
//!
//! Every `/api/v1/*` route needs `Authorization: Bearer <API token>` with the
//! role [`required_role`] names, except `GET /api/v1/artifacts/{sha256}`,
//! which over HTTPS goes to operators and to the nodes whose desired state
//! runs the artifact (by their client certificate), and over plain HTTP to
//! anyone; `POST /api/v1/login` (a user name and password);
//! `POST /api/v1/enroll`, which is authenticated by the bootstrap token in
//! its body; and `POST /api/v1/nodes/{id}/certificate`, signed by the
//! node's pinned key.
//!
//! The web console (`console`) is served on the same listener at `/`; the
//! API accepts its session cookie in place of a bearer token, and a change
//! made with the cookie only with the page's CSRF token.

mod accounts;
mod alarms;
mod asyncapi;
mod audit;
mod auth;
mod body;
mod conditional;
mod console;
mod consumers;
mod error;
mod events;
mod identity;
mod logs;
mod metrics;
mod nodes;
mod openapi;
mod query;
mod releases;
mod state;
mod watch;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tower::ServiceExt as _;
use verge_shared::{AgentId, ServiceName, Sha256Digest};

pub use auth::required_role;
pub use body::MAX_JSON_BYTES;
pub use error::ApiError;

use body::read_json;
use state::ApiState;

use crate::app::{App, Cordon, LatencyView, NodeView, ServiceRequest, ServiceView, TelemetryView};
use error::ErrorBody;

/// Builds the router.
pub fn router(app: Arc<App>) -> Router {
    let state = ApiState { app };
    let protected = Router::new()
        .route("/api/v1/services", get(list_services))
        .route(
            "/api/v1/services/{name}",
            get(get_service).put(put_service).delete(delete_service),
        )
        .route("/api/v1/nodes", get(nodes::list_nodes))
        .route("/api/v1/nodes/{id}", get(get_node))
        .route("/api/v1/nodes/{id}/telemetry", get(get_node_telemetry))
        .route("/api/v1/events", get(events::list))
        .route("/api/v1/alarms", get(alarms::list))
        .route("/api/v1/alarms/catalogue", get(alarms::catalogue))
        .route(
            "/api/v1/alarms/{instance}/acknowledge",
            post(alarms::acknowledge),
        )
        .route(
            "/api/v1/alarms/catalogue/{alarm}/suppress",
            post(alarms::suppress),
        )
        .route(
            "/api/v1/alarms/catalogue/{alarm}/unsuppress",
            post(alarms::unsuppress),
        )
        .route(
            "/api/v1/nodes/{id}/workloads/{service}/logs",
            get(logs::node_workload_logs),
        )
        .route(
            "/api/v1/services/{name}/replicas/{index}/logs",
            get(logs::replica_logs),
        )
        .route("/api/v1/nodes/{id}/cordon", post(cordon_node))
        .route("/api/v1/nodes/{id}/drain", post(drain_node))
        .route("/api/v1/nodes/{id}/uncordon", post(uncordon_node))
        .route("/api/v1/nodes/{id}/revoke", post(identity::revoke_node))
        .route(
            "/api/v1/tokens",
            post(identity::create_token).get(identity::list_tokens),
        )
        .route(
            "/api/v1/tokens/{id}",
            axum::routing::delete(identity::revoke_token),
        )
        .route(
            "/api/v1/consumers",
            post(consumers::create).get(consumers::list),
        )
        .route(
            "/api/v1/consumers/{name}",
            axum::routing::delete(consumers::delete),
        )
        .route("/api/v1/watch", get(watch::watch))
        .route("/api/v1/regions", get(list_regions))
        .route("/api/v1/latency", get(get_latency))
        .route("/api/v1/artifacts", axum::routing::post(upload_artifact))
        .route(
            "/api/v1/releases",
            get(releases::list_releases).post(releases::upload_release),
        )
        .route("/api/v1/releases/{digest}", get(releases::get_release))
        .route(
            "/api/v1/trust",
            get(releases::get_trust).put(releases::put_trust),
        )
        .route("/api/v1/whoami", get(accounts::whoami))
        .route(
            "/api/v1/users",
            get(accounts::list_users).post(accounts::create_user),
        )
        .route(
            "/api/v1/users/{name}",
            get(accounts::get_user).delete(accounts::delete_user),
        )
        .route("/api/v1/users/{name}/role", put(accounts::set_role))
        .route("/api/v1/users/{name}/password", put(accounts::set_password))
        .route(
            "/api/v1/api-tokens",
            get(accounts::list_api_tokens).post(accounts::create_api_token),
        )
        .route(
            "/api/v1/api-tokens/{id}",
            axum::routing::delete(accounts::revoke_api_token),
        )
        .route("/api/v1/audit", get(audit::list));
    // Prometheus convention puts the metrics at /metrics; a viewer's token
    // reads them unless `[api] public_metrics` says anyone may.
    let scrape = Router::new().route("/metrics", get(metrics::scrape));
    let (protected, public) = match state.app.settings().public_metrics {
        true => (protected, scrape),
        false => (protected.merge(scrape), Router::new()),
    };
    let protected = protected.route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate,
    ));
    public
        .route("/healthz", get(healthz))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/asyncapi.json", get(asyncapi::asyncapi_json))
        .route("/api/v1/schemas/{file}", get(asyncapi::schema_json))
        .route("/api/v1/artifacts/{sha256}", get(download_artifact))
        .route("/api/v1/enroll", post(identity::enroll))
        .route("/api/v1/login", post(accounts::login))
        .route(
            "/api/v1/nodes/{id}/certificate",
            post(identity::renew_certificate),
        )
        .merge(protected)
        .merge(console::router(state.clone()))
        .layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::observe,
        ))
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}

/// The API's OpenAPI document (`docs/openapi.json` is a copy).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        healthz, openapi_json, metrics::scrape, asyncapi::asyncapi_json, asyncapi::schema_json,
        list_services, get_service, put_service, delete_service, logs::replica_logs,
        nodes::list_nodes, get_node, get_node_telemetry, events::list, logs::node_workload_logs,
        cordon_node, drain_node, uncordon_node, identity::revoke_node,
        list_regions, get_latency,
        identity::create_token, identity::list_tokens, identity::revoke_token,
        identity::enroll, identity::renew_certificate,
        consumers::create, consumers::list, consumers::delete,
        watch::watch,
        upload_artifact, download_artifact,
        releases::upload_release, releases::list_releases, releases::get_release,
        releases::get_trust, releases::put_trust,
        accounts::login, accounts::whoami,
        accounts::list_users, accounts::create_user, accounts::get_user, accounts::delete_user,
        accounts::set_role, accounts::set_password,
        accounts::create_api_token, accounts::list_api_tokens, accounts::revoke_api_token,
        audit::list,
        alarms::list, alarms::catalogue, alarms::acknowledge, alarms::suppress, alarms::unsuppress,
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "services", description = "Services and their replicas"),
        (name = "nodes", description = "Nodes, regions, latency and logs"),
        (name = "identity", description = "Bootstrap tokens, enrollment, certificate renewal, consumer credentials"),
        (name = "releases", description = "Artifacts, signed releases and the trust bundle"),
        (name = "accounts", description = "Sign-in, users, API tokens and the audit log"),
        (name = "watch", description = "The change stream"),
        (name = "alarms", description = "Alarms, their history, acknowledgement and suppression"),
        (name = "monitoring", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

/// The OpenAPI 3.1 document of this API, from the handlers' annotations
/// and types.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::finish(<ApiDoc as utoipa::OpenApi>::openapi())
}

/// [`openapi()`] as `docs/openapi.json` keeps it: pretty-printed, keys sorted.
pub fn openapi_text() -> String {
    openapi::render(&openapi())
}

/// `{"status": "ok"}` while the controller runs.
#[utoipa::path(get, path = "/healthz", tag = "monitoring",
    responses((status = 200, description = "The controller runs", body = openapi::Health)))]
async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "monitoring",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)))]
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_text()).into_response()
}

/// Every service's view.
#[utoipa::path(get, path = "/api/v1/services", tag = "services",
    responses((status = 200, description = "Every service", body = openapi::ServiceList)))]
async fn list_services(State(state): State<ApiState>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "services": state.app.services()? })).into_response())
}

/// One service's view, with its `ETag`.
#[utoipa::path(get, path = "/api/v1/services/{name}", tag = "services",
    params(("name" = ServiceName, Path, description = "The service name")),
    responses(
        (status = 200, description = "The service", body = ServiceView,
            headers(("ETag" = String, description = "The revision in quotes: `\"3\"`"))),
        (status = 404, description = "`not_found`: no such service", body = ErrorBody)))]
async fn get_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let view = state.app.service(&name)?;
    Ok((
        [(header::ETAG, conditional::etag(view.revision))],
        Json(view),
    )
        .into_response())
}

/// Creates (201) or replaces (200) a service; conditional with `If-Match`
/// or `If-None-Match: *`.
#[utoipa::path(put, path = "/api/v1/services/{name}", tag = "services",
    params(
        ("name" = ServiceName, Path, description = "The service name"),
        ("If-Match" = Option<String>, Header, description = "Only if the service is at one of these revisions (`\"3\"`, comma-separated) or, with `*`, exists"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: only create, never replace")),
    request_body(content = ServiceRequest, content_type = "application/json", example = json!({
        "release": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "replicas": 2, "regions": ["eu-west"], "config": {"MODE": "edge"},
        "placement": {"latency": {"to": ["eu-west"], "max_ms": 20, "percentile": 90}, "spread": "zone", "priority": 0}})),
    responses(
        (status = 200, description = "Replaced", body = ServiceView,
            headers(("ETag" = String, description = "The new revision in quotes"))),
        (status = 201, description = "Created", body = ServiceView,
            headers(("ETag" = String, description = "The revision in quotes"))),
        (status = 400, description = "`invalid_json`: not JSON of this shape (an unknown field is named); `invalid_field`: a value is not acceptable, or a conditional header is malformed (named)", body = ErrorBody),
        (status = 412, description = "`precondition_failed`: `If-Match` or `If-None-Match` does not hold", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: over 64 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not sent as `application/json`", body = ErrorBody)))]
async fn put_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let expect = conditional::expectation(&headers)?;
    let request: ServiceRequest = read_json(&headers, body).await?;
    let (view, created) = state
        .app
        .put_service_expecting(&name, request, &expect)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let etag = conditional::etag(view.revision);
    Ok((status, [(header::ETAG, etag)], Json(view)).into_response())
}

/// Deletes a service; its workloads are stopped. Conditional with `If-Match`.
#[utoipa::path(delete, path = "/api/v1/services/{name}", tag = "services",
    params(
        ("name" = ServiceName, Path, description = "The service name"),
        ("If-Match" = Option<String>, Header, description = "Only if the service is at one of these revisions or, with `*`, exists"),
        ("If-None-Match" = Option<String>, Header, description = "Refused on a delete except as `*`, which never holds for an existing service")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`invalid_field`: a malformed conditional header (named)", body = ErrorBody),
        (status = 404, description = "`not_found`: no such service", body = ErrorBody),
        (status = 412, description = "`precondition_failed`: `If-Match` does not hold", body = ErrorBody)))]
async fn delete_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let expect = conditional::expectation(&headers)?;
    state.app.delete_service_expecting(&name, &expect).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One node.
#[utoipa::path(get, path = "/api/v1/nodes/{id}", tag = "nodes",
    params(("id" = AgentId, Path, description = "The node id")),
    responses(
        (status = 200, description = "The node", body = NodeView),
        (status = 404, description = "`not_found`: no such node", body = ErrorBody)))]
async fn get_node(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.app.node(&id)?).into_response())
}

/// The node's recent telemetry, oldest first.
#[utoipa::path(get, path = "/api/v1/nodes/{id}/telemetry", tag = "nodes",
    params(("id" = AgentId, Path, description = "The node id")),
    responses(
        (status = 200, description = "The node's recent telemetry, oldest first", body = TelemetryView),
        (status = 404, description = "`not_found`: no such node", body = ErrorBody)))]
async fn get_node_telemetry(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.app.node_telemetry(&id)?).into_response())
}

/// No new replicas on the node; it keeps what it runs.
#[utoipa::path(post, path = "/api/v1/nodes/{id}/cordon", tag = "nodes",
    params(("id" = AgentId, Path, description = "The node id")),
    responses(
        (status = 200, description = "The node", body = NodeView),
        (status = 404, description = "`not_found`: no such node", body = ErrorBody)))]
async fn cordon_node(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.app.set_cordon(&id, Some(Cordon::Cordoned)).await?).into_response())
}

/// No replicas on the node; what it ran is placed elsewhere.
#[utoipa::path(post, path = "/api/v1/nodes/{id}/drain", tag = "nodes",
    params(("id" = AgentId, Path, description = "The node id")),
    responses(
        (status = 200, description = "The node", body = NodeView),
        (status = 404, description = "`not_found`: no such node", body = ErrorBody)))]
async fn drain_node(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.app.set_cordon(&id, Some(Cordon::Drained)).await?).into_response())
}

/// Clears cordon and drain.
#[utoipa::path(post, path = "/api/v1/nodes/{id}/uncordon", tag = "nodes",
    params(("id" = AgentId, Path, description = "The node id")),
    responses(
        (status = 200, description = "The node", body = NodeView),
        (status = 404, description = "`not_found`: no such node", body = ErrorBody)))]
async fn uncordon_node(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.app.set_cordon(&id, None).await?).into_response())
}

/// Every region, listed in the regions file or reported by a node.
#[utoipa::path(get, path = "/api/v1/regions", tag = "nodes",
    responses((status = 200, description = "The regions", body = openapi::RegionList)))]
async fn list_regions(State(state): State<ApiState>) -> Response {
    Json(json!({ "regions": state.app.regions() })).into_response()
}

/// Every latency figure, with how it was obtained and its age.
#[utoipa::path(get, path = "/api/v1/latency", tag = "nodes",
    responses((status = 200, description = "The figures", body = LatencyView)))]
async fn get_latency(State(state): State<ApiState>) -> Response {
    Json(state.app.latency_view()).into_response()
}

/// Uploads an artifact's raw bytes (streamed).
#[utoipa::path(post, path = "/api/v1/artifacts", tag = "releases",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The artifact: an executable or a tar.gz archive"),
    responses(
        (status = 200, description = "Already stored", body = openapi::ArtifactStored),
        (status = 201, description = "Stored", body = openapi::ArtifactStored),
        (status = 400, description = "`invalid_body`: the body could not be read", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: over `api.max_artifact_bytes`", body = ErrorBody)))]
async fn upload_artifact(
    State(state): State<ApiState>,
    request: Request,
) -> Result<Response, ApiError> {
    let limit = state.app.settings().max_artifact_bytes;
    // Refuse a declared oversize body before reading any of it.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::too_large(format!(
            "artifacts are limited to {limit} bytes"
        )));
    }
    let stream = request.into_body().into_data_stream();
    let (record, created) = state.app.upload_artifact(stream).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "sha256": record.sha256, "size": record.size })),
    )
        .into_response())
}

/// Downloads an artifact; HTTP `Range` requests resume. Over HTTPS only for
/// an operator's token or the client certificate of a node that runs it.
#[utoipa::path(get, path = "/api/v1/artifacts/{sha256}", tag = "releases",
    params(
        ("sha256" = Sha256Digest, Path, description = "The artifact's digest"),
        ("Range" = Option<String>, Header, description = "A byte range, to resume")),
    responses(
        (status = 200, description = "The artifact", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 206, description = "The range asked for", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 400, description = "`invalid_field`: not a SHA-256 digest (`sha256`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: an unknown, expired or revoked token", body = ErrorBody),
        (status = 403, description = "`forbidden`: over HTTPS, neither an operator's token nor the certificate of a node that runs it", body = ErrorBody),
        (status = 404, description = "`not_found`: no such artifact", body = ErrorBody),
        (status = 416, description = "The range is not satisfiable"),
        (status = 429, description = "`too_many_attempts`: too many bad tokens from this address", body = ErrorBody)))]
async fn download_artifact(
    State(state): State<ApiState>,
    Path(digest): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let digest: Sha256Digest = digest
        .parse()
        .map_err(|e: String| ApiError::invalid_field("sha256", e))?;
    let principal = auth::may_download(&state, &request, &digest)?;
    let path = state.app.artifact_path(&digest)?;
    // ServeFile answers Range requests (206, 416) and sets the length.
    let response = tower_http::services::ServeFile::new(path)
        .oneshot(request)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let mut response = response.map(Body::new);
    if let Some(principal) = principal {
        response.extensions_mut().insert(principal);
    }
    Ok(response)
}

#[cfg(test)]
mod access_tests;
#[cfg(test)]
mod asyncapi_tests;
#[cfg(test)]
mod openapi_tests;
#[cfg(test)]
mod tests;
