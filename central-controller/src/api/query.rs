//! Query strings as the list and log routes read them: name → value, with
//! unknown names refused by name.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::error::ApiError;

/// Refuses the first parameter not in `known`, naming it and the known ones.
pub(super) fn only_known(query: &BTreeMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match query.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::invalid_field(
            unknown.as_str(),
            format!("unknown query parameter (expected {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// An opaque cursor: the route's `prefix` and a position, base64url, so
/// that a made-up or another route's cursor is refused.
pub(super) fn cursor(prefix: &str, position: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{prefix}{position}"))
}

/// The position in a `cursor` made with `prefix`.
pub(super) fn position(prefix: &str, cursor: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.strip_prefix(prefix).map(str::to_owned)
}

/// The `cursor` parameter, its position read by `parse`; a cursor that is
/// not the route's is refused by name.
pub(super) fn cursor_param<T>(
    query: &BTreeMap<String, String>,
    prefix: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    query
        .get("cursor")
        .map(|c| {
            position(prefix, c).and_then(|p| parse(&p)).ok_or_else(|| {
                ApiError::invalid_field(
                    "cursor",
                    "not a cursor from this route (pass next_cursor as it came)",
                )
            })
        })
        .transpose()
}

/// The `limit` parameter, 1 to `max`.
pub(super) fn limit_param(
    query: &BTreeMap<String, String>,
    max: usize,
) -> Result<Option<usize>, ApiError> {
    query
        .get("limit")
        .map(|l| {
            l.parse()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| ApiError::invalid_field("limit", format!("must be 1 to {max}")))
        })
        .transpose()
}

/// A query from (name, value) pairs, for the routes' tests.
#[cfg(test)]
pub(super) fn of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
