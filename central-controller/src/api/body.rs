//! Request bodies, read with a size limit before anything parses them.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt as _;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest JSON request body.
pub const MAX_JSON_BYTES: usize = 64 * 1024;

/// Reads a JSON body of at most [`MAX_JSON_BYTES`], sent as
/// `application/json` (anything else is 415, before the body is read).
pub(super) async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let sent = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let is_json = sent.as_deref().is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
    });
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send this body as 'content-type: application/json' (it came as {})",
                sent.map_or_else(|| "no content type".to_owned(), |t| format!("{t:?}"))
            ),
        ));
    }
    let bytes = read_bytes(body, MAX_JSON_BYTES).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid_json(&e))
}

/// Reads a body of at most `limit` bytes.
pub(super) async fn read_bytes(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(format!(
            "this body is limited to {limit} bytes"
        ))),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            e.to_string(),
        )),
    }
}
