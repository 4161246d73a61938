//! The durable write rule itself (see the crate documentation): `write`,
//! `write_with_mode`, `create_new`, `commit`, `sync_dir`.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The mode of files written by [`write`](fn@write): readable by everyone, as
/// `std::fs::write` would create them under the usual umask.
pub const PUBLIC: u32 = 0o644;

/// The mode for secrets (keys, tokens): owner only.
pub const PRIVATE: u32 = 0o600;

/// Writes `bytes` to `path` durably with mode [`PUBLIC`].
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with_mode(path, bytes, PUBLIC)
}

/// Writes `bytes` to `path` durably; a new file gets `mode` (before the
/// umask), and so does a replaced one, since the temporary file takes its
/// place.
///
/// After a crash at any point, `path` holds its previous contents or
/// `bytes`; a leftover temporary file (a dot file next to it) is harmless.
pub fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_path(path)?;
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_parent(path)
    })();
    if written.is_err() {
        // Best effort: the temporary file is useless either way.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Creates `path` with `bytes` and `mode`, failing with
/// [`io::ErrorKind::AlreadyExists`] if it exists: for keys that must never
/// be overwritten by a second process starting at the same moment.
pub fn create_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| sync_parent(path));
    if written.is_err() {
        // A half-written key would be found by the next start: remove it.
        let _ = std::fs::remove_file(path);
    }
    written
}

/// Moves a finished file or directory at `tmp` to `path` by the same rule:
/// fsync `tmp`, rename it, fsync the directory. For content written
/// elsewhere (a streamed download, an extracted tree); `tmp` and `path`
/// must be on one filesystem. A directory's own entries must already be
/// synced by whoever wrote them.
pub fn commit(tmp: &Path, path: &Path) -> io::Result<()> {
    File::open(tmp)?.sync_all()?;
    std::fs::rename(tmp, path)?;
    sync_parent(path)
}

/// Fsyncs the directory `dir`, making the creation, removal or renaming of
/// its entries durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// `.<name>.<pid>.<n>.tmp` beside `path`: unique within the process and
/// between processes, hidden from directory listings that skip dot files.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(tmp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_write_replaces_the_contents_and_leaves_no_temporary_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.json");
        write(&path, b"old")?;
        write_with_mode(&path, b"new", PRIVATE)?;
        assert_eq!(std::fs::read(&path)?, b"new");
        assert_eq!(mode_of(&path), PRIVATE);
        assert_eq!(names_in(dir.path()), ["state.json"]);
        Ok(())
    }

    #[test]
    fn a_failed_write_keeps_the_old_contents() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("missing-dir").join("file");
        assert!(write(&path, b"x").is_err());
        let target = dir.path().join("kept");
        write(&target, b"old")?;
        // A directory in the way of the rename: the write fails, nothing changes.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked)?;
        std::fs::write(blocked.join("inside"), b"")?;
        assert!(write(&blocked, b"new").is_err());
        assert_eq!(std::fs::read(&target)?, b"old");
        assert_eq!(names_in(dir.path()), ["blocked", "kept"]);
        Ok(())
    }

    #[test]
    fn create_new_refuses_an_existing_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("node.pk8");
        create_new(&path, b"key", PRIVATE)?;
        let again = create_new(&path, b"other", PRIVATE);
        assert_eq!(
            again.map_err(|e| e.kind()),
            Err(io::ErrorKind::AlreadyExists)
        );
        assert_eq!(std::fs::read(&path)?, b"key");
        assert_eq!(mode_of(&path), PRIVATE);
        Ok(())
    }

    #[test]
    fn commit_moves_files_and_directories() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let part = dir.path().join("blob.part");
        std::fs::write(&part, b"bytes")?;
        let blob = dir.path().join("blob");
        commit(&part, &blob)?;
        assert_eq!(std::fs::read(&blob)?, b"bytes");
        let tree = dir.path().join("tree.tmp");
        std::fs::create_dir(&tree)?;
        std::fs::write(tree.join("a"), b"")?;
        commit(&tree, &dir.path().join("tree"))?;
        assert_eq!(names_in(dir.path()), ["blob", "tree"]);
        assert_eq!(names_in(&dir.path().join("tree")), ["a"]);
        Ok(())
    }

    #[test]
    fn temporary_names_differ_within_a_process() -> io::Result<()> {
        let path = Path::new("/data/state.json");
        let (a, b) = (temp_path(path)?, temp_path(path)?);
        assert_ne!(a, b);
        assert_eq!(a.parent(), path.parent());
        assert!(temp_path(Path::new("/")).is_err());
        Ok(())
    }
}
