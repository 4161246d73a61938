//! Learning which nodes are alive when the controller (re)connects: it
//! calls every agent to announce itself (one signed [`AnnounceRequest`] on
//! `{prefix}/announce`), and a node that has not answered within
//! `nodes.announce_timeout` is not responding (the node registry part's
//! health), so its replicas move after the failover grace instead of the
//! whole heartbeat timeout.

use std::time::Duration;

use tracing::info;
use verge_shared::Timestamp;
use verge_shared::announce::{self, AnnounceRequest, MAX_SPREAD_MS};
use verge_shared::messages::SCHEMA_VERSION;

use super::composition::App;
use super::types::Outgoing;

/// The window agents spread their answers over: the first third of the
/// answer's deadline, leaving the rest for delivery.
fn spread(announce_timeout: Duration) -> u32 {
    u32::try_from((announce_timeout / 3).as_millis())
        .unwrap_or(MAX_SPREAD_MS)
        .min(MAX_SPREAD_MS)
}

impl App {
    /// Calls every agent to announce itself (on every connection to the
    /// broker); nodes that do not answer within `nodes.announce_timeout`
    /// of `now` are not responding.
    pub fn ask_to_announce(&self, now: Timestamp) {
        let request = AnnounceRequest {
            schema_version: SCHEMA_VERSION,
            issued_at: now,
            expires_at: now.saturating_add(Duration::from_secs(announce::VALID_FOR_SECS)),
            spread_ms: spread(self.settings.nodes.announce_timeout),
        };
        self.nodes.asked_to_announce(now);
        let payload = self.key.sign_json(announce::PAYLOAD_TYPE, &request);
        let sent = self.send(
            "announce",
            Outgoing {
                topic: self.settings.topics.announce(),
                payload,
                retain: false,
            },
        );
        if sent {
            info!(spread_ms = request.spread_ms, timeout = ?self.settings.nodes.announce_timeout, "Called every agent to announce itself.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_answer_within_a_third_of_the_deadline_and_never_beyond_the_protocols_bound() {
        assert_eq!(spread(Duration::from_secs(30)), 10_000);
        assert_eq!(spread(Duration::from_secs(3)), 1_000);
        assert_eq!(spread(Duration::from_secs(600)), MAX_SPREAD_MS);
    }
}
