//! Supervising one workload: start its process, watch it, apply its restart
//! policy with capped exponential backoff and crash-loop detection, rotate
//! its logs, run its health check, and stop it gracefully (SIGTERM to the
//! process group, the grace period, then SIGKILL to the group).
//!
//! The restart decision is the pure [`Restarts::after_exit`]; the async
//! [`supervise`] loop only carries it out. A supervised process is either
//! the agent's child or one *adopted* from a previous agent run, which is
//! not a child: its end is noticed through a pidfd (Linux 5.3+; `/proc` is
//! polled every second where there is none), and its exit status is unknown.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use verge_shared::logs::LogStream;
use verge_shared::messages::{
    ExitInfo, HealthState, Isolation, Resources, RestartPolicy, Workload, WorkloadState,
    WorkloadStatus, bounded_message,
};
use verge_shared::{ServiceName, Timestamp};

use crate::confine::Launcher;
use crate::health::{self, ExecCommand};
use crate::logs;
use crate::report::Board;

/// `VERGE_PORT_<NAME>`, upper-cased with '-' as '_'.
pub fn port_env_name(name: &str) -> String {
    format!("VERGE_PORT_{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// How often an adopted process is checked for life where no pidfd can
/// tell when it ends.
const ADOPTED_TICK: Duration = Duration::from_secs(1);
/// How long to wait for a process group to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Restart timing; the same for every workload of an agent.
#[derive(Clone, Copy, Debug)]
pub struct RestartTiming {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A process that ran this long resets the backoff.
    pub reset_after: Duration,
    /// A process that ran less than this exited "at once".
    pub quick_exit: Duration,
    /// This many quick exits in a row make a crash loop.
    pub crash_loop_after: u32,
    /// The delay between attempts while in a crash loop.
    pub crash_loop_delay: Duration,
}

impl Default for RestartTiming {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            reset_after: Duration::from_secs(60),
            quick_exit: Duration::from_secs(10),
            crash_loop_after: 5,
            crash_loop_delay: Duration::from_secs(300),
        }
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// An adopted process ended; only its parent could know how.
    Unknown,
    /// It could not be started at all.
    StartFailed,
}

impl Exit {
    fn success(self) -> bool {
        self == Exit::Code(0)
    }

    fn info(self) -> Option<ExitInfo> {
        let (code, signal) = match self {
            Exit::Code(c) => (Some(c), None),
            Exit::Signal(s) => (None, Some(s)),
            Exit::Unknown | Exit::StartFailed => return None,
        };
        Some(ExitInfo {
            code,
            signal,
            at: Timestamp::now(),
        })
    }

    fn describe(self, ran: Duration) -> String {
        match self {
            Exit::Code(c) => format!("exited with code {c} after {:.1} s", ran.as_secs_f64()),
            Exit::Signal(s) => {
                let name = Signal::try_from(s).map_or_else(|_| s.to_string(), |s| s.to_string());
                format!("killed by {name} after {:.1} s", ran.as_secs_f64())
            }
            Exit::Unknown => "the adopted process ended (its exit status is unknown)".into(),
            Exit::StartFailed => "could not be started".into(),
        }
    }
}

/// What to do after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Start again after `after`, reporting `state` meanwhile.
    Restart {
        after: Duration,
        state: WorkloadState,
    },
    /// The policy says no more restarts; report `state`.
    StayDown(WorkloadState),
}

/// The restart bookkeeping of one workload.
#[derive(Clone, Debug)]
pub struct Restarts {
    timing: RestartTiming,
    backoff: Duration,
    quick_in_a_row: u32,
}

impl Restarts {
    pub fn new(timing: RestartTiming) -> Self {
        Self {
            timing,
            backoff: timing.initial_backoff,
            quick_in_a_row: 0,
        }
    }

    /// Decides after a process ran for `ran` and ended with `exit`.
    pub fn after_exit(&mut self, policy: RestartPolicy, exit: Exit, ran: Duration) -> Next {
        if ran >= self.timing.reset_after {
            self.backoff = self.timing.initial_backoff;
        }
        if ran < self.timing.quick_exit {
            self.quick_in_a_row = self.quick_in_a_row.saturating_add(1);
        } else {
            self.quick_in_a_row = 0;
        }
        let restart = match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !exit.success(),
            RestartPolicy::Never => false,
        };
        if !restart {
            return Next::StayDown(if exit.success() {
                WorkloadState::Exited
            } else {
                WorkloadState::Failed
            });
        }
        if self.quick_in_a_row >= self.timing.crash_loop_after {
            return Next::Restart {
                after: self.timing.crash_loop_delay,
                state: WorkloadState::CrashLoop,
            };
        }
        let after = self.backoff;
        self.backoff = (self.backoff * 2).min(self.timing.max_backoff);
        let state = if exit == Exit::StartFailed {
            WorkloadState::Failed
        } else {
            WorkloadState::Backoff
        };
        Next::Restart { after, state }
    }

    pub fn quick_in_a_row(&self) -> u32 {
        self.quick_in_a_row
    }
}

/// A process as the kernel knows it: the pid plus its start time (clock
/// ticks since boot), which together cannot be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: i32,
    pub start_ticks: u64,
}

impl ProcessId {
    /// The live (not zombie) process with this pid, if any.
    pub fn of(pid: i32) -> Option<ProcessId> {
        Self::read(pid, false)
    }

    /// Our own just-spawned child, which may already have exited and wait
    /// as a zombie for us to collect its exit status.
    fn of_child(pid: i32) -> Option<ProcessId> {
        Self::read(pid, true)
    }

    fn read(pid: i32, zombie_ok: bool) -> Option<ProcessId> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name, which may hold spaces.
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        match fields.first() {
            None | Some(&"X") => return None,
            Some(&"Z") if !zombie_ok => return None,
            Some(_) => {}
        }
        // Field 22 of stat(5), the first after ')' being field 3.
        let start_ticks = fields.get(19)?.parse().ok()?;
        Some(ProcessId { pid, start_ticks })
    }

    /// Is this very process still running?
    pub fn alive(self) -> bool {
        ProcessId::of(self.pid) == Some(self)
    }

    /// Signals the process group this process leads, unless the process is
    /// gone (its pid may belong to someone else by now).
    fn signal_group(self, signal: Signal) {
        if self.alive() {
            let _ = killpg(Pid::from_raw(self.pid), signal);
        }
    }
}

/// Returns once `id`, which is not our child, has ended. A pidfd becomes
/// readable when its process exits, so an idle agent does not wake for
/// adopted workloads; without pidfds, `/proc` is polled.
async fn adopted_exit(id: ProcessId) {
    use rustix::process::{PidfdFlags, pidfd_open};
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;
    // `with_interest` is deprecated because a generic `T` may change the fd
    // it reports; an `OwnedFd` owns one fd for its whole life, which is what
    // the unsafe replacement asks callers to promise (and this crate
    // forbids unsafe code).
    #[allow(deprecated)]
    let pidfd = rustix::process::Pid::from_raw(id.pid)
        .and_then(|pid| pidfd_open(pid, PidfdFlags::empty()).ok())
        .and_then(|fd| AsyncFd::with_interest(fd, Interest::READABLE).ok());
    // Checked after opening: a pidfd opened on a later process that reused
    // the pid is never waited on.
    if !id.alive() {
        return;
    }
    if let Some(pidfd) = pidfd
        && pidfd.readable().await.is_ok()
    {
        return;
    }
    while id.alive() {
        tokio::time::sleep(ADOPTED_TICK).await;
    }
}

/// Is any process (a zombie included) still in process group `pgid`?
fn group_has_members(pgid: i32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        // Cannot tell: signalling is what the caller asked for.
        return true;
    };
    procs.flatten().any(|entry| {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        is_pid
            && std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|stat| {
                // Field 5 of stat(5), the third after the ')' of the name.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                    .and_then(|pgrp| pgrp.parse::<i32>().ok())
                    == Some(pgid)
            })
    })
}

/// The files in a workload directory that record a running process.
pub const PID_FILE: &str = "pid";

/// `pid`, artifact path and start time, one per line. The first line alone
/// is the pid, which is what simple tools (and the test harness) read.
pub fn write_pid_file(dir: &Path, id: ProcessId, executable: &Path) -> std::io::Result<()> {
    let record = format!("{}\n{}\n{}\n", id.pid, executable.display(), id.start_ticks);
    verge_durable::write(&dir.join(PID_FILE), record.as_bytes())
}

/// Reads a pid file: pid, artifact path and start time.
pub fn read_pid_file(dir: &Path) -> Option<(i32, PathBuf, Option<u64>)> {
    let text = std::fs::read_to_string(dir.join(PID_FILE)).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let executable = PathBuf::from(lines.next()?);
    let start = lines.next().and_then(|l| l.trim().parse().ok());
    Some((pid, executable, start))
}

/// Everything needed to (re)start one workload's process.
pub struct Launch {
    pub workload: Workload,
    pub executable: PathBuf,
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
    pub ports: BTreeMap<String, u16>,
    /// The names in `ports` whose port the agent chose (the workload did not
    /// fix one): chosen again before a restart when another process holds it.
    pub chosen_ports: BTreeSet<String>,
    /// Told the ports after they were chosen again, to record them.
    pub on_new_ports: Option<NewPorts>,
    pub launcher: Launcher,
    pub grace: Duration,
}

/// What [`Launch::on_new_ports`] calls.
pub type NewPorts = Arc<dyn Fn(&BTreeMap<String, u16>) + Send + Sync>;

/// A TCP port that is free now (bind port 0, read, drop), or `None` when the
/// system gives none.
pub fn free_tcp_port() -> Option<u16> {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()
}

impl Launch {
    /// The agent-chosen ports another process holds now, each with a free
    /// port to take its place; empty when all are free (or none was chosen
    /// by the agent). Run while the workload is down, so its own process
    /// holds none of them.
    fn ports_to_choose_again<S: Spawner>(&self, spawner: &S) -> Vec<(String, u16, u16)> {
        self.chosen_ports
            .iter()
            .filter_map(|name| {
                let old = *self.ports.get(name)?;
                if !spawner.port_in_use(old) {
                    return None;
                }
                let new = spawner.free_port()?;
                Some((name.clone(), old, new))
            })
            .collect()
    }

    /// This launch with `changes` applied to its ports and their variables.
    fn with_ports(&self, changes: &[(String, u16, u16)]) -> Launch {
        let mut ports = self.ports.clone();
        let mut env = self.env.clone();
        for (name, _, new) in changes {
            ports.insert(name.clone(), *new);
            env.insert(port_env_name(name), new.to_string());
        }
        Launch {
            workload: self.workload.clone(),
            executable: self.executable.clone(),
            dir: self.dir.clone(),
            env,
            ports,
            chosen_ports: self.chosen_ports.clone(),
            on_new_ports: self.on_new_ports.clone(),
            launcher: self.launcher.clone(),
            grace: self.grace,
        }
    }
}

impl Launch {
    /// Starts the workload's process as a child in its own process group,
    /// its output appended to the logs in its directory.
    fn spawn_child(&self) -> Result<(Child, Isolation), String> {
        check_executable(&self.executable)?;
        let append = |stream: LogStream| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(stream.file_name()))
                .map_err(|e| format!("cannot open its {} log: {e}", stream.file_name()))
        };
        let (mut command, isolation) = self.launcher.command(
            &self.executable,
            &self.workload.run.args,
            &self.workload.resources,
            Some(&self.workload.service),
        );
        command
            .env_clear()
            .envs(&self.env)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(append(LogStream::Stdout)?)
            .stderr(append(LogStream::Stderr)?)
            // Its own group, so that stop reaches everything it started.
            .process_group(0)
            // The workload outlives the agent (it is adopted by the next
            // run), so dropping the handle must not kill it.
            .kill_on_drop(false);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.executable.display()))?;
        Ok((child, isolation))
    }

    /// How the exec health probe runs its command: like the workload.
    fn exec_command(self: &Arc<Self>) -> ExecCommand {
        let launch = Arc::clone(self);
        Arc::new(move |argv: &[String]| {
            let (mut command, _) = launch.launcher.command(
                Path::new(&argv[0]),
                &argv[1..],
                &Resources::default(),
                None,
            );
            command
                .env_clear()
                .envs(&launch.env)
                .current_dir(&launch.dir)
                .process_group(0);
            command
        })
    }
}

/// Refuses, with a reason, a file that cannot be a program.
fn check_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("the artifact file {} is missing", path.display())
        } else {
            format!("cannot inspect the artifact {}: {e}", path.display())
        }
    })?;
    if !meta.is_file() {
        return Err(format!("the artifact {} is not a file", path.display()));
    }
    let mode = meta.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(format!(
            "the artifact {} is not executable (mode {:o})",
            path.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// How the supervisor is told to end.
#[derive(Clone, Debug, Default)]
pub struct Controls {
    /// Stop the process gracefully, then end.
    pub stop: CancellationToken,
    /// End without touching the process (agent shutdown): the next agent
    /// run adopts it.
    pub detach: CancellationToken,
}

/// A supervised process: the seam between the restart loop and the
/// operating system. [`Os`] gives real ones; `fake::FakeProcesses` gives
/// processes that exist only in memory, for tests with paused time.
pub trait Process: Send + 'static {
    /// Its identity, written to the pid file.
    fn id(&self) -> ProcessId;
    /// Waits until the process ends. Cancel-safe.
    fn wait(&mut self) -> impl Future<Output = Exit> + Send;
    /// Ends it: SIGTERM to its group, up to `grace` for it to exit, then
    /// SIGKILL to the group.
    fn terminate(&mut self, grace: Duration) -> impl Future<Output = ()> + Send;
}

/// Starts a workload's processes, or takes over one a previous agent run
/// left running.
pub trait Spawner: Send + Sync + 'static {
    type Process: Process;
    /// Starts `launch`'s process; the error says why it could not start.
    fn spawn(&self, launch: &Launch) -> Result<(Self::Process, Isolation), String>;
    /// The process `id`, which is not our child.
    fn adopt(&self, id: ProcessId) -> Self::Process;
    /// Whether some process holds TCP `port` now.
    fn port_in_use(&self, port: u16) -> bool;
    /// A TCP port that is free now.
    fn free_port(&self) -> Option<u16>;
}

/// Real processes: children of the agent, or adopted ones.
#[derive(Clone, Copy, Debug, Default)]
pub struct Os;

impl Spawner for Os {
    type Process = OsProcess;

    fn spawn(&self, launch: &Launch) -> Result<(OsProcess, Isolation), String> {
        let (child, isolation) = launch.spawn_child()?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        // A child that already exited is a zombie until it is reaped: its
        // id is still readable.
        let id = pid
            .and_then(ProcessId::of_child)
            .ok_or_else(|| "the process ended before it could be recorded".to_owned())?;
        Ok((
            OsProcess {
                id,
                child: Some(child),
            },
            isolation,
        ))
    }

    fn adopt(&self, id: ProcessId) -> OsProcess {
        OsProcess { id, child: None }
    }

    fn port_in_use(&self, port: u16) -> bool {
        // std sets SO_REUSEADDR: a port with only TIME_WAIT connections
        // binds, one another process listens on (any address) does not.
        std::net::TcpListener::bind(("0.0.0.0", port)).is_err()
    }

    fn free_port(&self) -> Option<u16> {
        free_tcp_port()
    }
}

/// A real process: our child (whose exit status we learn), or an adopted
/// one (whose end is all we learn).
pub struct OsProcess {
    id: ProcessId,
    child: Option<Child>,
}

impl Process for OsProcess {
    fn id(&self) -> ProcessId {
        self.id
    }

    async fn wait(&mut self) -> Exit {
        match &mut self.child {
            Some(child) => match child.wait().await {
                Ok(status) => status
                    .code()
                    .map(Exit::Code)
                    .or(status.signal().map(Exit::Signal))
                    .unwrap_or(Exit::Unknown),
                Err(_) => Exit::Unknown,
            },
            None => {
                adopted_exit(self.id).await;
                Exit::Unknown
            }
        }
    }

    async fn terminate(&mut self, grace: Duration) {
        let id = self.id;
        id.signal_group(Signal::SIGTERM);
        if tokio::time::timeout(grace, self.wait()).await.is_err() {
            warn!(pid = id.pid, grace = ?grace, "Workload ignored SIGTERM; killing its process group.");
        }
        // Stragglers the leader left behind. Once the group is empty and the
        // leader reaped, its id is free for the kernel to hand out again
        // (pid_max may be 32768), and a new process group with that id
        // would get the SIGKILL: signal only a group that still has members,
        // whose id the kernel cannot reuse meanwhile.
        if group_has_members(id.pid) {
            let _ = killpg(Pid::from_raw(id.pid), Signal::SIGKILL);
        }
        let _ = tokio::time::timeout(KILL_WAIT, self.wait()).await;
    }
}

/// Keeps one workload running until told to stop or detach. With
/// `adopted`, the first process is that one instead of a new one.
pub async fn supervise<S: Spawner>(
    spawner: S,
    launch: Launch,
    adopted: Option<ProcessId>,
    timing: RestartTiming,
    board: Arc<Board>,
    controls: Controls,
) {
    let mut launch = Arc::new(launch);
    let service = launch.workload.service.clone();
    let policy = launch.workload.run.restart;
    let mut restarts = Restarts::new(timing);
    let mut n_restarts: u32 = 0;
    let mut last_exit: Option<ExitInfo> = None;
    let mut isolation: Option<Isolation> = None;
    let mut adopted = adopted;
    let report = |launch: &Launch,
                  state,
                  pid: Option<i32>,
                  n_restarts,
                  message: Option<String>,
                  last_exit: &Option<ExitInfo>,
                  isolation: &Option<Isolation>| {
        let health = launch
            .workload
            .run
            .health
            .as_ref()
            .map(|_| HealthState::Unknown);
        board.set_running(WorkloadStatus {
            service: service.clone(),
            replica: launch.workload.replica,
            artifact: launch.workload.artifact.sha256,
            state,
            pid: pid.and_then(|p| u32::try_from(p).ok()),
            restarts: n_restarts,
            ports: launch.ports.clone(),
            message: message.map(|m| bounded_message(&m)),
            health: if state == WorkloadState::Running {
                health
            } else {
                None
            },
            last_exit: last_exit.clone(),
            isolation: isolation.clone(),
        });
    };
    loop {
        // Start (or take over) a process.
        let started = match adopted.take() {
            Some(id) => {
                info!(service = %service, pid = id.pid, "Adopted a workload left running by a previous agent run.");
                Ok((spawner.adopt(id), None))
            }
            None => spawner.spawn(&launch).map(|(proc, iso)| (proc, Some(iso))),
        };
        let (exit, ran, message) = match started {
            Ok((mut proc, iso)) => {
                let id = proc.id();
                if iso.is_some() {
                    isolation = iso;
                }
                if let Err(e) = write_pid_file(&launch.dir, id, &launch.executable) {
                    warn!(service = %service, error = %e, "Cannot write the pid file; a restarted agent will not find this process.");
                }
                info!(service = %service, pid = id.pid, restarts = n_restarts, "Workload runs.");
                report(
                    &launch,
                    WorkloadState::Running,
                    Some(id.pid),
                    n_restarts,
                    None,
                    &last_exit,
                    &isolation,
                );
                let health = CancellationToken::new();
                if let Some(check) = launch.workload.run.health.clone() {
                    tokio::spawn(health::run(
                        service.clone(),
                        check,
                        launch.ports.clone(),
                        launch.exec_command(),
                        board.clone(),
                        health.clone(),
                    ));
                }
                let _stop_health = health.drop_guard();
                let began = Instant::now();
                // Logs are checked at a pace that slows while they are
                // quiet: an idle workload costs the agent no wake-ups.
                let mut pace = logs::Pace::default();
                let mut next_check = Instant::now();
                let exit = loop {
                    tokio::select! {
                        biased;
                        () = controls.stop.cancelled() => {
                            proc.terminate(launch.grace).await;
                            launch.launcher.release(&service);
                            remove_pid_file(&launch.dir);
                            info!(service = %service, pid = id.pid, "Stopped workload.");
                            board.remove_running(&service);
                            return;
                        }
                        () = controls.detach.cancelled() => {
                            info!(service = %service, pid = id.pid, "Left the workload running for the next agent run.");
                            return;
                        }
                        exit = proc.wait() => break exit,
                        () = tokio::time::sleep_until(next_check) => {
                            if let Err(e) = pace.check(&launch.dir) {
                                warn!(service = %service, error = %e, "Cannot rotate the workload's logs.");
                            }
                            next_check = Instant::now() + pace.delay();
                        }
                    }
                };
                remove_pid_file(&launch.dir);
                let ran = began.elapsed();
                let mut message = exit.describe(ran);
                if ran < timing.quick_exit
                    && let Some(line) = logs::last_line(&launch.dir, LogStream::Stderr)
                {
                    message.push_str(&format!("; last stderr line: {line}"));
                }
                (exit, ran, message)
            }
            Err(reason) => (Exit::StartFailed, Duration::ZERO, reason),
        };
        if let Some(info) = exit.info() {
            last_exit = Some(info);
        }
        let next = restarts.after_exit(policy, exit, ran);
        let (state, delay) = match next {
            Next::Restart { after, state } => (state, Some(after)),
            Next::StayDown(state) => (state, None),
        };
        let message = match (state, delay) {
            (WorkloadState::CrashLoop, Some(after)) => format!(
                "crash loop: {} quick exits in a row, next attempt in {} s; last: {message}",
                restarts.quick_in_a_row(),
                after.as_secs()
            ),
            (_, None) => format!("{message}; restart policy {policy:?} keeps it down"),
            _ => message,
        };
        warn!(service = %service, state = ?state, delay = ?delay, detail = %message, "Workload ended.");
        if delay.is_some() {
            n_restarts = n_restarts.saturating_add(1);
        }
        report(
            &launch,
            state,
            None,
            n_restarts,
            Some(message.clone()),
            &last_exit,
            &isolation,
        );
        let wait = async {
            match delay {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = controls.stop.cancelled() => {
                board.remove_running(&service);
                return;
            }
            () = controls.detach.cancelled() => return,
            () = wait => {}
        }
        // The process is gone: a port the agent chose that someone else
        // holds now would fail every restart, so choose it again.
        let changes = launch.ports_to_choose_again(&spawner);
        if !changes.is_empty() {
            for (name, old, new) in &changes {
                warn!(service = %service, port = %name, old, new, "Another process holds the port chosen for the workload; chose another.");
            }
            launch = Arc::new(launch.with_ports(&changes));
            if let Some(record) = &launch.on_new_ports {
                record(&launch.ports);
            }
            report(
                &launch,
                state,
                None,
                n_restarts,
                Some(format!(
                    "{}; port {} chosen again: another process held it",
                    message,
                    changes
                        .iter()
                        .map(|(name, old, new)| format!("{name} {old} -> {new}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                &last_exit,
                &isolation,
            );
        }
    }
}

fn remove_pid_file(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(PID_FILE));
}

/// Kills a process group nobody can account for: SIGTERM, up to `grace`,
/// then SIGKILL.
pub async fn kill_unaccounted(id: ProcessId, grace: Duration) {
    Os.adopt(id).terminate(grace).await;
}

/// The service a workload directory belongs to, from its name.
pub fn service_of(dir: &Path) -> Option<ServiceName> {
    ServiceName::new(dir.file_name()?.to_str()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> RestartTiming {
        RestartTiming {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(8),
            reset_after: Duration::from_secs(60),
            quick_exit: Duration::from_secs(10),
            crash_loop_after: 5,
            crash_loop_delay: Duration::from_secs(300),
        }
    }

    #[test]
    fn process_groups_are_found_by_their_members() {
        let own = nix::unistd::getpgrp().as_raw();
        assert!(group_has_members(own), "this test's own group");
        // A pid beyond pid_max is never a group.
        assert!(!group_has_members(i32::MAX));
    }

    #[tokio::test]
    async fn the_end_of_a_process_that_is_not_our_child_is_noticed() {
        // The shell exits at once; its background sleep is nobody's child here.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 60 >/dev/null 2>&1 & echo $!"])
            .output()
            .expect("sh runs");
        let pid: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("pid");
        let id = ProcessId::of(pid).expect("the sleep runs");
        let waiting = tokio::spawn(adopted_exit(id));
        // It runs for a minute: the wait must not end on its own.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "returned while the process runs");
        nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the end is noticed")
            .expect("no panic");
        assert!(!id.alive());
    }

    const QUICK: Duration = Duration::from_millis(10);
    const LONG: Duration = Duration::from_secs(120);

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_after_a_long_run() {
        let mut r = Restarts::new(RestartTiming {
            crash_loop_after: 100,
            ..timing()
        });
        let delays: Vec<_> = (0..6)
            .map(
                |_| match r.after_exit(RestartPolicy::Always, Exit::Code(1), QUICK) {
                    Next::Restart { after, .. } => after.as_secs(),
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 8, 8]);
        assert_eq!(
            r.after_exit(RestartPolicy::Always, Exit::Code(1), LONG),
            Next::Restart {
                after: Duration::from_secs(1),
                state: WorkloadState::Backoff
            }
        );
    }

    #[test]
    fn quick_exits_in_a_row_become_a_crash_loop() {
        let mut r = Restarts::new(timing());
        for _ in 0..4 {
            let next = r.after_exit(RestartPolicy::Always, Exit::Code(3), QUICK);
            assert!(matches!(
                next,
                Next::Restart {
                    state: WorkloadState::Backoff,
                    ..
                }
            ));
        }
        assert_eq!(
            r.after_exit(RestartPolicy::Always, Exit::Code(3), QUICK),
            Next::Restart {
                after: Duration::from_secs(300),
                state: WorkloadState::CrashLoop
            }
        );
        // A run that lasts ends the crash loop.
        let next = r.after_exit(RestartPolicy::Always, Exit::Code(3), LONG);
        assert!(matches!(
            next,
            Next::Restart {
                state: WorkloadState::Backoff,
                ..
            }
        ));
    }

    #[test]
    fn policies_decide_whether_to_restart() {
        let mut r = Restarts::new(timing());
        assert_eq!(
            r.after_exit(RestartPolicy::Never, Exit::Code(0), LONG),
            Next::StayDown(WorkloadState::Exited)
        );
        assert_eq!(
            r.after_exit(RestartPolicy::Never, Exit::Signal(9), LONG),
            Next::StayDown(WorkloadState::Failed)
        );
        assert_eq!(
            r.after_exit(RestartPolicy::OnFailure, Exit::Code(0), LONG),
            Next::StayDown(WorkloadState::Exited)
        );
        assert!(matches!(
            r.after_exit(RestartPolicy::OnFailure, Exit::Unknown, LONG),
            Next::Restart { .. }
        ));
        assert!(matches!(
            r.after_exit(RestartPolicy::Always, Exit::StartFailed, QUICK),
            Next::Restart {
                state: WorkloadState::Failed,
                ..
            }
        ));
    }

    #[test]
    fn a_process_is_identified_by_pid_and_start_time() {
        let me = ProcessId::of(std::process::id() as i32).expect("this process");
        assert!(me.alive());
        let reused = ProcessId {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!reused.alive(), "another start time is another process");
        assert!(ProcessId::of(i32::MAX).is_none());
    }

    #[test]
    fn pid_files_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = ProcessId {
            pid: 42,
            start_ticks: 7,
        };
        write_pid_file(dir.path(), id, Path::new("/a/b")).expect("write");
        assert_eq!(
            read_pid_file(dir.path()),
            Some((42, PathBuf::from("/a/b"), Some(7)))
        );
    }

    #[test]
    fn executables_are_checked_before_starting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = check_executable(&dir.path().join("nope")).expect_err("missing");
        assert!(missing.contains("is missing"), "{missing}");
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"data").expect("write");
        let err = check_executable(&plain).expect_err("not executable");
        assert!(err.contains("not executable (mode 644)"), "{err}");
    }
}
