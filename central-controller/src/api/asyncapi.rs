//! The MQTT surface's published documents: the AsyncAPI 3.0 document
//! (`docs/asyncapi.json`) and the JSON Schema of every payload
//! (`docs/schemas/`), served without a token from what `verge_shared`
//! generates, so they are always those of the running build.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use verge_shared::{asyncapi, schema};

use super::error::ApiError;

/// The AsyncAPI document as `docs/asyncapi.json` keeps it, made once.
fn document() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(asyncapi::text)
}

/// Every schema as `docs/schemas/<name>.json` keeps it, by file name.
fn schemas() -> &'static BTreeMap<String, String> {
    static FILES: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    FILES.get_or_init(|| {
        schema::schemas()
            .into_iter()
            .map(|(name, value)| (format!("{name}.json"), schema::render(&value)))
            .collect()
    })
}

fn json(text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// The AsyncAPI 3.0 document of Verge's MQTT topics.
#[utoipa::path(get, path = "/api/v1/asyncapi.json", tag = "monitoring",
    responses((status = 200, description = "The AsyncAPI 3.0 document of every MQTT channel, its messages and their JSON Schemas (the same as docs/asyncapi.json)", body = Object)))]
pub(super) async fn asyncapi_json() -> Response {
    json(document())
}

/// The JSON Schema (draft 2020-12) of one MQTT payload.
#[utoipa::path(get, path = "/api/v1/schemas/{file}", tag = "monitoring",
    params(("file" = String, Path, description = "A file of docs/schemas/: `<name>.json`, such as `status.json` or `telemetry.json`")),
    responses(
        (status = 200, description = "The schema (the same as docs/schemas/<name>.json)", body = Object),
        (status = 404, description = "`not_found`: no schema of that name (the message lists them)", body = super::error::ErrorBody)))]
pub(super) async fn schema_json(Path(file): Path<String>) -> Result<Response, ApiError> {
    let files = schemas();
    match files.get(&file) {
        Some(text) => Ok(json(text)),
        None => Err(ApiError::not_found(format!(
            "no schema {:?}; the schemas are {}",
            file.chars().take(64).collect::<String>(),
            files
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
