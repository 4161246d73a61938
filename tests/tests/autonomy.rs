//! Offline autonomy: with the controller and the broker down, an agent
//! killed together with its workloads (SIGKILL), and then again as after a
//! reboot (a fresh process tree on the same data dir), brings back every
//! workload of its last accepted desired state within 5 seconds, from its
//! local state and cache alone. When the link returns, the telemetry it
//! buffered meanwhile is delivered, a newer desired state applies and an
//! older one is ignored.
//!
//! The broker is the controller's embedded one, so stopping the controller
//! takes the broker down too; the agent also reaches it through a proxy that
//! is cut, so the test decides when the agent gets its link back (after a
//! telemetry subscriber is in place).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use verge_shared::telemetry::Telemetry;
use verge_shared::{AgentId, RegionId, Topics};
use verge_tests::cluster::{free_port, process_alive};
use verge_tests::mqtt::{TestClient, retained};
use verge_tests::proxy::Proxy;
use verge_tests::workload::{ask, hello_artifact, hello_spec, wait_running};
use verge_tests::{Cluster, ClusterOptions, wait_for};

/// The bound for workloads to be back after a restart while offline.
const BACK_WITHIN: Duration = Duration::from_secs(5);

/// Asks the workload on `port` and returns its pid if it answers with `greeting`.
async fn answering(port: u16, greeting: &str) -> Result<u64, String> {
    let answer = ask(u64::from(port)).await.map_err(|e| format!("{e:#}"))?;
    if answer["greeting"] != greeting {
        return Err(format!("port {port} answered {answer}"));
    }
    answer["pid"]
        .as_u64()
        .ok_or_else(|| format!("no pid in {answer}"))
}

/// Telemetry sequence numbers received by `client` until nothing came for 2 s.
async fn drain(client: &mut TestClient, topic: &str, seen: &mut BTreeSet<u64>) {
    while let Ok(msg) = client.next_on(topic, Duration::from_secs(2)).await {
        let t: Telemetry = serde_json::from_slice(&msg.payload).expect("telemetry parses");
        seen.insert(t.seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_come_back_offline_and_the_link_catches_up() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster");
    let proxy = Proxy::start(cluster.mqtt_addr).await.expect("proxy");
    let topics = Topics::default();
    let agent_id = AgentId::new("edge-a").expect("id");
    let telemetry = topics.telemetry(&RegionId::new("region-a").expect("region"), &agent_id);
    let desired_topic = topics.desired(&agent_id);
    let mut before = TestClient::connect(cluster.mqtt_addr, "test-telemetry-1")
        .await
        .expect("mqtt");
    before.subscribe(&telemetry).await.expect("subscribe");
    cluster
        .add_agent_with(
            "edge-a",
            "region-a",
            proxy.addr,
            "telemetry_interval_secs = 1",
        )
        .await
        .expect("agent");

    let api = cluster.api.clone();
    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    let services = [("alpha", free_port()), ("beta", free_port())];
    for (name, port) in services {
        let mut spec = hello_spec(&artifact, "offline-v1", 1, &["region-a"]);
        spec["ports"] = json!([{ "name": "http", "port": port }]);
        api.put_service(name, &spec).await.expect("PUT");
    }
    for (name, _) in services {
        wait_running(&api, name, "offline-v1").await;
    }
    // The accepted document, soon to be an older generation.
    let old = retained(cluster.mqtt_addr, "test-watcher", &desired_topic)
        .await
        .expect("retained desired state");

    // Uplink and control plane gone.
    proxy.cut();
    let mut delivered = BTreeSet::new();
    drain(&mut before, &telemetry, &mut delivered).await;
    cluster.stop_controller();
    drain(&mut before, &telemetry, &mut delivered).await;
    drop(before);
    let last_delivered = delivered.last().copied().unwrap_or(0);

    for round in ["agent killed with its workloads", "simulated reboot"] {
        let mut old_pids = Vec::new();
        for (_, port) in services {
            old_pids.push(answering(port, "offline-v1").await.expect("running"));
        }
        let agent = cluster.agent("edge-a");
        // A power cut: the agent and every workload process group, SIGKILL.
        agent.kill();
        for pid in &old_pids {
            let group = nix::unistd::Pid::from_raw(-i32::try_from(*pid).expect("pid"));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        }
        for pid in &old_pids {
            wait_for(
                &format!("{round}: workload {pid} gone"),
                Duration::from_secs(10),
                || async {
                    if process_alive(*pid as u32) {
                        Err("still alive".to_owned())
                    } else {
                        Ok(())
                    }
                },
            )
            .await;
        }
        let started = Instant::now();
        agent.restart().expect("restart");
        for (i, (name, port)) in services.iter().enumerate() {
            let left = BACK_WITHIN.saturating_sub(started.elapsed());
            let pid = wait_for(
                &format!("{round}: {name} back within {BACK_WITHIN:?}"),
                left,
                || answering(*port, "offline-v1"),
            )
            .await;
            assert_ne!(pid, old_pids[i], "{round}: {name} is a new process");
        }
        eprintln!("{round}: every workload back after {:?}", started.elapsed());
    }

    // The link returns; a subscriber is in place before the agent reconnects.
    let restored_at = verge_shared::Timestamp::now();
    cluster.start_controller().await.expect("controller");
    let mut after = TestClient::connect(cluster.mqtt_addr, "test-telemetry-2")
        .await
        .expect("mqtt");
    after.subscribe(&telemetry).await.expect("subscribe");
    proxy.restore();
    cluster.wait_node_online("edge-a").await;

    // Every sample produced offline arrives: contiguous from the last one
    // delivered before the outage up to one produced after the link returned.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = BTreeSet::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "telemetry after the outage: got {} samples after seq {last_delivered}: {seen:?}",
            seen.len()
        );
        let Ok(msg) = after.next_on(&telemetry, Duration::from_secs(5)).await else {
            continue;
        };
        let t: Telemetry = serde_json::from_slice(&msg.payload).expect("telemetry parses");
        seen.insert(t.seq);
        let complete = (last_delivered + 1..=t.seq).all(|q| seen.contains(&q));
        if t.at > restored_at && complete {
            // The offline period (two drains of 2 s, two restarts) produced
            // several samples, all of which had to wait in the outbox.
            assert!(
                t.seq >= last_delivered + 3,
                "only {} samples produced offline",
                t.seq - last_delivered
            );
            break;
        }
    }

    // A newer desired state applies.
    let (alpha, alpha_port) = services[0];
    let mut spec = hello_spec(&artifact, "online-v2", 1, &["region-a"]);
    spec["ports"] = json!([{ "name": "http", "port": alpha_port }]);
    api.put_service(alpha, &spec).await.expect("PUT");
    let applied = wait_running(&api, alpha, "online-v2").await.remove(0);

    // An older one (the document accepted before the outage) is ignored.
    let attacker = TestClient::connect(cluster.mqtt_addr, "test-replay")
        .await
        .expect("mqtt");
    attacker
        .publish(&desired_topic, old.payload)
        .await
        .expect("publish");
    wait_for(
        "the older desired state refused as stale",
        Duration::from_secs(60),
        || async {
            let node = api.node("edge-a").await.map_err(|e| e.to_string())?;
            if node["last_rejection"]["reason"] == "stale_generation" {
                Ok(())
            } else {
                Err(node["last_rejection"].to_string())
            }
        },
    )
    .await;
    let still = wait_running(&api, alpha, "online-v2").await.remove(0);
    assert_eq!(still.pid, applied.pid, "the replay changed nothing");
    assert_eq!(still.applied_generation, applied.applied_generation);
}
