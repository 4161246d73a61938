//! A third-party consumer, as a user would write one: Python with
//! `paho-mqtt` and `jsonschema` (`examples/consumers/conformance.py`)
//! subscribed to `verge/v1/#` while a real scenario runs — a deploy, a
//! workload that crash-loops and is removed, an agent killed and brought
//! back. Every message it receives must validate against the published
//! AsyncAPI document and JSON Schemas; it must see the crash-loop and
//! node-offline alarms raised and cleared (their retained copies removed),
//! the controller's fleet events, and each node's telemetry `seq` with no
//! gap but the drops the agent declares.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use verge_tests::require::{Tool, missing};
use verge_tests::workload::{deploy_hello, hello_artifact, hello_spec};
use verge_tests::{Api, BrokerKind, Cluster, ClusterOptions, wait_for};

/// How long one step of the scenario may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The consumer process, subscribed.
struct Consumer {
    child: Child,
    summary: PathBuf,
}

impl Consumer {
    async fn start(
        python: &Path,
        dir: &Path,
        broker: std::net::SocketAddr,
        extra: &[String],
    ) -> Consumer {
        let summary = dir.join("consumer-summary.json");
        let mut child = Command::new(python)
            .arg(repo_file("examples/consumers/conformance.py"))
            .arg("--asyncapi")
            .arg(repo_file("docs/asyncapi.json"))
            .args(["--host", &broker.ip().to_string()])
            .args(["--port", &broker.port().to_string()])
            .arg("--summary")
            .arg(&summary)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the consumer starts");
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("the consumer subscribes in time")
            .expect("its output is readable");
        assert_eq!(
            first.as_deref(),
            Some("subscribed"),
            "the consumer's first line"
        );
        // The rest (the summary) also goes to the file; keep the pipe drained.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Consumer { child, summary }
    }

    /// Stops it and returns its summary.
    async fn finish(mut self) -> Value {
        let pid = self.child.id().expect("running");
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("signal the consumer");
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the consumer stops in time")
            .expect("wait");
        assert!(status.success(), "the consumer exits cleanly: {status}");
        let text = std::fs::read_to_string(&self.summary).expect("the summary file");
        serde_json::from_str(&text).expect("the summary is JSON")
    }
}

async fn alarms(api: &Api, query: &str) -> Vec<Value> {
    api.get(&format!("/api/v1/alarms?{query}"))
        .await
        .map(|r| r["alarms"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
}

/// Waits until `alarm` on `entity` is active (`true`) or not (`false`).
async fn wait_alarm(api: &Api, alarm: &str, entity: &str, active: bool) {
    wait_for(
        &format!("{alarm} on {entity} active: {active}"),
        DEADLINE,
        || async {
            let found = alarms(api, &format!("alarm={alarm}"))
                .await
                .iter()
                .any(|a| a["entity_instance"] == entity);
            if found == active {
                Ok(())
            } else {
                Err(format!("active: {found}"))
            }
        },
    )
    .await;
}

/// The (alarm, entity) pairs of one list in the summary.
fn pairs(summary: &Value, list: &str) -> Vec<(String, String)> {
    summary["alarms"][list]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|a| {
                    (
                        a[0].as_str().unwrap_or("").to_owned(),
                        a[1].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The scenario, the same on every broker: returns the consumer's summary
/// and the API's list of every alarm raised meanwhile.
async fn scenario(cluster: &mut Cluster, consumer: Consumer) -> (Value, Vec<Value>) {
    let api = cluster.api.clone();
    deploy_hello(&api, "web", "hello", "region-a").await;

    // A workload that exits at once, again and again: a crash loop on edge-b.
    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    let mut crasher = hello_spec(&artifact, "boom", 1, &["region-b"]);
    crasher["args"] = json!([
        "--greeting",
        "boom",
        "--exit-after",
        "0",
        "--exit-code",
        "3"
    ]);
    let reply = api.put_service("crasher", &crasher).await.expect("PUT");
    assert!(reply.status.is_success(), "{}", reply.body);
    let crash_entity = "node=edge-b,service=crasher";
    wait_alarm(&api, "workload_crash_loop", crash_entity, true).await;
    // Removing the workload clears its alarm.
    let reply = api.delete_service("crasher").await.expect("DELETE");
    assert!(reply.status.is_success(), "{}", reply.body);
    wait_alarm(&api, "workload_crash_loop", crash_entity, false).await;

    // An agent killed, then back.
    cluster.agent("edge-a").kill();
    wait_alarm(&api, "node_offline", "node=edge-a", true).await;
    cluster.agent("edge-a").restart().expect("restart edge-a");
    cluster.wait_node_online("edge-a").await;
    wait_alarm(&api, "node_offline", "node=edge-a", false).await;

    let history = alarms(&api, "state=all&limit=500").await;
    (consumer.finish().await, history)
}

fn check(summary: &Value, history: &[Value]) {
    assert_eq!(
        summary["invalid"], 0,
        "every message validates: {:#}",
        summary["invalid_examples"]
    );
    assert_eq!(
        summary["unknown_topics"],
        json!({}),
        "every topic is a documented channel"
    );
    let raised = pairs(summary, "raised");
    let cleared = pairs(summary, "cleared");
    for (alarm, entity) in [
        ("workload_crash_loop", "node=edge-b,service=crasher"),
        ("node_offline", "node=edge-a"),
    ] {
        let pair = (alarm.to_owned(), entity.to_owned());
        assert_eq!(
            raised.iter().filter(|p| **p == pair).count(),
            1,
            "{alarm} on {entity} raised once on MQTT: {raised:?}"
        );
        assert_eq!(
            cleared.iter().filter(|p| **p == pair).count(),
            1,
            "{alarm} on {entity} cleared once on MQTT: {cleared:?}"
        );
    }
    // Every alarm the controller raised (none is suppressed here) reached
    // the consumer, and every one it cleared.
    for alarm in history {
        let pair = (
            alarm["id"].as_str().unwrap_or("").to_owned(),
            alarm["entity_instance"].as_str().unwrap_or("").to_owned(),
        );
        assert!(
            raised.contains(&pair),
            "{alarm} was published raised: {raised:?}"
        );
        if alarm["state"] == "cleared" {
            assert!(
                cleared.contains(&pair),
                "{alarm} was published cleared: {cleared:?}"
            );
        }
    }
    let removed = summary["alarms"]["removed"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        removed.iter().any(|t| t
            .as_str()
            .is_some_and(|t| t.ends_with("/node_offline/node=edge-a"))),
        "the retained node_offline copy is removed: {removed:?}"
    );
    for kind in [
        "service_created",
        "node_offline",
        "node_online",
        "alarm_raised",
        "alarm_cleared",
    ] {
        assert!(
            summary["fleet_events"][kind].as_u64().unwrap_or(0) >= 1,
            "a {kind} fleet event: {:#}",
            summary["fleet_events"]
        );
    }
    assert!(
        summary["node_events"]["alarm_raised:workload_crash_loop"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "edge-b's own signed alarm event: {:#}",
        summary["node_events"]
    );
    for node in ["edge-a", "edge-b"] {
        let t = &summary["telemetry"][node];
        assert!(
            t["count"].as_u64().unwrap_or(0) >= 3,
            "{node}'s telemetry arrived: {t}"
        );
        if t["dropped"] == 0 {
            assert_eq!(
                t["gaps"],
                json!([]),
                "{node}: no seq gap without a declared drop: {t}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_consumer_validates_everything_on_the_embedded_broker() {
    if missing(Tool::PythonMqtt) {
        return;
    }
    let python = Tool::PythonMqtt.path().expect("found");
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let broker = cluster.mqtt_addr;
    let dir = tempfile::tempdir().expect("temp dir");
    // Subscribed before any agent starts, so it sees every first message.
    let consumer = Consumer::start(&python, dir.path(), broker, &[]).await;
    for (id, region) in [("edge-a", "region-a"), ("edge-b", "region-b")] {
        cluster
            .add_agent_with(id, region, broker, "telemetry_interval_secs = 1")
            .await
            .expect("agent");
    }
    let (summary, history) = scenario(&mut cluster, consumer).await;
    println!("consumer summary: {summary:#}");
    check(&summary, &history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_consumer_with_a_certificate_validates_everything_on_mosquitto() {
    if missing(Tool::PythonMqtt) || missing(Tool::Mosquitto) {
        return;
    }
    let python = Tool::PythonMqtt.path().expect("found");
    let mut cluster = Cluster::start(ClusterOptions {
        broker: BrokerKind::MosquittoTls,
        tls: true,
        ..ClusterOptions::default()
    })
    .await
    .expect("the controller starts against the shipped Mosquitto");
    let broker = cluster.mqtt_addr;

    // A read-only consumer, as an operator issues it, then the broker's
    // access list brought up to date as docs/operators/install.md says.
    let issued = cluster
        .api
        .request(
            reqwest::Method::POST,
            "/api/v1/consumers",
            Some(
                json!({"name": "checker", "credential": "certificate"})
                    .to_string()
                    .into(),
            ),
        )
        .await
        .expect("POST /api/v1/consumers")
        .ok()
        .expect("a consumer certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, key: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, issued[key].as_str().expect("PEM")).expect("write");
        path.to_string_lossy().into_owned()
    };
    let tls = vec![
        "--ca-file".to_owned(),
        write("ca.pem", "ca_pem"),
        "--cert".to_owned(),
        write("checker.pem", "certificate_pem"),
        "--key".to_owned(),
        write("checker.key", "key_pem"),
    ];
    cluster
        .publish_acl_to_broker()
        .expect("the ACL reaches Mosquitto");
    let consumer = Consumer::start(&python, dir.path(), broker, &tls).await;

    for (id, region) in [("edge-a", "region-a"), ("edge-b", "region-b")] {
        let (_, token) = cluster.api.create_token(region, 1).await.expect("token");
        let env = vec![("VERGE_AGENT_ENROLL_TOKEN".to_owned(), token)];
        cluster
            .spawn_agent(id, region, broker, "telemetry_interval_secs = 1", env)
            .expect("agent starts");
        cluster.wait_node_online(id).await;
    }
    let (summary, history) = scenario(&mut cluster, consumer).await;
    println!("consumer summary: {summary:#}");
    check(&summary, &history);
    // Read-only under the access list: what only the controller and the
    // agents read never reached it.
    for channel in [
        "desired",
        "status",
        "heartbeat",
        "latency",
        "probes",
        "logRequest",
        "logResponse",
    ] {
        assert_eq!(
            summary["by_channel"][channel],
            Value::Null,
            "the consumer read {channel}: {:#}",
            summary["by_channel"]
        );
    }
}
