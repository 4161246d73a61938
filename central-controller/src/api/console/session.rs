//! The console's session cookie, its CSRF token, and the checks a request
//! made with the cookie passes: the same session for pages and for the API
//! calls the console's script makes.
//!
//! The cookie holds a console session's API token (`HttpOnly`,
//! `SameSite=Strict`, `Secure` over HTTPS). A change made with the cookie
//! (any method but GET and HEAD) must also carry the page's CSRF token, a
//! hash of the session's token that a page of another site cannot read,
//! and, when the browser names its origin, come from this origin.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use ring::digest::{SHA256, digest};

use crate::api::error::ApiError;
use crate::app::HttpsClient;

/// The cookie's name.
pub(crate) const COOKIE: &str = "verge_session";
/// The header the console's script sends the CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// The session token in the request's cookie, if any.
pub(crate) fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// The CSRF token of the session `token`: the first 128 bits of a SHA-256
/// over it, so it can be checked without storing anything.
pub(crate) fn csrf_token(token: &str) -> String {
    let hash = digest(&SHA256, format!("verge console csrf\n{token}").as_bytes());
    hex::encode(&hash.as_ref()[..16])
}

/// Whether `presented` is the CSRF token of `token`, compared in constant time.
pub(crate) fn csrf_matches(token: &str, presented: &str) -> bool {
    let expected = csrf_token(token);
    expected.len() == presented.len()
        && expected
            .bytes()
            .zip(presented.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Whether the request came over HTTPS.
pub(crate) fn is_https(request: &Request) -> bool {
    request.extensions().get::<HttpsClient>().is_some()
}

/// `Set-Cookie` for a new session that lasts `max_age_secs`.
pub(crate) fn set_cookie(token: &str, max_age_secs: u64, https: bool) -> HeaderValue {
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
    ))
    .unwrap_or_else(|_| clear_cookie(https))
}

/// `Set-Cookie` that removes the session cookie.
pub(crate) fn clear_cookie(https: bool) -> HeaderValue {
    HeaderValue::from_static(if https {
        "verge_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0; Secure"
    } else {
        "verge_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
    })
}

/// A change must come from this origin when the browser names one. A page
/// of another site that posts here gets `403 cross_origin`.
pub(crate) fn same_origin(request: &Request) -> Result<(), ApiError> {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let scheme = if is_https(request) { "https" } else { "http" };
    if origin.to_str().ok() == Some(format!("{scheme}://{host}").as_str()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            format!(
                "a change with the console's cookie must come from the console's own origin \
                 ({scheme}://{host}), not {}",
                origin.to_str().unwrap_or("an unreadable origin")
            ),
        ))
    }
}

/// The checks for an API request made with the session cookie `token`: a
/// change needs the CSRF header and the console's origin.
pub(crate) fn check_change(request: &Request, token: &str) -> Result<(), ApiError> {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return Ok(());
    }
    same_origin(request)?;
    let presented = request
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if csrf_matches(token, presented) {
        Ok(())
    } else {
        Err(csrf_refused())
    }
}

/// `403 csrf`: a change with the cookie but without the page's token.
pub(crate) fn csrf_refused() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "csrf",
        "a change made with the console's session cookie must carry the page's CSRF token \
         (the X-CSRF-Token header); API clients send an API token instead",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; verge_session=tok"),
        );
        assert_eq!(cookie(&headers), Some("tok"));
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("verge_session="));
        assert_eq!(cookie(&headers), None);
    }

    #[test]
    fn the_csrf_token_belongs_to_one_session() {
        let token = csrf_token("verge_a.b");
        assert_eq!(token.len(), 32);
        assert!(csrf_matches("verge_a.b", &token));
        assert!(!csrf_matches("verge_a.c", &token));
        assert!(!csrf_matches("verge_a.b", &token[..31]));
        assert!(!csrf_matches("verge_a.b", ""));
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_https() {
        let over_tls = set_cookie("t", 60, true);
        let plain = set_cookie("t", 60, false);
        for value in [&over_tls, &plain] {
            let text = value.to_str().expect("ascii");
            assert!(
                text.contains("HttpOnly") && text.contains("SameSite=Strict"),
                "{text}"
            );
        }
        assert!(over_tls.to_str().expect("ascii").ends_with("; Secure"));
        assert!(!plain.to_str().expect("ascii").contains("Secure"));
        assert!(
            clear_cookie(true)
                .to_str()
                .expect("ascii")
                .contains("Max-Age=0")
        );
    }
}
