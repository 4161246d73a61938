//! The web console: server-rendered pages on the API's own listener, with
//! the stylesheet and script compiled into the binary.
//!
//! Pages are HTML from [`maud`] templates over the same use cases the API
//! calls; changes go through the API itself (the page's script sends the
//! session cookie and the CSRF token), so the API's role checks, audit and
//! error messages apply to the console unchanged. Each page names the
//! change kinds that concern it; the script follows the watch stream and
//! re-reads the page's live parts when one arrives.

mod alarms;
mod audit;
mod chart;
mod layout;
mod login;
mod nodes;
mod overview;
mod problem;
mod releases;
mod services;
pub(crate) mod session;
mod tokens;
mod trust;
mod users;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::auth::{client_ip, route_of};
use super::error::ApiError;
use super::state::ApiState;
use crate::app::{AppError, Principal, Role, Source, forbidden};
use layout::{CSP, Viewer};
use problem::problem;

/// The console's routes, for the API's router to merge.
pub(super) fn router(state: ApiState) -> Router<ApiState> {
    let pages = Router::new()
        .route("/", get(overview::show))
        .route("/nodes", get(nodes::list))
        .route("/nodes/{id}", get(nodes::detail))
        .route("/services", get(services::list))
        .route("/alarms", get(alarms::list))
        .route("/services/{name}", get(services::detail))
        .route("/deploy", get(services::deploy))
        .route("/releases", get(releases::list))
        .route("/trust", get(trust::show))
        .route("/tokens", get(tokens::show))
        .route("/users", get(users::list))
        .route("/audit", get(audit::list))
        .route("/logout", post(login::sign_out))
        .route_layer(middleware::from_fn_with_state(state, require_session));
    Router::new()
        .route(
            "/login",
            get(login::form)
                .post(login::sign_in)
                .layer(DefaultBodyLimit::max(16 * 1024)),
        )
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .merge(pages)
        .layer(middleware::map_response(secure_headers))
}

/// The role a console page needs, like [`super::required_role`] for the API.
pub fn required_role(route: &str) -> Role {
    match route {
        "/tokens" | "/audit" | "/deploy" => Role::Operator,
        "/users" => Role::Admin,
        _ => Role::Viewer,
    }
}

/// The session cookie to a [`Viewer`]; without a valid one, to the sign-in
/// page (which says why), remembering where the person was going.
async fn require_session(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let https = session::is_https(&request);
    let Some(token) = session::cookie(request.headers()).map(str::to_owned) else {
        return to_sign_in(&request, None);
    };
    let principal = match state
        .app
        .console_session(&token, Source::of(client_ip(&request)))
    {
        Ok(principal) => principal,
        Err(e) => {
            let mut response = to_sign_in(&request, Some(&e));
            response
                .headers_mut()
                .insert(header::SET_COOKIE, session::clear_cookie(https));
            return response;
        }
    };
    let needed = required_role(route_of(&request));
    let viewer = Viewer {
        principal: principal.clone(),
        csrf: session::csrf_token(&token),
    };
    let mut response = if principal.role < needed {
        let error = ApiError::from(forbidden(
            needed,
            &format!("the page {}", route_of(&request)),
        ));
        problem(&viewer, &error)
    } else {
        request.extensions_mut().insert(viewer);
        next.run(request).await
    };
    response.extensions_mut().insert::<Principal>(principal);
    response
}

fn to_sign_in(request: &Request, why: Option<&AppError>) -> Response {
    let next = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let reason = match why {
        Some(AppError::Denied {
            code: "session_idle",
            ..
        }) => "idle",
        Some(AppError::Throttled { .. }) => "throttled",
        Some(_) => "expired",
        None => "",
    };
    let mut query = vec![("next", next.as_str())];
    if !reason.is_empty() {
        query.push(("why", reason));
    }
    let target = format!(
        "/login?{}",
        serde_urlencoded::to_string(query).unwrap_or_default()
    );
    Redirect::to(&target).into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", layout::CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", layout::JS)
}

/// Assets carry their version in the URL, so they may be cached for good.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

/// The headers of every console response.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests;
