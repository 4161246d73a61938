//! Operator accounts end to end over HTTPS, against the real controller
//! process: what each role may do, revoked and expired tokens, sign-in
//! throttling per source address, the audit trail of a scripted series of
//! changes (kept across a restart), a user added while it is stopped, and
//! who may download an artifact.

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use verge_tests::api::{Api, Reply};
use verge_tests::cluster::binary;
use verge_tests::tls::client_config;
use verge_tests::workload::deploy_hello;
use verge_tests::{Cluster, ClusterOptions, wait_for};

const PASSWORD: &str = "a long enough password";

async fn tls_cluster() -> Cluster {
    Cluster::start(ClusterOptions {
        tls: true,
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster starts")
}

async fn send(api: &Api, method: Method, path: &str, body: Value) -> Reply {
    let body = (!body.is_null()).then(|| body.to_string().into());
    api.request(method, path, body).await.expect("request")
}

async fn add_user(api: &Api, name: &str, role: &str) {
    let reply = send(
        api,
        Method::POST,
        "/api/v1/users",
        json!({"name": name, "role": role, "password": PASSWORD}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

async fn login(api: &Api, user: &str, password: &str) -> Reply {
    send(
        &api.as_token(""),
        Method::POST,
        "/api/v1/login",
        json!({"user": user, "password": password}),
    )
    .await
}

async fn session(api: &Api, user: &str) -> Api {
    let reply = login(api, user, PASSWORD).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    api.as_token(reply.body["token"].as_str().expect("token"))
}

/// (actor, method, target, status) of the audit entries, oldest first.
async fn audit_of(api: &Api, actor: &str) -> Vec<(String, String, String, u16)> {
    let page = api
        .get(&format!("/api/v1/audit?actor={actor}&limit=1000"))
        .await
        .expect("audit");
    let mut entries: Vec<_> = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or("-").to_owned(),
                e["method"].as_str().unwrap_or_default().to_owned(),
                e["target"].as_str().unwrap_or_default().to_owned(),
                u16::try_from(e["status"].as_u64().unwrap_or_default()).unwrap_or_default(),
            )
        })
        .collect();
    entries.reverse();
    entries
}

#[tokio::test]
async fn roles_bound_each_account_and_every_change_is_audited() {
    let mut cluster = tls_cluster().await;
    let admin = cluster.api.clone();
    add_user(&admin, "vera", "viewer").await;
    add_user(&admin, "otto", "operator").await;
    let viewer = session(&admin, "vera").await;
    let operator = session(&admin, "otto").await;

    // A viewer reads and is told which role a change needs.
    assert_eq!(
        send(&viewer, Method::GET, "/api/v1/services", Value::Null)
            .await
            .status,
        StatusCode::OK
    );
    let refused = send(&viewer, Method::DELETE, "/api/v1/services/web", Value::Null).await;
    assert_eq!(
        (refused.status, refused.error_code()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("operator")
    );

    // An operator manages tokens and nodes, not trust or users.
    let token = send(
        &operator,
        Method::POST,
        "/api/v1/tokens",
        json!({"region": "eu-west"}),
    )
    .await;
    assert_eq!(token.status, StatusCode::CREATED, "{}", token.body);
    let cordon = send(
        &operator,
        Method::POST,
        "/api/v1/nodes/nobody/cordon",
        Value::Null,
    )
    .await;
    assert_eq!(cordon.status, StatusCode::NOT_FOUND);
    for (method, path) in [
        (Method::PUT, "/api/v1/trust"),
        (Method::POST, "/api/v1/users"),
        (Method::POST, "/api/v1/nodes/nobody/revoke"),
    ] {
        let reply = send(&operator, method.clone(), path, json!({})).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("admin")
        );
    }

    // A short-lived token stops working by itself; a revoked one at once.
    let short = send(
        &operator,
        Method::POST,
        "/api/v1/api-tokens",
        json!({"name": "ci", "ttl_secs": 1}),
    )
    .await;
    assert_eq!(short.status, StatusCode::CREATED, "{}", short.body);
    let short = operator.as_token(short.body["token"].as_str().expect("token"));
    wait_for(
        "the 1 s token to expire",
        Duration::from_secs(20),
        || async {
            let reply = send(&short, Method::GET, "/api/v1/whoami", Value::Null).await;
            match reply.status {
                StatusCode::UNAUTHORIZED => Ok(()),
                other => Err(format!("{other}")),
            }
        },
    )
    .await;
    let long = send(
        &operator,
        Method::POST,
        "/api/v1/api-tokens",
        json!({"name": "deploy"}),
    )
    .await;
    let long_api = operator.as_token(long.body["token"].as_str().expect("token"));
    assert_eq!(
        send(&long_api, Method::GET, "/api/v1/whoami", Value::Null)
            .await
            .status,
        StatusCode::OK
    );
    let id = long.body["id"].as_str().expect("id");
    let revoke = send(
        &operator,
        Method::DELETE,
        &format!("/api/v1/api-tokens/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(revoke.status, StatusCode::NO_CONTENT);
    let after = send(&long_api, Method::GET, "/api/v1/whoami", Value::Null).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert!(
        after.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked")
    );

    // The operator's trail, in order, survives a restart.
    cluster
        .start_controller()
        .await
        .expect("controller restarts");
    let s = |m: &str, t: &str, st: u16| ("otto".to_owned(), m.to_owned(), t.to_owned(), st);
    let expected = vec![
        s("POST", "login", 201),
        s("POST", "tokens", 201),
        s("POST", "nodes/nobody/cordon", 404),
        s("PUT", "trust", 403),
        s("POST", "users", 403),
        s("POST", "nodes/nobody/revoke", 403),
        s("POST", "api-tokens", 201),
        s("POST", "api-tokens", 201),
        s("DELETE", &format!("api-tokens/{id}"), 204),
    ];
    assert_eq!(audit_of(&admin, "otto").await, expected);
    // The expired and revoked tokens' refusals are there too, unattributed.
    let refused = admin
        .get("/api/v1/audit?target=whoami")
        .await
        .expect("audit");
    assert!(
        refused["entries"].as_array().is_some_and(|e| e.len() >= 2
            && e.iter()
                .all(|e| e["status"] == 401 && e["source"] == "127.0.0.1")),
        "{refused}"
    );
}

#[tokio::test]
async fn failed_sign_ins_slow_down_one_source_and_not_another() {
    let cluster = tls_cluster().await;
    let admin = cluster.api.clone();
    add_user(&admin, "otto", "operator").await;
    let ca = cluster.ca_pem.as_deref();
    let here = admin.from_address(IpAddr::from([127, 0, 0, 1]), ca);
    let elsewhere = admin.from_address(IpAddr::from([127, 0, 0, 2]), ca);
    for _ in 0..5 {
        let reply = login(&here, "otto", "not the password").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let (reply, headers) = here
        .as_token("")
        .request_with(
            Method::POST,
            "/api/v1/login",
            Some(
                json!({"user": "otto", "password": PASSWORD})
                    .to_string()
                    .into(),
            ),
            &[],
        )
        .await
        .expect("request");
    assert_eq!(
        (reply.status, reply.error_code()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")
    );
    assert!(headers.get("retry-after").is_some());
    // The locked-out source locks out nobody else.
    let other = login(&elsewhere, "otto", PASSWORD).await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.body);
}

#[tokio::test]
async fn a_user_added_to_a_stopped_controller_signs_in() {
    let mut cluster = tls_cluster().await;
    let config = cluster.controller_config();
    let add = |name: &str| {
        let mut child = Command::new(binary("central-controller"))
            .args([
                "user",
                "add",
                "--role",
                "operator",
                "--password-file",
                "-",
                "--name",
                name,
            ])
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("user add runs");
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write as _;
            stdin
                .write_all(format!("{PASSWORD}\n").as_bytes())
                .expect("password");
        }
        child.wait_with_output().expect("user add ends")
    };
    let running = add("olga");
    assert!(!running.status.success());
    let message = String::from_utf8_lossy(&running.stderr);
    assert!(message.contains("is the controller running"), "{message}");

    cluster.stop_controller();
    let stopped = add("olga");
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    cluster.start_controller().await.expect("controller starts");
    let olga = session(&cluster.api, "olga").await;
    let me = olga.get("/api/v1/whoami").await.expect("whoami");
    assert_eq!(
        (me["user"].as_str(), me["role"].as_str()),
        (Some("olga"), Some("operator"))
    );
}

/// GETs `/api/v1/artifacts/{digest}` with `client`, optionally as `token`;
/// returns the status and the number of bytes received.
async fn fetch(
    client: &reqwest::Client,
    base: &str,
    digest: &str,
    token: Option<&str>,
) -> (StatusCode, usize) {
    let mut request = client.get(format!("{base}/api/v1/artifacts/{digest}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET artifact");
    let status = response.status();
    (status, response.bytes().await.map(|b| b.len()).unwrap_or(0))
}

#[tokio::test]
async fn artifacts_go_only_to_operators_and_the_nodes_that_run_them() {
    let mut cluster = tls_cluster().await;
    let admin = cluster.api.clone();
    let ca = cluster.ca_pem.clone().expect("CA");
    let (_, token) = admin.create_token("eu-west", 1).await.expect("token");
    let broker = cluster.mqtt_addr;
    cluster
        .add_enrolling_agent("edge-a", "eu-west", &token, broker)
        .await
        .expect("agent enrolls");
    // The agent downloads the artifact with its client certificate.
    deploy_hello(&admin, "hello", "mine", "eu-west").await;
    let service = admin.service("hello").await.expect("service");
    let release = service["spec"]["release"].as_str().expect("release");
    let details = admin
        .get(&format!("/api/v1/releases/{release}"))
        .await
        .expect("release");
    let running = details["artifacts"][0]["sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("the release names its artifact: {details}"))
        .to_owned();
    let other = admin
        .upload_artifact(b"not for any node".to_vec())
        .await
        .expect("upload");

    add_user(&admin, "vera", "viewer").await;
    let anonymous = verge_tests::tls::http_client(Some(&ca)).expect("client");
    let base = &admin.base;
    let (status, _) = fetch(&anonymous, base, &running, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no credentials");
    let vera_token = login(&admin, "vera", PASSWORD).await.body["token"]
        .as_str()
        .map(str::to_owned)
        .expect("token");
    let (status, _) = fetch(&anonymous, base, &running, Some(&vera_token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a viewer");
    let admin_token =
        std::fs::read_to_string(cluster.controller_data.join("admin-token")).expect("admin token");
    let (status, bytes) = fetch(&anonymous, base, &running, Some(admin_token.trim())).await;
    assert_eq!(status, StatusCode::OK, "an operator or admin");
    assert!(bytes > 0);

    // The node, by its certificate: what it runs, and nothing else.
    let data_dir = cluster.agent("edge-a").data_dir.clone();
    let cert = std::fs::read_to_string(data_dir.join("tls/cert.pem")).expect("cert.pem");
    let key = std::fs::read_to_string(data_dir.join("tls/key.pem")).expect("key.pem");
    let node = reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(Some(&ca), Some((&cert, &key))).expect("tls"))
        .build()
        .expect("client");
    let (status, node_bytes) = fetch(&node, base, &running, None).await;
    assert_eq!((status, node_bytes), (StatusCode::OK, bytes));
    let (status, _) = fetch(&node, base, &other, None).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an artifact the node does not run"
    );
}
