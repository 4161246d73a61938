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
mod audit;
mod auth;
mod body;
mod conditional;
mod console;
mod error;
mod identity;
mod logs;
mod metrics;
mod nodes;
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
use verge_shared::Sha256Digest;

pub use auth::required_role;
pub use body::MAX_JSON_BYTES;
pub use error::ApiError;

use body::read_json;
use state::ApiState;

use crate::app::{App, Cordon, ServiceRequest};

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
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
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

async fn list_services(State(state): State<ApiState>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "services": state.app.services()? })).into_response())
}

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

async fn delete_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let expect = conditional::expectation(&headers)?;
    state.app.delete_service_expecting(&name, &expect).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_node(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.app.node(&id)?).into_response())
}

/// The node's recent telemetry, oldest first.
async fn get_node_telemetry(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.app.node_telemetry(&id)?).into_response())
}

async fn cordon_node(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.app.set_cordon(&id, Some(Cordon::Cordoned)).await?).into_response())
}

async fn drain_node(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.app.set_cordon(&id, Some(Cordon::Drained)).await?).into_response())
}

async fn uncordon_node(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.app.set_cordon(&id, None).await?).into_response())
}

async fn list_regions(State(state): State<ApiState>) -> Response {
    Json(json!({ "regions": state.app.regions() })).into_response()
}

async fn get_latency(State(state): State<ApiState>) -> Response {
    Json(state.app.latency_view()).into_response()
}

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
mod tests;
