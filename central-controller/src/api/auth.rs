//! Who may call what: the bearer token to a [`Principal`], and the one
//! table of the role each route needs.
//!
//! The principal goes into the request's extensions for handlers that act
//! for a user (tokens, passwords), and into the response's for the audit log.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::console::session;
use super::error::ApiError;
use super::state::ApiState;
use verge_shared::Sha256Digest;

use crate::app::{HttpsClient, Principal, Role, Source, forbidden};

/// The client's address, when the request came from a socket.
pub(super) fn client_ip(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The route pattern the request matched (`""` when none).
pub(super) fn route_of(request: &Request) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str)
}

/// The role `method` on `route` needs. Reads need `viewer`, except where a
/// read shows secrets or other users' data; changes need `operator`,
/// except users, trust, revocation and consumer credentials, which need
/// `admin`.
pub fn required_role(method: &Method, route: &str) -> Role {
    let read = method == Method::GET || method == Method::HEAD;
    match route {
        "/api/v1/users" | "/api/v1/users/{name}" | "/api/v1/users/{name}/role" => Role::Admin,
        // One's own password; the app asks for admin for anyone else's.
        "/api/v1/users/{name}/password" => Role::Viewer,
        "/api/v1/trust" | "/api/v1/nodes/{id}/revoke" if !read => Role::Admin,
        "/api/v1/consumers" | "/api/v1/consumers/{name}" => Role::Admin,
        "/api/v1/tokens" | "/api/v1/tokens/{id}" => Role::Operator,
        "/api/v1/api-tokens" | "/api/v1/api-tokens/{id}" => Role::Operator,
        "/api/v1/audit" => Role::Operator,
        // Acknowledge, suppress, unsuppress: what an operator does.
        "/api/v1/alarms/{instance}/acknowledge"
        | "/api/v1/alarms/catalogue/{alarm}/suppress"
        | "/api/v1/alarms/catalogue/{alarm}/unsuppress" => Role::Operator,
        _ if read => Role::Viewer,
        _ => Role::Operator,
    }
}

/// The bearer token the request presents, if any.
fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|b| !b.is_empty())
}

/// Over HTTPS, an artifact goes to a node whose desired state runs it (by
/// its client certificate) or to an operator (by token); plain HTTP (dev
/// mode, or `[tls] enabled = false`) serves anyone who can reach the API.
pub(super) fn may_download(
    state: &ApiState,
    request: &Request,
    digest: &Sha256Digest,
) -> Result<Option<Principal>, ApiError> {
    let Some(client) = request.extensions().get::<HttpsClient>() else {
        return Ok(None);
    };
    if let Some(name) = &client.certificate_name
        && state.app.node_may_fetch(name, digest)?
    {
        return Ok(None);
    }
    let Some(bearer) = bearer(request) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "artifacts are served to operators (send an API token) and to nodes whose \
             desired state runs them (present the node's client certificate)",
        ));
    };
    let principal = state
        .app
        .authenticate(bearer, Source::of(client_ip(request)))?;
    principal.require(Role::Operator, "downloading an artifact")?;
    Ok(Some(principal))
}

/// Who the request is from: its bearer token, else the console's session
/// cookie. A change made with the cookie also needs the page's CSRF token;
/// its refusal still names who it was, for the audit log.
fn principal(
    state: &ApiState,
    request: &Request,
) -> Result<(Principal, Result<(), ApiError>), ApiError> {
    let source = Source::of(client_ip(request));
    if let Some(bearer) = bearer(request) {
        return Ok((state.app.authenticate(bearer, source)?, Ok(())));
    }
    let Some(token) = session::cookie(request.headers()) else {
        return Err(ApiError::unauthorized());
    };
    let principal = state.app.console_session(token, source)?;
    Ok((principal, session::check_change(request, token)))
}

/// Authenticates the request and checks the route's role.
pub(super) async fn authenticate(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let (principal, checked) = match principal(&state, &request) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let needed = required_role(request.method(), route_of(&request));
    let mut response = if let Err(refused) = checked {
        refused.into_response()
    } else if principal.role < needed {
        let what = format!("{} {}", request.method(), route_of(&request));
        ApiError::from(forbidden(needed, &what)).into_response()
    } else {
        request.extensions_mut().insert(principal.clone());
        next.run(request).await
    };
    response.extensions_mut().insert::<Principal>(principal);
    response
}
