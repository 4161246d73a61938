//! `GET /api/v1/events`: the events agents signed and sent and the
//! controller's fleet lifecycle events (docs/api.md#events), oldest first,
//! a page at a time after an id.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use verge_shared::fleet::FleetEventKind;
use verge_shared::messages::EventKind;
use verge_shared::{AgentId, RegionId, ServiceName};

use super::error::ApiError;
use super::query::{limit_param, only_known};
use super::state::ApiState;
use crate::app::{EventFilter, EventPage, EventSource, MAX_EVENT_PAGE};

/// The parameters the route knows.
const PARAMS: [&str; 7] = [
    "after", "node", "region", "source", "kind", "service", "limit",
];

/// A page's length when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;

/// The query, checked; every error names its parameter.
fn parse(query: &BTreeMap<String, String>) -> Result<(EventFilter, usize), ApiError> {
    only_known(query, &PARAMS)?;
    let after = query
        .get("after")
        .map(|a| {
            a.parse::<u64>()
                .map_err(|_| ApiError::invalid_field("after", "must be an event id (0 or more)"))
        })
        .transpose()?
        .unwrap_or(0);
    let node = query
        .get("node")
        .map(|n| {
            AgentId::new(n.as_str()).map_err(|e| ApiError::invalid_field("node", e.to_string()))
        })
        .transpose()?;
    let region = query
        .get("region")
        .map(|r| {
            RegionId::new(r.as_str()).map_err(|e| ApiError::invalid_field("region", e.to_string()))
        })
        .transpose()?;
    let source = query
        .get("source")
        .map(|s| match s.as_str() {
            "node" => Ok(EventSource::Node),
            "controller" => Ok(EventSource::Controller),
            _ => Err(ApiError::invalid_field(
                "source",
                "must be node or controller",
            )),
        })
        .transpose()?;
    let kind = query
        .get("kind")
        .map(|k| {
            let known = FleetEventKind::ALL.iter().any(|f| f.as_str() == k)
                || serde_json::from_value::<EventKind>(serde_json::Value::String(k.clone()))
                    .is_ok();
            if known {
                Ok(k.clone())
            } else {
                Err(ApiError::invalid_field(
                    "kind",
                    "must be an event kind (docs/api.md#events)",
                ))
            }
        })
        .transpose()?;
    let service = query
        .get("service")
        .map(|s| {
            ServiceName::new(s.as_str())
                .map_err(|e| ApiError::invalid_field("service", e.to_string()))
        })
        .transpose()?;
    let limit = limit_param(query, MAX_EVENT_PAGE)?.unwrap_or(DEFAULT_LIMIT);
    Ok((
        EventFilter {
            after,
            node,
            region,
            source,
            kind,
            service,
        },
        limit,
    ))
}

/// The latest events of the fleet, the nodes' and the controller's, oldest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "nodes",
    params(
        ("after" = Option<u64>, Query, description = "Only events with a higher id (the previous page's `next_after`, or the last id seen)"),
        ("node" = Option<String>, Query, description = "Only this node's events"),
        ("region" = Option<String>, Query, description = "Only events of nodes in this region"),
        ("source" = Option<String>, Query, description = "Only events from `node`s or from the `controller`"),
        ("kind" = Option<String>, Query, description = "Only events of this kind (`node_offline`, `desired_state_rejected`, ...)"),
        ("service" = Option<String>, Query, description = "Only events about this service"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "At most this many (default 100)")),
    responses(
        (status = 200, description = "One page of events, oldest first", body = EventPage),
        (status = 400, description = "`invalid_field`: an unknown parameter or a bad value (named)", body = super::error::ErrorBody)))]
pub(super) async fn list(
    State(state): State<ApiState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let (filter, limit) = parse(&query)?;
    Ok(Json(state.app.events(&filter, limit)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::query::of;

    #[test]
    fn every_bad_parameter_is_named() {
        for (pairs, field) in [
            (vec![("after", "-1")], "after"),
            (vec![("node", "No Such")], "node"),
            (vec![("region", "")], "region"),
            (vec![("limit", "501")], "limit"),
            (vec![("since", "1")], "since"),
            (vec![("source", "agent")], "source"),
            (vec![("kind", "nope")], "kind"),
            (vec![("service", "Bad Name")], "service"),
        ] {
            let e = parse(&of(&pairs)).expect_err("refused");
            assert_eq!(e.field.as_deref(), Some(field), "{pairs:?}");
        }
        let (filter, limit) = parse(&of(&[("after", "7"), ("node", "edge-a")])).expect("valid");
        assert_eq!((filter.after, limit), (7, DEFAULT_LIMIT));
        assert_eq!(
            filter.node.map(|n| n.to_string()),
            Some("edge-a".to_owned())
        );
    }
}
