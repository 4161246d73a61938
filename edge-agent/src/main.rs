//! The `edge-agent` binary: parses arguments, installs logging, loads the
//! configuration and runs the agent until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

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
    // VERGE_LOG wins over RUST_LOG; default: info.
    let filter = std::env::var("VERGE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .init();

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
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            tracing::error!(error = %text, "Agent failed.");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}
