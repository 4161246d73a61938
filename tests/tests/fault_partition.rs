//! Fault scenario: an agent partitioned from the broker (a black hole: its
//! connection stays open, its bytes vanish, no RST) and healed.
//!
//! The controller runs with `[nodes] heartbeat_timeout_secs = 10` (the
//! harness's) and `failover_grace_secs = 15` (this test's): the node must be
//! seen down within 30 s and its replica running elsewhere within 60 s of
//! the partition; after the heal exactly one copy of each replica runs, as
//! the processes on the machine and the workloads themselves say. The
//! partitioned agent's telemetry is counted at the sender (its outbox), at
//! the broker (a subscriber with a persistent session) and at the receiver
//! (the controller's telemetry history): lost, duplicated, unexpected.
//!
//! `cargo nextest run -p verge-tests --test fault_partition --no-capture`

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use verge_shared::{AgentId, RegionId, Topics};
use verge_tests::faults::{Tally, Tap, controller_telemetry_seqs, read_outbox, telemetry_seqs};
use verge_tests::proxy::{Fault, Proxy};
use verge_tests::workload::{
    RunningReplica, copies_running, hello_artifact, hello_spec, wait_running,
};
use verge_tests::{Cluster, ClusterOptions, wait_for};

/// The bounds, from the moment the partition starts.
const SEEN_DOWN_WITHIN: Duration = Duration::from_secs(30);
const REPLACED_WITHIN: Duration = Duration::from_secs(60);

/// The workload's greeting, unique to this test process so that counting
/// processes on a shared machine finds only this test's copies.
fn greeting() -> String {
    format!("partition-{}", std::process::id())
}

/// The replicas' nodes.
fn nodes(replicas: &[RunningReplica]) -> Vec<&str> {
    replicas.iter().map(|r| r.node.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "not yet run to completion; run with --run-ignored and see docs/reliability.md"]
async fn a_partitioned_agent_is_replaced_and_after_the_heal_one_copy_runs() {
    let mut cluster = Cluster::start(ClusterOptions {
        failover_grace_secs: 15,
        // More than the test's duration at one sample a second.
        telemetry_history: Some(600),
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster");
    let proxy = Proxy::start(cluster.mqtt_addr).await.expect("proxy");
    let telemetry = Topics::default().telemetry(
        &RegionId::new("region-a").expect("region"),
        &AgentId::new("edge-a").expect("id"),
    );
    let tap = Tap::start(cluster.mqtt_addr, "fault-tap", &[&telemetry])
        .await
        .expect("tap");
    cluster
        .add_agent_with(
            "edge-a",
            "region-a",
            proxy.addr,
            "telemetry_interval_secs = 1",
        )
        .await
        .expect("edge-a");
    cluster
        .add_agent("edge-b", "region-a")
        .await
        .expect("edge-b");

    let api = cluster.api.clone();
    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    let reply = api
        .put_service("web", &hello_spec(&artifact, &greeting(), 2, &["region-a"]))
        .await
        .expect("PUT");
    assert!(reply.status.is_success(), "{}", reply.body);
    let before = wait_running(&api, "web", &greeting()).await;
    assert_eq!(nodes(&before), ["edge-a", "edge-b"], "{before:?}");
    // Room for the displaced replica, added once both are placed.
    cluster
        .add_agent("edge-c", "region-a")
        .await
        .expect("edge-c");

    // The partition.
    proxy.set_fault(Fault::BlackHole);
    let started = Instant::now();
    wait_for("edge-a seen down", SEEN_DOWN_WITHIN, || async {
        let node = api.node("edge-a").await.map_err(|e| e.to_string())?;
        if node["healthy"] == false {
            Ok(())
        } else {
            Err(node.to_string())
        }
    })
    .await;
    let seen_down = started.elapsed();
    let moved = wait_for(
        "edge-a's replica running on edge-c",
        REPLACED_WITHIN.saturating_sub(started.elapsed()),
        || async {
            let replicas = wait_running_once(&api).await?;
            if nodes(&replicas) == ["edge-b", "edge-c"] {
                Ok(replicas)
            } else {
                Err(format!("{replicas:?}"))
            }
        },
    )
    .await;
    let replaced = started.elapsed();
    assert_eq!(moved[0].pid, before[1].pid, "edge-b's copy was not touched");
    // The partitioned agent keeps its copy running meanwhile (it cannot know).
    let during = copies_running(&greeting());

    // The heal: edge-a reconnects, reads its newer desired state and stops
    // the copy that moved away.
    proxy.heal();
    let healed = Instant::now();
    let after = wait_for(
        "exactly one copy of each replica after the heal",
        Duration::from_secs(60),
        || async {
            let node = api.node("edge-a").await.map_err(|e| e.to_string())?;
            if node["online"] != true || node["applied_generation"] != node["desired_generation"] {
                return Err(format!("edge-a not caught up: {node}"));
            }
            let replicas = wait_running_once(&api).await?;
            let answered: BTreeSet<u32> = replicas.iter().map(|r| r.pid as u32).collect();
            let running: BTreeSet<u32> = copies_running(&greeting()).into_iter().collect();
            if answered == running && running.len() == 2 {
                Ok(replicas)
            } else {
                Err(format!("processes {running:?}, replicas {replicas:?}"))
            }
        },
    )
    .await;
    let converged = healed.elapsed();
    assert_eq!(nodes(&after), ["edge-b", "edge-c"]);
    assert_eq!(after[0].pid, before[1].pid, "edge-b's copy ran throughout");
    assert_eq!(after[1].pid, moved[1].pid, "edge-c's copy ran throughout");

    // The partitioned agent's telemetry, counted three ways once it stopped.
    let agent = cluster.agent("edge-a");
    agent.stop();
    let outbox = read_outbox(&agent.data_dir).expect("edge-a's outbox");
    let sent = outbox
        .telemetry_tally(&telemetry)
        .expect("outbox telemetry");
    let at_broker = wait_for(
        "every sample edge-a sent at the broker's subscriber",
        Duration::from_secs(30),
        || async {
            let mut tally = sent.clone();
            for seq in telemetry_seqs(&tap.messages(), &telemetry).map_err(|e| e.to_string())? {
                tally.receive(seq);
            }
            if tally.lost().is_empty() {
                Ok(tally)
            } else {
                Err(tally.summary("at the broker"))
            }
        },
    )
    .await;
    let mut at_controller: Tally<u64> = sent.clone();
    for seq in controller_telemetry_seqs(&api, "edge-a")
        .await
        .expect("controller telemetry")
    {
        at_controller.receive(seq);
    }
    eprintln!(
        "partition: seen down after {seen_down:?} (bound {SEEN_DOWN_WITHIN:?}), replaced after \
         {replaced:?} (bound {REPLACED_WITHIN:?}), copies during the partition {}, one copy \
         each {converged:?} after the heal; proxy dropped {} bytes",
        during.len(),
        proxy.dropped_bytes()
    );
    eprintln!(
        "partition: {}",
        at_broker.summary("edge-a telemetry at the broker")
    );
    eprintln!(
        "partition: {}",
        at_controller.summary("edge-a telemetry at the controller")
    );
    assert_eq!(outbox.dropped, 0, "nothing dropped within the quota");
    for tally in [&at_broker, &at_controller] {
        assert!(tally.lost().is_empty() && tally.unexpected().is_empty());
    }
    // QoS 1 may repeat what was in flight when the link died: at most the
    // agent's window of 32 unacknowledged messages.
    assert!(
        at_broker.duplicated() <= 32,
        "{}",
        at_broker.summary("broker")
    );
    // The controller keeps a sample only if its seq is above the newest kept.
    assert_eq!(at_controller.duplicated(), 0);
}

/// The replicas of `web` if both run and answer, as one poll.
async fn wait_running_once(api: &verge_tests::Api) -> Result<Vec<RunningReplica>, String> {
    tokio::time::timeout(
        Duration::from_secs(20),
        verge_tests::workload::check_running(api, "web", &greeting()),
    )
    .await
    .map_err(|_| "the replicas did not answer within 20 s".to_owned())?
}
