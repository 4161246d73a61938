//! A console page's error: the API's error and status, shown as a page
//! that says what went wrong in words.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::layout::{self, Nav, Viewer};
use crate::api::error::{ApiError, ErrorCode};

/// A page that says what went wrong, in words, with the API's status.
pub(super) fn problem(viewer: &Viewer, error: &ApiError) -> Response {
    let body = html! {
        div.notice.error role="alert" { p { (error.message) } }
        p { a href="/" { "Back to the overview" } }
    };
    let title = match error.status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        _ => "Something went wrong",
    };
    let mut response = layout::page(viewer, title, Nav::Overview, "", body);
    *response.status_mut() = error.status;
    response.extensions_mut().insert(ErrorCode(error.code));
    response
}

/// A console page's error: the API's error, shown as a page.
pub(super) struct PageError {
    viewer: Viewer,
    error: ApiError,
}

impl PageError {
    pub(super) fn new(viewer: &Viewer, error: impl Into<ApiError>) -> Self {
        Self {
            viewer: viewer.clone(),
            error: error.into(),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        problem(&self.viewer, &self.error)
    }
}
