//! Workload supervision through the real controller and agent: restart
//! policies, crash loops and bad binaries reported with a reason, health
//! checks, graceful stop with a grace period, and log tails fetched from the
//! agent on demand.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use verge_tests::api::Api;
use verge_tests::cluster::process_alive;
use verge_tests::workload::{self, hello_artifact, hello_spec};
use verge_tests::{Cluster, wait_for};

/// Generous: crash-loop detection alone takes about 15 s of backoff.
const DEADLINE: Duration = Duration::from_secs(120);

/// Waits until replica 0 of `service` satisfies `ok`; returns its view.
async fn wait_replica(api: &Api, service: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    workload::wait_replica(api, service, 0, what, DEADLINE, ok).await
}

/// The example workload's spec with extra fields merged in.
fn spec(artifact: &str, args: &[&str], extra: Value) -> Value {
    let mut spec = hello_spec(artifact, "sup", 1, &[]);
    let mut all: Vec<Value> = vec![json!("--greeting"), json!("sup")];
    all.extend(args.iter().map(|a| json!(a)));
    spec["args"] = Value::Array(all);
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    spec
}

async fn one_agent_cluster() -> (Cluster, Api, String) {
    let cluster = Cluster::with_agents(&[("edge-a", "region-a")]).await;
    let api = cluster.api.clone();
    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    (cluster, api, artifact)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_crash_loops_and_bad_binaries_are_reported() {
    let (_cluster, api, hello) = one_agent_cluster().await;
    let put = |name: &'static str, spec: Value| {
        let api = api.clone();
        async move {
            let reply = api.put_service(name, &spec).await.expect("PUT");
            assert!(reply.status.is_success(), "{name}: {reply:?}");
        }
    };
    // Exits at once with code 3, over and over: a crash loop, not a hot loop.
    put(
        "crasher",
        spec(
            &hello,
            &["--exit-after", "0", "--exit-code", "3"],
            json!({}),
        ),
    )
    .await;
    // Exits cleanly; `never` and `on_failure` both leave it down.
    put(
        "oneshot",
        spec(&hello, &["--exit-after", "1"], json!({"restart": "never"})),
    )
    .await;
    put(
        "batch",
        spec(
            &hello,
            &["--exit-after", "1"],
            json!({"restart": "on_failure"}),
        ),
    )
    .await;
    // An artifact that is not a program at all.
    let junk = api
        .upload_artifact(b"this is not a program\n".to_vec())
        .await
        .expect("upload");
    put("junk", spec(&junk, &[], json!({}))).await;
    // Bad values are refused with the field named.
    let bad = api
        .put_service("bad", &spec(&hello, &[], json!({"restart": "sometimes"})))
        .await
        .expect("PUT");
    assert_eq!(bad.status, 400, "{bad:?}");
    let bad = api
        .put_service("bad", &spec(&hello, &[], json!({"stop_grace_secs": 9999})))
        .await
        .expect("PUT");
    assert_eq!(bad.body["error"]["field"], "run.stop_grace_secs", "{bad:?}");

    let crasher = wait_replica(&api, "crasher", "crash_loop", |r| {
        r["state"] == "crash_loop"
    })
    .await;
    assert_eq!(crasher["last_exit"]["code"], 3, "{crasher}");
    let message = crasher["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("crash loop")
            && message.contains("code 3")
            && message.contains("exiting with code 3"),
        "the reason names the exit and the workload's last words: {message}"
    );
    // Five quick exits, four restarts, then it waits minutes, not seconds.
    let restarts = crasher["restarts"].as_u64().unwrap_or_default();
    assert!((4..=6).contains(&restarts), "{crasher}");

    for name in ["oneshot", "batch"] {
        let done = wait_replica(&api, name, "exited", |r| r["state"] == "exited").await;
        assert_eq!(done["last_exit"]["code"], 0, "{done}");
        assert_eq!(done["restarts"], 0, "{done}");
    }

    let junk = wait_replica(&api, "junk", "failing with a reason", |r| {
        matches!(
            r["state"].as_str(),
            Some("backoff" | "crash_loop" | "failed")
        ) && r["message"]
            .as_str()
            .is_some_and(|m| m.contains("not executable") || m.contains("Exec format error"))
    })
    .await;
    assert!(junk["pid"].is_null(), "{junk}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_and_graceful_stop_are_honoured() {
    let (_cluster, api, hello) = one_agent_cluster().await;
    let check = |status_min: u16, status_max: u16| {
        json!({"health": {
            "probe": {"type": "http", "port": "http", "path": "/", "status_min": status_min, "status_max": status_max},
            "interval_secs": 1, "timeout_secs": 2, "healthy_threshold": 1, "unhealthy_threshold": 2}})
    };
    for (name, spec) in [
        ("fine", spec(&hello, &[], check(200, 299))),
        // hello-edge answers 200, which this check calls a failure.
        ("sick", spec(&hello, &[], check(500, 599))),
        (
            "tcp",
            spec(
                &hello,
                &[],
                json!({"health": {"probe": {"type": "tcp", "port": "http"}, "interval_secs": 1}}),
            ),
        ),
        (
            "stubborn",
            spec(&hello, &["--ignore-sigterm"], json!({"stop_grace_secs": 3})),
        ),
        ("polite", spec(&hello, &[], json!({"stop_grace_secs": 30}))),
    ] {
        let reply = api.put_service(name, &spec).await.expect("PUT");
        assert!(reply.status.is_success(), "{name}: {reply:?}");
    }
    let unknown_port = api
        .put_service(
            "bad",
            &spec(
                &hello,
                &[],
                json!({"health": {"probe": {"type": "tcp", "port": "nope"}}}),
            ),
        )
        .await
        .expect("PUT");
    assert_eq!(unknown_port.status, 400);
    assert_eq!(
        unknown_port.body["error"]["field"], "run.health.probe.port",
        "{unknown_port:?}"
    );

    let fine = wait_replica(&api, "fine", "healthy", |r| r["health"] == "healthy").await;
    assert_eq!(fine["state"], "running");
    wait_replica(&api, "tcp", "healthy", |r| r["health"] == "healthy").await;
    let sick = wait_replica(&api, "sick", "unhealthy", |r| r["health"] == "unhealthy").await;
    assert_eq!(
        sick["state"], "running",
        "health does not restart it: {sick}"
    );
    // Confinement is reported: rlimits (this runner has no usable cgroup v2),
    // and an unprivileged user when the agent is root.
    assert_eq!(fine["isolation"]["limits"], "rlimit", "{fine}");
    // The node says the same, from its presence, for operators choosing hosts.
    let node = api.node("edge-a").await.expect("node view");
    assert_eq!(node["limits"], "rlimit", "{node}");
    if nix::unistd::Uid::effective().is_root() {
        assert_eq!(fine["isolation"]["user"], "nobody", "{fine}");
    }

    // Graceful stop: SIGTERM, the grace period, then SIGKILL for the group.
    let stubborn = wait_replica(&api, "stubborn", "running", |r| r["state"] == "running").await;
    let polite = wait_replica(&api, "polite", "running", |r| r["state"] == "running").await;
    let stubborn_pid = stubborn["pid"].as_u64().expect("pid") as u32;
    let polite_pid = polite["pid"].as_u64().expect("pid") as u32;
    let began = Instant::now();
    api.delete_service("stubborn").await.expect("DELETE");
    api.delete_service("polite").await.expect("DELETE");
    let gone = |pid: u32| {
        move || async move {
            if process_alive(pid) {
                Err(format!("{pid} still runs"))
            } else {
                Ok(began.elapsed())
            }
        }
    };
    let polite_after = wait_for("the polite workload to stop", DEADLINE, gone(polite_pid)).await;
    let stubborn_after = wait_for(
        "the stubborn workload to be killed",
        DEADLINE,
        gone(stubborn_pid),
    )
    .await;
    assert!(
        stubborn_after >= Duration::from_secs(3),
        "SIGKILL only after the 3 s grace: {stubborn_after:?}"
    );
    assert!(
        polite_after < Duration::from_secs(30),
        "a workload that obeys SIGTERM does not wait out its grace: {polite_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_tails_are_fetched_from_the_agent_on_demand() {
    let (mut cluster, api, hello) = one_agent_cluster().await;
    cluster
        .add_agent("edge-b", "region-b")
        .await
        .expect("agent");
    let reply = api
        .put_service("talker", &hello_spec(&hello, "chatty", 1, &["region-a"]))
        .await
        .expect("PUT");
    assert!(reply.status.is_success(), "{reply:?}");
    wait_replica(&api, "talker", "running", |r| r["state"] == "running").await;

    let by_replica = wait_for("the replica's stderr tail", DEADLINE, || async {
        let tail = api
            .get("/api/v1/services/talker/replicas/0/logs?stream=stderr&lines=20")
            .await
            .map_err(|e| e.to_string())?;
        let lines = tail["lines"].as_array().cloned().unwrap_or_default();
        if lines
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("listening on port")))
        {
            Ok(tail)
        } else {
            Err(tail.to_string())
        }
    })
    .await;
    assert_eq!(by_replica["node"], "edge-a");
    assert_eq!(by_replica["stream"], "stderr");

    let by_node = api
        .get("/api/v1/nodes/edge-a/workloads/talker/logs?stream=stderr&lines=1")
        .await
        .expect("node route");
    assert_eq!(
        by_node["lines"].as_array().map(Vec::len),
        Some(1),
        "{by_node}"
    );

    let none = api
        .request(
            Method::GET,
            "/api/v1/nodes/edge-b/workloads/talker/logs",
            None,
        )
        .await
        .expect("request");
    assert_eq!(none.status, 404, "edge-b runs no talker: {:?}", none.body);
    let bad = api
        .request(
            Method::GET,
            "/api/v1/services/talker/replicas/0/logs?lines=0",
            None,
        )
        .await
        .expect("request");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"]["field"], "lines");

    // An agent that is gone cannot answer: a clear 504, not a hang.
    cluster.agent("edge-b").kill();
    wait_for("edge-b offline", DEADLINE, || async {
        let node = api.node("edge-b").await.map_err(|e| e.to_string())?;
        if node["online"] == false {
            Ok(())
        } else {
            Err(node.to_string())
        }
    })
    .await;
    let offline = api
        .request(
            Method::GET,
            "/api/v1/nodes/edge-b/workloads/talker/logs",
            None,
        )
        .await
        .expect("request");
    assert_eq!(offline.status, 504, "{:?}", offline.body);
    assert_eq!(offline.error_code(), "agent_unavailable");
}
