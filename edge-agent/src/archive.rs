//! Safe extraction of tar.gz artifacts.
//!
//! An archive comes from the controller, so it is treated as hostile even
//! though its digest was checked: the digest only proves it is the archive
//! the operator uploaded. Extraction refuses, naming the entry:
//!
//! - paths that are absolute or contain `..` (or anything but plain names);
//! - symbolic links whose target is absolute or leaves the root, and hard
//!   links to anything but a regular file already extracted inside the root;
//! - device files, FIFOs and other special entries;
//! - more than [`MAX_ARCHIVE_ENTRIES`] entries or more than
//!   [`MAX_ARCHIVE_EXTRACTED_BYTES`] bytes written in total (a decompression
//!   bomb), counted from the bytes actually written, not the headers.
//!
//! Nothing is ever written through a symbolic link: every parent directory
//! of an entry must be a real directory, and files are created with
//! `create_new`, so a link planted by an earlier entry cannot redirect a
//! later write out of the root. After the last entry every link is resolved
//! once more and must land inside the root.
//!
//! Files keep their permission bits without set-user-ID, set-group-ID,
//! sticky or group/world write; directories are 0755. Every file and
//! directory is synced so that the caller's atomic rename publishes a
//! complete tree.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use verge_shared::limits::{MAX_ARCHIVE_ENTRIES, MAX_ARCHIVE_EXTRACTED_BYTES};

/// The bounds one extraction enforces.
#[derive(Clone, Copy, Debug)]
pub struct ArchiveLimits {
    pub max_entries: u64,
    pub max_bytes: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_entries: MAX_ARCHIVE_ENTRIES,
            max_bytes: MAX_ARCHIVE_EXTRACTED_BYTES,
        }
    }
}

/// Why an archive was refused. Entry-level variants name the entry.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive: cannot read it: {0}")]
    Read(#[source] std::io::Error),
    #[error("archive entry {entry:?}: the path is absolute or has '..' or other non-name parts")]
    UnsafePath { entry: String },
    #[error("archive entry {entry:?}: link target {target:?} leaves the extraction root")]
    LinkOutside { entry: String, target: String },
    #[error(
        "archive entry {entry:?}: hard link target {target:?} is not a regular file extracted before it"
    )]
    BadHardLink { entry: String, target: String },
    #[error("archive entry {entry:?}: {kind} entries are not allowed")]
    SpecialFile { entry: String, kind: String },
    #[error("archive entry {entry:?}: a parent directory is a link or a file")]
    ThroughLink { entry: String },
    #[error("archive entry {entry:?}: more than {max} entries")]
    TooManyEntries { entry: String, max: u64 },
    #[error("archive entry {entry:?}: extracting it exceeds {max} bytes in total")]
    TooLarge { entry: String, max: u64 },
    #[error("archive entry {entry:?}: {source}")]
    Write {
        entry: String,
        #[source]
        source: std::io::Error,
    },
}

/// Extracts the tar.gz at `archive` into `dest`, which must not exist yet
/// and is created. On error `dest` may hold part of the archive; the caller
/// extracts into a temporary directory and removes it.
pub fn extract_tar_gz(
    archive: &Path,
    dest: &Path,
    limits: ArchiveLimits,
) -> Result<(), ArchiveError> {
    let file = File::open(archive).map_err(ArchiveError::Read)?;
    extract(flate2::read::GzDecoder::new(file), dest, limits)
}

/// Extracts a tar stream into `dest`; see the module documentation.
pub fn extract(reader: impl Read, dest: &Path, limits: ArchiveLimits) -> Result<(), ArchiveError> {
    let write_err = |entry: &str| {
        let entry = entry.to_owned();
        move |source| ArchiveError::Write { entry, source }
    };
    std::fs::create_dir(dest).map_err(write_err("."))?;
    let mut tar = tar::Archive::new(reader);
    let mut n_entries = 0u64;
    let mut written = 0u64;
    let mut links = Vec::new();
    let mut dirs = vec![dest.to_owned()];
    for entry in tar.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        n_entries += 1;
        if n_entries > limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                entry: name,
                max: limits.max_entries,
            });
        }
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let relative =
            safe_relative(&entry.path().map_err(ArchiveError::Read)?).ok_or_else(|| {
                ArchiveError::UnsafePath {
                    entry: name.clone(),
                }
            })?;
        if relative.as_os_str().is_empty() {
            // "./" itself: the root already exists.
            continue;
        }
        let target = dest.join(&relative);
        check_parents(dest, &relative).map_err(|()| ArchiveError::ThroughLink {
            entry: name.clone(),
        })?;
        if kind.is_dir() {
            match std::fs::symlink_metadata(&target) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(ArchiveError::ThroughLink { entry: name }),
                Err(_) => {
                    std::fs::create_dir(&target).map_err(write_err(&name))?;
                    dirs.push(target);
                }
            }
        } else if kind.is_file() || kind.is_contiguous() {
            let mode = entry.header().mode().unwrap_or(0o644) & 0o755 | 0o400;
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&target)
                .map_err(write_err(&name))?;
            let left = limits.max_bytes - written;
            // One byte over the allowance is enough to know it is too much.
            let n = std::io::copy(&mut (&mut entry).take(left + 1), &mut out)
                .map_err(write_err(&name))?;
            if n > left {
                return Err(ArchiveError::TooLarge {
                    entry: name,
                    max: limits.max_bytes,
                });
            }
            written += n;
            out.flush().map_err(write_err(&name))?;
            out.sync_all().map_err(write_err(&name))?;
        } else if kind.is_symlink() {
            let link = link_name(&entry, &name)?;
            if !symlink_stays_inside(&relative, Path::new(&link)) {
                return Err(ArchiveError::LinkOutside {
                    entry: name,
                    target: link,
                });
            }
            std::os::unix::fs::symlink(&link, &target).map_err(write_err(&name))?;
            links.push((name, target));
        } else if kind.is_hard_link() {
            let link = link_name(&entry, &name)?;
            let bad = || ArchiveError::BadHardLink {
                entry: name.clone(),
                target: link.clone(),
            };
            let source = safe_relative(Path::new(&link)).ok_or_else(bad)?;
            check_parents(dest, &source).map_err(|()| bad())?;
            let source = dest.join(source);
            match std::fs::symlink_metadata(&source) {
                Ok(meta) if meta.is_file() => {}
                _ => return Err(bad()),
            }
            std::fs::hard_link(&source, &target).map_err(write_err(&name))?;
        } else {
            return Err(ArchiveError::SpecialFile {
                entry: name,
                kind: format!("{kind:?}"),
            });
        }
    }
    // A link may resolve through links created after it: check the final tree.
    let root = dest.canonicalize().map_err(write_err("."))?;
    for (name, link) in links {
        if let Ok(resolved) = link.canonicalize()
            && !resolved.starts_with(&root)
        {
            return Err(ArchiveError::LinkOutside {
                target: resolved.display().to_string(),
                entry: name,
            });
        }
    }
    for dir in dirs.iter().rev() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .and_then(|()| verge_durable::sync_dir(dir))
            .map_err(write_err(&dir.display().to_string()))?;
    }
    Ok(())
}

/// `path` as plain names only (`.` parts dropped), or `None` when it is
/// absolute or has `..`.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Is every parent of `relative` under `root` a real directory (or not yet
/// there)? A missing parent is created as a real directory.
fn check_parents(root: &Path, relative: &Path) -> Result<(), ()> {
    let mut dir = root.to_owned();
    let Some(parent) = relative.parent() else {
        return Ok(());
    };
    for part in parent.components() {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(()),
            Err(_) => std::fs::create_dir(&dir).map_err(|_| ())?,
        }
    }
    Ok(())
}

/// Does a link at `relative` pointing to `target` stay inside the root when
/// resolved by name (ignoring what the names are)?
fn symlink_stays_inside(relative: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: usize = relative.components().count().saturating_sub(1);
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>, name: &str) -> Result<String, ArchiveError> {
    match entry.link_name_bytes() {
        Some(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        None => Err(ArchiveError::UnsafePath {
            entry: name.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::{EntryType, Header};

    /// Builds a tar stream from raw headers, so the test can write what a
    /// well-behaved builder would refuse (`..`, absolute paths).
    struct Raw(Vec<u8>);

    impl Raw {
        fn new() -> Self {
            Self(Vec::new())
        }

        fn entry(mut self, kind: EntryType, path: &str, link: Option<&str>, body: &[u8]) -> Self {
            let mut header = Header::new_gnu();
            // Write the name bytes directly: set_path refuses '..' and '/'.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                let field = &mut header.as_old_mut().linkname;
                field[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(kind);
            header.set_mode(0o755);
            header.set_size(body.len() as u64);
            header.set_cksum();
            self.0.extend_from_slice(header.as_bytes());
            self.0.extend_from_slice(body);
            let pad = (512 - body.len() % 512) % 512;
            self.0.extend(std::iter::repeat_n(0u8, pad));
            self
        }

        fn file(self, path: &str, body: &[u8]) -> Self {
            self.entry(EntryType::Regular, path, None, body)
        }

        fn finish(mut self) -> Vec<u8> {
            self.0.extend([0u8; 1024]);
            self.0
        }
    }

    fn unpack(tar: &[u8]) -> (tempfile::TempDir, Result<(), ArchiveError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let result = extract(tar, &dir.path().join("root"), ArchiveLimits::default());
        (dir, result)
    }

    /// Extracts `tar`, which must be refused with an error `ok` accepts.
    fn refused(tar: &[u8], what: &str, ok: impl Fn(&ArchiveError) -> bool) -> tempfile::TempDir {
        match unpack(tar) {
            (dir, Err(e)) if ok(&e) => dir,
            (_, other) => panic!("{what}: {other:?}"),
        }
    }

    /// Nothing was created next to the extraction root.
    fn only_root(dir: &Path) -> bool {
        std::fs::read_dir(dir).expect("list").count() == 1
    }

    #[test]
    fn a_normal_archive_extracts_with_links_inside() {
        let tar = Raw::new()
            .entry(EntryType::Directory, "./bin/", None, b"")
            .file("./bin/app", b"#!/bin/sh\n")
            .entry(EntryType::Symlink, "run", Some("bin/app"), b"")
            .entry(EntryType::Link, "bin/copy", Some("bin/app"), b"")
            .finish();
        let (dir, result) = unpack(&tar);
        result.expect("extracts");
        let root = dir.path().join("root");
        assert_eq!(
            std::fs::read(root.join("run")).expect("read"),
            b"#!/bin/sh\n"
        );
        assert_eq!(
            std::fs::read(root.join("bin/copy")).expect("read"),
            b"#!/bin/sh\n"
        );
        let mode = std::fs::metadata(root.join("bin/app"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
    }

    #[test]
    fn parent_directory_paths_are_refused() {
        for path in ["../evil", "a/../../evil", "a/../b"] {
            let dir = refused(&Raw::new().file(path, b"x").finish(), path, |e| {
                matches!(e, ArchiveError::UnsafePath { .. })
            });
            assert!(only_root(dir.path()), "{path}");
        }
    }

    #[test]
    fn absolute_paths_are_refused() {
        let dir = refused(
            &Raw::new().file("/tmp/verge-evil", b"x").finish(),
            "archive",
            |e| matches!(e, ArchiveError::UnsafePath { .. }),
        );
        assert!(only_root(dir.path()));
        assert!(!Path::new("/tmp/verge-evil").exists());
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        for target in ["/etc", "..", "a/../..", "../../etc/passwd"] {
            let tar = Raw::new()
                .entry(EntryType::Symlink, "link", Some(target), b"")
                .finish();
            refused(&tar, target, |e| {
                matches!(e, ArchiveError::LinkOutside { .. })
            });
        }
        // Each link looks inside by name, but `y/..` resolves through `y`,
        // itself a link to the root, to the root's parent.
        let tar = Raw::new()
            .entry(EntryType::Symlink, "y", Some("."), b"")
            .entry(EntryType::Symlink, "x", Some("y/.."), b"")
            .finish();
        refused(&tar, "archive", |e| {
            matches!(e, ArchiveError::LinkOutside { .. })
        });
    }

    #[test]
    fn nothing_is_written_through_a_link() {
        // `x` resolves to the root's parent; the file entry below it must
        // not land there before the final link check runs.
        let tar = Raw::new()
            .entry(EntryType::Symlink, "y", Some("."), b"")
            .entry(EntryType::Symlink, "x", Some("y/.."), b"")
            .file("x/evil", b"x")
            .finish();
        let dir = refused(&tar, "archive", |e| {
            matches!(e, ArchiveError::ThroughLink { .. })
        });
        assert!(only_root(dir.path()));
        // A file entry over an existing link is not followed either.
        let tar = Raw::new()
            .entry(EntryType::Symlink, "f", Some("g"), b"")
            .file("f", b"x")
            .finish();
        let dir = refused(&tar, "archive", |e| matches!(e, ArchiveError::Write { .. }));
        assert!(!dir.path().join("root/g").exists());
    }

    #[test]
    fn hard_links_out_of_the_root_are_refused() {
        for target in ["/etc/passwd", "../x", "missing"] {
            let tar = Raw::new()
                .entry(EntryType::Link, "link", Some(target), b"")
                .finish();
            refused(&tar, target, |e| {
                matches!(e, ArchiveError::BadHardLink { .. })
            });
        }
        // A hard link whose source path goes through a link is refused too.
        let tar = Raw::new()
            .entry(EntryType::Symlink, "d", Some("."), b"")
            .entry(EntryType::Link, "link", Some("d/x"), b"")
            .finish();
        refused(&tar, "archive", |e| {
            matches!(e, ArchiveError::BadHardLink { .. })
        });
    }

    #[test]
    fn device_files_and_fifos_are_refused() {
        for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
            let dir = refused(
                &Raw::new().entry(kind, "dev", None, b"").finish(),
                &format!("{kind:?}"),
                |e| matches!(e, ArchiveError::SpecialFile { .. }),
            );
            assert!(!dir.path().join("root/dev").exists());
        }
    }

    #[test]
    fn decompression_bombs_stop_at_the_byte_limit() {
        // 4 MiB of zeros compresses to a few KiB; the limit is 1 MiB.
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::best(),
        ));
        let zeros = vec![0u8; 4 << 20];
        let mut header = Header::new_gnu();
        header.set_size(zeros.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "zeros", zeros.as_slice())
            .expect("append");
        let gz = builder.into_inner().expect("tar").finish().expect("gz");
        assert!(gz.len() < 64 * 1024, "{}", gz.len());
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("bomb.tar.gz");
        std::fs::write(&archive, &gz).expect("write");
        let limits = ArchiveLimits {
            max_entries: 10,
            max_bytes: 1 << 20,
        };
        let result = extract_tar_gz(&archive, &dir.path().join("root"), limits);
        assert!(
            matches!(result, Err(ArchiveError::TooLarge { .. })),
            "{result:?}"
        );
        let size = std::fs::metadata(dir.path().join("root/zeros"))
            .expect("meta")
            .len();
        assert!(size <= (1 << 20) + 1, "{size}");
    }

    #[test]
    fn entry_count_is_bounded() {
        let mut raw = Raw::new();
        for i in 0..11 {
            raw = raw.file(&format!("f{i}"), b"");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = ArchiveLimits {
            max_entries: 10,
            max_bytes: 1 << 20,
        };
        let result = extract(raw.finish().as_slice(), &dir.path().join("root"), limits);
        assert!(
            matches!(result, Err(ArchiveError::TooManyEntries { max: 10, .. })),
            "{result:?}"
        );
    }

    #[test]
    fn garbage_is_a_read_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("junk.tar.gz");
        std::fs::write(&archive, b"not gzip at all").expect("write");
        let result = extract_tar_gz(&archive, &dir.path().join("root"), ArchiveLimits::default());
        assert!(matches!(result, Err(ArchiveError::Read(_))), "{result:?}");
    }
}
