//! Query strings as the list and log routes read them: name → value, with
//! unknown names refused by name.

use std::collections::BTreeMap;

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

/// A query from (name, value) pairs, for the routes' tests.
#[cfg(test)]
pub(super) fn of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
