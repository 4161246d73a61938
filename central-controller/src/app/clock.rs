//! The app's clock: every decision that depends on time (node health,
//! failover grace, heartbeat timeout, token expiry, desired-state lifetimes)
//! reads it here, so tests can move time by hand instead of waiting.

use std::sync::Mutex;
use std::time::Duration;

use verge_shared::Timestamp;

use super::types::lock;

/// Where the app reads the time from.
pub trait Clock: Send + Sync {
    /// The current time. [`SystemClock`] follows the wall clock (which may
    /// step); [`ManualClock`] never goes back.
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to: for tests and simulations.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = lock(&self.now);
        *now = now.saturating_add(by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *lock(&self.now)
    }
}
