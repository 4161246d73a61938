//! Roles, API tokens, sign-in throttling and the audit log, through the
//! real router over the in-memory store and a manual clock.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{Method, Request as HttpRequest, StatusCode, header};
use serde_json::{Value, json};

use super::tests::{api, json, request, send};
use super::*;
use crate::app::FREE_FAILURES;
use crate::testing::memory_fixture;

const PASSWORD: &str = "correct horse battery";

/// `request` with `token` instead of the admin token.
fn as_token(token: &str, method: Method, uri: &str, body: Value) -> HttpRequest<Body> {
    let mut r = request(method, uri, body.to_string());
    r.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    r
}

fn from(address: &str, mut r: HttpRequest<Body>) -> HttpRequest<Body> {
    let peer: SocketAddr = address.parse().expect("address");
    r.extensions_mut().insert(ConnectInfo(peer));
    r
}

async fn call(router: &Router, r: HttpRequest<Body>) -> (StatusCode, Value) {
    let (status, body) = send(router, r).await;
    let value = if body.is_empty() {
        Value::Null
    } else {
        json(&body)
    };
    (status, value)
}

async fn add_user(router: &Router, name: &str, role: &str) {
    let (status, body) = call(
        router,
        request(
            Method::POST,
            "/api/v1/users",
            json!({"name": name, "role": role, "password": PASSWORD}).to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["has_password"], true);
}

async fn login(router: &Router, name: &str) -> String {
    let (status, body) = call(
        router,
        as_token(
            "",
            Method::POST,
            "/api/v1/login",
            json!({"user": name, "password": PASSWORD}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn each_role_reaches_what_it_may_and_is_told_what_it_lacks() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    add_user(&router, "vera", "viewer").await;
    add_user(&router, "otto", "operator").await;
    let viewer = login(&router, "vera").await;
    let operator = login(&router, "otto").await;

    let (status, me) = call(
        &router,
        as_token(&viewer, Method::GET, "/api/v1/whoami", Value::Null),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (me["user"].as_str(), me["role"].as_str()),
        (Some("vera"), Some("viewer"))
    );

    let service = json!({"release": "0".repeat(64), "replicas": 1});
    let cases = [
        (&viewer, Method::GET, "/api/v1/services", StatusCode::OK),
        (&viewer, Method::GET, "/api/v1/nodes", StatusCode::OK),
        (
            &viewer,
            Method::PUT,
            "/api/v1/services/web",
            StatusCode::FORBIDDEN,
        ),
        (
            &viewer,
            Method::POST,
            "/api/v1/nodes/n1/cordon",
            StatusCode::FORBIDDEN,
        ),
        (
            &viewer,
            Method::GET,
            "/api/v1/api-tokens",
            StatusCode::FORBIDDEN,
        ),
        (&viewer, Method::GET, "/api/v1/audit", StatusCode::FORBIDDEN),
        (
            &operator,
            Method::POST,
            "/api/v1/nodes/n1/cordon",
            StatusCode::NOT_FOUND,
        ),
        (&operator, Method::GET, "/api/v1/audit", StatusCode::OK),
        (
            &operator,
            Method::PUT,
            "/api/v1/trust",
            StatusCode::FORBIDDEN,
        ),
        (
            &operator,
            Method::POST,
            "/api/v1/nodes/n1/revoke",
            StatusCode::FORBIDDEN,
        ),
        (
            &operator,
            Method::GET,
            "/api/v1/users",
            StatusCode::FORBIDDEN,
        ),
        (
            &operator,
            Method::DELETE,
            "/api/v1/users/vera",
            StatusCode::FORBIDDEN,
        ),
    ];
    for (token, method, uri, expected) in cases {
        let (status, body) = call(
            &router,
            as_token(token, method.clone(), uri, service.clone()),
        )
        .await;
        assert_eq!(status, expected, "{method} {uri}: {body}");
        if expected == StatusCode::FORBIDDEN {
            assert_eq!(body["error"]["code"], "forbidden");
            let needed = required_role(&method, &route_pattern(uri));
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(&format!("the {} role", crate::app::role_name(needed))),
                "{method} {uri}: {message}"
            );
        }
    }
    // Refused by the use case rather than the route: a token above one's
    // role or for someone else, another user's password.
    let refusals = [
        (
            &operator,
            Method::POST,
            "/api/v1/api-tokens",
            json!({"name": "ci", "role": "admin"}),
        ),
        (
            &operator,
            Method::POST,
            "/api/v1/api-tokens",
            json!({"name": "ci", "user": "vera"}),
        ),
        (
            &viewer,
            Method::PUT,
            "/api/v1/users/otto/password",
            json!({"password": "another long password"}),
        ),
    ];
    for (token, method, uri, body) in refusals {
        let (status, reply) = call(&router, as_token(token, method, uri, body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}: {reply}");
    }
    let own = json!({"password": "another long password"});
    let (status, _) = call(
        &router,
        as_token(&viewer, Method::PUT, "/api/v1/users/vera/password", own),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "one's own password");
}

/// The route pattern of the test URIs above.
fn route_pattern(uri: &str) -> String {
    match uri {
        "/api/v1/services/web" => "/api/v1/services/{name}".into(),
        "/api/v1/nodes/n1/cordon" => "/api/v1/nodes/{id}/cordon".into(),
        "/api/v1/nodes/n1/revoke" => "/api/v1/nodes/{id}/revoke".into(),
        "/api/v1/users/vera" => "/api/v1/users/{name}".into(),
        other => other.into(),
    }
}

#[tokio::test]
async fn tokens_expire_are_revoked_and_follow_their_user() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    add_user(&router, "otto", "operator").await;
    let session = login(&router, "otto").await;
    let (status, made) = call(
        &router,
        as_token(
            &session,
            Method::POST,
            "/api/v1/api-tokens",
            json!({"name": "deploy bot", "ttl_secs": 60}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let bot = made["token"].as_str().expect("token").to_owned();
    assert!(bot.starts_with("verge_"));
    let listed = call(
        &router,
        as_token(&session, Method::GET, "/api/v1/api-tokens", Value::Null),
    )
    .await
    .1;
    let names: Vec<&str> = listed["api_tokens"]
        .as_array()
        .expect("list")
        .iter()
        .map(|t| t["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names.len(), 2, "otto sees only his own: {listed}");
    assert!(names.contains(&"deploy bot") && names.contains(&"login"));
    assert!(
        listed.to_string().find("verge_").is_none(),
        "no secret is listed"
    );

    let whoami = |token: String| as_token(&token, Method::GET, "/api/v1/whoami", Value::Null);
    assert_eq!(call(&router, whoami(bot.clone())).await.0, StatusCode::OK);
    mem.clock.advance(Duration::from_secs(61));
    let (status, body) = call(&router, whoami(bot.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired")
    );

    // Revoked: refused at once.
    let id = made["id"].as_str().expect("id");
    let second = call(
        &router,
        as_token(
            &session,
            Method::POST,
            "/api/v1/api-tokens",
            json!({"name": "second"}),
        ),
    )
    .await
    .1;
    let second_token = second["token"].as_str().expect("token").to_owned();
    let second_id = second["id"].as_str().expect("id");
    let (status, _) = call(
        &router,
        as_token(
            &session,
            Method::DELETE,
            &format!("/api/v1/api-tokens/{second_id}"),
            Value::Null,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = call(&router, whoami(second_token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{body}"
    );
    assert_ne!(id, second_id);

    // Demoted: the token acts as a viewer; deleted: refused.
    let (status, _) = call(
        &router,
        request(
            Method::PUT,
            "/api/v1/users/otto/role",
            json!({"role": "viewer"}).to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let me = call(&router, whoami(session.clone())).await.1;
    assert_eq!(me["role"], "viewer");
    let (status, _) = call(
        &router,
        request(Method::DELETE, "/api/v1/users/otto", Body::empty()),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        call(&router, whoami(session)).await.0,
        StatusCode::UNAUTHORIZED
    );

    // The last admin stays.
    let (status, body) = call(
        &router,
        request(Method::DELETE, "/api/v1/users/admin", Body::empty()),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("last_admin"))
    );
}

#[tokio::test]
async fn failed_sign_ins_slow_down_their_source_only() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    add_user(&router, "otto", "operator").await;
    let attempt = |address: &str, password: &str| {
        from(
            address,
            as_token(
                "",
                Method::POST,
                "/api/v1/login",
                json!({"user": "otto", "password": password}),
            ),
        )
    };
    for _ in 0..FREE_FAILURES {
        let (status, body) = call(&router, attempt("192.0.2.1:4000", "not the password")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    // Now even the right password waits.
    let response = router
        .clone()
        .oneshot(attempt("192.0.2.1:4001", PASSWORD))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    // Guessing tokens counts the same way.
    let (status, _) = call(
        &router,
        from(
            "192.0.2.1:4002",
            as_token(
                "verge_abc.def",
                Method::GET,
                "/api/v1/services",
                Value::Null,
            ),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Another source is not held back.
    let (status, _) = call(&router, attempt("198.51.100.7:5000", PASSWORD)).await;
    assert_eq!(status, StatusCode::CREATED);
    // The wait passes.
    mem.clock.advance(Duration::from_secs(2));
    let (status, _) = call(&router, attempt("192.0.2.1:4003", PASSWORD)).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn the_audit_log_says_who_changed_what_and_who_was_refused() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    add_user(&router, "vera", "viewer").await;
    let viewer = login(&router, "vera").await;
    let _ = call(
        &router,
        request(Method::POST, "/api/v1/nodes/n1/cordon", Body::empty()),
    )
    .await;
    let _ = call(
        &router,
        as_token(&viewer, Method::DELETE, "/api/v1/services/web", Value::Null),
    )
    .await;
    let _ = call(
        &router,
        as_token("wrong", Method::GET, "/api/v1/services", Value::Null),
    )
    .await;
    let _ = call(
        &router,
        as_token(&viewer, Method::GET, "/api/v1/services", Value::Null),
    )
    .await;
    let _ = call(
        &router,
        from(
            "203.0.113.9:1",
            as_token(
                "",
                Method::POST,
                "/api/v1/login",
                json!({"user": "vera", "password": "nope nope nope"}),
            ),
        ),
    )
    .await;

    let (status, page) = call(
        &router,
        request(Method::GET, "/api/v1/audit", Body::empty()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let entries = page["entries"].as_array().expect("entries");
    let summary: Vec<(String, String, String, u64, String)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or("-").to_owned(),
                e["method"].as_str().unwrap_or_default().to_owned(),
                e["target"].as_str().unwrap_or_default().to_owned(),
                e["status"].as_u64().unwrap_or_default(),
                e["error"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    let s = |a: &str, m: &str, t: &str, st: u64, e: &str| {
        (a.to_owned(), m.to_owned(), t.to_owned(), st, e.to_owned())
    };
    // Newest first; the viewer's successful read is not a change.
    assert_eq!(
        summary,
        vec![
            s("vera", "POST", "login", 401, "unauthorized"),
            s("-", "GET", "services", 401, "unauthorized"),
            s("vera", "DELETE", "services/web", 403, "forbidden"),
            s("admin", "POST", "nodes/n1/cordon", 404, "not_found"),
            s("vera", "POST", "login", 201, "-"),
            s("admin", "POST", "users", 201, "-"),
        ]
    );
    assert_eq!(entries[0]["source"], "203.0.113.9");
    assert_eq!(entries[3]["token"], "admin-token");
    assert_eq!(entries[3]["route"], "/api/v1/nodes/{id}/cordon");

    // Filters and pages.
    let get = |uri: &str| request(Method::GET, uri, Body::empty());
    let vera = call(&router, get("/api/v1/audit?actor=vera")).await.1;
    assert_eq!(vera["entries"].as_array().map(Vec::len), Some(3));
    let nodes = call(&router, get("/api/v1/audit?target=nodes/n1")).await.1;
    assert_eq!(nodes["entries"].as_array().map(Vec::len), Some(1));
    let first = call(&router, get("/api/v1/audit?limit=4")).await.1;
    let cursor = first["next_cursor"].as_str().expect("more");
    let rest = call(
        &router,
        get(&format!("/api/v1/audit?limit=4&cursor={cursor}")),
    )
    .await
    .1;
    assert_eq!(rest["entries"].as_array().map(Vec::len), Some(2), "{rest}");
    assert_eq!(rest["next_cursor"], Value::Null);
    for bad in ["limit=0", "cursor=zz", "since=yesterday", "colour=red"] {
        let (status, body) = call(&router, get(&format!("/api/v1/audit?{bad}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            body["error"]["field"],
            bad.split('=').next().unwrap_or_default()
        );
    }
}

/// Every row of docs/api.md's routes table, as (method, route, role).
pub(super) fn documented_routes() -> Vec<(Method, String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md");
    let text = std::fs::read_to_string(path).expect("docs/api.md");
    text.lines()
        .skip_while(|l| l.trim() != "## Routes")
        .take_while(|l| !l.starts_with("### "))
        .filter_map(|l| {
            let mut cells = l.split(" | ");
            let route = cells.next()?.strip_prefix("| `")?.strip_suffix('`')?;
            let role = cells.next()?.trim().to_owned();
            let (method, path) = route.split_once(' ')?;
            let path = path.split('?').next()?.to_owned();
            Some((method.parse().ok()?, path, role))
        })
        .collect()
}

#[tokio::test]
async fn the_documented_role_of_every_route_is_the_one_enforced() {
    let rows = documented_routes();
    assert!(rows.len() >= 35, "the routes table was not found: {rows:?}");
    let mem = memory_fixture();
    let router = api(&mem.fx);
    for (method, route, role) in rows {
        // Path parameters filled in; the anonymous request shows whether
        // the route asks for a token at all.
        let uri = route
            .replace("{sha256}", &"0".repeat(64))
            .replace("{index}", "0")
            .replace(['{', '}'], "");
        let mut anonymous = request(method.clone(), &uri, Body::empty());
        anonymous.headers_mut().remove(header::AUTHORIZATION);
        let (status, _) = call(&router, anonymous).await;
        if role == "public" {
            assert_ne!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {route} is documented public"
            );
            continue;
        }
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {route} needs a token"
        );
        let enforced = crate::app::role_name(required_role(&method, &route));
        assert_eq!(enforced, role, "{method} {route}");
    }
}

#[tokio::test]
async fn metrics_need_a_viewer_unless_configured_public() {
    let mem = memory_fixture();
    let router = api(&mem.fx);
    let anonymous = || {
        let mut r = request(Method::GET, "/metrics", Body::empty());
        r.headers_mut().remove(header::AUTHORIZATION);
        r
    };
    assert_eq!(
        call_text(&router, anonymous()).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, text) = call_text(&router, request(Method::GET, "/metrics", Body::empty())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("# TYPE verge_api_requests_total counter"),
        "{text}"
    );

    let open = crate::testing::memory_fixture_with(|s| s.public_metrics = true);
    let router = api(&open.fx);
    assert_eq!(call_text(&router, anonymous()).await.0, StatusCode::OK);
}

async fn call_text(router: &Router, r: HttpRequest<Body>) -> (StatusCode, String) {
    let (status, body) = send(router, r).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}
