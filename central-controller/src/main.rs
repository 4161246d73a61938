//! The `central-controller` binary: command line, logging, then the library.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use central_controller::config::Config;
use central_controller::{shutdown_signal, start};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use verge_shared::log_format::{self, LogFormat};

mod dev;
mod user_cmd;

/// sysexits EX_CONFIG: the configuration is wrong.
const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "central-controller",
    version,
    about = "Verge central controller"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run with a configuration file.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run locally with an embedded broker and one local edge agent (dev keys).
    Dev {
        #[arg(long, default_value = "./verge-dev")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7700")]
        api_listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:7883")]
        mqtt_listen: SocketAddr,
        /// The edge-agent binary (default: next to this executable).
        #[arg(long)]
        agent_bin: Option<PathBuf>,
    },
    /// Write a server certificate for an external broker (Mosquitto) from
    /// the controller's CA, with the CA certificate and the CRL, for
    /// configs/mosquitto/verge.conf (offline; run as the controller's user).
    BrokerCert {
        #[arg(long)]
        config: PathBuf,
        /// A DNS name or IP address that clients put in the broker URL (repeat for more).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// The directory for server.crt, server.key, ca.crt and ca.crl.
        #[arg(long)]
        out: PathBuf,
    },
    /// Add an operator account to a controller that is not running.
    User {
        #[command(subcommand)]
        command: user_cmd::UserCommand,
    },
}

/// Logs to stderr. VERGE_LOG wins over RUST_LOG (as for the agent); a
/// filter that does not parse is reported and the default used.
fn init_tracing() {
    // rumqttd logs every ordinary disconnect at ERROR; its real failures
    // (such as a listener that cannot bind) surface through the broker
    // readiness check instead. RUST_LOG=rumqttd=debug brings it back.
    const DEFAULT: &str = "info,rumqttd=off";
    let given = ["VERGE_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().map(|value| (name, value)));
    let (filter, problem) = match &given {
        None => (EnvFilter::new(DEFAULT), None),
        Some((_, text)) => match EnvFilter::try_new(text) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(DEFAULT), Some(e)),
        },
    };
    let (format, format_problem) =
        LogFormat::from_variable(std::env::var(log_format::VARIABLE).ok().as_deref());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        // Colours on a terminal only, not in journald or a log file.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    if let (Some((name, text)), Some(e)) = (given, problem) {
        tracing::warn!(variable = name, value = %text, error = %e,
            "Ignored a log filter it cannot read; logging at {DEFAULT}.");
    }
    if let Some(value) = format_problem {
        tracing::warn!(variable = log_format::VARIABLE, value = %value,
            "Ignored a log format it does not know; writing text. Write `text` or `json`.");
    }
}

fn main() -> ExitCode {
    // Before anything builds a TLS configuration (rustls with ring only).
    central_controller::tls::install_provider();
    let cli = Cli::parse();
    init_tracing();
    // `user` loads its own configuration. Everything done through a running
    // controller's API is `verge`'s (the verge-cli crate).
    let config = match &cli.command {
        Command::User { .. } => None,
        Command::Run { config } | Command::BrokerCert { config, .. } => Some(Config::load(config)),
        Command::Dev {
            data_dir,
            api_listen,
            mqtt_listen,
            ..
        } => Some(Ok(dev::config(data_dir, *api_listen, *mqtt_listen))),
    };
    let config = match config.transpose() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match (cli.command, config) {
        (Command::User { command }, _) => user_cmd::run(command),
        (Command::BrokerCert { names, out, .. }, Some(config)) => {
            central_controller::broker_client::write_broker_files(&config, &names, &out)
                .map(|summary| println!("{summary}"))
                .map_err(Into::into)
        }
        (command, Some(config)) => runtime.block_on(run(command, config)),
        // Every other command has a configuration (see above).
        (_, None) => Ok(()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let configuration = e
                .chain()
                .filter_map(|cause| cause.downcast_ref::<central_controller::StartError>())
                .any(central_controller::StartError::is_configuration);
            if configuration {
                ExitCode::from(EX_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    let agent_bin = match command {
        Command::Dev { agent_bin, .. } => {
            dev::prepare_trust(&config.data_dir)?;
            Some(dev::locate_agent(agent_bin)?)
        }
        Command::Run { .. } | Command::BrokerCert { .. } | Command::User { .. } => None,
    };
    let cancel = CancellationToken::new();
    let controller = start(config, cancel.clone())
        .await
        .context("starting the controller")?;
    let supervisor = match agent_bin {
        Some(binary) => Some(tokio::spawn(dev::start_agent(
            &controller,
            binary,
            cancel.clone(),
        )?)),
        None => {
            if controller.admin_token.created {
                println!(
                    "Created the admin token (stored in {}; shown only this once): {}",
                    controller.admin_token.path.display(),
                    controller.admin_token.value
                );
            }
            None
        }
    };
    shutdown_signal()
        .await
        .context("installing signal handlers")?;
    cancel.cancel();
    if let Some(supervisor) = supervisor {
        // The supervisor stops the agent (SIGTERM, then SIGKILL) before returning.
        supervisor.await.context("the agent supervisor failed")?;
    }
    controller.wait(&cancel).await;
    Ok(())
}
