//! Releases (publisher-signed, uploaded as their DSSE envelope) and the
//! root-signed trust bundle the controller hands to every agent.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use verge_shared::limits;

use super::body::read_bytes;
use super::error::ApiError;
use super::state::ApiState;

use crate::app::release_summary as summary;

/// `POST /api/v1/releases`: the body is the signed release envelope, as
/// `verge-admin release sign` writes it.
pub async fn upload_release(
    State(state): State<ApiState>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_bytes(body, limits::MAX_RELEASE_BYTES).await?;
    let (record, created) = state.app.upload_release(&bytes)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(summary(&record))).into_response())
}

pub async fn list_releases(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let releases: Vec<Value> = state.app.releases()?.iter().map(summary).collect();
    Ok(Json(json!({ "releases": releases })).into_response())
}

/// One release with its run spec and the envelope as signed.
pub async fn get_release(
    State(state): State<ApiState>,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    let record = state.app.release(&digest)?;
    let mut body = summary(&record);
    body["run"] = json!(record.release.run);
    body["resources"] = json!(record.release.resources);
    body["envelope"] = json!(record.envelope);
    Ok(Json(body).into_response())
}

/// The trust bundle in force (its contents; key ids for reading).
pub async fn get_trust(State(state): State<ApiState>) -> Response {
    let bundle = state.app.trust_bundle();
    Json(json!({
        "version": bundle.version,
        "expires_at": bundle.expires_at,
        "root": {
            "threshold": bundle.root.threshold,
            "key_ids": bundle.root.keys.iter().map(|k| k.key_id()).collect::<Vec<_>>(),
        },
        "controller_key_ids": bundle.controllers.iter().map(|k| k.key_id()).collect::<Vec<_>>(),
        "publishers": bundle.publishers.iter().map(|p| json!({
            "name": p.name,
            "key_id": p.key.key_id(),
            "services": p.services,
        })).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// `PUT /api/v1/trust`: installs a newer root-signed bundle and sends it
/// to every agent with its desired state.
pub async fn put_trust(State(state): State<ApiState>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_bytes(body, limits::MAX_TRUST_BUNDLE_BYTES).await?;
    let installed = state.app.install_trust(&bytes).await?;
    let bundle = state.app.trust_bundle();
    Ok(
        Json(json!({ "version": bundle.version, "installed": installed.is_some() }))
            .into_response(),
    )
}
