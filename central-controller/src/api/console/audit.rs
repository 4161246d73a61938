//! The audit log (operators and admins), newest first: who changed what,
//! from where, and how it ended; filtered by actor, target and time, a page
//! at a time with the API's cursors.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;
use maud::{Markup, html};

use super::layout::{
    Nav, Viewer, badge, count, empty, filter_field, page, query_link, text_or_dash,
};
use super::problem::PageError;
use crate::api::audit::{cursor_for, parse};
use crate::api::error::ErrorCode;
use crate::api::state::ApiState;
use crate::app::{AuditRecord, role_name};

/// Entries per page unless the query says otherwise.
const PAGE: &str = "50";

pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Query(mut query): Query<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    // An empty field of the filter form means "any".
    query.retain(|_, v| !v.trim().is_empty());
    let mut without_cursor = query.clone();
    without_cursor.remove("cursor");
    let mut asked = query.clone();
    asked
        .entry("limit".to_owned())
        .or_insert_with(|| PAGE.to_owned());
    // A filter the API refuses (a time that is not RFC 3339) is said next
    // to the form, so it can be put right.
    let (entries, next, refused) = match parse(&asked) {
        Ok((filter, before, limit)) => {
            let found = state
                .app
                .audit(&filter, before, limit)
                .map_err(|e| PageError::new(&viewer, e))?;
            (found.entries, found.next, None)
        }
        Err(error) => (Vec::new(), None, Some(error)),
    };
    let next = next.map(|seq| {
        let mut q = without_cursor.clone();
        q.insert("cursor".to_owned(), cursor_for(seq));
        query_link("/audit", &q)
    });
    let chosen = |name: &str| query.get(name).map(String::as_str).unwrap_or("");
    let body = html! {
        form.filters method="get" action="/audit" role="search" aria-label="Filter the audit log" {
            (filter_field("actor", "Actor (user)", chosen("actor"), "alice"))
            (filter_field("target", "Target and below", chosen("target"), "services/web"))
            (filter_field("since", "Since (RFC 3339)", chosen("since"), "2025-01-31T00:00:00Z"))
            (filter_field("until", "Until (RFC 3339)", chosen("until"), "2025-02-01T00:00:00Z"))
            @if let Some(limit) = query.get("limit") {
                input type="hidden" name="limit" value=(limit);
            }
            div.field.buttons {
                button type="submit" { "Filter" }
                a href="/audit" { "Clear" }
            }
        }
        @if let Some(error) = &refused {
            div.notice.error role="alert" #audit-error {
                @if let Some(field) = &error.field { strong { (field) } ": " }
                (error.message)
            }
        }
        section #audit-table aria-label="Audit log" {
            p.dim #audit-count {
                (count(entries.len(), "entry", "entries")) " on this page, newest first"
                @if query.contains_key("cursor") { " (not the first page)" }
            }
            @if entries.is_empty() {
                (empty(if refused.is_some() { "Nothing listed: the filter was refused." } else { "No entry matches." }))
            } @else {
                div.scroll {
                    table #audit {
                        thead { tr {
                            th scope="col" { "time" } th scope="col" { "actor" } th scope="col" { "token" }
                            th scope="col" { "role" } th scope="col" { "source" } th scope="col" { "request" }
                            th scope="col" { "target" } th scope="col" { "status" } th scope="col" { "error" }
                        } }
                        tbody { @for record in &entries { (row(record)) } }
                    }
                }
            }
            nav.pager aria-label="Pages" {
                a href=(query_link("/audit", &without_cursor)) #refresh {
                    @if query.contains_key("cursor") { "← Newest entries" } @else { "Refresh" }
                }
                @if let Some(next) = &next {
                    a href=(next) rel="next" #next-page { "Next page (older) →" }
                }
            }
        }
    };
    let mut response = page(&viewer, "Audit log", Nav::Audit, "", body);
    if let Some(error) = refused {
        *response.status_mut() = error.status;
        response.extensions_mut().insert(ErrorCode(error.code));
    }
    Ok(response)
}

fn row(record: &AuditRecord) -> Markup {
    let e = &record.entry;
    let at = record.at.to_string();
    html! {
        tr data-seq=(record.seq) {
            th scope="row" { time datetime=(at) { (at) } }
            td { (text_or_dash(e.actor.as_deref())) }
            td { (text_or_dash(e.token.as_deref())) }
            td { (text_or_dash(e.role.map(role_name))) }
            td { (text_or_dash(e.source.as_deref())) }
            td { code { (e.method) " " (e.route) } }
            td { code { (e.target) } }
            td { (status(e.status)) }
            td { (text_or_dash(e.error.as_deref())) }
        }
    }
}

/// A refused request (credentials, role, throttling) stands out; another
/// failure is marked; a success is its status.
fn status(code: u16) -> Markup {
    match code {
        401 | 403 | 429 => badge("bad", &format!("{code} refused")),
        400.. => badge("warn", &format!("{code} failed")),
        _ => html! { (code) " ok" },
    }
}
