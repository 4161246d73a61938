//! The controller's configuration file (`controller.toml`): parsing, environment
//! overrides and validation that reports every problem at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use verge_shared::Topics;
use verge_shared::topic::DEFAULT_PREFIX;

/// Where the API listens when `api.listen` is not set.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7700";
/// Where the embedded broker listens when neither `broker.listen` nor `broker.url` is set.
pub const DEFAULT_BROKER_LISTEN: &str = "127.0.0.1:7883";

/// Default bound on one uploaded artifact: 1 GiB.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// A validated controller configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub api: ApiConfig,
    pub broker: BrokerConfig,
    pub deploy: DeployConfig,
    pub nodes: NodesConfig,
    pub placement: PlacementConfig,
    pub trust: TrustConfig,
    pub tls: TlsConfig,
    pub audit: AuditConfig,
    pub watch: WatchConfig,
    pub console: ConsoleConfig,
    pub alarms: AlarmsConfig,
}

/// `[alarms]`: how many cleared alarms the history keeps (docs/alarms.md).
/// The oldest go first, when either bound is passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlarmsConfig {
    pub history: usize,
    pub max_age: Duration,
}

impl Default for AlarmsConfig {
    fn default() -> Self {
        Self {
            history: 10_000,
            max_age: Duration::from_secs(30 * 86_400),
        }
    }
}

/// `[console]`: the web console's sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// A session unused this long ends (5 minutes to 12 hours).
    pub idle_timeout: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(1800),
        }
    }
}

/// `[audit]`: how much of the audit log is kept. The oldest entries go
/// first, when either bound is passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    pub max_records: u64,
    pub max_age: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            max_records: 100_000,
            max_age: Duration::from_secs(90 * 86_400),
        }
    }
}

/// `[watch]`: the bounds of the watch stream (`GET /api/v1/watch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// How many recent changes are kept for watchers that reconnect.
    pub buffer: usize,
    /// How many changes may wait for one watcher before it is dropped as
    /// too slow.
    pub queue: usize,
    /// How many watchers may be connected at once.
    pub max_watchers: usize,
    /// How long a quiet stream waits before it sends a keep-alive comment.
    pub keep_alive: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            buffer: 4096,
            queue: 256,
            max_watchers: 256,
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// `[tls]`: the controller's CA, TLS on the API and the broker listener,
/// and the lifetime of agents' client certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// TLS on the API and (embedded broker) client certificates required on
    /// the broker listener. Plain TCP only in `dev` or when set to false.
    pub enabled: bool,
    /// DNS names and IP addresses in the server certificate.
    pub server_names: Vec<String>,
    /// Lifetime of an agent's client certificate.
    pub client_cert_ttl: Duration,
    /// How long after its certificate expired a node may still renew online.
    pub renew_grace: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            server_names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            client_cert_ttl: Duration::from_secs(86_400),
            renew_grace: Duration::from_secs(30 * 86_400),
        }
    }
}

/// Where the root-signed trust bundle comes from (`[trust]`).
#[derive(Clone, Debug, Default)]
pub struct TrustConfig {
    /// Installed at first start, and later whenever it holds a newer
    /// version than the controller's copy in `<data_dir>/trust/`.
    pub bundle_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub max_artifact_bytes: u64,
    /// `GET /metrics` without a token (for a Prometheus that cannot send
    /// one); otherwise it needs a viewer's.
    pub public_metrics: bool,
}

/// Where the MQTT broker is, and the topic tree under it.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub endpoint: BrokerEndpoint,
    pub topics: Topics,
    /// The broker URL agents are told at enrollment (`broker.advertise_url`);
    /// `None`: the external `url`, or the embedded listener's address.
    pub advertise_url: Option<BrokerUrl>,
    /// How the controller's own client authenticates to an external broker.
    pub client: BrokerClient,
}

/// `[broker]` fields for an external broker: whom to trust over `mqtts://`,
/// which client certificate to present, and an optional login.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerClient {
    /// CA certificates (PEM) that verify the broker's certificate; the
    /// controller's own CA (`<data_dir>/ca/ca.pem`) when `None`.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM) given by the operator; when
    /// `None`, the controller issues itself one from its CA (CN
    /// `controller`), kept in `<data_dir>/ca/controller.pem` and renewed.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// MQTT user name, and the file holding the password.
    pub login: Option<(String, PathBuf)>,
}

impl BrokerClient {
    /// The configured files, each with the field that names it.
    fn files_mut(&mut self) -> Vec<(&'static str, &mut PathBuf)> {
        let mut files = Vec::new();
        if let Some(ca) = &mut self.ca_file {
            files.push(("broker.ca_file", ca));
        }
        if let Some((cert, key)) = &mut self.cert {
            files.push(("broker.cert_file", cert));
            files.push(("broker.key_file", key));
        }
        if let Some((_, password)) = &mut self.login {
            files.push(("broker.password_file", password));
        }
        files
    }
}

/// Exactly one of: run the embedded broker on an address, or use an external one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerEndpoint {
    Embedded(SocketAddr),
    External(BrokerUrl),
}

impl BrokerEndpoint {
    /// The URL the controller's own client connects to. The embedded broker is
    /// reached through TCP like any other, so both cases share one code path.
    pub fn client_url(&self) -> BrokerUrl {
        match self {
            BrokerEndpoint::External(url) => url.clone(),
            BrokerEndpoint::Embedded(addr) => self.client_url_at(*addr),
        }
    }

    /// The URL of an embedded broker listening on `addr` (its internal
    /// port when the terminator fronts it).
    pub fn client_url_at(&self, addr: SocketAddr) -> BrokerUrl {
        match self {
            BrokerEndpoint::External(url) => url.clone(),
            BrokerEndpoint::Embedded(_) => {
                let host = if addr.ip().is_unspecified() {
                    "127.0.0.1".to_owned()
                } else {
                    addr.ip().to_string()
                };
                BrokerUrl {
                    host,
                    port: addr.port(),
                    tls: false,
                }
            }
        }
    }
}

/// An MQTT broker address: `mqtt://host:port` (plain TCP) or
/// `mqtts://host:port` (TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS, the broker's certificate verified.
    pub tls: bool,
}

impl BrokerUrl {
    /// Parses `mqtt://host[:port]` (port 1883 when absent) or
    /// `mqtts://host[:port]` (port 8883 when absent).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (rest, tls, default_port) = if let Some(rest) = text.strip_prefix("mqtts://") {
            (rest, true, 8883)
        } else if let Some(rest) = text.strip_prefix("mqtt://") {
            (rest, false, 1883)
        } else {
            return Err(format!(
                "{text:?} must start with mqtt:// (plain TCP) or mqtts:// (TLS)"
            ));
        };
        let rest = rest.trim_end_matches('/');
        // A bracketed IPv6 address may end in a colon-free group: only a
        // colon after the closing bracket (or in a name) starts a port.
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !rest.starts_with('[') || host.ends_with(']') => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("{text:?} has an invalid port"))?,
            ),
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', ' ', '[', ']']) {
            return Err(format!("{text:?} has no usable host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct DeployConfig {
    /// How long a signed desired state stays valid for a fresh agent.
    pub desired_state_ttl: Duration,
    /// How often every stored desired state is republished (retained) as a
    /// backstop, re-signing those with less than half their TTL left. The
    /// controller also republishes everything on each (re)connect to the
    /// broker, which is when a broker that restarted has lost its retained
    /// messages; so the periodic pass is rare by default (docs/protocol.md).
    pub republish_interval: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct NodesConfig {
    /// No heartbeat or status for this long makes a node unhealthy.
    pub heartbeat_timeout: Duration,
    /// How long an unhealthy node keeps its replicas.
    pub failover_grace: Duration,
    /// A node that has not answered the controller's call to announce
    /// (sent whenever it connects to the broker) within this is not
    /// responding; agents answer within the first third of it.
    pub announce_timeout: Duration,
    /// How many of each node's latest telemetry samples are kept in memory
    /// for the API and the console (0: none, and telemetry is not read).
    pub telemetry_history: usize,
}

/// The longest `nodes.announce_timeout_secs`: agents spread their answers
/// over a third of it, at most `verge_shared::announce::MAX_SPREAD_MS`.
pub const MAX_ANNOUNCE_TIMEOUT_SECS: u64 = 180;

/// The most telemetry samples kept per node: at 80 bytes a sample, a day
/// of one-minute samples, about 115 KB per node.
pub const MAX_TELEMETRY_HISTORY: u64 = 1440;

/// Regions and latency measurement (`[placement]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementConfig {
    /// The regions file (`regions.toml`); relative paths are resolved
    /// against the directory of the controller's configuration file.
    pub regions_file: Option<PathBuf>,
    /// How often agents probe their targets and report.
    pub probe_interval: Duration,
    /// How long a latency sample counts; without fresh samples a figure
    /// falls back to the static hint.
    pub latency_window: Duration,
    /// Where the controller answers agents' probes (UDP); `None`: agents
    /// do not measure their latency to the controller.
    pub probe_listen: Option<SocketAddr>,
    /// The address agents probe; defaults to `probe_listen`.
    pub probe_advertise: Option<SocketAddr>,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            regions_file: None,
            probe_interval: Duration::from_secs(10),
            latency_window: Duration::from_secs(300),
            probe_listen: None,
            probe_advertise: None,
        }
    }
}

impl Default for DeployConfig {
    fn default() -> Self {
        Self {
            desired_state_ttl: Duration::from_secs(86_400),
            // Six hours: a quarter of the default TTL, so a document is
            // re-signed well before it expires, at about 2 KB per agent and
            // pass instead of a pass every minute on a metered uplink.
            republish_interval: Duration::from_secs(6 * 3600),
        }
    }
}

impl Default for NodesConfig {
    fn default() -> Self {
        Self {
            // Three of the agent's default heartbeat intervals (120 s).
            heartbeat_timeout: Duration::from_secs(360),
            failover_grace: Duration::from_secs(30),
            announce_timeout: Duration::from_secs(30),
            // An hour at one sample a minute, 15 hours at the agent's
            // default 900 s; about 3.5 KB per node.
            telemetry_history: 60,
        }
    }
}

/// Every problem found in a configuration, each naming its field.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {source_name}:\n  - {}", problems.join("\n  - "))]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    broker: RawBroker,
    #[serde(default)]
    deploy: RawDeploy,
    #[serde(default)]
    nodes: RawNodes,
    #[serde(default)]
    placement: RawPlacement,
    #[serde(default)]
    trust: RawTrust,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    watch: RawWatch,
    #[serde(default)]
    console: RawConsole,
    #[serde(default)]
    alarms: RawAlarms,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAlarms {
    history: Option<u64>,
    max_age_days: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    idle_timeout_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    max_records: Option<u64>,
    max_age_days: Option<u64>,
}

impl RawAudit {
    fn validate(self, problems: &mut Vec<String>) -> AuditConfig {
        let defaults = AuditConfig::default();
        let max_records = match self.max_records {
            Some(n) if !(100..=100_000_000).contains(&n) => {
                problems.push(format!(
                    "audit.max_records: {n} is out of range; must be 100 to 100000000"
                ));
                defaults.max_records
            }
            other => other.unwrap_or(defaults.max_records),
        };
        let max_age = match self.max_age_days {
            Some(n) if !(1..=3650).contains(&n) => {
                problems.push(format!(
                    "audit.max_age_days: {n} is out of range; must be 1 to 3650"
                ));
                defaults.max_age
            }
            Some(n) => Duration::from_secs(n * 86_400),
            None => defaults.max_age,
        };
        AuditConfig {
            max_records,
            max_age,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    buffer: Option<u64>,
    queue: Option<u64>,
    max_watchers: Option<u64>,
    keep_alive_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    bundle_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    enabled: Option<bool>,
    server_names: Option<Vec<String>>,
    client_cert_ttl_secs: Option<u64>,
    renew_grace_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    regions_file: Option<PathBuf>,
    probe_interval_secs: Option<u64>,
    latency_window_secs: Option<u64>,
    probe_listen: Option<SocketAddr>,
    probe_advertise: Option<SocketAddr>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<String>,
    max_artifact_bytes: Option<u64>,
    public_metrics: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    listen: Option<String>,
    url: Option<String>,
    topic_prefix: Option<String>,
    advertise_url: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    username: Option<String>,
    password_file: Option<PathBuf>,
}

impl RawBroker {
    /// The external-broker fields; each problem names its field.
    fn validate_client(
        &mut self,
        endpoint: Option<&BrokerEndpoint>,
        problems: &mut Vec<String>,
    ) -> BrokerClient {
        let external_tls = match endpoint {
            Some(BrokerEndpoint::External(url)) => Some(url.tls),
            _ => None,
        };
        for (field, set) in [
            ("broker.ca_file", self.ca_file.is_some()),
            ("broker.cert_file", self.cert_file.is_some()),
            ("broker.key_file", self.key_file.is_some()),
        ] {
            if set && external_tls == Some(false) {
                problems.push(format!(
                    "{field}: applies only to a TLS broker; write broker.url as mqtts://host:port"
                ));
            } else if set && self.listen.is_some() {
                problems.push(format!(
                    "{field}: applies only to an external broker (broker.url), not the embedded one"
                ));
            }
        }
        let cert = match (self.cert_file.take(), self.key_file.take()) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                problems.push("broker.key_file: is required with broker.cert_file".into());
                None
            }
            (None, Some(_)) => {
                problems.push("broker.cert_file: is required with broker.key_file".into());
                None
            }
        };
        let login = match (self.username.take(), self.password_file.take()) {
            (Some(user), Some(password)) => {
                if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
                    problems.push(
                        "broker.username: must be 1 to 256 characters without control characters"
                            .into(),
                    );
                }
                Some((user, password))
            }
            (None, None) => None,
            (Some(_), None) => {
                problems.push("broker.password_file: is required with broker.username".into());
                None
            }
            (None, Some(_)) => {
                problems.push("broker.username: is required with broker.password_file".into());
                None
            }
        };
        if login.is_some() && self.listen.is_some() {
            problems.push("broker.username: applies only to an external broker (broker.url); the embedded one takes client certificates".into());
        }
        BrokerClient {
            ca_file: self.ca_file.take(),
            cert,
            login,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDeploy {
    desired_state_ttl_secs: Option<u64>,
    republish_interval_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNodes {
    heartbeat_timeout_secs: Option<u64>,
    failover_grace_secs: Option<u64>,
    announce_timeout_secs: Option<u64>,
    telemetry_history: Option<u64>,
}

impl Config {
    /// Loads `path`, applies the `VERGE_*` environment overrides and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            problems: vec![format!("cannot read the file: {e}")],
        })?;
        let mut config = Self::parse(&text, &name, |key| std::env::var(key).ok())?;
        if let (Some(file), Some(dir)) = (&config.placement.regions_file, path.parent())
            && file.is_relative()
        {
            config.placement.regions_file = Some(dir.join(file));
        }
        if let (Some(file), Some(dir)) = (&config.trust.bundle_file, path.parent())
            && file.is_relative()
        {
            config.trust.bundle_file = Some(dir.join(file));
        }
        // The broker's files are read at start; a missing or unreadable one
        // is a configuration problem, reported with its field.
        let mut problems = Vec::new();
        for (field, file) in config.broker.client.files_mut() {
            if let Some(dir) = path.parent()
                && file.is_relative()
            {
                *file = dir.join(&*file);
            }
            if let Err(e) = std::fs::File::open(&*file) {
                problems.push(format!("{field}: cannot read {}: {e}", file.display()));
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError {
                source_name: name,
                problems,
            });
        }
        Ok(config)
    }

    /// Parses TOML text; `env` looks up override variables (injectable for tests).
    pub fn parse(
        text: &str,
        source_name: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let fail = |problems| ConfigError {
            source_name: source_name.to_owned(),
            problems,
        };
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| {
            // toml's message names the offending key and shows the line.
            fail(vec![e.to_string().trim_end().replace('\n', "\n    ")])
        })?;
        if let Some(dir) = env("VERGE_DATA_DIR") {
            raw.data_dir = Some(dir.into());
        }
        if let Some(listen) = env("VERGE_API_LISTEN") {
            raw.api.listen = Some(listen);
        }
        // An override of one broker kind replaces the file's choice of the other.
        match (env("VERGE_BROKER_LISTEN"), env("VERGE_BROKER_URL")) {
            (Some(listen), None) => {
                raw.broker.listen = Some(listen);
                raw.broker.url = None;
            }
            (None, Some(url)) => {
                raw.broker.url = Some(url);
                raw.broker.listen = None;
            }
            (Some(listen), Some(url)) => {
                raw.broker.listen = Some(listen);
                raw.broker.url = Some(url);
            }
            (None, None) => {}
        }
        raw.validate().map_err(fail)
    }
}

fn positive_secs(
    problems: &mut Vec<String>,
    field: &str,
    value: Option<u64>,
    default: Duration,
) -> Duration {
    match value {
        Some(0) => {
            problems.push(format!("{field}: must be at least 1"));
            default
        }
        Some(secs) => Duration::from_secs(secs),
        None => default,
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let data_dir = self.data_dir.unwrap_or_else(|| {
            problems.push("data_dir: is required (or set VERGE_DATA_DIR)".into());
            PathBuf::new()
        });
        let listen_text = self.api.listen.as_deref().unwrap_or(DEFAULT_API_LISTEN);
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|e| {
                problems.push(format!(
                    "api.listen: {listen_text:?} is not an address: {e}"
                ))
            })
            .ok();
        let max_artifact_bytes = match self.api.max_artifact_bytes {
            Some(0) => {
                problems.push("api.max_artifact_bytes: must be at least 1".into());
                DEFAULT_MAX_ARTIFACT_BYTES
            }
            other => other.unwrap_or(DEFAULT_MAX_ARTIFACT_BYTES),
        };
        let endpoint = match (&self.broker.listen, &self.broker.url) {
            (Some(_), Some(_)) => {
                problems.push("broker: set exactly one of broker.listen (embedded) and broker.url (external), not both".into());
                None
            }
            (None, None) => DEFAULT_BROKER_LISTEN
                .parse::<SocketAddr>()
                .map(BrokerEndpoint::Embedded)
                .ok(),
            (Some(listen), None) => listen
                .parse::<SocketAddr>()
                .map(BrokerEndpoint::Embedded)
                .map_err(|e| {
                    problems.push(format!("broker.listen: {listen:?} is not an address: {e}"))
                })
                .ok(),
            (None, Some(url)) => BrokerUrl::parse(url)
                .map(BrokerEndpoint::External)
                .map_err(|e| problems.push(format!("broker.url: {e}")))
                .ok(),
        };
        let mut raw_broker = self.broker;
        let client = raw_broker.validate_client(endpoint.as_ref(), &mut problems);
        let advertise_url = raw_broker.advertise_url.as_deref().and_then(|url| {
            BrokerUrl::parse(url)
                .map_err(|e| problems.push(format!("broker.advertise_url: {e}")))
                .ok()
        });
        let prefix = raw_broker.topic_prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
        let topics = Topics::new(prefix)
            .map_err(|e| problems.push(format!("broker.topic_prefix: {e}")))
            .ok();
        let defaults = DeployConfig::default();
        let desired_state_ttl = positive_secs(
            &mut problems,
            "deploy.desired_state_ttl_secs",
            self.deploy.desired_state_ttl_secs,
            defaults.desired_state_ttl,
        );
        let deploy = DeployConfig {
            desired_state_ttl,
            // Left out, it follows a short TTL down to half of it.
            republish_interval: positive_secs(
                &mut problems,
                "deploy.republish_interval_secs",
                self.deploy.republish_interval_secs,
                defaults
                    .republish_interval
                    .min(desired_state_ttl / 2)
                    .max(Duration::from_secs(1)),
            ),
        };
        // Re-signing happens at republish time once half the TTL is gone, so a
        // longer interval would let documents expire between republishes.
        if deploy.republish_interval * 2 > deploy.desired_state_ttl {
            problems.push(format!(
                "deploy.republish_interval_secs: must be at most half of deploy.desired_state_ttl_secs ({} s)",
                deploy.desired_state_ttl.as_secs()
            ));
        }
        let defaults = NodesConfig::default();
        let nodes = NodesConfig {
            heartbeat_timeout: positive_secs(
                &mut problems,
                "nodes.heartbeat_timeout_secs",
                self.nodes.heartbeat_timeout_secs,
                defaults.heartbeat_timeout,
            ),
            failover_grace: self
                .nodes
                .failover_grace_secs
                .map_or(defaults.failover_grace, Duration::from_secs),
            announce_timeout: Duration::from_secs(bounded(
                &mut problems,
                "nodes.announce_timeout_secs",
                self.nodes.announce_timeout_secs,
                (3, MAX_ANNOUNCE_TIMEOUT_SECS),
                defaults.announce_timeout.as_secs(),
            )),
            telemetry_history: usize::try_from(bounded(
                &mut problems,
                "nodes.telemetry_history",
                self.nodes.telemetry_history,
                (0, MAX_TELEMETRY_HISTORY),
                defaults.telemetry_history as u64,
            ))
            .unwrap_or(defaults.telemetry_history),
        };
        let defaults = PlacementConfig::default();
        let placement = PlacementConfig {
            regions_file: self.placement.regions_file,
            probe_interval: positive_secs(
                &mut problems,
                "placement.probe_interval_secs",
                self.placement.probe_interval_secs,
                defaults.probe_interval,
            ),
            latency_window: positive_secs(
                &mut problems,
                "placement.latency_window_secs",
                self.placement.latency_window_secs,
                defaults.latency_window,
            ),
            probe_listen: self.placement.probe_listen,
            probe_advertise: self
                .placement
                .probe_advertise
                .or(self.placement.probe_listen),
        };
        if placement
            .probe_advertise
            .is_some_and(|a| a.ip().is_unspecified() || a.port() == 0)
        {
            problems.push("placement.probe_advertise: agents need an address they can send to; set it when placement.probe_listen is a wildcard address or port 0".to_owned());
        }
        if placement.probe_listen.is_none() && self.placement.probe_advertise.is_some() {
            problems.push("placement.probe_advertise: needs placement.probe_listen".to_owned());
        }
        if placement.probe_interval
            > Duration::from_secs(u64::from(verge_shared::latency::MAX_INTERVAL_SECS))
        {
            problems.push(format!(
                "placement.probe_interval_secs: must be at most {}",
                verge_shared::latency::MAX_INTERVAL_SECS
            ));
        }
        // A window shorter than two rounds would drop every figure to the hint between reports.
        if placement.latency_window < placement.probe_interval * 2 {
            problems.push("placement.latency_window_secs: must be at least twice placement.probe_interval_secs".to_owned());
        }
        let tls = self.tls.validate(&mut problems);
        let audit = self.audit.validate(&mut problems);
        let watch = self.watch.validate(&mut problems);
        let console = ConsoleConfig {
            idle_timeout: Duration::from_secs(bounded(
                &mut problems,
                "console.idle_timeout_secs",
                self.console.idle_timeout_secs,
                (300, 43_200),
                ConsoleConfig::default().idle_timeout.as_secs(),
            )),
        };
        let alarm_defaults = AlarmsConfig::default();
        let alarms = AlarmsConfig {
            history: bounded(
                &mut problems,
                "alarms.history",
                self.alarms.history,
                (10, 1_000_000),
                alarm_defaults.history as u64,
            ) as usize,
            max_age: Duration::from_secs(
                bounded(
                    &mut problems,
                    "alarms.max_age_days",
                    self.alarms.max_age_days,
                    (1, 3650),
                    alarm_defaults.max_age.as_secs() / 86_400,
                ) * 86_400,
            ),
        };
        match (listen, endpoint, topics) {
            (Some(listen), Some(endpoint), Some(topics)) if problems.is_empty() => Ok(Config {
                data_dir,
                api: ApiConfig {
                    listen,
                    max_artifact_bytes,
                    public_metrics: self.api.public_metrics.unwrap_or(false),
                },
                broker: BrokerConfig {
                    endpoint,
                    topics,
                    advertise_url,
                    client,
                },
                deploy,
                nodes,
                placement,
                trust: TrustConfig {
                    bundle_file: self.trust.bundle_file,
                },
                tls,
                audit,
                watch,
                console,
                alarms,
            }),
            _ => Err(problems),
        }
    }
}

/// `value` within `min..=max`, or `default` when absent; a problem naming
/// `field` otherwise.
fn bounded(
    problems: &mut Vec<String>,
    field: &str,
    value: Option<u64>,
    (min, max): (u64, u64),
    default: u64,
) -> u64 {
    match value {
        Some(v) if !(min..=max).contains(&v) => {
            problems.push(format!("{field}: must be between {min} and {max}, not {v}"));
            default
        }
        Some(v) => v,
        None => default,
    }
}

impl RawWatch {
    fn validate(self, problems: &mut Vec<String>) -> WatchConfig {
        let defaults = WatchConfig::default();
        // Each bound keeps one watcher's or the buffer's memory in the
        // megabytes: changes are a few hundred bytes to a few KiB each.
        let mut count = |field: &str, value, max, default: usize| {
            let value = bounded(problems, field, value, (1, max), default as u64);
            usize::try_from(value).unwrap_or(default)
        };
        WatchConfig {
            buffer: count("watch.buffer", self.buffer, 1_000_000, defaults.buffer),
            queue: count("watch.queue", self.queue, 65_536, defaults.queue),
            max_watchers: count(
                "watch.max_watchers",
                self.max_watchers,
                100_000,
                defaults.max_watchers,
            ),
            keep_alive: Duration::from_secs(bounded(
                problems,
                "watch.keep_alive_secs",
                self.keep_alive_secs,
                (1, 3600),
                defaults.keep_alive.as_secs(),
            )),
        }
    }
}

impl RawTls {
    fn validate(self, problems: &mut Vec<String>) -> TlsConfig {
        let defaults = TlsConfig::default();
        let server_names = self.server_names.unwrap_or(defaults.server_names);
        if server_names.is_empty() {
            problems.push("tls.server_names: must name at least one host or address".to_owned());
        }
        for (i, name) in server_names.iter().enumerate() {
            let usable = name.parse::<std::net::IpAddr>().is_ok()
                || (!name.is_empty()
                    && name.len() <= 253
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
            if !usable {
                problems.push(format!(
                    "tls.server_names[{i}]: {name:?} is neither a DNS name nor an IP address"
                ));
            }
        }
        let client_cert_ttl = positive_secs(
            problems,
            "tls.client_cert_ttl_secs",
            self.client_cert_ttl_secs,
            defaults.client_cert_ttl,
        );
        // Agents renew at 2/3 of the lifetime and need a few seconds for it.
        if client_cert_ttl < Duration::from_secs(10) {
            problems.push("tls.client_cert_ttl_secs: must be at least 10".to_owned());
        }
        TlsConfig {
            enabled: self.enabled.unwrap_or(defaults.enabled),
            server_names,
            client_cert_ttl,
            renew_grace: self
                .renew_grace_secs
                .map_or(defaults.renew_grace, Duration::from_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const MINIMAL: &str = r#"
        data_dir = "/tmp/x"
    "#;

    #[test]
    fn minimal_file_gets_defaults() {
        let c = Config::parse(MINIMAL, "t", no_env).expect("valid");
        assert_eq!(c.api.max_artifact_bytes, DEFAULT_MAX_ARTIFACT_BYTES);
        assert_eq!(c.broker.topics.prefix(), "verge/v1");
        assert_eq!(c.deploy.desired_state_ttl, Duration::from_secs(86_400));
        assert_eq!(c.nodes.failover_grace, Duration::from_secs(30));
        assert_eq!(
            c.broker.endpoint.client_url().to_string(),
            "mqtt://127.0.0.1:7883"
        );
    }

    #[test]
    fn republish_is_rare_by_default_and_follows_a_short_ttl() {
        let c = Config::parse(MINIMAL, "t", no_env).expect("valid");
        assert_eq!(c.deploy.republish_interval, Duration::from_secs(6 * 3600));
        let text = format!("{MINIMAL}\n[deploy]\ndesired_state_ttl_secs = 600\n");
        let c = Config::parse(&text, "t", no_env).expect("valid");
        assert_eq!(c.deploy.republish_interval, Duration::from_secs(300));
        let text = format!(
            "{MINIMAL}\n[deploy]\ndesired_state_ttl_secs = 600\nrepublish_interval_secs = 400\n"
        );
        let err = Config::parse(&text, "t", no_env).expect_err("too long for the TTL");
        assert!(err.to_string().contains("republish_interval_secs"), "{err}");
    }

    #[test]
    fn watch_bounds_are_checked_by_name() {
        let c = Config::parse(MINIMAL, "t", no_env).expect("valid");
        assert_eq!(c.watch, WatchConfig::default());
        let text = format!(
            "{MINIMAL}\n[watch]\nbuffer = 10\nqueue = 2\nmax_watchers = 1\nkeep_alive_secs = 1\n"
        );
        let c = Config::parse(&text, "t", no_env).expect("valid");
        assert_eq!(
            c.watch,
            WatchConfig {
                buffer: 10,
                queue: 2,
                max_watchers: 1,
                keep_alive: Duration::from_secs(1),
            }
        );
        let text = format!(
            "{MINIMAL}\n[watch]\nbuffer = 0\nqueue = 100000\nmax_watchers = 0\nkeep_alive_secs = 0\n"
        );
        let joined = Config::parse(&text, "t", no_env)
            .expect_err("out of bounds")
            .problems
            .join("\n");
        for field in [
            "watch.buffer",
            "watch.queue",
            "watch.max_watchers",
            "watch.keep_alive_secs",
        ] {
            assert!(joined.contains(field), "{field} missing from {joined}");
        }
    }

    #[test]
    fn telemetry_history_is_bounded_by_name() {
        let c = Config::parse(MINIMAL, "t", no_env).expect("valid");
        assert_eq!(c.nodes.telemetry_history, 60);
        for (n, kept) in [(0, 0), (1440, 1440)] {
            let text = format!("{MINIMAL}\n[nodes]\ntelemetry_history = {n}\n");
            let c = Config::parse(&text, "t", no_env).expect("within bounds");
            assert_eq!(c.nodes.telemetry_history, kept);
        }
        let text = format!("{MINIMAL}\n[nodes]\ntelemetry_history = 1441\n");
        let err = Config::parse(&text, "t", no_env).expect_err("over the bound");
        assert!(
            err.to_string()
                .contains("nodes.telemetry_history: must be between 0 and 1440, not 1441"),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let text = format!("{MINIMAL}\nbogus = 1\n");
        let err = Config::parse(&text, "t", no_env).expect_err("unknown field");
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let text = r#"
            [api]
            listen = "nope"
            [broker]
            listen = "127.0.0.1:1"
            url = "mqtt://x:1"
            topic_prefix = "a/+/b"
            [deploy]
            desired_state_ttl_secs = 0
        "#;
        let err = Config::parse(text, "t", no_env).expect_err("invalid");
        let joined = err.problems.join("\n");
        for field in [
            "data_dir",
            "api.listen",
            "broker:",
            "broker.topic_prefix",
            "deploy.desired_state_ttl_secs",
        ] {
            assert!(joined.contains(field), "{field} missing from {joined}");
        }
    }

    #[test]
    fn environment_overrides_win() {
        let env = |key: &str| match key {
            "VERGE_DATA_DIR" => Some("/env/dir".to_owned()),
            "VERGE_API_LISTEN" => Some("0.0.0.0:9000".to_owned()),
            "VERGE_BROKER_URL" => Some("mqtt://broker.example:1884".to_owned()),
            _ => None,
        };
        let c = Config::parse(MINIMAL, "t", env).expect("valid");
        assert_eq!(c.data_dir, PathBuf::from("/env/dir"));
        assert_eq!(c.api.listen.port(), 9000);
        assert_eq!(
            c.broker.endpoint,
            BrokerEndpoint::External(BrokerUrl {
                host: "broker.example".into(),
                port: 1884,
                tls: false,
            })
        );
    }

    #[test]
    fn placement_section_is_validated() {
        let text = format!(
            "{MINIMAL}\n[placement]\nregions_file = \"regions.toml\"\nprobe_interval_secs = 5\n"
        );
        let c = Config::parse(&text, "t", no_env).expect("valid");
        assert_eq!(c.placement.probe_interval, Duration::from_secs(5));
        assert_eq!(c.placement.latency_window, Duration::from_secs(300));
        let text = format!(
            "{MINIMAL}\n[placement]\nprobe_interval_secs = 100\nlatency_window_secs = 150\n"
        );
        let err = Config::parse(&text, "t", no_env).expect_err("window too short");
        assert!(
            err.to_string().contains("placement.latency_window_secs"),
            "{err}"
        );
        let text = format!("{MINIMAL}\n[placement]\nprobe_listen = \"127.0.0.1:7710\"\n");
        let c = Config::parse(&text, "t", no_env).expect("valid");
        assert_eq!(c.placement.probe_advertise, c.placement.probe_listen);
        let text = format!("{MINIMAL}\n[placement]\nprobe_listen = \"0.0.0.0:7710\"\n");
        let err = Config::parse(&text, "t", no_env).expect_err("wildcard without advertise");
        assert!(
            err.to_string().contains("placement.probe_advertise"),
            "{err}"
        );
        let text = format!("{MINIMAL}\n[placement]\nprobe_advertise = \"10.0.0.1:7710\"\n");
        let err = Config::parse(&text, "t", no_env).expect_err("advertise without listen");
        assert!(
            err.to_string().contains("needs placement.probe_listen"),
            "{err}"
        );
    }

    #[test]
    fn tls_section_defaults_and_problems() {
        let c = Config::parse(MINIMAL, "t", no_env).expect("valid");
        assert_eq!(c.tls, TlsConfig::default());
        assert!(c.tls.enabled);
        let text = format!(
            "{MINIMAL}\n[tls]\nenabled = false\nserver_names = [\"edge.example\", \"10.0.0.1\"]\nclient_cert_ttl_secs = 20\nrenew_grace_secs = 0\n"
        );
        let c = Config::parse(&text, "t", no_env).expect("valid");
        assert!(!c.tls.enabled);
        assert_eq!(c.tls.client_cert_ttl, Duration::from_secs(20));
        assert_eq!(c.tls.renew_grace, Duration::ZERO);
        let text = format!(
            "{MINIMAL}\n[tls]\nserver_names = [\"a b\"]\nclient_cert_ttl_secs = 5\n[api]\nlisten = \"x\"\n"
        );
        let err = Config::parse(&text, "t", no_env).expect_err("invalid");
        let joined = err.problems.join("\n");
        for field in [
            "tls.server_names[0]",
            "tls.client_cert_ttl_secs",
            "api.listen",
        ] {
            assert!(joined.contains(field), "{field} missing from {joined}");
        }
    }

    #[test]
    fn audit_section_defaults_and_problems() {
        let c = Config::parse(MINIMAL, "t", no_env).expect("valid");
        assert_eq!(c.audit, AuditConfig::default());
        let text = format!("{MINIMAL}\n[audit]\nmax_records = 500\nmax_age_days = 7\n");
        let c = Config::parse(&text, "t", no_env).expect("valid");
        assert_eq!(c.audit.max_records, 500);
        assert_eq!(c.audit.max_age, Duration::from_secs(7 * 86_400));
        let text = format!("{MINIMAL}\n[audit]\nmax_records = 5\nmax_age_days = 0\n");
        let err = Config::parse(&text, "t", no_env).expect_err("invalid");
        let joined = err.problems.join("\n");
        for field in ["audit.max_records: 5", "audit.max_age_days: 0"] {
            assert!(joined.contains(field), "{field} missing from {joined}");
        }
    }

    #[test]
    fn broker_urls_parse() {
        assert_eq!(
            BrokerUrl::parse("mqtt://h").expect("ok"),
            BrokerUrl {
                host: "h".into(),
                port: 1883,
                tls: false,
            }
        );
        let tls = BrokerUrl::parse("mqtts://mqtt.example.com").expect("ok");
        assert_eq!((tls.port, tls.tls), (8883, true));
        assert_eq!(tls.to_string(), "mqtts://mqtt.example.com:8883");
        let v6 = BrokerUrl::parse("mqtts://[::1]:18883").expect("ok");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 18883));
        assert_eq!(v6.to_string(), "mqtts://[::1]:18883");
        assert_eq!(BrokerUrl::parse("mqtts://[::1]").expect("ok").port, 8883);
        assert!(BrokerUrl::parse("tcp://h:1").is_err());
        assert!(BrokerUrl::parse("mqtt://:1").is_err());
        assert!(BrokerUrl::parse("mqtt://h:x").is_err());
        assert!(BrokerUrl::parse("mqtts://user@h:1").is_err());
    }

    #[test]
    fn an_external_tls_broker_takes_its_files_and_login() {
        let text = format!(
            "{MINIMAL}\n[broker]\nurl = \"mqtts://mqtt.example.com\"\n\
             advertise_url = \"mqtts://mqtt.example.com:8883\"\n\
             ca_file = \"/etc/verge/broker-ca.pem\"\ncert_file = \"c.pem\"\nkey_file = \"c.key\"\n\
             username = \"verge\"\npassword_file = \"/etc/verge/mqtt-password\"\n"
        );
        let c = Config::parse(&text, "t", no_env).expect("valid");
        assert_eq!(
            c.broker.endpoint.client_url().to_string(),
            "mqtts://mqtt.example.com:8883"
        );
        assert_eq!(
            c.broker.advertise_url.map(|u| u.to_string()).as_deref(),
            Some("mqtts://mqtt.example.com:8883")
        );
        assert_eq!(
            c.broker.client,
            BrokerClient {
                ca_file: Some("/etc/verge/broker-ca.pem".into()),
                cert: Some(("c.pem".into(), "c.key".into())),
                login: Some(("verge".into(), "/etc/verge/mqtt-password".into())),
            }
        );
        // Defaults: the controller's CA and its own certificate, no login.
        let text = format!("{MINIMAL}\n[broker]\nurl = \"mqtts://127.0.0.1:18883\"\n");
        let c = Config::parse(&text, "t", no_env).expect("valid");
        assert_eq!(c.broker.client, BrokerClient::default());
        assert_eq!(c.broker.advertise_url, None);
    }

    #[test]
    fn broker_client_fields_report_every_problem_by_name() {
        let plain = format!(
            "{MINIMAL}\n[broker]\nurl = \"mqtt://h\"\nca_file = \"ca.pem\"\ncert_file = \"c.pem\"\n\
             password_file = \"p\"\nadvertise_url = \"https://h\"\n"
        );
        let e = Config::parse(&plain, "t", no_env).expect_err("invalid");
        let joined = e.problems.join("\n");
        for field in [
            "broker.ca_file: applies only to a TLS broker",
            "broker.cert_file: applies only to a TLS broker",
            "broker.key_file: is required with broker.cert_file",
            "broker.username: is required with broker.password_file",
            "broker.advertise_url:",
        ] {
            assert!(joined.contains(field), "{field} missing from {joined}");
        }
        let embedded = format!(
            "{MINIMAL}\n[broker]\nlisten = \"127.0.0.1:1\"\nkey_file = \"k\"\nusername = \"u\"\n"
        );
        let e = Config::parse(&embedded, "t", no_env).expect_err("invalid");
        let joined = e.problems.join("\n");
        for field in [
            "broker.key_file: applies only to an external broker",
            "broker.cert_file: is required with broker.key_file",
            "broker.password_file: is required with broker.username",
        ] {
            assert!(joined.contains(field), "{field} missing from {joined}");
        }
    }

    #[test]
    fn missing_broker_files_are_named_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), "x").expect("write");
        let path = dir.path().join("controller.toml");
        std::fs::write(
            &path,
            "data_dir = \"/tmp/x\"\n[broker]\nurl = \"mqtts://h\"\nca_file = \"ca.pem\"\n\
             cert_file = \"missing.pem\"\nkey_file = \"missing.key\"\n",
        )
        .expect("write");
        let e = Config::load(&path).expect_err("missing files");
        let joined = e.problems.join("\n");
        assert!(joined.contains("broker.cert_file: cannot read"), "{joined}");
        assert!(joined.contains("broker.key_file: cannot read"), "{joined}");
        assert!(!joined.contains("broker.ca_file"), "{joined}");
    }
}
