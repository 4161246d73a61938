//! Running workloads: the [`Runtime`] trait and its process implementation.
//!
//! Each workload is the cached artifact run directly (never through a shell)
//! in its own process group, with a minimal environment, its own working
//! directory and its stdout/stderr appended to rotated log files. A
//! supervisor task per workload ([`crate::supervise`]) owns the process.
//!
//! Workloads outlive the agent. Each workload directory holds `workload.json`
//! (what runs there, written before the process starts) and `pid` (pid,
//! artifact path and the process's start time from `/proc/<pid>/stat`,
//! written right after). A restarted agent [`ProcessRuntime::adopt`]s every
//! recorded process that still runs with the same start time, so a reused
//! pid is never mistaken for a workload, and kills the process group of one
//! it cannot account for (a live pid without a readable record).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use verge_shared::messages::{DEFAULT_STOP_GRACE_SECS, Workload};
use verge_shared::{AgentId, RegionId, ServiceName};

use crate::confine::Launcher;
use crate::report::Board;
use crate::supervise::{
    self, Controls, Launch, Os, ProcessId, RestartTiming, port_env_name, read_pid_file, service_of,
    supervise,
};

/// The record of what runs in a workload directory.
const RECORD_FILE: &str = "workload.json";

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

/// What a workload process learns about where it runs.
#[derive(Clone, Debug)]
pub struct Placement {
    pub agent: AgentId,
    pub region: RegionId,
}

/// What `workload.json` holds: enough to supervise the process again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    workload: Workload,
    executable: PathBuf,
    ports: BTreeMap<String, u16>,
}

/// [`Runtime`] running each workload as a local process.
pub struct ProcessRuntime {
    workloads_dir: PathBuf,
    placement: Placement,
    timing: RestartTiming,
    launcher: Launcher,
    board: Arc<Board>,
    running: Mutex<BTreeMap<ServiceName, Supervised>>,
    /// Dynamic ports picked per (service, port name), kept while the agent
    /// runs (and taken over from adopted workloads).
    ports: Arc<Mutex<BTreeMap<(ServiceName, String), u16>>>,
}

struct Supervised {
    workload: Workload,
    controls: Controls,
    task: JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What [`ProcessRuntime::adopt`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Workloads taken over, by service.
    pub adopted: Vec<ServiceName>,
    /// Process groups killed because nothing said what they were.
    pub killed: Vec<i32>,
}

impl ProcessRuntime {
    /// A runtime keeping per-workload directories under `workloads_dir`.
    pub fn new(
        workloads_dir: PathBuf,
        placement: Placement,
        timing: RestartTiming,
        launcher: Launcher,
        board: Arc<Board>,
    ) -> Self {
        Self {
            workloads_dir,
            placement,
            timing,
            launcher,
            board,
            running: Mutex::new(BTreeMap::new()),
            ports: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// Stops every workload, each with its grace period, concurrently.
    pub async fn stop_all(&self) {
        self.end_all(|c| c.stop.cancel()).await;
    }

    /// Stops supervising without touching the processes: they keep running
    /// and the next agent run adopts them.
    pub async fn detach_all(&self) {
        self.end_all(|c| c.detach.cancel()).await;
    }

    async fn end_all(&self, end: impl Fn(&Controls)) {
        let all: Vec<Supervised> = std::mem::take(&mut *lock(&self.running))
            .into_values()
            .collect();
        for s in &all {
            end(&s.controls);
        }
        for s in all {
            let _ = s.task.await;
        }
    }

    /// Takes over the workloads a previous agent run left running; call it
    /// once, before the first reconcile pass. A recorded process that is
    /// gone is forgotten; a live one without a usable record is killed
    /// (with `grace`), so nothing runs that the agent cannot account for.
    pub async fn adopt(&self, grace: Duration) -> Adopted {
        let mut found = Adopted::default();
        let Ok(entries) = std::fs::read_dir(&self.workloads_dir) else {
            return found;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            // With cgroups, whatever is left in the group of a workload that
            // is not adopted below is ended: processes that escaped its
            // process group, or one started just before an agent crash that
            // left no pid file.
            let release = |why: &str| {
                if let Some(service) = service_of(&dir) {
                    debug!(service = %service, why, "Ending what is left in the workload's cgroup, if it has one.");
                    self.launcher.release(&service);
                }
            };
            let Some((pid, executable, start_ticks)) = read_pid_file(&dir) else {
                debug!(dir = %dir.display(), "No usable pid file; nothing to adopt here.");
                release("no pid file");
                continue;
            };
            let live = ProcessId::of(pid).filter(|id| match start_ticks {
                Some(start) => id.start_ticks == start,
                // An older pid file without a start time: trust argv[0].
                None => runs(pid, &executable),
            });
            let Some(id) = live else {
                debug!(pid, dir = %dir.display(), recorded_start = ?start_ticks, "The recorded process is gone; forgetting it.");
                let _ = std::fs::remove_file(dir.join(supervise::PID_FILE));
                release("the recorded process is gone");
                continue;
            };
            let record = std::fs::read(dir.join(RECORD_FILE))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
                .filter(|r| {
                    Some(&r.workload.service) == service_of(&dir).as_ref()
                        && r.executable == executable
                });
            match record {
                Some(record) => {
                    found.adopted.push(record.workload.service.clone());
                    self.supervise(record, Some(id));
                }
                None => {
                    warn!(pid, dir = %dir.display(), "Killing a workload process that has no readable record.");
                    supervise::kill_unaccounted(id, grace).await;
                    release("its process had no record");
                    let _ = std::fs::remove_file(dir.join(supervise::PID_FILE));
                    found.killed.push(pid);
                }
            }
        }
        if !found.adopted.is_empty() || !found.killed.is_empty() {
            info!(adopted = ?found.adopted, killed = ?found.killed, "Took over workloads from a previous agent run.");
        }
        found
    }

    /// The fixed port, or a free one picked once per (service, name).
    fn port_for(&self, service: &ServiceName, name: &str, fixed: Option<u16>) -> u16 {
        if let Some(port) = fixed {
            return port;
        }
        let mut ports = lock(&self.ports);
        *ports
            .entry((service.clone(), name.to_owned()))
            // Free now; the workload binds it soon after. Should another
            // process take it first, supervision chooses again.
            .or_insert_with(|| supervise::free_tcp_port().unwrap_or(0))
    }

    fn dir_of(&self, service: &ServiceName) -> PathBuf {
        self.workloads_dir.join(service.as_str())
    }

    /// Starts a supervisor for `record`, taking over `adopted` if given.
    fn supervise(&self, record: Record, adopted: Option<ProcessId>) {
        let workload = record.workload;
        let service = workload.service.clone();
        {
            let mut ports = lock(&self.ports);
            for (name, port) in &record.ports {
                ports.insert((service.clone(), name.clone()), *port);
            }
        }
        let dir = self.dir_of(&service);
        let mut env = BTreeMap::from([
            ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
            ("HOME".to_owned(), dir.to_string_lossy().into_owned()),
        ]);
        env.extend(workload.run.env.clone());
        env.insert("VERGE_AGENT_ID".into(), self.placement.agent.to_string());
        env.insert("VERGE_REGION".into(), self.placement.region.to_string());
        env.insert("VERGE_SERVICE".into(), service.to_string());
        env.insert("VERGE_REPLICA".into(), workload.replica.to_string());
        for (name, port) in &record.ports {
            env.insert(port_env_name(name), port.to_string());
        }
        let grace = Duration::from_secs(
            workload
                .run
                .stop_grace_secs
                .unwrap_or(DEFAULT_STOP_GRACE_SECS)
                .into(),
        );
        let chosen_ports = (workload.run.ports.iter())
            .filter(|p| p.port.is_none())
            .map(|p| p.name.clone())
            .collect();
        let on_new_ports: supervise::NewPorts = {
            let ports = Arc::clone(&self.ports);
            let path = dir.join(RECORD_FILE);
            let (workload, executable) = (workload.clone(), record.executable.clone());
            Arc::new(move |new: &BTreeMap<String, u16>| {
                let mut known = lock(&ports);
                for (name, port) in new {
                    known.insert((workload.service.clone(), name.clone()), *port);
                }
                let record = Record {
                    workload: workload.clone(),
                    executable: executable.clone(),
                    ports: new.clone(),
                };
                // The next agent run adopts the process with these ports.
                if let Err(e) = serde_json::to_vec(&record)
                    .map_err(std::io::Error::from)
                    .and_then(|bytes| verge_durable::write(&path, &bytes))
                {
                    warn!(service = %workload.service, path = %path.display(), error = %e, "Cannot record the workload's new ports.");
                }
            })
        };
        let launch = Launch {
            workload: workload.clone(),
            executable: record.executable,
            dir,
            env,
            ports: record.ports,
            chosen_ports,
            on_new_ports: Some(on_new_ports),
            launcher: self.launcher.clone(),
            grace,
        };
        let controls = Controls::default();
        let task = tokio::spawn(supervise(
            Os,
            launch,
            adopted,
            self.timing,
            self.board.clone(),
            controls.clone(),
        ));
        lock(&self.running).insert(
            service,
            Supervised {
                workload,
                controls,
                task,
            },
        );
    }
}

impl Runtime for ProcessRuntime {
    fn start(&self, workload: &Workload, executable: &Path) -> Result<(), RuntimeError> {
        if lock(&self.running).contains_key(&workload.service) {
            return Err(RuntimeError::AlreadyRunning(workload.service.clone()));
        }
        let dir = self.dir_of(&workload.service);
        let prepare = |path: &Path, source| RuntimeError::Prepare {
            service: workload.service.clone(),
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(|e| prepare(&dir, e))?;
        self.launcher
            .prepare_dir(&dir)
            .map_err(|e| prepare(&dir, e))?;
        let ports = workload
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
        let record = Record {
            workload: workload.clone(),
            executable: executable.to_owned(),
            ports,
        };
        // Written (atomically) before the process exists, so a process the
        // next agent run finds always has a record.
        let path = dir.join(RECORD_FILE);
        let bytes = serde_json::to_vec(&record).map_err(|e| prepare(&path, e.into()))?;
        verge_durable::write(&path, &bytes).map_err(|e| prepare(&path, e))?;
        self.supervise(record, None);
        Ok(())
    }

    fn stop(&self, service: &ServiceName) -> impl Future<Output = ()> + Send {
        let supervised = lock(&self.running).remove(service);
        async move {
            if let Some(s) = supervised {
                s.controls.stop.cancel();
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

/// Does process `pid` exist with `executable` as its argv[0]? (A zombie has
/// an empty command line and counts as gone.)
fn runs(pid: i32, executable: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline.split(|b| *b == 0).next() == Some(executable.as_os_str().as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use verge_shared::messages::{PortSpec, RestartPolicy, RunSpec, WorkloadState, WorkloadStatus};

    const DEADLINE: Duration = Duration::from_secs(20);

    struct Fixture {
        dir: tempfile::TempDir,
        board: Arc<Board>,
        runtime: ProcessRuntime,
    }

    fn runtime_in(dir: &Path, board: Arc<Board>) -> ProcessRuntime {
        let timing = RestartTiming {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            reset_after: Duration::from_secs(60),
            quick_exit: Duration::from_secs(5),
            crash_loop_after: 4,
            crash_loop_delay: Duration::from_secs(300),
        };
        ProcessRuntime::new(
            dir.join("workloads"),
            Placement {
                agent: AgentId::new("edge-1").expect("valid"),
                region: RegionId::new("local").expect("valid"),
            },
            timing,
            Launcher::Direct,
            board,
        )
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let board = Arc::new(Board::default());
        let runtime = runtime_in(dir.path(), board.clone());
        Fixture {
            dir,
            board,
            runtime,
        }
    }

    impl Fixture {
        /// Links a system binary into the fixture as if it were a cached
        /// artifact. A link, not a copy: while a copy is being written, a
        /// workload forked by a parallel test inherits the write descriptor
        /// until it execs, and exec of the copy then fails with ETXTBSY.
        fn artifact(&self, system_path: &str) -> PathBuf {
            let path = self
                .dir
                .path()
                .join(Path::new(system_path).file_name().expect("name"));
            std::os::unix::fs::symlink(system_path, &path).expect("link");
            path
        }

        /// Waits until the service's status satisfies `ok`, up to a deadline.
        async fn wait_for(
            &self,
            service: &ServiceName,
            ok: impl Fn(&WorkloadStatus) -> bool,
        ) -> WorkloadStatus {
            wait_status(&self.board, service, ok).await
        }
    }

    async fn wait_status(
        board: &Board,
        service: &ServiceName,
        ok: impl Fn(&WorkloadStatus) -> bool,
    ) -> WorkloadStatus {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(s) = board.running(service).filter(|s| ok(s)) {
                    return s;
                }
                // Conditions may also depend on the process itself (what it
                // runs once it has exec'd), which changes nothing on the
                // board: look again after a while as well.
                tokio::select! {
                    () = board.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "condition within the deadline; last: {:?}",
                board.running(service)
            )
        })
    }

    fn workload(service: &str, args: &[&str]) -> Workload {
        Workload {
            run: RunSpec {
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                ports: vec![PortSpec {
                    name: "http-alt".into(),
                    port: None,
                }],
                ..RunSpec::default()
            },
            ..crate::fake::workload(service, service.as_bytes())
        }
    }

    fn pid_of(status: &WorkloadStatus) -> i32 {
        i32::try_from(status.pid.expect("pid")).expect("pid fits")
    }

    /// Does the process ignore SIGTERM (`SigIgn` in /proc/<pid>/status)?
    fn ignores_sigterm(pid: i32) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (nix::libc::SIGTERM - 1)) != 0)
    }

    /// Has the process started a child yet?
    fn has_children(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .is_ok_and(|c| !c.trim().is_empty())
    }

    async fn wait_gone(pid: i32) {
        tokio::time::timeout(DEADLINE, async {
            while ProcessId::of(pid).is_some() {
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
        // Running with a pid that runs the artifact. "Running" is reported
        // as soon as the child exists, which may be before it has exec'd
        // (its command line is still this test's): the wait re-checks until
        // the exec shows.
        let status = f
            .wait_for(&w.service, |s| {
                s.state == WorkloadState::Running
                    && s.pid
                        .and_then(|p| i32::try_from(p).ok())
                        .is_some_and(|p| runs(p, &sleep))
            })
            .await;
        let pid = pid_of(&status);
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
    async fn quick_exits_end_in_a_reported_crash_loop() {
        let f = fixture();
        let fail = f.artifact("/bin/false");
        let w = workload("crasher", &[]);
        f.runtime.start(&w, &fail).expect("start");
        let status = f
            .wait_for(&w.service, |s| s.state == WorkloadState::CrashLoop)
            .await;
        assert_eq!(status.last_exit.as_ref().and_then(|e| e.code), Some(1));
        let message = status.message.unwrap_or_default();
        assert!(
            message.contains("crash loop") && message.contains("code 1"),
            "{message}"
        );
        assert_eq!(status.restarts, 4);
        f.runtime.stop_all().await;
        assert!(f.runtime.observe().is_empty());
    }

    #[tokio::test]
    async fn restart_policy_never_keeps_an_exited_workload_down() {
        let f = fixture();
        let ok = f.artifact("/bin/true");
        let mut w = workload("oneshot", &[]);
        w.run.restart = RestartPolicy::Never;
        f.runtime.start(&w, &ok).expect("start");
        let status = f
            .wait_for(&w.service, |s| s.state == WorkloadState::Exited)
            .await;
        assert_eq!(status.restarts, 0);
        assert_eq!(status.last_exit.as_ref().and_then(|e| e.code), Some(0));
        // Still owned, so a reconcile pass does not start it again.
        assert!(f.runtime.observe().contains_key(&w.service));
        f.runtime.stop_all().await;
    }

    #[tokio::test]
    async fn a_missing_artifact_is_reported_not_hammered() {
        let f = fixture();
        let w = workload("ghost", &[]);
        f.runtime
            .start(&w, &f.dir.path().join("not-there"))
            .expect("start");
        let status = f
            .wait_for(&w.service, |s| s.state == WorkloadState::CrashLoop)
            .await;
        let message = status.message.unwrap_or_default();
        assert!(message.contains("is missing"), "{message}");
        f.runtime.stop_all().await;
    }

    #[tokio::test]
    async fn stop_waits_the_grace_period_then_kills_the_group() {
        let f = fixture();
        let sh = f.artifact("/bin/sh");
        // The ignored SIGTERM is inherited by the sleep, so the whole group
        // ignores it and only SIGKILL ends it.
        let mut w = workload("stubborn", &["-c", "trap '' TERM; sleep 60 & wait"]);
        w.run.stop_grace_secs = Some(1);
        f.runtime.start(&w, &sh).expect("start");
        let pid = pid_of(&f.wait_for(&w.service, |s| s.pid.is_some()).await);
        // The signal must come after the shell set its trap and started
        // the sleep, or nothing here tests the grace period.
        tokio::time::timeout(DEADLINE, async {
            while !(ignores_sigterm(pid) && has_children(pid)) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the shell ignores SIGTERM and runs its sleep");
        let began = std::time::Instant::now();
        f.runtime.stop(&w.service).await;
        assert!(
            began.elapsed() >= Duration::from_secs(1),
            "{:?}",
            began.elapsed()
        );
        wait_gone(pid).await;
    }

    #[tokio::test]
    async fn a_restarted_agent_adopts_running_workloads() {
        let f = fixture();
        let sleep = f.artifact("/bin/sleep");
        let w = workload("survivor", &["30"]);
        f.runtime.start(&w, &sleep).expect("start");
        let before = f.wait_for(&w.service, |s| s.pid.is_some()).await;
        let pid = pid_of(&before);
        // The agent goes away without stopping its workloads.
        f.runtime.detach_all().await;
        assert!(ProcessId::of(pid).is_some(), "detaching leaves it running");

        let board = Arc::new(Board::default());
        let next = runtime_in(f.dir.path(), board.clone());
        let adopted = next.adopt(Duration::from_secs(2)).await;
        assert_eq!(adopted.adopted, std::slice::from_ref(&w.service));
        assert!(adopted.killed.is_empty());
        assert_eq!(next.observe().get(&w.service), Some(&w));
        let after = wait_status(&board, &w.service, |s| s.pid.is_some()).await;
        assert_eq!(after.pid, before.pid, "the same process, not a second copy");
        assert_eq!(after.ports, before.ports);

        // The adopted process still follows the restart policy.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        let restarted = wait_status(&board, &w.service, |s| {
            s.state == WorkloadState::Running && s.pid.is_some() && s.pid != before.pid
        })
        .await;
        assert_eq!(restarted.restarts, 1);
        next.stop_all().await;
        wait_gone(pid_of(&restarted)).await;
    }

    #[tokio::test]
    async fn a_process_without_a_record_is_killed_not_adopted() {
        let f = fixture();
        let sleep = f.artifact("/bin/sleep");
        let w = workload("unknown", &["30"]);
        f.runtime.start(&w, &sleep).expect("start");
        let pid = pid_of(&f.wait_for(&w.service, |s| s.pid.is_some()).await);
        f.runtime.detach_all().await;
        std::fs::remove_file(f.dir.path().join("workloads/unknown/workload.json"))
            .expect("remove record");

        let next = runtime_in(f.dir.path(), Arc::new(Board::default()));
        let adopted = next.adopt(Duration::from_secs(2)).await;
        assert!(adopted.adopted.is_empty());
        assert_eq!(adopted.killed, [pid]);
        wait_gone(pid).await;
        assert!(next.observe().is_empty());
    }

    #[tokio::test]
    async fn adoption_ends_what_is_left_in_the_groups_of_workloads_it_does_not_adopt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("cg/verge");
        std::fs::create_dir_all(&base).expect("mkdir");
        std::fs::write(base.join("cgroup.controllers"), "cpu memory").expect("write");
        let cgroups = crate::cgroup::Cgroups::setup(
            dir.path(),
            "9 1 0:9 / /cg rw - cgroup2 cgroup2 rw",
            "0::/verge",
            7,
        )
        .expect("fake cgroup v2");
        // A workload directory without a pid file (an agent killed between
        // fork and the pid write) and its group.
        std::fs::create_dir_all(dir.path().join("workloads/lost")).expect("mkdir");
        let lost = ServiceName::new("lost").expect("valid");
        let group = cgroups.prepare(&lost, &Default::default()).expect("group");
        let runtime = ProcessRuntime::new(
            dir.path().join("workloads"),
            Placement {
                agent: AgentId::new("edge-1").expect("valid"),
                region: RegionId::new("local").expect("valid"),
            },
            RestartTiming::default(),
            Launcher::Helper {
                exe: PathBuf::from("/nonexistent/edge-agent"),
                user: None,
                cgroups: Some(cgroups),
            },
            Arc::new(Board::default()),
        );
        let adopted = runtime.adopt(Duration::from_secs(1)).await;
        assert!(adopted.adopted.is_empty() && adopted.killed.is_empty());
        assert_eq!(
            std::fs::read_to_string(group.join("cgroup.kill")).expect("killed"),
            "1"
        );
    }

    #[test]
    fn port_variable_names() {
        assert_eq!(port_env_name("http-alt"), "VERGE_PORT_HTTP_ALT");
    }
}
