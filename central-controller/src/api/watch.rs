//! `GET /api/v1/watch`: the change stream as Server-Sent Events.
//!
//! Query: `kind` (a comma list of kinds), `region`, `service`, and `since`
//! (an id to resume after, for clients that cannot send the
//! `Last-Event-ID` header; the header wins when both are given, since a
//! reconnecting `EventSource` sends the header with the original URL).
//! Every bad value is refused with `400` naming it. A watcher sees only the
//! kinds its role may list ([`ChangeKind::role`]); asking for another by
//! name is a `403` naming the role it needs.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use verge_shared::{RegionId, ServiceName};

use super::error::ApiError;
use super::query::only_known;
use super::state::ApiState;
use crate::app::{ChangeKind, Frame, Principal, Role, WatchFilter, forbidden};

const PARAMS: [&str; 4] = ["kind", "region", "service", "since"];
const LAST_EVENT_ID: &str = "last-event-id";

fn parse_id(field: &str, text: &str) -> Result<u64, ApiError> {
    text.trim().parse().map_err(|_| {
        ApiError::invalid_field(
            field,
            format!("{text:?} is not an event id (a decimal number from this stream)"),
        )
    })
}

/// The filter and the id to resume after, checked; every error names its
/// parameter (or the header).
fn parse(
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
) -> Result<(WatchFilter, Option<u64>), ApiError> {
    only_known(query, &PARAMS)?;
    let kinds = query
        .get("kind")
        .map(|list| {
            list.split(',')
                .map(|name| {
                    ChangeKind::parse(name.trim()).ok_or_else(|| {
                        let known: Vec<&str> = ChangeKind::ALL.iter().map(|k| k.as_str()).collect();
                        ApiError::invalid_field(
                            "kind",
                            format!("unknown kind {name:?} (expected {})", known.join(", ")),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let filter = WatchFilter {
        kinds,
        region: query
            .get("region")
            .map(|r| {
                RegionId::new(r.as_str())
                    .map_err(|e| ApiError::invalid_field("region", e.to_string()))
            })
            .transpose()?,
        service: query
            .get("service")
            .map(|s| {
                ServiceName::new(s.as_str())
                    .map_err(|e| ApiError::invalid_field("service", e.to_string()))
            })
            .transpose()?,
    };
    let header = headers
        .get(LAST_EVENT_ID)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::invalid_field("Last-Event-ID", "not text"))
                .and_then(|text| parse_id("Last-Event-ID", text))
        })
        .transpose()?;
    let since = query
        .get("since")
        .map(|text| parse_id("since", text))
        .transpose()?;
    Ok((filter, header.or(since)))
}

fn event(frame: &Frame) -> Event {
    let event = Event::default().event(frame.event).data(frame.data());
    match frame.id {
        Some(id) => event.id(id.to_string()),
        None => event,
    }
}

/// `GET /api/v1/watch`
/// The kinds `role` may see: those asked for (every one it may see by
/// default); one asked for by name that it may not see is refused.
fn visible_to(mut filter: WatchFilter, role: Role) -> Result<WatchFilter, ApiError> {
    match &filter.kinds {
        Some(kinds) => {
            if let Some(kind) = kinds.iter().find(|k| k.role() > role) {
                let what = format!("watching {} changes", kind.as_str());
                return Err(forbidden(kind.role(), &what).into());
            }
        }
        None => {
            let visible = ChangeKind::ALL.into_iter().filter(|k| k.role() <= role);
            filter.kinds = Some(visible.collect());
        }
    }
    Ok(filter)
}

/// The change stream, as Server-Sent Events (docs/api.md, "Watching changes").
#[utoipa::path(get, path = "/api/v1/watch", tag = "watch",
    params(
        ("kind" = Option<String>, Query, description = "A comma list of kinds: `node`, `service`, `replica`, `release`, `token`, `api_token`, `user`"),
        ("region" = Option<String>, Query, description = "Changes that concern this region"),
        ("service" = Option<String>, Query, description = "Changes that concern this service"),
        ("since" = Option<u64>, Query, description = "Resume after this event id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id (wins over `since`)")),
    responses(
        (status = 200, description = "Events, for as long as the client stays: `sync` or `relist` first, then one event per change; `dropped` last when the client fell behind", body = super::openapi::WatchEvent, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_field`: an unknown parameter or kind, a bad value, or a malformed `Last-Event-ID` (named)", body = super::error::ErrorBody),
        (status = 403, description = "`forbidden`: a kind the role may not see", body = super::error::ErrorBody),
        (status = 503, description = "`too_many_watchers`: `watch.max_watchers` watchers are connected; try again later", body = super::error::ErrorBody)))]
pub(super) async fn watch(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (filter, since) = parse(&query, &headers)?;
    let filter = visible_to(filter, principal.role)?;
    let watch = state.app.watch(filter, since)?;
    let events = stream::unfold(watch, |mut watch| async move {
        let frame = watch.next().await?;
        Some((Ok::<_, Infallible>(event(&frame)), watch))
    });
    let keep_alive = KeepAlive::new()
        .interval(state.app.settings().watch.keep_alive)
        .text("keep-alive");
    let mut response = Sse::new(events).keep_alive(keep_alive).into_response();
    // Reverse proxies (nginx) would otherwise hold events back to fill a buffer.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::query::of as query;

    fn field_of(pairs: &[(&str, &str)], last_event_id: Option<&str>) -> Option<String> {
        let mut headers = HeaderMap::new();
        if let Some(id) = last_event_id {
            headers.insert(LAST_EVENT_ID, HeaderValue::from_str(id).expect("header"));
        }
        parse(&query(pairs), &headers).err().and_then(|e| e.field)
    }

    #[test]
    fn each_bad_parameter_is_named() {
        assert_eq!(
            field_of(&[("kind", "node,bogus")], None),
            Some("kind".into())
        );
        assert_eq!(field_of(&[("kind", "")], None), Some("kind".into()));
        assert_eq!(
            field_of(&[("region", "Not A Region!")], None),
            Some("region".into())
        );
        assert_eq!(
            field_of(&[("service", "no/slash")], None),
            Some("service".into())
        );
        assert_eq!(field_of(&[("since", "-1")], None), Some("since".into()));
        assert_eq!(field_of(&[], Some("abc")), Some("Last-Event-ID".into()));
        assert_eq!(field_of(&[("limit", "1")], None), Some("limit".into()));
    }

    #[test]
    fn the_header_wins_over_since_and_kinds_are_a_list() {
        let mut headers = HeaderMap::new();
        headers.insert(LAST_EVENT_ID, HeaderValue::from_static("42"));
        let (filter, since) = parse(
            &query(&[("since", "7"), ("kind", "node, replica")]),
            &headers,
        )
        .expect("valid");
        assert_eq!(since, Some(42));
        assert_eq!(
            filter.kinds,
            Some(vec![ChangeKind::Node, ChangeKind::Replica])
        );
        let (_, since) = parse(&query(&[("since", "7")]), &HeaderMap::new()).expect("valid");
        assert_eq!(since, Some(7));
    }

    #[test]
    fn a_watcher_sees_only_the_kinds_its_role_may_list() {
        let all = WatchFilter::default();
        let viewer = visible_to(all.clone(), Role::Viewer).expect("viewer");
        assert_eq!(
            viewer.kinds,
            Some(vec![
                ChangeKind::Node,
                ChangeKind::Service,
                ChangeKind::Replica,
                ChangeKind::Release,
                ChangeKind::Event,
                ChangeKind::Alarm
            ])
        );
        let operator = visible_to(all.clone(), Role::Operator).expect("operator");
        assert!(
            operator
                .kinds
                .is_some_and(|k| k.contains(&ChangeKind::Token) && !k.contains(&ChangeKind::User))
        );
        let admin = visible_to(all, Role::Admin).expect("admin");
        assert_eq!(admin.kinds.map(|k| k.len()), Some(ChangeKind::ALL.len()));
        let users = WatchFilter {
            kinds: Some(vec![ChangeKind::User]),
            ..WatchFilter::default()
        };
        let refused = visible_to(users, Role::Operator).expect_err("operator");
        assert_eq!(refused.code, "forbidden");
        assert!(refused.message.contains("admin"), "{}", refused.message);
    }
}
