//! Workloads outlive their agent: an agent stopped with SIGTERM or killed
//! with SIGKILL and started again adopts the very process that still runs
//! (same pid, exactly one copy) instead of starting another, and keeps
//! applying the restart policy to it afterwards.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use verge_shared::Timestamp;
use verge_tests::cluster::process_alive;
use verge_tests::workload::{RunningReplica, hello_artifact, hello_spec, wait_running};
use verge_tests::{Cluster, wait_for};

/// Live processes whose argv[0] lies under `data_dir`: the agent's workloads.
fn workloads_under(data_dir: &Path) -> Vec<u32> {
    let prefix = data_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                        let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
                        String::from_utf8_lossy(argv0).starts_with(&prefix)
                    }) && process_alive(*pid)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How much later than the restart a message must be seen to come from the
/// new agent run: more than any broker delivery delay of a message the old
/// run sent before it died.
const NEW_RUN_MARGIN: Duration = Duration::from_millis(300);

/// Waits until the agent run started at `restarted_at` has reported (it adopts
/// before it connects, so any message from it comes after adoption) and the
/// service runs as exactly the process `before.pid`, once. Without the first
/// condition the controller's view from the previous run would satisfy the
/// second at once.
async fn wait_same_process(
    cluster: &mut Cluster,
    before: &RunningReplica,
    restarted_at: Timestamp,
    what: &str,
) -> RunningReplica {
    let api = cluster.api.clone();
    let data_dir = cluster.agent("edge-a").data_dir.clone();
    let fresh_after = restarted_at.saturating_add(NEW_RUN_MARGIN);
    wait_for(what, Duration::from_secs(60), || async {
        let node = api.node("edge-a").await.map_err(|e| e.to_string())?;
        let last_seen: Option<Timestamp> = serde_json::from_value(node["last_seen"].clone()).ok();
        if last_seen.is_none_or(|seen| seen <= fresh_after) {
            return Err(format!("no message from the new agent run yet: {node}"));
        }
        let now = wait_running(&api, "hello", "steady").await.remove(0);
        if now.pid != before.pid {
            return Err(format!("pid {} is not the adopted {}", now.pid, before.pid));
        }
        let copies = workloads_under(&data_dir);
        if copies != [before.pid as u32] {
            return Err(format!("expected only {}, found {copies:?}", before.pid));
        }
        Ok(now)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_its_running_workloads() {
    let mut cluster = Cluster::with_agents(&[("edge-a", "region-a"), ("edge-b", "region-b")]).await;
    let api = cluster.api.clone();
    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    let spec = hello_spec(&artifact, "steady", 1, &["region-a"]);
    api.put_service("hello", &spec).await.expect("PUT");
    let before = wait_running(&api, "hello", "steady").await.remove(0);
    assert_eq!(before.node, "edge-a");

    // SIGTERM: the agent shuts down and leaves its workload running.
    cluster.agent("edge-a").stop();
    assert!(
        process_alive(before.pid as u32),
        "an agent shutdown leaves workloads running"
    );
    let restarted_at = Timestamp::now();
    cluster.agent("edge-a").restart().expect("restart");
    wait_same_process(
        &mut cluster,
        &before,
        restarted_at,
        "adoption after SIGTERM",
    )
    .await;

    // SIGKILL: the same, without any goodbye.
    cluster.agent("edge-a").kill();
    let restarted_at = Timestamp::now();
    cluster.agent("edge-a").restart().expect("restart");
    let after = wait_same_process(
        &mut cluster,
        &before,
        restarted_at,
        "adoption after SIGKILL",
    )
    .await;
    assert_eq!(after.applied_generation, before.applied_generation);
    let other = api.node("edge-b").await.expect("node");
    assert_eq!(
        other["workloads"],
        json!([]),
        "no second copy on edge-b: {other}"
    );

    // The adopted process is not the new agent's child, yet its end is
    // noticed and the restart policy (always) brings it back.
    kill(Pid::from_raw(before.pid as i32), Signal::SIGKILL).expect("kill the workload");
    let data_dir = cluster.agent("edge-a").data_dir.clone();
    let restarted = wait_for(
        "the adopted workload restarted by policy",
        Duration::from_secs(60),
        || async {
            let now = wait_running(&api, "hello", "steady").await.remove(0);
            if now.pid == before.pid {
                return Err("still the killed process".into());
            }
            let copies = workloads_under(&data_dir);
            if copies != [now.pid as u32] {
                return Err(format!("expected only {}, found {copies:?}", now.pid));
            }
            Ok(now)
        },
    )
    .await;
    let view = api.service("hello").await.expect("view");
    assert!(
        view["replicas"][0]["restarts"].as_u64() >= Some(1),
        "{view}"
    );
    assert_eq!(restarted.node, "edge-a");
}
