//! Every ```json and ```toml example in README.md and docs/ is exercised
//! against the real code, so the documentation cannot drift from what Verge
//! accepts and answers.
//!
//! A marker comment on the line before each block says what it is:
//!
//! - `<!-- example: request PUT /api/v1/services/{name} -->`: a request body,
//!   sent to a real controller, which must accept it;
//! - `<!-- example: response <METHOD> <route> -->` (and `response error`):
//!   every key of the example (recursively, for objects) must be in the
//!   real response of that route;
//! - `<!-- example: response audit entry -->`: its keys must be in the
//!   newest entry of the real audit log;
//! - `<!-- example: release contents -->`: the `run` and `resources` of a
//!   release, signed and uploaded to a real controller, which must accept it;
//! - `<!-- example: document <Type> -->`: a protocol document, parsed as the
//!   `verge-shared` type with its keys found in a real one;
//! - `<!-- example: controller config -->`: TOML tables added to a minimal
//!   `controller.toml`, which the controller's own parser must accept;
//! - `<!-- example: release spec -->`, `<!-- example: trust bundle spec -->`:
//!   TOML signed by the real `verge-admin`.
//!
//! Placeholders (`"<digest>"`, or any string `"<...>"` in a document) are
//! replaced by real values before use.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};
use verge_shared::messages::{Assignment, Delivery};
use verge_shared::{Envelope, ServiceName};
use verge_tests::api::Reply;
use verge_tests::trust::{Roles, delivery, sign_by};
use verge_tests::workload::{hello_artifact, hello_spec, wait_running};
use verge_tests::{Cluster, ClusterOptions, wait_for};

/// How long a condition of a real cluster may take.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Every kind of example the test knows how to exercise.
const KINDS: [&str; 21] = [
    "controller config",
    "request PUT /api/v1/services/{name}",
    "response error",
    "response audit entry",
    "response GET /api/v1/services/{name}",
    "response GET /api/v1/nodes/{id}",
    "response GET /api/v1/nodes/{id}/telemetry",
    "response GET /api/v1/events",
    "response GET /api/v1/alarms",
    "document Alarm",
    "document FleetEvent",
    "release contents",
    "document Envelope",
    "document Delivery",
    "document Assignment",
    "document Telemetry",
    "document AnnounceRequest",
    "telegraf config",
    "release spec",
    "trust bundle spec",
    "service file",
];

/// One fenced block of a Markdown file.
#[derive(Debug, Clone)]
struct Example {
    file: String,
    /// The line of the opening fence.
    line: usize,
    lang: String,
    marker: Option<String>,
    body: String,
}

impl Example {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{}: the example is not valid JSON: {e}", self.at()))
    }
}

/// Fails naming the example when the API refused it.
fn assert_accepted(example: &Example, reply: &Reply) {
    assert!(
        reply.status.is_success(),
        "{}: refused: HTTP {} {}",
        example.at(),
        reply.status,
        reply.body
    );
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("docs/ is readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut files = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut files);
    files.sort();
    files
}

/// Every ```json and ```toml block of README.md and docs/**/*.md.
fn examples() -> Vec<Example> {
    let mut out = Vec::new();
    for path in markdown_files() {
        let text = fs::read_to_string(&path).expect("readable");
        let file = path
            .strip_prefix(root())
            .unwrap_or(&path)
            .display()
            .to_string();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let fence = lines[i].trim_start();
            let Some(lang) = fence.strip_prefix("```") else {
                i += 1;
                continue;
            };
            let lang = lang.trim().to_owned();
            let start = i;
            let mut body = String::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                body.push_str(lines[i]);
                body.push('\n');
                i += 1;
            }
            i += 1;
            if lang != "json" && lang != "toml" {
                continue;
            }
            let marker = lines[..start]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .and_then(|l| {
                    l.trim()
                        .strip_prefix("<!-- example:")
                        .and_then(|m| m.strip_suffix("-->"))
                        .map(|m| m.trim().to_owned())
                });
            out.push(Example {
                file: file.clone(),
                line: start + 1,
                lang,
                marker,
                body,
            });
        }
    }
    out
}

fn of_kind(kind: &str) -> Vec<Example> {
    examples()
        .into_iter()
        .filter(|e| e.marker.as_deref() == Some(kind))
        .collect()
}

#[test]
fn every_json_and_toml_example_is_marked_with_a_known_kind() {
    let all = examples();
    assert!(all.len() >= 10, "found only {} examples", all.len());
    let mut problems = Vec::new();
    for e in &all {
        match &e.marker {
            None => problems.push(format!(
                "{}: ```{} block without a marker; put `<!-- example: KIND -->` on the line \
                 before it",
                e.at(),
                e.lang
            )),
            Some(kind) if !KINDS.contains(&kind.as_str()) => problems.push(format!(
                "{}: unknown example kind `{kind}`; teach tests/tests/docs_examples.rs to \
                 exercise it",
                e.at()
            )),
            Some(_) => {}
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nKnown kinds: {}",
        problems.join("\n"),
        KINDS.join(", ")
    );
}

#[test]
fn controller_config_examples_are_accepted_by_the_controller() {
    let examples = of_kind("controller config");
    assert!(!examples.is_empty(), "operators/accounts.md has one");
    for example in examples {
        let text = format!("data_dir = \"/var/lib/verge\"\n{}", example.body);
        if let Err(e) = central_controller::config::Config::parse(&text, &example.at(), |_| None) {
            panic!("{}: {e}", example.at());
        }
    }
}

// ---------------------------------------------------------------------------
// Keys and placeholders.

/// Checks that every key of `example` is in `real`, recursively for objects
/// (and for arrays, against all of the real array's elements together).
fn keys_in(example: &Value, real: &Value, path: &str, missing: &mut Vec<String>) {
    match (example, real) {
        (Value::Object(ex), Value::Object(re)) => {
            for (key, value) in ex {
                match re.get(key) {
                    Some(r) => keys_in(value, r, &format!("{path}.{key}"), missing),
                    None => missing.push(format!("{path}.{key}")),
                }
            }
        }
        (Value::Array(ex), Value::Array(re)) if !re.is_empty() => {
            let mut merged = serde_json::Map::new();
            for r in re {
                if let Value::Object(o) = r {
                    for (k, v) in o {
                        merged.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
            let merged = if merged.is_empty() {
                re[0].clone()
            } else {
                Value::Object(merged)
            };
            for (i, e) in ex.iter().enumerate() {
                keys_in(e, &merged, &format!("{path}[{i}]"), missing);
            }
        }
        _ => {}
    }
}

fn assert_keys_in(example: &Example, real: &Value) {
    let mut missing = Vec::new();
    keys_in(&example.json(), real, "", &mut missing);
    assert!(
        missing.is_empty(),
        "{} ({}): keys not in the real {}: {}\nreal: {real:#}",
        example.at(),
        example.marker.as_deref().unwrap_or(""),
        if example
            .marker
            .as_deref()
            .is_some_and(|m| m.starts_with("document"))
        {
            "document"
        } else {
            "response"
        },
        missing.join(", ")
    );
}

/// Replaces every placeholder string `"<...>"` in `example` by the value at
/// the same place in `real`.
fn fill(example: &Value, real: &Value) -> Value {
    match (example, real) {
        (Value::String(s), r) if s.starts_with('<') && s.ends_with('>') => r.clone(),
        (Value::Object(ex), Value::Object(re)) => Value::Object(
            ex.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        re.get(k).map_or_else(|| v.clone(), |r| fill(v, r)),
                    )
                })
                .collect(),
        ),
        (Value::Array(ex), Value::Array(re)) if !re.is_empty() => Value::Array(
            ex.iter()
                .enumerate()
                .map(|(i, v)| fill(v, &re[i.min(re.len() - 1)]))
                .collect(),
        ),
        (v, _) => v.clone(),
    }
}

/// `body` with every `"<digest>"` replaced by `digest`.
fn with_digest(body: &str, digest: &str) -> String {
    body.replace("\"<digest>\"", &format!("\"{digest}\""))
}

// ---------------------------------------------------------------------------
// Protocol documents.

#[test]
fn document_examples_parse_as_the_protocol_types() {
    let roles = Roles::generate();
    let release = json!({
        "schema_version": 1, "service": "hello", "version": "1.0.0",
        "issued_at": verge_shared::Timestamp::now(),
        "artifacts": [{"sha256": "00".repeat(32), "size": 1,
                       "media_type": "application/vnd.verge.executable"}],
    });
    let envelope: Envelope = sign_by(
        verge_shared::trust::payload_type::RELEASE,
        &release,
        &[&roles.publisher],
    );
    let digest = envelope.signed_digest().expect("a signed digest");
    let real_envelope = serde_json::to_value(&envelope).expect("json");
    let real_delivery: Value = serde_json::from_slice(&delivery(
        envelope.clone(),
        vec![envelope.clone()],
        Some(envelope.clone()),
    ))
    .expect("json");
    let real_assignment = serde_json::to_value(Assignment {
        service: ServiceName::new("hello").expect("name"),
        replica: 0,
        release: digest,
        rollback: true,
        config: BTreeMap::from([("MODE".to_owned(), "edge".to_owned())]),
    })
    .expect("json");

    let mut seen = 0;
    for (kind, real) in [
        ("document Envelope", &real_envelope),
        ("document Delivery", &real_delivery),
        ("document Assignment", &real_assignment),
    ] {
        for example in of_kind(kind) {
            seen += 1;
            assert_keys_in(&example, real);
            let filled = fill(&example.json(), real);
            let parsed = match kind {
                "document Envelope" => serde_json::from_value::<Envelope>(filled).map(|_| ()),
                "document Delivery" => serde_json::from_value::<Delivery>(filled).map(|_| ()),
                _ => serde_json::from_value::<Assignment>(filled).map(|_| ()),
            };
            if let Err(e) = parsed {
                panic!("{}: does not parse as a {kind}: {e}", example.at());
            }
        }
    }
    assert_eq!(seen, 3, "the protocol's three document examples");
}

/// The telemetry example parses as the agent's `Telemetry` and shows no
/// key the type does not have: what a consumer codes against is what the
/// agent sends.
#[test]
fn the_telemetry_example_is_a_telemetry_document() {
    let examples = of_kind("document Telemetry");
    assert_eq!(examples.len(), 1, "docs/protocol.md's telemetry example");
    for example in examples {
        let parsed: verge_shared::telemetry::Telemetry = serde_json::from_value(example.json())
            .unwrap_or_else(|e| panic!("{}: not a Telemetry document: {e}", example.at()));
        assert_eq!(
            parsed.schema_version,
            verge_shared::telemetry::TELEMETRY_SCHEMA_VERSION
        );
        assert_keys_in(&example, &serde_json::to_value(&parsed).expect("json"));
    }
}

/// The call-to-announce example is a consistent `AnnounceRequest` and
/// shows no key the type does not have.
#[test]
fn the_announce_example_is_an_announce_request() {
    use verge_shared::announce::AnnounceRequest;
    let examples = of_kind("document AnnounceRequest");
    assert_eq!(examples.len(), 1, "docs/protocol.md's announce example");
    for example in examples {
        let parsed: AnnounceRequest = serde_json::from_value(example.json())
            .unwrap_or_else(|e| panic!("{}: not an AnnounceRequest: {e}", example.at()));
        parsed
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", example.at()));
        assert_keys_in(&example, &serde_json::to_value(&parsed).expect("json"));
    }
}

/// The events example shows only fields an event record has (the events
/// themselves come from agents refusing attacks, in `attacks.rs`).
#[test]
fn the_events_example_has_the_fields_of_an_event_page() {
    use central_controller::app::{EventPage, EventRecord, EventSource, RecordKind};
    use verge_shared::alarms::{AlarmId, AlarmReport, Entity};
    use verge_shared::fleet::FleetEventKind;
    use verge_shared::messages::{EventKind, RejectReason};
    let node = verge_shared::AgentId::new("edge-a").expect("id");
    let record = EventRecord {
        id: 1,
        source: EventSource::Node,
        node: Some(node.clone()),
        region: Some(verge_shared::RegionId::new("eu-west").expect("region")),
        at: verge_shared::Timestamp::now(),
        received_at: verge_shared::Timestamp::now(),
        kind: RecordKind::Node(EventKind::DesiredStateRejected),
        reason: Some(RejectReason::BadSignature),
        generation: Some(verge_shared::Generation::new(7)),
        service: None,
        replica: None,
        release: None,
        alarm: None,
        actor: None,
        detail: "detail".into(),
    };
    let fleet = EventRecord {
        id: 2,
        source: EventSource::Controller,
        kind: RecordKind::Controller(FleetEventKind::AlarmRaised),
        reason: None,
        generation: None,
        service: Some(verge_shared::ServiceName::new("web").expect("name")),
        replica: Some(0),
        release: Some(verge_shared::Sha256Digest::of(b"release")),
        alarm: Some(AlarmReport {
            id: AlarmId::NodeOffline,
            entity: Entity::node(node),
        }),
        actor: Some("alice (token laptop)".into()),
        ..record.clone()
    };
    let page = EventPage {
        events: vec![record, fleet],
        next_after: Some(1),
    };
    let real = serde_json::to_value(&page).expect("json");
    let examples = of_kind("response GET /api/v1/events");
    assert_eq!(examples.len(), 1, "docs/api.md's events example");
    for example in examples {
        assert_keys_in(&example, &real);
    }
}

/// The alarms example shows only fields an alarm page has.
#[test]
fn the_alarms_example_has_the_fields_of_an_alarm_page() {
    let examples = of_kind("response GET /api/v1/alarms");
    assert_eq!(examples.len(), 1, "docs/api.md's alarms example");
    let page = central_controller::app::AlarmPage {
        alarms: vec![real_alarm()],
        next_after: Some(7),
    };
    let real = serde_json::to_value(&page).expect("json");
    for example in examples {
        assert_keys_in(&example, &real);
    }
}

/// An alarm with every optional field set.
fn real_alarm() -> verge_shared::alarms::Alarm {
    use verge_shared::alarms::{Acknowledgement, Alarm, AlarmId, AlarmState, Entity};
    let id = AlarmId::NodeOffline;
    let d = id.definition();
    let entity = Entity::node(verge_shared::AgentId::new("edge-a").expect("id"));
    Alarm {
        schema_version: verge_shared::alarms::ALARM_SCHEMA_VERSION,
        instance: 7,
        id,
        code: d.code.into(),
        title: d.title.into(),
        severity: d.severity,
        entity_type: d.entity_type,
        entity_instance: entity.instance(),
        entity,
        region: Some(verge_shared::RegionId::new("eu-west").expect("region")),
        state: AlarmState::Cleared,
        observer: d.observer,
        raised_at: verge_shared::Timestamp::now(),
        cleared_at: Some(verge_shared::Timestamp::now()),
        reason: "reason".into(),
        probable_cause: d.probable_cause.into(),
        repair: d.repair.into(),
        acknowledged: Some(Acknowledgement {
            by: "alice (token laptop)".into(),
            at: verge_shared::Timestamp::now(),
        }),
        suppressed: false,
    }
}

/// docs/alarms.md's documents parse as the real types, with their keys in
/// real ones.
#[test]
fn the_alarm_and_fleet_event_examples_are_documents() {
    let alarms = of_kind("document Alarm");
    assert!(!alarms.is_empty(), "docs/alarms.md's alarm examples");
    // Parsed, then written again: a key the type does not know is missing.
    for example in alarms {
        let parsed = serde_json::from_value::<verge_shared::alarms::Alarm>(example.json())
            .unwrap_or_else(|e| panic!("{}: not an Alarm: {e}", example.at()));
        assert_keys_in(&example, &serde_json::to_value(&parsed).expect("json"));
    }
    let events = of_kind("document FleetEvent");
    assert!(!events.is_empty(), "docs/alarms.md's fleet event examples");
    for example in events {
        let parsed = serde_json::from_value::<verge_shared::fleet::FleetEvent>(example.json())
            .unwrap_or_else(|e| panic!("{}: not a FleetEvent: {e}", example.at()));
        assert_keys_in(&example, &serde_json::to_value(&parsed).expect("json"));
    }
}

/// The Telegraf configuration is TOML that subscribes to the telemetry
/// topics Verge publishes (Telegraf itself is not run).
#[test]
fn the_telegraf_example_subscribes_to_the_telemetry_topics() {
    let examples = of_kind("telegraf config");
    assert_eq!(examples.len(), 1, "docs/consumers.md's Telegraf example");
    let topics = verge_shared::Topics::new("verge/v1").expect("prefix");
    let region = verge_shared::RegionId::new("eu-west").expect("region");
    let node = verge_shared::AgentId::new("edge-01").expect("id");
    let published = topics.telemetry(&region, &node);
    for example in examples {
        let config: toml::Table = toml::from_str(&example.body)
            .unwrap_or_else(|e| panic!("{}: not TOML: {e}", example.at()));
        let input = &config["inputs"]["mqtt_consumer"][0];
        let filters = input["topics"].as_array().expect("topics");
        // An MQTT filter of `+` wildcards matches level by level.
        let matches = |filter: &str| {
            filter.split('/').count() == published.split('/').count()
                && filter
                    .split('/')
                    .zip(published.split('/'))
                    .all(|(f, p)| f == "+" || f == p)
        };
        assert!(
            filters.iter().any(|f| f.as_str().is_some_and(matches)),
            "{}: no filter matches {published}",
            example.at()
        );
        assert_eq!(input["data_format"].as_str(), Some("json_v2"));
    }
}

// ---------------------------------------------------------------------------
// TOML specs, signed by the real verge-admin.

/// The `verge-admin` binary, built with the profile of this test.
fn verge_admin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let hello = verge_tests::cluster::binary("hello-edge");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "--quiet", "-p", "verge-admin"]);
            if hello.parent().is_some_and(|d| d.ends_with("release")) {
                cmd.arg("--release");
            }
            let status = cmd
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building verge-admin failed: {status}");
            hello.with_file_name("verge-admin")
        })
        .clone()
}

fn admin(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(verge_admin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("verge-admin runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "verge-admin {args:?}: {text}");
    text
}

/// Writes `example` to `spec` in `dir` and runs `verge-admin` with `args`
/// plus `--spec spec --out out`; `out` is removed first, so an output left
/// by an earlier example cannot stand in for this one's.
fn sign_example(dir: &Path, example: &Example, spec: &str, out: &str, args: &[&str]) {
    fs::write(dir.join(spec), &example.body).expect("write");
    let _ = fs::remove_file(dir.join(out));
    let mut args = args.to_vec();
    args.extend(["--spec", spec, "--out", out]);
    let text = admin(dir, &args);
    assert!(dir.join(out).exists(), "{}: {text}", example.at());
}

#[test]
fn toml_examples_are_signed_by_verge_admin() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The spec sits two levels down, so the documented relative artifact
    // path `../../target/release/hello-edge` resolves inside the temp dir.
    let spec_dir = dir.path().join("a/b");
    fs::create_dir_all(&spec_dir).expect("mkdir");
    let artifact = dir.path().join("target/release/hello-edge");
    fs::create_dir_all(artifact.parent().expect("parent")).expect("mkdir");
    fs::write(&artifact, hello_artifact()).expect("artifact");
    for key in ["root1", "root2", "root3", "controller", "publisher"] {
        admin(
            &spec_dir,
            &["key", "create", "--out", &format!("{key}.pk8")],
        );
    }

    let releases = of_kind("release spec");
    let bundles = of_kind("trust bundle spec");
    assert!(
        !releases.is_empty() && !bundles.is_empty(),
        "both TOML kinds are documented"
    );
    for example in releases {
        sign_example(
            &spec_dir,
            &example,
            "release.toml",
            "release.json",
            &["release", "sign", "--key", "publisher.pk8"],
        );
    }
    for example in bundles {
        sign_example(
            &spec_dir,
            &example,
            "bundle.toml",
            "bundle.json",
            &["trust", "sign", "--key", "root1.pk8", "--key", "root2.pk8"],
        );
        let verified = admin(&spec_dir, &["verify", "bundle.json"]);
        assert!(
            verified.contains("VERIFIED"),
            "{}: {verified}",
            example.at()
        );
    }
}

// ---------------------------------------------------------------------------
// The HTTP API, against a real controller and agent.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_examples_are_accepted_and_answered_by_a_real_controller() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    // Telemetry every second, so that its view has samples to show.
    let broker = cluster.mqtt_addr;
    cluster
        .add_agent_with("edge-a", "eu-west", broker, "telemetry_interval_secs = 1")
        .await
        .expect("agent");
    let api = &cluster.api;

    // A running replica of `hello`, so the views show every field.
    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    let reply = api
        .put_service("hello", &hello_spec(&artifact, "docs", 1, &["eu-west"]))
        .await
        .expect("PUT");
    assert!(reply.status.is_success(), "{}", reply.body);
    let digest = reply.body["spec"]["release"]
        .as_str()
        .expect("the view shows the release digest")
        .to_owned();
    wait_running(api, "hello", "docs").await;

    let service = api.service("hello").await.expect("service view");
    for example in of_kind("response GET /api/v1/services/{name}") {
        assert_keys_in(&example, &service);
    }
    let node = api.node("edge-a").await.expect("node view");
    for example in of_kind("response GET /api/v1/nodes/{id}") {
        assert_keys_in(&example, &node);
    }
    let telemetry = wait_for("two telemetry samples of edge-a", DEADLINE, || async {
        let view = api
            .get("/api/v1/nodes/edge-a/telemetry")
            .await
            .map_err(|e| e.to_string())?;
        match view["samples"].as_array().map(Vec::len) {
            Some(n) if n >= 2 => Ok(view),
            _ => Err(view.to_string()),
        }
    })
    .await;
    for example in of_kind("response GET /api/v1/nodes/{id}/telemetry") {
        assert_keys_in(&example, &telemetry);
    }
    let refused = api
        .put_service("hello", &json!({"release": digest, "replicas": 1000}))
        .await
        .expect("PUT");
    assert_eq!(refused.status, 400, "{}", refused.body);
    for example in of_kind("response error") {
        assert_keys_in(&example, &refused.body);
    }
    let audit = api.get("/api/v1/audit?limit=1").await.expect("audit");
    for example in of_kind("response audit entry") {
        assert_keys_in(&example, &audit["entries"][0]);
    }

    // Release contents: signed with the cluster's publisher and uploaded.
    let contents = of_kind("release contents");
    assert!(
        contents.len() >= 2,
        "release contents in protocol.md and workloads.md"
    );
    for (i, example) in contents.iter().enumerate() {
        let value = example.json();
        let mut spec = json!({"artifact": artifact, "replicas": 0});
        if let Some(Value::Object(run)) = value.get("run") {
            for (k, v) in run {
                spec[k] = v.clone();
            }
        }
        if let Some(resources) = value.get("resources") {
            spec["resources"] = resources.clone();
        }
        let reply = api
            .put_service(&format!("docs-{i}"), &spec)
            .await
            .expect("PUT");
        assert_accepted(example, &reply);
    }

    // Request bodies, last: they replace `hello`'s spec.
    let requests = of_kind("request PUT /api/v1/services/{name}");
    assert!(
        requests.len() >= 2,
        "service specs in api.md and placement.md"
    );
    for example in requests {
        let body = with_digest(&example.body, &digest);
        let reply = api
            .request(
                Method::PUT,
                "/api/v1/services/hello",
                Some(body.into_bytes().into()),
            )
            .await
            .expect("PUT");
        assert_accepted(&example, &reply);
    }
}

// ---------------------------------------------------------------------------
// `verge service apply` files.

/// A documented service file is the one shipped in examples/, which the CLI
/// system test (tests/tests/cli.rs) applies to a real controller.
#[test]
fn service_file_examples_are_the_shipped_example() {
    let shipped: toml::Table = std::fs::read_to_string(root().join("examples/hello-service.toml"))
        .expect("examples/hello-service.toml")
        .parse()
        .expect("the shipped service file is TOML");
    let examples = of_kind("service file");
    assert!(
        !examples.is_empty(),
        "docs/operators/cli.md shows a service file"
    );
    for example in examples {
        let table: toml::Table = example
            .body
            .parse()
            .unwrap_or_else(|e| panic!("{}: not TOML: {e}", example.at()));
        assert_eq!(
            table,
            shipped,
            "{}: differs from examples/hello-service.toml",
            example.at()
        );
    }
}
