//! The intake task against the in-memory state store, with paused Tokio
//! time: persisting before publishing, retrying a save that failed, and
//! stopping the agent when the store is stuck.
//!
//! The trust bundle, the outbox and the signing are the real ones; only the
//! store of the accepted desired state is the fake.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edge_agent::Config;
use edge_agent::fake::{self, MemoryStore};
use edge_agent::intake::ResolvedState;
use edge_agent::outbox::Outbox;
use edge_agent::report::{Board, EventSink, Identity, Signer};
use edge_agent::state::{SledStore, StateStore};
use edge_agent::tasks::intake::Intake;
use edge_agent::trust::TrustStore;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use verge_shared::messages::{Delivery, DesiredState, SCHEMA_VERSION, payload_type};
use verge_shared::trust::payload_type as trust_type;
use verge_shared::{AgentId, Generation, SigningKey, Timestamp};

/// The first delay before a failed save is tried again (tasks/intake.rs).
const FIRST_SAVE_RETRY: Duration = Duration::from_secs(1);
/// Longer than any wait a test expects, in paused (virtual) time.
const DEADLINE: Duration = Duration::from_secs(600);

fn key() -> SigningKey {
    SigningKey::generate().expect("key").0
}

/// Wall-clock milliseconds `offset_ms` from now (signatures and expiry are
/// checked against the real clock, which paused Tokio time does not stop).
fn at(offset_ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(
        Timestamp::now()
            .unix_millis()
            .saturating_add_signed(offset_ms),
    )
}

/// An intake task with a real trust store and outbox over `store`.
struct Harness {
    controller: SigningKey,
    store: Arc<MemoryStore>,
    board: Arc<Board>,
    delivery_tx: watch::Sender<Option<Bytes>>,
    accepted_state_rx: watch::Receiver<Option<Arc<ResolvedState>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start(store: MemoryStore) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path();
        let (root, controller) = (key(), key());
        let bundle = fake::trust_bundle(
            root.public_key(),
            controller.public_key(),
            vec![],
            (at(-60_000), at(3_600_000)),
        );
        let signed = root.sign(
            trust_type::TRUST_BUNDLE,
            &serde_json::to_vec(&bundle).expect("json"),
        );
        std::fs::write(
            data_dir.join("trust-bundle.json"),
            serde_json::to_vec(&signed).expect("json"),
        )
        .expect("write bundle");
        let sled = SledStore::open(&data_dir.join("state")).expect("sled");
        let trust = TrustStore::open(sled.db(), None, data_dir, Timestamp::now()).expect("trust");
        let outbox = Outbox::open(sled.db(), data_dir.join("state"), u64::MAX).expect("outbox");
        let config = Config::from_toml(
            &format!(
                "id = \"edge-1\"\nregion = \"eu\"\ndata_dir = {:?}\nbroker_url = \"mqtt://127.0.0.1:1\"\ncontroller_url = \"http://127.0.0.1:1\"\n",
                data_dir.display().to_string()
            ),
            |_| None,
        )
        .expect("config");
        let board = Arc::new(Board::new(None));
        let signer = Arc::new(Signer::new(
            key(),
            Identity {
                agent: config.id.clone(),
                region: config.region.clone(),
                labels: Default::default(),
                capacity: Default::default(),
                probe_addr: None,
                limits: None,
            },
            board.clone(),
        ));
        let events = EventSink {
            signer,
            outbox: Arc::new(outbox),
            topic: "events".to_owned(),
        };
        let store = Arc::new(store);
        let (delivery_tx, delivery_rx) = watch::channel(None);
        let (accepted_state_tx, accepted_state_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let intake = Intake {
            config,
            store: store.clone() as Arc<dyn StateStore>,
            trust: Arc::new(trust),
            board: board.clone(),
            events,
            alarms: edge_agent::alarms::Observations::channel().0,
            accepted_state_tx,
        };
        let task = tokio::spawn(intake.run(delivery_rx, Arc::new(Notify::new()), stop.clone()));
        Harness {
            controller,
            store,
            board,
            delivery_tx,
            accepted_state_rx,
            stop,
            task,
            _dir: dir,
        }
    }

    /// Delivers a signed desired state of `generation` with no workloads.
    fn deliver(&self, generation: u64) {
        let desired = DesiredState {
            schema_version: SCHEMA_VERSION,
            agent: AgentId::new("edge-1").expect("valid"),
            generation: Generation::new(generation),
            issued_at: at(-1_000),
            expires_at: at(3_600_000),
            workloads: vec![],
        };
        let delivery = Delivery {
            schema_version: SCHEMA_VERSION,
            trust: None,
            desired: self.controller.sign(
                payload_type::DESIRED_STATE,
                &serde_json::to_vec(&desired).expect("json"),
            ),
            releases: vec![],
        };
        let bytes = serde_json::to_vec(&delivery).expect("json");
        self.delivery_tx.send_replace(Some(Bytes::from(bytes)));
    }

    fn published(&self) -> Option<Generation> {
        self.accepted_state_rx
            .borrow()
            .as_ref()
            .map(|state| state.generation)
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

#[tokio::test(start_paused = true)]
async fn an_accepted_state_is_published_only_once_it_is_saved() {
    let store = MemoryStore::default();
    store.break_saves_for(2);
    let h = Harness::start(store);
    let began = Instant::now();
    h.deliver(1);
    wait_until(|| h.store.n_attempts() == 1).await;
    assert_eq!(h.published(), None, "not published before it is saved");
    assert_eq!(h.board.accepted(), None);
    // Tried again after 1 s and, failing again, 2 s after that.
    wait_until(|| h.store.n_attempts() == 2).await;
    assert!(Instant::now() - began >= FIRST_SAVE_RETRY);
    assert_eq!(h.published(), None);
    wait_until(|| h.published().is_some()).await;
    assert!(Instant::now() - began >= FIRST_SAVE_RETRY * 3);
    assert_eq!(h.published(), Some(Generation::new(1)));
    assert_eq!(h.board.accepted(), Some(Generation::new(1)));
    assert_eq!(
        h.store.load().expect("load").map(|a| a.desired.generation),
        Some(Generation::new(1))
    );
    // Saved: no more attempts.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.store.n_attempts(), 3);
    h.stop.cancel();
    h.task.await.expect("the task ends on stop");
}

#[tokio::test(start_paused = true)]
async fn a_store_that_says_the_disk_is_full_while_it_is_not_stops_the_task() {
    // The temporary directory has room, so "no space left" from the store is
    // the stuck state of docs/storage.md: only a restart can clear it.
    let store = MemoryStore::default();
    store.fill_disk_for(1);
    let h = Harness::start(store);
    h.deliver(1);
    let Harness {
        task,
        accepted_state_rx,
        stop,
        ..
    } = h;
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the task ends by itself")
        .expect("without panicking");
    assert!(accepted_state_rx.borrow().is_none(), "nothing published");
    assert!(!stop.is_cancelled());
}
