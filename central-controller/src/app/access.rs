//! The access part: failed sign-ins throttled per source, the audit log's
//! sequence, and the bound on password hashes computed at once.
//!
//! The throttle is keyed by the client's address (an IPv6 client by its
//! /64, which one host usually owns whole), so an attacker who locks
//! itself out locks out nobody else. A source may fail [`FREE_FAILURES`]
//! times; after that each failure doubles its wait, up to [`MAX_WAIT`]. A
//! source quiet for [`FORGET_AFTER`] starts over. A success clears nothing:
//! otherwise anyone holding one valid token could reset their count between
//! guesses at another.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Semaphore;
use verge_shared::Timestamp;

use super::types::lock;

/// Failed attempts a source may make before it has to wait.
pub const FREE_FAILURES: u32 = 5;
/// The longest a source is made to wait.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// A source quiet this long starts over.
pub const FORGET_AFTER: Duration = Duration::from_secs(900);
/// Sources remembered at once; when full, the longest quiet is forgotten.
const MAX_SOURCES: usize = 65_536;
/// Password hashes computed at once (each takes about 19 MiB and tens of
/// milliseconds of one core).
const MAX_HASHING: usize = 2;

/// Where a request came from, as the throttle counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    V4([u8; 4]),
    /// The /64 prefix.
    V6([u8; 8]),
    /// No address known (a request not from a socket, in tests).
    Unknown,
}

impl Source {
    pub fn of(address: Option<IpAddr>) -> Self {
        match address.map(|a| a.to_canonical()) {
            Some(IpAddr::V4(v4)) => Source::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                Source::V6(prefix)
            }
            None => Source::Unknown,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Timestamp,
    /// No attempt is looked at before this time.
    until: Timestamp,
}

/// Failed attempts per source.
#[derive(Debug, Default)]
pub(super) struct Throttle {
    sources: HashMap<Source, Failures>,
}

impl Throttle {
    /// `Err(wait)` while `source` must wait before its next attempt.
    pub(super) fn check(&mut self, source: Source, now: Timestamp) -> Result<(), Duration> {
        let Some(failures) = self.sources.get(&source) else {
            return Ok(());
        };
        if now >= failures.last.saturating_add(FORGET_AFTER) {
            self.sources.remove(&source);
            return Ok(());
        }
        match failures.until.saturating_since(now) {
            Duration::ZERO => Ok(()),
            // Whole seconds, rounded up, as Retry-After gives them.
            wait => Err(Duration::from_secs(wait.as_millis().div_ceil(1000) as u64)),
        }
    }

    /// Counts a failed attempt from `source`.
    pub(super) fn failed(&mut self, source: Source, now: Timestamp) {
        if !self.sources.contains_key(&source) && self.sources.len() >= MAX_SOURCES {
            self.make_room(now);
        }
        let entry = self.sources.entry(source).or_insert(Failures {
            count: 0,
            last: now,
            until: now,
        });
        if now >= entry.last.saturating_add(FORGET_AFTER) {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        entry.until = now.saturating_add(wait_after(entry.count));
    }

    fn make_room(&mut self, now: Timestamp) {
        self.sources
            .retain(|_, f| now < f.last.saturating_add(FORGET_AFTER));
        if self.sources.len() >= MAX_SOURCES
            && let Some(quietest) = self
                .sources
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(s, _)| *s)
        {
            self.sources.remove(&quietest);
        }
    }
}

/// The wait after the `count`th failure in a row.
fn wait_after(count: u32) -> Duration {
    match count.checked_sub(FREE_FAILURES) {
        None => Duration::ZERO,
        Some(over) => Duration::from_secs(1u64 << over.min(16)).min(MAX_WAIT),
    }
}

/// The part's state.
pub(super) struct Access {
    pub(super) throttle: Mutex<Throttle>,
    /// The `seq` of the last audit entry written (`None` before the first
    /// append reads it from the store). Appends are serialised under it.
    pub(super) audit_seq: Mutex<Option<u64>>,
    pub(super) hashing: Semaphore,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            throttle: Mutex::default(),
            audit_seq: Mutex::default(),
            hashing: Semaphore::new(MAX_HASHING),
        }
    }
}

impl Access {
    pub(super) fn check(&self, source: Source, now: Timestamp) -> Result<(), Duration> {
        lock(&self.throttle).check(source, now)
    }

    pub(super) fn failed(&self, source: Source, now: Timestamp) {
        lock(&self.throttle).failed(source, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_millis(1_000_000_000 + secs * 1000)
    }

    const A: Source = Source::V4([10, 0, 0, 1]);
    const B: Source = Source::V4([10, 0, 0, 2]);

    #[test]
    fn free_failures_then_doubling_waits_per_source() {
        let mut t = Throttle::default();
        for _ in 0..FREE_FAILURES - 1 {
            t.failed(A, at(0));
            assert_eq!(t.check(A, at(0)), Ok(()));
        }
        t.failed(A, at(0));
        assert_eq!(t.check(A, at(0)), Err(Duration::from_secs(1)));
        assert_eq!(t.check(B, at(0)), Ok(()), "another source is untouched");
        assert_eq!(t.check(A, at(1)), Ok(()));
        t.failed(A, at(1));
        assert_eq!(t.check(A, at(1)), Err(Duration::from_secs(2)));
        for _ in 0..40 {
            t.failed(A, at(2));
        }
        assert_eq!(t.check(A, at(2)), Err(MAX_WAIT));
    }

    #[test]
    fn a_quiet_source_starts_over() {
        let mut t = Throttle::default();
        for _ in 0..FREE_FAILURES + 3 {
            t.failed(A, at(0));
        }
        assert!(t.check(A, at(1)).is_err());
        let later = FORGET_AFTER.as_secs() + 1;
        assert_eq!(t.check(A, at(later)), Ok(()));
        t.failed(A, at(later));
        assert_eq!(t.check(A, at(later)), Ok(()), "the count started over");
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("address");
        let same_net: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("address");
        let other_net: IpAddr = "2001:db8:1:3::1".parse().expect("address");
        assert_eq!(Source::of(Some(one)), Source::of(Some(same_net)));
        assert_ne!(Source::of(Some(one)), Source::of(Some(other_net)));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("address");
        assert_eq!(Source::of(Some(mapped)), A);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = Throttle::default();
        for i in 0..(MAX_SOURCES as u32 + 10) {
            t.failed(Source::V4(i.to_be_bytes()), at(u64::from(i % 100)));
        }
        assert!(t.sources.len() <= MAX_SOURCES);
    }
}
