//! The status task: after each burst of changes on the [`Board`], queues one
//! signed Status in the outbox, which the MQTT adapter delivers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::disk;
use crate::outbox::Outbox;
use crate::report::{Board, DiskUser, Signer};

/// Status changes within this window go out as one Status.
const STATUS_DEBOUNCE: Duration = Duration::from_millis(200);

/// Queues a Status in the outbox after each burst of board changes.
pub async fn run(
    board: Arc<Board>,
    signer: Arc<Signer>,
    outbox: Arc<Outbox>,
    topic: String,
    data_dir: PathBuf,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = board.changed() => {}
        }
        // Coalesce the changes of one reconcile pass into one message.
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = tokio::time::sleep(STATUS_DEBOUNCE) => {}
        }
        // The Status built below carries every change made so far; one made
        // from here on wakes the loop again.
        board.forget_pending_change();
        let (outbox, signer, topic) = (outbox.clone(), signer.clone(), topic.clone());
        // The push is flushed to disk: keep it off the runtime thread.
        let pushed =
            tokio::task::spawn_blocking(move || outbox.push(&topic, &signer.status())).await;
        match pushed {
            Ok(Ok(())) => board.clear_disk_full(DiskUser::Outbox),
            Ok(Err(e)) if e.is_disk_full() => {
                if disk::store_stuck(&data_dir) {
                    return;
                }
                error!(error = %e, "The disk is full: a Status cannot be queued; the next change after space returns sends a full one.");
                board.set_disk_full(DiskUser::Outbox, &e.to_string());
            }
            Ok(Err(e)) => {
                warn!(error = %e, "Cannot queue a Status; the next change or reconnect sends a full one.");
            }
            Err(e) => warn!(error = %e, "Queueing a Status failed."),
        }
    }
}
