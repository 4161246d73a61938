//! `central-controller dev`: the controller with its embedded broker plus one
//! local edge agent as a supervised child process, using locally generated
//! development keys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use verge_shared::SigningKey;
use verge_shared::trust::payload_type::TRUST_BUNDLE;
use verge_shared::trust::{Publisher, RootRole, TrustBundle};

use central_controller::Controller;
use central_controller::config::{
    ApiConfig, BrokerConfig, BrokerEndpoint, Config, DEFAULT_MAX_ARTIFACT_BYTES, DeployConfig,
    NodesConfig,
};

/// How long the agent gets to stop after SIGTERM before SIGKILL.
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
const RESTART_MIN_BACKOFF: Duration = Duration::from_secs(1);
const RESTART_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A child that ran this long before dying resets the backoff.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// The local agent's identity in dev mode.
pub const AGENT_ID: &str = "local-1";
pub const AGENT_REGION: &str = "local";

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(
        "the edge-agent binary was not found at {path}; build it with `cargo build -p edge-agent{release}` or pass --agent-bin"
    )]
    AgentMissing {
        path: PathBuf,
        release: &'static str,
    },
    #[error("running `cargo build -p edge-agent` failed: {0}")]
    Build(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the agent {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The controller configuration dev mode runs with.
pub fn config(data_dir: &Path, api_listen: SocketAddr, mqtt_listen: SocketAddr) -> Config {
    Config {
        data_dir: data_dir.to_owned(),
        api: ApiConfig {
            listen: api_listen,
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            public_metrics: false,
        },
        broker: BrokerConfig {
            endpoint: BrokerEndpoint::Embedded(mqtt_listen),
            topics: verge_shared::Topics::default(),
            advertise_url: None,
            client: central_controller::config::BrokerClient::default(),
        },
        deploy: DeployConfig::default(),
        nodes: NodesConfig::default(),
        placement: central_controller::config::PlacementConfig::default(),
        trust: central_controller::config::TrustConfig {
            bundle_file: Some(bundle_path(data_dir)),
        },
        // Development mode is the one place plain TCP is the default.
        tls: central_controller::config::TlsConfig {
            enabled: false,
            ..central_controller::config::TlsConfig::default()
        },
        audit: central_controller::config::AuditConfig::default(),
        watch: central_controller::config::WatchConfig::default(),
        console: central_controller::config::ConsoleConfig::default(),
        alarms: central_controller::config::AlarmsConfig::default(),
    }
}

/// Where dev mode keeps its root and publisher keys and the bundle it signs.
fn dev_keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("dev-keys")
}

/// The trust bundle dev mode signs, for the controller and the local agent.
pub fn bundle_path(data_dir: &Path) -> PathBuf {
    dev_keys_dir(data_dir).join("bundle.json")
}

/// The dev publisher key, for `verge-admin release sign --key ...`.
pub fn publisher_key_path(data_dir: &Path) -> PathBuf {
    dev_keys_dir(data_dir).join("publisher.pk8")
}

fn dev_key(path: &Path) -> Result<SigningKey, DevError> {
    let write_error = |source| DevError::Write {
        path: path.to_owned(),
        source,
    };
    match std::fs::read(path) {
        Ok(pkcs8) => SigningKey::from_pkcs8(&pkcs8)
            .map_err(|e| write_error(std::io::Error::other(e.to_string()))),
        Err(_) => {
            let (key, pkcs8) = SigningKey::generate()
                .map_err(|e| write_error(std::io::Error::other(e.to_string())))?;
            central_controller::keys::create_file(path, &pkcs8, 0o600)
                .map_err(|e| write_error(std::io::Error::other(e.to_string())))?;
            Ok(key)
        }
    }
}

/// Creates (once) a dev root key and a dev publisher key allowed every
/// service, and signs a fresh trust bundle listing them and the controller
/// key. Each start signs a higher version, which installs as an update.
pub fn prepare_trust(data_dir: &Path) -> Result<(), DevError> {
    let controller =
        central_controller::keys::load_or_create_signing_key(data_dir).map_err(|e| {
            DevError::Write {
                path: data_dir.join("keys"),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
    let dir = dev_keys_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|source| DevError::Write {
        path: dir.clone(),
        source,
    })?;
    let root = dev_key(&dir.join("root.pk8"))?;
    let publisher = dev_key(&publisher_key_path(data_dir))?;
    let now = verge_shared::Timestamp::now();
    let bundle = TrustBundle {
        schema_version: verge_shared::messages::SCHEMA_VERSION,
        version: now.unix_millis(),
        issued_at: now,
        expires_at: now.saturating_add(Duration::from_secs(365 * 86_400)),
        root: RootRole {
            keys: vec![root.public_key()],
            threshold: 1,
        },
        controllers: vec![controller.public_key()],
        publishers: vec![Publisher {
            name: "dev publisher".to_owned(),
            key: publisher.public_key(),
            services: vec!["*".to_owned()],
        }],
        reset_generations: false,
    };
    let path = bundle_path(data_dir);
    std::fs::write(&path, root.sign_json(TRUST_BUNDLE, &bundle))
        .map_err(|source| DevError::Write { path, source })
}

/// Finds the agent binary: `explicit`, else next to the current executable,
/// building it first when we were started by `cargo run`.
pub fn locate_agent(explicit: Option<PathBuf>) -> Result<PathBuf, DevError> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let release = dir.file_name().is_some_and(|n| n == "release");
    let path = dir.join("edge-agent");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut command = std::process::Command::new(cargo);
        command.args(["build", "-p", "edge-agent"]);
        if release {
            command.arg("--release");
        }
        let status = command
            .status()
            .map_err(|e| DevError::Build(e.to_string()))?;
        if !status.success() {
            return Err(DevError::Build(status.to_string()));
        }
    }
    if path.is_file() {
        Ok(path)
    } else {
        Err(DevError::AgentMissing {
            path,
            release: if release { " --release" } else { "" },
        })
    }
}

/// Writes `<data_dir>/agent/agent.toml` for the local agent.
pub fn write_agent_config(controller: &Controller) -> Result<PathBuf, DevError> {
    let agent_dir = controller.data_dir.join("agent");
    let path = agent_dir.join("agent.toml");
    let text = agent_config_text(controller, &agent_dir.join("data"));
    std::fs::create_dir_all(&agent_dir)
        .and_then(|()| std::fs::write(&path, text))
        .map_err(|source| DevError::Write {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn agent_config_text(controller: &Controller, agent_data: &Path) -> String {
    format!(
        "id = {}\nregion = {}\ndata_dir = {}\nbroker_url = {}\ncontroller_url = {}\ntrust_bundle_file = {}\nheartbeat_interval_secs = 10\n\
         # On one machine no uplink is metered: telemetry every 10 s, for the console's charts.\ntelemetry_interval_secs = 10\n\
         # Ctrl-C stops everything dev started, workloads included.\nstop_workloads_on_exit = true\n",
        toml_string(AGENT_ID),
        toml_string(AGENT_REGION),
        toml_string(&agent_data.display().to_string()),
        toml_string(&controller.broker_url.to_string()),
        toml_string(&format!("http://{}", controller.api_addr)),
        toml_string(&bundle_path(&controller.data_dir).display().to_string()),
    )
}

fn spawn_agent(binary: &Path, config: &Path, log: &Path) -> Result<Child, DevError> {
    let spawn_error = |source| DevError::Spawn {
        path: binary.to_owned(),
        source,
    };
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(spawn_error)?;
    Command::new(binary)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)
}

/// Prints the dev banner (stdout).
pub fn print_banner(controller: &Controller, agent_pid: Option<u32>, log: &Path) {
    let api = format!("http://{}", controller.api_addr);
    let token = &controller.admin_token.value;
    println!("################################################################");
    println!("#  DEV MODE: DEV KEYS ARE IN USE                               #");
    println!("#  Root, publisher and controller keys and the admin token     #");
    println!("#  were generated locally in the data dir, and the root and    #");
    println!("#  publisher keys sit next to the controller: NOT production.  #");
    println!("################################################################");
    println!("api:         {api}");
    println!("console:     {api}/  (sign in with the admin token)");
    println!("mqtt:        {}", controller.broker_url);
    println!("admin token: {token}");
    println!("data dir:    {}", controller.data_dir.display());
    println!(
        "publisher:   {} (dev key; sign releases with verge-admin)",
        publisher_key_path(&controller.data_dir).display()
    );
    match agent_pid {
        Some(pid) => println!("agent:       {AGENT_ID} (pid {pid}), log {}", log.display()),
        None => println!(
            "agent:       {AGENT_ID} (not running), log {}",
            log.display()
        ),
    }
    println!();
    println!("Try:");
    println!("  curl -H 'Authorization: Bearer {token}' {api}/api/v1/nodes");
    println!(
        "  curl -H 'Authorization: Bearer {token}' --data-binary @./my-binary {api}/api/v1/artifacts"
    );
    println!(
        "  verge-admin release sign --spec release.toml --key {} --out release.json",
        publisher_key_path(&controller.data_dir).display()
    );
    println!(
        "  curl -H 'Authorization: Bearer {token}' --data-binary @release.json {api}/api/v1/releases"
    );
}

/// Asks the agent to stop, then kills it after [`AGENT_STOP_TIMEOUT`].
async fn stop_agent(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // The child may have exited already; then there is nothing to signal.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match tokio::time::timeout(AGENT_STOP_TIMEOUT, child.wait()).await {
        Ok(_) => info!("The local agent stopped."),
        Err(_) => {
            warn!("The local agent did not stop in time; killing it.");
            let _ = child.kill().await;
        }
    }
}

/// Runs and supervises the local agent until `cancel`; restarts it with
/// backoff when it dies.
pub async fn supervise_agent(
    mut child: Child,
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    cancel: CancellationToken,
) {
    let mut backoff = RESTART_MIN_BACKOFF;
    loop {
        let started = tokio::time::Instant::now();
        let exit = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                stop_agent(&mut child).await;
                return;
            }
            exit = child.wait() => exit,
        };
        error!(status = ?exit, retry_in = ?backoff, log = %log.display(), "The local agent exited unexpectedly; restarting it.");
        if started.elapsed() > STABLE_RUN {
            backoff = RESTART_MIN_BACKOFF;
        }
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RESTART_MAX_BACKOFF);
            match spawn_agent(&binary, &config, &log) {
                Ok(next) => {
                    info!(pid = next.id(), "Restarted the local agent.");
                    child = next;
                    break;
                }
                Err(e) => {
                    error!(error = %e, retry_in = ?backoff, "Could not restart the local agent.")
                }
            }
        }
    }
}

/// Writes the agent config, starts the agent, prints the banner; the returned
/// future supervises the agent until `cancel`.
pub fn start_agent(
    controller: &Controller,
    binary: PathBuf,
    cancel: CancellationToken,
) -> Result<impl Future<Output = ()> + use<>, DevError> {
    let config = write_agent_config(controller)?;
    let log = controller.data_dir.join("agent").join("agent.log");
    let child = spawn_agent(&binary, &config, &log)?;
    print_banner(controller, child.id(), &log);
    Ok(supervise_agent(child, binary, config, log, cancel))
}
