//! Latency-aware placement with real processes: four agents in two regions,
//! latency between the regions injected by a delaying UDP proxy in front of
//! every agent's probe listener. A service with a 20 ms target to region-a
//! lands on region-a; losing its node moves it to the other region-a node;
//! losing both leaves it unplaced with the reason; healing brings it back,
//! and the copies are counted by asking the workloads themselves. Agents
//! also measure their round-trip time to the controller's probe listener.
//! Cordon, drain and uncordon go through the `verge node` CLI.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::UdpSocket;
use verge_shared::latency::Probe;
use verge_tests::cluster::free_port;
use verge_tests::verge::{Run, Verge};
use verge_tests::workload::{ask, hello_artifact, hello_spec, wait_running};
use verge_tests::{Api, Cluster, ClusterOptions, wait_for};

/// Round-trip time added between the two regions (all of it on the way in).
const CROSS_REGION_DELAY: Duration = Duration::from_millis(40);

/// A UDP proxy in front of one agent's probe listener that delays probes
/// from the other region. Probes arrive from the prober's listener address,
/// which tells the proxy the prober's region; answers go back by nonce.
async fn delaying_proxy(
    listener: SocketAddr,
    region: &'static str,
    regions_by_addr: HashMap<SocketAddr, &'static str>,
) -> SocketAddr {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("proxy bind"));
    let addr = socket.local_addr().expect("proxy addr");
    let pending: Arc<Mutex<HashMap<u64, SocketAddr>>> = Arc::default();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                break;
            };
            let bytes = buf[..n].to_vec();
            match Probe::decode(&bytes) {
                Some(Probe::Request { nonce }) => {
                    let delay = match regions_by_addr.get(&from) {
                        Some(r) if *r != region => CROSS_REGION_DELAY,
                        _ => Duration::ZERO,
                    };
                    // Bounded: one entry per probe in flight, pruned when answered.
                    pending.lock().expect("lock").insert(nonce, from);
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = socket.send_to(&bytes, listener).await;
                    });
                }
                Some(Probe::Response { nonce }) if from == listener => {
                    let back = pending.lock().expect("lock").remove(&nonce);
                    if let Some(back) = back {
                        let _ = socket.send_to(&bytes, back).await;
                    }
                }
                _ => {}
            }
        }
    });
    addr
}

/// Every copy of `service` that answers, asked through the ports each node
/// reports: (node the API names, agent the workload names).
async fn copies(api: &Api, service: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(nodes) = api.get("/api/v1/nodes").await else {
        return out;
    };
    for node in nodes["nodes"].as_array().cloned().unwrap_or_default() {
        for w in node["workloads"].as_array().cloned().unwrap_or_default() {
            if w["service"] != service {
                continue;
            }
            if let Some(port) = w["ports"]["http"].as_u64()
                && let Ok(answer) = ask(port).await
            {
                let agent = answer["agent"].as_str().unwrap_or_default().to_owned();
                out.push((node["id"].as_str().unwrap_or_default().to_owned(), agent));
            }
        }
    }
    out
}

fn replica(view: &Value) -> Value {
    view["replicas"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_target_failover_and_heal_keep_one_copy() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let regions_file = scratch.path().join("regions.toml");
    std::fs::write(
        &regions_file,
        "[[region]]\nname = \"region-a\"\n[[region]]\nname = \"region-b\"\n\
         [[hint]]\nfrom = \"region-a\"\nto = \"region-b\"\nms = 100\n",
    )
    .expect("regions file");
    let mut cluster = Cluster::start(ClusterOptions {
        failover_grace_secs: 5,
        controller_extra: format!(
            "[placement]\nregions_file = \"{}\"\nprobe_interval_secs = 1\nlatency_window_secs = 10\n\
             probe_listen = \"127.0.0.1:{}\"\n",
            regions_file.display(),
            free_port()
        ),
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster");

    let agents = [
        ("a1", "region-a"),
        ("a2", "region-a"),
        ("b1", "region-b"),
        ("b2", "region-b"),
    ];
    let listeners: BTreeMap<&str, SocketAddr> = agents
        .iter()
        .map(|(id, _)| (*id, SocketAddr::from(([127, 0, 0, 1], free_port()))))
        .collect();
    let regions_by_addr: HashMap<SocketAddr, &'static str> = agents
        .iter()
        .map(|(id, region)| (listeners[id], *region))
        .collect();
    for (id, region) in agents {
        let proxy = delaying_proxy(listeners[id], region, regions_by_addr.clone()).await;
        let probe = format!(
            "[probe]\nlisten = \"{}\"\nadvertise = \"{proxy}\"\n",
            listeners[id]
        );
        let broker = cluster.mqtt_addr;
        cluster
            .add_agent_with(id, region, broker, &probe)
            .await
            .expect("agent starts");
    }
    let api = cluster.api.clone();

    // The controller measures: region-b's nodes are over 20 ms from region-a.
    wait_for(
        "measured latency between the regions",
        Duration::from_secs(90),
        || async {
            let latency = api
                .get("/api/v1/latency")
                .await
                .map_err(|e| e.to_string())?;
            let b_to_a = &latency["nodes"]["b1"]["region-a"];
            let a_to_a = &latency["nodes"]["a1"]["region-a"];
            let measured = b_to_a["source"] == "measured" && a_to_a["source"] == "measured";
            let far = b_to_a["p50_ms"].as_f64().unwrap_or(0.0) >= 30.0;
            let near = a_to_a["p90_ms"].as_f64().unwrap_or(f64::MAX) < 20.0;
            // Every agent also probes the controller's own listener (no proxy in between).
            let to_controller = agents.iter().all(|(id, _)| {
                let figure = &latency["controller"][id];
                figure["source"] == "measured"
                    && figure["p50_ms"].as_f64().is_some_and(|ms| ms < 20.0)
            });
            if measured && far && near && to_controller {
                Ok(())
            } else {
                Err(latency.to_string())
            }
        },
    )
    .await;
    let regions = api.get("/api/v1/regions").await.expect("regions");
    assert_eq!(regions["regions"][0]["name"], "region-a", "{regions}");
    assert_eq!(regions["regions"][0]["healthy_nodes"], 2, "{regions}");

    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    let mut spec = hello_spec(&artifact, "near", 1, &[]);
    spec["placement"] = json!({"latency": {"to": ["region-a"], "max_ms": 20, "percentile": 90}});
    let reply = api.put_service("hello", &spec).await.expect("PUT");
    assert_eq!(reply.status, 201, "{}", reply.body);
    let first = wait_running(&api, "hello", "near").await.remove(0);
    assert_eq!(first.region, "region-a", "{first:?}");
    let other = if first.node == "a1" { "a2" } else { "a1" };

    // Node loss: the replica moves to the other region-a node, never to region-b.
    cluster.agent(&first.node).power_off();
    let moved = wait_for(
        "the replica re-placed on the other region-a node",
        Duration::from_secs(120),
        || async {
            let running = wait_running(&api, "hello", "near").await.remove(0);
            if running.node == other {
                Ok(running)
            } else {
                Err(format!("{running:?}"))
            }
        },
    )
    .await;
    assert_eq!(
        copies(&api, "hello").await,
        [(other.to_owned(), other.to_owned())]
    );

    // Both region-a nodes lost: unplaced, and the reason says why.
    cluster.agent(other).power_off();
    let reason = wait_for(
        "the replica unplaced with a reason",
        Duration::from_secs(120),
        || async {
            let view = api.service("hello").await.map_err(|e| e.to_string())?;
            let r = replica(&view);
            let reason = r["reason"].as_str().unwrap_or_default().to_owned();
            let down = reason.contains("2 offline") || reason.contains("2 not responding");
            if r["state"] == "unplaced"
                && down
                && reason.contains("2 over the 20 ms target to region-a")
            {
                Ok(reason)
            } else {
                Err(r.to_string())
            }
        },
    )
    .await;
    assert!(reason.starts_with("0/4 nodes: "), "{reason}");
    assert!(
        copies(&api, "hello").await.is_empty(),
        "nothing runs in region-b"
    );

    // Heal the node that ran it last: placement comes back, and at no poll
    // do two copies answer.
    cluster.agent(other).restart().expect("restart");
    let most = Arc::new(AtomicUsize::new(0));
    let healed = wait_for(
        "the replica placed again after the heal",
        Duration::from_secs(120),
        || {
            let (api, most) = (api.clone(), most.clone());
            async move {
                let now = copies(&api, "hello").await;
                most.fetch_max(now.len(), Ordering::Relaxed);
                let view = api.service("hello").await.map_err(|e| e.to_string())?;
                let r = replica(&view);
                let running = r["state"] == "running" && r["region"] == "region-a";
                match now.as_slice() {
                    [(node, agent)] if running && r["node"] == node.as_str() && node == agent => {
                        Ok((node.clone(), r["pid"].as_u64().unwrap_or_default()))
                    }
                    _ => Err(format!("copies {now:?}, replica {r}")),
                }
            }
        },
    )
    .await;
    assert_eq!(
        most.load(Ordering::Relaxed),
        1,
        "two copies answered during the heal"
    );
    assert_eq!(healed.0, other);
    assert!(healed.1 != moved.pid, "a fresh process after the power cut");

    // The first node returns too: it gets a newer desired state without the
    // replica, and once it has applied it exactly one copy runs.
    cluster.agent(&first.node).restart().expect("restart");
    cluster.wait_node_online(&first.node).await;
    wait_for(
        "the returning node applied its newer desired state",
        Duration::from_secs(60),
        || async {
            let node = api.node(&first.node).await.map_err(|e| e.to_string())?;
            let settled = !node["desired_generation"].is_null()
                && node["applied_generation"] == node["desired_generation"]
                && node["workloads"] == json!([]);
            if settled {
                Ok(())
            } else {
                Err(node.to_string())
            }
        },
    )
    .await;
    assert_eq!(
        copies(&api, "hello").await,
        [(other.to_owned(), other.to_owned())]
    );
}

/// The words of `verge node ...`'s table row for node `id`.
fn row<'a>(run: &'a Run, id: &str) -> Vec<&'a str> {
    run.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_else(|| panic!("no row for {id}:\n{run}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cordon_keeps_drain_moves_and_uncordon_restores() {
    let cluster = Cluster::with_agents(&[("edge-a", "region-a"), ("edge-b", "region-a")]).await;
    let api = cluster.api.clone();
    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    let spec = hello_spec(&artifact, "held", 1, &["region-a"]);
    api.put_service("hello", &spec).await.expect("PUT");
    let first = wait_running(&api, "hello", "held").await.remove(0);
    let other = if first.node == "edge-a" {
        "edge-b"
    } else {
        "edge-a"
    };

    // Through the CLI, as an operator would: `verge node ...`.
    let verge = Verge::new()
        .env("VERGE_ADDR", &api.base)
        .env("VERGE_TOKEN", api.token());
    let cordoned = verge.run(&["node", "cordon", &first.node]).await.ok();
    assert_eq!(
        row(&cordoned, &first.node)[..3],
        [first.node.as_str(), "region-a", "cordoned"]
    );
    let node = api.node(&first.node).await.expect("node");
    assert_eq!(node["cordon"], "cordoned", "{node}");
    let still = wait_running(&api, "hello", "held").await.remove(0);
    assert_eq!(still.pid, first.pid, "cordon keeps what runs");

    let drained = verge.run(&["node", "drain", &first.node]).await.ok();
    assert_eq!(row(&drained, &first.node)[2], "drained", "{drained}");
    wait_for(
        "the replica drained to the other node",
        Duration::from_secs(90),
        || async {
            let running = wait_running(&api, "hello", "held").await.remove(0);
            let left = api.node(&first.node).await.map_err(|e| e.to_string())?;
            if running.node == other && left["workloads"] == json!([]) {
                Ok(())
            } else {
                Err(left.to_string())
            }
        },
    )
    .await;

    let uncordoned = verge.run(&["node", "uncordon", &first.node]).await.ok();
    assert_eq!(row(&uncordoned, &first.node)[2], "ready", "{uncordoned}");
    let node = api.node(&first.node).await.expect("node");
    assert!(node["cordon"].is_null(), "{node}");
    let listed = verge.run(&["node", "ls"]).await.ok();
    assert_eq!(
        listed.stdout.lines().count(),
        3,
        "a header and two nodes: {listed}"
    );
    assert_eq!(
        row(&listed, other)[..5],
        [
            other,
            "region-a",
            "ready",
            env!("CARGO_PKG_VERSION"),
            "hello:running"
        ],
        "{listed}"
    );
    // An unknown node: the API's error, and exit code 1.
    let missing = verge.run(&["node", "cordon", "nobody"]).await.exits(1);
    assert!(
        missing.stderr.starts_with("error: not_found: ") && missing.stderr.contains("nobody"),
        "{missing}"
    );
    // The API itself answers 404 as well.
    let reply = api
        .request(reqwest::Method::POST, "/api/v1/nodes/nobody/cordon", None)
        .await
        .expect("POST");
    assert_eq!(reply.status, 404);
}
