//! `central-controller user add`: an operator account written straight into
//! the store of a controller that is not running (before its first start,
//! say). A running controller holds its store; then `POST /api/v1/users`
//! is the way.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use central_controller::app::{Role, UserRequest, new_user};
use central_controller::config::Config;
use central_controller::store::{SledStore, Store as _};
use clap::{Subcommand, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Viewer,
    Operator,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Operator => Role::Operator,
            RoleArg::Admin => Role::Admin,
        }
    }
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user to the store of a controller that is not running.
    Add {
        /// The controller's configuration (its data_dir is used).
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// A file whose first line is the password; `-` reads standard input.
        #[arg(long)]
        password_file: PathBuf,
    },
}

fn read_password(path: &Path) -> anyhow::Result<String> {
    let mut line = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
    } else {
        let file = std::fs::File::open(path)
            .with_context(|| format!("reading the password from {}", path.display()))?;
        std::io::BufReader::new(file)
            .read_line(&mut line)
            .with_context(|| format!("reading the password from {}", path.display()))?;
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

pub fn run(command: UserCommand) -> anyhow::Result<()> {
    let UserCommand::Add {
        config,
        name,
        role,
        password_file,
    } = command;
    let config = Config::load(&config)?;
    let password = read_password(&password_file)?;
    let path = config.data_dir.join("store");
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let store = SledStore::open(&path).with_context(|| {
        format!(
            "opening the store {} (is the controller running? then use POST /api/v1/users)",
            path.display()
        )
    })?;
    if store.user(&name)?.is_some() {
        anyhow::bail!("a user {name:?} exists already");
    }
    let request = UserRequest {
        name,
        role: role.into(),
        password,
    };
    let record = new_user(&request, verge_shared::Timestamp::now())?;
    store.put_user(&record)?;
    eprintln!("Added the user {:?}.", record.name);
    Ok(())
}
