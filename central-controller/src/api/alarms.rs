//! `/api/v1/alarms`: active alarms and their history, the catalogue,
//! acknowledgement and suppression (docs/alarms.md, docs/api.md#alarms).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use verge_shared::alarms::{Alarm, AlarmId, Severity};
use verge_shared::{AgentId, RegionId, ServiceName};

use super::error::{ApiError, ErrorBody};
use super::query::{limit_param, only_known};
use super::state::ApiState;
use crate::app::{
    AlarmFilter, AlarmPage, AlarmStates, Catalogue, CatalogueEntry, MAX_ALARM_PAGE, Principal,
};

/// The parameters the list knows.
const PARAMS: [&str; 8] = [
    "state", "severity", "alarm", "node", "region", "service", "after", "limit",
];

/// A page's length when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;

/// The query, checked; every error names its parameter.
fn parse(query: &BTreeMap<String, String>) -> Result<(AlarmFilter, usize), ApiError> {
    only_known(query, &PARAMS)?;
    let state = match query.get("state").map(String::as_str) {
        None | Some("active") => AlarmStates::Active,
        Some("cleared") => AlarmStates::Cleared,
        Some("all") => AlarmStates::All,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "state",
                "must be active, cleared or all",
            ));
        }
    };
    let severity = query
        .get("severity")
        .map(|s| {
            serde_json::from_value::<Severity>(serde_json::Value::String(s.clone())).map_err(|_| {
                ApiError::invalid_field("severity", "must be critical, major, minor or warning")
            })
        })
        .transpose()?;
    let alarm = query
        .get("alarm")
        .map(|a| {
            a.parse::<AlarmId>()
                .map_err(|e| ApiError::invalid_field("alarm", e.to_string()))
        })
        .transpose()?;
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
    let service = query
        .get("service")
        .map(|s| {
            ServiceName::new(s.as_str())
                .map_err(|e| ApiError::invalid_field("service", e.to_string()))
        })
        .transpose()?;
    let after = query
        .get("after")
        .map(|a| {
            a.parse::<u64>().map_err(|_| {
                ApiError::invalid_field("after", "must be an alarm instance (0 or more)")
            })
        })
        .transpose()?
        .unwrap_or(0);
    let limit = limit_param(query, MAX_ALARM_PAGE)?.unwrap_or(DEFAULT_LIMIT);
    Ok((
        AlarmFilter {
            state,
            severity,
            alarm,
            node,
            region,
            service,
            after,
        },
        limit,
    ))
}

/// Active alarms (most severe first, then oldest raised), or the history
/// of cleared ones oldest first, a page at a time after an instance.
#[utoipa::path(get, path = "/api/v1/alarms", tag = "alarms",
    params(
        ("state" = Option<String>, Query, description = "`active` (the default), `cleared` (the history) or `all`"),
        ("severity" = Option<Severity>, Query, description = "Only alarms of this severity"),
        ("alarm" = Option<AlarmId>, Query, description = "Only this alarm id (docs/alarms.md)"),
        ("node" = Option<String>, Query, description = "Only alarms about this node"),
        ("region" = Option<String>, Query, description = "Only alarms in this region"),
        ("service" = Option<String>, Query, description = "Only alarms about this service"),
        ("after" = Option<u64>, Query, description = "Only alarms with a higher instance (the previous page's `next_after`)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "At most this many (default 100)")),
    responses(
        (status = 200, description = "One page of alarms", body = AlarmPage),
        (status = 400, description = "`invalid_field`: an unknown parameter or a bad value (named)", body = ErrorBody)))]
pub(super) async fn list(
    State(state): State<ApiState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let (filter, limit) = parse(&query)?;
    Ok(Json(state.app.alarms(&filter, limit)).into_response())
}

/// The alarm catalogue, with each alarm's suppression.
#[utoipa::path(get, path = "/api/v1/alarms/catalogue", tag = "alarms",
    responses((status = 200, description = "Every alarm the controller knows", body = Catalogue)))]
pub(super) async fn catalogue(State(state): State<ApiState>) -> Response {
    Json(state.app.alarm_catalogue()).into_response()
}

/// Acknowledges an active alarm (recorded with who did it).
#[utoipa::path(post, path = "/api/v1/alarms/{instance}/acknowledge", tag = "alarms",
    params(("instance" = u64, Path, description = "The alarm's instance")),
    responses(
        (status = 200, description = "The alarm, acknowledged", body = Alarm),
        (status = 404, description = "`not_found`: no active alarm has this instance", body = ErrorBody)))]
pub(super) async fn acknowledge(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(instance): Path<String>,
) -> Result<Response, ApiError> {
    let instance: u64 = instance
        .parse()
        .map_err(|_| ApiError::not_found(format!("active alarm {instance:?} does not exist")))?;
    Ok(Json(state.app.acknowledge_alarm(instance, &principal)?).into_response())
}

/// The alarm id `name`, or a 404 naming the catalogue.
fn alarm_id(name: &str) -> Result<AlarmId, ApiError> {
    name.parse::<AlarmId>()
        .map_err(|e| ApiError::not_found(e.to_string()))
}

/// Stops publishing an alarm id on MQTT (still kept and listed).
#[utoipa::path(post, path = "/api/v1/alarms/catalogue/{alarm}/suppress", tag = "alarms",
    params(("alarm" = AlarmId, Path, description = "The alarm id (docs/alarms.md)")),
    responses(
        (status = 200, description = "The catalogue entry, suppressed", body = CatalogueEntry),
        (status = 404, description = "`not_found`: no such alarm in the catalogue", body = ErrorBody)))]
pub(super) async fn suppress(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(alarm): Path<String>,
) -> Result<Response, ApiError> {
    let id = alarm_id(&alarm)?;
    Ok(Json(state.app.set_alarm_suppressed(id, true, &principal)?).into_response())
}

/// Publishes an alarm id on MQTT again (its active alarms at once).
#[utoipa::path(post, path = "/api/v1/alarms/catalogue/{alarm}/unsuppress", tag = "alarms",
    params(("alarm" = AlarmId, Path, description = "The alarm id (docs/alarms.md)")),
    responses(
        (status = 200, description = "The catalogue entry, published", body = CatalogueEntry),
        (status = 404, description = "`not_found`: no such alarm in the catalogue", body = ErrorBody)))]
pub(super) async fn unsuppress(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(alarm): Path<String>,
) -> Result<Response, ApiError> {
    let id = alarm_id(&alarm)?;
    Ok(Json(state.app.set_alarm_suppressed(id, false, &principal)?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::query::of;

    #[test]
    fn every_bad_parameter_is_named() {
        for (pairs, field) in [
            (vec![("state", "open")], "state"),
            (vec![("severity", "high")], "severity"),
            (vec![("alarm", "nope")], "alarm"),
            (vec![("node", "No Such")], "node"),
            (vec![("region", "")], "region"),
            (vec![("service", "Bad Name")], "service"),
            (vec![("after", "-1")], "after"),
            (vec![("limit", "501")], "limit"),
            (vec![("since", "1")], "since"),
        ] {
            let e = parse(&of(&pairs)).expect_err("refused");
            assert_eq!(e.field.as_deref(), Some(field), "{pairs:?}");
        }
        let (filter, limit) = parse(&of(&[
            ("state", "cleared"),
            ("severity", "major"),
            ("alarm", "node_offline"),
            ("after", "7"),
        ]))
        .expect("valid");
        assert_eq!(filter.state, AlarmStates::Cleared);
        assert_eq!(filter.severity, Some(Severity::Major));
        assert_eq!(filter.alarm, Some(AlarmId::NodeOffline));
        assert_eq!((filter.after, limit), (7, DEFAULT_LIMIT));
    }

    #[test]
    fn an_unknown_alarm_id_names_the_catalogue() {
        let e = alarm_id("no_such_alarm").expect_err("unknown");
        assert!(e.message.contains("docs/alarms.md"), "{}", e.message);
    }
}
