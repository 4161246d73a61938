//! `central-controller node ...` and `central-controller token ...`: cordon,
//! drain, uncordon, revoke and list nodes, and create, list and revoke
//! bootstrap tokens, through a running controller's HTTP API, with the admin
//! token read from a file (so it never shows in the process list).

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
    /// The controller's CA certificate (`<data_dir>/ca/ca.pem`), to verify an https:// API.
    #[arg(long)]
    ca_file: Option<PathBuf>,
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
    /// Revoke a node: its certificates stop working, its desired state is withdrawn.
    Revoke {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token; it is printed once and stored only as a hash.
    Create {
        /// The region enrolled nodes belong to.
        #[arg(long)]
        region: String,
        /// How many nodes may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it stays valid, in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List tokens (never their text).
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a token by id.
    Revoke {
        id: String,
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

/// Sends one request and returns the JSON body (`Null` when empty), or the
/// API's error message.
async fn call(
    api: &ApiArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let token = read_token(&api.token_file)?;
    let url = format!("{}{path}", api.api.trim_end_matches('/'));
    let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
    if let Some(ca_file) = &api.ca_file {
        let ca_pem = std::fs::read_to_string(ca_file)
            .with_context(|| format!("reading the CA certificate {}", ca_file.display()))?;
        let config = central_controller::tls::client_config(&ca_pem)
            .with_context(|| format!("using the CA certificate {}", ca_file.display()))?;
        builder = builder.tls_backend_preconfigured(config);
    }
    let client = builder.build().context("building the HTTP client")?;
    let mut request = client.request(method.clone(), &url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status();
    if status == reqwest::StatusCode::NO_CONTENT {
        return Ok(Value::Null);
    }
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
    let cordon = if node.get("revoked").and_then(Value::as_bool) == Some(true) {
        "revoked"
    } else {
        node.get("cordon")
            .and_then(Value::as_str)
            .unwrap_or("schedulable")
    };
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
        NodeCommand::Revoke { id, api } => ("revoke", id, api),
        NodeCommand::List { api } => {
            let nodes = call(api, reqwest::Method::GET, "/api/v1/nodes", None).await?;
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
        None,
    )
    .await?;
    println!("{}", describe(&node));
    Ok(())
}

/// One line per token: id, region, uses left, state, expiry.
fn describe_token(token: &Value) -> String {
    let text = |key: &str| token.get(key).and_then(Value::as_str).unwrap_or("-");
    let uses = token.get("uses_left").and_then(Value::as_u64).unwrap_or(0);
    format!(
        "{}\tregion {}\tuses left: {uses}\t{}\texpires {}",
        text("id"),
        text("region"),
        text("state"),
        text("expires_at")
    )
}

/// Runs one token command, printing its result on stdout.
pub async fn run_token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            region,
            uses,
            ttl_secs,
            api,
        } => {
            let body = serde_json::json!({ "region": region, "uses": uses, "ttl_secs": ttl_secs });
            let token = call(&api, reqwest::Method::POST, "/api/v1/tokens", Some(body)).await?;
            println!("{}", describe_token(&token));
            // The token itself, alone on the last line (shown only this once).
            println!(
                "{}",
                token.get("token").and_then(Value::as_str).unwrap_or("-")
            );
        }
        TokenCommand::List { api } => {
            let tokens = call(&api, reqwest::Method::GET, "/api/v1/tokens", None).await?;
            let list = tokens.get("tokens").and_then(Value::as_array);
            for token in list.map_or(&[][..], Vec::as_slice) {
                println!("{}", describe_token(token));
            }
        }
        TokenCommand::Revoke { id, api } => {
            call(
                &api,
                reqwest::Method::DELETE,
                &format!("/api/v1/tokens/{id}"),
                None,
            )
            .await?;
            println!("revoked token {id}");
        }
    }
    Ok(())
}
