//! Asking services themselves whether they run: the example `hello-edge`
//! workload answers with its agent, region, greeting and pid.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::api::Api;
use crate::cluster::binary;
use crate::wait::wait_for;

/// The example workload's executable, the artifact tests deploy.
pub fn hello_artifact() -> Vec<u8> {
    std::fs::read(binary("hello-edge")).expect("hello-edge binary is readable")
}

/// The pids of every example workload process on this machine started
/// with `--greeting greeting`, found in `/proc`: the copies that really
/// run, whatever any agent or the API says.
pub fn copies_running(greeting: &str) -> Vec<u32> {
    let wanted = format!("--greeting\0{greeting}\0");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            // The agent's confinement helper carries the workload's argv
            // until it execs it: only the workload itself counts.
            cmdline.contains(&wanted)
                && !cmdline.contains("exec-workload")
                && crate::cluster::process_alive(*pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Asks the workload listening on `port` who it is.
pub async fn ask(port: u64) -> Result<Value> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let resp = client
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .with_context(|| format!("workload on port {port}"))?;
    Ok(resp.json().await?)
}

/// One replica as the API shows it and as the workload itself confirms it.
#[derive(Clone, Debug)]
pub struct RunningReplica {
    pub node: String,
    pub region: String,
    pub port: u64,
    pub pid: u64,
    pub applied_generation: u64,
}

/// Checks that every replica of `service` runs (API: state `running` at the
/// node's current generation) and answers with `greeting` from the node the
/// API names, with the pid the API names.
pub async fn check_running(
    api: &Api,
    service: &str,
    greeting: &str,
) -> Result<Vec<RunningReplica>, String> {
    let view = api.service(service).await.map_err(|e| e.to_string())?;
    let replicas = view["replicas"].as_array().ok_or("no replicas array")?;
    if replicas.is_empty() {
        return Err(format!("no replicas yet: {view}"));
    }
    let mut out = Vec::new();
    for r in replicas {
        let settled = r["state"] == "running"
            && !r["applied_generation"].is_null()
            && r["applied_generation"] == r["desired_generation"];
        if !settled {
            return Err(format!("replica not settled: {r}"));
        }
        let port = r["ports"]["http"]
            .as_u64()
            .ok_or(format!("no http port: {r}"))?;
        let answer = ask(port).await.map_err(|e| format!("{e:#}"))?;
        let node = r["node"].as_str().unwrap_or_default().to_owned();
        if answer["greeting"] != greeting
            || answer["agent"] != node.as_str()
            || answer["pid"] != r["pid"]
        {
            return Err(format!("workload answered {answer} for replica {r}"));
        }
        out.push(RunningReplica {
            node,
            region: answer["region"].as_str().unwrap_or_default().to_owned(),
            port,
            pid: r["pid"].as_u64().unwrap_or_default(),
            applied_generation: r["applied_generation"].as_u64().unwrap_or_default(),
        });
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(out)
}

/// Waits until `check_running` holds.
pub async fn wait_running(api: &Api, service: &str, greeting: &str) -> Vec<RunningReplica> {
    wait_for(
        &format!("service {service} running with greeting {greeting:?}"),
        Duration::from_secs(60),
        || check_running(api, service, greeting),
    )
    .await
}

/// Waits until replica `index` of `service`, as the API shows it, satisfies
/// `ok`; returns that replica's view. `what` names the condition for the
/// timeout message.
pub async fn wait_replica(
    api: &Api,
    service: &str,
    index: usize,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(&format!("{service}[{index}]: {what}"), timeout, || async {
        let view = api.service(service).await.map_err(|e| e.to_string())?;
        let replica = view["replicas"][index].clone();
        if ok(&replica) {
            Ok(replica)
        } else {
            Err(replica.to_string())
        }
    })
    .await
}

/// Uploads the example workload, deploys one replica of it as `service` in
/// `region` greeting with `greeting`, and waits until it answers.
pub async fn deploy_hello(
    api: &Api,
    service: &str,
    greeting: &str,
    region: &str,
) -> Vec<RunningReplica> {
    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");
    let reply = api
        .put_service(service, &hello_spec(&artifact, greeting, 1, &[region]))
        .await
        .expect("PUT");
    assert!(reply.status.is_success(), "{}", reply.body);
    wait_running(api, service, greeting).await
}

/// A service spec for the example workload: `replicas` copies in `regions`,
/// started with `--greeting greeting`, on a port the agent picks.
pub fn hello_spec(artifact: &str, greeting: &str, replicas: u32, regions: &[&str]) -> Value {
    serde_json::json!({
        "artifact": artifact,
        "replicas": replicas,
        "regions": regions,
        "args": ["--greeting", greeting],
        "ports": [{ "name": "http" }],
        "resources": { "cpu_millis": 100, "memory_mb": 32 },
    })
}
