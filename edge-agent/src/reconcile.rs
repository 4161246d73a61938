//! Reconciliation: a pure [`plan`] from desired and observed workloads, and
//! the loop that applies it through a [`Runtime`].
//!
//! A pass takes no "what changed" input: it compares the whole desired state
//! with what runs. It is triggered by a newly accepted desired state, by a
//! retry timer after a failed pass and by a periodic resync. Every artifact
//! a pass needs is fetched before anything old is stopped, so a failed
//! download leaves the running workloads untouched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use verge_shared::ServiceName;
use verge_shared::messages::{Workload, WorkloadState};

use crate::intake::ResolvedState;

use crate::artifacts::{ArtifactCache, ArtifactError};
use crate::report::{Board, DiskUser, waiting_status};
use crate::runtime::{Runtime, RuntimeError};

const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
const RETRY_INITIAL: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What one pass does, applied in field order: stop, replace, start
/// (free resources before claiming them). Each list is sorted by service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Running but no longer desired.
    pub stop: Vec<ServiceName>,
    /// Running with a different artifact, run spec, resources or replica.
    pub replace: Vec<Workload>,
    /// Desired but not running.
    pub start: Vec<Workload>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty() && self.replace.is_empty() && self.start.is_empty()
    }

    /// The workloads this plan launches, whose artifacts must be present first.
    pub fn launches(&self) -> impl Iterator<Item = &Workload> {
        self.replace.iter().chain(&self.start)
    }
}

/// Compares `desired` with `observed` (what runs, keyed by service).
pub fn plan(desired: &[Workload], observed: &BTreeMap<ServiceName, Workload>) -> Plan {
    let wanted: BTreeMap<&ServiceName, &Workload> =
        desired.iter().map(|w| (&w.service, w)).collect();
    let mut out = Plan {
        stop: observed
            .keys()
            .filter(|s| !wanted.contains_key(s))
            .cloned()
            .collect(),
        ..Plan::default()
    };
    for (service, want) in wanted {
        match observed.get(service) {
            Some(have) if have == want => {}
            Some(_) => out.replace.push(want.clone()),
            None => out.start.push(want.clone()),
        }
    }
    out
}

/// Why a pass did not complete; the next attempt comes from the retry timer.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl PassError {
    /// Did the pass stop because the disk is full? Nothing running was
    /// touched then (artifacts are fetched before anything is stopped).
    pub fn is_disk_full(&self) -> bool {
        match self {
            PassError::Artifact(e) => matches!(e, ArtifactError::DiskFull { .. }),
            PassError::Runtime(RuntimeError::Prepare { source, .. }) => {
                crate::disk::is_no_space(source)
            }
            PassError::Runtime(_) => false,
        }
    }
}

/// Applies desired states as they arrive until `shutdown`.
pub struct Reconciler<R> {
    pub runtime: Arc<R>,
    pub artifacts: Arc<ArtifactCache>,
    pub board: Arc<Board>,
}

impl<R: Runtime> Reconciler<R> {
    /// The reconcile loop. Returns when `shutdown` fires or the desired-state
    /// sender is gone; stopping the workloads is the caller's job.
    pub async fn run(
        &self,
        mut accepted_state_rx: watch::Receiver<Option<Arc<ResolvedState>>>,
        shutdown: CancellationToken,
    ) {
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry_delay = RETRY_INITIAL;
        let mut retry_at: Option<tokio::time::Instant> = None;
        // The first resync tick fires at once: that is the start-up pass.
        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                changed = accepted_state_rx.changed() => if changed.is_err() { break },
                () = retry => debug!("Retrying after a failed pass."),
                _ = resync.tick() => debug!("Periodic resync."),
            }
            let desired = accepted_state_rx.borrow_and_update().clone();
            let Some(desired) = desired else { continue };
            let outcome = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                outcome = self.pass(&desired) => outcome,
            };
            match outcome {
                Ok(()) => {
                    self.board.clear_disk_full(DiskUser::Artifacts);
                    retry_at = None;
                    retry_delay = RETRY_INITIAL;
                }
                Err(e) => {
                    if e.is_disk_full() {
                        self.board
                            .set_disk_full(DiskUser::Artifacts, &e.to_string());
                    }
                    warn!(generation = %desired.generation, error = %e, retry_in = ?retry_delay, "Reconcile pass failed.");
                    retry_at = Some(tokio::time::Instant::now() + retry_delay);
                    retry_delay = (retry_delay * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// One pass: fetch every artifact needed, then stop → replace → start.
    pub async fn pass(&self, desired: &ResolvedState) -> Result<(), PassError> {
        // What this desired state refers to must survive cache eviction.
        self.artifacts.set_needed(
            desired
                .workloads
                .iter()
                .map(|w| w.artifact.sha256)
                .collect(),
        );
        let plan = plan(&desired.workloads, &self.runtime.observe());
        let mut waiting: BTreeMap<ServiceName, _> = plan
            .start
            .iter()
            .map(|w| {
                (
                    w.service.clone(),
                    waiting_status(w, WorkloadState::Fetching, None),
                )
            })
            .collect();
        // A workload that failed to start keeps saying why while it is
        // retried, instead of flapping between fetching and failed.
        let failed_before = self.board.failed_waiting();
        for workload in plan.launches() {
            if let Some(failed) = failed_before
                .get(&workload.service)
                .filter(|f| f.artifact == workload.artifact.sha256)
            {
                waiting.insert(workload.service.clone(), failed.clone());
            }
        }
        self.board.set_waiting(waiting.clone());
        if plan.is_empty() {
            self.board.set_applied(desired.generation);
            return Ok(());
        }
        let mut executables = BTreeMap::new();
        for workload in plan.launches() {
            let entrypoint = workload.run.entrypoint.as_deref();
            match self
                .artifacts
                .executable(&workload.artifact, entrypoint)
                .await
            {
                Ok(path) => {
                    executables.insert(workload.service.clone(), path);
                }
                Err(e) => {
                    // Leave everything running as it is; report why on the
                    // workload that cannot start, a replacement included
                    // (its predecessor keeps running, and the message says so).
                    let message = if plan.replace.iter().any(|w| w.service == workload.service) {
                        format!("{e}; the previous version keeps running")
                    } else {
                        e.to_string()
                    };
                    let failed = waiting_status(workload, WorkloadState::Failed, Some(message));
                    waiting.insert(workload.service.clone(), failed);
                    self.board.set_waiting(waiting);
                    return Err(e.into());
                }
            }
        }
        for service in &plan.stop {
            info!(service = %service, "Stopping workload that is no longer desired.");
            self.runtime.stop(service).await;
        }
        for workload in &plan.replace {
            info!(service = %workload.service, generation = %desired.generation, "Replacing changed workload.");
            self.runtime.stop(&workload.service).await;
        }
        for workload in plan.launches() {
            if let Some(path) = executables.get(&workload.service) {
                self.runtime.start(workload, path)?;
            }
        }
        info!(generation = %desired.generation, n_stopped = plan.stop.len(), n_replaced = plan.replace.len(), n_started = plan.start.len(), "Applied desired state.");
        self.board.set_applied(desired.generation);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(service: &str, artifact: &[u8]) -> Workload {
        crate::fake::workload(service, artifact)
    }

    fn observed(ws: &[Workload]) -> BTreeMap<ServiceName, Workload> {
        ws.iter().map(|w| (w.service.clone(), w.clone())).collect()
    }

    fn names(ws: &[Workload]) -> Vec<&str> {
        ws.iter().map(|w| w.service.as_str()).collect()
    }

    #[test]
    fn start_up_is_a_diff_from_empty() {
        let desired = [w("a", b"1"), w("b", b"2")];
        let p = plan(&desired, &BTreeMap::new());
        assert!(p.stop.is_empty() && p.replace.is_empty());
        assert_eq!(names(&p.start), ["a", "b"]);
    }

    #[test]
    fn unchanged_state_plans_nothing() {
        let desired = [w("a", b"1"), w("b", b"2")];
        assert!(plan(&desired, &observed(&desired)).is_empty());
    }

    #[test]
    fn stops_replaces_and_starts() {
        let mut changed_run = w("c", b"3");
        changed_run.run.args = vec!["--fast".into()];
        let mut changed_resources = w("d", b"4");
        changed_resources.resources.memory_mb = 64;
        let desired = [
            w("a", b"new"),
            w("b", b"2"),
            changed_run,
            changed_resources,
            w("e", b"5"),
        ];
        let running = [
            w("a", b"old"),
            w("b", b"2"),
            w("c", b"3"),
            w("d", b"4"),
            w("gone", b"9"),
        ];
        let p = plan(&desired, &observed(&running));
        assert_eq!(p.stop, [ServiceName::new("gone").expect("valid")]);
        assert_eq!(names(&p.replace), ["a", "c", "d"]);
        assert_eq!(names(&p.start), ["e"]);
        assert_eq!(p.launches().count(), 4);
    }

    /// Applies a plan to `observed` the way a successful pass would.
    fn apply(p: &Plan, observed: &mut BTreeMap<ServiceName, Workload>) {
        for s in &p.stop {
            observed.remove(s);
        }
        for w in p.launches() {
            observed.insert(w.service.clone(), w.clone());
        }
    }

    proptest::proptest! {
        #[test]
        fn a_successful_pass_converges(
            desired in proptest::collection::btree_map("[a-e]", 0u8..3, 0..5),
            running in proptest::collection::btree_map("[a-e]", 0u8..3, 0..5),
        ) {
            let desired: Vec<Workload> = desired.iter().map(|(s, v)| w(s, &[*v])).collect();
            let mut observed: BTreeMap<_, _> = running.iter().map(|(s, v)| (ServiceName::new(s.as_str()).expect("valid"), w(s, &[*v]))).collect();
            let p = plan(&desired, &observed);
            // Nothing is both stopped and launched, and nothing unchanged is touched.
            proptest::prop_assert!(p.launches().all(|l| !p.stop.contains(&l.service)));
            apply(&p, &mut observed);
            proptest::prop_assert_eq!(observed.values().cloned().collect::<Vec<_>>(), desired.clone());
            proptest::prop_assert!(plan(&desired, &observed).is_empty());
        }
    }

    #[test]
    fn empty_desired_state_stops_everything() {
        let running = [w("a", b"1"), w("b", b"2")];
        let p = plan(&[], &observed(&running));
        assert_eq!(p.stop.len(), 2);
        assert!(p.start.is_empty() && p.replace.is_empty());
    }

    #[test]
    fn a_plan_with_any_step_is_not_empty() {
        let running = [w("a", b"1")];
        let only_stop = plan(&[], &observed(&running));
        assert!(!only_stop.is_empty(), "{only_stop:?}");
        let only_start = plan(&running, &BTreeMap::new());
        assert!(!only_start.is_empty(), "{only_start:?}");
        let only_replace = plan(&[w("a", b"2")], &observed(&running));
        assert_eq!((only_replace.stop.len(), only_replace.start.len()), (0, 0));
        assert!(!only_replace.is_empty(), "{only_replace:?}");
        assert!(Plan::default().is_empty());
    }
}
