//! The simulated broker: messages in flight with the time they arrive,
//! the retained copy of each topic, and who is connected. What it loses,
//! repeats or delays is decided by the seeded [`Faults`].

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng as _;
use rand_chacha::ChaCha8Rng;

/// A client of the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    Controller,
    /// An agent, by its index in the fleet.
    Agent(usize),
}

/// How badly the network behaves while faults are on.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Chance that a message is lost.
    pub drop: f64,
    /// Chance that a message arrives twice.
    pub duplicate: f64,
    /// The longest extra delay, drawn uniformly per message; messages
    /// overtake each other within it.
    pub max_delay: Duration,
}

impl Faults {
    /// A network that delivers everything once, in order, in 5 ms.
    pub const NONE: Faults = Faults {
        drop: 0.0,
        duplicate: 0.0,
        max_delay: Duration::ZERO,
    };
}

/// One message on its way to `to`.
#[derive(Clone, Debug)]
pub struct Message {
    pub to: Peer,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// How many messages the broker handled, for the run's summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub published: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub duplicated: u64,
    /// Lost because the receiver was not connected when they arrived.
    pub undeliverable: u64,
}

/// The broker between the controller and the agents.
#[derive(Debug)]
pub struct Broker {
    /// Its own stream of the seed's randomness: what it loses or delays.
    rng: ChaCha8Rng,
    pub faults: Faults,
    /// By arrival time, then by the order they were sent.
    in_flight: BTreeMap<(Duration, u64), Message>,
    retained: BTreeMap<String, Vec<u8>>,
    sent: u64,
    pub counts: Counts,
}

/// Every message takes at least this long.
const BASE_DELAY: Duration = Duration::from_millis(5);

impl Broker {
    pub fn new(rng: ChaCha8Rng, faults: Faults) -> Self {
        Self {
            rng,
            faults,
            in_flight: BTreeMap::new(),
            retained: BTreeMap::new(),
            sent: 0,
            counts: Counts::default(),
        }
    }

    /// Sends `payload` on `topic` to each of `to` at `now`, keeping it as the
    /// topic's retained copy when `retain` is set (the retained copy itself
    /// is never lost).
    pub fn publish(
        &mut self,
        now: Duration,
        to: &[Peer],
        topic: &str,
        payload: &[u8],
        retain: bool,
    ) {
        self.counts.published += 1;
        if retain {
            self.retained.insert(topic.to_owned(), payload.to_vec());
        }
        for peer in to {
            let copies = if self.rng.gen_bool(self.faults.drop) {
                self.counts.dropped += 1;
                0
            } else if self.rng.gen_bool(self.faults.duplicate) {
                self.counts.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let extra = if self.faults.max_delay.is_zero() {
                    Duration::ZERO
                } else {
                    self.rng.gen_range(Duration::ZERO..self.faults.max_delay)
                };
                self.sent += 1;
                self.in_flight.insert(
                    (now + BASE_DELAY + extra, self.sent),
                    Message {
                        to: *peer,
                        topic: topic.to_owned(),
                        payload: payload.to_vec(),
                    },
                );
            }
        }
    }

    /// The retained copies whose topic `wanted` accepts, for a client that
    /// has just subscribed: they arrive right after `now`.
    pub fn deliver_retained(&mut self, now: Duration, to: Peer, wanted: impl Fn(&str) -> bool) {
        let copies: Vec<(String, Vec<u8>)> = self
            .retained
            .iter()
            .filter(|(topic, _)| wanted(topic))
            .map(|(t, p)| (t.clone(), p.clone()))
            .collect();
        for (topic, payload) in copies {
            self.sent += 1;
            self.in_flight.insert(
                (now + BASE_DELAY, self.sent),
                Message { to, topic, payload },
            );
        }
    }

    /// The next message due at or before `until`, if any.
    pub fn next_due(&mut self, until: Duration) -> Option<(Duration, Message)> {
        let (&(at, seq), _) = self.in_flight.first_key_value()?;
        if at > until {
            return None;
        }
        let message = self.in_flight.remove(&(at, seq))?;
        self.counts.delivered += 1;
        Some((at, message))
    }

    /// Forgets every message in flight to `peer` (its connection dropped).
    pub fn drop_in_flight(&mut self, peer: Peer) {
        let before = self.in_flight.len();
        self.in_flight.retain(|_, m| m.to != peer);
        self.counts.undeliverable += (before - self.in_flight.len()) as u64;
    }
}
