//! The `edge-agent` binary: parses arguments, installs logging, loads the
//! configuration and runs the agent until SIGTERM or SIGINT.

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::Targets;
use verge_shared::log_format::{self, LogFormat};

const USAGE: &str = "\
Verge edge agent: verifies signed desired state, runs workloads, reports status.

Usage: edge-agent --config <PATH>

Options:
      --config <PATH>  Path of the agent's TOML configuration file [env: VERGE_AGENT_CONFIG]
  -h, --help           Print help
  -V, --version        Print version";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Run { config: PathBuf },
    Print(String),
}

/// The agent takes one option, so a minimal parser (lexopt) rather than a
/// full CLI framework keeps the binary small.
/// `from_env` is `VERGE_AGENT_CONFIG`, which `--config` overrides.
fn parse_args(
    args: impl IntoIterator<Item = OsString>,
    from_env: Option<OsString>,
) -> Result<Command, lexopt::Error> {
    use lexopt::prelude::*;
    let mut config = from_env.map(PathBuf::from);
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") => config = Some(parser.value()?.into()),
            Short('h') | Long("help") => return Ok(Command::Print(USAGE.to_owned())),
            Short('V') | Long("version") => {
                return Ok(Command::Print(format!(
                    "edge-agent {}",
                    env!("CARGO_PKG_VERSION")
                )));
            }
            _ => return Err(arg.unexpected()),
        }
    }
    let config = config.ok_or("--config <PATH> (or VERGE_AGENT_CONFIG) is required")?;
    Ok(Command::Run { config })
}

fn main() -> anyhow::Result<ExitCode> {
    // The workload helper runs before anything else: no runtime, no logging,
    // and on success it becomes the workload (see `edge_agent::confine`).
    let mut argv = std::env::args_os().skip(1);
    if argv
        .next()
        .is_some_and(|a| a == edge_agent::confine::EXEC_SUBCOMMAND)
    {
        return Ok(edge_agent::confine::exec_workload(argv));
    }
    match parse_args(
        std::env::args_os().skip(1),
        std::env::var_os("VERGE_AGENT_CONFIG"),
    ) {
        Ok(Command::Run { config }) => agent_main(config),
        Ok(Command::Print(text)) => {
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("edge-agent: {e}\n\n{USAGE}");
            Ok(ExitCode::from(2))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn agent_main(config_path: PathBuf) -> anyhow::Result<ExitCode> {
    // ring is the only crypto provider; installed before any TLS use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // VERGE_LOG wins over RUST_LOG; default: info. The syntax is
    // `level` or `target=level,...` (no span filters: the regex engine they
    // need would be a tenth of the agent's size).
    let (source, filter) = [
        ("VERGE_LOG", std::env::var("VERGE_LOG")),
        ("RUST_LOG", std::env::var("RUST_LOG")),
    ]
    .into_iter()
    .find_map(|(name, value)| value.ok().map(|v| (name, v)))
    .unwrap_or(("default", "info".to_owned()));
    let (targets, problem) = match filter.parse::<Targets>() {
        Ok(targets) => (targets, None),
        Err(e) => (Targets::new().with_default(tracing::Level::INFO), Some(e)),
    };
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (format, format_problem) =
        LogFormat::from_variable(std::env::var(log_format::VARIABLE).ok().as_deref());
    let json = format == LogFormat::Json;
    tracing_subscriber::registry()
        .with((!json).then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours on a terminal only, not in journald or a log file.
                .with_ansi(std::io::stderr().is_terminal())
        }))
        .with(json.then(|| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
        }))
        .with(targets)
        .init();
    if let Some(e) = problem {
        tracing::warn!(variable = source, value = %filter, error = %e,
            "Ignored a log filter it cannot read; logging at info. Write `level` or `target=level,...`.");
    }
    if let Some(value) = format_problem {
        tracing::warn!(variable = log_format::VARIABLE, value = %value,
            "Ignored a log format it does not know; writing text. Write `text` or `json`.");
    }

    let config = match edge_agent::Config::load(&config_path) {
        Ok(config) => config,
        Err(errors) => {
            for e in errors {
                eprintln!("edge-agent: config {}: {e}", config_path.display());
            }
            return Ok(ExitCode::from(edge_agent::EX_CONFIG));
        }
    };

    let shutdown = CancellationToken::new();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        on_signal.cancel();
    });

    match edge_agent::run(config, shutdown).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            let text = edge_agent::error::error_chain(&e);
            tracing::error!(error = %text, "Agent failed.");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: Option<&str>) -> Result<Command, String> {
        parse_args(args.iter().map(OsString::from), env.map(OsString::from))
            .map_err(|e| e.to_string())
    }

    fn run(path: &str) -> Result<Command, String> {
        Ok(Command::Run {
            config: PathBuf::from(path),
        })
    }

    #[test]
    fn the_config_comes_from_the_flag_or_the_environment() {
        assert_eq!(parse(&["--config", "a.toml"], None), run("a.toml"));
        assert_eq!(parse(&["--config=a.toml"], None), run("a.toml"));
        assert_eq!(parse(&[], Some("env.toml")), run("env.toml"));
        assert_eq!(
            parse(&["--config", "a.toml"], Some("env.toml")),
            run("a.toml")
        );
    }

    #[test]
    fn help_and_version_print_and_mistakes_are_named() {
        assert_eq!(parse(&["-h"], None), Ok(Command::Print(USAGE.to_owned())));
        assert!(
            matches!(parse(&["--version"], None), Ok(Command::Print(v)) if v.starts_with("edge-agent "))
        );
        let missing = parse(&[], None).expect_err("no config");
        assert!(missing.contains("--config"), "{missing}");
        let unknown = parse(&["--confg", "a.toml"], None).expect_err("typo");
        assert!(unknown.contains("--confg"), "{unknown}");
        let no_value = parse(&["--config"], None).expect_err("no value");
        assert!(no_value.contains("--config"), "{no_value}");
    }
}
