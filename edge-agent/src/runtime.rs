//! Running workloads: the [`Runtime`] trait and its process implementation.
//!
//! Each workload is the cached artifact run directly (never through a shell)
//! in its own process group, with a minimal environment, its own working
//! directory and appended stdout/stderr logs. A supervisor task per workload
//! owns the child: it restarts it with capped exponential backoff when it
//! exits, and on stop sends SIGTERM to the group, waits a grace period, then
//! SIGKILLs the group. State changes are written to the [`Board`].
//!
//! A `pid` file in each workload directory lets a restarted agent find and
//! kill processes a previous (SIGKILLed) agent left behind, before it starts
//! anything. Adopting such survivors instead of killing them is a later task.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use verge_shared::messages::{Workload, WorkloadState, WorkloadStatus, bounded_message};
use verge_shared::{AgentId, RegionId, ServiceName};

use crate::report::Board;

/// Runs workloads and says which ones it runs.
pub trait Runtime: Send + Sync {
    /// Starts `workload` from `executable` and keeps it running until
    /// stopped. Starting a service that is already running is an error.
    fn start(&self, workload: &Workload, executable: &Path) -> Result<(), RuntimeError>;
    /// Stops the service's workload; a no-op for one that does not run.
    fn stop(&self, service: &ServiceName) -> impl Future<Output = ()> + Send;
    /// What runs now, keyed by service.
    fn observe(&self) -> BTreeMap<ServiceName, Workload>;
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("workload {0} is already running")]
    AlreadyRunning(ServiceName),
    #[error("workload {service}: cannot prepare {path}: {source}")]
    Prepare {
        service: ServiceName,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Restart and stop timing.
#[derive(Clone, Copy, Debug)]
pub struct RestartPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A process that ran this long resets the backoff.
    pub reset_after: Duration,
    /// Time between SIGTERM and SIGKILL on stop.
    pub grace: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
            grace: Duration::from_secs(5),
        }
    }
}

/// What a workload process learns about where it runs.
#[derive(Clone, Debug)]
pub struct Placement {
    pub agent: AgentId,
    pub region: RegionId,
}

/// [`Runtime`] running each workload as a local process.
pub struct ProcessRuntime {
    workloads_dir: PathBuf,
    placement: Placement,
    policy: RestartPolicy,
    board: Arc<Board>,
    running: Mutex<BTreeMap<ServiceName, Supervised>>,
    /// Dynamic ports picked per (service, port name), kept while the agent runs.
    ports: Mutex<BTreeMap<(ServiceName, String), u16>>,
}

struct Supervised {
    workload: Workload,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Everything a supervisor needs to (re)start one process.
struct Launch {
    workload: Workload,
    executable: PathBuf,
    dir: PathBuf,
    env: BTreeMap<String, String>,
    ports: BTreeMap<String, u16>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ProcessRuntime {
    /// A runtime keeping per-workload directories under `workloads_dir`.
    pub fn new(
        workloads_dir: PathBuf,
        placement: Placement,
        policy: RestartPolicy,
        board: Arc<Board>,
    ) -> Self {
        Self {
            workloads_dir,
            placement,
            policy,
            board,
            running: Mutex::new(BTreeMap::new()),
            ports: Mutex::new(BTreeMap::new()),
        }
    }

    /// Stops every workload, each with its grace period, concurrently.
    pub async fn stop_all(&self) {
        let all: Vec<Supervised> = std::mem::take(&mut *lock(&self.running))
            .into_values()
            .collect();
        for s in &all {
            s.cancel.cancel();
        }
        for s in all {
            let _ = s.task.await;
        }
    }

    /// The fixed port, or a free one picked once per (service, name).
    fn port_for(&self, service: &ServiceName, name: &str, fixed: Option<u16>) -> u16 {
        if let Some(port) = fixed {
            return port;
        }
        let mut ports = lock(&self.ports);
        *ports
            .entry((service.clone(), name.to_owned()))
            .or_insert_with(|| {
                // Bind, read, drop: the port is free now; the workload binds it soon after.
                std::net::TcpListener::bind("0.0.0.0:0")
                    .and_then(|l| l.local_addr())
                    .map_or(0, |a| a.port())
            })
    }

    fn launch(&self, workload: &Workload, executable: &Path) -> Launch {
        let dir = self.workloads_dir.join(workload.service.as_str());
        let ports: BTreeMap<String, u16> = workload
            .run
            .ports
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    self.port_for(&workload.service, &p.name, p.port),
                )
            })
            .collect();
        let mut env = BTreeMap::from([
            ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
            ("HOME".to_owned(), dir.to_string_lossy().into_owned()),
        ]);
        env.extend(workload.run.env.clone());
        env.insert("VERGE_AGENT_ID".into(), self.placement.agent.to_string());
        env.insert("VERGE_REGION".into(), self.placement.region.to_string());
        env.insert("VERGE_SERVICE".into(), workload.service.to_string());
        env.insert("VERGE_REPLICA".into(), workload.replica.to_string());
        for (name, port) in &ports {
            env.insert(port_env_name(name), port.to_string());
        }
        Launch {
            workload: workload.clone(),
            executable: executable.to_owned(),
            dir,
            env,
            ports,
        }
    }
}

/// `VERGE_PORT_<NAME>`, upper-cased with '-' as '_'.
pub fn port_env_name(name: &str) -> String {
    format!("VERGE_PORT_{}", name.to_ascii_uppercase().replace('-', "_"))
}

impl Runtime for ProcessRuntime {
    fn start(&self, workload: &Workload, executable: &Path) -> Result<(), RuntimeError> {
        let mut running = lock(&self.running);
        if running.contains_key(&workload.service) {
            return Err(RuntimeError::AlreadyRunning(workload.service.clone()));
        }
        let launch = self.launch(workload, executable);
        std::fs::create_dir_all(&launch.dir).map_err(|source| RuntimeError::Prepare {
            service: workload.service.clone(),
            path: launch.dir.clone(),
            source,
        })?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(supervise(
            launch,
            self.policy,
            self.board.clone(),
            cancel.clone(),
        ));
        running.insert(
            workload.service.clone(),
            Supervised {
                workload: workload.clone(),
                cancel,
                task,
            },
        );
        Ok(())
    }

    fn stop(&self, service: &ServiceName) -> impl Future<Output = ()> + Send {
        let supervised = lock(&self.running).remove(service);
        async move {
            if let Some(s) = supervised {
                s.cancel.cancel();
                let _ = s.task.await;
            }
        }
    }

    fn observe(&self) -> BTreeMap<ServiceName, Workload> {
        lock(&self.running)
            .iter()
            .map(|(k, v)| (k.clone(), v.workload.clone()))
            .collect()
    }
}

/// Keeps one workload running until `cancel`, then stops it gracefully.
async fn supervise(
    launch: Launch,
    policy: RestartPolicy,
    board: Arc<Board>,
    cancel: CancellationToken,
) {
    let service = launch.workload.service.clone();
    let pid_file = launch.dir.join("pid");
    let mut restarts: u32 = 0;
    let mut backoff = policy.initial_backoff;
    let report = |state, pid: Option<u32>, restarts, message: Option<String>| {
        board.set_running(WorkloadStatus {
            service: service.clone(),
            replica: launch.workload.replica,
            artifact: launch.workload.artifact.sha256,
            state,
            pid,
            restarts,
            ports: launch.ports.clone(),
            message: message.map(|m| bounded_message(&m)),
        });
    };
    loop {
        let (state, message) = match spawn(&launch) {
            Ok(mut child) => {
                let pid = child.id();
                if let Some(pid) = pid {
                    let record = format!("{pid}\n{}\n", launch.executable.display());
                    if let Err(e) = std::fs::write(&pid_file, record) {
                        warn!(service = %service, error = %e, "Cannot write the pid file.");
                    }
                }
                info!(service = %service, pid = ?pid, restarts, "Started workload.");
                report(WorkloadState::Running, pid, restarts, None);
                let started = Instant::now();
                let exit = tokio::select! {
                    biased;
                    () = cancel.cancelled() => {
                        terminate(&mut child, pid, policy.grace).await;
                        let _ = std::fs::remove_file(&pid_file);
                        info!(service = %service, "Stopped workload.");
                        board.remove_running(&service);
                        return;
                    }
                    exit = child.wait() => exit,
                };
                let _ = std::fs::remove_file(&pid_file);
                if started.elapsed() >= policy.reset_after {
                    backoff = policy.initial_backoff;
                }
                let message = match exit {
                    Ok(status) => format!("exited: {status}"),
                    Err(e) => format!("cannot wait for the process: {e}"),
                };
                warn!(service = %service, detail = %message, delay = ?backoff, "Workload exited; restarting after a delay.");
                (WorkloadState::Backoff, message)
            }
            Err(e) => {
                let message = format!("cannot start {}: {e}", launch.executable.display());
                warn!(service = %service, detail = %message, delay = ?backoff, "Workload failed to start; retrying after a delay.");
                (WorkloadState::Failed, message)
            }
        };
        restarts = restarts.saturating_add(1);
        report(state, None, restarts, Some(message));
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                board.remove_running(&service);
                return;
            }
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(policy.max_backoff);
    }
}

fn spawn(launch: &Launch) -> std::io::Result<tokio::process::Child> {
    let append = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(launch.dir.join(name))
    };
    tokio::process::Command::new(&launch.executable)
        .args(&launch.workload.run.args)
        .env_clear()
        .envs(&launch.env)
        .current_dir(&launch.dir)
        .stdin(Stdio::null())
        .stdout(append("stdout.log")?)
        .stderr(append("stderr.log")?)
        .process_group(0)
        // Dropping a child handle (agent bug or panic) must not leave an orphan.
        .kill_on_drop(true)
        .spawn()
}

/// SIGTERM to the group, up to `grace` for the leader to exit, then SIGKILL
/// to the group (which also takes any stragglers the leader left behind).
async fn terminate(child: &mut tokio::process::Child, pid: Option<u32>, grace: Duration) {
    let group = pid.and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw);
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        warn!(pid = ?pid, grace = ?grace, "Workload ignored SIGTERM; killing its process group.");
    }
    if let Some(group) = group {
        // ESRCH when the whole group is gone already: nothing to do.
        let _ = killpg(group, Signal::SIGKILL);
    }
    let _ = child.wait().await;
}

/// Kills process groups that a previous agent run left behind, found via
/// `<workloads_dir>/*/pid`. A pid is only trusted while `/proc/<pid>/cmdline`
/// still names the recorded artifact, so a reused pid is never killed.
pub async fn kill_stale(workloads_dir: &Path, grace: Duration) {
    let Ok(entries) = std::fs::read_dir(workloads_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let pid_file = entry.path().join("pid");
        let Ok(record) = std::fs::read_to_string(&pid_file) else {
            continue;
        };
        let _ = std::fs::remove_file(&pid_file);
        let mut lines = record.lines();
        let (Some(Ok(pid)), Some(executable)) = (lines.next().map(str::parse::<i32>), lines.next())
        else {
            continue;
        };
        if pid <= 1 || !runs(pid, executable) {
            continue;
        }
        warn!(
            pid,
            executable, "Killing a workload left behind by a previous agent run."
        );
        let group = Pid::from_raw(pid);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while runs(pid, executable) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = killpg(group, Signal::SIGKILL);
    }
}

/// Does process `pid` exist with `executable` as its argv[0]? (A zombie has
/// an empty command line and counts as gone.)
fn runs(pid: i32, executable: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).next() == Some(executable.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_shared::Sha256Digest;
    use verge_shared::messages::{ArtifactRef, PortSpec, RunSpec};

    const DEADLINE: Duration = Duration::from_secs(10);

    struct Fixture {
        dir: tempfile::TempDir,
        board: Arc<Board>,
        runtime: ProcessRuntime,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let board = Arc::new(Board::default());
        let policy = RestartPolicy {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            reset_after: Duration::from_secs(60),
            grace: Duration::from_secs(2),
        };
        let runtime = ProcessRuntime::new(
            dir.path().join("workloads"),
            Placement {
                agent: AgentId::new("edge-1").expect("valid"),
                region: RegionId::new("local").expect("valid"),
            },
            policy,
            board.clone(),
        );
        Fixture {
            dir,
            board,
            runtime,
        }
    }

    impl Fixture {
        /// Copies a system binary into the fixture as if it were a cached artifact.
        fn artifact(&self, system_path: &str) -> PathBuf {
            let path = self
                .dir
                .path()
                .join(Path::new(system_path).file_name().expect("name"));
            std::fs::copy(system_path, &path).expect("copy");
            path
        }

        /// Waits until the service's status satisfies `ok`, up to a deadline.
        async fn wait_for(
            &self,
            service: &ServiceName,
            ok: impl Fn(&WorkloadStatus) -> bool,
        ) -> WorkloadStatus {
            tokio::time::timeout(DEADLINE, async {
                loop {
                    if let Some(s) = self.board.running(service).filter(|s| ok(s)) {
                        return s;
                    }
                    self.board.changed().await;
                }
            })
            .await
            .expect("condition within the deadline")
        }
    }

    fn workload(service: &str, args: &[&str]) -> Workload {
        Workload {
            service: ServiceName::new(service).expect("valid"),
            replica: 0,
            artifact: ArtifactRef {
                sha256: Sha256Digest::of(service.as_bytes()),
                size: 1,
            },
            run: RunSpec {
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                env: BTreeMap::new(),
                ports: vec![PortSpec {
                    name: "http-alt".into(),
                    port: None,
                }],
            },
            resources: Default::default(),
        }
    }

    async fn wait_gone(pid: i32) {
        tokio::time::timeout(DEADLINE, async {
            while Path::new(&format!("/proc/{pid}")).exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("process gone within the deadline");
    }

    #[tokio::test]
    async fn runs_and_stops_a_workload() {
        let f = fixture();
        let sleep = f.artifact("/bin/sleep");
        let w = workload("sleeper", &["30"]);
        f.runtime.start(&w, &sleep).expect("start");
        assert!(matches!(
            f.runtime.start(&w, &sleep),
            Err(RuntimeError::AlreadyRunning(_))
        ));
        let status = f
            .wait_for(&w.service, |s| {
                s.state == WorkloadState::Running && s.pid.is_some()
            })
            .await;
        let pid = i32::try_from(status.pid.expect("pid")).expect("pid fits");
        assert!(runs(pid, &sleep.to_string_lossy()));
        assert!(status.ports.get("http-alt").is_some_and(|p| *p > 0));
        let pid_file = f.dir.path().join("workloads/sleeper/pid");
        assert!(pid_file.exists());
        assert_eq!(f.runtime.observe().get(&w.service), Some(&w));

        f.runtime.stop(&w.service).await;
        wait_gone(pid).await;
        assert!(f.board.running(&w.service).is_none());
        assert!(f.runtime.observe().is_empty());
        assert!(!pid_file.exists());
    }

    #[tokio::test]
    async fn a_failing_process_restarts_with_backoff() {
        let f = fixture();
        let fail = f.artifact("/bin/false");
        let w = workload("crasher", &[]);
        f.runtime.start(&w, &fail).expect("start");
        let status = f.wait_for(&w.service, |s| s.restarts >= 3).await;
        assert!(
            matches!(
                status.state,
                WorkloadState::Backoff | WorkloadState::Running
            ),
            "{status:?}"
        );
        f.runtime.stop_all().await;
        assert!(f.runtime.observe().is_empty());
    }

    #[tokio::test]
    async fn stale_workloads_of_a_previous_run_are_killed() {
        let f = fixture();
        let sleep = f.artifact("/bin/sleep");
        let w = workload("orphan", &["30"]);
        f.runtime.start(&w, &sleep).expect("start");
        let status = f.wait_for(&w.service, |s| s.pid.is_some()).await;
        let pid = i32::try_from(status.pid.expect("pid")).expect("pid fits");
        // Pretend the agent died: the pid file stays and a new run cleans up.
        kill_stale(&f.dir.path().join("workloads"), Duration::from_secs(2)).await;
        wait_gone(pid).await;
        f.runtime.stop_all().await;
    }

    #[test]
    fn port_variable_names() {
        assert_eq!(port_env_name("http-alt"), "VERGE_PORT_HTTP_ALT");
    }
}
