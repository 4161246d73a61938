//! The announce task: answers the controller's signed call to announce
//! (`{prefix}/announce`, [`verge_shared::announce`]) with a presence, a
//! status and a heartbeat, after a random delay below the request's spread
//! so that a large fleet does not answer in the same instant.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ring::rand::SecureRandom as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use verge_shared::Timestamp;
use verge_shared::announce::AnnounceRequest;

use crate::mqtt::Outgoing;
use crate::trust::TrustStore;

/// Answers each new announce request on `requests_rx` (only the latest
/// matters) once, until `stop` or until the MQTT adapter is gone.
pub async fn run(
    trust: Arc<TrustStore>,
    mut requests_rx: watch::Receiver<Option<Bytes>>,
    outgoing_tx: mpsc::UnboundedSender<Outgoing>,
    stop: CancellationToken,
) {
    let rng = ring::rand::SystemRandom::new();
    let mut last: Option<Timestamp> = None;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            changed = requests_rx.changed() => if changed.is_err() { break },
        }
        let Some(bytes) = requests_rx.borrow_and_update().clone() else {
            continue;
        };
        let request =
            match AnnounceRequest::open(&bytes, &trust.controller_keys(), Timestamp::now(), last) {
                Ok(request) => request,
                Err(reason) => {
                    warn!(reason = %reason, "Ignored an announce request.");
                    continue;
                }
            };
        last = Some(request.issued_at);
        let delay = spread(&rng, request.spread_ms);
        debug!(delay = ?delay, "Announcing after a random delay, as the controller asked.");
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
        if outgoing_tx.send(Outgoing::Announce).is_err() {
            break;
        }
    }
}

/// A uniformly random delay below `spread_ms` milliseconds (none when the
/// random source fails: answering at once is still correct).
fn spread(rng: &ring::rand::SystemRandom, spread_ms: u32) -> Duration {
    let mut bytes = [0u8; 4];
    match rng.fill(&mut bytes) {
        Ok(()) if spread_ms > 0 => {
            Duration::from_millis(u64::from(u32::from_le_bytes(bytes) % spread_ms))
        }
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_stays_below_the_spread() {
        let rng = ring::rand::SystemRandom::new();
        assert_eq!(spread(&rng, 0), Duration::ZERO);
        for _ in 0..200 {
            assert!(spread(&rng, 250) < Duration::from_millis(250));
        }
    }
}
