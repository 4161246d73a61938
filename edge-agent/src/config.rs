//! The agent's configuration: one TOML file, then environment overrides, then
//! validation that reports every problem at once, each naming its field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use verge_shared::limits;
use verge_shared::messages::Resources;
use verge_shared::topic::DEFAULT_PREFIX;
use verge_shared::{AgentId, RegionId, Topics};

/// sysexits(3) `EX_CONFIG`: the exit code for an unusable configuration.
pub const EX_CONFIG: u8 = 78;

/// Default intervals, chosen for a metered uplink (docs/benchmarks.md,
/// "Agent footprint"). An abrupt loss is reported by the Last Will once the
/// broker misses 1.5 keep-alives: 15 s keeps that within the 30 s in which a
/// lost node must be marked down, at a cost of 4 bytes of MQTT ping per
/// keep-alive. The heartbeat only proves the agent's own loop still runs,
/// and is skipped when a status went out within the interval.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 120;
pub const DEFAULT_KEEP_ALIVE_SECS: u64 = 15;
pub const DEFAULT_TELEMETRY_SECS: u64 = 900;

/// The file as written, before validation. Every field is optional here so
/// that a missing one is reported alongside every other problem.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    id: Option<String>,
    region: Option<String>,
    data_dir: Option<PathBuf>,
    broker_url: Option<String>,
    controller_url: Option<String>,
    trust_bundle_file: Option<PathBuf>,
    enroll_token: Option<String>,
    ca_file: Option<PathBuf>,
    topic_prefix: Option<String>,
    heartbeat_interval_secs: Option<u64>,
    keep_alive_secs: Option<u64>,
    workload_user: Option<String>,
    stop_workloads_on_exit: Option<bool>,
    telemetry_interval_secs: Option<u64>,
    outbox_quota_bytes: Option<u64>,
    cache_quota_bytes: Option<u64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    capacity: CapacityConfig,
    probe: Option<RawProbe>,
}

/// `[probe]`: the latency probe listener; without it the agent neither
/// answers nor sends probes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    listen: Option<String>,
    advertise: Option<String>,
}

/// Where the probe listener binds, and the address other agents are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    pub listen: std::net::SocketAddr,
    /// Announced in Presence; `listen` when absent (which then must name a
    /// specific address, not 0.0.0.0 or port 0).
    pub advertise: Option<std::net::SocketAddr>,
}

fn parse_probe(raw: Option<RawProbe>) -> Result<Option<ProbeConfig>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let listen = required(raw.listen)
        .map_err(|e| format!("listen {e}"))?
        .parse::<std::net::SocketAddr>()
        .map_err(|e| format!("listen: not an address: {e}"))?;
    let advertise = raw
        .advertise
        .map(|a| a.parse::<std::net::SocketAddr>())
        .transpose()
        .map_err(|e| format!("advertise: not an address: {e}"))?;
    if advertise.is_none() && (listen.ip().is_unspecified() || listen.port() == 0) {
        return Err(
            "advertise: required when listen has an unspecified address or port 0".to_owned(),
        );
    }
    Ok(Some(ProbeConfig { listen, advertise }))
}

/// Capacity the node offers; a field left out is detected from the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityConfig {
    pub cpu_millis: Option<u32>,
    pub memory_mb: Option<u32>,
}

impl CapacityConfig {
    /// The configured values, with absent ones detected: CPU from the
    /// available parallelism, memory from `MemTotal` in `/proc/meminfo`
    /// (0 when it cannot be read, which the scheduler treats as "no room").
    pub fn resolve(&self) -> Resources {
        let cpu_millis = self.cpu_millis.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            u32::try_from(cores.saturating_mul(1000)).unwrap_or(u32::MAX)
        });
        let memory_mb = self.memory_mb.unwrap_or_else(|| {
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|text| mem_total_mb(&text))
                .unwrap_or(0)
        });
        Resources {
            cpu_millis,
            memory_mb,
        }
    }
}

/// `MemTotal` from the text of `/proc/meminfo`, in MiB.
fn mem_total_mb(meminfo: &str) -> Option<u32> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(u32::try_from(kib / 1024).unwrap_or(u32::MAX))
}

/// Where the MQTT broker listens: `mqtt://host:port`, or `mqtts://host:port`
/// for TLS with the agent's client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// A bootstrap token: used once for enrollment, never written anywhere
/// and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollToken(String);

impl EnrollToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnrollToken(..)")
    }
}

/// A validated agent configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: AgentId,
    pub region: RegionId,
    pub data_dir: PathBuf,
    pub broker: BrokerAddr,
    /// Base URL of the controller's HTTP API, without a trailing slash.
    pub controller_url: String,
    /// The root-signed trust bundle to start from when the agent holds
    /// none yet (docs/security.md, "Roles"); `<data_dir>/trust-bundle.json`
    /// (written at enrollment) when unset.
    pub trust_bundle_file: Option<PathBuf>,
    /// A bootstrap token for the first start (`VERGE_AGENT_ENROLL_TOKEN`).
    pub enroll_token: Option<EnrollToken>,
    /// The controller's CA certificate (PEM), trusted at first contact.
    pub ca_file: Option<PathBuf>,
    pub topics: Topics,
    pub heartbeat_interval: Duration,
    pub keep_alive: Duration,
    /// The user workloads run as when the agent runs as root (`nobody`
    /// when unset); ignored otherwise.
    pub workload_user: Option<String>,
    /// Stop every workload when the agent shuts down (development); by
    /// default they keep running and the next agent run adopts them.
    pub stop_workloads_on_exit: bool,
    /// How often telemetry is queued in the outbox.
    pub telemetry_interval: Duration,
    /// Bytes the disk outbox may hold before it drops its oldest messages.
    pub outbox_quota_bytes: u64,
    /// Bytes the artifact cache may hold before it evicts unneeded entries.
    pub cache_quota_bytes: u64,
    pub labels: BTreeMap<String, String>,
    pub capacity: CapacityConfig,
    /// The latency probe listener, when configured.
    pub probe: Option<ProbeConfig>,
}

/// Environment variables that override file fields, applied after the file.
const ENV_OVERRIDES: [(&str, &str); 7] = [
    ("VERGE_AGENT_ENROLL_TOKEN", "enroll_token"),
    ("VERGE_AGENT_ID", "id"),
    ("VERGE_AGENT_REGION", "region"),
    ("VERGE_AGENT_DATA_DIR", "data_dir"),
    ("VERGE_AGENT_BROKER_URL", "broker_url"),
    ("VERGE_AGENT_CONTROLLER_URL", "controller_url"),
    ("VERGE_AGENT_TRUST_BUNDLE_FILE", "trust_bundle_file"),
];

impl Config {
    /// Reads `path`, applies overrides from the process environment and
    /// validates. Every problem is returned, each prefixed with its field.
    pub fn load(path: &Path) -> Result<Config, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
        Self::from_toml(&text, |name| std::env::var(name).ok())
    }

    /// Parses `text`, applies overrides from `env` (a lookup by variable
    /// name) and validates. Pure apart from `env`, so tests inject it.
    pub fn from_toml(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<String>> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        for (var, field) in ENV_OVERRIDES {
            if let Some(value) = env(var) {
                raw.set(field, value);
            }
        }
        raw.validate()
    }
}

impl RawConfig {
    fn set(&mut self, field: &str, value: String) {
        match field {
            "id" => self.id = Some(value),
            "region" => self.region = Some(value),
            "data_dir" => self.data_dir = Some(PathBuf::from(value)),
            "broker_url" => self.broker_url = Some(value),
            "controller_url" => self.controller_url = Some(value),
            "enroll_token" => self.enroll_token = Some(value),
            _ => self.trust_bundle_file = Some(PathBuf::from(value)),
        }
    }

    fn validate(self) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let e = &mut errors;
        let id = take(
            e,
            "id",
            required(self.id).and_then(|v| AgentId::new(v).map_err(|e| e.to_string())),
        );
        let region = take(
            e,
            "region",
            required(self.region).and_then(|v| RegionId::new(v).map_err(|e| e.to_string())),
        );
        let data_dir = take(
            e,
            "data_dir",
            required(self.data_dir).and_then(|d| {
                if d.as_os_str().is_empty() {
                    Err("must not be empty".to_owned())
                } else {
                    Ok(d)
                }
            }),
        );
        let broker = take(
            e,
            "broker_url",
            required(self.broker_url).and_then(|u| parse_broker_url(&u)),
        );
        let controller_url = take(
            e,
            "controller_url",
            required(self.controller_url).and_then(|u| parse_controller_url(&u)),
        );
        let trust_bundle_file = take(
            e,
            "trust_bundle_file",
            match self.trust_bundle_file {
                Some(path) if path.as_os_str().is_empty() => Err("must not be empty".to_owned()),
                other => Ok(other),
            },
        );
        let topics = take(
            e,
            "topic_prefix",
            Topics::new(self.topic_prefix.as_deref().unwrap_or(DEFAULT_PREFIX))
                .map_err(|e| e.to_string()),
        );
        let heartbeat = take(
            e,
            "heartbeat_interval_secs",
            in_range(
                self.heartbeat_interval_secs
                    .unwrap_or(DEFAULT_HEARTBEAT_SECS),
                1,
                3600,
            ),
        );
        let keep_alive = take(
            e,
            "keep_alive_secs",
            in_range(
                self.keep_alive_secs.unwrap_or(DEFAULT_KEEP_ALIVE_SECS),
                2,
                600,
            ),
        );
        let telemetry = take(
            e,
            "telemetry_interval_secs",
            in_range(
                self.telemetry_interval_secs
                    .unwrap_or(DEFAULT_TELEMETRY_SECS),
                1,
                86_400,
            ),
        );
        let outbox_quota = take(
            e,
            "outbox_quota_bytes",
            in_range(
                self.outbox_quota_bytes.unwrap_or(4 << 20),
                64 << 10,
                1 << 40,
            ),
        );
        let cache_quota = take(
            e,
            "cache_quota_bytes",
            in_range(self.cache_quota_bytes.unwrap_or(1 << 30), 1 << 20, 1 << 50),
        );
        take(e, "labels", check_labels(&self.labels));
        let probe = take(e, "probe", parse_probe(self.probe));
        take(
            e,
            "workload_user",
            self.workload_user
                .as_deref()
                .map_or(Ok(()), check_user_name),
        );
        match (
            id,
            region,
            data_dir,
            broker,
            controller_url,
            trust_bundle_file,
            topics,
            heartbeat,
            keep_alive,
            (telemetry, outbox_quota, cache_quota),
        ) {
            (
                Some(id),
                Some(region),
                Some(data_dir),
                Some(broker),
                Some(controller_url),
                Some(trust_bundle_file),
                Some(topics),
                Some(heartbeat),
                Some(keep_alive),
                (Some(telemetry), Some(outbox_quota), Some(cache_quota)),
            ) if errors.is_empty() => Ok(Config {
                id,
                region,
                data_dir,
                broker,
                controller_url,
                trust_bundle_file,
                topics,
                heartbeat_interval: Duration::from_secs(heartbeat),
                keep_alive: Duration::from_secs(keep_alive),
                telemetry_interval: Duration::from_secs(telemetry),
                outbox_quota_bytes: outbox_quota,
                cache_quota_bytes: cache_quota,
                labels: self.labels,
                capacity: self.capacity,
                probe: probe.flatten(),
                enroll_token: self
                    .enroll_token
                    .filter(|t| !t.trim().is_empty())
                    .map(|t| EnrollToken(t.trim().to_owned())),
                ca_file: self.ca_file,
                workload_user: self.workload_user,
                stop_workloads_on_exit: self.stop_workloads_on_exit.unwrap_or(false),
            }),
            _ => Err(errors),
        }
    }
}

/// The value, or `None` after recording the problem under `field`.
fn take<T>(errors: &mut Vec<String>, field: &str, result: Result<T, String>) -> Option<T> {
    result
        .map_err(|e| errors.push(format!("{field}: {e}")))
        .ok()
}

fn required<T>(value: Option<T>) -> Result<T, String> {
    value.ok_or_else(|| "is required".to_owned())
}

fn in_range(value: u64, min: u64, max: u64) -> Result<u64, String> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is outside {min}..={max}"))
    }
}

/// A portable user name (the user itself is looked up at start).
fn check_user_name(name: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a user name (1-32 letters, digits, '_', '-', '.')"
        ))
    }
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > limits::MAX_LABELS {
        return Err(format!("at most {} labels", limits::MAX_LABELS));
    }
    match labels.iter().find(|(k, v)| {
        k.is_empty() || k.len() > limits::MAX_LABEL_BYTES || v.len() > limits::MAX_LABEL_BYTES
    }) {
        Some((k, _)) => Err(format!(
            "{k:?}: keys must be 1-{max} bytes and values at most {max}",
            max = limits::MAX_LABEL_BYTES
        )),
        None => Ok(()),
    }
}

/// Parses `mqtt://host:port` or `mqtts://host:port`; IPv6 hosts go in brackets.
fn parse_broker_url(url: &str) -> Result<BrokerAddr, String> {
    let expected = || format!("expected mqtt://host:port or mqtts://host:port, got {url:?}");
    let (tls, rest) = match url.strip_prefix("mqtts://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("mqtt://").ok_or_else(expected)?),
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(expected)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| expected())?;
    if host.is_empty() || port == 0 || host.contains(['/', '@', '?', '#']) {
        return Err(expected());
    }
    Ok(BrokerAddr {
        host: host.to_owned(),
        port,
        tls,
    })
}

/// Accepts `http://host[:port][/path]` or `https://...`, returned without a
/// trailing slash.
fn parse_controller_url(url: &str) -> Result<String, String> {
    let expected = || format!("expected http://host[:port] or https://host[:port], got {url:?}");
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(expected)?;
    if rest.is_empty() || rest.starts_with('/') || rest.contains(['?', '#', ' ']) {
        return Err(expected());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> String {
        r#"
id = "edge-1"
region = "local"
data_dir = "/tmp/verge"
broker_url = "mqtt://127.0.0.1:7883"
controller_url = "http://127.0.0.1:7700/"
trust_bundle_file = "/etc/verge/trust-bundle.json"
[labels]
site = "lab"
[capacity]
cpu_millis = 2000
"#
        .to_owned()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn tls_urls_and_the_enroll_token_are_read() {
        // Top-level keys go before the tables of `good()`.
        let text = format!(
            "ca_file = \"/etc/verge/ca.pem\"\n{}",
            good()
                .replace("mqtt://127.0.0.1:7883", "mqtts://broker.example:8883")
                .replace("http://127.0.0.1:7700/", "https://controller.example:7700")
        );
        let env = |name: &str| (name == "VERGE_AGENT_ENROLL_TOKEN").then(|| "abc.def".to_owned());
        let c = Config::from_toml(&text, env).expect("valid");
        assert!(c.broker.tls);
        assert_eq!(c.broker.port, 8883);
        assert_eq!(c.controller_url, "https://controller.example:7700");
        assert_eq!(
            c.enroll_token.as_ref().map(EnrollToken::expose),
            Some("abc.def")
        );
        assert_eq!(c.ca_file, Some(PathBuf::from("/etc/verge/ca.pem")));
        // The token never shows in debug output.
        assert!(!format!("{c:?}").contains("abc.def"));
    }

    #[test]
    fn a_good_file_loads_with_defaults() {
        let c = Config::from_toml(&good(), no_env).expect("valid");
        assert_eq!(c.id.as_str(), "edge-1");
        assert_eq!(
            c.broker,
            BrokerAddr {
                host: "127.0.0.1".into(),
                port: 7883,
                tls: false,
            }
        );
        assert_eq!(c.controller_url, "http://127.0.0.1:7700");
        assert!(c.enroll_token.is_none());
        assert_eq!(c.topics.prefix(), "verge/v1");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(120));
        assert_eq!(c.keep_alive, Duration::from_secs(15));
        assert_eq!(c.labels.get("site").map(String::as_str), Some("lab"));
        assert_eq!(c.capacity.cpu_millis, Some(2000));
        assert_eq!(c.capacity.resolve().cpu_millis, 2000);
        assert_eq!(c.workload_user, None);
        assert!(!c.stop_workloads_on_exit);
        let text = good().replace(
            "[labels]",
            "workload_user = \"verge-run\"\nstop_workloads_on_exit = true\n[labels]",
        );
        let c = Config::from_toml(&text, no_env).expect("valid");
        assert_eq!(c.workload_user.as_deref(), Some("verge-run"));
        assert!(c.stop_workloads_on_exit);
        let bad = good().replace("[labels]", "workload_user = \"a b\"\n[labels]");
        let errors = Config::from_toml(&bad, no_env).expect_err("bad user");
        assert!(errors[0].starts_with("workload_user:"), "{errors:?}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
id = "a/b"
region = "EU"
broker_url = "tcp://x"
controller_url = "ftp://x"
trust_bundle_file = ""
heartbeat_interval_secs = 0
keep_alive_secs = 1
telemetry_interval_secs = 0
outbox_quota_bytes = 10
cache_quota_bytes = 10
"#;
        let errors = Config::from_toml(text, no_env).expect_err("invalid");
        for field in [
            "id: invalid agent id \"a/b\"",
            "region:",
            "data_dir: is required",
            "broker_url: expected mqtt://host:port",
            "controller_url:",
            "trust_bundle_file: must not be empty",
            "heartbeat_interval_secs:",
            "keep_alive_secs:",
            "telemetry_interval_secs:",
            "outbox_quota_bytes:",
            "cache_quota_bytes:",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(field)),
                "{field} missing from {errors:?}"
            );
        }
        assert_eq!(errors.len(), 11, "{errors:?}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = format!(
            "{}\nbogus = 1\n",
            good().replace("[labels]", "bogus2 = 2\n[labels]")
        );
        let errors = Config::from_toml(&text, no_env).expect_err("unknown field");
        assert!(errors[0].contains("bogus"), "{errors:?}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = |name: &str| match name {
            "VERGE_AGENT_ID" => Some("edge-9".to_owned()),
            "VERGE_AGENT_BROKER_URL" => Some("mqtt://[::1]:1883".to_owned()),
            "VERGE_AGENT_DATA_DIR" => Some("/var/tmp/x".to_owned()),
            _ => None,
        };
        let c = Config::from_toml(&good(), env).expect("valid");
        assert_eq!(c.id.as_str(), "edge-9");
        assert_eq!(c.broker.host, "::1");
        assert_eq!(c.data_dir, PathBuf::from("/var/tmp/x"));
        // An override is validated like the file value it replaces.
        let bad = |name: &str| (name == "VERGE_AGENT_REGION").then(|| "No Way".to_owned());
        let errors = Config::from_toml(&good(), bad).expect_err("invalid region");
        assert!(errors[0].starts_with("region:"), "{errors:?}");
    }

    #[test]
    fn probe_listener_is_validated() {
        let text = format!("{}\n[probe]\nlisten = \"127.0.0.1:7790\"\n", good());
        let c = Config::from_toml(&text, no_env).expect("valid");
        assert_eq!(
            c.probe.map(|p| p.listen.port()),
            Some(7790),
            "the listener binds where asked"
        );
        let text = format!("{}\n[probe]\nlisten = \"0.0.0.0:7790\"\n", good());
        let errors = Config::from_toml(&text, no_env).expect_err("nothing to advertise");
        assert!(errors[0].starts_with("probe: advertise:"), "{errors:?}");
        assert_eq!(
            Config::from_toml(&good(), no_env).expect("valid").probe,
            None
        );
    }

    #[test]
    fn labels_are_bounded() {
        let text = good().replace("site = \"lab\"", &format!("site = \"{}\"", "x".repeat(200)));
        let errors = Config::from_toml(&text, no_env).expect_err("long label");
        assert!(errors[0].starts_with("labels:"), "{errors:?}");
    }

    #[test]
    fn meminfo_is_read_in_mib() {
        let text = "MemTotal:        2048000 kB\nMemFree: 1 kB\n";
        assert_eq!(mem_total_mb(text), Some(2000));
        assert_eq!(mem_total_mb("garbage"), None);
    }
}
