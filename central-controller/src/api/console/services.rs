//! Services: the list (desired vs running per region, latency target,
//! unplaced replicas and why), one service's page (each replica's node,
//! state and measured latency; edit, roll back, delete) and the form that
//! deploys a new one. Every change is a `PUT` or `DELETE` on the API.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::Response;
use maud::{Markup, html};

use super::layout::{Nav, Viewer, ago, badge, empty, page, text_or_dash, word};
use super::overview::state_badge;
use super::problem::PageError;
use crate::api::state::ApiState;
use crate::app::{App, LatencySpec, ReleaseRecord, ReplicaState, Role, ServiceSpec, ServiceView};

pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Response, PageError> {
    let services = state
        .app
        .services()
        .map_err(|e| PageError::new(&viewer, e))?;
    let body = html! {
        @if viewer.may(Role::Operator) {
            p { a.button href="/deploy" #deploy-link { "Deploy a service" } }
        }
        section #service-table data-live aria-label="Services" {
            @if services.is_empty() {
                (empty("No services yet."))
            } @else {
                div.scroll { table #services {
                    thead { tr {
                        th scope="col" { "service" } th scope="col" { "version" } th scope="col" { "running / desired" }
                        th scope="col" { "by region" } th scope="col" { "latency target" } th scope="col" { "not placed" }
                    } }
                    tbody { @for service in &services { (service_row(service)) } }
                } }
            }
        }
    };
    Ok(page(
        &viewer,
        "Services",
        Nav::Services,
        "service,replica,node",
        body,
    ))
}

fn running(service: &ServiceView) -> usize {
    service
        .replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Running)
        .count()
}

fn service_row(service: &ServiceView) -> Markup {
    let mut regions: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for replica in &service.replicas {
        if let Some(region) = &replica.region {
            let entry = regions.entry(region.to_string()).or_default();
            entry.1 += 1;
            if replica.state == ReplicaState::Running {
                entry.0 += 1;
            }
        }
    }
    let unplaced: Vec<&str> = service
        .replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Unplaced)
        .filter_map(|r| r.reason.as_deref())
        .collect();
    let up = running(service);
    html! {
        tr data-service=(service.name) {
            th scope="row" { a href={ "/services/" (service.name) } { (service.name) } }
            td { (service.version) }
            td {
                (up) " / " (service.replicas.len()) " "
                @if up == service.replicas.len() { (badge("good", "healthy")) }
                @else if !unplaced.is_empty() { (badge("bad", "unplaced")) }
                @else { (badge("warn", "degraded")) }
            }
            td { @for (region, (up, all)) in &regions { span.nowrap { (region) " " (up) "/" (all) } " " } }
            td { (latency_target(&service.spec)) }
            td {
                @if unplaced.is_empty() { span.dim { "–" } }
                @else { (unplaced.len()) ": " span.dim { (unplaced[0]) } }
            }
        }
    }
}

fn latency_target(spec: &ServiceSpec) -> Markup {
    match &spec.placement.latency {
        Some(l) => {
            let to: Vec<&str> = l.to.iter().map(|r| r.as_str()).collect();
            html! { "≤ " (l.max_ms) " ms to " (to.join(", ")) " (p" (l.percentile) ")" }
        }
        None => html! { span.dim { "none" } },
    }
}

pub(super) async fn detail(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    let app = &state.app;
    let service = app.service(&name).map_err(|e| PageError::new(&viewer, e))?;
    let releases: Vec<ReleaseRecord> = app
        .releases()
        .map_err(|e| PageError::new(&viewer, e))?
        .into_iter()
        .filter(|r| r.release.service == service.name)
        .collect();
    let now = app.now();
    let spec = &service.spec;
    let target = spec.placement.latency.as_ref();
    let api = format!("/api/v1/services/{}", service.name);
    let current = releases
        .iter()
        .find(|r| r.digest == spec.release)
        .map(|r| &r.release.version);
    let body = html! {
        section #service-facts data-live aria-label="Service" {
            dl.facts {
                dt { "Version" } dd #service-version { (service.version) }
                dt { "Release" } dd { code title=(spec.release) { (short(&spec.release.to_string())) } }
                dt { "Replicas running / desired" } dd #service-running { (running(&service)) " / " (service.replicas.len()) }
                dt { "Regions allowed" } dd { @if spec.regions.is_empty() { "any" } @else { (spec.regions.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")) } }
                dt { "Latency target" } dd { (latency_target(spec)) }
                dt { "Spread, priority" } dd { (word(&spec.placement.spread)) ", " (spec.placement.priority) }
                dt { "Revision" } dd { (service.revision) ", updated " (ago(service.updated_at, now)) }
            }
        }
        section #service-replicas data-live aria-labelledby="replicas-title" {
            h2 #replicas-title { "Replicas" }
            div.scroll { table #replicas {
                thead { tr {
                    th scope="col" { "#" } th scope="col" { "node" } th scope="col" { "region" } th scope="col" { "state" }
                    th scope="col" { "health" } th scope="col" { "restarts" } th scope="col" { "ports" }
                    @if target.is_some() { th scope="col" { "measured latency" } }
                    th scope="col" { "why" }
                } }
                tbody { @for r in &service.replicas {
                    tr data-replica=(r.index) {
                        th scope="row" { (r.index) }
                        td { @match &r.node { Some(n) => a href={ "/nodes/" (n) } { (n) }, None => span.dim { "–" } } }
                        td { (text_or_dash(r.region.as_ref().map(|r| r.as_str()))) }
                        td { (state_badge(&word(&r.state))) }
                        td { (text_or_dash(r.health.as_ref().map(word).as_deref())) }
                        td.num { (r.restarts) }
                        td { @for (name, port) in &r.ports { code { (name) ":" (port) } " " } }
                        @if let Some(t) = target {
                            td { (measured(app, r.node.as_ref(), t)) }
                        }
                        td { (text_or_dash(r.reason.as_deref().or(r.message.as_deref()))) }
                    }
                } }
            } }
        }
        @if viewer.may(Role::Operator) {
            section aria-labelledby="edit-title" {
                h2 #edit-title { "Change" }
                (spec_form(&api, Some(spec), &releases, "reload"))
            }
            section aria-labelledby="rollback-title" {
                h2 #rollback-title { "Releases of " (service.name) }
                div.scroll { table #service-releases {
                    thead { tr { th scope="col" { "version" } th scope="col" { "release" } th scope="col" { "uploaded" } th scope="col" { "" } } }
                    tbody { @for r in &releases {
                        tr {
                            td { (r.release.version) }
                            td { code title=(r.digest) { (short(&r.digest.to_string())) } }
                            td { (ago(r.created_at, now)) }
                            td {
                                @if r.digest == spec.release { (badge("good", "current")) }
                                @else if current.is_some_and(|v| &r.release.version < v) {
                                    (rollback_form(&api, spec, r))
                                }
                            }
                        }
                    } }
                } }
            }
            section.actions aria-label="Delete" {
                form.inline data-api=(api) data-method="DELETE" data-done="goto:/services"
                    data-confirm={ "Delete " (service.name) "? Every replica is stopped on its node and the service is removed; its releases stay uploaded." } {
                    button.danger type="submit" #delete-service { "Delete service" }
                    span.form-error role="alert" {}
                }
            }
        }
    };
    Ok(page(
        &viewer,
        &format!("Service {}", service.name),
        Nav::Services,
        "service,replica,node",
        body,
    ))
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// The replica's node's latency to the target's regions, at its percentile,
/// told against the target.
fn measured(app: &App, node: Option<&verge_shared::AgentId>, target: &LatencySpec) -> Markup {
    let Some(view) = node.and_then(|n| app.node(n.as_str()).ok()) else {
        return html! { span.dim { "–" } };
    };
    html! {
        @for region in &target.to {
            @match view.latency.get(region) {
                Some(e) => {
                    @let ms = match target.percentile { 50 => e.p50_ms, 90 => e.p90_ms, _ => e.p99_ms };
                    @let within = ms <= f64::from(target.max_ms);
                    span.nowrap { (region) " " (format!("{ms:.1} ms")) " " (badge(if within { "good" } else { "bad" }, if within { "within" } else { "over" })) @if word(&e.source) == "static" { " (static)" } }
                    " "
                }
                None => { span.nowrap { (region) " " span.dim { "no figure" } } " " }
            }
        }
    }
}

/// Fields of a spec form, prefilled from `spec`.
fn spec_form(
    api: &str,
    spec: Option<&ServiceSpec>,
    releases: &[ReleaseRecord],
    done: &str,
) -> Markup {
    let latency = spec.and_then(|s| s.placement.latency.as_ref());
    let joined =
        |v: &[verge_shared::RegionId]| v.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ");
    let config = spec
        .map(|s| {
            s.config
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let per_region = spec.and_then(|s| s.placement.replicas_per_region);
    let method = "PUT";
    html! {
        form.edit #service-form data-api=(api) data-method=(method) data-done=(done) novalidate {
            @if spec.is_none() {
                (row("name", "Name", html! {
                    input #f-name name="name" data-in="url" required autocomplete="off" placeholder="hello";
                }, "Lower-case letters, digits and '-'."))
            }
            (row("release", "Release", html! {
                select #f-release name="release" required {
                    @if spec.is_none() { option value="" { "choose an uploaded release" } }
                    @for r in releases {
                        option value=(r.digest) selected[spec.is_some_and(|s| s.release == r.digest)] {
                            (r.release.service) " " (r.release.version) " (" (short(&r.digest.to_string())) ")"
                        }
                    }
                }
            }, "Releases are signed with verge-admin release sign and uploaded with POST /api/v1/releases."))
            (row("replicas", "Replicas", html! {
                input #f-replicas name="replicas" data-type="number" inputmode="numeric"
                    value=(spec.filter(|_| per_region.is_none()).map(|s| s.replicas.to_string()).unwrap_or_default());
            }, "How many copies run; leave empty when giving replicas per region."))
            (row("regions", "Regions allowed", html! {
                input #f-regions name="regions" data-type="list" value=(spec.map(|s| joined(&s.regions)).unwrap_or_default()) placeholder="any";
            }, "Comma separated; empty for any region."))
            (row("placement.latency.to", "Latency target: to regions", html! {
                input #f-latency-to name="placement.latency.to" data-type="list" value=(latency.map(|l| joined(&l.to)).unwrap_or_default());
            }, "The regions whose users the replicas must be near."))
            (row("placement.latency.max_ms", "Latency target: at most (ms)", html! {
                input #f-latency-max name="placement.latency.max_ms" data-type="number" inputmode="numeric" value=(latency.map(|l| l.max_ms.to_string()).unwrap_or_default());
            }, ""))
            (row("placement.latency.percentile", "Latency target: percentile", html! {
                select #f-latency-pct name="placement.latency.percentile" data-type="number" {
                    option value="" { "default (99)" }
                    @for p in [50u8, 90, 99] { option value=(p) selected[latency.is_some_and(|l| l.percentile == p)] { "p" (p) } }
                }
            }, ""))
            (row("placement.replicas_per_region", "Replicas per target region", html! {
                input #f-per-region name="placement.replicas_per_region" data-type="number" inputmode="numeric" value=(per_region.map(|n| n.to_string()).unwrap_or_default());
            }, "Instead of a replica count: this many in each latency-target region."))
            (row("placement.spread", "Spread", html! {
                select #f-spread name="placement.spread" {
                    @for s in ["zone", "node"] { option value=(s) selected[spec.is_some_and(|x| word(&x.placement.spread) == s)] { (s) } }
                }
            }, ""))
            (row("placement.priority", "Priority", html! {
                input #f-priority name="placement.priority" data-type="number" inputmode="numeric" value=(spec.map(|s| s.placement.priority.to_string()).unwrap_or_default());
            }, "Higher places first when capacity is short."))
            (row("config", "Settings", html! {
                textarea #f-config name="config" data-type="map" rows="3" placeholder="KEY=value" { (config) }
            }, "One KEY=value per line; the workload gets VERGE_CONFIG_<KEY>."))
            (row("rollback", "Allow an older release", html! {
                input #f-rollback type="checkbox" name="rollback" data-type="bool";
            }, "Needed to go back to a release older than the one running (a rollback)."))
            div.actions {
                button type="submit" #save-service { @if spec.is_some() { "Save" } @else { "Deploy" } }
                span.form-error role="alert" {}
                span.form-ok role="status" {}
            }
        }
    }
}

fn row(field: &str, label: &str, control: Markup, hint: &str) -> Markup {
    let id = format!(
        "f-{}",
        match field {
            "placement.latency.to" => "latency-to",
            "placement.latency.max_ms" => "latency-max",
            "placement.latency.percentile" => "latency-pct",
            "placement.replicas_per_region" => "per-region",
            "placement.spread" => "spread",
            "placement.priority" => "priority",
            other => other,
        }
    );
    html! {
        div.row {
            label for=(id) { (label) }
            (control)
            @if !hint.is_empty() { span.hint { (hint) } }
            span.form-error data-error-for=(field) role="alert" {}
        }
    }
}

/// One click back to an older release: the current spec with that release
/// and the rollback flag, after a confirmation.
fn rollback_form(api: &str, spec: &ServiceSpec, to: &ReleaseRecord) -> Markup {
    let mut fields: Vec<(String, &str, String)> = vec![
        ("release".into(), "", to.digest.to_string()),
        ("rollback".into(), "json", "true".into()),
    ];
    if spec.placement.replicas_per_region.is_none() {
        fields.push(("replicas".into(), "number", spec.replicas.to_string()));
    }
    let spec_json = serde_json::to_value(spec).unwrap_or_default();
    for key in ["regions", "config", "placement"] {
        if let Some(v) = spec_json.get(key) {
            fields.push((key.to_owned(), "json", v.to_string()));
        }
    }
    html! {
        form.inline data-api=(api) data-method="PUT" data-done="reload"
            data-confirm={ "Roll back to " (to.release.service) " " (to.release.version) "? Every replica switches to it as a new, signed desired state." } {
            @for (name, kind, value) in &fields {
                input type="hidden" name=(name) data-type=(kind) value=(value);
            }
            button type="submit" data-rollback=(to.release.version) { "Roll back to " (to.release.version) }
            span.form-error role="alert" {}
        }
    }
}

pub(super) async fn deploy(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Response, PageError> {
    let releases = state
        .app
        .releases()
        .map_err(|e| PageError::new(&viewer, e))?;
    let body = html! {
        @if releases.is_empty() {
            div.notice.error { "No release has been uploaded yet: sign one with verge-admin release sign and upload it (POST /api/v1/releases) first." }
        }
        (spec_form("/api/v1/services/{name}", None, &releases, "goto:/services/{name}"))
    };
    Ok(page(&viewer, "Deploy a service", Nav::Services, "", body))
}
