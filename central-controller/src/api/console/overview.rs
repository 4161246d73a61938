//! The overview: nodes by state and region, services by health, the
//! regions with the measured latency between them, and recent changes.

use std::collections::BTreeMap;
use std::f64::consts::PI;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use serde_json::Value;

use super::layout::{Nav, Viewer, badge, empty, page, word};
use super::problem::PageError;
use crate::api::state::ApiState;
use crate::app::{AlarmFilter, NODE_STATES, Recorded, ReplicaState, ServiceView};
use verge_shared::alarms::Severity;

/// How many recent changes the overview lists.
const RECENT: usize = 15;
/// Active alarms counted (more than a page of the API's would be a storm).
const MAX_ALARMS: usize = 500;

pub(super) async fn show(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Response, PageError> {
    let app = &state.app;
    let counts = app.node_counts();
    let services = app.services().map_err(|e| PageError::new(&viewer, e))?;
    let regions = app.regions();
    let latency = app.latency_view();
    let recent = app.recent_changes(viewer.principal.role, RECENT);

    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for ((_, state), n) in &counts {
        *by_state.entry(state).or_default() += n;
    }
    let total: usize = by_state.values().sum();
    let (healthy, degraded, unplaced) = service_health(&services);
    let alarms = app.alarms(&AlarmFilter::default(), MAX_ALARMS).alarms;
    let raised = |severity: Severity| alarms.iter().filter(|a| a.severity == severity).count();

    let body = html! {
        section.cards #summary data-live aria-label="Summary" {
            div.card {
                h2 { "Nodes" }
                p.big { (total) }
                ul.counts {
                    @for state in NODE_STATES {
                        @let n = by_state.get(state).copied().unwrap_or(0);
                        li { a href={ "/nodes?state=" (state) } { (state_badge(state)) " " strong { (n) } } }
                    }
                }
            }
            div.card {
                h2 { "Services" }
                p.big { (services.len()) }
                ul.counts {
                    li { (badge("good", "healthy")) " " strong #services-healthy { (healthy) } }
                    li { (badge("warn", "degraded")) " " strong #services-degraded { (degraded) } }
                    li { (badge("bad", "with unplaced replicas")) " " strong #services-unplaced { (unplaced) } }
                }
            }
            div.card {
                h2 { a href="/alarms" { "Alarms" } }
                p.big #alarms-active { (alarms.len()) }
                ul.counts {
                    li { (badge("bad", "critical")) " " strong #alarms-critical { (raised(Severity::Critical)) } }
                    li { (badge("bad", "major")) " " strong #alarms-major { (raised(Severity::Major)) } }
                    li { (badge("warn", "minor")) " " strong #alarms-minor { (raised(Severity::Minor)) } }
                    li { (badge("idle", "warning")) " " strong #alarms-warning { (raised(Severity::Warning)) } }
                }
            }
        }
        section #regions data-live aria-labelledby="regions-title" {
            h2 #regions-title { "Regions" }
            @if regions.is_empty() {
                (empty("No regions yet: nodes name theirs when they enroll."))
            } @else {
                (region_map(&regions.iter().map(|r| (r.name.to_string(), r.nodes, r.healthy_nodes)).collect::<Vec<_>>(), &latency, latency.window_secs))
                div.scroll {
                    table {
                        thead { tr { th scope="col" { "region" } th scope="col" { "zone" } th scope="col" { "nodes" } @for state in NODE_STATES { th scope="col" { (state) } } } }
                        tbody {
                            @for region in &regions {
                                tr {
                                    th scope="row" { a href={ "/nodes?region=" (region.name) } { (region.name) } }
                                    td { (region.zone.as_deref().unwrap_or("–")) }
                                    td.num { (region.nodes) }
                                    @for state in NODE_STATES {
                                        td.num { (counts.get(&(region.name.to_string(), state)).copied().unwrap_or(0)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section #recent data-live aria-labelledby="recent-title" {
            h2 #recent-title { "Recent changes" }
            @if recent.is_empty() {
                (empty("Nothing has changed since the controller started."))
            } @else {
                ol.events { @for change in &recent { (event(change)) } }
            }
        }
    };
    Ok(page(
        &viewer,
        "Overview",
        Nav::Overview,
        "node,service,replica,release,alarm",
        body,
    ))
}

/// Services whose replicas all run; with some not running; with a replica
/// the scheduler could not place.
fn service_health(services: &[ServiceView]) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    for service in services {
        if service
            .replicas
            .iter()
            .any(|r| r.state == ReplicaState::Unplaced)
        {
            counts.2 += 1;
        } else if service
            .replicas
            .iter()
            .all(|r| r.state == ReplicaState::Running)
        {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    counts
}

/// A node state as a badge.
pub(super) fn state_badge(state: &str) -> Markup {
    let kind = match state {
        "healthy" | "running" | "online" => "good",
        "offline" | "revoked" | "failed" | "crash_loop" | "unplaced" | "unhealthy" => "bad",
        "cordoned" | "drained" | "pending" | "starting" => "warn",
        _ => "idle",
    };
    badge(kind, state)
}

/// The regions on a circle, a line between two when a latency figure links
/// them, labelled with its median; static hints dashed, stale figures
/// marked.
fn region_map(
    regions: &[(String, usize, usize)],
    latency: &crate::app::LatencyView,
    window_secs: u64,
) -> Markup {
    let (w, h) = (640.0, 340.0);
    let (cx, cy, r) = (
        w / 2.0,
        h / 2.0,
        if regions.len() > 1 { 120.0 } else { 0.0 },
    );
    let n = regions.len().max(1) as f64;
    let at = |i: usize| {
        let angle = -PI / 2.0 + 2.0 * PI * i as f64 / n;
        (cx + r * angle.cos(), cy + r * angle.sin())
    };
    let index: BTreeMap<&str, usize> = regions
        .iter()
        .enumerate()
        .map(|(i, (name, ..))| (name.as_str(), i))
        .collect();
    let mut links = Vec::new();
    for (from, row) in &latency.regions {
        for (to, figure) in row {
            let (Some(&a), Some(&b)) = (index.get(from.as_str()), index.get(to.as_str())) else {
                continue;
            };
            // One line per pair: the figure from the region listed first.
            if a < b
                || (a != b
                    && !latency
                        .regions
                        .get(to)
                        .is_some_and(|r| r.contains_key(from)))
            {
                let stale = figure.age_secs.is_some_and(|age| age > window_secs);
                let kind = if word(&figure.source) == "static" {
                    "static"
                } else if stale {
                    "stale"
                } else {
                    "measured"
                };
                links.push((a, b, figure.p50_ms, kind));
            }
        }
    }
    html! {
        figure.map {
            svg viewBox={ "0 0 " (w) " " (h) } role="img" aria-labelledby="map-title map-desc" {
                title #map-title { "Regions and the latency between them" }
                desc #map-desc { (regions.len()) " regions; lines are median round-trip times, dashed where only a static hint is known." }
                @for (a, b, ms, kind) in &links {
                    @let (x1, y1) = at(*a);
                    @let (x2, y2) = at(*b);
                    line class={ "link " (kind) } x1=(x1) y1=(y1) x2=(x2) y2=(y2) {}
                    text.latency x=((x1 + x2) / 2.0) y=((y1 + y2) / 2.0 - 6.0) text-anchor="middle" {
                        (format!("{ms:.1} ms")) @if *kind != "measured" { " (" (kind) ")" }
                    }
                }
                @for (i, (name, nodes, healthy)) in regions.iter().enumerate() {
                    @let (x, y) = at(i);
                    @let class = if *healthy == *nodes { "region ok" } else if *healthy == 0 { "region down" } else { "region part" };
                    circle class=(class) cx=(x) cy=(y) r="26" {}
                    text.region-name x=(x) y=(y + 44.0) text-anchor="middle" { (name) }
                    text.region-count x=(x) y=(y + 5.0) text-anchor="middle" { (healthy) "/" (nodes) }
                }
            }
            figcaption { "Each circle shows healthy/all nodes. Solid lines: measured median; dashed: static hint; dotted: older than the " (window_secs) " s window." }
        }
    }
}

/// One change from the watch buffer, in a line.
fn event(change: &Recorded) -> Markup {
    let data: Value = serde_json::from_str(&change.data).unwrap_or_default();
    let action = data["action"].as_str().unwrap_or("");
    let at = data["at"].as_str().unwrap_or("");
    let object = &data["object"];
    let kind = change.kind.as_str();
    let (what, href) = match kind {
        "node" => {
            let id = object["id"].as_str().unwrap_or("");
            (format!("node {id}"), Some(format!("/nodes/{id}")))
        }
        "service" => {
            let name = object["name"].as_str().unwrap_or("");
            (format!("service {name}"), Some(format!("/services/{name}")))
        }
        "replica" => {
            let service = object["service"].as_str().unwrap_or("");
            let index = object["index"].as_u64().unwrap_or(0);
            let node = object["node"]
                .as_str()
                .map(|n| format!(" on {n}"))
                .unwrap_or_default();
            (
                format!("replica {service}#{index}{node}"),
                Some(format!("/services/{service}")),
            )
        }
        "release" => (
            format!(
                "release {} {}",
                object["service"].as_str().unwrap_or(""),
                object["version"].as_str().unwrap_or("")
            ),
            Some("/releases".to_owned()),
        ),
        "token" => (
            format!("bootstrap token {}", object["id"].as_str().unwrap_or("")),
            Some("/tokens".to_owned()),
        ),
        "api_token" => (
            format!("API token {}", object["name"].as_str().unwrap_or("")),
            None,
        ),
        _ => (
            format!("{kind} {}", object["name"].as_str().unwrap_or("")),
            None,
        ),
    };
    html! {
        li {
            time datetime=(at) { (at.get(11..19).unwrap_or(at)) }
            " "
            @match href { Some(href) => a href=(href) { (what) }, None => span { (what) } }
            " " span.action { (action.replace('_', " ")) }
            @if let Some(reason) = object["reason"].as_str() { " — " span.dim { (reason) } }
        }
    }
}
