//! Releases (publisher-signed, uploaded as their DSSE envelope) and the
//! root-signed trust bundle the controller hands to every agent.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use verge_shared::{Envelope, Sha256Digest, limits};

use super::body::read_bytes;
use super::error::ApiError;
use super::state::ApiState;

use crate::app::release_summary as summary;

/// `POST /api/v1/releases`: the body is the signed release envelope, as
/// `verge-admin release sign` writes it.
#[utoipa::path(post, path = "/api/v1/releases", tag = "releases",
    request_body(content = Envelope, content_type = "application/json",
        description = "The publisher-signed release envelope, as `verge-admin release sign` writes it (at most 64 KiB)",
        example = json!({"payloadType": "application/vnd.verge.release.v1+json", "payload": "eyJzZXJ2aWNlIjoiaGVsbG8ifQ==",
            "signatures": [{"keyid": "…", "sig": "…"}]})),
    responses(
        (status = 200, description = "Already stored", body = super::openapi::ReleaseSummary),
        (status = 201, description = "Stored", body = super::openapi::ReleaseSummary),
        (status = 400, description = "`invalid_field`: not a release signed by a publisher of the trust bundle allowed its service, or it names an artifact not uploaded or of another size (`release`, `artifacts[i]`); `invalid_body`: the body could not be read", body = super::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 64 KiB", body = super::error::ErrorBody)))]
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

#[utoipa::path(get, path = "/api/v1/releases", tag = "releases",
    responses((status = 200, description = "Every release", body = super::openapi::ReleaseList)))]
pub async fn list_releases(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let releases: Vec<Value> = state.app.releases()?.iter().map(summary).collect();
    Ok(Json(json!({ "releases": releases })).into_response())
}

/// One release with its run spec and the envelope as signed.
#[utoipa::path(get, path = "/api/v1/releases/{digest}", tag = "releases",
    params(("digest" = Sha256Digest, Path, description = "The release's digest")),
    responses(
        (status = 200, description = "The release", body = super::openapi::ReleaseDetail),
        (status = 404, description = "`not_found`: no such release", body = super::error::ErrorBody)))]
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
#[utoipa::path(get, path = "/api/v1/trust", tag = "releases",
    responses((status = 200, description = "The trust bundle in force", body = super::openapi::TrustView)))]
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
#[utoipa::path(put, path = "/api/v1/trust", tag = "releases",
    request_body(content = Envelope, content_type = "application/json",
        description = "A newer root-signed trust bundle's envelope",
        example = json!({"payloadType": "application/vnd.verge.trust-bundle.v1+json", "payload": "eyJ2ZXJzaW9uIjoyfQ==",
            "signatures": [{"keyid": "…", "sig": "…"}]})),
    responses(
        (status = 200, description = "The version in force", body = super::openapi::TrustInstalled),
        (status = 400, description = "`invalid_body`: the body could not be read", body = super::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: over the trust bundle limit", body = super::error::ErrorBody),
        (status = 422, description = "`trust_bundle_refused`: not a properly signed successor, or it does not list this controller's key", body = super::error::ErrorBody)))]
pub async fn put_trust(State(state): State<ApiState>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_bytes(body, limits::MAX_TRUST_BUNDLE_BYTES).await?;
    let installed = state.app.install_trust(&bytes).await?;
    let bundle = state.app.trust_bundle();
    Ok(
        Json(json!({ "version": bundle.version, "installed": installed.is_some() }))
            .into_response(),
    )
}
