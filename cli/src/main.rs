//! `verge`: the operator's command line for a Verge controller. It talks
//! only HTTP to the controller's API (docs/api.md), like any client; see
//! docs/operators/cli.md.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};

mod accounts;
mod alarms;
mod args;
mod client;
mod config;
mod consumers;
mod failure;
mod logs;
mod nodes;
mod output;
mod releases;
mod secret;
mod services;
mod session;
mod watch;

use args::{Cli, Command, Shell};
use client::{Client, Target};

fn main() -> ExitCode {
    // Usage errors exit 2 (clap's own code), help and version 0.
    let cli = Cli::parse();
    client::install_provider();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(failure::EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(failure::exit_code(&e))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let format = cli.output;
    let connect =
        || -> anyhow::Result<Client> { Client::new(Target::resolve(cli.context.as_deref())?) };
    match cli.command {
        Command::Login(args) => session::login(args, format).await,
        Command::Context(command) => session::context(command, format),
        Command::Whoami => session::whoami(&connect()?, format).await,
        Command::Node(command) => nodes::run(&connect()?, command, format).await,
        Command::Service(command) => services::run(&connect()?, command, format).await,
        Command::Release(command) => releases::run(&connect()?, command, format).await,
        Command::Logs(args) => logs::run(&connect()?, args, format).await,
        Command::Token(command) => accounts::token(&connect()?, command, format).await,
        Command::Consumer(command) => consumers::run(&connect()?, command, format).await,
        Command::ApiToken(command) => accounts::api_token(&connect()?, command, format).await,
        Command::User(command) => accounts::user(&connect()?, command, format).await,
        Command::Audit(args) => accounts::audit(&connect()?, args, format).await,
        Command::Alarm(command) => alarms::run(&connect()?, command, format).await,
        Command::Events(args) => alarms::events(&connect()?, args, format).await,
        Command::Watch(args) => watch::run(&connect()?, args, format).await,
        Command::Completion { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "verge", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(|e| anyhow::anyhow!("writing the manual page: {e}")),
    }
}
