//! The alarm task: observes the agent-side alarms of the catalogue
//! (docs/alarms.md) with the pure [`crate::alarms::Book`] and queues each
//! raise and clear as a signed `alarm_raised` / `alarm_cleared` event in the
//! outbox, on `{prefix}/events/{region}/{agent}` like every other event.
//!
//! Every [`ALARM_TICK`] (and at once when the desired state changes) it
//! reads the facts where they are: workload states and health on the status
//! board (`workload_crash_loop`, `workload_unhealthy`), the free space of the
//! data directory's file system and the board's storage problems
//! (`disk_low`, `disk_full`), the outbox's dropped counter
//! (`outbox_dropping`), and the expiry of the trust bundle and the client
//! certificate (`trust_bundle_expiring`, `certificate_expiring`). Intake and
//! certificate renewal send what they decide as [`Observation`]s
//! (`desired_state_refused`, `trust_bundle_refused`,
//! `certificate_renewal_failing`).
//!
//! The raised set is kept in the `alarms` tree of the agent's state, written
//! before the event is queued, so a restarted agent knows what it raised and
//! clears what went away meanwhile (see [`crate::alarms`]). An event the
//! outbox cannot take (the disk is full) waits in memory, in order, and is
//! queued at the next tick.

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use verge_shared::alarms::{AlarmId, AlarmReport, Entity, Transition};
use verge_shared::messages::{HealthState, WorkloadState, WorkloadStatus};
use verge_shared::{AgentId, Timestamp};

use crate::alarms::{
    Book, CERTIFICATE_WARNING_SECS, DISK_FULL_PERCENT, DISK_LOW_PERCENT, DISK_MARGIN_PERCENT,
    Observation, Report, TRUST_BUNDLE_WARNING_SECS, below_with_margin,
};
use crate::intake::ResolvedState;
use crate::outbox::Outbox;
use crate::report::{Board, EventSink};
use crate::ticks::Ticks;

/// How often the alarm conditions are sampled and hold times checked.
pub const ALARM_TICK: Duration = Duration::from_secs(5);
/// While the outbox keeps dropping, the current alarm state is queued again
/// at most this often (see [`Book::resync`]).
const RESYNC_EVERY: Duration = Duration::from_secs(300);
/// Most events kept in memory while the outbox cannot take them.
const MAX_PENDING: usize = 256;

/// A time source read by the task.
pub type Expiry = Box<dyn Fn() -> Timestamp + Send + Sync>;
/// When a certificate became valid and when it expires.
pub type Validity = Box<dyn Fn() -> (Timestamp, Timestamp) + Send + Sync>;
/// The data directory's file system size and free bytes, if readable.
pub type DiskSpace = Box<dyn Fn() -> Option<(u64, u64)> + Send + Sync>;

/// The raised set, persisted in the `alarms` tree of the agent's state.
pub struct RaisedStore {
    tree: sled::Tree,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    alarm: AlarmReport,
    detail: String,
}

impl RaisedStore {
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            tree: db.open_tree("alarms")?,
        })
    }

    fn key(alarm: &AlarmReport) -> String {
        format!("{}/{}", alarm.id, alarm.entity.instance())
    }

    /// What a previous run left raised; unreadable entries are dropped.
    pub fn load(&self) -> Vec<(AlarmReport, String)> {
        let mut raised = Vec::new();
        for item in self.tree.iter() {
            match item.map_err(|e| e.to_string()).and_then(|(k, v)| {
                serde_json::from_slice::<Stored>(&v).map_err(|e| {
                    let _ = self.tree.remove(k);
                    e.to_string()
                })
            }) {
                Ok(stored) => raised.push((stored.alarm, stored.detail)),
                Err(e) => warn!(error = %e, "Ignored an unreadable entry of the raised alarms."),
            }
        }
        raised
    }

    /// Records a transition (durably) before it is reported.
    fn record(&self, report: &Report) -> Result<(), sled::Error> {
        let key = Self::key(&report.alarm);
        match report.transition {
            Transition::Raise => {
                let stored = Stored {
                    alarm: report.alarm.clone(),
                    detail: report.detail.clone(),
                };
                self.tree
                    .insert(key, serde_json::to_vec(&stored).unwrap_or_default())?;
            }
            Transition::Clear => {
                self.tree.remove(key)?;
            }
        }
        self.tree.flush().map(drop)
    }
}

/// Everything the alarm task reads.
pub struct AlarmWatch {
    pub agent: AgentId,
    pub board: Arc<Board>,
    pub outbox: Arc<Outbox>,
    pub events: EventSink,
    pub raised: RaisedStore,
    /// The accepted desired state: a workload not in it is removed.
    pub desired: watch::Receiver<Option<Arc<ResolvedState>>>,
    /// Where the data directory's free space is read.
    pub disk_space: DiskSpace,
    pub trust_expiry: Expiry,
    /// With TLS: the client certificate's validity.
    pub certificate_validity: Option<Validity>,
    pub tick: Duration,
}

/// Hold times run on the monotonic clock (a wall-clock step neither raises
/// nor clears anything), expressed as timestamps for [`Book`].
struct Clock {
    wall: Timestamp,
    began: Instant,
}

impl Clock {
    fn now(&self) -> Timestamp {
        self.wall.saturating_add(self.began.elapsed())
    }
}

impl AlarmWatch {
    /// Observes until `stop`.
    pub async fn run(
        mut self,
        mut observations: mpsc::UnboundedReceiver<Observation>,
        stop: CancellationToken,
    ) {
        let clock = Clock {
            wall: Timestamp::now(),
            began: Instant::now(),
        };
        let restored = self.raised.load();
        if !restored.is_empty() {
            info!(agent = %self.agent, n = restored.len(), "Alarms raised before the restart are watched again.");
        }
        let mut state = State {
            book: Book::restore(restored, clock.now()),
            pending: VecDeque::new(),
            dropped_seen: self.outbox.metrics().dropped,
            last_resync: None,
        };
        let mut ticks = Ticks::every(self.tick);
        let (mut observing, mut desired_open) = (true, true);
        loop {
            let reports = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                observation = observations.recv(), if observing => match observation {
                    Some(o) => {
                        let node = Entity::node(self.agent.clone());
                        state.book.observe(o.id, node, o.condition, o.detail, clock.now()).into_iter().collect()
                    }
                    None => {
                        observing = false;
                        continue;
                    }
                },
                changed = self.desired.changed(), if desired_open => {
                    if changed.is_err() {
                        desired_open = false;
                    }
                    self.sample(&mut state, clock.now())
                }
                more = ticks.next(&stop) => {
                    if !more {
                        break;
                    }
                    self.sample(&mut state, clock.now())
                }
            };
            self.report(&mut state, reports).await;
        }
    }

    /// Reads every sampled condition; returns the transitions due.
    fn sample(&self, state: &mut State, now: Timestamp) -> Vec<Report> {
        let book = &mut state.book;
        let node = Entity::node(self.agent.clone());
        let mut out = Vec::new();

        // Workloads: a service no longer desired is removed.
        let desired: BTreeSet<_> = self
            .desired
            .borrow()
            .as_ref()
            .map(|d| d.workloads.iter().map(|w| w.service.clone()).collect())
            .unwrap_or_default();
        out.extend(book.retain_workloads(|s| desired.contains(s)));
        for w in self.board.workloads() {
            if !desired.contains(&w.service) {
                continue;
            }
            let entity = Entity::workload(self.agent.clone(), w.service.clone());
            if let Some((condition, detail)) = crash_loop(&w) {
                out.extend(book.observe(
                    AlarmId::WorkloadCrashLoop,
                    entity.clone(),
                    condition,
                    detail,
                    now,
                ));
            }
            if let Some((condition, detail)) = unhealthy(&w) {
                out.extend(book.observe(
                    AlarmId::WorkloadUnhealthy,
                    entity,
                    condition,
                    detail,
                    now,
                ));
            }
        }

        // Disk: free space with a margin, and parts that cannot write.
        let space = (self.disk_space)().filter(|(total, _)| *total > 0);
        let percent = space.map(|(total, free)| free as f64 * 100.0 / total as f64);
        let figures = |(total, free): (u64, u64), percent: f64| {
            format!(
                "{percent:.1}% of the data directory's file system is free ({free} of {total} bytes)"
            )
        };
        if let (Some(space), Some(percent)) = (space, percent) {
            let raised = book.is_raised(AlarmId::DiskLow, &node);
            let low = below_with_margin(percent, DISK_LOW_PERCENT, DISK_MARGIN_PERCENT, raised);
            out.extend(book.observe(
                AlarmId::DiskLow,
                node.clone(),
                low,
                figures(space, percent),
                now,
            ));
        }
        let raised = book.is_raised(AlarmId::DiskFull, &node);
        let full_by_space = percent.is_some_and(|p| {
            below_with_margin(p, DISK_FULL_PERCENT, DISK_MARGIN_PERCENT / 2.0, raised)
        });
        let problem = self.board.storage_problem();
        let detail = match (&problem, space.zip(percent)) {
            (Some(p), Some((space, percent))) => {
                format!("{}; {}", p.detail, figures(space, percent))
            }
            (Some(p), None) => p.detail.clone(),
            (None, Some((space, percent))) => figures(space, percent),
            (None, None) => "the data directory's free space cannot be read".to_owned(),
        };
        out.extend(book.observe(
            AlarmId::DiskFull,
            node.clone(),
            full_by_space || problem.is_some(),
            detail,
            now,
        ));

        // The outbox: did it drop reports since the last look?
        let metrics = self.outbox.metrics();
        let new_drops = metrics.dropped.saturating_sub(state.dropped_seen);
        state.dropped_seen = metrics.dropped;
        let detail = if new_drops > 0 {
            format!(
                "the outbox dropped {new_drops} of its oldest reports to stay within its quota ({} dropped since it was created, {} queued in {} bytes)",
                metrics.dropped, metrics.queued, metrics.queued_bytes
            )
        } else {
            format!(
                "no report dropped for a while ({} queued in {} bytes)",
                metrics.queued, metrics.queued_bytes
            )
        };
        out.extend(book.observe(
            AlarmId::OutboxDropping,
            node.clone(),
            new_drops > 0,
            detail,
            now,
        ));
        // The drops may have taken alarm events with them: queue the state
        // again, now the newest entries, at most every RESYNC_EVERY.
        let due = state
            .last_resync
            .is_none_or(|at: Instant| at.elapsed() >= RESYNC_EVERY);
        if new_drops > 0 && due && book.is_raised(AlarmId::OutboxDropping, &node) {
            state.last_resync = Some(Instant::now());
            let again: Vec<Report> = book
                .resync()
                .into_iter()
                .filter(|r| !out.contains(r))
                .collect();
            out.extend(again);
        }

        // Expiry of the trust bundle and the client certificate (wall clock).
        let wall = Timestamp::now();
        let expiring = |what: &str, expires: Timestamp, warn_secs: u64| {
            let left = expires.saturating_since(wall);
            let detail = if expires <= wall {
                format!("the {what} expired at {expires}")
            } else {
                format!(
                    "the {what} expires at {expires}, in {:.1} days",
                    left.as_secs_f64() / 86_400.0
                )
            };
            (left < Duration::from_secs(warn_secs), detail)
        };
        let (condition, detail) = expiring(
            "trust bundle",
            (self.trust_expiry)(),
            TRUST_BUNDLE_WARNING_SECS,
        );
        out.extend(book.observe(
            AlarmId::TrustBundleExpiring,
            node.clone(),
            condition,
            detail,
            now,
        ));
        if let Some(validity) = &self.certificate_validity {
            // Renewal is due at 2/3 of the lifetime: a short-lived
            // certificate (a day by default) warns once a sixth is left,
            // not a week before it expires, which would be always.
            let (not_before, not_after) = validity();
            let sixth = not_after.saturating_since(not_before).as_secs() / 6;
            let (condition, detail) = expiring(
                "node's client certificate",
                not_after,
                CERTIFICATE_WARNING_SECS.min(sixth),
            );
            out.extend(book.observe(AlarmId::CertificateExpiring, node, condition, detail, now));
        }

        out.extend(book.tick(now));
        out
    }

    /// Records, signs and queues `reports` in order after any still waiting.
    async fn report(&self, state: &mut State, reports: Vec<Report>) {
        for r in reports {
            match r.transition {
                Transition::Raise => {
                    warn!(agent = %self.agent, alarm = %r.alarm.id, entity = %r.alarm.entity.instance(), detail = %r.detail, "Alarm raised.");
                }
                Transition::Clear => {
                    info!(agent = %self.agent, alarm = %r.alarm.id, entity = %r.alarm.entity.instance(), detail = %r.detail, "Alarm cleared.");
                }
            }
            if let Err(e) = self.raised.record(&r) {
                warn!(error = %e, "Cannot record the raised alarms; a restart may not clear this one.");
            }
            let envelope = self
                .events
                .signer
                .alarm_event(r.transition, r.alarm, &r.detail);
            state.pending.push_back(envelope);
        }
        while let Some(envelope) = state.pending.front() {
            match self.events.queue(envelope.clone()).await {
                Ok(()) => {
                    state.pending.pop_front();
                }
                Err(e) => {
                    warn!(error = %e, waiting = state.pending.len(), "Cannot queue alarm events; trying again shortly.");
                    break;
                }
            }
        }
        while state.pending.len() > MAX_PENDING {
            state.pending.pop_front();
            warn!("Dropped the oldest alarm event waiting for the outbox.");
        }
    }
}

struct State {
    book: Book,
    /// Signed events the outbox could not take yet, oldest first.
    pending: VecDeque<Vec<u8>>,
    dropped_seen: u64,
    last_resync: Option<Instant>,
}

/// `workload_crash_loop` as the supervisor decides it: raised in its
/// crash-loop state, clear while the workload runs; other states (backing
/// off, waiting) say nothing new.
fn crash_loop(w: &WorkloadStatus) -> Option<(bool, String)> {
    match w.state {
        WorkloadState::CrashLoop => Some((
            true,
            w.message.clone().unwrap_or_else(|| "crash loop".to_owned()),
        )),
        WorkloadState::Running => Some((
            false,
            format!(
                "runs (pid {}) after {} restarts",
                w.pid.unwrap_or_default(),
                w.restarts
            ),
        )),
        _ => None,
    }
}

/// `workload_unhealthy` while the workload runs: its health check's
/// verdict (no check counts as healthy); an unknown verdict or a workload
/// that does not run says nothing new.
fn unhealthy(w: &WorkloadStatus) -> Option<(bool, String)> {
    if w.state != WorkloadState::Running {
        return None;
    }
    match w.health {
        Some(HealthState::Unhealthy) => Some((
            true,
            format!(
                "its health check fails while it runs (pid {})",
                w.pid.unwrap_or_default()
            ),
        )),
        Some(HealthState::Healthy) => Some((false, "its health check passes".to_owned())),
        None => Some((false, "it has no health check".to_owned())),
        Some(HealthState::Unknown) => None,
    }
}

/// The data directory's size and free bytes, for [`AlarmWatch::disk_space`].
pub fn disk_space_of(data_dir: PathBuf) -> DiskSpace {
    Box::new(move || crate::disk::total_and_free_bytes(&data_dir).ok())
}
