//! Signing in (a user name and password, or an API token) and out.
//!
//! The sign-in form is an ordinary form post, so it works before any
//! script has loaded; it is refused from another origin (no one can sign
//! a browser in to their own account behind its owner's back), and its
//! failures count against the client's address like the API's.

use axum::Form;
use axum::extract::{FromRequest as _, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::layout::{Viewer, head_common, html_response};
use super::session;
use crate::api::audit::Attempted;
use crate::api::auth::client_ip;
use crate::api::error::{ApiError, ErrorCode};
use crate::api::state::ApiState;
use crate::app::{Credentials, SESSION_TTL, Source};

#[derive(Debug, Default, Deserialize)]
pub(super) struct Shown {
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    why: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct SignIn {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct SignOut {
    #[serde(default)]
    csrf: String,
}

/// Where to go after signing in: a path on this site, else the overview.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => p,
        _ => "/",
    }
}

pub(super) async fn form(Query(shown): Query<Shown>) -> Response {
    let notice = match shown.why.as_deref() {
        Some("idle") => Some("Your session ended after a time without use. Sign in again."),
        Some("expired") => Some("Your session has ended. Sign in again."),
        Some("throttled") => {
            Some("Too many failed attempts from your address; wait, then sign in again.")
        }
        Some("signed_out") => Some("You are signed out."),
        _ => None,
    };
    html_response(sign_in_page(
        local_path(shown.next.as_deref()),
        notice.map(|n| (n, false)),
        "",
    ))
}

pub(super) async fn sign_in(State(state): State<ApiState>, request: Request) -> Response {
    let https = session::is_https(&request);
    let source = Source::of(client_ip(&request));
    if let Err(error) = session::same_origin(&request) {
        return refused("/", "", &error);
    }
    let form = match Form::<SignIn>::from_request(request, &state).await {
        Ok(Form(form)) => form,
        Err(rejection) => {
            let error = ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_form",
                rejection.body_text(),
            );
            return refused("/", "", &error);
        }
    };
    let next = local_path(form.next.as_deref()).to_owned();
    let by_token = !form.token.trim().is_empty();
    let attempted = if by_token {
        String::new()
    } else {
        form.user.clone()
    };
    let credentials = if by_token {
        Credentials::Token(form.token)
    } else {
        Credentials::Password {
            user: form.user,
            password: form.password,
        }
    };
    let mut response = match state.app.console_sign_in(credentials, source).await {
        Ok(session) => {
            let mut response = Redirect::to(&next).into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                session::set_cookie(&session.token, SESSION_TTL.as_secs(), https),
            );
            response.extensions_mut().insert(session.principal);
            response
        }
        Err(e) => refused(&next, &attempted, &ApiError::from(e)),
    };
    if !attempted.is_empty() {
        response.extensions_mut().insert(Attempted(attempted));
    }
    response
}

/// The form again, saying why the sign-in failed, with the API's status.
fn refused(next: &str, user: &str, error: &ApiError) -> Response {
    let message = match error.code {
        "unauthorized" if user.is_empty() => error.message.clone(),
        "unauthorized" => "Wrong user name or password.".to_owned(),
        _ => error.message.clone(),
    };
    let mut response = html_response(sign_in_page(next, Some((&message, true)), user));
    *response.status_mut() = error.status;
    if let Some(secs) = error.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, secs.into());
    }
    response.extensions_mut().insert(ErrorCode(error.code));
    response
}

pub(super) async fn sign_out(
    State(state): State<ApiState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    request: Request,
) -> Response {
    let https = session::is_https(&request);
    let token = session::cookie(request.headers())
        .unwrap_or_default()
        .to_owned();
    let Ok(Form(form)) = Form::<SignOut>::from_request(request, &state).await else {
        return session::csrf_refused().into_response();
    };
    if !session::csrf_matches(&token, &form.csrf) {
        return session::csrf_refused().into_response();
    }
    if let Err(e) = state.app.console_sign_out(&viewer.principal) {
        return ApiError::from(e).into_response();
    }
    let mut response = Redirect::to("/login?why=signed_out").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie(https));
    response
}

fn sign_in_page(next: &str, notice: Option<(&str, bool)>, user: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                (head_common("Sign in"))
            }
            body.signin {
                main #main {
                    h1 { "Verge" }
                    p.dim { "Sign in to the fleet console." }
                    @if let Some((text, error)) = notice {
                        div class={ "notice" @if error { " error" } } role=(if error { "alert" } else { "status" }) #signin-notice {
                            (text)
                        }
                    }
                    form method="post" action="/login" {
                        input type="hidden" name="next" value=(next);
                        fieldset {
                            legend { "With your user name and password" }
                            label for="user" { "User name" }
                            input #user name="user" autocomplete="username" value=(user) autofocus;
                            label for="password" { "Password" }
                            input #password name="password" type="password" autocomplete="current-password";
                        }
                        fieldset {
                            legend { "Or with an API token" }
                            label for="token" { "API token" }
                            input #token name="token" type="password" autocomplete="off" placeholder="verge_…";
                        }
                        button type="submit" #signin { "Sign in" }
                    }
                }
            }
        }
    }
}
