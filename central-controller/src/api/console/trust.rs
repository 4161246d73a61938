//! The trust bundle in force: its version and expiry, the root keys that
//! sign it, the controller keys, and the publishers with the services each
//! may publish.
//!
//! Read-only: a new bundle is signed offline by the root key holders and
//! installed through the API.

use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use verge_shared::Timestamp;

use super::layout::{Nav, Viewer, ago, badge, page};
use crate::api::state::ApiState;

/// A bundle expiring within this long is flagged.
const WARN_BEFORE: Duration = Duration::from_secs(30 * 86_400);

pub(super) async fn show(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    let bundle = state.app.trust_bundle();
    let now = state.app.now();
    let expired = bundle.expires_at <= now;
    let left = bundle.expires_at.saturating_since(now);
    let body = html! {
        @if expired {
            div.notice.error role="alert" #trust-expiry {
                h2 { "The trust bundle has expired" }
                p {
                    "It expired " (ago(bundle.expires_at, now)) ". Agents holding it refuse every new desired state "
                    "(what they run keeps running) until a newer bundle arrives: have the root key holders sign one now."
                }
            }
        } @else if left <= WARN_BEFORE {
            div.notice.error role="status" #trust-expiry {
                p {
                    strong { "The trust bundle expires " (until(bundle.expires_at, now)) "." }
                    " After that, agents refuse every new desired state until a newer bundle arrives; have one signed before then."
                }
            }
        }
        section aria-labelledby="bundle-title" {
            h2 #bundle-title { "Bundle" }
            dl.facts {
                dt { "Version" } dd #trust-version { (bundle.version) }
                dt { "Issued" } dd { (ago(bundle.issued_at, now)) }
                dt { "Expires" } dd {
                    time datetime=(bundle.expires_at.to_string()) { (bundle.expires_at.to_string()) }
                    " "
                    @if expired { (badge("bad", "expired")) }
                    @else if left <= WARN_BEFORE { (badge("warn", &format!("expires {}", until(bundle.expires_at, now)))) }
                    @else { (badge("good", &format!("valid, expires {}", until(bundle.expires_at, now)))) }
                }
                dt { "Generation reset" } dd {
                    @if bundle.reset_generations { "yes: agents accepting it forget the highest desired-state generation they saw" }
                    @else { "no" }
                }
            }
        }
        section aria-labelledby="root-title" {
            h2 #root-title { "Root keys" }
            p { (bundle.root.threshold) " of these " (bundle.root.keys.len()) " keys must sign the next bundle." }
            (key_list(bundle.root.keys.iter().map(|k| k.key_id().as_str().to_owned())))
        }
        section aria-labelledby="controller-title" {
            h2 #controller-title { "Controller keys" }
            p.dim { "Keys that may sign agents' desired states." }
            (key_list(bundle.controllers.iter().map(|k| k.key_id().as_str().to_owned())))
        }
        section aria-labelledby="publishers-title" {
            h2 #publishers-title { "Publishers" }
            div.scroll {
                table #publishers {
                    thead { tr { th scope="col" { "publisher" } th scope="col" { "key id" } th scope="col" { "services it may publish" } } }
                    tbody {
                        @for publisher in &bundle.publishers {
                            tr {
                                th scope="row" { (publisher.name) }
                                td { code { (publisher.key.key_id().as_str()) } }
                                td { @for pattern in &publisher.services { code { (pattern) } " " } }
                            }
                        }
                    }
                }
            }
        }
        p.dim {
            "A new bundle is signed offline by the root key holders ("
            code { "verge-admin trust sign" } ", " code { "verge-admin trust add-signature" }
            ") and installed by an admin with " code { "PUT /api/v1/trust" } "."
        }
    };
    page(&viewer, "Trust", Nav::Trust, "", body)
}

fn key_list(ids: impl Iterator<Item = String>) -> Markup {
    html! {
        ul { @for id in ids { li { code { (id) } } } }
    }
}

/// "in 12 d", "in 3 h", … for a time after `now`.
fn until(at: Timestamp, now: Timestamp) -> String {
    let secs = at.saturating_since(now).as_secs();
    match secs {
        0..60 => format!("in {secs} s"),
        60..3600 => format!("in {} min", secs / 60),
        3600..86_400 => format!("in {} h", secs / 3600),
        _ => format!("in {} d", secs / 86_400),
    }
}
