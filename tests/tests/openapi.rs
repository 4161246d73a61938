//! The API against its own OpenAPI document: schemathesis generates requests
//! for every operation of `GET /api/v1/openapi.json` and sends them to a
//! live controller with a connected agent, a stored artifact, a signed
//! release and a running service. No answer may be a 5xx, every answer must
//! match the document (status, content type, body), and every operation of
//! the document must have been called.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use verge_tests::require::{Tool, missing};
use verge_tests::workload::{hello_artifact, hello_spec, wait_running};
use verge_tests::{Cluster, ClusterOptions};

/// What schemathesis checks on every answer.
const CHECKS: &str = "not_a_server_error,response_schema_conformance,\
                      status_code_conformance,content_type_conformance";

/// schemathesis's settings for single operations: a log tail is fetched
/// from the node, so a node that schemathesis itself revoked or drained
/// answers the documented `504 agent_unavailable`, the one 5xx allowed; the
/// watch stream is read for its first event only (it never ends); and the
/// admin's own token and account are kept out of reach (schemathesis reuses
/// ids it has seen in replies, and would revoke the token it tests with, or
/// delete the admin once it has created a second one).
const CONFIG: &str = r#"
[[operations]]
include-path-regex = "/logs$"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "504"]

[[operations]]
include-path = "/api/v1/watch"
max-stream-events = 1

[[operations]]
include-path = "/api/v1/api-tokens/{id}"
parameters = { "path.id" = "no-such-token" }

[[operations]]
include-path-regex = "^/api/v1/users/\\{name\\}(/role)?$"
parameters = { "path.name" = "nobody" }
"#;

/// Runs `st` with `args` against `schema`, as the admin, and returns its
/// exit status with everything it printed.
async fn schemathesis(
    st: &std::path::Path,
    config: &std::path::Path,
    schema: &str,
    token: &str,
    args: &[&str],
) -> (bool, String) {
    let mut command = tokio::process::Command::new(st);
    command
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(schema)
        .args(["--checks", CHECKS])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        // Bounded: at most this many cases per operation, one seed, so a
        // failure can be reproduced with the same command.
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "8", "--seed", "7", "--no-shrink"])
        // One worker: Python 3.11's parser is not thread-safe, and
        // hypothesis parses source while it generates ("AST constructor
        // recursion depth mismatch" with two).
        .args(["--workers", "1", "--request-timeout", "20"])
        .args(["--max-failures", "20"])
        .args(args)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "")
        // Its example database goes to the temporary directory, not the tree.
        .current_dir(config.parent().unwrap_or(config))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(240), command.output())
        .await
        .expect("schemathesis finishes within 4 minutes")
        .expect("schemathesis runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// (method, route, status) of every answer the controller counted.
fn answered(metrics: &str) -> Vec<(String, String, String)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("verge_api_requests_total{"))
        .filter_map(|l| l.rsplit_once('}').map(|(labels, _)| labels))
        .map(|labels| {
            let label = |name: &str| {
                labels
                    .split("\",")
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
                    .unwrap_or_default()
            };
            (label("method"), label("route"), label("status"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_to_its_openapi_document() {
    if missing(Tool::Schemathesis) {
        return;
    }
    let st = Tool::Schemathesis.path().expect("found");
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    cluster
        .add_agent("edge-a", "region-a")
        .await
        .expect("agent starts");
    let api = cluster.api.clone();

    // Fixtures: an artifact, a signed release of it and a running service,
    // so that reads find something and the examples name real objects.
    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    let reply = api
        .put_service("hello", &hello_spec(&artifact, "v1", 1, &["region-a"]))
        .await
        .expect("PUT");
    assert_eq!(reply.status, 201, "{}", reply.body);
    wait_running(&api, "hello", "v1").await;

    let document: Value = api.get("/api/v1/openapi.json").await.expect("document");
    let schema = format!("{}/api/v1/openapi.json", api.base);
    let token = api.token().to_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).expect("write schemathesis.toml");
    let started = Instant::now();

    // Every operation but sign-in: failed sign-ins throttle the client's
    // address, the admin token's requests included, so it runs last, alone.
    let (passed, output) = schemathesis(
        &st,
        &config,
        &schema,
        &token,
        &["--exclude-path", "/api/v1/login"],
    )
    .await;
    assert!(
        passed,
        "schemathesis found answers that break the document:\n{output}\n\ncontroller log:\n{}",
        cluster.controller_log()
    );
    let (passed, login_output) = schemathesis(
        &st,
        &config,
        &schema,
        &token,
        &["--include-path", "/api/v1/login"],
    )
    .await;
    assert!(
        passed,
        "schemathesis on POST /api/v1/login:\n{login_output}"
    );
    eprintln!(
        "schemathesis ran for {:.0} s\n{output}",
        started.elapsed().as_secs_f64()
    );

    // Every operation of the document was called, and none answered 5xx
    // (but the log routes' 504, above). The failed sign-ins throttled 127.0.0.1, this token included: the
    // metrics are read from another loopback address.
    let elsewhere = api.from_address([127, 0, 0, 2].into(), None);
    let text = verge_tests::wait_for(
        "the metrics to be readable",
        Duration::from_secs(30),
        || async {
            let response = elsewhere
                .http()
                .get(format!("{}/metrics", api.base))
                .bearer_auth(&token)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match response.status().as_u16() {
                200 => response.text().await.map_err(|e| e.to_string()),
                other => Err(format!("GET /metrics answered {other}")),
            }
        },
    )
    .await;
    let answers = answered(&text);
    let server_errors: Vec<_> = answers
        .iter()
        .filter(|(_, route, status)| {
            status.starts_with('5') && !(status == "504" && route.ends_with("/logs"))
        })
        .collect();
    assert!(server_errors.is_empty(), "5xx answers: {server_errors:?}");
    let called: BTreeSet<(String, String)> = answers
        .iter()
        .map(|(m, r, _)| (m.clone(), r.clone()))
        .collect();
    let mut never = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            let key = (method.to_uppercase(), path.clone());
            if !called.contains(&key) {
                never.push(key);
            }
        }
    }
    assert!(
        never.is_empty(),
        "operations of the document never called: {never:?}\n{output}"
    );
}
