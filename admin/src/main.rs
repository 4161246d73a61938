//! `verge-admin`: the offline operator tool for Verge's root and publisher
//! keys. It creates keys, signs trust bundles (k of n root holders, one
//! signature at a time if need be) and releases, and verifies any signed
//! document, saying why one does not verify. It works on files only and
//! never talks to a controller (docs/operators/keys.md).

mod bundle;
mod files;
mod init;
mod keys;
mod release;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Exit code of a document that does not verify.
const EXIT_NOT_VERIFIED: u8 = 1;
/// Exit code of usage, input and I/O errors (as clap's own usage errors).
const EXIT_ERROR: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "verge-admin",
    version,
    about = "Verge's offline operator tool: keys, trust bundles, releases, verification."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set up a new installation in one step: root keys (k of n) and a
    /// publisher key to take offline, the controller's key, a trust bundle
    /// the roots signed, and a controller.toml and agent.toml that use them.
    Init(init::Plan),
    /// Create and inspect Ed25519 keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Sign trust bundles with root keys.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Sign releases with a publisher key.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Tell what a signed file is and whether it verifies (exit 0), or why
    /// not (exit 1).
    Verify {
        /// A trust bundle, release, desired state or delivery (JSON).
        file: PathBuf,
        /// The trust bundle agents hold: releases and desired states are
        /// checked against it, and a trust bundle as its successor.
        #[arg(long)]
        trust: Option<PathBuf>,
        /// For a trust bundle: the bundle it must succeed (a higher version
        /// signed by a threshold of its root keys). Takes precedence over --trust.
        #[arg(long)]
        previous: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create a key: the private key (PKCS#8, mode 0600) and its public key
    /// next to it (`root1.pk8` → `root1.pub`). Never overwrites.
    Create {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the key id and public key of a private or public key file.
    Show { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum TrustCommand {
    /// Build a trust bundle from a spec file and sign it with root keys.
    Sign {
        /// The bundle spec (see configs/trust/bundle.toml).
        #[arg(long)]
        spec: PathBuf,
        /// A root private key; repeat for several holders on one machine.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Add one root key's signature to a signed trust bundle.
    AddSignature {
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// May be the input file: it is replaced atomically.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Build a release from a spec file and sign it with a publisher key;
    /// prints the release digest to deploy by.
    Sign {
        /// The release spec (see configs/trust/release.toml).
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_NOT_VERIFIED),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Runs one command; `Ok(false)` only for a document that does not verify.
fn run(cli: Cli) -> Result<bool> {
    match cli.command {
        Command::Init(plan) => {
            let made = init::run(&plan)?;
            println!("{}", init::report(&plan, &made));
        }
        Command::Key(KeyCommand::Create { out }) => {
            let (public, public_path) = keys::create(&out)?;
            println!(
                "Created {} (private, mode 0600) and {}",
                out.display(),
                public_path.display()
            );
            print_key(&public);
        }
        Command::Key(KeyCommand::Show { file }) => print_key(&keys::load_any(&file)?),
        Command::Trust(TrustCommand::Sign { spec, keys, out }) => bundle::sign(&spec, &keys, &out)?,
        Command::Trust(TrustCommand::AddSignature { input, key, out }) => {
            bundle::add_signature(&input, &key, &out)?;
        }
        Command::Release(ReleaseCommand::Sign { spec, key, out }) => {
            release::sign(&spec, &key, &out)?
        }
        Command::Verify {
            file,
            trust,
            previous,
        } => {
            return Ok(verify::run(&file, trust.as_deref(), previous.as_deref())?.verified());
        }
    }
    Ok(true)
}

fn print_key(public: &verge_shared::PublicKey) {
    println!("key id: {}", public.key_id());
    println!("public key: {public}");
}
