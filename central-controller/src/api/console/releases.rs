//! Every uploaded release, newest first: what it is, who signed it, its
//! artifacts, and which services run it now.
//!
//! Read-only: releases are signed offline (`verge-admin release sign`) and
//! uploaded through the API.

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use verge_shared::Timestamp;
use verge_shared::trust::{MediaType, ReleaseArtifact};

use super::layout::{Nav, Viewer, ago, count, empty, page};
use super::problem::PageError;
use crate::api::state::ApiState;
use crate::app::{ReleaseRecord, ServiceView};

pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Response, PageError> {
    let mut releases = state
        .app
        .releases()
        .map_err(|e| PageError::new(&viewer, e))?;
    let services = state
        .app
        .services()
        .map_err(|e| PageError::new(&viewer, e))?;
    releases.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.release.service.cmp(&b.release.service))
            .then_with(|| b.release.version.cmp(&a.release.version))
    });
    let now = state.app.now();
    let body = html! {
        p.dim {
            "Releases are signed offline with a publisher key ("
            code { "verge-admin release sign" } ") and uploaded with "
            code { "POST /api/v1/releases" } "; a service runs one when its spec names the release's digest."
        }
        section #release-table data-live aria-label="Releases" {
            p.dim #release-count { (count(releases.len(), "release", "releases")) }
            @if releases.is_empty() {
                (empty("No release has been uploaded yet."))
            } @else {
                div.scroll {
                    table #releases {
                        thead { tr {
                            th scope="col" { "service" } th scope="col" { "version" } th scope="col" { "release digest" }
                            th scope="col" { "publisher" } th scope="col" { "artifacts" }
                            th scope="col" { "uploaded" } th scope="col" { "run by" }
                        } }
                        tbody {
                            @for record in &releases { (row(record, &services, now)) }
                        }
                    }
                }
            }
        }
    };
    Ok(page(
        &viewer,
        "Releases",
        Nav::Releases,
        "release,service",
        body,
    ))
}

fn row(record: &ReleaseRecord, services: &[ServiceView], now: Timestamp) -> Markup {
    let running: Vec<&ServiceView> = services
        .iter()
        .filter(|s| s.spec.release == record.digest)
        .collect();
    html! {
        tr data-release=(record.digest) {
            th scope="row" { (record.release.service) }
            td { (record.release.version) }
            td { (short(&record.digest.to_string())) }
            td {
                (record.publisher)
                @for signature in &record.envelope.signatures {
                    br; span.dim { "key " } (short(&signature.keyid))
                }
            }
            td {
                @for artifact in &record.release.artifacts { (self::artifact(artifact)) br; }
            }
            td { (ago(record.created_at, now)) }
            td {
                @if running.is_empty() {
                    span.dim { "no service" }
                } @else {
                    @for (i, service) in running.iter().enumerate() {
                        @if i > 0 { ", " }
                        a href={ "/services/" (service.name) } { (service.name) }
                    }
                }
            }
        }
    }
}

fn artifact(artifact: &ReleaseArtifact) -> Markup {
    let kind = match artifact.media_type {
        MediaType::Executable => "executable",
        MediaType::TarGzip => "tar.gz archive",
    };
    html! {
        (short(&artifact.sha256.to_string())) " " (kind) ", " (size(artifact.size))
    }
}

/// A long hex name (a digest, a key id) shortened to 12 digits, the whole
/// of it in the title.
pub(super) fn short(hex: &str) -> Markup {
    html! { code title=(hex) { (hex.get(..12).unwrap_or(hex)) } }
}

/// A size in bytes in binary units: "512 B", "2.4 MiB".
pub(super) fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
