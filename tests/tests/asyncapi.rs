//! The AsyncAPI document of the MQTT surface against the AsyncAPI
//! Initiative's own parser (`@asyncapi/parser`, run by
//! `.ci/asyncapi-validate.cjs`): the committed `docs/asyncapi.json` and the
//! document a running controller serves are valid AsyncAPI 3.0 with no
//! error, and a broken copy is refused, so the check can fail.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use verge_tests::require::{Tool, missing, node_path};
use verge_tests::{Cluster, ClusterOptions};

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Runs the validator on `document`; its success and everything it printed.
fn validate(document: &Path) -> (bool, String) {
    let parser = Tool::AsyncApiParser.path().expect("found");
    let node = node_path().expect("found with the parser");
    let mut child = std::process::Command::new(node)
        .arg(repo().join(".ci/asyncapi-validate.cjs"))
        .arg(parser)
        .arg(document)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node starts");
    // Bounded: the parser takes about a second; a hang is a failure.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the AsyncAPI validator did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_committed_document_is_valid_asyncapi_and_a_broken_one_is_not() {
    if missing(Tool::AsyncApiParser) {
        return;
    }
    let committed = repo().join("docs/asyncapi.json");
    let (ok, output) = validate(&committed);
    assert!(ok, "docs/asyncapi.json is not valid AsyncAPI:\n{output}");
    assert!(output.contains("valid AsyncAPI 3.0.0"), "{output}");

    // An operation sending a message of another channel, and a channel
    // parameter left undescribed: both are errors to the parser.
    let mut broken: Value =
        serde_json::from_str(&std::fs::read_to_string(&committed).expect("read")).expect("JSON");
    broken["operations"]["publishStatus"]["messages"] =
        serde_json::json!([{ "$ref": "#/channels/desired/messages/delivery" }]);
    broken["channels"]["status"]["parameters"] = serde_json::json!({});
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken.json");
    std::fs::write(&path, broken.to_string()).expect("write");
    let (ok, output) = validate(&path);
    assert!(!ok, "the validator accepted a broken document:\n{output}");
    assert!(
        output.contains("asyncapi3-operation-messages-from-referred-channel"),
        "{output}"
    );
    assert!(output.contains("asyncapi3-channel-parameters"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_a_controller_serves_is_the_committed_one_and_valid() {
    if missing(Tool::AsyncApiParser) {
        return;
    }
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let http = cluster.api.http().clone();
    let get = |path: &str| {
        let http = http.clone();
        let url = format!("{}{path}", cluster.api.base);
        async move {
            let reply = http.get(url).send().await.expect("the API answers");
            let status = reply.status().as_u16();
            (status, reply.text().await.expect("a body"))
        }
    };
    let (status, served) = get("/api/v1/asyncapi.json").await;
    assert_eq!(status, 200, "{served}");
    let committed = std::fs::read_to_string(repo().join("docs/asyncapi.json")).expect("read");
    assert!(
        served == committed,
        "the controller serves another AsyncAPI document than docs/asyncapi.json"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("served.json");
    std::fs::write(&path, &served).expect("write");
    let (ok, output) = validate(&path);
    assert!(ok, "the served document is not valid AsyncAPI:\n{output}");

    let (status, schema) = get("/api/v1/schemas/telemetry.json").await;
    assert_eq!(status, 200, "{schema}");
    let committed =
        std::fs::read_to_string(repo().join("docs/schemas/telemetry.json")).expect("read");
    assert!(schema == committed, "the served telemetry schema differs");
    let (status, error) = get("/api/v1/schemas/nothing.json").await;
    assert_eq!(status, 404, "{error}");
    let error: Value = serde_json::from_str(&error).expect("the error body");
    assert_eq!(error["error"]["code"], "not_found", "{error}");
}
