//! The supervision loop against in-memory processes, with paused Tokio time:
//! the layer between the pure restart decision (`Restarts::after_exit`,
//! tested in `supervise.rs`) and the runtime tests that start real
//! processes.
//!
//! Each test runs [`supervise`] with [`FakeProcesses`], ends processes the
//! way a crash would, and checks what was spawned, when, what the status
//! board says and how the loop ends on stop and detach.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_agent::confine::Launcher;
use edge_agent::fake::{self, FakeProcesses};
use edge_agent::report::Board;
use edge_agent::supervise::port_env_name;
use edge_agent::supervise::{
    Controls, Exit, Launch, NewPorts, PID_FILE, ProcessId, RestartTiming, supervise,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use verge_shared::ServiceName;
use verge_shared::messages::{RestartPolicy, WorkloadState, WorkloadStatus};

/// Longer than any wait a test expects, in paused (virtual) time.
const DEADLINE: Duration = Duration::from_secs(3600);
const GRACE: Duration = Duration::from_secs(7);

fn timing() -> RestartTiming {
    RestartTiming {
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(4),
        reset_after: Duration::from_secs(60),
        quick_exit: Duration::from_secs(10),
        crash_loop_after: 4,
        crash_loop_delay: Duration::from_secs(300),
    }
}

/// One workload under supervision.
struct Run {
    processes: FakeProcesses,
    board: Arc<Board>,
    controls: Controls,
    task: JoinHandle<()>,
    service: ServiceName,
    dir: tempfile::TempDir,
}

impl Run {
    fn start(policy: RestartPolicy, adopted: Option<ProcessId>) -> Run {
        Run::start_with_ports(policy, adopted, BTreeMap::new(), false, None)
    }

    /// With `ports` (`chosen`: by the agent, else fixed by the workload),
    /// and `on_new_ports` told when they are chosen again.
    fn start_with_ports(
        policy: RestartPolicy,
        adopted: Option<ProcessId>,
        ports: BTreeMap<String, u16>,
        chosen: bool,
        on_new_ports: Option<NewPorts>,
    ) -> Run {
        let processes = FakeProcesses::default();
        let board = Arc::new(Board::new(None));
        let controls = Controls::default();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut workload = fake::workload("web", b"web-1");
        workload.run.restart = policy;
        let service = workload.service.clone();
        let launch = Launch {
            workload,
            executable: dir.path().join("web"),
            dir: dir.path().to_owned(),
            env: ports
                .iter()
                .map(|(name, port)| (port_env_name(name), port.to_string()))
                .collect(),
            chosen_ports: if chosen {
                ports.keys().cloned().collect()
            } else {
                Default::default()
            },
            ports,
            on_new_ports,
            launcher: Launcher::Direct,
            grace: GRACE,
        };
        let task = tokio::spawn(supervise(
            processes.clone(),
            launch,
            adopted,
            timing(),
            board.clone(),
            controls.clone(),
        ));
        Run {
            processes,
            board,
            controls,
            task,
            service,
            dir,
        }
    }

    /// Waits for the `n`th spawn; returns its pid and when it happened.
    async fn nth_spawn(&self, n: usize) -> (i32, Instant) {
        let pid = tokio::time::timeout(DEADLINE, self.processes.nth_spawn(n))
            .await
            .unwrap_or_else(|_| panic!("spawn {n} never came"));
        (pid, Instant::now())
    }

    /// Waits until the board shows `state`; returns the status.
    async fn status(&self, state: WorkloadState) -> WorkloadStatus {
        let wait = async {
            loop {
                if let Some(status) = self.board.running(&self.service)
                    && status.state == state
                {
                    return status;
                }
                self.board.changed().await;
            }
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .unwrap_or_else(|_| panic!("the board never showed {state:?}"))
    }

    /// Waits for the loop to end.
    async fn ended(self) -> (FakeProcesses, Arc<Board>, ServiceName, tempfile::TempDir) {
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the loop ends")
            .expect("no panic");
        (self.processes, self.board, self.service, self.dir)
    }
}

/// Ends the process `pid` after it ran for `ran` (virtual time).
async fn crash_after(run: &Run, pid: i32, ran: Duration, exit: Exit) {
    tokio::time::sleep(ran).await;
    assert!(run.processes.exit(pid, exit), "{pid} was not running");
}

#[tokio::test(start_paused = true)]
async fn quick_exits_back_off_doubling_up_to_the_cap_then_become_a_crash_loop() {
    let run = Run::start(RestartPolicy::Always, None);
    let mut starts = Vec::new();
    for n in 1..=5 {
        let (pid, at) = run.nth_spawn(n).await;
        starts.push(at);
        if n < 5 {
            crash_after(&run, pid, Duration::from_secs(2), Exit::Code(1)).await;
        }
    }
    // Each gap is the 2 s the process ran plus the delay before the restart:
    // 1 s, 2 s, 4 s (the cap), then the crash-loop delay after 4 quick exits.
    let gaps: Vec<u64> = starts.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(gaps, [3, 4, 6, 302]);
    let running = run.status(WorkloadState::Running).await;
    assert_eq!(running.restarts, 4);
    assert_eq!(running.pid, Some(4_000_004));
    assert_eq!(
        running.last_exit.as_ref().and_then(|e| e.code),
        Some(1),
        "the last exit stays on the status"
    );
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_is_reported_with_its_reason() {
    let run = Run::start(RestartPolicy::Always, None);
    for n in 1..=4 {
        let (pid, _) = run.nth_spawn(n).await;
        crash_after(&run, pid, Duration::from_millis(100), Exit::Code(3)).await;
    }
    let status = run.status(WorkloadState::CrashLoop).await;
    let message = status.message.expect("a message");
    assert!(
        message.starts_with("crash loop: 4 quick exits in a row, next attempt in 300 s"),
        "{message}"
    );
    assert!(message.contains("exited with code 3"), "{message}");
    assert_eq!(status.pid, None, "nothing runs while it waits");
}

#[tokio::test(start_paused = true)]
async fn a_long_run_resets_the_backoff() {
    let run = Run::start(RestartPolicy::Always, None);
    let (pid, _) = run.nth_spawn(1).await;
    crash_after(&run, pid, Duration::from_secs(1), Exit::Code(1)).await;
    let (pid, _) = run.nth_spawn(2).await;
    crash_after(&run, pid, Duration::from_secs(1), Exit::Code(1)).await;
    let (pid, _) = run.nth_spawn(3).await;
    // Ran for longer than `reset_after`: the next delay is the first again.
    crash_after(&run, pid, Duration::from_secs(61), Exit::Signal(9)).await;
    let ended = Instant::now();
    let (_, restarted) = run.nth_spawn(4).await;
    assert_eq!((restarted - ended).as_secs(), 1);
    let status = run.status(WorkloadState::Running).await;
    assert_eq!(status.last_exit.and_then(|e| e.signal), Some(9));
}

#[tokio::test(start_paused = true)]
async fn the_restart_policy_keeps_a_finished_workload_down() {
    for (policy, exit, state) in [
        (
            RestartPolicy::OnFailure,
            Exit::Code(0),
            WorkloadState::Exited,
        ),
        (RestartPolicy::Never, Exit::Code(2), WorkloadState::Failed),
    ] {
        let run = Run::start(policy, None);
        let (pid, _) = run.nth_spawn(1).await;
        crash_after(&run, pid, Duration::from_secs(30), exit).await;
        let status = run.status(state).await;
        assert!(
            status
                .message
                .as_deref()
                .is_some_and(|m| m.ends_with(&format!("restart policy {policy:?} keeps it down"))),
            "{status:?}"
        );
        // An hour later nothing was started again.
        tokio::time::sleep(DEADLINE).await;
        assert_eq!(run.processes.spawned().len(), 1, "{policy:?}");
        run.controls.stop.cancel();
        let (processes, board, service, _dir) = run.ended().await;
        assert!(processes.terminated().is_empty(), "nothing ran to stop");
        assert!(board.running(&service).is_none());
    }
}

#[tokio::test(start_paused = true)]
async fn on_failure_restarts_a_failed_workload() {
    let run = Run::start(RestartPolicy::OnFailure, None);
    let (pid, _) = run.nth_spawn(1).await;
    crash_after(&run, pid, Duration::from_secs(30), Exit::Code(1)).await;
    run.nth_spawn(2).await;
    assert_eq!(run.status(WorkloadState::Running).await.restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_spawn_that_fails_is_reported_and_retried_with_backoff() {
    let run = Run::start(RestartPolicy::Always, None);
    run.processes.fail_spawns(2);
    let failed = run.status(WorkloadState::Failed).await;
    assert!(
        failed
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("an injected spawn failure")),
        "{failed:?}"
    );
    let began = Instant::now();
    run.nth_spawn(1).await;
    // Two refusals: 1 s, then 2 s.
    assert_eq!(began.elapsed().as_secs(), 3);
    assert_eq!(run.status(WorkloadState::Running).await.restarts, 2);
}

#[tokio::test(start_paused = true)]
async fn stop_terminates_with_the_grace_period_and_cleans_up() {
    let run = Run::start(RestartPolicy::Always, None);
    let (pid, _) = run.nth_spawn(1).await;
    run.status(WorkloadState::Running).await;
    assert!(
        run.dir.path().join(PID_FILE).exists(),
        "the pid file is written"
    );
    run.controls.stop.cancel();
    let (processes, board, service, dir) = run.ended().await;
    assert_eq!(processes.terminated(), [(pid, GRACE)]);
    assert!(board.running(&service).is_none(), "the status is gone");
    assert!(!dir.path().join(PID_FILE).exists(), "the pid file is gone");
    assert_eq!(processes.spawned().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn stop_during_the_backoff_starts_nothing_more() {
    let run = Run::start(RestartPolicy::Always, None);
    let (pid, _) = run.nth_spawn(1).await;
    crash_after(&run, pid, Duration::from_secs(1), Exit::Code(1)).await;
    run.status(WorkloadState::Backoff).await;
    run.controls.stop.cancel();
    let (processes, board, service, _dir) = run.ended().await;
    assert_eq!(processes.spawned(), [pid]);
    assert!(processes.terminated().is_empty(), "nothing ran to stop");
    assert!(board.running(&service).is_none());
}

#[tokio::test(start_paused = true)]
async fn detach_leaves_the_process_and_its_status_for_the_next_agent_run() {
    let run = Run::start(RestartPolicy::Always, None);
    let (pid, _) = run.nth_spawn(1).await;
    run.status(WorkloadState::Running).await;
    run.controls.detach.cancel();
    let (processes, board, service, dir) = run.ended().await;
    assert!(processes.terminated().is_empty());
    assert_eq!(
        board.running(&service).and_then(|s| s.pid),
        u32::try_from(pid).ok()
    );
    assert!(dir.path().join(PID_FILE).exists(), "the next run finds it");
}

#[tokio::test(start_paused = true)]
async fn an_adopted_process_is_watched_then_replaced_when_it_ends() {
    let adopted = ProcessId {
        pid: 77,
        start_ticks: 5,
    };
    let run = Run::start(RestartPolicy::Always, Some(adopted));
    let status = run.status(WorkloadState::Running).await;
    assert_eq!(status.pid, Some(77));
    assert_eq!(run.processes.adopted(), [77]);
    assert!(run.processes.spawned().is_empty(), "adopted, not started");
    crash_after(&run, 77, Duration::from_secs(120), Exit::Unknown).await;
    let (pid, _) = run.nth_spawn(1).await;
    let status = run.status(WorkloadState::Running).await;
    assert_eq!(status.pid, u32::try_from(pid).ok());
    assert_eq!(status.restarts, 1);
    assert_eq!(
        status.last_exit, None,
        "an adopted process's exit is unknown"
    );
}

#[tokio::test(start_paused = true)]
async fn a_chosen_port_another_process_took_is_chosen_again_before_the_restart() {
    let recorded: Arc<Mutex<Vec<BTreeMap<String, u16>>>> = Arc::default();
    let record: NewPorts = {
        let recorded = Arc::clone(&recorded);
        Arc::new(move |ports: &BTreeMap<String, u16>| {
            recorded.lock().expect("not poisoned").push(ports.clone());
        })
    };
    let ports = BTreeMap::from([("http".to_owned(), 31_000), ("admin".to_owned(), 31_001)]);
    let run = Run::start_with_ports(RestartPolicy::Always, None, ports, true, Some(record));
    let (first, _) = run.nth_spawn(1).await;
    assert_eq!(
        run.status(WorkloadState::Running).await.ports["http"],
        31_000
    );

    // An ordinary crash: the ports are free, the restart keeps them.
    crash_after(&run, first, Duration::from_secs(30), Exit::Code(1)).await;
    let (second, _) = run.nth_spawn(2).await;
    let status = run.status(WorkloadState::Running).await;
    assert_eq!(status.ports["http"], 31_000);
    assert_eq!(status.ports["admin"], 31_001);

    // Another process takes http while the workload is down (its bind
    // fails, it exits at once): the restart gets a new http port, admin
    // stays, and the new one is reported and recorded.
    run.processes.hold_port(31_000);
    crash_after(&run, second, Duration::from_millis(50), Exit::Code(98)).await;
    let (third, _) = run.nth_spawn(3).await;
    let status = run.status(WorkloadState::Running).await;
    assert_eq!(
        run.processes.ports_handed_out(),
        [40_000],
        "one port chosen again"
    );
    assert_eq!(status.ports["http"], 40_000);
    assert_eq!(status.ports["admin"], 31_001);
    assert_eq!(
        *recorded.lock().expect("not poisoned"),
        [BTreeMap::from([
            ("http".to_owned(), 40_000),
            ("admin".to_owned(), 31_001)
        ])]
    );

    // The new port stays across the next ordinary restart.
    crash_after(&run, third, Duration::from_secs(30), Exit::Code(1)).await;
    run.nth_spawn(4).await;
    assert_eq!(
        run.status(WorkloadState::Running).await.ports["http"],
        40_000
    );
    assert_eq!(run.processes.ports_handed_out(), [40_000]);
    assert_eq!(recorded.lock().expect("not poisoned").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_port_the_workload_fixed_is_never_changed() {
    let ports = BTreeMap::from([("http".to_owned(), 8080)]);
    let run = Run::start_with_ports(RestartPolicy::Always, None, ports, false, None);
    run.processes.hold_port(8080);
    let (first, _) = run.nth_spawn(1).await;
    crash_after(&run, first, Duration::from_millis(50), Exit::Code(98)).await;
    run.nth_spawn(2).await;
    assert_eq!(run.status(WorkloadState::Running).await.ports["http"], 8080);
    assert!(run.processes.ports_handed_out().is_empty());
}
