//! In-memory stand-ins for the agent's seams, [`Runtime`], [`StateStore`]
//! and supervision's [`Spawner`], for tests between the pure units and the full-process
//! system tests (and for a fleet simulation that runs many agents' logic in
//! one process).
//!
//! The fakes check safety themselves, the way the real parts would fail
//! loudly: [`FakeRuntime`] refuses to start a service that already runs or
//! to overcommit its memory, and counts every such attempt as a violation,
//! so a test that forgets to look still fails in [`FakeRuntime::assert_safe`].
//! Faults are injected explicitly (a start that fails, a save that finds the
//! disk full, a process that exits); nothing here sleeps or reads the clock.
//!
//! Public rather than `#[cfg(test)]` so that the tests crate can reuse it;
//! the agent binary never names it, so none of it is linked in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use verge_shared::ServiceName;
use verge_shared::messages::Workload;

use nix::sys::signal::Signal;
use tokio::sync::watch;
use verge_shared::messages::{Isolation, LimitMechanism};

use crate::runtime::{Runtime, RuntimeError};
use crate::state::{Accepted, StateError, StateStore};
use crate::supervise::{Exit, Launch, Process, ProcessId, Spawner};
use verge_shared::messages::ArtifactRef;
use verge_shared::trust::{Publisher, RootRole, TrustBundle};
use verge_shared::{PublicKey, Sha256Digest, Timestamp};

/// One call the runtime saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// A start of this service (whether or not it was refused).
    Start(ServiceName),
    /// A stop of this service (whether or not it ran).
    Stop(ServiceName),
}

#[derive(Debug, Default)]
struct RuntimeState {
    running: BTreeMap<ServiceName, Workload>,
    calls: Vec<Call>,
    /// Starts to refuse, per service, before one succeeds again.
    failing_starts: BTreeMap<ServiceName, u32>,
    violations: Vec<String>,
}

/// A [`Runtime`] that runs nothing: it records what would run, in memory.
///
/// Contract checks: a start of a service that already runs is refused with
/// [`RuntimeError::AlreadyRunning`], and a start that would take the sum of
/// the running workloads' `memory_mb` over the capacity is refused; both
/// are recorded as violations.
#[derive(Debug)]
pub struct FakeRuntime {
    memory_mb: u64,
    state: Mutex<RuntimeState>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::with_memory_mb(u64::MAX)
    }
}

impl FakeRuntime {
    /// A runtime whose workloads may claim `memory_mb` in total.
    pub fn with_memory_mb(memory_mb: u64) -> Self {
        Self {
            memory_mb,
            state: Mutex::new(RuntimeState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RuntimeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the next `n` starts of `service` fail (as a start that cannot
    /// prepare its directory would).
    pub fn fail_starts(&self, service: &ServiceName, n: u32) {
        self.lock().failing_starts.insert(service.clone(), n);
    }

    /// Every start and stop so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Forgets the calls so far (what runs is kept).
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// How many starts of `service` were asked for, refused ones included.
    pub fn n_starts(&self, service: &ServiceName) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| **c == Call::Start(service.clone()))
            .count()
    }

    /// Marks `service` as exited, as a crash would: it no longer runs.
    pub fn crash(&self, service: &ServiceName) {
        self.lock().running.remove(service);
    }

    /// Every contract violation seen: double starts, overcommits.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Panics with the violations, if there were any.
    #[track_caller]
    pub fn assert_safe(&self) {
        let violations = self.violations();
        assert!(violations.is_empty(), "runtime violations: {violations:?}");
    }
}

impl Runtime for FakeRuntime {
    fn start(&self, workload: &Workload, executable: &Path) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        let service = workload.service.clone();
        state.calls.push(Call::Start(service.clone()));
        if state.running.contains_key(&service) {
            state
                .violations
                .push(format!("{service} was started while it ran"));
            return Err(RuntimeError::AlreadyRunning(service));
        }
        let refuse = |why: String| RuntimeError::Prepare {
            service: service.clone(),
            path: executable.to_owned(),
            source: std::io::Error::other(why),
        };
        if let Some(n) = state.failing_starts.get_mut(&service)
            && *n > 0
        {
            *n -= 1;
            return Err(refuse("an injected start failure".to_owned()));
        }
        let claimed: u64 = state
            .running
            .values()
            .map(|w| u64::from(w.resources.memory_mb))
            .sum();
        let wanted = u64::from(workload.resources.memory_mb);
        if claimed.saturating_add(wanted) > self.memory_mb {
            let why = format!(
                "{service} needs {wanted} MB, {claimed} MB of {} MB are claimed",
                self.memory_mb
            );
            state.violations.push(format!("overcommit: {why}"));
            return Err(refuse(why));
        }
        state.running.insert(service, workload.clone());
        Ok(())
    }

    fn stop(&self, service: &ServiceName) -> impl Future<Output = ()> + Send {
        let mut state = self.lock();
        state.calls.push(Call::Stop(service.clone()));
        state.running.remove(service);
        std::future::ready(())
    }

    fn observe(&self) -> BTreeMap<ServiceName, Workload> {
        self.lock().running.clone()
    }
}

#[derive(Debug, Default)]
struct StoreState {
    saved: Option<Accepted>,
    n_attempts: usize,
    /// Saves to fail before one succeeds again, and with what.
    failing_saves: u32,
    fault: Option<std::io::ErrorKind>,
}

/// A [`StateStore`] in memory; saves can be made to fail.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<StoreState>,
}

impl MemoryStore {
    /// A store that already holds `accepted`, as after an earlier run.
    pub fn holding(accepted: Accepted) -> Self {
        let store = Self::default();
        store.lock().saved = Some(accepted);
        store
    }

    fn lock(&self) -> MutexGuard<'_, StoreState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the next `n` saves fail with "no space left on device"
    /// ([`StateError::is_disk_full`] holds for them).
    pub fn fill_disk_for(&self, n: u32) {
        let mut state = self.lock();
        state.failing_saves = n;
        state.fault = Some(std::io::ErrorKind::StorageFull);
    }

    /// Makes the next `n` saves fail with an I/O error that is not a full
    /// disk.
    pub fn break_saves_for(&self, n: u32) {
        let mut state = self.lock();
        state.failing_saves = n;
        state.fault = Some(std::io::ErrorKind::Other);
    }

    /// How many saves were tried, failed ones included.
    pub fn n_attempts(&self) -> usize {
        self.lock().n_attempts
    }
}

impl StateStore for MemoryStore {
    fn load(&self) -> Result<Option<Accepted>, StateError> {
        Ok(self.lock().saved.clone())
    }

    fn save(&self, accepted: &Accepted) -> Result<(), StateError> {
        let mut state = self.lock();
        state.n_attempts += 1;
        if state.failing_saves > 0
            && let Some(kind) = state.fault
        {
            state.failing_saves -= 1;
            let source = match kind {
                std::io::ErrorKind::StorageFull => {
                    std::io::Error::from_raw_os_error(nix::libc::ENOSPC)
                }
                kind => std::io::Error::new(kind, "an injected save failure"),
            };
            return Err(StateError::Store {
                path: PathBuf::from("memory"),
                source: sled::Error::Io(source),
            });
        }
        state.saved = Some(accepted.clone());
        Ok(())
    }
}

#[derive(Debug, Default)]
struct ProcessBook {
    /// Pids in the order their processes were spawned.
    spawned: Vec<i32>,
    /// Pids taken over with [`Spawner::adopt`].
    adopted: Vec<i32>,
    /// Every terminate call: the pid and the grace it was given.
    terminated: Vec<(i32, Duration)>,
    /// How each live process will end, once told.
    ends: BTreeMap<i32, watch::Sender<Option<Exit>>>,
    /// Spawns to refuse before one succeeds again.
    failing_spawns: u32,
    /// TCP ports another process holds.
    held_ports: BTreeSet<u16>,
    /// Ports handed out by [`Spawner::free_port`], in order.
    handed_out: Vec<u16>,
}

/// A [`Spawner`] whose processes exist only in memory. A process runs until
/// the test ends it with [`FakeProcesses::exit`] or supervision terminates
/// it (it then ends by SIGTERM at once); every spawn, adoption and
/// terminate is recorded.
#[derive(Clone, Debug, Default)]
pub struct FakeProcesses {
    book: Arc<Mutex<ProcessBook>>,
    /// Bumped on every spawn, so that a test can wait for one.
    n_spawned: Arc<watch::Sender<usize>>,
}

/// First pid handed out (far from any real one a test could signal).
const FIRST_FAKE_PID: i32 = 4_000_000;

/// First port [`FakeProcesses`] hands out as free.
const FIRST_FAKE_PORT: u16 = 40_000;

impl FakeProcesses {
    fn book(&self) -> MutexGuard<'_, ProcessBook> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Says that another process holds TCP `port` from now on.
    pub fn hold_port(&self, port: u16) {
        self.book().held_ports.insert(port);
    }

    /// The ports [`Spawner::free_port`] handed out, in order.
    pub fn ports_handed_out(&self) -> Vec<u16> {
        self.book().handed_out.clone()
    }

    /// Refuses the next `n` spawns ("could not start").
    pub fn fail_spawns(&self, n: u32) {
        self.book().failing_spawns = n;
    }

    /// Pids of the spawned processes, in order.
    pub fn spawned(&self) -> Vec<i32> {
        self.book().spawned.clone()
    }

    /// Pids of the adopted processes, in order.
    pub fn adopted(&self) -> Vec<i32> {
        self.book().adopted.clone()
    }

    /// Every terminate call, as (pid, grace), in order.
    pub fn terminated(&self) -> Vec<(i32, Duration)> {
        self.book().terminated.clone()
    }

    /// Ends the live process `pid` with `exit`; false when none runs.
    pub fn exit(&self, pid: i32, exit: Exit) -> bool {
        match self.book().ends.remove(&pid) {
            Some(end) => end.send(Some(exit)).is_ok(),
            None => false,
        }
    }

    /// Waits until at least `n` processes were spawned; returns the pid of
    /// the `n`th.
    ///
    /// # Panics
    ///
    /// If every handle to this fake is gone, which a test holding it
    /// cannot see.
    pub async fn nth_spawn(&self, n: usize) -> i32 {
        let mut rx = self.n_spawned.subscribe();
        rx.wait_for(|&count| count >= n)
            .await
            .expect("the sender lives in self");
        self.book().spawned[n - 1]
    }

    fn process(&self, pid: i32) -> FakeProcess {
        let (end, ended) = watch::channel(None);
        self.book().ends.insert(pid, end);
        FakeProcess {
            id: ProcessId {
                pid,
                start_ticks: 0,
            },
            ended,
            book: Arc::clone(&self.book),
        }
    }
}

impl Spawner for FakeProcesses {
    type Process = FakeProcess;

    fn spawn(&self, _launch: &Launch) -> Result<(FakeProcess, Isolation), String> {
        let pid = {
            let mut book = self.book();
            if book.failing_spawns > 0 {
                book.failing_spawns -= 1;
                return Err("an injected spawn failure".into());
            }
            let pid = FIRST_FAKE_PID + i32::try_from(book.spawned.len()).unwrap_or(i32::MAX);
            book.spawned.push(pid);
            pid
        };
        let process = self.process(pid);
        self.n_spawned.send_modify(|n| *n += 1);
        let isolation = Isolation {
            limits: LimitMechanism::None,
            user: "fake".into(),
        };
        Ok((process, isolation))
    }

    fn adopt(&self, id: ProcessId) -> FakeProcess {
        self.book().adopted.push(id.pid);
        self.process(id.pid)
    }

    fn port_in_use(&self, port: u16) -> bool {
        self.book().held_ports.contains(&port)
    }

    /// Hands out ports from 40000 up, skipping held ones.
    fn free_port(&self) -> Option<u16> {
        let mut book = self.book();
        let next = (FIRST_FAKE_PORT..=u16::MAX)
            .find(|p| !book.held_ports.contains(p) && !book.handed_out.contains(p))?;
        book.handed_out.push(next);
        Some(next)
    }
}

/// A process of [`FakeProcesses`].
#[derive(Debug)]
pub struct FakeProcess {
    id: ProcessId,
    ended: watch::Receiver<Option<Exit>>,
    book: Arc<Mutex<ProcessBook>>,
}

impl Process for FakeProcess {
    fn id(&self) -> ProcessId {
        self.id
    }

    async fn wait(&mut self) -> Exit {
        match self.ended.wait_for(Option::is_some).await {
            Ok(exit) => exit.unwrap_or(Exit::Unknown),
            // Its end was dropped without a word: say nothing of how.
            Err(_) => Exit::Unknown,
        }
    }

    async fn terminate(&mut self, grace: Duration) {
        let end = {
            let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
            book.terminated.push((self.id.pid, grace));
            book.ends.remove(&self.id.pid)
        };
        if let Some(end) = end {
            let _ = end.send(Some(Exit::Signal(Signal::SIGTERM as i32)));
        }
    }
}

/// A version-1 trust bundle with one root key (threshold 1), valid from
/// `issued_at` to `expires_at`: the bundle the agent's tests share.
pub fn trust_bundle(
    root: PublicKey,
    controller: PublicKey,
    publishers: Vec<Publisher>,
    (issued_at, expires_at): (Timestamp, Timestamp),
) -> TrustBundle {
    TrustBundle {
        schema_version: 1,
        version: 1,
        issued_at,
        expires_at,
        root: RootRole {
            keys: vec![root],
            threshold: 1,
        },
        controllers: vec![controller],
        publishers,
        reset_generations: false,
    }
}

/// A workload of `service` (replica 0, version 1.0.0, no limits) whose
/// artifact is `content`: the one builder the agent's tests share.
///
/// # Panics
///
/// On a service name that is not a valid id: it is for tests only.
pub fn workload(service: &str, content: &[u8]) -> Workload {
    Workload {
        service: ServiceName::new(service).expect("a valid service name"),
        replica: 0,
        release: Sha256Digest::of(b"release"),
        version: "1.0.0".parse().expect("a valid version"),
        artifact: ArtifactRef {
            sha256: Sha256Digest::of(content),
            size: content.len() as u64,
        },
        run: Default::default(),
        resources: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(service: &str, memory_mb: u32) -> Workload {
        Workload {
            resources: verge_shared::messages::Resources {
                memory_mb,
                ..Default::default()
            },
            ..super::workload(service, service.as_bytes())
        }
    }

    #[tokio::test]
    async fn the_fake_runtime_refuses_double_starts_and_overcommits() {
        let runtime = FakeRuntime::with_memory_mb(100);
        let exe = Path::new("/bin/true");
        let (a, b) = (workload("a", 60), workload("b", 60));
        runtime.start(&a, exe).expect("fits");
        assert!(matches!(
            runtime.start(&a, exe),
            Err(RuntimeError::AlreadyRunning(_))
        ));
        assert!(runtime.start(&b, exe).is_err(), "160 MB of 100");
        assert_eq!(runtime.violations().len(), 2);
        runtime.stop(&a.service).await;
        runtime.start(&b, exe).expect("fits once a is stopped");
        assert_eq!(runtime.observe().keys().collect::<Vec<_>>(), [&b.service]);
    }

    #[tokio::test]
    async fn injected_start_failures_run_out() {
        let runtime = FakeRuntime::default();
        let a = workload("a", 0);
        runtime.fail_starts(&a.service, 1);
        assert!(runtime.start(&a, Path::new("x")).is_err());
        runtime
            .start(&a, Path::new("x"))
            .expect("the second start works");
        runtime.assert_safe();
        assert_eq!(runtime.n_starts(&a.service), 2);
    }

    #[test]
    fn a_full_disk_fails_saves_until_it_is_freed() {
        let store = MemoryStore::default();
        let accepted = Accepted {
            envelope: b"envelope".to_vec(),
            desired: crate::intake::ResolvedState {
                generation: verge_shared::Generation::new(3),
                expires_at: verge_shared::Timestamp::from_unix_millis(1),
                workloads: vec![],
            },
        };
        store.fill_disk_for(1);
        let err = store.save(&accepted).expect_err("disk full");
        assert!(err.is_disk_full(), "{err}");
        assert_eq!(store.load().expect("load"), None);
        store.save(&accepted).expect("saved");
        assert_eq!(store.load().expect("load"), Some(accepted.clone()));
        store.break_saves_for(1);
        let err = store.save(&accepted).expect_err("broken");
        assert!(!err.is_disk_full(), "{err}");
        assert_eq!(store.n_attempts(), 3);
    }
}
