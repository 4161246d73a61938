//! `central-controller node ...`: cordon, drain, uncordon and list nodes
//! through a running controller's HTTP API, with the admin token read from
//! a file (so it never shows in the process list).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::Value;

/// How long one API request may take before the command gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the API is and how to authenticate.
#[derive(clap::Args)]
pub struct ApiArgs {
    /// The controller's API base address.
    #[arg(long, default_value = "http://127.0.0.1:7700")]
    api: String,
    /// A file holding the admin token (the controller writes it to `<data_dir>/admin-token`).
    #[arg(long)]
    token_file: PathBuf,
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Stop placing new replicas on a node; it keeps what it runs.
    Cordon {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Move a node's replicas elsewhere (respecting latency targets) and place nothing new on it.
    Drain {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Let a cordoned or drained node take replicas again.
    Uncordon {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the nodes with their region, health, cordon and replica count.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin token from {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token.to_owned())
}

/// Sends one request and returns the JSON body, or the API's error message.
async fn call(api: &ApiArgs, method: reqwest::Method, path: &str) -> anyhow::Result<Value> {
    let token = read_token(&api.token_file)?;
    let url = format!("{}{path}", api.api.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let response = client
        .request(method.clone(), &url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status();
    let body: Value = response.json().await.with_context(|| {
        format!("{method} {url} answered {status} with a body that is not JSON")
    })?;
    if !status.is_success() {
        let message = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("no error message");
        bail!("{method} {url} failed with {status}: {message}");
    }
    Ok(body)
}

/// One line per node: id, region, health, cordon, replicas.
fn describe(node: &Value) -> String {
    let text = |key: &str| node.get(key).and_then(Value::as_str).unwrap_or("-");
    let healthy = match node.get("healthy").and_then(Value::as_bool) {
        Some(true) => "healthy",
        Some(false) => "unhealthy",
        None => "-",
    };
    let cordon = node
        .get("cordon")
        .and_then(Value::as_str)
        .unwrap_or("schedulable");
    let replicas = node
        .get("workloads")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    format!(
        "{}\tregion {}\t{healthy}\t{cordon}\treplicas: {replicas}",
        text("id"),
        text("region")
    )
}

/// Runs one node command, printing its result on stdout.
pub async fn run(command: NodeCommand) -> anyhow::Result<()> {
    let (verb, id, api) = match &command {
        NodeCommand::Cordon { id, api } => ("cordon", id, api),
        NodeCommand::Drain { id, api } => ("drain", id, api),
        NodeCommand::Uncordon { id, api } => ("uncordon", id, api),
        NodeCommand::List { api } => {
            let nodes = call(api, reqwest::Method::GET, "/api/v1/nodes").await?;
            let list = nodes.get("nodes").and_then(Value::as_array);
            for node in list.map_or(&[][..], Vec::as_slice) {
                println!("{}", describe(node));
            }
            return Ok(());
        }
    };
    let node = call(
        api,
        reqwest::Method::POST,
        &format!("/api/v1/nodes/{id}/{verb}"),
    )
    .await?;
    println!("{}", describe(&node));
    Ok(())
}
