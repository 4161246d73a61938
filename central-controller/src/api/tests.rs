//! Handler tests through the real router and a sled store in a temp dir.

use axum::http::{Method, Request as HttpRequest, StatusCode, header};
use serde_json::Value;

use http_body_util::BodyExt as _;

use super::*;
use crate::testing::{Fixture, fixture};

pub(super) const TOKEN: &str = "test-token";

pub(super) fn api(fx: &Fixture) -> Router {
    fx.app.install_admin_token(TOKEN).expect("admin token");
    router(Arc::clone(&fx.app))
}

pub(super) fn request(method: Method, uri: &str, body: impl Into<Body>) -> HttpRequest<Body> {
    HttpRequest::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("request")
}

pub(super) async fn send(
    router: &Router,
    request: HttpRequest<Body>,
) -> (StatusCode, bytes::Bytes) {
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

pub(super) fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("JSON body")
}

async fn upload(router: &Router, bytes: &'static [u8]) -> (StatusCode, Value) {
    let (status, body) = send(router, request(Method::POST, "/api/v1/artifacts", bytes)).await;
    (status, json(&body))
}

#[tokio::test]
async fn health_is_public_and_everything_else_needs_the_token() {
    let fx = fixture();
    let router = api(&fx);
    let mut anonymous = request(Method::GET, "/healthz", Body::empty());
    anonymous.headers_mut().remove(header::AUTHORIZATION);
    let (status, body) = send(&router, anonymous).await;
    assert_eq!(
        (status, json(&body)),
        (StatusCode::OK, serde_json::json!({"status": "ok"}))
    );

    for token in [None, Some("Bearer wrong"), Some(TOKEN)] {
        let mut r = request(Method::GET, "/api/v1/services", Body::empty());
        r.headers_mut().remove(header::AUTHORIZATION);
        if let Some(t) = token {
            r.headers_mut()
                .insert(header::AUTHORIZATION, t.parse().expect("header"));
        }
        let (status, body) = send(&router, r).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(json(&body)["error"]["code"], "unauthorized");
    }
    let (status, body) = send(
        &router,
        request(Method::GET, "/api/v1/services", Body::empty()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body), serde_json::json!({"services": []}));
}

#[tokio::test]
async fn service_errors_name_their_fields() {
    let fx = fixture();
    let router = api(&fx);
    let digest = fx.release("web", b"#!/bin/true\n", &[]).await;

    let put = |body: Value| request(Method::PUT, "/api/v1/services/web", body.to_string());
    let (status, body) = send(
        &router,
        put(serde_json::json!({"release": digest, "replicas": 1, "colour": "red"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = &json(&body)["error"];
    assert_eq!(error["code"], "invalid_json");
    assert_eq!(error["field"], "colour");
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("colour")
    );

    let (status, body) = send(
        &router,
        put(serde_json::json!({"release": digest, "replicas": 1, "config": {"bad-name": "x"}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&body)["error"]["code"], "invalid_field");
    assert_eq!(json(&body)["error"]["field"], "config.bad-name");

    let (status, body) = send(
        &router,
        put(serde_json::json!({"release": "abc", "replicas": 1})),
    )
    .await;
    assert_eq!(
        (status, json(&body)["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, Value::from("release"))
    );

    let huge = format!("{{\"release\":\"{}\"}}", "a".repeat(MAX_JSON_BYTES));
    let (status, body) = send(&router, request(Method::PUT, "/api/v1/services/web", huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(&body)["error"]["code"], "payload_too_large");

    let (status, body) = send(
        &router,
        put(serde_json::json!({"release": digest, "replicas": 2, "regions": ["eu"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let view = json(&body);
    assert_eq!(view["name"], "web");
    assert_eq!(view["revision"], 1);
    assert_eq!(view["version"], "1.0.0");
    assert_eq!(view["spec"]["regions"], serde_json::json!(["eu"]));
    assert_eq!(view["replicas"][1]["state"], "unplaced");
    assert!(view["replicas"][1]["reason"].as_str().is_some());

    let (status, _) = send(
        &router,
        put(serde_json::json!({"release": digest, "replicas": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = send(
        &router,
        request(Method::GET, "/api/v1/services/web", Body::empty()),
    )
    .await;
    assert_eq!(
        (status, json(&body)["revision"].clone()),
        (StatusCode::OK, Value::from(2))
    );

    let (status, _) = send(
        &router,
        request(Method::DELETE, "/api/v1/services/web", Body::empty()),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = send(
        &router,
        request(Method::DELETE, "/api/v1/services/web", Body::empty()),
    )
    .await;
    assert_eq!(
        (status, json(&body)["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, Value::from("not_found"))
    );
    let (status, _) = send(
        &router,
        request(Method::GET, "/api/v1/nodes/nobody", Body::empty()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn artifacts_upload_once_and_download_with_ranges() {
    let fx = fixture();
    let router = api(&fx);
    let (status, first) = upload(&router, b"0123456789").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(first["size"], 10);
    let (status, again) = upload(&router, b"0123456789").await;
    assert_eq!((status, &again), (StatusCode::OK, &first));

    // The fixture allows 1024 bytes.
    let (status, body) = send(
        &router,
        request(Method::POST, "/api/v1/artifacts", vec![0u8; 2000]),
    )
    .await;
    assert_eq!(
        (status, json(&body)["error"]["code"].clone()),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            Value::from("payload_too_large")
        )
    );

    let digest = first["sha256"].as_str().expect("digest");
    let mut ranged = HttpRequest::builder()
        .uri(format!("/api/v1/artifacts/{digest}"))
        .header(header::RANGE, "bytes=2-5")
        .body(Body::empty())
        .expect("request");
    let (status, body) = send(&router, ranged).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::PARTIAL_CONTENT, &b"2345"[..])
    );
    ranged = HttpRequest::builder()
        .uri(format!("/api/v1/artifacts/{digest}"))
        .body(Body::empty())
        .expect("request");
    let (status, body) = send(&router, ranged).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"0123456789"[..]));

    let unknown = Sha256Digest::of(b"nope");
    let r = HttpRequest::builder()
        .uri(format!("/api/v1/artifacts/{unknown}"))
        .body(Body::empty())
        .expect("request");
    let (status, body) = send(&router, r).await;
    assert_eq!(
        (status, json(&body)["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, Value::from("not_found"))
    );
    let r = HttpRequest::builder()
        .uri("/api/v1/artifacts/not-a-digest")
        .body(Body::empty())
        .expect("request");
    let (status, body) = send(&router, r).await;
    assert_eq!(
        (status, json(&body)["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, Value::from("invalid_field"))
    );
}

#[tokio::test]
async fn releases_are_accepted_only_from_allowed_publishers_with_uploaded_artifacts() {
    use verge_shared::trust::{MediaType, Release, ReleaseArtifact, payload_type};
    let fx = fixture();
    let router = api(&fx);
    let (_, artifact) = upload(&router, b"#!/bin/true\n").await;
    let release = |sha256: &str, size: u64| Release {
        schema_version: 1,
        service: verge_shared::ServiceName::new("web").expect("name"),
        version: semver::Version::new(2, 0, size),
        issued_at: verge_shared::Timestamp::now(),
        artifacts: vec![ReleaseArtifact {
            sha256: sha256.parse().expect("digest"),
            size,
            media_type: MediaType::Executable,
        }],
        run: Default::default(),
        resources: Default::default(),
    };
    let sha = artifact["sha256"].as_str().expect("sha").to_owned();
    let post = |body: Vec<u8>| request(Method::POST, "/api/v1/releases", body);

    let good = fx
        .publisher
        .sign_json(payload_type::RELEASE, &release(&sha, 12));
    let (status, body) = send(&router, post(good.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{}", json(&body));
    let digest = json(&body)["digest"].as_str().expect("digest").to_owned();
    assert_eq!(json(&body)["publisher"], "test publisher");
    let (status, _) = send(&router, post(good)).await;
    assert_eq!(status, StatusCode::OK, "the same release twice is not new");
    let (status, body) = send(
        &router,
        request(
            Method::GET,
            &format!("/api/v1/releases/{digest}"),
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(
        (status, json(&body)["version"].clone()),
        (StatusCode::OK, Value::from("2.0.12"))
    );

    // Signed by a key the trust bundle does not list. (Another payload: the
    // same payload re-signed is the same release, already stored.)
    let stranger = verge_shared::SigningKey::generate().expect("key").0;
    let (status, body) = send(
        &router,
        post(stranger.sign_json(payload_type::RELEASE, &release(&sha, 11))),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&body)["error"]["field"], "release");
    assert!(
        json(&body)["error"]["message"]
            .as_str()
            .expect("message")
            .contains("not signed by any publisher"),
        "{}",
        json(&body)
    );
    // The artifact was never uploaded, or its size is wrong.
    let missing = verge_shared::Sha256Digest::of(b"nope").to_string();
    for (sha, size) in [(missing.as_str(), 12), (sha.as_str(), 13)] {
        let (status, body) = send(
            &router,
            post(
                fx.publisher
                    .sign_json(payload_type::RELEASE, &release(sha, size)),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json(&body)["error"]["field"], "artifacts[0]");
    }
    let (status, body) = send(
        &router,
        request(Method::GET, "/api/v1/trust", Body::empty()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["publishers"][0]["name"], "test publisher");
}

#[tokio::test]
async fn json_routes_refuse_other_media_types_by_name() {
    let fx = fixture();
    let router = api(&fx);
    for (content_type, sent) in [
        (Some("text/plain"), "\"text/plain\""),
        (
            Some("application/x-www-form-urlencoded"),
            "\"application/x-www-form-urlencoded\"",
        ),
        (None, "no content type"),
    ] {
        for (method, uri) in [
            (Method::PUT, "/api/v1/services/web"),
            (Method::POST, "/api/v1/tokens"),
            (Method::POST, "/api/v1/enroll"),
        ] {
            let mut builder = HttpRequest::builder()
                .method(method.clone())
                .uri(uri)
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
            if let Some(t) = content_type {
                builder = builder.header(header::CONTENT_TYPE, t);
            }
            let (status, body) =
                send(&router, builder.body(Body::from("{}")).expect("request")).await;
            assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{method} {uri}");
            let error = &json(&body)["error"];
            assert_eq!(error["code"], "unsupported_media_type");
            let message = error["message"].as_str().expect("message");
            assert!(
                message.contains("application/json") && message.contains(sent),
                "{message}"
            );
        }
    }
    // Parameters and case do not matter.
    let put = HttpRequest::builder()
        .method(Method::PUT)
        .uri("/api/v1/services/web")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "Application/JSON; charset=utf-8")
        .body(Body::from("{}"))
        .expect("request");
    let (status, body) = send(&router, put).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "read as JSON: {body:?}");
}

#[tokio::test]
async fn a_nodes_telemetry_is_served_oldest_first_with_the_cpu_use_between() {
    let mem = crate::testing::memory_fixture();
    let router = api(&mem.fx);
    let key = verge_shared::SigningKey::generate().expect("key").0;
    let start = mem.fx.app.now();
    mem.fx.app.ingest(
        "verge/v1/agents/edge-a/presence",
        &crate::testing::presence(&key, "edge-a", "eu"),
        start,
    );
    let get = |uri: &str| request(Method::GET, uri, Body::empty());

    // Known, but nothing sent yet.
    let (status, body) = send(&router, get("/api/v1/nodes/edge-a/telemetry")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json(&body),
        serde_json::json!({"node": "edge-a", "interval_seconds": null, "samples": []})
    );

    for (seq, secs, cpu_millis) in [(1, 0, 1_000), (2, 30, 1_300)] {
        let at = start.saturating_add(std::time::Duration::from_secs(secs));
        mem.fx.app.ingest(
            "verge/v1/telemetry/eu/edge-a",
            &crate::testing::telemetry("edge-a", "eu", seq, at, cpu_millis, 60 + secs),
            start,
        );
    }
    let (status, body) = send(&router, get("/api/v1/nodes/edge-a/telemetry")).await;
    assert_eq!(status, StatusCode::OK);
    let view = json(&body);
    assert_eq!(view["node"], "edge-a");
    assert_eq!(view["interval_seconds"], 30);
    let samples = view["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 2);
    let mut keys: Vec<&str> = samples[0]
        .as_object()
        .expect("a sample")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "agent_cpu_percent",
            "agent_cpu_seconds",
            "agent_rss_bytes",
            "agent_uptime_seconds",
            "at",
            "cache_bytes",
            "disk_free_bytes",
            "host_cpu_percent",
            "memory_available_bytes",
            "outbox_dropped",
            "outbox_queued",
            "seq",
            "workloads"
        ]
    );
    assert_eq!(
        samples[0]["agent_cpu_percent"],
        Value::Null,
        "nothing before it"
    );
    assert_eq!(samples[1]["agent_cpu_percent"], 1.0, "300 ms in 30 s");
    assert_eq!(samples[1]["host_cpu_percent"], 25.0);
    assert_eq!(samples[1]["seq"], 2);
    assert_eq!(
        samples[1]["at"],
        start
            .saturating_add(std::time::Duration::from_secs(30))
            .to_string()
    );
    assert_eq!(samples[1]["agent_rss_bytes"], 20 << 20);

    for unknown in [
        "/api/v1/nodes/edge-z/telemetry",
        "/api/v1/nodes/no%20such/telemetry",
    ] {
        let (status, body) = send(&router, get(unknown)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
        assert_eq!(json(&body)["error"]["code"], "not_found");
    }
}
