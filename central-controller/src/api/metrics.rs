//! `GET /metrics` (OpenMetrics or the classic Prometheus text format), and
//! the middleware that counts and
//! times every API request by method, route pattern and status.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::route_of;
use super::error::ApiError;
use super::state::ApiState;
use crate::app::RequestLabels;

/// The content type of OpenMetrics text.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The classic Prometheus text format, for clients that do not ask for
/// OpenMetrics (promtool, older scrapers, curl).
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics when the client accepts it, else the classic text format.
/// Prometheus metrics. Without a token only with `[api] public_metrics = true`.
#[utoipa::path(get, path = "/metrics", tag = "monitoring",
    params(("Accept" = Option<String>, Header, description = "`application/openmetrics-text` for OpenMetrics; else the classic text format")),
    responses((status = 200, description = "The metrics", content(
        (String = "text/plain; version=0.0.4; charset=utf-8"),
        (String = "application/openmetrics-text; version=1.0.0; charset=utf-8")))))]
pub(super) async fn scrape(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let text = state.app.metrics_text()?;
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    Ok(match openmetrics {
        true => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        false => ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], classic(&text)).into_response(),
    })
}

/// OpenMetrics text as the classic format: a counter's family is named
/// with its `_total` suffix there, and there is no `# EOF`.
fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Counts the request and the time to its response head.
pub(super) async fn observe(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = match route_of(&request) {
        "" => "other".to_owned(),
        r => r.to_owned(),
    };
    let response = next.run(request).await;
    state.app.observe_request(
        RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        },
        started.elapsed(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::classic;

    #[test]
    fn counters_take_their_total_name_in_the_classic_format() {
        let open = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total 3\n\
                    # HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n# EOF\n";
        assert_eq!(
            classic(open),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total 3\n\
             # HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n"
        );
    }
}
