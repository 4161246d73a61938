//! `GET /api/v1/nodes`: filters, a page size and an opaque cursor, each
//! checked and named when wrong.
//!
//! Query: `region`, `state` (see [`NodeState`]), `label` (`key=value`),
//! `service`, `prefix` (of the id), `limit` (1 to [`MAX_PAGE`]; without it, every matching node)
//! and `cursor` (the `next_cursor` of the previous page). Nodes come in id
//! order; `next_cursor` is `null` on the last page.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use verge_shared::{AgentId, RegionId, ServiceName};

use super::error::ApiError;
use super::query::{cursor, cursor_param, limit_param, only_known};
use super::state::ApiState;
use crate::app::{MAX_PAGE, NodeFilter, NodeState};

const PARAMS: [&str; 7] = [
    "region", "state", "label", "service", "prefix", "limit", "cursor",
];
/// Marks a cursor as this route's, so that a made-up one is refused.
const CURSOR_PREFIX: &str = "nodes-after:";

pub(super) fn cursor_for(id: &AgentId) -> String {
    cursor(CURSOR_PREFIX, id.as_str())
}

/// The list query, checked; every error names its parameter.
pub(super) fn parse(
    query: &BTreeMap<String, String>,
) -> Result<(NodeFilter, Option<AgentId>, Option<usize>), ApiError> {
    only_known(query, &PARAMS)?;
    let invalid = |field: &str, e: String| ApiError::invalid_field(field, e);
    let filter = NodeFilter {
        region: query
            .get("region")
            .map(|r| RegionId::new(r.as_str()).map_err(|e| invalid("region", e.to_string())))
            .transpose()?,
        state: query
            .get("state")
            .map(|s| s.parse::<NodeState>().map_err(|e| invalid("state", e)))
            .transpose()?,
        label: query
            .get("label")
            .map(|l| {
                l.split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| invalid("label", format!("{l:?} is not key=value")))
            })
            .transpose()?,
        service: query
            .get("service")
            .map(|s| ServiceName::new(s.as_str()).map_err(|e| invalid("service", e.to_string())))
            .transpose()?,
        prefix: query
            .get("prefix")
            .map(|p| match p.len() {
                1..=64 => Ok(p.clone()),
                _ => Err(invalid("prefix", "must be 1 to 64 characters".to_owned())),
            })
            .transpose()?,
    };
    let after = cursor_param(query, CURSOR_PREFIX, |p| AgentId::new(p).ok())?;
    let limit = limit_param(query, MAX_PAGE)?;
    Ok((filter, after, limit))
}

/// `GET /api/v1/nodes`
#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes",
    params(
        ("region" = Option<String>, Query, description = "Nodes in this region"),
        ("state" = Option<String>, Query, description = "`online`, `offline`, `healthy`, `unhealthy`, `cordoned`, `drained`, `revoked` or `unconfirmed` (not heard from since the controller started)"),
        ("label" = Option<String>, Query, description = "`key=value`: nodes carrying this label with this value"),
        ("service" = Option<String>, Query, description = "Nodes reporting a workload of this service"),
        ("prefix" = Option<String>, Query, description = "Nodes whose id starts with this (1 to 64 characters)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many nodes; without it, every matching node"),
        ("cursor" = Option<String>, Query, description = "The previous page's `next_cursor`, as it came")),
    responses(
        (status = 200, description = "One page of nodes in id order", body = super::openapi::NodePage),
        (status = 400, description = "`invalid_field`: an unknown parameter or a bad value (named)", body = super::error::ErrorBody)))]
pub(super) async fn list_nodes(
    State(state): State<ApiState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let (filter, after, limit) = parse(&query)?;
    let page = state.app.node_page(&filter, after.as_ref(), limit)?;
    let next_cursor = page.continue_after.as_ref().map(cursor_for);
    Ok(Json(json!({ "nodes": page.nodes, "next_cursor": next_cursor })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::query::{of as query, position};

    fn field_of(pairs: &[(&str, &str)]) -> Option<String> {
        parse(&query(pairs)).err().and_then(|e| e.field)
    }

    #[test]
    fn cursors_round_trip_and_made_up_ones_are_refused() {
        let id = AgentId::new("edge-7").expect("id");
        assert_eq!(
            position(CURSOR_PREFIX, &cursor_for(&id)).as_deref(),
            Some("edge-7")
        );
        assert_eq!(position(CURSOR_PREFIX, "edge-7"), None);
        assert_eq!(position(CURSOR_PREFIX, &cursor("other:", "edge-7")), None);
    }

    #[test]
    fn each_bad_parameter_is_named() {
        assert_eq!(field_of(&[("limit", "0")]), Some("limit".into()));
        assert_eq!(field_of(&[("limit", "1001")]), Some("limit".into()));
        assert_eq!(field_of(&[("limit", "ten")]), Some("limit".into()));
        assert_eq!(field_of(&[("cursor", "zzz")]), Some("cursor".into()));
        assert_eq!(field_of(&[("state", "asleep")]), Some("state".into()));
        assert_eq!(field_of(&[("label", "novalue")]), Some("label".into()));
        assert_eq!(
            field_of(&[("region", "Not A Region!")]),
            Some("region".into())
        );
        assert_eq!(field_of(&[("sort", "id")]), Some("sort".into()));
        let (filter, after, limit) = parse(&query(&[
            ("state", "healthy"),
            ("label", "tier=edge"),
            ("limit", "100"),
        ]))
        .expect("valid");
        assert_eq!(filter.state, Some(NodeState::Healthy));
        assert_eq!(filter.label, Some(("tier".into(), "edge".into())));
        assert_eq!((after, limit), (None, Some(100)));
    }
}
