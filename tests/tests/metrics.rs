//! `GET /metrics` from a real controller with a real agent: a viewer's
//! token reads it, nobody else; `promtool check metrics` (Prometheus's own
//! parser and linter) accepts it; and the figures count what happened.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use reqwest::StatusCode;
use serde_json::json;
use verge_tests::require::{Tool, missing};
use verge_tests::workload::deploy_hello;
use verge_tests::{Cluster, ClusterOptions};

/// Sample lines as "name{labels}" → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or_else(|| {
        let names: Vec<&String> = samples.keys().collect();
        panic!("no series {series} among {names:?}")
    })
}

#[tokio::test]
async fn a_viewer_scrapes_metrics_that_promtool_accepts_and_that_count_the_fleet() {
    if missing(Tool::Promtool) {
        return;
    }
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    cluster.add_agent("edge-a", "eu-west").await.expect("agent");
    deploy_hello(&cluster.api, "hello", "metrics", "eu-west").await;

    let admin = cluster.api.clone();
    let user = json!({"name": "grafana", "role": "viewer", "password": "a long enough password"});
    let created = admin
        .request(
            reqwest::Method::POST,
            "/api/v1/users",
            Some(user.to_string().into()),
        )
        .await
        .expect("create user");
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let login = admin
        .as_token("")
        .request(
            reqwest::Method::POST,
            "/api/v1/login",
            Some(
                json!({"user": "grafana", "password": "a long enough password"})
                    .to_string()
                    .into(),
            ),
        )
        .await
        .expect("login");
    let token = login.body["token"].as_str().expect("token").to_owned();

    let url = format!("{}/metrics", admin.base);
    let anonymous = admin.http().get(&url).send().await.expect("GET");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let response = admin
        .http()
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    // What a Prometheus server asks for.
    let openmetrics = admin
        .http()
        .get(&url)
        .bearer_auth(&token)
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .expect("GET /metrics");
    let content_type = openmetrics.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(openmetrics.text().await.expect("body").ends_with("# EOF\n"));

    let path = Tool::Promtool.path().expect("promtool");
    let mut promtool = Command::new(path)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let checked = promtool.wait_with_output().expect("promtool ends");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let s = samples(&text);
    assert_eq!(
        value(&s, r#"verge_nodes{region="eu-west",state="healthy"}"#),
        1.0
    );
    assert_eq!(value(&s, "verge_services"), 1.0);
    assert!(value(&s, r#"verge_agent_messages_received_total{kind="status"}"#) >= 1.0);
    assert!(
        value(
            &s,
            r#"verge_agent_messages_received_total{kind="presence"}"#
        ) >= 1.0
    );
    assert!(value(&s, r#"verge_signature_verifications_total{result="ok"}"#) >= 2.0);
    assert!(value(&s, r#"verge_mqtt_messages_published_total{kind="desired"}"#) >= 1.0);
    assert!(value(&s, "verge_placement_duration_seconds_count") >= 1.0);
    assert!(value(&s, "verge_store_size_bytes") > 0.0);
    assert_eq!(value(&s, "verge_api_watchers"), 0.0);
    assert!(
        value(
            &s,
            r#"verge_api_requests_total{method="POST",route="/api/v1/login",status="201"}"#
        ) >= 1.0
    );
    assert!(
        value(
            &s,
            r#"verge_api_request_duration_seconds_count{route="/api/v1/login"}"#
        ) >= 1.0
    );
}
