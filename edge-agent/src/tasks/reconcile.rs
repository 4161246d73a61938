//! The reconcile task: the reconcile loop ([`Reconciler::run`]) behind the
//! start-up wait for the broker's copy of the desired state.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::intake::ResolvedState;
use crate::reconcile::Reconciler;
use crate::runtime::Runtime;

/// How long a starting agent waits for the broker's retained desired state
/// before it starts workloads from the one it stored. A node back from a
/// power cut must not start a replica the controller moved away while it was
/// gone; with the broker unreachable the wait ends at the first failed
/// connection attempt, so offline autonomy is not delayed.
const STARTUP_WAIT: Duration = Duration::from_secs(3);

/// The reconcile loop, after start-up: adopted workloads already run; what
/// the stored state would start waits until the broker had its chance to
/// deliver a newer one (`broker_spoke`) or `STARTUP_WAIT` has passed.
pub async fn run_after_startup<R: Runtime>(
    reconciler: Reconciler<R>,
    accepted_state_rx: watch::Receiver<Option<Arc<ResolvedState>>>,
    broker_spoke: Arc<Notify>,
    stop: CancellationToken,
) {
    tokio::select! {
        biased;
        () = stop.cancelled() => return,
        () = broker_spoke.notified() => {}
        () = tokio::time::sleep(STARTUP_WAIT) => debug!("No desired state from the broker yet; applying the stored one."),
    }
    reconciler.run(accepted_state_rx, stop).await
}
