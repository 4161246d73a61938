//! Tokens: bootstrap tokens that enroll nodes (create with region, uses and
//! lifetime; the text shown once with a copy button; revoke) and the
//! signed-in person's own API tokens.

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};

use super::layout::{Nav, Viewer, ago, empty, page, word};
use super::overview::state_badge;
use super::problem::PageError;
use crate::api::state::ApiState;
use crate::app::Role;

pub(super) async fn show(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Response, PageError> {
    let app = &state.app;
    let now = app.now();
    let mut tokens = app.tokens().map_err(|e| PageError::new(&viewer, e))?;
    tokens.sort_by_key(|t| std::cmp::Reverse(t.created_at));
    let mut api_tokens = app
        .api_tokens(&viewer.principal)
        .map_err(|e| PageError::new(&viewer, e))?;
    api_tokens.sort_by_key(|t| std::cmp::Reverse(t.created_at));
    let regions = app.regions();
    let body = html! {
        section aria-labelledby="new-token-title" {
            h2 #new-token-title { "New bootstrap token" }
            p.dim { "A node enrolls once with a bootstrap token: edge-agent's enroll.token_file holds it. The controller keeps only its hash." }
            form.edit #token-form data-api="/api/v1/tokens" data-method="POST" data-done="token" data-output="new-token" {
                div.row {
                    label for="t-region" { "Region" }
                    input #t-region name="region" list="t-regions" required autocomplete="off";
                    datalist #t-regions { @for r in &regions { option value=(r.name) {} } }
                    span.hint { "The region the enrolled nodes belong to." }
                    span.form-error data-error-for="region" role="alert" {}
                }
                div.row {
                    label for="t-uses" { "Uses" }
                    input #t-uses name="uses" data-type="number" inputmode="numeric" placeholder="1";
                    span.hint { "How many nodes may enroll with it (1 to 10000)." }
                    span.form-error data-error-for="uses" role="alert" {}
                }
                div.row {
                    label for="t-ttl" { "Valid for (seconds)" }
                    input #t-ttl name="ttl_secs" data-type="number" inputmode="numeric" placeholder="86400";
                    span.hint { "Up to a year; a day by default." }
                    span.form-error data-error-for="ttl_secs" role="alert" {}
                }
                div.actions {
                    button type="submit" #create-token { "Create token" }
                    span.form-error role="alert" {}
                }
            }
            (shown_once("new-token", "The new bootstrap token (shown only now):"))
        }
        section #bootstrap-tokens data-live aria-labelledby="tokens-title" {
            h2 #tokens-title { "Bootstrap tokens" }
            @if tokens.is_empty() { (empty("No bootstrap tokens.")) } @else {
                div.scroll { table #tokens {
                    thead { tr { th scope="col" { "id" } th scope="col" { "region" } th scope="col" { "state" } th scope="col" { "uses left" } th scope="col" { "expires" } th scope="col" { "created" } th scope="col" { "" } } }
                    tbody { @for t in &tokens {
                        tr data-token=(t.id) {
                            th scope="row" { code { (t.id) } }
                            td { (t.region) }
                            td { (state_badge(t.state)) }
                            td.num { (t.uses_left) }
                            td { time datetime=(t.expires_at.to_string()) { (t.expires_at.to_string()) } }
                            td { (ago(t.created_at, now)) }
                            td { @if t.state == "active" {
                                (revoke(&format!("/api/v1/tokens/{}", t.id), &format!("Revoke bootstrap token {}? No node can enroll with it from now on; nodes already enrolled stay.", t.id)))
                            } }
                        }
                    } }
                } }
            }
        }
        section aria-labelledby="api-token-title" {
            h2 #api-token-title { "Your API tokens" }
            p.dim { "For scripts and the CLI: sent as Authorization: Bearer <token>. Console sessions are listed as \"console\"." }
            form.edit #api-token-form data-api="/api/v1/api-tokens" data-method="POST" data-done="token" data-output="new-api-token" {
                div.row {
                    label for="a-name" { "Name" }
                    input #a-name name="name" required autocomplete="off" placeholder="deploy script";
                    span.form-error data-error-for="name" role="alert" {}
                }
                div.row {
                    label for="a-role" { "Role" }
                    select #a-role name="role" {
                        @for role in [Role::Viewer, Role::Operator, Role::Admin] {
                            @if viewer.may(role) { option value=(word(&role)) selected[role == viewer.principal.role] { (word(&role)) } }
                        }
                    }
                    span.form-error data-error-for="role" role="alert" {}
                }
                div.row {
                    label for="a-ttl" { "Valid for (seconds)" }
                    input #a-ttl name="ttl_secs" data-type="number" inputmode="numeric" placeholder="no expiry";
                    span.form-error data-error-for="ttl_secs" role="alert" {}
                }
                div.actions {
                    button type="submit" #create-api-token { "Create API token" }
                    span.form-error role="alert" {}
                }
            }
            (shown_once("new-api-token", "The new API token (shown only now):"))
        }
        section #api-tokens data-live aria-label="API tokens" {
            @if api_tokens.is_empty() { (empty("No API tokens.")) } @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "name" } th scope="col" { "user" } th scope="col" { "role" } th scope="col" { "state" } th scope="col" { "expires" } th scope="col" { "created" } th scope="col" { "" } } }
                    tbody { @for t in &api_tokens {
                        tr {
                            th scope="row" { (t.name) " " code.dim { (t.id) } }
                            td { (t.user) }
                            td { (word(&t.role)) }
                            td { (state_badge(t.state)) }
                            td { @match t.expires_at { Some(at) => time datetime=(at.to_string()) { (at.to_string()) }, None => span.dim { "never" } } }
                            td { (ago(t.created_at, now)) }
                            td { @if t.state == "active" && t.id != viewer.principal.token_id {
                                (revoke(&format!("/api/v1/api-tokens/{}", t.id), &format!("Revoke the API token {:?} of {}? Whatever uses it is refused from now on.", t.name, t.user)))
                            } }
                        }
                    } }
                } }
            }
        }
    };
    let watch = if viewer.may(Role::Admin) {
        "token,api_token"
    } else {
        "token"
    };
    Ok(page(&viewer, "Tokens", Nav::Tokens, watch, body))
}

/// Where a new secret appears once, with a copy button.
fn shown_once(id: &str, label: &str) -> Markup {
    html! {
        div.notice.ok.secret #(id) hidden role="status" {
            span { (label) }
            code #{ (id) "-text" } {}
            button type="button" data-copy={ "#" (id) "-text" } { "Copy" }
        }
    }
}

fn revoke(api: &str, confirm: &str) -> Markup {
    html! {
        form.inline data-api=(api) data-method="DELETE" data-confirm=(confirm) data-done="reload" {
            button.danger type="submit" { "Revoke" }
            span.form-error role="alert" {}
        }
    }
}
