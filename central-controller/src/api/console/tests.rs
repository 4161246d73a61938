//! The console through the real router: signing in, the pages each role
//! sees, the headers every response carries, the CSRF and origin checks on
//! changes made with the session cookie, and the ends of a session.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use crate::api::tests::{TOKEN, api};
use crate::app::{Role, UserRequest};
use crate::testing::{MemoryFixture, memory_fixture, service_request};

const PASSWORD: &str = "correct horse battery";
const HOST: &str = "controller.test";

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The page's CSRF token, from its `<meta name="csrf-token">`.
    fn csrf(&self) -> String {
        let marker = r#"<meta name="csrf-token" content=""#;
        let start = self.body.find(marker).expect("a page with a CSRF token") + marker.len();
        let len = self.body[start..].find('"').expect("the attribute ends");
        self.body[start..start + len].to_owned()
    }
}

async fn send(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
    }
}

/// A request to the console's host, with the session cookie when given.
fn to(method: Method, uri: &str, cookie: Option<&str>) -> axum::http::request::Builder {
    let builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, HOST);
    match cookie {
        Some(c) => builder.header(header::COOKIE, c),
        None => builder,
    }
}

async fn get(router: &Router, uri: &str, cookie: Option<&str>) -> Answer {
    send(
        router,
        to(Method::GET, uri, cookie)
            .body(Body::empty())
            .expect("request"),
    )
    .await
}

/// Posts the sign-in form; returns `verge_session=<token>` from its cookie.
async fn sign_in(router: &Router, form: &[(&str, &str)]) -> String {
    let body = serde_urlencoded::to_string(form).expect("form");
    let answer = send(
        router,
        to(Method::POST, "/login", None)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .expect("request"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let cookie = answer.header(header::SET_COOKIE);
    let pair = cookie.split(';').next().expect("a cookie");
    assert!(pair.starts_with("verge_session=verge_"), "{cookie}");
    pair.to_owned()
}

async fn as_admin(router: &Router) -> String {
    sign_in(router, &[("token", TOKEN)]).await
}

async fn add_user(mem: &MemoryFixture, name: &str, role: Role) {
    mem.fx
        .app
        .create_user(UserRequest {
            name: name.to_owned(),
            role,
            password: PASSWORD.to_owned(),
        })
        .await
        .expect("user");
}

/// A change to the API with the session cookie, as the console's script
/// sends it (or not: `csrf` and `origin` are optional).
async fn change(
    router: &Router,
    uri: &str,
    cookie: &str,
    csrf: Option<&str>,
    origin: Option<&str>,
) -> Answer {
    let mut builder = to(Method::POST, uri, Some(cookie));
    if let Some(token) = csrf {
        builder = builder.header("x-csrf-token", token);
    }
    if let Some(origin) = origin {
        builder = builder.header(header::ORIGIN, origin);
    }
    send(router, builder.body(Body::empty()).expect("request")).await
}

/// The opening tag of the element with `id`.
fn tag<'a>(body: &'a str, id: &str) -> &'a str {
    let at = body
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no element {id} in {body}"));
    let start = body[..at].rfind('<').expect("the tag starts");
    &body[start..at + body[at..].find('>').expect("the tag ends") + 1]
}

/// The `href` of the page's `rel="next"` link.
fn next_link(body: &str) -> String {
    let rel = body.find(r#"rel="next""#).expect("a next page");
    let start = body[..rel].rfind("<a ").expect("the link");
    let tag = &body[start..start + body[start..].find('>').expect("the tag ends")];
    let href = &tag[tag.find(r#"href=""#).expect("an href") + 6..];
    href[..href.find('"').expect("the href ends")].replace("&amp;", "&")
}

fn error_code(answer: &Answer) -> String {
    let json: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON error");
    json["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn releases_show_what_was_uploaded_and_who_runs_it() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    let digest = mem.fx.release("web", b"#!/bin/true\n", &[]).await;
    let unused = mem.fx.release("batch", b"#!/bin/false\n", &[]).await;
    mem.fx
        .app
        .put_service("web", service_request(&digest, 1))
        .await
        .expect("service");
    let cookie = as_admin(&router).await;

    let page = get(&router, "/releases", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let body = &page.body;
    assert!(body.contains(r#"data-watch="release,service""#), "{body}");
    assert!(tag(body, "release-table").contains("data-live"), "{body}");
    assert!(body.contains(&format!(
        r#"<code title="{digest}">{}</code>"#,
        &digest[..12]
    )));
    assert!(body.contains("1.0.0") && body.contains("test publisher"));
    assert!(body.contains("executable, 12 B"), "{body}");
    assert!(
        body.contains(r#"<a href="/services/web">web</a>"#),
        "{body}"
    );
    // The release no service runs says so, in its own row.
    let unused_row = &body[body
        .find(&format!(r#"data-release="{unused}""#))
        .expect("row")..];
    let unused_row = &unused_row[..unused_row.find("</tr>").expect("row end")];
    assert!(unused_row.contains("no service"), "{unused_row}");
    // Newest first: the second upload comes first.
    assert!(body.find(&unused).expect("batch") < body.find(&digest).expect("web"));
}

#[tokio::test]
async fn a_nodes_page_charts_its_agents_memory_and_cpu() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    let key = verge_shared::SigningKey::generate().expect("key").0;
    let start = mem.fx.app.now();
    mem.fx.app.ingest(
        "verge/v1/agents/edge-a/presence",
        &crate::testing::presence(&key, "edge-a", "eu"),
        start,
    );
    let cookie = as_admin(&router).await;
    let page = get(&router, "/nodes/edge-a", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(tag(&page.body, "node-telemetry").contains("data-live"));
    assert!(
        page.body
            .contains("No telemetry yet: agents send it every telemetry_interval_secs"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<svg class=\"chart\""), "{}", page.body);

    // Fifteen minutes of samples a minute apart, using 0.5 % of a core.
    for seq in 1..=15 {
        let secs = (seq - 1) * 60;
        let at = start.saturating_add(Duration::from_secs(secs));
        mem.fx.app.ingest(
            "verge/v1/telemetry/eu/edge-a",
            &crate::testing::telemetry("edge-a", "eu", seq, at, secs * 5, 10 + secs),
            start,
        );
    }
    let page = get(&router, "/nodes/edge-a", Some(&cookie)).await;
    let body = &page.body;
    let section = &body[body.find(r#"id="node-telemetry""#).expect("the section")..];
    let section = &section[..section.find("</section>").expect("its end")];
    assert_eq!(section.matches(r#"role="img""#).count(), 4, "{section}");
    assert!(
        tag(section, "telemetry-rss")
            .contains(r#"aria-labelledby="telemetry-rss-title telemetry-rss-desc""#),
        "{section}"
    );
    assert!(
        section.contains("Agent memory (RSS): latest 20.0 MiB"),
        "{section}"
    );
    assert!(
        section.contains("Agent CPU use (100 = one core): latest 0.5 %"),
        "{section}"
    );
    assert!(section.contains(">last 14 min</text>"), "{section}");
    assert!(section.contains("14 of 15 samples known"), "{section}");
    assert!(section.contains("One sample every 60 s."), "{section}");
    assert!(section.contains("seq 15"), "{section}");
    assert!(
        !section.contains("style="),
        "the CSP forbids inline styles: {section}"
    );
}

#[test]
fn sizes_are_in_binary_units() {
    assert_eq!(super::releases::size(0), "0 B");
    assert_eq!(super::releases::size(1023), "1023 B");
    assert_eq!(super::releases::size(1024), "1.0 KiB");
    assert_eq!(super::releases::size(2_516_582), "2.4 MiB");
    assert_eq!(super::releases::size(3 << 30), "3.0 GiB");
}

#[tokio::test]
async fn trust_shows_the_bundle_and_warns_before_it_expires() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    let cookie = as_admin(&router).await;
    let bundle = mem.fx.app.trust_bundle();

    let page = get(&router, "/trust", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let body = &page.body;
    assert!(body.contains(r#"<dd id="trust-version">1</dd>"#), "{body}");
    assert!(body.contains("1 of these 1 keys must sign"), "{body}");
    for key in bundle
        .root
        .keys
        .iter()
        .chain(&bundle.controllers)
        .chain(bundle.publishers.iter().map(|p| &p.key))
    {
        assert!(body.contains(key.key_id().as_str()), "{body}");
    }
    assert!(body.contains("test publisher") && body.contains("<code>*</code>"));
    assert!(body.contains("PUT /api/v1/trust"));
    // The fixture's bundle expires within the hour.
    let notice = tag(body, "trust-expiry");
    assert!(
        notice.contains(r#"class="notice error""#) && notice.contains(r#"role="status""#),
        "{notice}"
    );
    assert!(body.contains("The trust bundle expires in "), "{body}");

    mem.clock.advance(Duration::from_secs(3601));
    // A fresh session: the old one was idle for longer than the timeout.
    let cookie = as_admin(&router).await;
    let page = get(&router, "/trust", Some(&cookie)).await;
    assert!(
        page.body.contains("The trust bundle has expired"),
        "{}",
        page.body
    );
    assert!(tag(&page.body, "trust-expiry").contains(r#"role="alert""#));
}

#[tokio::test]
async fn users_are_listed_with_forms_for_the_users_api() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    add_user(&mem, "alice", Role::Operator).await;
    let cookie = as_admin(&router).await;

    let page = get(&router, "/users", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let body = &page.body;
    assert!(body.contains(r#"data-watch="user""#));
    assert!(body.contains(r#"data-user="alice""#), "{body}");
    assert!(body.contains(r#"data-api="/api/v1/users/alice/role" data-method="PUT""#));
    assert!(body.contains(r#"<label class="visually-hidden" for="role-alice">"#));
    assert!(body.contains(r#"<option value="operator" selected>operator</option>"#));
    assert!(body.contains(r#"data-api="/api/v1/users/alice" data-method="DELETE""#));
    assert!(body.contains("The user and all their API tokens are removed"));
    assert!(body.contains(r#"data-api="/api/v1/users" data-method="POST""#));
    for field in ["name", "role", "password"] {
        assert!(
            body.contains(&format!(r#"data-error-for="{field}""#)),
            "{field}"
        );
    }
    assert!(body.contains(r#"type="password" required autocomplete="new-password""#));
    // The bootstrap admin has no password, and is who is looking.
    assert!(body.contains("signs in with API tokens only") && body.contains("(you)"));

    let page = get(&router, "/users?created=alice", Some(&cookie)).await;
    assert!(page.body.contains(r#"id="user-created""#));
    let page = get(&router, "/users?created=nobody", Some(&cookie)).await;
    assert!(!page.body.contains(r#"id="user-created""#));
}

#[tokio::test]
async fn the_audit_log_pages_and_filters() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    let cookie = as_admin(&router).await;
    let csrf = get(&router, "/", Some(&cookie)).await.csrf();
    for node in ["n1", "n2", "n3"] {
        let answer = change(
            &router,
            &format!("/api/v1/nodes/{node}/cordon"),
            &cookie,
            Some(&csrf),
            None,
        )
        .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
    }
    // A refused change, recorded too.
    let refused = change(&router, "/api/v1/nodes/n4/cordon", &cookie, None, None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    let page = get(&router, "/audit", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let body = &page.body;
    assert!(body.contains(r#"data-watch="""#));
    assert!(
        body.contains("<code>POST /api/v1/nodes/{id}/cordon</code>"),
        "{body}"
    );
    assert!(
        body.contains("403 refused") && body.contains("csrf"),
        "{body}"
    );
    assert!(
        body.contains("404 failed") && body.contains("not_found"),
        "{body}"
    );
    assert!(body.find("nodes/n4/cordon") < body.find("nodes/n1/cordon"));
    assert!(tag(body, "refresh").contains(r#"href="/audit""#));

    let page = get(
        &router,
        "/audit?target=nodes/n2&actor=&limit=5",
        Some(&cookie),
    )
    .await;
    assert!(page.body.contains("nodes/n2/cordon"), "{}", page.body);
    assert!(!page.body.contains("nodes/n1/cordon"));

    let first = get(&router, "/audit?limit=2", Some(&cookie)).await;
    assert!(first.body.contains("nodes/n4/cordon") && !first.body.contains("nodes/n2/cordon"));
    let link = next_link(&first.body);
    assert!(
        link.contains("cursor=") && link.contains("limit=2"),
        "{link}"
    );
    let second = get(&router, &link, Some(&cookie)).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert!(second.body.contains("nodes/n2/cordon") && !second.body.contains("nodes/n4/cordon"));
    assert!(second.body.contains("← Newest entries"));

    let bad = get(&router, "/audit?since=yesterday", Some(&cookie)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains(r#"id="audit-error""#) && bad.body.contains("RFC 3339"));
    assert!(
        bad.body.contains(r#"value="yesterday""#),
        "the form keeps what was typed"
    );
}

#[tokio::test]
async fn a_viewer_sees_no_admin_pages_and_no_forms_that_change_anything() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    mem.fx.release("web", b"#!/bin/true\n", &[]).await;
    add_user(&mem, "vera", Role::Viewer).await;
    let cookie = sign_in(&router, &[("user", "vera"), ("password", PASSWORD)]).await;

    for path in ["/users", "/audit"] {
        let page = get(&router, path, Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
        assert!(page.body.contains("Not allowed"), "{path}: {}", page.body);
    }
    for path in ["/releases", "/trust", "/alarms"] {
        let page = get(&router, path, Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(!page.body.contains("data-api"), "{path}: {}", page.body);
        // The navigation offers only what a viewer may open.
        assert!(!page.body.contains(r#"href="/users""#) && !page.body.contains(r#"href="/audit""#));
    }
}

#[tokio::test]
async fn without_a_session_pages_lead_to_the_sign_in_form() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    for path in ["/releases", "/trust", "/users", "/audit?actor=alice"] {
        let answer = get(&router, path, None).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}");
        let expected = format!(
            "/login?{}",
            serde_urlencoded::to_string([("next", path)]).expect("query")
        );
        assert_eq!(answer.location(), expected);
    }
    let answer = get(&router, "/trust", Some("verge_session=verge_not.a-session")).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert!(
        answer.location().ends_with("&why=expired"),
        "{}",
        answer.location()
    );
    assert!(answer.header(header::SET_COOKIE).contains("Max-Age=0"));
}

#[tokio::test]
async fn every_console_response_carries_the_security_headers() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    add_user(&mem, "vera", Role::Viewer).await;
    let admin = as_admin(&router).await;
    let viewer = sign_in(&router, &[("user", "vera"), ("password", PASSWORD)]).await;

    let mut answers = Vec::new();
    for path in [
        "/",
        "/nodes",
        "/alarms",
        "/releases",
        "/trust",
        "/users",
        "/audit",
    ] {
        let page = get(&router, path, Some(&admin)).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        answers.push((path, true, page));
    }
    answers.push((
        "/users as a viewer",
        true,
        get(&router, "/users", Some(&viewer)).await,
    ));
    answers.push((
        "/nodes/none",
        true,
        get(&router, "/nodes/none", Some(&admin)).await,
    ));
    answers.push(("/login", true, get(&router, "/login", None).await));
    answers.push((
        "/releases, signed out",
        false,
        get(&router, "/releases", None).await,
    ));
    answers.push((
        "/assets/console.js",
        false,
        get(&router, "/assets/console.js", None).await,
    ));
    for (what, is_page, answer) in &answers {
        let csp = answer.header(header::CONTENT_SECURITY_POLICY);
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{what}: {csp}"
        );
        assert_eq!(answer.header(header::X_FRAME_OPTIONS), "DENY", "{what}");
        if *is_page {
            assert_eq!(answer.header(header::CACHE_CONTROL), "no-store", "{what}");
            assert!(
                !answer.body.contains("style=\"") && !answer.body.contains("<script>"),
                "{what}: no inline style or script"
            );
        }
    }
}

#[tokio::test]
async fn changes_with_the_cookie_need_the_csrf_token_and_the_same_origin() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    let cookie = as_admin(&router).await;
    let csrf = get(&router, "/", Some(&cookie)).await.csrf();
    assert_eq!(csrf.len(), 32);
    let uri = "/api/v1/nodes/x/cordon";

    let answer = change(&router, uri, &cookie, None, None).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&answer), "csrf");

    let wrong = "0".repeat(32);
    let answer = change(&router, uri, &cookie, Some(&wrong), None).await;
    assert_eq!(
        (answer.status, error_code(&answer)),
        (StatusCode::FORBIDDEN, "csrf".into())
    );

    let answer = change(
        &router,
        uri,
        &cookie,
        Some(&csrf),
        Some("https://evil.example"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&answer), "cross_origin");

    let own = format!("http://{HOST}");
    let answer = change(&router, uri, &cookie, Some(&csrf), Some(&own)).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
    assert_eq!(error_code(&answer), "not_found");

    // Reading needs no token.
    let answer = get(&router, "/api/v1/nodes", Some(&cookie)).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn a_session_ends_when_idle_and_at_sign_out() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    let idle = mem.fx.app.settings().console_idle_timeout;
    assert_eq!(idle, Duration::from_secs(1800));

    let cookie = as_admin(&router).await;
    mem.clock.advance(idle - Duration::from_secs(1));
    assert_eq!(
        get(&router, "/trust", Some(&cookie)).await.status,
        StatusCode::OK
    );
    // Use keeps it alive; then a longer pause ends it.
    mem.clock.advance(idle - Duration::from_secs(1));
    assert_eq!(
        get(&router, "/trust", Some(&cookie)).await.status,
        StatusCode::OK
    );
    mem.clock.advance(idle + Duration::from_secs(1));
    let answer = get(&router, "/trust", Some(&cookie)).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert!(
        answer.location().ends_with("&why=idle"),
        "{}",
        answer.location()
    );
    // For good: it does not come back, not even for the API.
    let answer = get(&router, "/trust", Some(&cookie)).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let answer = get(&router, "/api/v1/nodes", Some(&cookie)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    let cookie = as_admin(&router).await;
    let csrf = get(&router, "/", Some(&cookie)).await.csrf();
    let sign_out = |csrf: String| {
        to(Method::POST, "/logout", Some(&cookie))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={csrf}")))
            .expect("request")
    };
    let answer = send(&router, sign_out("0".repeat(32))).await;
    assert_eq!(
        answer.status,
        StatusCode::FORBIDDEN,
        "a sign-out needs the token"
    );
    assert_eq!(
        get(&router, "/", Some(&cookie)).await.status,
        StatusCode::OK
    );

    let answer = send(&router, sign_out(csrf)).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.location(), "/login?why=signed_out");
    assert!(answer.header(header::SET_COOKIE).contains("Max-Age=0"));
    let answer = get(&router, "/", Some(&cookie)).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert!(answer.location().starts_with("/login?next="));
    let answer = get(&router, "/api/v1/nodes", Some(&cookie)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}
