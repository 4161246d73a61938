//! The alarm task with paused Tokio time against the real outbox, board,
//! signing and intake, and in-memory processes: what alarm events a crash
//! loop, a removed workload, a refused desired state, a restart and a
//! dropping outbox put in the outbox, each verified with the node key.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edge_agent::Config;
use edge_agent::alarms::Observations;
use edge_agent::confine::Launcher;
use edge_agent::fake::{self, FakeProcesses, MemoryStore};
use edge_agent::intake::ResolvedState;
use edge_agent::outbox::Outbox;
use edge_agent::report::{Board, EventSink, Identity, Signer, waiting_status};
use edge_agent::state::{SledStore, StateStore};
use edge_agent::supervise::{Controls, Exit, Launch, RestartTiming, supervise};
use edge_agent::tasks::alarms::{ALARM_TICK, AlarmWatch, RaisedStore};
use edge_agent::tasks::intake::Intake;
use edge_agent::trust::TrustStore;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use verge_shared::alarms::AlarmId;
use verge_shared::messages::{
    Delivery, DesiredState, Event, EventKind, SCHEMA_VERSION, Workload, WorkloadState, payload_type,
};
use verge_shared::trust::payload_type as trust_type;
use verge_shared::{AgentId, Envelope, Generation, PublicKey, SigningKey, Timestamp, limits};

/// Longer than any wait a test expects, in paused (virtual) time.
const DEADLINE: Duration = Duration::from_secs(3600);

fn key() -> SigningKey {
    SigningKey::generate().expect("key").0
}

/// Wall-clock milliseconds `offset_ms` from now.
fn at(offset_ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(
        Timestamp::now()
            .unix_millis()
            .saturating_add_signed(offset_ms),
    )
}

/// One node's parts: real sled state, outbox, trust store and signer.
struct Node {
    dir: tempfile::TempDir,
    db: sled::Db,
    outbox: Arc<Outbox>,
    board: Arc<Board>,
    trust: Arc<TrustStore>,
    events: EventSink,
    public: PublicKey,
    controller: SigningKey,
    desired_tx: watch::Sender<Option<Arc<ResolvedState>>>,
}

impl Node {
    fn new(outbox_quota: u64) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, controller) = (key(), key());
        let bundle = fake::trust_bundle(
            root.public_key(),
            controller.public_key(),
            vec![],
            (at(-60_000), at(365 * 86_400_000)),
        );
        let signed = root.sign(
            trust_type::TRUST_BUNDLE,
            &serde_json::to_vec(&bundle).expect("json"),
        );
        std::fs::write(
            dir.path().join("trust-bundle.json"),
            serde_json::to_vec(&signed).expect("json"),
        )
        .expect("write bundle");
        let store = SledStore::open(&dir.path().join("state")).expect("sled");
        let db = store.db().clone();
        let trust =
            Arc::new(TrustStore::open(&db, None, dir.path(), Timestamp::now()).expect("trust"));
        let outbox =
            Arc::new(Outbox::open(&db, dir.path().join("state"), outbox_quota).expect("outbox"));
        let board = Arc::new(Board::new(None));
        let node_key = key();
        let public = node_key.public_key();
        let signer = Arc::new(Signer::new(
            node_key,
            Identity {
                agent: agent(),
                region: "eu".parse().expect("region"),
                labels: Default::default(),
                capacity: Default::default(),
                probe_addr: None,
                limits: None,
            },
            board.clone(),
        ));
        let events = EventSink {
            signer,
            outbox: outbox.clone(),
            topic: "events".to_owned(),
        };
        Node {
            dir,
            db,
            outbox,
            board,
            trust,
            events,
            public,
            controller,
            desired_tx: watch::channel(None).0,
        }
    }

    /// Starts the alarm task; returns the way to send it observations.
    fn watch(&self) -> (Observations, Running) {
        let (observations, rx) = Observations::channel();
        let stop = CancellationToken::new();
        let trust = self.trust.clone();
        let task = tokio::spawn(
            AlarmWatch {
                agent: agent(),
                board: self.board.clone(),
                outbox: self.outbox.clone(),
                events: self.events.clone(),
                raised: RaisedStore::open(&self.db).expect("alarm tree"),
                desired: self.desired_tx.subscribe(),
                disk_space: Box::new(|| Some((1000, 500))),
                trust_expiry: Box::new(move || trust.expires_at()),
                certificate_validity: None,
                tick: ALARM_TICK,
            }
            .run(rx, stop.clone()),
        );
        (observations, Running { stop, task })
    }

    /// Desires exactly `workloads` on this node.
    fn desire(&self, workloads: Vec<Workload>) {
        self.desired_tx.send_replace(Some(Arc::new(ResolvedState {
            generation: Generation::new(1),
            expires_at: at(3_600_000),
            workloads,
        })));
    }

    /// The alarm events in the outbox, oldest first, each verified with
    /// the node key: (kind, alarm, service, detail).
    fn alarm_events(&self) -> Vec<(EventKind, AlarmId, Option<String>, String)> {
        self.events_of(|e| matches!(e.kind, EventKind::AlarmRaised | EventKind::AlarmCleared))
            .into_iter()
            .map(|e| {
                let alarm = e.alarm.expect("an alarm event names its alarm");
                assert!(alarm.entity.node == Some(agent()), "{alarm:?}");
                (
                    e.kind,
                    alarm.id,
                    alarm.entity.service.map(|s| s.to_string()),
                    e.detail,
                )
            })
            .collect()
    }

    fn events_of(&self, keep: impl Fn(&Event) -> bool) -> Vec<Event> {
        self.outbox
            .entries_from(0, 10_000)
            .expect("read the outbox")
            .into_iter()
            .filter(|e| e.topic == "events")
            .map(|e| {
                Envelope::parse(&e.payload, limits::MAX_EVENT_BYTES)
                    .expect("an envelope")
                    .open::<Event>(payload_type::EVENT, &self.public)
                    .expect("signed by the node key")
            })
            .filter(keep)
            .collect()
    }

    /// Waits until the outbox holds `n` alarm events.
    async fn wait_alarm_events(
        &self,
        n: usize,
    ) -> Vec<(EventKind, AlarmId, Option<String>, String)> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let events = self.alarm_events();
            if events.len() >= n {
                return events;
            }
            assert!(Instant::now() < deadline, "only {events:?} in time");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the task ends on stop")
            .expect("no panic");
    }
}

fn agent() -> AgentId {
    AgentId::new("edge-1").expect("valid")
}

fn kinds(events: &[(EventKind, AlarmId, Option<String>, String)]) -> Vec<(EventKind, AlarmId)> {
    events.iter().map(|(k, id, _, _)| (*k, *id)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_raises_once_and_clears_after_the_workload_has_run_a_minute() {
    let node = Node::new(u64::MAX);
    let processes = FakeProcesses::default();
    let workload = fake::workload("web", b"web-1");
    node.desire(vec![workload.clone()]);
    let (_observations, watch) = node.watch();
    let timing = RestartTiming {
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(4),
        reset_after: Duration::from_secs(60),
        quick_exit: Duration::from_secs(10),
        crash_loop_after: 3,
        crash_loop_delay: Duration::from_secs(120),
    };
    let launch = Launch {
        executable: node.dir.path().join("web"),
        dir: node.dir.path().to_owned(),
        workload,
        env: Default::default(),
        ports: Default::default(),
        chosen_ports: Default::default(),
        on_new_ports: None,
        launcher: Launcher::Direct,
        grace: Duration::from_secs(1),
    };
    let supervisor = tokio::spawn(supervise(
        processes.clone(),
        launch,
        None,
        timing,
        node.board.clone(),
        Controls::default(),
    ));
    // Three exits at once, one after the other: a crash loop.
    for n in 1..=3 {
        let pid = tokio::time::timeout(DEADLINE, processes.nth_spawn(n))
            .await
            .expect("spawned");
        assert!(processes.exit(pid, Exit::Code(3)), "{pid} runs");
    }
    let raised = node.wait_alarm_events(1).await;
    assert_eq!(
        kinds(&raised),
        [(EventKind::AlarmRaised, AlarmId::WorkloadCrashLoop)]
    );
    assert_eq!(raised[0].2.as_deref(), Some("web"));
    assert!(
        raised[0].3.contains("crash loop: 3 quick exits") && raised[0].3.contains("code 3"),
        "the detail says what was seen: {}",
        raised[0].3
    );
    // After the crash-loop delay the next start stays up: fixed.
    tokio::time::timeout(DEADLINE, processes.nth_spawn(4))
        .await
        .expect("started again after the delay");
    let fixed_at = Instant::now();
    let events = node.wait_alarm_events(2).await;
    assert!(
        fixed_at.elapsed() >= Duration::from_secs(60),
        "cleared only after a minute of running"
    );
    assert_eq!(
        kinds(&events),
        [
            (EventKind::AlarmRaised, AlarmId::WorkloadCrashLoop),
            (EventKind::AlarmCleared, AlarmId::WorkloadCrashLoop)
        ],
        "raised exactly once while it looped, cleared once"
    );
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(node.alarm_events().len(), 2, "nothing more");
    supervisor.abort();
    watch.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_removed_workload_clears_its_alarm_at_once() {
    let node = Node::new(u64::MAX);
    let workload = fake::workload("web", b"web-1");
    node.desire(vec![workload.clone()]);
    node.board.set_running(waiting_status(
        &workload,
        WorkloadState::CrashLoop,
        Some("crash loop: 5 quick exits in a row".to_owned()),
    ));
    let (_observations, watch) = node.watch();
    node.wait_alarm_events(1).await;
    node.desire(vec![]);
    let began = Instant::now();
    let events = node.wait_alarm_events(2).await;
    assert!(began.elapsed() < ALARM_TICK, "at once, not after a hold");
    assert_eq!(
        kinds(&events),
        [
            (EventKind::AlarmRaised, AlarmId::WorkloadCrashLoop),
            (EventKind::AlarmCleared, AlarmId::WorkloadCrashLoop)
        ]
    );
    assert!(
        events[1].3.starts_with("the workload was removed"),
        "{events:?}"
    );
    watch.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_desired_state_raises_and_the_next_accepted_one_clears() {
    let node = Node::new(u64::MAX);
    let (observations, watch) = node.watch();
    let config = Config::from_toml(
        &format!(
            "id = \"edge-1\"\nregion = \"eu\"\ndata_dir = {:?}\nbroker_url = \"mqtt://127.0.0.1:1\"\ncontroller_url = \"http://127.0.0.1:1\"\n",
            node.dir.path().display().to_string()
        ),
        |_| None,
    )
    .expect("config");
    let (delivery_tx, delivery_rx) = watch::channel(None);
    let (accepted_state_tx, _accepted_state_rx) = watch::channel(None);
    let stop = CancellationToken::new();
    let intake = tokio::spawn(
        Intake {
            config,
            store: Arc::new(MemoryStore::default()) as Arc<dyn StateStore>,
            trust: node.trust.clone(),
            board: node.board.clone(),
            events: node.events.clone(),
            alarms: observations,
            accepted_state_tx,
        }
        .run(delivery_rx, Arc::new(Notify::new()), stop.clone()),
    );
    let deliver = |to: &str, generation: u64| {
        let desired = DesiredState {
            schema_version: SCHEMA_VERSION,
            agent: AgentId::new(to).expect("valid"),
            generation: Generation::new(generation),
            issued_at: at(-1_000),
            expires_at: at(3_600_000),
            workloads: vec![],
        };
        let delivery = Delivery {
            schema_version: SCHEMA_VERSION,
            trust: None,
            desired: node.controller.sign(
                payload_type::DESIRED_STATE,
                &serde_json::to_vec(&desired).expect("json"),
            ),
            releases: vec![],
        };
        delivery_tx.send_replace(Some(Bytes::from(
            serde_json::to_vec(&delivery).expect("json"),
        )));
    };
    // Meant for another node: refused, twice (one alarm, not two).
    deliver("edge-2", 1);
    let raised = node.wait_alarm_events(1).await;
    assert_eq!(
        kinds(&raised),
        [(EventKind::AlarmRaised, AlarmId::DesiredStateRefused)]
    );
    assert!(
        raised[0].3.starts_with("a desired state was refused ("),
        "{raised:?}"
    );
    deliver("edge-2", 2);
    tokio::time::sleep(ALARM_TICK * 4).await;
    assert_eq!(
        node.alarm_events().len(),
        1,
        "still raised, not raised again"
    );
    // The security event is still sent, as before, for each distinct refusal.
    let rejected = node.events_of(|e| e.kind == EventKind::DesiredStateRejected);
    assert_eq!(rejected.len(), 2);
    deliver("edge-1", 3);
    let events = node.wait_alarm_events(2).await;
    assert_eq!(
        kinds(&events),
        [
            (EventKind::AlarmRaised, AlarmId::DesiredStateRefused),
            (EventKind::AlarmCleared, AlarmId::DesiredStateRefused)
        ]
    );
    assert_eq!(events[1].3, "desired state generation 3 was accepted");
    stop.cancel();
    intake.await.expect("intake ends");
    watch.stop().await;
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_what_went_away_clears_and_what_holds_stays_quiet() {
    let node = Node::new(u64::MAX);
    let workload = fake::workload("web", b"web-1");
    node.desire(vec![workload.clone()]);
    node.board.set_running(waiting_status(
        &workload,
        WorkloadState::CrashLoop,
        Some("crash loop".to_owned()),
    ));
    let (observations, watch) = node.watch();
    observations.observe(AlarmId::DesiredStateRefused, true, "expired");
    node.wait_alarm_events(2).await;
    watch.stop().await;

    // The next run: the workload runs, the refusal is not heard of again.
    let mut running = waiting_status(&workload, WorkloadState::Running, None);
    running.pid = Some(42);
    node.board.set_running(running);
    let (_observations, watch) = node.watch();
    let began = Instant::now();
    let events = node.wait_alarm_events(3).await;
    assert!(
        began.elapsed() >= Duration::from_secs(60),
        "after the clear hold"
    );
    assert_eq!(
        kinds(&events[2..]),
        [(EventKind::AlarmCleared, AlarmId::WorkloadCrashLoop)]
    );
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        node.alarm_events().len(),
        3,
        "the refusal stays raised, unrepeated"
    );
    watch.stop().await;
}

#[tokio::test(start_paused = true)]
async fn while_the_outbox_drops_the_alarm_state_is_queued_again_as_the_newest_entry() {
    // Room for a few events only.
    let node = Node::new(6_000);
    let (_observations, watch) = node.watch();
    let filler = |n: usize| {
        for _ in 0..n {
            node.outbox.push("telemetry", &[0u8; 1000]).expect("push");
        }
    };
    // Once the task has read the counter it compares against.
    tokio::time::sleep(ALARM_TICK).await;
    filler(8);
    let raised = node.wait_alarm_events(1).await;
    assert_eq!(
        kinds(&raised),
        [(EventKind::AlarmRaised, AlarmId::OutboxDropping)]
    );
    assert!(raised[0].3.contains("dropped"), "{raised:?}");
    // The broker stays away: the raise itself is dropped.
    filler(8);
    tokio::time::sleep(ALARM_TICK * 2).await;
    assert!(node.alarm_events().is_empty(), "dropped with the rest");
    // Minutes later, still dropping: the current state is queued again.
    tokio::time::sleep(Duration::from_secs(300)).await;
    filler(2);
    let again = node.wait_alarm_events(1).await;
    assert_eq!(
        kinds(&again),
        [(EventKind::AlarmRaised, AlarmId::OutboxDropping)]
    );
    // Drops stop (the broker is back): cleared after ten quiet minutes.
    let quiet = Instant::now();
    let cleared = node.wait_alarm_events(2).await;
    assert!(quiet.elapsed() >= Duration::from_secs(600));
    assert_eq!(cleared[1].0, EventKind::AlarmCleared, "{cleared:?}");
    watch.stop().await;
}
