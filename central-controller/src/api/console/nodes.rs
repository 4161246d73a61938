//! The node list (server-side pages, filters, search by id) and one node's
//! page, with cordon, drain, uncordon and revoke, and its agent's recent
//! telemetry charted.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::{Markup, html};

use super::chart::{Series, line_chart};
use super::layout::{
    Nav, Viewer, action_form, ago, badge, count, empty, filter_field, page, query_link,
    text_or_dash, word,
};
use super::overview::state_badge;
use super::problem::PageError;
use super::releases::size;
use crate::api::nodes::{cursor_for, parse};
use crate::api::state::ApiState;
use crate::app::{NodeState, NodeView, Role, TelemetryView};

/// Nodes per page unless the query says otherwise.
const PAGE: &str = "50";

/// The one state a node is shown in, the most pressing first.
pub(super) fn node_state(node: &NodeView) -> &'static str {
    match (
        node.revoked,
        node.online,
        node.cordon.as_ref().map(word).as_deref(),
    ) {
        (true, ..) => "revoked",
        (_, false, _) => "offline",
        (_, _, Some("drained")) => "drained",
        (_, _, Some("cordoned")) => "cordoned",
        _ if node.healthy => "healthy",
        _ => "unhealthy",
    }
}

pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Query(mut query): Query<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    // An empty field of the filter form means "any".
    query.retain(|_, v| !v.trim().is_empty());
    query
        .entry("limit".to_owned())
        .or_insert_with(|| PAGE.to_owned());
    let (filter, after, limit) = parse(&query).map_err(|e| PageError::new(&viewer, e))?;
    let page_of = state
        .app
        .node_page(&filter, after.as_ref(), limit)
        .map_err(|e| PageError::new(&viewer, e))?;
    let regions = state.app.regions();
    let chosen = |name: &str| query.get(name).map(String::as_str).unwrap_or("");
    let mut without_cursor = query.clone();
    without_cursor.remove("cursor");
    let next = page_of.continue_after.as_ref().map(|last| {
        let mut q = without_cursor.clone();
        q.insert("cursor".to_owned(), cursor_for(last));
        query_link("/nodes", &q)
    });
    let body = html! {
        form.filters method="get" action="/nodes" role="search" aria-label="Filter nodes" {
            (filter_field("prefix", "Node id starts with", chosen("prefix"), "edge-"))
            div.field {
                label for="f-region" { "Region" }
                select #f-region name="region" {
                    option value="" { "any" }
                    @for r in &regions {
                        option value=(r.name) selected[chosen("region") == r.name.as_str()] { (r.name) }
                    }
                }
            }
            div.field {
                label for="f-state" { "State" }
                select #f-state name="state" {
                    option value="" { "any" }
                    @for s in NodeState::NAMES.split(", ") {
                        option value=(s) selected[chosen("state") == s] { (s) }
                    }
                }
            }
            (filter_field("label", "Label", chosen("label"), "key=value"))
            div.field.buttons {
                button type="submit" { "Filter" }
                a href="/nodes" { "Clear" }
            }
        }
        section #node-table data-live aria-label="Nodes" {
            p.dim #node-count {
                (page_of.nodes.len()) " nodes on this page"
                @if query.contains_key("cursor") { " (not the first page)" }
            }
            @if page_of.nodes.is_empty() {
                (empty("No node matches."))
            } @else {
                div.scroll {
                    table #nodes {
                        thead { tr {
                            th scope="col" { "node" } th scope="col" { "region" } th scope="col" { "state" }
                            th scope="col" { "last seen" } th scope="col" { "version" } th scope="col" { "generation applied / desired" }
                            th scope="col" { "workloads" } th scope="col" { "limits" } th scope="col" { "problems" }
                        } }
                        tbody {
                            @for node in &page_of.nodes { (row(node, state.app.now())) }
                        }
                    }
                }
            }
            nav.pager aria-label="Pages" {
                @if query.contains_key("cursor") {
                    a href=(query_link("/nodes", &without_cursor)) { "← First page" }
                }
                @if let Some(next) = &next {
                    a href=(next) rel="next" #next-page { "Next page →" }
                }
            }
        }
    };
    Ok(page(&viewer, "Nodes", Nav::Nodes, "node", body))
}

fn row(node: &NodeView, now: verge_shared::Timestamp) -> Markup {
    let running = node
        .workloads
        .iter()
        .filter(|w| word(&w.state) == "running")
        .count();
    html! {
        tr data-node=(node.id) {
            th scope="row" { a href={ "/nodes/" (node.id) } { (node.id) } }
            td { (node.region) }
            td { (state_badge(node_state(node))) (unconfirmed(node)) }
            td { @match node.last_seen { Some(at) => (ago(at, now)), None => span.dim { "never" } } }
            td { (node.version) }
            td { (generations(node)) }
            td { (running) " running of " (node.workloads.len()) }
            td { (text_or_dash(node.limits.as_ref().map(word).as_deref())) }
            td {
                @if let Some(r) = &node.last_rejection { (badge("bad", &format!("refused: {}", word(&r.reason)))) " " }
                @if let Some(p) = &node.storage_problem { (badge("bad", &format!("storage: {}", word(&p.reason)))) }
            }
        }
    }
}

/// A badge on a node not heard from since the controller started: what the
/// page shows of it is what was stored before.
fn unconfirmed(node: &NodeView) -> Markup {
    html! {
        @if node.unconfirmed {
            " " span title="Not heard from since the controller started: shown as stored, not yet confirmed." { (badge("warn", "unconfirmed")) }
        }
    }
}

fn generations(node: &NodeView) -> Markup {
    let show = |g: Option<verge_shared::Generation>| g.map_or("–".to_owned(), |g| g.to_string());
    let behind = node.applied_generation < node.desired_generation;
    html! {
        (show(node.applied_generation)) " / " (show(node.desired_generation))
        @if behind { " " (badge("warn", "behind")) }
    }
}

pub(super) async fn detail(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let node = state
        .app
        .node(&id)
        .map_err(|e| PageError::new(&viewer, e))?;
    let telemetry = state
        .app
        .node_telemetry(&id)
        .map_err(|e| PageError::new(&viewer, e))?;
    let history = state.app.settings().nodes.telemetry_history;
    let now = state.app.now();
    let api = format!("/api/v1/nodes/{}", node.id);
    let body = html! {
        @if viewer.may(Role::Operator) {
            section.actions aria-label="Actions" {
                @if node.cordon.is_none() {
                    (action_form(&format!("{api}/cordon"), "Cordon", "cordon",
                        &format!("Cordon {}? No new replicas will be placed on it; what it runs keeps running.", node.id)))
                    (action_form(&format!("{api}/drain"), "Drain", "drain",
                        &format!("Drain {}? Every replica on it is moved to other nodes, and nothing new is placed on it.", node.id)))
                } @else {
                    (action_form(&format!("{api}/uncordon"), "Uncordon", "uncordon",
                        &format!("Uncordon {}? The scheduler may place replicas on it again.", node.id)))
                }
                @if viewer.may(Role::Admin) && !node.revoked {
                    (action_form(&format!("{api}/revoke"), "Revoke", "revoke",
                        &format!("Revoke {}? Its certificate is refused from now on, its connections are closed and its replicas move elsewhere. This cannot be undone; the node must enroll again with a new token.", node.id)))
                }
            }
        }
        section #node-facts data-live aria-label="Node" {
            dl.facts {
                dt { "State" } dd #node-state { (state_badge(node_state(&node))) (unconfirmed(&node)) }
                dt { "Region" } dd { a href={ "/nodes?region=" (node.region) } { (node.region) } }
                dt { "Last seen" } dd { @match node.last_seen { Some(at) => (ago(at, now)), None => "never" } }
                dt { "Generation applied / desired" } dd { (generations(&node)) }
                dt { "Agent version" } dd { (node.version) }
                dt { "Capacity" } dd { (node.capacity.cpu_millis) " millicores, " (node.capacity.memory_mb) " MiB" }
                dt { "Limits" } dd { (text_or_dash(node.limits.as_ref().map(word).as_deref())) }
                dt { "Labels" } dd {
                    @if node.labels.is_empty() { span.dim { "none" } }
                    @for (k, v) in &node.labels { code { (k) "=" (v) } " " }
                }
                dt { "Probe address" } dd { (text_or_dash(node.probe_addr.map(|a| a.to_string()).as_deref())) }
                dt { "Node key" } dd { code { (node.key_id) } }
            }
            @if let Some(r) = &node.last_rejection {
                div.notice.error #last-rejection {
                    h2 { "Last refused desired state" }
                    p { strong { (word(&r.reason)) } @if let Some(g) = r.generation { " (generation " (g) ")" } ", " (ago(r.at, now)) }
                    p { (r.detail) }
                }
            }
            @if let Some(p) = &node.storage_problem {
                div.notice.error #storage-problem {
                    h2 { "Storage problem" }
                    p { strong { (word(&p.reason)) } " since " (ago(p.since, now)) }
                    p { (p.detail) }
                }
            }
        }
        (telemetry_section(&telemetry, history, now))
        section #node-workloads data-live aria-labelledby="workloads-title" {
            h2 #workloads-title { "Workloads" }
            @if node.workloads.is_empty() {
                (empty("The node reports no workloads."))
            } @else {
                div.scroll { table #workloads {
                    thead { tr {
                        th scope="col" { "service" } th scope="col" { "replica" } th scope="col" { "state" }
                        th scope="col" { "health" } th scope="col" { "restarts" } th scope="col" { "ports" }
                        th scope="col" { "last exit" } th scope="col" { "log" }
                    } }
                    tbody { @for w in &node.workloads {
                        tr {
                            th scope="row" { a href={ "/services/" (w.service) } { (w.service) } }
                            td.num { (w.replica) }
                            td { (state_badge(&word(&w.state))) @if let Some(m) = &w.message { br; span.dim { (m) } } }
                            td { (text_or_dash(w.health.as_ref().map(word).as_deref())) }
                            td.num { (w.restarts) }
                            td { @for (name, port) in &w.ports { code { (name) ":" (port) } " " } }
                            td { (text_or_dash(w.last_exit.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default()).as_deref())) }
                            td {
                                @for stream in ["stdout", "stderr"] {
                                    button type="button" data-log={ (api) "/workloads/" (w.service) "/logs?stream=" (stream) "&lines=100" }
                                        data-target="#log-output" { (stream) }
                                    " "
                                }
                            }
                        }
                    } }
                } }
            }
        }
        section aria-labelledby="log-title" {
            h2 #log-title { "Log tail" }
            pre #log-output.log aria-live="polite" tabindex="0" { span.dim { "Choose a workload's stdout or stderr above." } }
        }
        section #node-latency data-live aria-labelledby="latency-title" {
            h2 #latency-title { "Latency to each region" }
            @if node.latency.is_empty() {
                (empty("No figures: the node has not reported any measurements, and no static hint applies."))
            } @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "region" } th scope="col" { "p50" } th scope="col" { "p90" } th scope="col" { "p99" } th scope="col" { "source" } th scope="col" { "age" } th scope="col" { "samples" } } }
                    tbody { @for (region, e) in &node.latency {
                        tr {
                            th scope="row" { (region) }
                            td.num { (format!("{:.1} ms", e.p50_ms)) }
                            td.num { (format!("{:.1} ms", e.p90_ms)) }
                            td.num { (format!("{:.1} ms", e.p99_ms)) }
                            td { (word(&e.source)) }
                            td { (e.age_secs.map_or("–".to_owned(), |a| format!("{a} s"))) }
                            td.num { (e.samples) }
                        }
                    } }
                } }
            }
        }
    };
    Ok(page(
        &viewer,
        &format!("Node {}", node.id),
        Nav::Nodes,
        "node",
        body,
    ))
}

/// The host's CPU use and available memory and the agent's own memory and
/// CPU use over the samples the controller keeps, and what the newest one
/// said. Telemetry causes no change on the watch stream: the section is
/// read again whenever the node changes, and on load.
fn telemetry_section(
    telemetry: &TelemetryView,
    history: usize,
    now: verge_shared::Timestamp,
) -> Markup {
    let samples = &telemetry.samples;
    let at = |s: &crate::app::TelemetryPoint| s.at.unix_millis();
    let mib = |bytes: u64| Some(bytes as f64 / (1024.0 * 1024.0));
    let series =
        |id, what, unit, value: &dyn Fn(&crate::app::TelemetryPoint) -> Option<f64>| Series {
            id,
            what,
            unit,
            points: samples.iter().map(|s| (at(s), value(s))).collect(),
        };
    let host_cpu = series("telemetry-host-cpu", "Host CPU use", "%", &|s| {
        s.host_cpu_percent
    });
    let memory = series("telemetry-memory", "Host memory available", "MiB", &|s| {
        mib(s.memory_available_bytes)
    });
    let rss = series("telemetry-rss", "Agent memory (RSS)", "MiB", &|s| {
        mib(s.agent_rss_bytes)
    });
    let cpu = series(
        "telemetry-cpu",
        "Agent CPU use (100 = one core)",
        "%",
        &|s| s.agent_cpu_percent,
    );
    html! {
        section #node-telemetry data-live aria-labelledby="telemetry-title" {
            h2 #telemetry-title { "Telemetry" }
            @if history == 0 {
                (empty("The controller keeps no telemetry: [nodes] telemetry_history is 0."))
            } @else if samples.len() < 2 {
                (empty("No telemetry yet: agents send it every telemetry_interval_secs (900 s by default), and a chart needs two samples."))
            } @else {
                div.charts {
                    @if let Some(chart) = line_chart(&host_cpu) { (chart) }
                    @if let Some(chart) = line_chart(&memory) { (chart) }
                    @if let Some(chart) = line_chart(&rss) { (chart) }
                    @match line_chart(&cpu) {
                        Some(chart) => (chart),
                        None => (empty("No agent CPU figure yet: it needs two samples from one run of the agent.")),
                    }
                }
                @if let Some(newest) = samples.last() {
                    p.dim #telemetry-newest {
                        "Newest sample (seq " (newest.seq) ") taken " (ago(newest.at, now)) ": disk "
                        (size(newest.disk_free_bytes)) " free; agent up "
                        (uptime(newest.agent_uptime_seconds)) ", " (count(newest.workloads as usize, "workload", "workloads")) ", outbox "
                        (newest.outbox_queued) " queued and " (newest.outbox_dropped) " dropped, cache "
                        (size(newest.cache_bytes)) "."
                        @if let Some(secs) = telemetry.interval_seconds { " One sample every " (secs) " s." }
                    }
                }
            }
        }
    }
}

/// "42 s", "17 min", "5 h 3 min", "12 d 4 h": how long the agent has run.
fn uptime(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}
