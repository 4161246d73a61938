//! The alarms page: what is raised now, most severe first, with who
//! acknowledged it; what cleared recently; and the catalogue with each
//! alarm's suppression. Acknowledge and suppress are forms the script sends
//! to the JSON API (operators).

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;
use maud::{Markup, html};
use verge_shared::alarms::{Alarm, Severity};

use super::layout::{Nav, Viewer, action_form, ago, badge, count, empty, page, text_or_dash, word};
use super::problem::PageError;
use crate::api::state::ApiState;
use crate::app::{AlarmFilter, AlarmStates, Role};

/// Cleared alarms shown below the active ones.
const RECENT: usize = 20;

pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Query(_query): Query<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    let app = &state.app;
    let now = app.now();
    let active = app.alarms(&AlarmFilter::default(), 500).alarms;
    let mut cleared = app
        .alarms(
            &AlarmFilter {
                state: AlarmStates::Cleared,
                ..AlarmFilter::default()
            },
            500,
        )
        .alarms;
    cleared.reverse();
    cleared.truncate(RECENT);
    let catalogue = app.alarm_catalogue().alarms;
    let operator = viewer.may(Role::Operator);
    let body = html! {
        section #alarm-active data-live aria-labelledby="active-title" {
            h2 #active-title { "Active" }
            p.dim #alarm-count { (count(active.len(), "alarm", "alarms")) " raised, most severe first" }
            @if active.is_empty() {
                (empty("No alarm is raised."))
            } @else {
                div.scroll {
                    table #alarms {
                        thead { tr {
                            th scope="col" { "severity" } th scope="col" { "alarm" } th scope="col" { "entity" }
                            th scope="col" { "region" } th scope="col" { "raised" } th scope="col" { "reason" }
                            th scope="col" { "acknowledged" }
                        } }
                        tbody { @for alarm in &active { (row(alarm, now, operator)) } }
                    }
                }
            }
        }
        section #alarm-history data-live aria-labelledby="history-title" {
            h2 #history-title { "Recently cleared" }
            @if cleared.is_empty() {
                (empty("Nothing has cleared yet."))
            } @else {
                div.scroll {
                    table #alarm-cleared {
                        thead { tr {
                            th scope="col" { "severity" } th scope="col" { "alarm" } th scope="col" { "entity" }
                            th scope="col" { "raised" } th scope="col" { "cleared" } th scope="col" { "reason" }
                        } }
                        tbody { @for alarm in &cleared {
                            tr data-instance=(alarm.instance) {
                                td { (severity(alarm.severity)) }
                                th scope="row" { (alarm.title) br; code.dim { (alarm.code) } }
                                td { code { (alarm.entity_instance) } }
                                td { (ago(alarm.raised_at, now)) }
                                td { @if let Some(at) = alarm.cleared_at { (ago(at, now)) } }
                                td { (alarm.reason) }
                            }
                        } }
                    }
                }
            }
        }
        section #alarm-catalogue aria-labelledby="catalogue-title" {
            h2 #catalogue-title { "Catalogue" }
            p.dim { "Every alarm Verge raises (docs/alarms.md). A suppressed alarm is still kept and listed here, but not published on MQTT." }
            div.scroll {
                table #catalogue {
                    thead { tr {
                        th scope="col" { "code" } th scope="col" { "alarm" } th scope="col" { "severity" }
                        th scope="col" { "about" } th scope="col" { "repair" } th scope="col" { "published" }
                    } }
                    tbody { @for entry in &catalogue {
                        tr data-alarm=(entry.id.as_str()) {
                            td { code { (entry.code) } }
                            th scope="row" { (entry.title) br; code.dim { (entry.id.as_str()) } }
                            td { (severity(entry.severity)) }
                            td { (word(&entry.entity_type)) }
                            td { (entry.repair) }
                            td {
                                @if let Some(s) = &entry.suppressed {
                                    (badge("warn", "suppressed")) " by " (s.by) " " (ago(s.at, now))
                                    @if operator {
                                        (action_form(&format!("/api/v1/alarms/catalogue/{}/unsuppress", entry.id.as_str()),
                                            "Publish", &format!("unsuppress-{}", entry.id.as_str()),
                                            &format!("Publish {} on MQTT again?", entry.title)))
                                    }
                                } @else {
                                    "yes"
                                    @if operator {
                                        (action_form(&format!("/api/v1/alarms/catalogue/{}/suppress", entry.id.as_str()),
                                            "Suppress", &format!("suppress-{}", entry.id.as_str()),
                                            &format!("Suppress {}? It is still raised and listed here, but consumers on MQTT no longer see it.", entry.title)))
                                    }
                                }
                            }
                        }
                    } }
                }
            }
        }
    };
    Ok(page(&viewer, "Alarms", Nav::Alarms, "alarm", body))
}

fn severity(s: Severity) -> Markup {
    let kind = match s {
        Severity::Critical | Severity::Major => "bad",
        Severity::Minor => "warn",
        Severity::Warning => "idle",
    };
    badge(kind, s.as_str())
}

fn row(alarm: &Alarm, now: verge_shared::Timestamp, operator: bool) -> Markup {
    html! {
        tr data-instance=(alarm.instance) {
            td { (severity(alarm.severity)) }
            th scope="row" { (alarm.title) br; code.dim { (alarm.code) } }
            td { code { (alarm.entity_instance) } }
            td { (text_or_dash(alarm.region.as_ref().map(|r| r.as_str()))) }
            td { (ago(alarm.raised_at, now)) }
            td { (alarm.reason) }
            td {
                @if let Some(ack) = &alarm.acknowledged {
                    (ack.by) " " (ago(ack.at, now))
                } @else if operator {
                    (action_form(&format!("/api/v1/alarms/{}/acknowledge", alarm.instance), "Acknowledge",
                        &format!("ack-{}", alarm.instance),
                        &format!("Acknowledge {} on {}? It stays raised until its condition clears.", alarm.title, alarm.entity_instance)))
                } @else {
                    span.dim { "no" }
                }
            }
        }
    }
}
