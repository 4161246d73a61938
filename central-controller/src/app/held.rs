//! The held-messages part: signed messages from agents whose presence has
//! not been processed yet, kept so that they are handled right after it.
//!
//! An agent publishes its presence before anything else on every
//! connection, but a broker does not keep the order between topics (nor
//! between QoS 0 and QoS 1): the embedded broker hands each subscription's
//! messages over separately, so a new agent's first heartbeat or status
//! often arrives before the presence that pins its key. Such a message is
//! held here instead of being refused, and replayed once the presence is in.
//!
//! Bounded three ways: [`PER_AGENT`] messages per agent, [`MAX_HELD`]
//! messages and [`MAX_HELD_BYTES`] bytes in all; a message is kept at most
//! [`HOLD_FOR`]. Beyond a bound a message is refused as before (reason
//! `unknown_agent`); an expired one is counted with reason `held_expired`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use verge_shared::{AgentId, Timestamp};

use super::types::lock;

/// Most messages held for one agent (a presence normally follows within
/// milliseconds: a heartbeat, a status and a few outbox reports).
pub(super) const PER_AGENT: usize = 16;
/// Most messages held in all.
pub(super) const MAX_HELD: usize = 8192;
/// Most payload bytes held in all.
pub(super) const MAX_HELD_BYTES: usize = 16 << 20;
/// How long a message waits for its agent's presence.
pub(super) const HOLD_FOR: Duration = Duration::from_secs(30);

/// One message waiting for its agent's presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct HeldMessage {
    pub(super) agent: AgentId,
    pub(super) topic: String,
    pub(super) payload: Vec<u8>,
    /// When it arrived, for the hold time.
    pub(super) received: Timestamp,
}

#[derive(Default)]
struct Inner {
    /// In arrival order, so the oldest expire first.
    queue: VecDeque<HeldMessage>,
    per_agent: HashMap<AgentId, usize>,
    bytes: usize,
}

impl Inner {
    fn forget(&mut self, message: &HeldMessage) {
        self.bytes -= message.payload.len();
        if let Some(n) = self.per_agent.get_mut(&message.agent) {
            *n -= 1;
            if *n == 0 {
                self.per_agent.remove(&message.agent);
            }
        }
    }

    /// Drops what has waited [`HOLD_FOR`]; returns how many.
    fn expire(&mut self, now: Timestamp) -> usize {
        let mut n = 0;
        while let Some(front) = self.queue.front() {
            if now.saturating_since(front.received) < HOLD_FOR {
                break;
            }
            if let Some(old) = self.queue.pop_front() {
                self.forget(&old);
                n += 1;
            }
        }
        n
    }
}

/// What [`Held::hold`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct HoldOutcome {
    /// Whether the message is now held (false: a bound is reached).
    pub(super) held: bool,
    /// How many older messages expired meanwhile.
    pub(super) expired: usize,
}

/// Messages waiting for their agents' presence, under one lock.
#[derive(Default)]
pub(super) struct Held {
    inner: Mutex<Inner>,
}

impl Held {
    /// Keeps `message` until its agent's presence, unless a bound is reached.
    pub(super) fn hold(&self, message: HeldMessage) -> HoldOutcome {
        let mut inner = lock(&self.inner);
        let expired = inner.expire(message.received);
        let for_agent = inner.per_agent.get(&message.agent).copied().unwrap_or(0);
        let room = for_agent < PER_AGENT
            && inner.queue.len() < MAX_HELD
            && inner.bytes + message.payload.len() <= MAX_HELD_BYTES;
        if room {
            inner.bytes += message.payload.len();
            *inner.per_agent.entry(message.agent.clone()).or_insert(0) += 1;
            inner.queue.push_back(message);
        }
        HoldOutcome {
            held: room,
            expired,
        }
    }

    /// Takes `agent`'s held messages, oldest first (none unless some are held).
    pub(super) fn take(&self, agent: &AgentId) -> Vec<HeldMessage> {
        let mut inner = lock(&self.inner);
        if !inner.per_agent.contains_key(agent) {
            return Vec::new();
        }
        let (mine, others): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut inner.queue)
            .into_iter()
            .partition(|m| &m.agent == agent);
        inner.queue = others;
        for message in &mine {
            inner.forget(message);
        }
        mine.into()
    }

    /// Drops what has waited too long by `now`; returns how many.
    pub(super) fn expire(&self, now: Timestamp) -> usize {
        lock(&self.inner).expire(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(agent: &str, at_ms: u64, bytes: usize) -> HeldMessage {
        HeldMessage {
            agent: AgentId::new(agent).expect("id"),
            topic: format!("verge/v1/agents/{agent}/heartbeat"),
            payload: vec![0; bytes],
            received: Timestamp::from_unix_millis(at_ms),
        }
    }

    #[test]
    fn held_messages_come_back_in_order_once_and_only_for_their_agent() {
        let held = Held::default();
        for (agent, at) in [("a", 1), ("b", 2), ("a", 3)] {
            assert!(held.hold(message(agent, at, 10)).held);
        }
        let a = AgentId::new("a").expect("id");
        let taken: Vec<u64> = held
            .take(&a)
            .iter()
            .map(|m| m.received.unix_millis())
            .collect();
        assert_eq!(taken, [1, 3]);
        assert!(held.take(&a).is_empty(), "taken once");
        assert_eq!(held.take(&AgentId::new("b").expect("id")).len(), 1);
    }

    #[test]
    fn the_bounds_refuse_and_old_messages_expire() {
        let held = Held::default();
        for i in 0..PER_AGENT {
            assert!(held.hold(message("a", i as u64, 1)).held);
        }
        assert!(!held.hold(message("a", 100, 1)).held, "per-agent bound");
        assert!(
            held.hold(message("b", 100, 1)).held,
            "another agent has room"
        );
        assert!(
            !held.hold(message("c", 100, MAX_HELD_BYTES)).held,
            "byte bound"
        );
        let later = HOLD_FOR.as_millis() as u64 + 50;
        let outcome = held.hold(message("d", later, 1));
        assert_eq!(
            outcome,
            HoldOutcome {
                held: true,
                expired: PER_AGENT
            },
            "a's messages are older than the hold"
        );
        assert!(held.take(&AgentId::new("a").expect("id")).is_empty());
        assert_eq!(held.expire(Timestamp::from_unix_millis(later * 10)), 2);
    }
}
