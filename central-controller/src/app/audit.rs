//! The audit log: one entry per mutation and per refused authentication,
//! kept within `[audit]`'s bounds, listed newest first with filters.
//!
//! Entries are numbered without gaps (`seq`), so the number kept is the
//! newest `seq` minus the oldest; pruning by count is one range delete, and
//! pruning by age looks only at the oldest entries.

use std::time::Duration;

use tracing::warn;
use verge_shared::Timestamp;

use super::composition::App;
use super::error::AppError;
use super::types::lock;
use crate::store::{AuditEntry, AuditRecord};

/// Most entries one page returns.
pub const MAX_AUDIT_PAGE: usize = 1000;
/// Most entries one listing looks at; a sparse filter gets a cursor to go on.
const MAX_SCAN: usize = 10_000;
/// Entries read from the store at a time while listing.
const CHUNK: usize = 256;
/// Retention is enforced every this many appends (and at the first).
const PRUNE_EVERY: u64 = 64;
/// Old entries removed by age in one pass at most (more than
/// `PRUNE_EVERY`, so age pruning keeps up with appends).
const PRUNE_BATCH: usize = 1024;

/// Which entries to list.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// A target and everything under it (`services/web` matches
    /// `services/web/replicas/0/logs` too).
    pub target: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

impl AuditFilter {
    fn matches(&self, r: &AuditRecord) -> bool {
        let e = &r.entry;
        self.actor
            .as_ref()
            .is_none_or(|a| e.actor.as_ref() == Some(a))
            && self.target.as_ref().is_none_or(|t| {
                e.target == *t
                    || e.target
                        .strip_prefix(t.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            && self.until.is_none_or(|until| r.at <= until)
    }
}

/// One page of the audit log, newest first.
#[derive(Clone, Debug)]
pub struct AuditPage {
    pub entries: Vec<AuditRecord>,
    /// Where the next page starts (entries older than this `seq`); `None`
    /// when nothing older matches.
    pub next: Option<u64>,
}

impl App {
    /// Appends an entry. Never fails the request it describes: a store
    /// failure is logged.
    pub fn record_audit(&self, entry: AuditEntry) {
        if let Err(e) = self.append_audit(entry) {
            warn!(error = %e, "An audit entry could not be stored.");
        }
    }

    fn append_audit(&self, entry: AuditEntry) -> Result<(), AppError> {
        let mut last = lock(&self.access.audit_seq);
        let previous = match *last {
            Some(seq) => seq,
            None => self.store.audit_last_seq()?.unwrap_or(0),
        };
        let seq = previous + 1;
        let now = self.clock.now();
        self.store.put_audit(&AuditRecord {
            seq,
            at: now,
            entry,
        })?;
        let first_append = last.is_none();
        *last = Some(seq);
        if first_append || seq.is_multiple_of(PRUNE_EVERY) {
            self.prune_audit(seq, now)?;
        }
        Ok(())
    }

    fn prune_audit(&self, newest: u64, now: Timestamp) -> Result<(), AppError> {
        let bounds = self.settings.audit;
        if newest > bounds.max_records {
            self.store
                .delete_audit_through(newest - bounds.max_records)?;
        }
        let cutoff = Timestamp::from_unix_millis(
            now.unix_millis()
                .saturating_sub(duration_millis(bounds.max_age)),
        );
        let too_old = self
            .store
            .audit_oldest(PRUNE_BATCH)?
            .into_iter()
            .take_while(|r| r.at < cutoff)
            .last();
        if let Some(r) = too_old {
            self.store.delete_audit_through(r.seq)?;
        }
        Ok(())
    }

    /// Up to `limit` entries matching `filter`, older than `before`,
    /// newest first. Looks at no more than 10,000 entries per call; the
    /// page's `next` continues from where it stopped.
    pub fn audit(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<AuditPage, AppError> {
        let limit = limit.clamp(1, MAX_AUDIT_PAGE);
        let mut entries = Vec::new();
        let mut cursor = before;
        let mut scanned = 0;
        loop {
            let chunk = self.store.audit_before(cursor, CHUNK)?;
            let exhausted = chunk.len() < CHUNK;
            for record in chunk {
                scanned += 1;
                cursor = Some(record.seq);
                if filter.since.is_some_and(|since| record.at < since) {
                    return Ok(AuditPage {
                        entries,
                        next: None,
                    });
                }
                if filter.matches(&record) {
                    entries.push(record);
                    if entries.len() == limit {
                        return Ok(AuditPage {
                            entries,
                            next: cursor.filter(|seq| *seq > 1),
                        });
                    }
                }
            }
            if exhausted {
                return Ok(AuditPage {
                    entries,
                    next: None,
                });
            }
            if scanned >= MAX_SCAN {
                return Ok(AuditPage {
                    entries,
                    next: cursor,
                });
            }
        }
    }
}

fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuditConfig;
    use crate::testing::memory_fixture_with;

    fn entry(target: &str) -> AuditEntry {
        AuditEntry {
            actor: Some("otto".into()),
            method: "POST".into(),
            target: target.into(),
            status: 200,
            ..AuditEntry::default()
        }
    }

    fn seqs(page: &AuditPage) -> Vec<u64> {
        page.entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn the_log_keeps_its_bounds_by_count_and_by_age() {
        let mem = memory_fixture_with(|s| {
            s.audit = AuditConfig {
                max_records: 100,
                max_age: Duration::from_secs(3600),
            }
        });
        let app = &mem.fx.app;
        for i in 0..300 {
            app.record_audit(entry(&format!("services/s{i}")));
        }
        let all = app
            .audit(&AuditFilter::default(), None, 1000)
            .expect("list");
        // Pruned every 64 appends: at most 100 plus what came since.
        assert!(all.entries.len() <= 100 + 64, "{}", all.entries.len());
        assert_eq!(all.entries[0].seq, 300, "newest first, numbering goes on");
        assert_eq!(
            all.entries
                .windows(2)
                .filter(|w| w[0].seq != w[1].seq + 1)
                .count(),
            0
        );

        mem.clock.advance(Duration::from_secs(3601));
        for _ in 0..64 {
            app.record_audit(entry("nodes/n1"));
        }
        let left = app
            .audit(&AuditFilter::default(), None, 1000)
            .expect("list");
        assert_eq!(
            seqs(&left),
            (301..=364).rev().collect::<Vec<_>>(),
            "the old ones aged out"
        );
    }

    #[test]
    fn a_sparse_filter_pages_through_without_losing_entries() {
        let mem = memory_fixture_with(|_| {});
        let app = &mem.fx.app;
        for i in 0..12_000u64 {
            let target = if i % 1000 == 0 {
                "nodes/rare"
            } else {
                "services/common"
            };
            app.record_audit(entry(target));
        }
        let filter = AuditFilter {
            target: Some("nodes/rare".into()),
            ..AuditFilter::default()
        };
        let mut found = Vec::new();
        let mut cursor = None;
        for _ in 0..10 {
            let page = app.audit(&filter, cursor, 5).expect("list");
            found.extend(seqs(&page));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let expected: Vec<u64> = (0..12).rev().map(|k| k * 1000 + 1).collect();
        assert_eq!(found, expected);
    }
}
