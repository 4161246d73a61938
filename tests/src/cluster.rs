//! Starts a controller, its broker and N agents as real processes.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use verge_shared::SigningKey;

use crate::api::Api;
use crate::require::Tool;
use crate::trust::Roles;
use crate::wait::wait_for;

/// Which broker carries the cluster's MQTT traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    /// rumqttd inside the controller process (the default deployment).
    Embedded,
    /// A real Mosquitto (Debian package `mosquitto`) started by the harness.
    Mosquitto,
    /// A real Mosquitto running the shipped `configs/mosquitto/` files (TLS,
    /// client certificates from the Verge CA, the ACL, the CRL enabled),
    /// with a server certificate from `central-controller broker-cert`.
    /// Needs `tls`: agents enroll with tokens ([`Cluster::add_enrolling_agent`]).
    MosquittoTls,
}

/// Knobs a test may turn; the defaults suit most tests.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub broker: BrokerKind,
    /// How long the controller waits before moving replicas off an
    /// unreachable node. Long by default so that restarts do not move work.
    pub failover_grace_secs: u64,
    /// Extra controller configuration appended to its file (whole tables,
    /// such as a `[placement]` section).
    pub controller_extra: String,
    /// Run the controller with its default republish interval and heartbeat
    /// timeout instead of the tests' short ones (for the footprint benchmark,
    /// which measures default behaviour).
    pub default_intervals: bool,
    /// Run with TLS: HTTPS API, client certificates required at the embedded
    /// broker, agents enrolled with bootstrap tokens
    /// ([`Cluster::add_enrolling_agent`]). Off by default: plain TCP.
    pub tls: bool,
    /// `tls.client_cert_ttl_secs` in TLS mode (the controller's default when `None`).
    pub client_cert_ttl_secs: Option<u64>,
    /// Start the controller on an existing installation instead of a new
    /// one: a directory with the controller's data directory as
    /// `controller/` and its trust bundle as `trust-bundle.json` (an
    /// unpacked upgrade fixture). [`Cluster::roles`] then holds keys the
    /// installation does not know.
    pub existing: Option<PathBuf>,
    /// How long the trust bundle of a new installation is valid.
    pub trust_validity: Duration,
    /// The controller's `RUST_LOG`; `None` is the tests' verbose filter.
    /// Benchmarks pass `info` (the production default) so that they do
    /// not measure debug logging.
    pub controller_log_filter: Option<String>,
    /// [`BrokerKind::Mosquitto`]: run it with `persistence true`, so that
    /// retained messages, persistent sessions and their queued messages
    /// survive [`Cluster::restart_broker`].
    pub broker_persistence: bool,
    /// `[nodes] telemetry_history` (the controller's default when `None`).
    pub telemetry_history: Option<u64>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            broker: BrokerKind::Embedded,
            failover_grace_secs: 120,
            controller_extra: String::new(),
            default_intervals: false,
            tls: false,
            client_cert_ttl_secs: None,
            existing: None,
            trust_validity: Duration::from_secs(86_400),
            controller_log_filter: None,
            broker_persistence: false,
            telemetry_history: None,
        }
    }
}

/// The controller's `RUST_LOG` in tests.
const TEST_LOG_FILTER: &str = "info,central_controller=debug,rumqttd=warn";

/// How long a process may take to come up on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A free TCP port on loopback. The port is released before it is used, so
/// another process could take it in between; on loopback with ephemeral
/// allocation that race is rare enough for tests.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("loopback has free ports")
}

/// The binaries the harness runs, built once per test process.
/// The agent comes first: it is built alone (see [`build_binaries`]).
const BINARIES: [&str; 3] = ["edge-agent", "central-controller", "hello-edge"];

/// The operator tools, built on their own when a test asks for one of
/// their binaries (`verge`, `verge-admin`): most tests need neither, and
/// built together with the controller they would change the features its
/// dependencies are built with.
const TOOLS: [(&str, &str); 2] = [("verge", "verge-cli"), ("verge-admin", "verge-admin")];

/// Runs `cargo build` for `packages` with the profile of `profile_dir`.
fn cargo_build(profile_dir: &Path, packages: &[&str]) {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("build").arg("--quiet");
    for name in packages {
        cmd.args(["-p", name]);
    }
    if profile_dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {packages:?} failed: {status}");
}

/// Builds [`BINARIES`] with the profile of the running test, so that
/// `cargo test -p verge-tests` never runs stale binaries. Cargo's own build
/// lock makes concurrent test processes wait for each other.
///
/// The agent is built on its own: built together with the controller, Cargo
/// would unify their dependencies' features and link the controller's (log
/// filters with regex, CSR parsing) into the agent, which is then not the
/// binary `cargo build --release -p edge-agent` ships.
fn build_binaries(profile_dir: &Path) {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        for group in [&BINARIES[..1], &BINARIES[1..]] {
            cargo_build(profile_dir, group);
        }
    });
}

/// Builds [`TOOLS`], once per test process.
fn build_tools(profile_dir: &Path) {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let packages: Vec<&str> = TOOLS.iter().map(|(_, package)| *package).collect();
        cargo_build(profile_dir, &packages);
    });
}

/// The path of a workspace binary built next to the running test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    // Tests run from target/<profile>/deps/, binaries from target/<profile>/.
    let mut dir = exe.parent().expect("executable has a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    build_binaries(dir);
    if TOOLS.iter().any(|(binary, _)| *binary == name) {
        build_tools(dir);
    }
    dir.join(name)
}

fn spawn_logged(cmd: Command, log: &Path) -> Result<Child> {
    let file = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    spawn_into(cmd, file)
}

/// [`spawn_logged`], appending to `log` (a process started again keeps
/// its earlier output).
fn spawn_logged_appending(cmd: Command, log: &Path) -> Result<Child> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    spawn_into(cmd, file)
}

/// Starts `cmd` with no stdin and stdout and stderr both into `file`.
fn spawn_into(mut cmd: Command, file: fs::File) -> Result<Child> {
    let err = file.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))
}

/// Sends `signal` to a child, waits up to `grace` for it to exit, then kills it.
fn stop_child(child: &mut Child, signal: Signal, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let _ = kill(pid, signal);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Is a process with this pid alive (and not a zombie)?
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One edge agent process and its files.
#[derive(Debug)]
pub struct AgentHandle {
    pub id: String,
    pub region: String,
    pub data_dir: PathBuf,
    config: PathBuf,
    log_dir: PathBuf,
    starts: u32,
    child: Option<Child>,
    /// Extra environment (the enrollment token in TLS mode).
    env: Vec<(String, String)>,
}

impl AgentHandle {
    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(binary("edge-agent"));
        cmd.arg("--config").arg(&self.config);
        cmd.env("RUST_LOG", "info,edge_agent=debug");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        // Each start logs to its own file so a restart keeps the earlier log.
        self.starts += 1;
        let log = self
            .log_dir
            .join(format!("agent-{}-{}.log", self.id, self.starts));
        self.child = Some(spawn_logged(cmd, &log)?);
        Ok(())
    }

    /// Everything this agent logged, over all its starts.
    pub fn log_text(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                fs::read_to_string(self.log_dir.join(format!("agent-{}-{n}.log", self.id)))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The agent process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the agent with SIGKILL, as a power cut or OOM kill would; its
    /// workloads are not told.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the agent and every workload process it started, as a power
    /// cut of the whole node would.
    pub fn power_off(&mut self) {
        self.kill();
        self.kill_leftover_workloads();
    }

    /// Starts the agent again with the same id, config and data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Stops the agent with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Signal::SIGTERM, Duration::from_secs(15));
        }
    }

    /// Kills workload processes that an agent left behind (after SIGKILL),
    /// found through the pid files the agent keeps per workload.
    fn kill_leftover_workloads(&self) {
        let Ok(entries) = fs::read_dir(self.data_dir.join("workloads")) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(text) = fs::read_to_string(entry.path().join("pid")) else {
                continue;
            };
            // The pid is the first line (the agent records more after it).
            let Ok(pid) = text
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .parse::<i32>()
            else {
                continue;
            };
            // Only a process started from this agent's data dir is ours.
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let ours =
                String::from_utf8_lossy(&cmdline).contains(&*self.data_dir.to_string_lossy());
            if ours {
                let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            }
        }
    }
}

/// A running controller, broker and agents.
pub struct Cluster {
    dir: tempfile::TempDir,
    controller: Option<Child>,
    controller_log: PathBuf,
    log_filter: String,
    mosquitto: Option<Mosquitto>,
    pub agents: Vec<AgentHandle>,
    pub api: Api,
    pub broker: BrokerKind,
    pub mqtt_addr: SocketAddr,
    pub controller_data: PathBuf,
    /// The root, controller and publisher keys of this cluster.
    pub roles: std::sync::Arc<Roles>,
    /// The signed trust bundle every part starts from.
    pub bundle_file: PathBuf,
    /// The controller's CA certificate (PEM) in TLS mode.
    pub ca_pem: Option<String>,
}

impl Cluster {
    /// Starts the controller (and Mosquitto, if asked) and waits until the
    /// API answers. Agents are added with [`Cluster::add_agent`].
    pub async fn start(options: ClusterOptions) -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("verge-test-").tempdir()?;
        let api_port = free_port();
        let mqtt_port = free_port();
        let mqtt_addr: SocketAddr = ([127, 0, 0, 1], mqtt_port).into();
        let roles = std::sync::Arc::new(Roles::generate());
        let (controller_data, bundle_file) = match &options.existing {
            Some(existing) => (
                existing.join("controller"),
                existing.join("trust-bundle.json"),
            ),
            None => {
                let controller_data = dir.path().join("controller");
                roles.install_controller_key(&controller_data)?;
                let bundle_file = dir.path().join("trust-bundle.json");
                let bundle = roles.bundle_valid_for(1, options.trust_validity);
                fs::write(&bundle_file, roles.sign_bundle(&bundle))?;
                (controller_data, bundle_file)
            }
        };

        let mut mosquitto = match options.broker {
            BrokerKind::Embedded | BrokerKind::MosquittoTls => None,
            BrokerKind::Mosquitto => {
                Some(start_mosquitto(dir.path(), mqtt_port, options.broker_persistence).await?)
            }
        };
        let broker_section = match options.broker {
            BrokerKind::Embedded => format!("listen = \"{mqtt_addr}\""),
            BrokerKind::Mosquitto => format!("url = \"mqtt://{mqtt_addr}\""),
            // Agents are told the name (enrollment's broker_url), and the
            // controller connects to the address: the certificate has both.
            BrokerKind::MosquittoTls => {
                assert!(options.tls, "BrokerKind::MosquittoTls needs tls");
                format!(
                    "url = \"mqtts://{mqtt_addr}\"\nadvertise_url = \"mqtts://localhost:{mqtt_port}\""
                )
            }
        };
        let config = format!(
            "data_dir = \"{data}\"\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\n\
             [broker]\n{broker_section}\n\n[deploy]\n{republish}\n\
             [nodes]\n{heartbeat_timeout}{history}failover_grace_secs = {grace}\n\n\
             [trust]\nbundle_file = \"{bundle}\"\n\n[tls]\nenabled = {tls}\n{ttl}\n{extra}\n",
            data = controller_data.display(),
            bundle = bundle_file.display(),
            tls = options.tls,
            ttl = options
                .client_cert_ttl_secs
                .map(|s| format!("client_cert_ttl_secs = {s}\n"))
                .unwrap_or_default(),
            grace = options.failover_grace_secs,
            history = options
                .telemetry_history
                .map(|n| format!("telemetry_history = {n}\n"))
                .unwrap_or_default(),
            extra = options.controller_extra,
            republish = if options.default_intervals {
                ""
            } else {
                "republish_interval_secs = 10\n"
            },
            heartbeat_timeout = if options.default_intervals {
                ""
            } else {
                "heartbeat_timeout_secs = 10\n"
            },
        );
        let config_path = dir.path().join("controller.toml");
        fs::write(&config_path, config)?;
        if options.broker == BrokerKind::MosquittoTls {
            mosquitto = Some(start_shipped_mosquitto(dir.path(), &config_path, mqtt_port).await?);
        }

        let mut cmd = Command::new(binary("central-controller"));
        cmd.arg("run").arg("--config").arg(&config_path);
        let log_filter = options
            .controller_log_filter
            .clone()
            .unwrap_or_else(|| TEST_LOG_FILTER.to_owned());
        cmd.env("RUST_LOG", &log_filter);
        let controller_log = dir.path().join("controller.log");
        let controller = spawn_logged(cmd, &controller_log)?;

        crate::tls::install_provider();
        let ca_pem = if options.tls {
            let path = controller_data.join("ca/ca.pem");
            Some(
                wait_for("the controller's CA certificate", START_TIMEOUT, || async {
                    fs::read_to_string(&path).map_err(|e| e.to_string())
                })
                .await,
            )
        } else {
            None
        };
        let scheme = if options.tls { "https" } else { "http" };
        let base = format!("{scheme}://127.0.0.1:{api_port}");
        let health_client = crate::tls::http_client(ca_pem.as_deref())?;
        wait_healthy(&health_client, &base).await;
        let token = fs::read_to_string(controller_data.join("admin-token"))
            .context("controller wrote no admin-token")?
            .trim()
            .to_owned();
        Ok(Cluster {
            dir,
            controller: Some(controller),
            controller_log,
            log_filter,
            mosquitto,
            agents: Vec::new(),
            api: Api::with_ca(base, token, ca_pem.as_deref()).with_publisher(roles.clone()),
            broker: options.broker,
            mqtt_addr,
            controller_data,
            roles,
            bundle_file,
            ca_pem,
        })
    }

    /// A cluster with default options and these `(id, region)` agents, all
    /// online. Panics, failing the test, if any part does not come up.
    pub async fn with_agents(agents: &[(&str, &str)]) -> Cluster {
        let mut cluster = Cluster::start(ClusterOptions::default())
            .await
            .expect("cluster starts");
        for (id, region) in agents {
            cluster.add_agent(id, region).await.expect("agent starts");
        }
        cluster
    }

    /// Starts an agent process with `id` in `region` and waits until the
    /// controller lists it as online.
    pub async fn add_agent(&mut self, id: &str, region: &str) -> Result<usize> {
        let broker = self.mqtt_addr;
        self.add_agent_with(id, region, broker, "").await
    }

    /// [`Cluster::add_agent`] with the agent connecting to `broker` (a
    /// [`crate::proxy::Proxy`], say) and `extra` top-level config lines.
    pub async fn add_agent_with(
        &mut self,
        id: &str,
        region: &str,
        broker: SocketAddr,
        extra: &str,
    ) -> Result<usize> {
        self.spawn_agent(id, region, broker, extra, Vec::new())?;
        self.wait_node_online(id).await;
        Ok(self.agents.len() - 1)
    }

    /// TLS mode: starts an agent that has only `token` (in its environment,
    /// never in a file) and the CA file, connecting to `broker` (the
    /// cluster's, or a proxy in front of it), and waits until it has
    /// enrolled and the controller lists it as online.
    pub async fn add_enrolling_agent(
        &mut self,
        id: &str,
        region: &str,
        token: &str,
        broker: SocketAddr,
    ) -> Result<usize> {
        let env = vec![("VERGE_AGENT_ENROLL_TOKEN".to_owned(), token.to_owned())];
        self.spawn_agent(id, region, broker, "", env)?;
        self.wait_node_online(id).await;
        Ok(self.agents.len() - 1)
    }

    /// Writes an agent's config and starts it, without waiting.
    pub fn spawn_agent(
        &mut self,
        id: &str,
        region: &str,
        broker: SocketAddr,
        extra: &str,
        env: Vec<(String, String)>,
    ) -> Result<usize> {
        let data_dir = self.dir.path().join(format!("agent-{id}"));
        self.spawn_agent_at(id, region, broker, extra, env, &data_dir)
    }

    /// [`Cluster::add_agent_with`] with the agent's data in `data_dir`
    /// (a small file system a test mounted, say).
    pub async fn add_agent_at(
        &mut self,
        id: &str,
        region: &str,
        broker: SocketAddr,
        extra: &str,
        data_dir: &Path,
    ) -> Result<usize> {
        let index = self.spawn_agent_at(id, region, broker, extra, Vec::new(), data_dir)?;
        self.wait_node_online(id).await;
        Ok(index)
    }

    /// Writes an agent's config with its data in `data_dir` and starts it,
    /// without waiting.
    fn spawn_agent_at(
        &mut self,
        id: &str,
        region: &str,
        broker: SocketAddr,
        extra: &str,
        env: Vec<(String, String)>,
        data_dir: &Path,
    ) -> Result<usize> {
        let data_dir = data_dir.to_owned();
        fs::create_dir_all(&data_dir)?;
        let config = self.dir.path().join(format!("agent-{id}.toml"));
        let (scheme, ca_line) = match &self.ca_pem {
            Some(_) => (
                "mqtts",
                format!(
                    "ca_file = \"{}\"\n",
                    self.controller_data.join("ca/ca.pem").display()
                ),
            ),
            None => ("mqtt", String::new()),
        };
        fs::write(
            &config,
            format!(
                "id = \"{id}\"\nregion = \"{region}\"\ndata_dir = \"{data}\"\n\
                 broker_url = \"{scheme}://{mqtt}\"\ncontroller_url = \"{api}\"\n{ca_line}\
                 trust_bundle_file = \"{bundle}\"\nheartbeat_interval_secs = 1\n{extra}\n\n\
                 [capacity]\ncpu_millis = 4000\nmemory_mb = 4096\n",
                data = data_dir.display(),
                mqtt = broker,
                api = self.api.base,
                bundle = self.bundle_file.display(),
            ),
        )?;
        let mut agent = AgentHandle {
            id: id.to_owned(),
            region: region.to_owned(),
            data_dir,
            config,
            log_dir: self.dir.path().to_owned(),
            starts: 0,
            child: None,
            env,
        };
        agent.spawn()?;
        self.agents.push(agent);
        Ok(self.agents.len() - 1)
    }

    /// Waits until the controller lists agent `id` as online and healthy.
    pub async fn wait_node_online(&self, id: &str) {
        wait_for(&format!("node {id} online"), START_TIMEOUT, || async {
            let node = self.api.node(id).await.map_err(|e| e.to_string())?;
            if node["online"] == true && node["healthy"] == true {
                Ok(())
            } else {
                Err(node.to_string())
            }
        })
        .await;
    }

    pub fn agent(&mut self, id: &str) -> &mut AgentHandle {
        self.agents
            .iter_mut()
            .find(|a| a.id == id)
            .unwrap_or_else(|| panic!("no agent {id} in this cluster"))
    }

    /// Stops the controller (and with it the embedded broker) with SIGTERM.
    pub fn stop_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            stop_child(&mut c, Signal::SIGTERM, Duration::from_secs(15));
        }
    }

    /// Kills the controller with SIGKILL, as a crash or an OOM kill would
    /// (with the embedded broker, the broker goes too).
    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// [`BrokerKind::Mosquitto`]: stops the broker (SIGTERM: Mosquitto
    /// writes its persistence file) and starts it again on the same port
    /// with the same configuration; every client connection is closed.
    pub async fn restart_broker(&mut self) -> Result<()> {
        self.mosquitto
            .as_mut()
            .context("no Mosquitto in this cluster")?
            .restart()
            .await
    }

    /// Starts the controller again on the same ports and data directory and
    /// waits until its API answers.
    pub async fn start_controller(&mut self) -> Result<()> {
        self.stop_controller();
        let mut cmd = Command::new(binary("central-controller"));
        cmd.arg("run")
            .arg("--config")
            .arg(self.dir.path().join("controller.toml"));
        cmd.env("RUST_LOG", &self.log_filter);
        let log = self.dir.path().join("controller-restarted.log");
        self.controller = Some(spawn_logged(cmd, &log)?);
        wait_healthy(self.api.http(), &self.api.base).await;
        Ok(())
    }

    /// The controller's configuration file.
    pub fn controller_config(&self) -> PathBuf {
        self.dir.path().join("controller.toml")
    }

    /// The controller process's pid, while it runs.
    pub fn controller_pid(&self) -> Option<u32> {
        self.controller.as_ref().map(Child::id)
    }

    /// The controller's signing key: tests use it to forge documents that
    /// only fail the checks they mean to test.
    pub fn controller_signing_key(&self) -> &SigningKey {
        &self.roles.controller
    }

    /// The whole controller log so far (of its first start).
    pub fn controller_log(&self) -> String {
        fs::read_to_string(&self.controller_log).unwrap_or_default()
    }

    /// The Mosquitto process's pid (`None` with the embedded broker).
    pub fn mosquitto_pid(&self) -> Option<u32> {
        self.mosquitto.as_ref().map(|m| m.child.id())
    }

    /// The broker's log so far (Mosquitto only; empty with the embedded one).
    pub fn broker_log(&self) -> String {
        self.mosquitto
            .as_ref()
            .map(|m| fs::read_to_string(&m.log).unwrap_or_default())
            .unwrap_or_default()
    }

    /// [`BrokerKind::MosquittoTls`]: what an operator does after revoking a
    /// node. Copies the controller's CRL (`<data_dir>/ca/crl.pem`) to the
    /// broker's `crlfile`, has Mosquitto reread it (SIGHUP), then restarts
    /// Mosquitto, because connections already open survive a reload.
    pub async fn publish_crl_to_broker(&mut self) -> Result<()> {
        let crl =
            fs::read(self.controller_data.join("ca/crl.pem")).context("the controller's CRL")?;
        let mosquitto = self
            .mosquitto
            .as_mut()
            .context("no Mosquitto in this cluster")?;
        let target = mosquitto.files.join("ca.crl");
        fs::write(&target, crl)?;
        fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        mosquitto.reload()?;
        mosquitto.restart().await
    }

    /// [`BrokerKind::MosquittoTls`]: what an operator does after creating or
    /// deleting a consumer. Copies the access list the controller keeps
    /// (`<data_dir>/ca/mosquitto.acl`, the shipped rules plus one block per
    /// consumer) to the broker's `acl_file` and has Mosquitto reread it.
    pub fn publish_acl_to_broker(&self) -> Result<()> {
        let acl = fs::read(self.controller_data.join("ca/mosquitto.acl"))
            .context("the controller's mosquitto.acl")?;
        let mosquitto = self
            .mosquitto
            .as_ref()
            .context("no Mosquitto in this cluster")?;
        let target = mosquitto.files.join("verge.acl");
        fs::write(&target, acl)?;
        fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        mosquitto.reload()
    }

    /// The last lines of every log, for a failing test's output.
    pub fn logs(&self) -> String {
        let mut out = format!("--- controller ---\n{}\n", tail(&self.controller_log, 60));
        let mut logs: Vec<PathBuf> = fs::read_dir(self.dir.path())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.sort();
        for log in logs.iter().filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with("agent-") && n.to_string_lossy().ends_with(".log")
            })
        }) {
            out.push_str(&format!("--- {} ---\n{}\n", log.display(), tail(log, 40)));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for agent in &mut self.agents {
            agent.stop();
            agent.kill_leftover_workloads();
        }
        if let Some(mut c) = self.controller.take() {
            stop_child(&mut c, Signal::SIGTERM, Duration::from_secs(10));
        }
        drop(self.mosquitto.take());
    }
}

/// Waits until the controller at `base` answers `/healthz`.
async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let health = format!("{base}/healthz");
    wait_for("the controller's /healthz", START_TIMEOUT, || async {
        match client.get(&health).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

/// Starts `mosquitto` from the Debian package on `port` with a config of our
/// own (plain TCP, anonymous, `$SYS` counters every second, persistence in
/// `dir` when asked), and waits until it accepts connections.
async fn start_mosquitto(dir: &Path, port: u16, persistence: bool) -> Result<Mosquitto> {
    use std::os::unix::fs::PermissionsExt as _;
    let persistence = if persistence {
        // Mosquitto started as root switches to the `mosquitto` user, which
        // must reach and write its persistence directory.
        let store = dir.join("mosquitto-persistence");
        fs::create_dir_all(&store)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        fs::set_permissions(&store, fs::Permissions::from_mode(0o777))?;
        format!(
            "persistence true\npersistence_location {}/\n",
            store.display()
        )
    } else {
        "persistence false\n".to_owned()
    };
    let conf = dir.join("mosquitto.conf");
    fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}sys_interval 1\n\
             log_dest stderr\nlog_type error\nlog_type warning\n"
        ),
    )?;
    Mosquitto::start(&conf, &dir.join("mosquitto.log"), port).await
}

/// The shipped `configs/mosquitto/` file `name`.
pub fn shipped_mosquitto_file(name: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs/mosquitto")
        .join(name);
    fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

/// The shipped `verge.conf` with only what a test must change rewritten:
/// the listener port (bound to loopback), the directory of its files
/// (`/etc/mosquitto/verge/` becomes `files`), the persistence directory,
/// and, with `crl`, the `crlfile` line uncommented. Fails if the shipped
/// file no longer contains a line it rewrites, so a test never runs a
/// configuration the shipped one does not resemble.
pub fn shipped_mosquitto_conf(
    port: u16,
    files: &Path,
    persistence: &Path,
    crl: bool,
) -> Result<String> {
    fn replace(text: &str, from: &str, to: &str) -> Result<String> {
        if !text.contains(from) {
            bail!("verge.conf no longer contains {from:?}");
        }
        Ok(text.replace(from, to))
    }
    let mut conf = shipped_mosquitto_file("verge.conf")?;
    if crl {
        conf = replace(&conf, "#crlfile ", "crlfile ")?;
    }
    let conf = replace(
        &conf,
        "listener 8883\n",
        &format!("listener {port} 127.0.0.1\n"),
    )?;
    let conf = replace(
        &conf,
        "/etc/mosquitto/verge/",
        &format!("{}/", files.display()),
    )?;
    replace(
        &conf,
        "/var/lib/mosquitto/",
        &format!("{}/", persistence.display()),
    )
}

/// [`BrokerKind::MosquittoTls`]: the broker's certificate, the CA
/// certificate and the CRL come from `central-controller broker-cert` (as
/// docs/operators/install.md tells operators), the configuration is the
/// shipped one ([`shipped_mosquitto_conf`], CRL on) and the ACL the shipped
/// one as it is.
async fn start_shipped_mosquitto(
    dir: &Path,
    controller_config: &Path,
    port: u16,
) -> Result<Mosquitto> {
    use std::os::unix::fs::PermissionsExt as _;
    // Mosquitto started as root switches to the `mosquitto` user: it must
    // be able to read its files and write its persistence directory.
    let readable =
        |path: &Path, mode: u32| fs::set_permissions(path, fs::Permissions::from_mode(mode));
    readable(dir, 0o755)?;
    let files = dir.join("mosquitto");
    let persistence = files.join("persistence");
    fs::create_dir_all(&persistence)?;
    readable(&files, 0o755)?;
    readable(&persistence, 0o777)?;
    let output = Command::new(binary("central-controller"))
        .args([
            "broker-cert",
            "--name",
            "localhost",
            "--name",
            "127.0.0.1",
            "--config",
        ])
        .arg(controller_config)
        .arg("--out")
        .arg(&files)
        .output()?;
    if !output.status.success() {
        bail!(
            "central-controller broker-cert failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The broker's user reads the key (an operator would chown it instead).
    readable(&files.join("server.key"), 0o644)?;
    fs::write(
        files.join("verge.acl"),
        shipped_mosquitto_file("verge.acl")?,
    )?;
    let conf = files.join("verge.conf");
    fs::write(
        &conf,
        shipped_mosquitto_conf(port, &files, &persistence, true)?,
    )?;
    for name in ["verge.acl", "verge.conf", "ca.crl", "ca.crt", "server.crt"] {
        readable(&files.join(name), 0o644)?;
    }
    Mosquitto::start(&conf, &dir.join("mosquitto.log"), port).await
}

/// A `mosquitto` process, stopped by PID when dropped (its log is printed
/// if that happens while a test panics).
pub struct Mosquitto {
    child: Child,
    log: PathBuf,
    conf: PathBuf,
    port: u16,
    /// The directory of its configuration file.
    pub files: PathBuf,
}

impl Mosquitto {
    /// Runs `mosquitto -c <conf>` (found by [`Tool::path`]) with its output in
    /// `log`, and waits until it accepts TCP connections on loopback `port`.
    pub async fn start(conf: &Path, log: &Path, port: u16) -> Result<Mosquitto> {
        let child = Self::spawn(conf, log, port).await?;
        Ok(Mosquitto {
            child,
            log: log.to_owned(),
            conf: conf.to_owned(),
            port,
            files: conf.parent().map(Path::to_owned).unwrap_or_default(),
        })
    }

    async fn spawn(conf: &Path, log: &Path, port: u16) -> Result<Child> {
        // Tests call `require::missing(Tool::Mosquitto)` first and skip.
        let Some(exe) = Tool::Mosquitto.path() else {
            bail!("mosquitto is not installed (apt-get install -y mosquitto; .ci/run does this)");
        };
        let mut cmd = Command::new(exe);
        cmd.arg("-c").arg(conf);
        let mut child = spawn_logged_appending(cmd, log)?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + START_TIMEOUT;
        // Bounded by START_TIMEOUT; a broker that exits (a bad config) fails at once.
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("mosquitto exited with {status}: {}", tail(log, 20));
            }
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(_) => return Ok(child),
                Err(e) if Instant::now() >= deadline => {
                    stop_child(&mut child, Signal::SIGTERM, Duration::from_secs(5));
                    bail!("mosquitto does not accept connections on {addr}: {e}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Asks the broker to reload its configuration (SIGHUP), as an operator
    /// does after changing its access list or revocation list.
    pub fn reload(&self) -> Result<()> {
        let pid = Pid::from_raw(i32::try_from(self.child.id())?);
        kill(pid, Signal::SIGHUP).context("SIGHUP mosquitto")
    }

    /// Stops the broker and starts it again with the same configuration
    /// (its log continues in the same file), which closes every client
    /// connection.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.child = Self::spawn(&self.conf, &self.log, self.port).await?;
        Ok(())
    }

    fn stop(&mut self) {
        stop_child(&mut self.child, Signal::SIGTERM, Duration::from_secs(5));
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), tail(&self.log, 60));
        }
    }
}
