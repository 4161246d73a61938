//! The heartbeat task: asks the MQTT adapter for a heartbeat every interval,
//! unless a Status went out within it (the controller counts a Status as a
//! sign of life too, so a heartbeat then only costs bandwidth).

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::mqtt::Outgoing;
use crate::ticks::Ticks;

/// Whether the heartbeat due at `now` is skipped: a Status was handed to
/// the broker less than `interval` before.
pub fn skip(status_sent: Option<Instant>, now: Instant, interval: Duration) -> bool {
    status_sent.is_some_and(|at| now.saturating_duration_since(at) < interval)
}

/// Sends [`Outgoing::Heartbeat`] on `outgoing_tx` every `interval` (the
/// first at once) unless [`skip`] says otherwise, until `stop` or until the
/// adapter is gone. `status_sent_rx` carries when a Status was last handed
/// to the broker.
pub async fn run(
    interval: Duration,
    status_sent_rx: watch::Receiver<Option<Instant>>,
    outgoing_tx: mpsc::UnboundedSender<Outgoing>,
    stop: CancellationToken,
) {
    let mut ticks = Ticks::every(interval);
    while ticks.next(&stop).await {
        if skip(*status_sent_rx.borrow(), Instant::now(), interval) {
            debug!("Skipped a heartbeat: a status went out within the heartbeat interval.");
            continue;
        }
        if outgoing_tx.send(Outgoing::Heartbeat).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(10);

    #[test]
    fn a_recent_status_replaces_the_heartbeat() {
        let now = Instant::now();
        assert!(!skip(None, now, INTERVAL), "no status yet");
        assert!(skip(Some(now), now, INTERVAL));
        assert!(skip(Some(now - Duration::from_secs(9)), now, INTERVAL));
        assert!(
            !skip(Some(now - INTERVAL), now, INTERVAL),
            "exactly one interval ago"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_go_out_every_interval_unless_a_status_did() {
        let (status_sent_tx, status_sent_rx) = watch::channel(None);
        let (outgoing_tx, mut outgoing_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(INTERVAL, status_sent_rx, outgoing_tx, stop.clone()));
        // The first tick fires at once.
        assert_eq!(outgoing_rx.recv().await, Some(Outgoing::Heartbeat));
        // A status 5 s into the interval covers the tick at 10 s.
        tokio::time::sleep(Duration::from_secs(5)).await;
        status_sent_tx.send_replace(Some(Instant::now()));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(outgoing_rx.try_recv().is_err(), "skipped at 10 s");
        // At 20 s the status is 15 s old: a heartbeat goes out.
        assert_eq!(outgoing_rx.recv().await, Some(Outgoing::Heartbeat));
        stop.cancel();
        task.await.expect("the task ends on stop");
    }
}
