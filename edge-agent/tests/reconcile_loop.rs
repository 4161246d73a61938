//! The reconcile loop against the in-memory runtime, with paused Tokio time:
//! the layer between the pure plan (tested in `reconcile.rs`) and the
//! system tests that start real agents.
//!
//! Each test drives [`Reconciler::run`] through the accepted-state channel
//! and checks what the runtime was asked to do, in what order, and when.
//! The fake runtime refuses double starts and overcommits, and every test
//! ends with `assert_safe`.

use std::sync::Arc;
use std::time::Duration;

use edge_agent::artifacts::ArtifactCache;
use edge_agent::fake::{self, Call, FakeRuntime};
use edge_agent::intake::ResolvedState;
use edge_agent::reconcile::Reconciler;
use edge_agent::report::Board;
use edge_agent::runtime::Runtime as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use verge_shared::messages::{Resources, Workload};
use verge_shared::{Generation, ServiceName, Sha256Digest, Timestamp};

/// The loop's periodic resync and first retry delay (reconcile.rs).
const RESYNC: Duration = Duration::from_secs(30);
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longer than any wait a test expects, in paused (virtual) time.
const DEADLINE: Duration = Duration::from_secs(600);

fn service(name: &str) -> ServiceName {
    ServiceName::new(name).expect("valid service name")
}

/// A workload of `name` whose artifact is the bytes `content`.
fn workload(name: &str, content: &str, memory_mb: u32) -> Workload {
    Workload {
        resources: Resources {
            memory_mb,
            ..Default::default()
        },
        ..fake::workload(name, content.as_bytes())
    }
}

fn state(generation: u64, workloads: &[Workload]) -> Option<Arc<ResolvedState>> {
    let mut workloads = workloads.to_vec();
    workloads.sort_by(|a, b| a.service.cmp(&b.service));
    Some(Arc::new(ResolvedState {
        generation: Generation::new(generation),
        expires_at: Timestamp::from_unix_millis(2),
        workloads,
    }))
}

/// A reconcile loop over a fake runtime and a real artifact cache holding
/// `cached` (no controller: anything else fails to download).
struct Harness {
    runtime: Arc<FakeRuntime>,
    board: Arc<Board>,
    accepted_state_tx: watch::Sender<Option<Arc<ResolvedState>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start(runtime: FakeRuntime, cached: &[&str], first: Option<Arc<ResolvedState>>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("artifacts");
        std::fs::create_dir_all(root.join("sha256")).expect("mkdir");
        for content in cached {
            let path = root
                .join("sha256")
                .join(Sha256Digest::of(content.as_bytes()).to_string());
            std::fs::write(path, content).expect("write artifact");
        }
        // Port 1 on localhost: nothing listens, a download fails at once.
        let artifacts = ArtifactCache::open(&root, "http://127.0.0.1:1", u64::MAX).expect("cache");
        let runtime = Arc::new(runtime);
        let board = Arc::new(Board::new(None));
        let (accepted_state_tx, accepted_state_rx) = watch::channel(first);
        let stop = CancellationToken::new();
        let reconciler = Reconciler {
            runtime: runtime.clone(),
            artifacts: Arc::new(artifacts),
            board: board.clone(),
        };
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { reconciler.run(accepted_state_rx, stop).await }
        });
        Harness {
            runtime,
            board,
            accepted_state_tx,
            stop,
            task,
            _dir: dir,
        }
    }

    /// Waits (in virtual time) until `generation` is applied.
    async fn applied(&self, generation: u64) {
        wait_until(|| self.board.applied() == Some(Generation::new(generation))).await;
    }

    async fn finish(self) {
        self.stop.cancel();
        self.task.await.expect("the loop ends on stop");
        self.runtime.assert_safe();
    }
}

/// Polls `condition` every 10 ms of virtual time until [`DEADLINE`].
async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts that `elapsed` is `expected`, give or take the 10 ms steps of
/// [`wait_until`].
#[track_caller]
fn assert_about(elapsed: Duration, expected: Duration) {
    let slack = Duration::from_millis(20);
    assert!(
        elapsed + slack >= expected && elapsed <= expected + slack,
        "{elapsed:?} instead of {expected:?}"
    );
}

/// Lets every task run until all wait for time, without moving the clock.
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn start_up_starts_each_workload_once_and_resyncs_change_nothing() {
    let (a, b) = (workload("a", "a-1", 10), workload("b", "b-1", 10));
    let h = Harness::start(FakeRuntime::default(), &["a-1", "b-1"], state(1, &[a, b]));
    h.applied(1).await;
    assert_eq!(
        h.runtime.calls(),
        [Call::Start(service("a")), Call::Start(service("b"))]
    );
    // Three periodic resyncs later nothing more was asked of the runtime.
    tokio::time::sleep(RESYNC * 3 + Duration::from_secs(1)).await;
    assert_eq!(h.runtime.calls().len(), 2, "{:?}", h.runtime.calls());
    h.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_state_stops_then_replaces_then_starts() {
    let old = [
        workload("a", "a-1", 10),
        workload("gone", "g-1", 10),
        workload("same", "s-1", 10),
    ];
    let h = Harness::start(
        FakeRuntime::default(),
        &["a-1", "a-2", "g-1", "s-1", "new-1"],
        state(1, &old),
    );
    h.applied(1).await;
    h.runtime.clear_calls();
    let new = [
        workload("a", "a-2", 10),
        workload("new", "new-1", 10),
        workload("same", "s-1", 10),
    ];
    h.accepted_state_tx.send_replace(state(2, &new));
    h.applied(2).await;
    assert_eq!(
        h.runtime.calls(),
        [
            Call::Stop(service("gone")),
            Call::Stop(service("a")),
            Call::Start(service("a")),
            Call::Start(service("new")),
        ]
    );
    let running = h.runtime.observe();
    assert_eq!(running.len(), 3);
    assert_eq!(running[&service("a")].artifact, new[0].artifact);
    h.finish().await;
}

#[tokio::test(start_paused = true)]
async fn freeing_comes_before_claiming_so_a_full_node_can_switch_workloads() {
    // 100 MB: the old and the new workload never fit together.
    let h = Harness::start(
        FakeRuntime::with_memory_mb(100),
        &["old-1", "new-1"],
        state(1, &[workload("old", "old-1", 80)]),
    );
    h.applied(1).await;
    h.accepted_state_tx
        .send_replace(state(2, &[workload("new", "new-1", 80)]));
    // Started before the old one stopped, the new one would be refused.
    wait_until(|| {
        h.board.applied() == Some(Generation::new(2)) || !h.runtime.violations().is_empty()
    })
    .await;
    h.runtime.assert_safe();
    assert_eq!(
        h.runtime.observe().keys().collect::<Vec<_>>(),
        [&service("new")]
    );
    h.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_pass_is_retried_with_growing_delays() {
    let runtime = FakeRuntime::default();
    let a = workload("a", "a-1", 10);
    runtime.fail_starts(&a.service, 2);
    let began = Instant::now();
    let h = Harness::start(runtime, &["a-1"], state(1, std::slice::from_ref(&a)));
    wait_until(|| h.runtime.n_starts(&a.service) == 1).await;
    settle().await;
    assert_eq!(h.board.applied(), None, "a failed pass applies nothing");
    // The first retry comes after 1 s, the second 2 s after that.
    wait_until(|| h.runtime.n_starts(&a.service) == 2).await;
    assert_about(Instant::now() - began, FIRST_RETRY);
    wait_until(|| h.runtime.n_starts(&a.service) == 3).await;
    assert_about(Instant::now() - began, FIRST_RETRY * 3);
    h.applied(1).await;
    // Applied: no more retries, only resyncs, which find nothing to do.
    tokio::time::sleep(RESYNC * 2).await;
    assert_eq!(h.runtime.n_starts(&a.service), 3);
    h.finish().await;
}

#[tokio::test(start_paused = true)]
async fn the_periodic_resync_restarts_what_disappeared_and_nothing_else() {
    let (a, b) = (workload("a", "a-1", 10), workload("b", "b-1", 10));
    let h = Harness::start(FakeRuntime::default(), &["a-1", "b-1"], state(1, &[a, b]));
    h.applied(1).await;
    let applied_at = Instant::now();
    h.runtime.clear_calls();
    h.runtime.crash(&service("a"));
    // Nothing reacts before the resync...
    tokio::time::sleep(RESYNC - Duration::from_secs(1)).await;
    assert_eq!(h.runtime.calls(), []);
    // ...which starts `a` again, and only `a`.
    wait_until(|| !h.runtime.calls().is_empty()).await;
    assert_about(Instant::now() - applied_at, RESYNC);
    settle().await;
    assert_eq!(h.runtime.calls(), [Call::Start(service("a"))]);
    h.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_missing_artifact_leaves_the_running_workloads_alone() {
    let h = Harness::start(
        FakeRuntime::default(),
        &["a-1"],
        state(1, &[workload("a", "a-1", 10)]),
    );
    h.applied(1).await;
    h.runtime.clear_calls();
    // a-2 is not cached and the controller is unreachable.
    h.accepted_state_tx
        .send_replace(state(2, &[workload("a", "a-2", 10)]));
    tokio::time::sleep(RESYNC).await;
    assert_eq!(h.runtime.calls(), [], "nothing stopped for a failed fetch");
    assert_eq!(h.board.applied(), Some(Generation::new(1)));
    assert_eq!(
        h.runtime.observe()[&service("a")].artifact.sha256,
        Sha256Digest::of(b"a-1")
    );
    h.finish().await;
}
