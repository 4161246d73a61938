//! Disk space: recognising "no space left" errors, the free space of the
//! data directory's file system, and the reserve the artifact cache leaves
//! for the agent's own state (docs/storage.md#disk-full).

use std::path::Path;

/// What the artifact cache leaves free for the agent's state, outbox and
/// workload records: a download that would eat into it is refused up front
/// instead of filling the disk to the last byte.
pub const RESERVE_BYTES: u64 = 4 * 1024 * 1024;

/// Did this I/O error happen because the file system is full? sled hands
/// out copies of its first write error with the kind only (no OS code).
pub fn is_no_space(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(nix::libc::ENOSPC)
        || error.kind() == std::io::ErrorKind::StorageFull
}

/// Bytes an unprivileged process can still write on the file system that
/// holds `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    total_and_free_bytes(path).map(|(_, free)| free)
}

/// The size of the file system that holds `path`, and what an
/// unprivileged process can still write on it, in bytes.
pub fn total_and_free_bytes(path: &Path) -> std::io::Result<(u64, u64)> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok((
        stat.blocks().saturating_mul(stat.fragment_size()),
        stat.blocks_available().saturating_mul(stat.fragment_size()),
    ))
}

/// Why `need` more bytes cannot be written under `dir`, or `None` when they
/// fit and leave [`RESERVE_BYTES`] free. A free-space figure that cannot be
/// read counts as fitting: the write itself will tell.
pub fn shortage(dir: &Path, need: u64) -> Option<String> {
    let free = free_bytes(dir).ok()?;
    (free < need.saturating_add(RESERVE_BYTES)).then(|| {
        format!(
            "{need} bytes are needed in {}, but only {free} are free and {RESERVE_BYTES} are kept in reserve",
            dir.display()
        )
    })
}

/// After a store write failed for lack of space: has the space come back
/// while the store still refuses? sled keeps the first I/O error of its log
/// and fails every later write with it, even once there is room again
/// (docs/storage.md#disk-full), so only a new agent process can write: the
/// caller ends its task, which stops the agent (workloads keep running and
/// are adopted), and the service manager starts it again.
pub fn store_stuck(data_dir: &Path) -> bool {
    let stuck = free_bytes(data_dir).is_ok_and(|free| free >= RESERVE_BYTES);
    if stuck {
        tracing::error!(data_dir = %data_dir.display(), "The state store still fails with \"no space left\" although space has returned (sled keeps its first write error); stopping so that a restart opens it afresh.");
    }
    stuck
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortage_counts_the_reserve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = free_bytes(dir.path()).expect("statvfs");
        assert!(free > 0);
        assert_eq!(shortage(dir.path(), 0).is_some(), free < RESERVE_BYTES);
        let too_much = shortage(dir.path(), free).expect("free space plus the reserve never fits");
        assert!(too_much.contains("kept in reserve"), "{too_much}");
    }

    #[test]
    fn enospc_is_recognised() {
        assert!(is_no_space(&std::io::Error::from_raw_os_error(
            nix::libc::ENOSPC
        )));
        assert!(!is_no_space(&std::io::Error::from_raw_os_error(
            nix::libc::EACCES
        )));
        assert!(!is_no_space(&std::io::Error::other("x")));
        // How sled repeats its first error on every later write.
        assert!(is_no_space(&std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "Os { code: 28 }"
        )));
    }
}
