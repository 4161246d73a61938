//! A controller that comes back learns at once which nodes are alive. The
//! controller (with its embedded broker) is stopped, the agent running the
//! one replica is SIGKILLed meanwhile, and the controller starts again
//! with the default 360 s heartbeat timeout. Real processes throughout.
//!
//! Counted, in order: right after the return every node is shown from
//! stored state and marked `unconfirmed`; the live agents answer the
//! controller's call to announce and are confirmed; the lost node is
//! declared not responding (unhealthy) and its replica runs on another
//! node, well within the heartbeat timeout — the waits' deadlines (120 s)
//! are a third of it, so without the call to announce the test fails. The
//! times are printed, not asserted.

use std::time::{Duration, Instant};

use verge_tests::workload::{deploy_hello, wait_running};
use verge_tests::{Cluster, ClusterOptions, wait_for};

/// The controller's failover grace in this test.
const GRACE_SECS: u64 = 5;
/// Well below the default heartbeat timeout (360 s), well above the
/// announce timeout (30 s) plus the grace.
const DEADLINE: Duration = Duration::from_secs(120);

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lost_while_the_controller_was_away_is_declared_down_soon_after_its_return() {
    let mut cluster = Cluster::start(ClusterOptions {
        failover_grace_secs: GRACE_SECS,
        // The default 360 s heartbeat timeout: only the call to announce
        // can find the lost node within the deadline.
        default_intervals: true,
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster starts");
    for id in ["edge-a", "edge-b", "edge-c"] {
        cluster.add_agent(id, "eu-west").await.expect("agent");
    }
    let before = deploy_hello(&cluster.api, "hello", "before", "eu-west").await;
    let lost = before[0].node.clone();
    let alive: Vec<&str> = ["edge-a", "edge-b", "edge-c"]
        .into_iter()
        .filter(|id| *id != lost)
        .collect();

    cluster.stop_controller();
    cluster.agent(&lost).kill();
    let returned = Instant::now();
    cluster
        .start_controller()
        .await
        .expect("controller starts again");

    // From stored state: still online, but marked as not confirmed.
    let first = cluster.api.node(&lost).await.expect("node");
    assert_eq!(
        (first["online"].as_bool(), first["unconfirmed"].as_bool()),
        (Some(true), Some(true)),
        "the lost node right after the return: {first}"
    );
    let api = cluster.api.clone();
    for id in &alive {
        wait_for(&format!("{id} confirmed"), DEADLINE, || async {
            let node = api.node(id).await.map_err(|e| e.to_string())?;
            if node["unconfirmed"] == false && node["healthy"] == true {
                Ok(())
            } else {
                Err(node.to_string())
            }
        })
        .await;
    }
    let confirmed_after = returned.elapsed();

    wait_for(&format!("{lost} not responding"), DEADLINE, || async {
        let node = api.node(&lost).await.map_err(|e| e.to_string())?;
        if node["healthy"] == false {
            Ok(())
        } else {
            Err(node.to_string())
        }
    })
    .await;
    let down_after = returned.elapsed();
    let node = api.node(&lost).await.expect("node");
    assert_eq!(
        node["unconfirmed"], true,
        "the lost node never answered: {node}"
    );

    let replaced = wait_for("the replica re-placed", DEADLINE, || async {
        let view = api.service("hello").await.map_err(|e| e.to_string())?;
        let replica = &view["replicas"][0];
        match replica["node"].as_str() {
            Some(node) if node != lost && replica["state"] == "running" => Ok(node.to_owned()),
            _ => Err(replica.to_string()),
        }
    })
    .await;
    let after = wait_running(&cluster.api, "hello", "before").await;
    let replaced_after = returned.elapsed();
    assert_eq!(after.len(), 1, "one replica");
    assert_eq!(after[0].node, replaced, "runs where the API says");
    assert!(
        alive.contains(&replaced.as_str()),
        "on a live node: {replaced}"
    );
    println!(
        "controller returned: live nodes confirmed after {:.1} s, {lost} declared not \
         responding after {:.1} s, its replica running on {replaced} after {:.1} s \
         (announce timeout 30 s, failover grace {GRACE_SECS} s, heartbeat timeout 360 s; \
         load average {})",
        confirmed_after.as_secs_f64(),
        down_after.as_secs_f64(),
        replaced_after.as_secs_f64(),
        load_average()
    );
}
