//! Data directory fixtures for the upgrade tests: a controller and an agent
//! data directory written by real processes, packed as one tar.gz with the
//! facts a newer release must find in them (`expected.json`).
//!
//! `tests/tests/upgrade.rs` makes one with `make_fixture` (ignored; run it
//! at the last commit of a data format) and opens every committed one.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cluster::{Cluster, ClusterOptions};
use crate::wait::wait_for;

/// The agent of a fixture.
pub const AGENT: &str = "edge-a";
pub const REGION: &str = "region-a";
/// A service running a plain executable, and one running from a tar.gz.
pub const PLAIN: &str = "plain";
pub const PACKED: &str = "packed";

/// What a fixture's directories held when its processes stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    /// The services the controller stored, sorted.
    pub services: Vec<String>,
    /// The generation of the agent's last desired state (controller and agent agree).
    pub generation: u64,
    /// The id of the agent's node key, as the controller pinned it.
    pub agent_key_id: String,
    /// Reports queued in the agent's outbox while the broker was down.
    pub outbox_entries: u64,
    /// The outbox's last sequence number.
    pub outbox_last_seq: u64,
}

/// How long a fixture's trust bundle and agent certificate stay valid: a
/// test must not start failing when they expire. Nine years, inside the
/// CA's ten.
const LIFETIME: Duration = Duration::from_secs(9 * 365 * 86_400);

/// The workload both services run: a shell loop (argv[0] stays the
/// artifact's path, so the harness can find and kill it).
const SCRIPT: &[u8] = b"#!/bin/sh\nwhile :; do sleep 1; done\n";

/// A tar.gz of `files` (path, mode, content).
pub fn tar_gz(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, mode, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(*mode);
        header.set_cksum();
        builder
            .append_data(&mut header, path, *body)
            .expect("a tar entry in memory");
    }
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .expect("a tar.gz in memory")
}

fn spec(artifact: &str) -> Value {
    json!({
        "artifact": artifact,
        "replicas": 1,
        "regions": [REGION],
        "resources": { "cpu_millis": 100, "memory_mb": 32 },
    })
}

/// Runs a TLS cluster with one enrolled agent and both services, stops the
/// controller (so the agent queues reports), stops the agent, and packs
/// `controller/`, `agent/`, `trust-bundle.json` and `expected.json` into
/// `out`.
pub async fn make(out: &Path) -> Result<Expected> {
    let mut cluster = Cluster::start(ClusterOptions {
        tls: true,
        client_cert_ttl_secs: Some(LIFETIME.as_secs()),
        trust_validity: LIFETIME,
        ..ClusterOptions::default()
    })
    .await?;
    let api = cluster.api.clone();
    let (_, token) = api.create_token(REGION, 1).await?;
    let env = vec![("VERGE_AGENT_ENROLL_TOKEN".to_owned(), token)];
    let broker = cluster.mqtt_addr;
    cluster.spawn_agent(AGENT, REGION, broker, "telemetry_interval_secs = 1", env)?;
    cluster.wait_node_online(AGENT).await;

    let plain = api.upload_artifact(SCRIPT.to_vec()).await?;
    api.put_service(PLAIN, &spec(&plain)).await?.ok()?;
    let archive = tar_gz(&[("bin/run", 0o755, SCRIPT), ("README", 0o644, b"fixture\n")]);
    let packed = api.upload_artifact(archive).await?;
    let mut packed_spec = spec(&packed);
    packed_spec["entrypoint"] = json!("bin/run");
    api.put_service(PACKED, &packed_spec).await?.ok()?;

    let generation = wait_for("both services running", Duration::from_secs(90), || async {
        let mut generations = Vec::new();
        for name in [PLAIN, PACKED] {
            let view = api.service(name).await.map_err(|e| e.to_string())?;
            let r = &view["replicas"][0];
            if r["state"] != "running" || r["applied_generation"] != r["desired_generation"] {
                return Err(format!("{name} not settled: {view}"));
            }
            generations.push(r["applied_generation"].as_u64().ok_or("no generation")?);
        }
        match generations[..] {
            [a, b] if a == b => Ok(a),
            _ => Err(format!("generations differ: {generations:?}")),
        }
    })
    .await;
    let node = api.node(AGENT).await?;
    let agent_key_id = node["key_id"]
        .as_str()
        .with_context(|| format!("no key_id in the node view {node}"))?
        .to_owned();

    // Broker down: the agent keeps reporting into its outbox.
    cluster.stop_controller();
    let agent = cluster.agent(AGENT);
    wait_for(
        "the agent to notice the broker is gone",
        Duration::from_secs(60),
        || async {
            let lost = agent.log_text().matches("MQTT connection lost").count();
            if lost >= 3 {
                Ok(())
            } else {
                Err(format!("{lost} reconnect attempts"))
            }
        },
    )
    .await;
    agent.stop();
    let agent_dir = agent.data_dir.clone();

    let state = edge_agent::state::SledStore::open(&agent_dir.join("state"))?;
    let outbox = edge_agent::outbox::Outbox::open(state.db(), agent_dir.join("state"), u64::MAX)?;
    let outbox_entries = outbox.metrics().queued;
    let outbox_last_seq = outbox.last_seq();
    anyhow::ensure!(outbox_entries > 0, "the outbox is empty");
    drop(outbox);
    drop(state);

    let mut services = vec![PLAIN.to_owned(), PACKED.to_owned()];
    services.sort();
    let expected = Expected {
        services,
        generation,
        agent_key_id,
        outbox_entries,
        outbox_last_seq,
    };
    let file = fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::best(),
    ));
    builder.follow_symlinks(false);
    builder.append_dir_all("controller", &cluster.controller_data)?;
    builder.append_dir_all("agent", &agent_dir)?;
    builder.append_path_with_name(&cluster.bundle_file, "trust-bundle.json")?;
    let facts = serde_json::to_vec_pretty(&expected)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(facts.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "expected.json", facts.as_slice())?;
    builder.into_inner()?.finish()?.sync_all()?;
    Ok(expected)
}
