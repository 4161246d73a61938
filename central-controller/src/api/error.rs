//! The API's error body, `{"error":{"code","message","field"?}}`, with stable
//! codes, and the one mapping from application errors to HTTP statuses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::error;

use crate::app::{AppError, InstallError, UploadError};

/// An error as the API reports it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

/// The error code of a failed response, in its extensions, for the audit log.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

/// Every error's body.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error, example = json!({"error": {"code": "invalid_field", "message": "replicas: must be 0 to 100", "field": "replicas"}}))]
pub(super) struct Body<'a> {
    error: Detail<'a>,
}

/// What went wrong.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorDetail)]
struct Detail<'a> {
    /// Stable and machine-readable; each response of the document lists
    /// the codes it can carry (docs/api.md, "Errors").
    #[schema(example = "invalid_field")]
    code: &'a str,
    /// For people: what and where.
    message: &'a str,
    /// The offending part of the request (a field, query parameter or
    /// header), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

/// The error body's schema (`Error`), for `#[utoipa::path]` responses.
pub(super) type ErrorBody = Body<'static>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send an API token as 'Authorization: Bearer <token>' (POST /api/v1/login makes one)",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
        }
    }

    /// A body that is not the expected JSON. serde names an unknown field in
    /// its message (``unknown field `x`, expected ...``); that name becomes `field`.
    pub fn invalid_json(error: &serde_json::Error) -> Self {
        let message = error.to_string();
        let field = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_owned());
        Self {
            field,
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
        }
    }

    /// A 500 whose detail goes to the log (with every cause), not to the client.
    pub fn internal(detail: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = detail.to_string();
        let mut cause = detail.source();
        while let Some(e) = cause {
            chain.push_str(": ");
            chain.push_str(&e.to_string());
            cause = e.source();
        }
        error!(error = %chain, "A request failed inside the controller.");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the controller log",
        )
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::NotFound { .. } => ApiError::not_found(e.to_string()),
            AppError::InvalidField { field, message } => ApiError::invalid_field(field, message),
            AppError::Upload(UploadError::TooLarge { .. }) => ApiError::too_large(e.to_string()),
            AppError::Upload(UploadError::Body(detail)) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", detail)
            }
            AppError::Trust(InstallError::Io { .. }) => ApiError::internal(&e),
            AppError::Trust(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "trust_bundle_refused",
                e.to_string(),
            ),
            AppError::AgentUnavailable(message) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "agent_unavailable", message)
            }
            AppError::Denied {
                unauthorized,
                code,
                message,
            } => {
                let status = if unauthorized {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::FORBIDDEN
                };
                ApiError::new(status, code, message)
            }
            AppError::PreconditionFailed { message } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                message,
            ),
            AppError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            AppError::Throttled { retry_after } => ApiError {
                retry_after: Some(retry_after.as_secs().max(1)),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_attempts",
                    e.to_string(),
                )
            },
            AppError::TooManyWatchers { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_watchers",
                format!("{e}; try again later"),
            ),
            AppError::TlsDisabled => {
                ApiError::new(StatusCode::CONFLICT, "tls_disabled", e.to_string())
            }
            AppError::Upload(UploadError::Io(_))
            | AppError::Store(_)
            | AppError::Sign(_)
            | AppError::Random
            | AppError::Hashing(_)
            | AppError::Ca(_)
            | AppError::BundleFile { .. } => ApiError::internal(&e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Detail {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}
