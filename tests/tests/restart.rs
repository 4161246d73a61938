//! An agent killed with SIGKILL and started again comes back to the same
//! workloads, and exactly one copy of each runs afterwards.

use std::time::Duration;

use serde_json::json;
use verge_tests::cluster::process_alive;
use verge_tests::workload::{hello_artifact, hello_spec, wait_running};
use verge_tests::{Cluster, ClusterOptions, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_comes_back_to_its_workloads() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster");
    cluster
        .add_agent("edge-a", "region-a")
        .await
        .expect("agent");
    cluster
        .add_agent("edge-b", "region-b")
        .await
        .expect("agent");
    let api = cluster.api.clone();
    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    let spec = hello_spec(&artifact, "steady", 1, &["region-a"]);
    api.put_service("hello", &spec).await.expect("PUT");
    let before = wait_running(&api, "hello", "steady").await.remove(0);
    assert_eq!(before.node, "edge-a");

    cluster.agent("edge-a").kill();
    cluster.agent("edge-a").restart().expect("restart");

    // The restarted agent runs the same workload at the same generation from
    // its own state, and the process it lost track of is gone: one copy.
    let after = wait_for(
        "the workload back after the restart",
        Duration::from_secs(60),
        || async {
            let now = wait_running(&api, "hello", "steady").await.remove(0);
            if now.pid == before.pid {
                return Err("the API still shows the pre-kill process".into());
            }
            if process_alive(before.pid as u32) {
                return Err(format!("the pre-kill process {} still runs", before.pid));
            }
            Ok(now)
        },
    )
    .await;
    assert_eq!(after.node, "edge-a");
    assert_eq!(after.applied_generation, before.applied_generation);
    let other = api.node("edge-b").await.expect("node");
    assert_eq!(
        other["workloads"],
        json!([]),
        "no second copy on edge-b: {other}"
    );
}
