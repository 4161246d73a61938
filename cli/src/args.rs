//! The command line, defined once: parsing, `verge completion` and
//! `verge man` all come from these clap definitions.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::output::Format;

/// A duration such as `30s`, `5m` or `1h 30m`.
fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 30s, 5m, 12h, 90d)"))
}

#[derive(Parser, Debug)]
#[command(
    name = "verge",
    version,
    about = "Operate a Verge controller: nodes, services, releases, logs, tokens, consumers, users, audit",
    long_about = "Operate a Verge controller through its HTTP API.\n\n\
        `verge login` stores a named context (address, CA file, token) in \
        $XDG_CONFIG_HOME/verge/config.toml (mode 0600); VERGE_ADDR, VERGE_TOKEN and \
        VERGE_CA_FILE override the context's values.\n\n\
        Exit codes: 0 success; 1 the API refused the request or the controller could not be \
        reached (the API's error code and message are printed); 2 usage error.",
    after_help = "Exit codes: 0 ok, 1 API or network failure, 2 usage error."
)]
pub struct Cli {
    /// The context to use instead of the current one.
    #[arg(long, global = true, env = "VERGE_CONTEXT")]
    pub context: Option<String>,
    /// Output format: columns for people or the API's JSON.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Sign in to a controller and store it as a named context.
    Login(LoginArgs),
    /// List, choose or remove stored contexts.
    #[command(subcommand)]
    Context(ContextCommand),
    /// Show who the current token is.
    Whoami,
    /// List, show, cordon, drain, uncordon or revoke nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Apply, list, show or remove services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Upload artifacts and signed releases; list and show releases.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Print a replica's log tail, or follow it.
    Logs(LogsArgs),
    /// Bootstrap tokens for enrolling nodes.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Read-only consumer identities for the broker (admin).
    #[command(subcommand)]
    Consumer(ConsumerCommand),
    /// API tokens for people and scripts.
    #[command(subcommand, name = "api-token")]
    ApiToken(ApiTokenCommand),
    /// Operator accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Read the audit log, newest first.
    Audit(AuditArgs),
    /// Active alarms, their history and the catalogue; acknowledge or suppress.
    #[command(subcommand)]
    Alarm(AlarmCommand),
    /// The fleet's events, oldest first: the controller's and the nodes'.
    Events(EventsArgs),
    /// Print the controller's change stream as it happens.
    Watch(WatchArgs),
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the manual page (roff).
    Man,
}

/// Shells `verge completion` writes for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The API's address, e.g. `https://controller.example:7700` (default: VERGE_ADDR).
    pub addr: Option<String>,
    /// The name to store the context under.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The controller's CA certificate (`<data_dir>/ca/ca.pem`), to verify an https:// address.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Read the API token from this file (`-`: standard input), e.g. `<data_dir>/admin-token`.
    #[arg(long, conflicts_with = "user")]
    pub token_file: Option<PathBuf>,
    /// Sign in as this user with a password (POST /api/v1/login) instead of a token.
    #[arg(long)]
    pub user: Option<String>,
    /// Read the password from this file (`-`: standard input); asked for without echo otherwise.
    #[arg(long, requires = "user")]
    pub password_file: Option<PathBuf>,
    /// How long the sign-in token lasts (at most 7 days).
    #[arg(long, value_parser = duration, requires = "user")]
    pub ttl: Option<Duration>,
}

#[derive(Subcommand, Debug)]
pub enum ContextCommand {
    /// List the stored contexts (never their tokens).
    Ls,
    /// Make a context the current one.
    Use { name: String },
    /// Forget a context (its token stays valid until revoked).
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// List nodes, all pages.
    Ls(NodeFilter),
    /// Show one node.
    Show { id: String },
    /// Place no new replicas on the node; it keeps what it runs.
    Cordon { id: String },
    /// Move the node's replicas elsewhere and place nothing new on it.
    Drain { id: String },
    /// Let a cordoned or drained node take replicas again.
    Uncordon { id: String },
    /// Revoke the node: its certificates stop working, its work is withdrawn (admin).
    Revoke { id: String },
}

#[derive(Args, Debug)]
pub struct NodeFilter {
    /// Nodes in this region.
    #[arg(long)]
    pub region: Option<String>,
    /// online, offline, healthy, unhealthy, cordoned, drained, revoked or
    /// unconfirmed (not heard from since the controller started).
    #[arg(long)]
    pub state: Option<String>,
    /// key=value: nodes carrying this label.
    #[arg(long)]
    pub label: Option<String>,
    /// Nodes reporting a workload of this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Nodes whose id starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Make a service what a file says (PUT of the whole service), showing what changes.
    Apply(ApplyArgs),
    /// List services with their replicas' states.
    Ls,
    /// Show a service and each replica: node, state, pid, ports, reasons.
    Show { name: String },
    /// Remove a service; its workloads are stopped.
    Rm { name: String },
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The service file, TOML or JSON (`.json`): `name` plus the PUT body's fields; `-` reads standard input.
    #[arg(short, long = "file")]
    pub file: PathBuf,
    /// The service's name (default: the file's `name`).
    #[arg(long)]
    pub name: Option<String>,
    /// The release digest to run (overrides the file's `release`).
    #[arg(long)]
    pub release: Option<String>,
    /// Show what would change and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait until every replica runs (exit 0) or one fails (exit 1).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_parser = duration, default_value = "5m")]
    pub timeout: Duration,
}

#[derive(Subcommand, Debug)]
pub enum ReleaseCommand {
    /// Upload an artifact (with a progress bar), then the signed release; prints the release digest.
    Push {
        /// The artifact file the release names.
        artifact: PathBuf,
        /// The signed release envelope, as `verge-admin release sign --out` wrote it.
        release: PathBuf,
    },
    /// List releases.
    Ls,
    /// Show one release with its run spec.
    Show { digest: String },
}

/// A replica's output stream.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The service.
    pub service: String,
    /// The replica's index.
    #[arg(long, default_value_t = 0)]
    pub replica: u32,
    /// Which stream.
    #[arg(long, value_enum, default_value_t = Stream::Stdout)]
    pub stream: Stream,
    /// How many lines of the tail.
    #[arg(long, default_value_t = 100)]
    pub lines: u32,
    /// Keep printing new lines (asks the node every --interval).
    #[arg(short, long)]
    pub follow: bool,
    /// How often --follow asks.
    #[arg(long, value_parser = duration, default_value = "2s")]
    pub interval: Duration,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a bootstrap token; its text is printed once (stdout), the controller keeps a hash.
    Create {
        /// The region nodes enrolled with it belong to.
        #[arg(long)]
        region: String,
        /// How many nodes may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it stays valid.
        #[arg(long, value_parser = duration, default_value = "24h")]
        ttl: Duration,
    },
    /// List bootstrap tokens (never their text).
    Ls,
    /// Revoke a bootstrap token by id.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum ConsumerCommand {
    /// Issue a read-only consumer identity: a client certificate (written
    /// to NAME.pem, NAME.key and ca.pem) or, with --password, a password
    /// for an external broker, printed once (stdout).
    Create {
        /// Its name (letters, digits, -, _, .); the broker user is consumer+NAME.
        name: String,
        /// A region it may read (repeat the option); none: every region.
        #[arg(long = "region")]
        regions: Vec<String>,
        /// A user name and password instead of a certificate.
        #[arg(long)]
        password: bool,
        /// Where the certificate files go.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
    /// List consumers (never their secrets).
    Ls,
    /// Delete a consumer: its certificate is revoked, its password removed.
    Rm { name: String },
}

/// Account roles.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ApiTokenCommand {
    /// Create a named API token; its text is printed once (stdout).
    Create {
        /// Its name, e.g. the script that uses it.
        name: String,
        /// Its role (default: yours, at most the user's).
        #[arg(long, value_enum)]
        role: Option<Role>,
        /// When it expires (default: never).
        #[arg(long, value_parser = duration)]
        ttl: Option<Duration>,
        /// Another user's token (admin only).
        #[arg(long)]
        user: Option<String>,
    },
    /// List API tokens (yours; everyone's for an admin), never their text.
    Ls,
    /// Revoke an API token by id.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// List users.
    Ls,
    /// Show one user.
    Show { name: String },
    /// Create a user with a password (asked for without echo, or --password-file).
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Read the password from this file (`-`: standard input).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Delete a user and every token of theirs.
    Rm { name: String },
    /// Change a user's role; their tokens act with it at once.
    SetRole {
        name: String,
        #[arg(value_enum)]
        role: Role,
    },
    /// Set a user's password (one's own with any role; anyone's as an admin).
    Passwd {
        name: String,
        /// Read the password from this file (`-`: standard input).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Entries of this user.
    #[arg(long)]
    pub actor: Option<String>,
    /// Entries of this target and everything below it, e.g. services/web.
    #[arg(long)]
    pub target: Option<String>,
    /// Entries at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Entries before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many entries (1 to 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Continue after a previous page (its next_cursor).
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AlarmCommand {
    /// List alarms: the active ones (most severe first), or history.
    Ls(AlarmListArgs),
    /// The alarm catalogue (docs/alarms.md), with what is suppressed.
    Catalogue,
    /// Acknowledge an active alarm by its instance number.
    Ack { instance: u64 },
    /// Stop publishing an alarm id on MQTT; it is still kept and listed.
    Suppress { alarm: String },
    /// Publish an alarm id again.
    Unsuppress { alarm: String },
}

#[derive(Args, Debug)]
pub struct AlarmListArgs {
    /// Cleared alarms (history) instead of the active ones.
    #[arg(long, conflicts_with = "all")]
    pub cleared: bool,
    /// Active and cleared alarms.
    #[arg(long)]
    pub all: bool,
    /// Only this severity: critical, major, minor or warning.
    #[arg(long)]
    pub severity: Option<String>,
    /// Only this alarm id, e.g. node_offline.
    #[arg(long)]
    pub alarm: Option<String>,
    #[arg(long)]
    pub node: Option<String>,
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long)]
    pub service: Option<String>,
    /// Continue after this instance (a previous page's next_after).
    #[arg(long)]
    pub after: Option<u64>,
    /// At most this many alarms (1 to 500).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Events after this id (a previous page's next_after).
    #[arg(long)]
    pub after: Option<u64>,
    #[arg(long)]
    pub node: Option<String>,
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long)]
    pub service: Option<String>,
    /// Only the controller's (`controller`) or the nodes' (`node`) events.
    #[arg(long)]
    pub source: Option<String>,
    /// Only this kind, e.g. node_offline or desired_state_rejected.
    #[arg(long)]
    pub kind: Option<String>,
    /// At most this many events (1 to 500).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Comma list of kinds: node, service, replica, release, token, api_token, user.
    #[arg(long)]
    pub kind: Option<String>,
    /// Changes that concern this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Changes that concern this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Resume after this change id.
    #[arg(long)]
    pub since: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
