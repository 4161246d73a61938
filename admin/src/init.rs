//! `verge-admin init`: the first setup of an installation in one step. It
//! makes the root keys (k of n) and a publisher key to take offline, the
//! controller's online key, a trust bundle that the roots signed, and a
//! `controller.toml` and `agent.toml` that use them, then says what to do
//! with each file (docs/operators/production.md).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use verge_shared::RegionId;

use crate::{bundle, files, keys};

/// What `init` makes, as given on the command line.
#[derive(Debug, clap::Args)]
pub struct Plan {
    /// The directory to create (it must not exist, or be empty).
    #[arg(long)]
    pub dir: PathBuf,
    /// How many root keys to make.
    #[arg(long, default_value_t = 3)]
    pub roots: u32,
    /// How many root keys must sign each trust bundle.
    #[arg(long, default_value_t = 2)]
    pub threshold: u32,
    /// A service the publisher key may publish (`*` wildcards); repeat.
    #[arg(long = "service", default_value = "*")]
    pub services: Vec<String>,
    /// A DNS name or IP address agents reach the controller at; repeat.
    /// The first one goes into agent.toml.
    #[arg(long = "server-name", default_values = ["localhost", "127.0.0.1"])]
    pub server_names: Vec<String>,
    /// Where the controller's HTTPS API listens.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub api_listen: SocketAddr,
    /// Where the controller's embedded MQTT broker listens.
    #[arg(long, default_value = "127.0.0.1:7883")]
    pub mqtt_listen: SocketAddr,
    /// The region written into agent.toml.
    #[arg(long, default_value = "local")]
    pub region: String,
    /// How many days the first trust bundle is valid.
    #[arg(long, default_value_t = 365)]
    pub bundle_days: u32,
}

/// The files `init` wrote, for its report and for tests.
#[derive(Debug)]
pub struct Made {
    pub dir: PathBuf,
    pub roots: Vec<PathBuf>,
    pub publisher: PathBuf,
    pub controller_key: PathBuf,
    pub bundle: PathBuf,
    pub controller_config: PathBuf,
    pub agent_config: PathBuf,
}

impl Plan {
    /// Every problem with the options at once, each naming its option.
    fn check(&self) -> Result<()> {
        let mut problems = Vec::new();
        if !(1..=16).contains(&self.roots) {
            problems.push(format!("--roots: {} is not 1 to 16", self.roots));
        }
        if self.threshold == 0 || self.threshold > self.roots {
            problems.push(format!(
                "--threshold: {} is not 1 to --roots ({})",
                self.threshold, self.roots
            ));
        }
        if self.server_names.is_empty() {
            problems.push("--server-name: give at least one".into());
        }
        let is_address = |n: &str| n.parse::<std::net::IpAddr>().is_ok();
        let is_name = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*'))
        };
        if let Some(bad) = self
            .server_names
            .iter()
            .find(|n| !is_address(n) && !is_name(n))
        {
            problems.push(format!(
                "--server-name: {bad:?} is not a DNS name or IP address"
            ));
        }
        if let Err(e) = RegionId::new(&self.region) {
            problems.push(format!("--region: {e}"));
        }
        if !(1..=3650).contains(&self.bundle_days) {
            problems.push(format!(
                "--bundle-days: {} is not 1 to 3650",
                self.bundle_days
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("\n  "))
        }
    }
}

/// Makes the installation directory. Refuses a directory that exists and
/// is not empty, so that no key is ever overwritten.
pub fn run(plan: &Plan) -> Result<Made> {
    plan.check()?;
    prepare_dir(&plan.dir)?;
    let dir = plan
        .dir
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve", plan.dir.display()))?;
    let offline = dir.join("offline");
    make_private_dir(&offline)?;

    let mut roots = Vec::new();
    for i in 1..=plan.roots {
        let path = offline.join(format!("root-{i}.pk8"));
        keys::create(&path)?;
        roots.push(path);
    }
    let publisher = offline.join("publisher.pk8");
    keys::create(&publisher)?;
    let data_dir = dir.join("data");
    let controller_key = data_dir.join("keys").join("controller.pk8");
    make_private_dir(&data_dir)?;
    make_private_dir(&data_dir.join("keys"))?;
    keys::create(&controller_key)?;

    let spec = dir.join("bundle.toml");
    files::create_new(&spec, bundle_spec(plan).as_bytes(), 0o644)?;
    let bundle = dir.join("bundle.json");
    bundle::sign_quietly(&spec, &roots, &bundle)?;

    let controller_config = dir.join("controller.toml");
    files::create_new(
        &controller_config,
        controller_toml(plan, &data_dir).as_bytes(),
        0o644,
    )?;
    let agent_config = dir.join("agent.toml");
    files::create_new(
        &agent_config,
        agent_toml(plan, &dir, &data_dir).as_bytes(),
        0o644,
    )?;
    Ok(Made {
        dir,
        roots,
        publisher,
        controller_key,
        bundle,
        controller_config,
        agent_config,
    })
}

fn prepare_dir(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{}: exists and is not empty; init never overwrites keys, so give a new directory",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display())),
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", dir.display())),
    }
}

fn make_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("{}: cannot create", dir.display()))
}

/// A TOML string: a JSON string is one for everything `init` writes.
fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

fn quoted_list(items: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| quoted(i.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

fn bundle_spec(plan: &Plan) -> String {
    let roots = (1..=plan.roots).map(|i| format!("offline/root-{i}.pub"));
    format!(
        "# The trust bundle's spec, made by `verge-admin init`. For the next version
# raise `version`, change what is needed, and have {threshold} of the root key
# holders sign it on their offline machines (docs/operators/keys.md):
#   verge-admin trust sign --spec bundle.toml --key root-1.pk8 --out bundle.json
#   verge-admin trust add-signature --in bundle.json --key root-2.pk8 --out bundle.json
# configs/trust/bundle.toml in the Verge source documents every field.
version = 1
expires_in_days = {days}
reset_generations = false
controllers = [\"data/keys/controller.pub\"]

[root]
keys = {roots}
threshold = {threshold}

[[publishers]]
name = \"publisher\"
key = \"offline/publisher.pub\"
services = {services}
",
        threshold = plan.threshold,
        days = plan.bundle_days,
        roots = quoted_list(roots),
        services = quoted_list(&plan.services),
    )
}

fn controller_toml(plan: &Plan, data_dir: &Path) -> String {
    format!(
        "# Verge central controller, made by `verge-admin init`.
# Start with: central-controller run --config {config}
# Only what differs from the defaults is here: configs/controller.toml in
# the Verge source documents every field and environment override.

# The store, the controller's key, its CA and the admin token.
data_dir = {data_dir}

[api]
# HTTPS API and web console. Agents enroll here, so on a real installation
# listen where the nodes can reach it (\"0.0.0.0:{api_port}\").
listen = {api}

[broker]
# The embedded MQTT broker (TLS with client certificates). To use an
# external broker such as Mosquitto instead, see docs/operators/production.md.
listen = {mqtt}

[tls]
# The names and addresses agents use to reach this host: they go into the
# server certificate made at first start.
server_names = {names}

[trust]
# The root-signed trust bundle, installed at first start. Later versions
# are installed with PUT /api/v1/trust.
bundle_file = \"bundle.json\"
",
        config = plan.dir.join("controller.toml").display(),
        data_dir = quoted(&data_dir.display().to_string()),
        api = quoted(&plan.api_listen.to_string()),
        api_port = plan.api_listen.port(),
        mqtt = quoted(&plan.mqtt_listen.to_string()),
        names = quoted_list(&plan.server_names),
    )
}

/// The host part of a URL for a server name (IPv6 in brackets).
fn url_host(name: &str) -> String {
    match name.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => name.to_owned(),
    }
}

fn agent_toml(plan: &Plan, dir: &Path, data_dir: &Path) -> String {
    let host = url_host(&plan.server_names[0]);
    format!(
        "# A Verge edge agent, made by `verge-admin init` for this installation.
# For each node: copy this file, give it its own `id`, set `region`, and copy
# the CA certificate and bundle.json to the paths below (on a node, e.g.
# /etc/verge/). configs/agent.toml in the Verge source documents every field.
# Start it once with a bootstrap token (`verge token create`):
#   VERGE_AGENT_ENROLL_TOKEN=<token> edge-agent --config agent.toml
id = \"edge-01\"
region = {region}
data_dir = {agent_data}
broker_url = \"mqtts://{host}:{mqtt_port}\"
controller_url = \"https://{host}:{api_port}\"
# The controller's CA, made at its first start in <data_dir>/ca/ca.pem.
ca_file = {ca}
trust_bundle_file = {bundle}
",
        region = quoted(&plan.region),
        agent_data = quoted(&dir.join("agent-data").display().to_string()),
        mqtt_port = plan.mqtt_listen.port(),
        api_port = plan.api_listen.port(),
        ca = quoted(&data_dir.join("ca").join("ca.pem").display().to_string()),
        bundle = quoted(&dir.join("bundle.json").display().to_string()),
    )
}

/// What was made and what to do with each file.
pub fn report(plan: &Plan, made: &Made) -> String {
    let dir = &plan.dir;
    let show = |path: &Path| {
        let relative = path.strip_prefix(&made.dir).unwrap_or(path);
        dir.join(relative).display().to_string()
    };
    let mut out = String::new();
    let _ = writeln!(out, "Made a Verge installation in {}:\n", dir.display());
    let _ = writeln!(
        out,
        "Take offline now (each to its holder's offline machine or encrypted backup), then delete here:"
    );
    for root in &made.roots {
        let _ = writeln!(out, "  {:<40} a root key", show(root));
    }
    let _ = writeln!(
        out,
        "  {:<40} the publisher key: signs releases of {}",
        show(&made.publisher),
        plan.services.join(", ")
    );
    let _ = writeln!(
        out,
        "  {} of {} root keys sign every trust bundle; the controller never needs them.\n",
        plan.threshold, plan.roots
    );
    let _ = writeln!(out, "For the controller host:");
    let _ = writeln!(
        out,
        "  {:<40} its configuration",
        show(&made.controller_config)
    );
    let _ = writeln!(
        out,
        "  {:<40} its online signing key (mode 0600)",
        show(&made.controller_key)
    );
    let _ = writeln!(
        out,
        "  {:<40} the trust bundle, version 1, signed by all {} root keys; valid {} days",
        show(&made.bundle),
        plan.roots,
        plan.bundle_days
    );
    let _ = writeln!(out, "\nFor each node:");
    let _ = writeln!(
        out,
        "  {:<40} set id and region per node; it needs bundle.json and the CA (made at the controller's first start)",
        show(&made.agent_config)
    );
    let _ = writeln!(out, "\nNext:");
    let _ = writeln!(
        out,
        "  central-controller run --config {}",
        show(&made.controller_config)
    );
    let _ = write!(
        out,
        "  then create a bootstrap token for each node and start its agent (docs/operators/production.md)."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_shared::{Envelope, limits};

    fn plan(dir: PathBuf) -> Plan {
        Plan {
            dir,
            roots: 3,
            threshold: 2,
            services: vec!["*".into()],
            server_names: vec!["ctl.example.net".into(), "192.0.2.1".into()],
            api_listen: "0.0.0.0:7700".parse().expect("address"),
            mqtt_listen: "0.0.0.0:7883".parse().expect("address"),
            region: "eu-west".into(),
            bundle_days: 365,
        }
    }

    #[test]
    fn makes_keys_a_bundle_the_roots_signed_and_configs_that_name_them() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let plan = plan(tmp.path().join("verge"));
        let made = run(&plan).expect("init");

        let bytes = std::fs::read(&made.bundle).expect("bundle");
        let envelope = Envelope::parse(&bytes, limits::MAX_TRUST_BUNDLE_BYTES).expect("envelope");
        let root_keys: Vec<_> = made
            .roots
            .iter()
            .map(|p| keys::load_any(p).expect("root key"))
            .collect();
        assert_eq!(bundle::valid_signers(&envelope, &root_keys).len(), 3);
        let (_, signed) = bundle::read_unverified(&made.bundle).expect("bundle");
        assert_eq!(signed.root.threshold, 2);
        let controller = keys::load_any(&made.controller_key).expect("controller key");
        assert_eq!(signed.controllers, vec![controller]);
        let publisher = keys::load_any(&made.publisher).expect("publisher key");
        assert_eq!(signed.publishers[0].key, publisher);

        let config = std::fs::read_to_string(&made.controller_config).expect("config");
        let table: toml::Table = config.parse().expect("controller.toml is TOML");
        assert_eq!(
            table["data_dir"].as_str(),
            Some(made.dir.join("data").to_str().expect("utf-8"))
        );
        assert_eq!(table["trust"]["bundle_file"].as_str(), Some("bundle.json"));
        let agent: toml::Table = std::fs::read_to_string(&made.agent_config)
            .expect("agent config")
            .parse()
            .expect("agent.toml is TOML");
        assert_eq!(
            agent["broker_url"].as_str(),
            Some("mqtts://ctl.example.net:7883")
        );
        assert_eq!(agent["region"].as_str(), Some("eu-west"));

        use std::os::unix::fs::PermissionsExt as _;
        for key in made
            .roots
            .iter()
            .chain([&made.publisher, &made.controller_key])
        {
            let mode = std::fs::metadata(key).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        let report = report(&plan, &made);
        assert!(report.contains("root-3.pk8"), "{report}");
    }

    #[test]
    fn never_touches_a_directory_that_holds_anything() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("verge");
        std::fs::create_dir(&dir).expect("dir");
        std::fs::write(dir.join("keep"), b"x").expect("file");
        let e = run(&plan(dir.clone())).expect_err("refused");
        assert!(e.to_string().contains("not empty"), "{e}");
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 1);
    }

    #[test]
    fn names_every_bad_option_at_once() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut bad = plan(tmp.path().join("verge"));
        bad.threshold = 4;
        bad.region = "No Way".into();
        bad.server_names = vec!["a b".into()];
        let e = run(&bad).expect_err("refused").to_string();
        for option in ["--threshold", "--region", "--server-name"] {
            assert!(e.contains(option), "{option} in {e}");
        }
        assert!(!tmp.path().join("verge").exists());
    }
}
