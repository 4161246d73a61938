//! Optional system programs some tests need (Mosquitto, systemd-analyze,
//! promtool, Chromium with its chromedriver, schemathesis, the AsyncAPI parser with
//! Node.js, a Python with paho-mqtt and jsonschema): where to find them, and one
//! rule for when they are missing.
//!
//! On a machine with only the Rust toolchain, a test that needs a missing
//! program prints `SKIPPED: ...` to stderr and returns, so `cargo test
//! --workspace` passes. `VERGE_REQUIRE` (a comma-separated list such as
//! `mosquitto`, set by `.ci/run`) turns that absence into a failure, so CI
//! never passes by skipping. New programs (a container runtime) are added as
//! [`Tool`] variants.
//!
//! A tool may be more than one program: `chromium` is the browser and the
//! `chromedriver` that drives it ([`chromedriver_path`]), both from Debian,
//! and counts as missing unless both are there; `asyncapi-parser` likewise
//! needs `node` ([`node_path`]).

use std::io::Write as _;
use std::path::PathBuf;

/// The environment variable listing the tools whose absence fails a test.
pub const REQUIRE_VAR: &str = "VERGE_REQUIRE";

/// A system program a test may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// The Mosquitto broker (Debian package `mosquitto`).
    Mosquitto,
    /// `systemd-analyze`, which checks unit files (Debian package `systemd`).
    SystemdAnalyze,
    /// `promtool`, which checks metrics text (Debian package `prometheus`).
    Promtool,
    /// The Chromium browser and its WebDriver server, `chromedriver`
    /// (Debian packages `chromium` and `chromium-driver`), for the web
    /// console's browser tests.
    Chromium,
    /// schemathesis's `st`, which tests the API against its OpenAPI
    /// document (PyPI package `schemathesis`, in a virtualenv).
    Schemathesis,
    /// The AsyncAPI Initiative's parser (npm package `@asyncapi/parser`,
    /// installed under `target/asyncapi/`), run by Node.js with
    /// `.ci/asyncapi-validate.cjs`; its path is the package's directory.
    AsyncApiParser,
    /// A Python with `paho-mqtt` and `jsonschema` (PyPI, in a virtualenv),
    /// which runs the third-party consumer of `examples/consumers/`.
    PythonMqtt,
}

impl Tool {
    /// The name used in `VERGE_REQUIRE` and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Mosquitto => "mosquitto",
            Tool::SystemdAnalyze => "systemd-analyze",
            Tool::Promtool => "promtool",
            Tool::Chromium => "chromium",
            Tool::Schemathesis => "schemathesis",
            Tool::AsyncApiParser => "asyncapi-parser",
            Tool::PythonMqtt => "python-mqtt",
        }
    }

    /// The variable that overrides where the program is looked for (a
    /// path that does not exist simulates a machine without it).
    pub fn path_var(self) -> &'static str {
        match self {
            Tool::Mosquitto => "VERGE_MOSQUITTO",
            Tool::SystemdAnalyze => "VERGE_SYSTEMD_ANALYZE",
            Tool::Promtool => "VERGE_PROMTOOL",
            Tool::Chromium => "VERGE_CHROMIUM",
            Tool::Schemathesis => "VERGE_SCHEMATHESIS",
            Tool::AsyncApiParser => "VERGE_ASYNCAPI_PARSER",
            Tool::PythonMqtt => "VERGE_PYTHON",
        }
    }

    /// How to install it.
    pub fn install_hint(self) -> &'static str {
        match self {
            Tool::Mosquitto => "apt-get install -y mosquitto",
            Tool::SystemdAnalyze => "apt-get install -y systemd",
            Tool::Promtool => "apt-get install -y prometheus",
            Tool::Chromium => "apt-get install -y chromium chromium-driver",
            Tool::Schemathesis => {
                "python3 -m venv target/ci-venv && target/ci-venv/bin/pip install schemathesis==4.32.5"
            }
            Tool::AsyncApiParser => {
                "apt-get install -y nodejs npm && npm install --prefix target/asyncapi @asyncapi/parser@3.6.6"
            }
            Tool::PythonMqtt => {
                "python3 -m venv target/ci-venv && target/ci-venv/bin/pip install paho-mqtt jsonschema"
            }
        }
    }

    fn default_paths(self) -> &'static [&'static str] {
        match self {
            Tool::Mosquitto => &["/usr/sbin/mosquitto", "/usr/bin/mosquitto"],
            Tool::SystemdAnalyze => &["/usr/bin/systemd-analyze", "/bin/systemd-analyze"],
            Tool::Promtool => &["/usr/bin/promtool", "/usr/local/bin/promtool"],
            Tool::Chromium => &["/usr/bin/chromium"],
            Tool::Schemathesis => &[
                concat!(env!("CARGO_MANIFEST_DIR"), "/../target/ci-venv/bin/st"),
                "/usr/local/bin/st",
                "/usr/bin/st",
            ],
            Tool::AsyncApiParser => &[concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/asyncapi/node_modules/@asyncapi/parser"
            )],
            Tool::PythonMqtt => &[concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/ci-venv/bin/python3"
            )],
        }
    }

    /// The program's path, if it is installed: the path in
    /// [`Tool::path_var`] when that is set, else the usual install places.
    /// For [`Tool::Chromium`], `None` also when [`chromedriver_path`] is.
    pub fn path(self) -> Option<PathBuf> {
        if self == Tool::Chromium && chromedriver_path().is_none() {
            return None;
        }
        if self == Tool::AsyncApiParser && node_path().is_none() {
            return None;
        }
        let path = find(self.path_var(), self.default_paths())?;
        // A Python counts only with the libraries the consumer imports.
        if self == Tool::PythonMqtt && !imports(&path, "import paho.mqtt.client, jsonschema") {
            return None;
        }
        Some(path)
    }

    /// What to set to point the tests at the tool, for messages.
    fn path_hint(self) -> String {
        match self {
            Tool::Chromium => format!(
                "set {} and {CHROMEDRIVER_VAR} to their paths",
                self.path_var()
            ),
            Tool::AsyncApiParser => format!(
                "set {} to the package's directory and {NODE_VAR} to node",
                self.path_var()
            ),
            _ => format!("set {} to its path", self.path_var()),
        }
    }

    /// Whether `VERGE_REQUIRE` lists this tool.
    pub fn required(self) -> bool {
        std::env::var(REQUIRE_VAR).is_ok_and(|list| {
            list.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(self.name()))
        })
    }
}

/// Whether `python` runs `statement` without an error.
fn imports(python: &std::path::Path, statement: &str) -> bool {
    std::process::Command::new(python)
        .args(["-c", statement])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The variable that overrides where `chromedriver` is looked for.
pub const CHROMEDRIVER_VAR: &str = "VERGE_CHROMEDRIVER";

/// The path of `chromedriver` (Debian package `chromium-driver`), if it is
/// installed: the path in [`CHROMEDRIVER_VAR`] when that is set, else
/// `/usr/bin/chromedriver`. Part of [`Tool::Chromium`]: a test calls
/// `missing(Tool::Chromium)`, which checks both programs.
pub fn chromedriver_path() -> Option<PathBuf> {
    find(CHROMEDRIVER_VAR, &["/usr/bin/chromedriver"])
}

/// The variable that overrides where `node` (Node.js) is looked for.
pub const NODE_VAR: &str = "VERGE_NODE";

/// The path of `node` (Debian package `nodejs`), if it is installed: the
/// path in [`NODE_VAR`] when that is set, else the usual install places.
/// Part of [`Tool::AsyncApiParser`].
pub fn node_path() -> Option<PathBuf> {
    find(NODE_VAR, &["/usr/bin/node", "/usr/local/bin/node"])
}

/// The path in the variable `var` if it is set and exists, else the first
/// of `defaults` that exists.
fn find(var: &str, defaults: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        return path.exists().then_some(path);
    }
    defaults.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Whether the calling test must stop because `tool` is missing. Call it
/// first thing and return when it says so:
///
/// ```no_run
/// # use verge_tests::require::{missing, Tool};
/// if missing(Tool::Mosquitto) {
///     return;
/// }
/// ```
///
/// Returns `false` when the tool is installed. When it is not, prints
/// `SKIPPED: <tool> is not installed (<install hint>) [<test>]` to stderr and
/// returns `true`, or panics if `VERGE_REQUIRE` lists the tool.
pub fn missing(tool: Tool) -> bool {
    if tool.path().is_some() {
        return false;
    }
    let why = format!(
        "{} is not installed ({}; or {})",
        tool.name(),
        tool.install_hint(),
        tool.path_hint()
    );
    assert!(!tool.required(), "{why}, and {REQUIRE_VAR} requires it");
    // Straight to stderr, not through `eprintln!`, which the test harness
    // captures: a skip must be seen also when the test passes.
    let test = std::thread::current().name().unwrap_or("").to_owned();
    let line = format!("SKIPPED: {why} [{test}]\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    true
}
