//! The frame every console page shares: head with the compiled-in assets,
//! the navigation the role may use, the live-update status, the
//! confirmation dialog; and the small pieces pages repeat (state badges,
//! ages, empty tables, wire words, links with a query, action buttons).

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Serialize;
use verge_shared::Timestamp;

use crate::app::{Principal, Role, role_name};

/// The stylesheet and script, compiled into the binary.
pub(super) const CSS: &str = include_str!("assets/console.css");
pub(super) const JS: &str = include_str!("assets/console.js");

/// A short hash of both assets, so a new build's assets get new URLs and
/// old ones can be cached for good.
pub(super) static ASSET_VERSION: LazyLock<String> = LazyLock::new(|| {
    let hash = ring::digest::digest(&ring::digest::SHA256, format!("{CSS}{JS}").as_bytes());
    hex::encode(&hash.as_ref()[..6])
});

/// Who is looking, and the token their page's changes carry.
#[derive(Clone, Debug)]
pub(crate) struct Viewer {
    pub(crate) principal: Principal,
    pub(crate) csrf: String,
}

impl Viewer {
    pub(super) fn may(&self, role: Role) -> bool {
        self.principal.role >= role
    }
}

/// The pages, for the navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Nav {
    Overview,
    Nodes,
    Services,
    Alarms,
    Releases,
    Trust,
    Tokens,
    Audit,
    Users,
}

const NAV: [(Nav, &str, &str, Role); 9] = [
    (Nav::Overview, "/", "Overview", Role::Viewer),
    (Nav::Nodes, "/nodes", "Nodes", Role::Viewer),
    (Nav::Services, "/services", "Services", Role::Viewer),
    (Nav::Alarms, "/alarms", "Alarms", Role::Viewer),
    (Nav::Releases, "/releases", "Releases", Role::Viewer),
    (Nav::Trust, "/trust", "Trust", Role::Viewer),
    (Nav::Tokens, "/tokens", "Tokens", Role::Operator),
    (Nav::Audit, "/audit", "Audit log", Role::Operator),
    (Nav::Users, "/users", "Users", Role::Admin),
];

/// The headers every console response carries: a strict
/// Content-Security-Policy (own scripts and styles only, no inline code),
/// no framing, no sniffing.
pub(super) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// A whole page: `watch` names the change kinds that refresh its live
/// parts (empty for none).
pub(super) fn page(
    viewer: &Viewer,
    title: &str,
    active: Nav,
    watch: &str,
    body: Markup,
) -> Response {
    let principal = &viewer.principal;
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                (head_common(title))
                meta name="csrf-token" content=(viewer.csrf);
                script src={ "/assets/console.js?v=" (*ASSET_VERSION) } defer {}
            }
            body data-watch=(watch) {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "Verge" }
                    nav aria-label="Pages" {
                        ul {
                            @for (nav, href, label, role) in NAV {
                                @if principal.role >= role {
                                    li {
                                        @if nav == active {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span #live-status role="status" aria-live="polite" {
                            @if watch.is_empty() { "" } @else { "connecting…" }
                        }
                        span.user {
                            (principal.user) " · " (role_name(principal.role))
                        }
                        form method="post" action="/logout" {
                            (csrf_field(viewer))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
                dialog #confirm aria-labelledby="confirm-title" {
                    form method="dialog" {
                        h2 #confirm-title { "Are you sure?" }
                        p #confirm-text {}
                        div.actions {
                            button value="cancel" { "Cancel" }
                            button.danger value="ok" #confirm-ok { "Confirm" }
                        }
                    }
                }
            }
        }
    };
    html_response(markup)
}

/// What every page's `<head>` holds: encoding, viewport, title, no favicon
/// request (and so no 404 for one), the stylesheet.
pub(super) fn head_common(title: &str) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        link rel="icon" href="data:,";
        title { (title) " · Verge" }
        link rel="stylesheet" href={ "/assets/console.css?v=" (*ASSET_VERSION) };
    }
}

/// A labelled text field of a filter form.
pub(super) fn filter_field(name: &str, label: &str, value: &str, placeholder: &str) -> Markup {
    let id = format!("f-{name}");
    html! {
        div.field {
            label for=(id) { (label) }
            input #(id) name=(name) value=(value) placeholder=(placeholder);
        }
    }
}

/// An HTML response that is never cached.
pub(super) fn html_response(markup: Markup) -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A state told in words and a symbol, with a colour only as a help.
pub(super) fn badge(kind: &str, text: &str) -> Markup {
    let symbol = match kind {
        "good" => "●",
        "bad" => "✕",
        "warn" => "▲",
        _ => "○",
    };
    html! { span class={ "badge " (kind) } { span aria-hidden="true" { (symbol) " " } (text) } }
}

/// "12 s ago", "3 min ago", … for a time, relative to `now`.
pub(super) fn ago(at: Timestamp, now: Timestamp) -> Markup {
    let secs = now.saturating_since(at).as_secs();
    let text = match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86_400 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    };
    html! { time datetime=(at.to_string()) title=(at.to_string()) { (text) } }
}

/// A hidden field with the page's CSRF token, for forms the server reads.
fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// A message in place of an empty table.
pub(super) fn empty(text: &str) -> Markup {
    html! { p.empty { (text) } }
}

/// "1 release", "3 releases": a count with the noun that fits it.
pub(super) fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Text that may hold anything a node or a person sent, shown as text.
pub(super) fn text_or_dash(value: Option<&str>) -> Markup {
    match value {
        Some(v) if !v.is_empty() => html! { (v) },
        _ => html! { span.dim { "–" } },
    }
}

/// A value's wire name (`"running"`, `"cgroup_v2"`), as the API shows it.
pub(super) fn word<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// `path?query`, with the query's values encoded.
pub(super) fn query_link(path: &str, query: &std::collections::BTreeMap<String, String>) -> String {
    match serde_urlencoded::to_string(query) {
        Ok(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    }
}

/// A button that POSTs to the API route `api` after the person confirms
/// `confirm`; the page's script sends it with the CSRF token.
pub(super) fn action_form(api: &str, label: &str, id: &str, confirm: &str) -> Markup {
    html! {
        form.inline data-api=(api) data-method="POST" data-confirm=(confirm) data-done="reload" {
            button type="submit" #{ "action-" (id) } class=(if id == "revoke" { "danger" } else { "" }) { (label) }
            span.form-error role="alert" {}
        }
    }
}
