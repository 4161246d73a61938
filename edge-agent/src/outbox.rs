//! The disk outbox: status, telemetry and other reports wait here, in order, until
//! the broker acknowledges them (QoS 1 PUBACK), across outages and restarts.
//!
//! Entries live in one sled tree next to the agent's state, under
//! `q` + big-endian key, so iteration order is production order. Two
//! counters live in the same tree and change in the same batch as the entry
//! they belong to: the last entry key and the last message sequence number
//! (the `seq` consumers see in telemetry). The tree is bounded by
//! a byte quota: when a new entry does not fit, the oldest entries are
//! dropped and counted (the count is persisted and reported in telemetry).
//!
//! A push is flushed before it returns, so a message the agent produced
//! survives a power cut. Removing an acknowledged entry is not flushed at
//! once: after a crash it may be sent a second time, which QoS 1 allows and
//! consumers detect by `seq`.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;
use verge_shared::telemetry::OutboxMetrics;

const ENTRY_PREFIX: u8 = b'q';
const KEY_LAST_KEY: &[u8] = b"m/last-key";
const KEY_LAST_SEQ: &[u8] = b"m/last-seq";
const KEY_DROPPED: &[u8] = b"m/dropped";

/// Why the outbox could not take or give back a message.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox at {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("outbox at {path}: entry {key} is corrupt: {detail}")]
    Corrupt {
        path: PathBuf,
        key: u64,
        detail: String,
    },
    #[error(
        "outbox: a {size}-byte message on {topic} is larger than the whole quota of {quota} bytes"
    )]
    TooLarge {
        topic: String,
        size: u64,
        quota: u64,
    },
}

impl OutboxError {
    /// Did the write fail because the file system is full?
    pub fn is_disk_full(&self) -> bool {
        matches!(self, OutboxError::Store { source: sled::Error::Io(e), .. }
            if crate::disk::is_no_space(e))
    }
}

/// One queued message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the outbox; grows by one per entry.
    pub key: u64,
    pub topic: String,
    pub payload: Bytes,
}

#[derive(Debug, Default)]
struct Counters {
    last_key: u64,
    last_seq: u64,
    dropped: u64,
    queued: u64,
    queued_bytes: u64,
}

/// The outbox over a sled tree, bounded by `quota` bytes.
pub struct Outbox {
    db: sled::Db,
    tree: sled::Tree,
    path: PathBuf,
    quota: u64,
    counters: Mutex<Counters>,
    pushed: Notify,
}

fn entry_key(key: u64) -> [u8; 9] {
    let mut out = [ENTRY_PREFIX; 9];
    out[1..].copy_from_slice(&key.to_be_bytes());
    out
}

fn read_u64(value: Option<sled::IVec>) -> u64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes)
}

/// `[topic length: u16 BE][topic][payload]`.
fn encode(topic: &str, payload: &[u8]) -> Vec<u8> {
    let topic_len = u16::try_from(topic.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(2 + topic.len() + payload.len());
    out.extend_from_slice(&topic_len.to_be_bytes());
    out.extend_from_slice(&topic.as_bytes()[..usize::from(topic_len)]);
    out.extend_from_slice(payload);
    out
}

fn decode(key: u64, value: &[u8]) -> Result<Entry, String> {
    let (len, rest) = value.split_at_checked(2).ok_or("shorter than its header")?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let (topic, payload) = rest.split_at_checked(len).ok_or("shorter than its topic")?;
    let topic = std::str::from_utf8(topic).map_err(|e| format!("topic: {e}"))?;
    Ok(Entry {
        key,
        topic: topic.to_owned(),
        payload: Bytes::copy_from_slice(payload),
    })
}

impl Outbox {
    /// Opens the outbox tree `outbox` of `db` (whose files live at `path`)
    /// and counts what it holds.
    pub fn open(db: &sled::Db, path: PathBuf, quota: u64) -> Result<Self, OutboxError> {
        let fail = |source| OutboxError::Store {
            path: path.clone(),
            source,
        };
        let tree = db.open_tree("outbox").map_err(fail)?;
        let mut counters = Counters {
            last_key: read_u64(tree.get(KEY_LAST_KEY).map_err(fail)?),
            last_seq: read_u64(tree.get(KEY_LAST_SEQ).map_err(fail)?),
            dropped: read_u64(tree.get(KEY_DROPPED).map_err(fail)?),
            ..Counters::default()
        };
        for item in tree.scan_prefix([ENTRY_PREFIX]) {
            let (_, value) = item.map_err(fail)?;
            counters.queued += 1;
            counters.queued_bytes += value.len() as u64;
        }
        Ok(Self {
            db: db.clone(),
            tree,
            path,
            quota,
            counters: Mutex::new(counters),
            pushed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Counters> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn store_error(&self, source: sled::Error) -> OutboxError {
        OutboxError::Store {
            path: self.path.clone(),
            source,
        }
    }

    /// Queues `payload` for `topic`; durable when this returns.
    pub fn push(&self, topic: &str, payload: &[u8]) -> Result<(), OutboxError> {
        self.insert(topic, |_| payload.to_vec(), false).map(drop)
    }

    /// Queues a message numbered with the next sequence number, which
    /// `build` writes into the payload; returns that number. `build` runs
    /// under the outbox's lock: it must not call back into the outbox.
    pub fn push_numbered(
        &self,
        topic: &str,
        build: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64, OutboxError> {
        self.insert(topic, build, true)
    }

    fn insert(
        &self,
        topic: &str,
        build: impl FnOnce(u64) -> Vec<u8>,
        numbered: bool,
    ) -> Result<u64, OutboxError> {
        let mut c = self.lock();
        let seq = if numbered { c.last_seq + 1 } else { c.last_seq };
        let value = encode(topic, &build(seq));
        let size = value.len() as u64;
        if size > self.quota {
            return Err(OutboxError::TooLarge {
                topic: topic.to_owned(),
                size,
                quota: self.quota,
            });
        }
        let key = c.last_key + 1;
        let mut batch = sled::Batch::default();
        // Drop the oldest entries until the new one fits.
        let mut freed = 0u64;
        let mut n_dropped = 0u64;
        if c.queued_bytes + size > self.quota {
            for item in self.tree.scan_prefix([ENTRY_PREFIX]) {
                if c.queued_bytes - freed + size <= self.quota {
                    break;
                }
                let (k, v) = item.map_err(|e| self.store_error(e))?;
                batch.remove(k);
                freed += v.len() as u64;
                n_dropped += 1;
            }
        }
        batch.insert(&entry_key(key)[..], value);
        batch.insert(KEY_LAST_KEY, &key.to_be_bytes()[..]);
        batch.insert(KEY_LAST_SEQ, &seq.to_be_bytes()[..]);
        if n_dropped > 0 {
            batch.insert(KEY_DROPPED, &(c.dropped + n_dropped).to_be_bytes()[..]);
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| self.store_error(e))?;
        self.db.flush().map_err(|e| self.store_error(e))?;
        c.last_key = key;
        c.last_seq = seq;
        c.dropped += n_dropped;
        c.queued = c.queued + 1 - n_dropped;
        c.queued_bytes = c.queued_bytes - freed + size;
        drop(c);
        if n_dropped > 0 {
            tracing::warn!(
                n_dropped,
                quota = self.quota,
                "The outbox dropped its oldest messages to stay within its quota."
            );
        }
        self.pushed.notify_one();
        Ok(seq)
    }

    /// Up to `max` entries from `from` (inclusive), oldest first.
    pub fn entries_from(&self, from: u64, max: usize) -> Result<Vec<Entry>, OutboxError> {
        let mut out = Vec::new();
        for item in self.tree.range(entry_key(from)..=entry_key(u64::MAX)) {
            if out.len() >= max {
                break;
            }
            let (k, v) = item.map_err(|e| self.store_error(e))?;
            let key = <[u8; 8]>::try_from(&k[1..]).map_or(0, u64::from_be_bytes);
            let entry = decode(key, &v).map_err(|detail| OutboxError::Corrupt {
                path: self.path.clone(),
                key,
                detail,
            })?;
            out.push(entry);
        }
        Ok(out)
    }

    /// The key of the oldest queued entry, or the one the next push gets.
    pub fn first_key(&self) -> u64 {
        let next = self.lock().last_key + 1;
        match self.tree.scan_prefix([ENTRY_PREFIX]).next() {
            Some(Ok((k, _))) => <[u8; 8]>::try_from(&k[1..]).map_or(next, u64::from_be_bytes),
            _ => next,
        }
    }

    /// Removes an entry the broker acknowledged; a no-op if it is gone
    /// (dropped over quota, or acknowledged twice).
    pub fn ack(&self, key: u64) -> Result<(), OutboxError> {
        let mut c = self.lock();
        let removed = self
            .tree
            .remove(entry_key(key))
            .map_err(|e| self.store_error(e))?;
        if let Some(v) = removed {
            c.queued -= 1;
            c.queued_bytes -= v.len() as u64;
        }
        Ok(())
    }

    /// Resolves after the next push (or at once if one happened unobserved).
    pub async fn pushed(&self) {
        self.pushed.notified().await;
    }

    pub fn metrics(&self) -> OutboxMetrics {
        let c = self.lock();
        OutboxMetrics {
            queued: c.queued,
            queued_bytes: c.queued_bytes,
            dropped: c.dropped,
        }
    }

    /// The last sequence number given to a numbered message.
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path, quota: u64) -> (sled::Db, Outbox) {
        // A dropped sled Db lets go of its file lock only when its flusher
        // thread ends, which on a loaded machine can be after the drop
        // returns: a reopen waits for it, up to a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let db = loop {
            match sled::Config::new().path(dir.join("state")).open() {
                Ok(db) => break db,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("open db: {e}"),
            }
        };
        let outbox = Outbox::open(&db, dir.join("state"), quota).expect("outbox");
        (db, outbox)
    }

    fn topics(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.topic.as_str()).collect()
    }

    #[test]
    fn entries_come_back_in_order_until_acknowledged_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (_db, outbox) = open(dir.path(), 1 << 20);
            outbox.push("a", b"1").expect("push");
            let seq = outbox
                .push_numbered("b", |seq| seq.to_string().into_bytes())
                .expect("push");
            assert_eq!(seq, 1);
            outbox.push("c", b"3").expect("push");
            let all = outbox.entries_from(outbox.first_key(), 10).expect("read");
            assert_eq!(topics(&all), ["a", "b", "c"]);
            assert_eq!(all[1].payload.as_ref(), b"1");
            outbox.ack(all[0].key).expect("ack");
            outbox.ack(all[0].key).expect("a second ack is harmless");
            assert_eq!(outbox.metrics().queued, 2);
        }
        let (_db, outbox) = open(dir.path(), 1 << 20);
        let rest = outbox.entries_from(outbox.first_key(), 10).expect("read");
        assert_eq!(topics(&rest), ["b", "c"]);
        assert_eq!(outbox.metrics().queued, 2);
        // Numbering continues where it stopped.
        assert_eq!(outbox.push_numbered("d", |_| Vec::new()).expect("push"), 2);
        assert_eq!(
            outbox
                .entries_from(rest[1].key + 1, 10)
                .expect("read")
                .len(),
            1
        );
    }

    #[test]
    fn quota_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Each entry is 2 + 1 + 100 bytes; three fit in 400.
        let (_db, outbox) = open(dir.path(), 400);
        for topic in ["a", "b", "c", "d", "e"] {
            outbox.push(topic, &[0u8; 100]).expect("push");
        }
        let kept = outbox.entries_from(0, 10).expect("read");
        assert_eq!(topics(&kept), ["c", "d", "e"]);
        let m = outbox.metrics();
        assert_eq!((m.queued, m.queued_bytes, m.dropped), (3, 309, 2));
        let err = outbox.push("big", &[0u8; 500]).expect_err("too large");
        assert!(err.to_string().contains("big"), "{err}");
    }
}
