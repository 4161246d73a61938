//! Conditional writes: a service's `ETag` is its revision, and `If-Match` /
//! `If-None-Match` on `PUT` and `DELETE` become an [`Expect`] that the app
//! checks under its deployment lock (RFC 9110, section 13.1).

use axum::http::{HeaderMap, HeaderValue, header};

use super::error::ApiError;
use crate::app::Expect;

/// The entity tag of a service at `revision`.
pub(super) fn etag(revision: u64) -> HeaderValue {
    // Digits in quotes are always a valid header value.
    HeaderValue::try_from(format!("\"{revision}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// What the request's conditional headers expect; a header that cannot be
/// read is a 400 naming it.
pub(super) fn expectation(headers: &HeaderMap) -> Result<Expect, ApiError> {
    let value = |name: &header::HeaderName| -> Result<Option<String>, ApiError> {
        let mut values = headers.get_all(name).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        let mut text = first
            .to_str()
            .map_err(|_| ApiError::invalid_field(name.as_str(), "not visible ASCII"))?
            .to_owned();
        for more in values {
            let more = more
                .to_str()
                .map_err(|_| ApiError::invalid_field(name.as_str(), "not visible ASCII"))?;
            text.push(',');
            text.push_str(more);
        }
        Ok(Some(text))
    };
    match (value(&header::IF_MATCH)?, value(&header::IF_NONE_MATCH)?) {
        (None, None) => Ok(Expect::Anything),
        (Some(_), Some(_)) => Err(ApiError::invalid_field(
            "If-None-Match",
            "send If-Match or If-None-Match, not both",
        )),
        (Some(tags), None) if tags.trim() == "*" => Ok(Expect::Exists),
        (Some(tags), None) => {
            let mut revisions = Vec::new();
            for tag in tags.split(',').map(str::trim) {
                // A weak tag never matches in the strong comparison If-Match uses.
                if tag.starts_with("W/\"") {
                    continue;
                }
                let revision = tag
                    .strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| {
                        ApiError::invalid_field(
                            "If-Match",
                            format!(
                                "{tag:?} is not an entity tag this API issued (\"<revision>\")"
                            ),
                        )
                    })?;
                revisions.push(revision);
            }
            Ok(Expect::OneOf(revisions))
        }
        (None, Some(tags)) if tags.trim() == "*" => Ok(Expect::Absent),
        (None, Some(_)) => Err(ApiError::invalid_field(
            "If-None-Match",
            "writes take only If-None-Match: * (create, never replace)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(pairs: &[(&'static str, &'static str)]) -> Result<Expect, Option<String>> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        expectation(&headers).map_err(|e| e.field)
    }

    #[test]
    fn conditional_headers_become_expectations() {
        assert_eq!(etag(42).to_str().ok(), Some("\"42\""));
        assert_eq!(expect(&[]), Ok(Expect::Anything));
        assert_eq!(expect(&[("if-match", "*")]), Ok(Expect::Exists));
        assert_eq!(expect(&[("if-none-match", "*")]), Ok(Expect::Absent));
        assert_eq!(
            expect(&[("if-match", "\"3\", W/\"4\""), ("if-match", "\"5\"")]),
            Ok(Expect::OneOf(vec![3, 5]))
        );
        assert_eq!(expect(&[("if-match", "3")]), Err(Some("If-Match".into())));
        assert_eq!(
            expect(&[("if-none-match", "\"3\"")]),
            Err(Some("If-None-Match".into()))
        );
        assert_eq!(
            expect(&[("if-match", "*"), ("if-none-match", "*")]),
            Err(Some("If-None-Match".into()))
        );
    }
}
