//! The `edge-agent` binary: parses arguments, installs logging, loads the
//! configuration and runs the agent until SIGTERM or SIGINT.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::Targets;

/// Verge edge agent: verifies signed desired state, runs workloads, reports status.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Path of the agent's TOML configuration file.
    #[arg(long, env = "VERGE_AGENT_CONFIG")]
    config: PathBuf,
}

fn main() -> anyhow::Result<ExitCode> {
    // The workload helper runs before anything else: no runtime, no logging,
    // and on success it becomes the workload (see `edge_agent::limits`).
    let mut argv = std::env::args_os().skip(1);
    if argv
        .next()
        .is_some_and(|a| a == edge_agent::limits::EXEC_SUBCOMMAND)
    {
        return Ok(edge_agent::limits::exec_workload(argv));
    }
    agent_main()
}

#[tokio::main(flavor = "current_thread")]
async fn agent_main() -> anyhow::Result<ExitCode> {
    // ring is the only crypto provider; installed before any TLS use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
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
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours on a terminal only, not in journald or a log file.
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(targets)
        .init();
    if let Some(e) = problem {
        tracing::warn!(variable = source, value = %filter, error = %e,
            "Ignored a log filter it cannot read; logging at info. Write `level` or `target=level,...`.");
    }

    let config = match edge_agent::Config::load(&args.config) {
        Ok(config) => config,
        Err(errors) => {
            for e in errors {
                eprintln!("edge-agent: config {}: {e}", args.config.display());
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
            let text = edge_agent::error_chain(&e);
            tracing::error!(error = %text, "Agent failed.");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}
