//! Fault scenario: the controller SIGKILLed in the middle of deploying a
//! service to every agent, then started again on the same data directory.
//!
//! The fleet runs one replica of `steady` per agent; a second service,
//! `rollout`, is declared with one replica per agent, and the controller is
//! killed as soon as the broker has carried the first of the new desired
//! states. After the restart everything converges: every agent's desired
//! state (the retained document on the broker, verified with the
//! controller's key) has the generation the controller stored and names the
//! services the controller placed there; every agent accepted each
//! generation once; `steady` runs with the same pids and no restarts; one
//! copy of each replica runs on the machine.
//!
//! Counted: desired states at the sender (the controller's stored
//! generations), at the broker (a subscriber to every desired topic, and
//! Mosquitto's `$SYS` counters) and at the receivers (each agent's
//! "Accepted desired state" log lines and applied generation).
//!
//! CI runs 8 agents; `VERGE_FAULT_AGENTS=50 cargo nextest run -p
//! verge-tests --test fault_controller_kill --no-capture` runs 50.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use verge_shared::Topics;
use verge_shared::messages::{Delivery, DesiredState, payload_type};
use verge_tests::faults::{Tally, Tap, log_generations, mosquitto_sys_line};
use verge_tests::require::{Tool, missing};
use verge_tests::workload::{
    RunningReplica, check_running, copies_running, hello_artifact, hello_spec,
};
use verge_tests::{BrokerKind, Cluster, ClusterOptions, wait_for};

/// The number of agents, from this variable (default [`CI_AGENTS`]).
const AGENTS_VAR: &str = "VERGE_FAULT_AGENTS";
const CI_AGENTS: usize = 8;

fn agent_count() -> usize {
    std::env::var(AGENTS_VAR)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{AGENTS_VAR}={v} is not a number"))
        })
        .unwrap_or(CI_AGENTS)
}

/// Waits until every replica of `service` runs and answers; the bound grows
/// with the fleet.
async fn converged(
    api: &verge_tests::Api,
    service: &str,
    greeting: &str,
    agents: usize,
) -> Vec<RunningReplica> {
    wait_for(
        &format!("{service} running on {agents} agents"),
        Duration::from_secs(60 + 3 * agents as u64),
        || check_running(api, service, greeting),
    )
    .await
}

/// Every desired state the broker carried, in order, verified with `key`.
fn carried(tap: &Tap, key: &verge_shared::PublicKey) -> Result<Vec<DesiredState>, String> {
    tap.messages()
        .iter()
        // An empty retained payload clears a topic; it carries no document.
        .filter(|msg| !msg.payload.is_empty())
        .map(|msg| {
            let delivery: Delivery = serde_json::from_slice(&msg.payload)
                .map_err(|e| format!("delivery on {}: {e}", msg.topic))?;
            delivery
                .desired
                .open(payload_type::DESIRED_STATE, key)
                .map_err(|e| format!("desired state on {}: {e}", msg.topic))
        })
        .collect()
}

/// The latest desired state the broker carried for each agent.
fn latest_desired(
    tap: &Tap,
    key: &verge_shared::PublicKey,
) -> Result<BTreeMap<String, DesiredState>, String> {
    Ok(carried(tap, key)?
        .into_iter()
        .map(|doc| (doc.agent.to_string(), doc))
        .collect())
}

/// The services each node runs a replica of, as the controller placed them.
fn placed(views: &[Value]) -> BTreeMap<String, BTreeSet<String>> {
    let mut on = BTreeMap::<String, BTreeSet<String>>::new();
    for view in views {
        for r in view["replicas"].as_array().into_iter().flatten() {
            if let Some(node) = r["node"].as_str() {
                on.entry(node.to_owned())
                    .or_default()
                    .insert(view["name"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    on
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "not yet run to completion; run with --run-ignored and see docs/reliability.md"]
async fn a_controller_killed_mid_deployment_converges_without_applying_twice() {
    if missing(Tool::Mosquitto) {
        return;
    }
    let n = agent_count();
    let mut cluster = Cluster::start(ClusterOptions {
        broker: BrokerKind::Mosquitto,
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster");
    let topics = Topics::default();
    let filter = format!("{}/agents/+/desired", topics.prefix());
    let tap = Tap::start(cluster.mqtt_addr, "fault-tap", &[&filter])
        .await
        .expect("tap");
    let ids: Vec<String> = (0..n).map(|i| format!("edge-{i:02}")).collect();
    let started = Instant::now();
    for id in &ids {
        let broker = cluster.mqtt_addr;
        cluster
            .spawn_agent(id, "region-a", broker, "", Vec::new())
            .expect("agent starts");
    }
    for id in &ids {
        cluster.wait_node_online(id).await;
    }
    eprintln!(
        "controller kill: {n} agents online after {:?}",
        started.elapsed()
    );

    // Greetings unique to this test process: counting processes on a
    // shared machine finds only this test's copies.
    let steady_greeting = format!("steady-{}", std::process::id());
    let rollout_greeting = format!("rollout-{}", std::process::id());
    let api = cluster.api.clone();
    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    let replicas = u32::try_from(n).expect("agent count");
    let reply = api
        .put_service(
            "steady",
            &hello_spec(&artifact, &steady_greeting, replicas, &["region-a"]),
        )
        .await
        .expect("PUT steady");
    assert!(reply.status.is_success(), "{}", reply.body);
    let steady = converged(&api, "steady", &steady_greeting, n).await;
    let mut before = BTreeMap::new();
    for id in &ids {
        let node = api.node(id).await.expect("node");
        before.insert(id.clone(), node["applied_generation"].as_u64().unwrap_or(0));
    }

    // The deployment, and the crash in its middle.
    let published_before = tap.messages().len();
    let reply = api
        .put_service(
            "rollout",
            &hello_spec(&artifact, &rollout_greeting, replicas, &["region-a"]),
        )
        .await
        .expect("PUT rollout");
    assert!(reply.status.is_success(), "{}", reply.body);
    let seen_at_kill = wait_for(
        "the first new desired state at the broker",
        Duration::from_secs(30),
        || async {
            match tap.messages().len() - published_before {
                0 => Err("none yet".to_owned()),
                k => Ok(k),
            }
        },
    )
    .await;
    cluster.kill_controller();
    eprintln!(
        "controller kill: SIGKILL after the broker carried {seen_at_kill} new desired \
         state(s) for {n} agents"
    );
    let restarted = Instant::now();
    cluster
        .start_controller()
        .await
        .expect("controller restarts");

    let rollout = converged(&api, "rollout", &rollout_greeting, n).await;
    let steady_after = converged(&api, "steady", &steady_greeting, n).await;
    let converge_time = restarted.elapsed();
    let views = [
        api.service("steady").await.expect("steady"),
        api.service("rollout").await.expect("rollout"),
    ];
    let expected = placed(&views);

    // Every agent's desired state: the controller's generation, the broker's
    // retained document and the agent's applied generation agree, and the
    // document names what the controller placed there.
    let key = cluster.controller_signing_key().public_key();
    let desired = wait_for(
        "every agent's desired state at the broker up to date",
        Duration::from_secs(60),
        || async {
            let latest = latest_desired(&tap, &key)?;
            for id in &ids {
                let node = api.node(id).await.map_err(|e| e.to_string())?;
                let doc = latest.get(id).ok_or(format!("no desired state for {id}"))?;
                let services: BTreeSet<String> = doc
                    .workloads
                    .iter()
                    .map(|w| w.service.to_string())
                    .collect();
                let ok = node["desired_generation"] == doc.generation.get()
                    && node["applied_generation"] == doc.generation.get()
                    && services == expected.get(id).cloned().unwrap_or_default();
                if !ok {
                    return Err(format!("{id}: node {node}, document {doc:?}"));
                }
            }
            Ok(latest)
        },
    )
    .await;

    // Counted: every (agent, generation) the broker carried against what
    // each agent accepted.
    let mut tally: Tally<(String, u64)> = Tally::default();
    for doc in carried(&tap, &key).expect("desired states") {
        tally
            .sent
            .insert((doc.agent.to_string(), doc.generation.get()));
    }
    for agent in &cluster.agents {
        for generation in log_generations(&agent.log_text(), "Accepted desired state.") {
            tally.receive((agent.id.clone(), generation));
        }
    }
    let mut grew = BTreeMap::<u64, usize>::new();
    for (id, doc) in &desired {
        *grew.entry(doc.generation.get() - before[id]).or_default() += 1;
    }
    eprintln!(
        "controller kill: converged {converge_time:?} after the restart; generations grew by \
         {grew:?} (steps: agents); {}",
        tally.summary("desired states (agent, generation)")
    );
    eprintln!(
        "controller kill: broker $SYS {}",
        mosquitto_sys_line(cluster.mqtt_addr, "fault-sys")
            .await
            .expect("$SYS")
    );
    assert!(tally.lost().is_empty(), "{}", tally.summary("desired"));
    assert_eq!(tally.duplicated(), 0, "a generation accepted twice");
    assert!(
        tally.unexpected().is_empty(),
        "{}",
        tally.summary("desired")
    );
    // Every agent that got a rollout replica took exactly one new generation.
    for (id, doc) in &desired {
        let step = u64::from(expected.get(id).is_some_and(|s| s.contains("rollout")));
        assert_eq!(doc.generation.get(), before[id] + step, "{id}");
    }

    // Nothing ran twice, and what did not change was not touched.
    for (old, new) in steady.iter().zip(&steady_after) {
        assert_eq!(
            (&old.node, old.pid),
            (&new.node, new.pid),
            "steady restarted"
        );
    }
    for view in &views {
        for r in view["replicas"].as_array().into_iter().flatten() {
            assert_eq!(r["restarts"], 0, "{r}");
        }
    }
    let steady_pids: BTreeSet<u32> = steady.iter().map(|r| r.pid as u32).collect();
    let rollout_pids: BTreeSet<u32> = rollout.iter().map(|r| r.pid as u32).collect();
    assert_eq!(
        copies_running(&steady_greeting)
            .into_iter()
            .collect::<BTreeSet<_>>(),
        steady_pids
    );
    assert_eq!(
        copies_running(&rollout_greeting)
            .into_iter()
            .collect::<BTreeSet<_>>(),
        rollout_pids
    );
    assert_eq!(rollout_pids.len(), n);
}
