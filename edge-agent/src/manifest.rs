//! What an extracted archive tree holds: every path under its root with its
//! kind and permission bits, a file's size and SHA-256, a link's target.
//!
//! The artifact cache writes one next to each extraction
//! (`artifacts/unpacked/<hex>.manifest`) and compares it with the tree at
//! start, so a file changed, truncated or deleted after extraction (bit rot,
//! a crash before the data reached the disk, tampering) is found and the
//! tree is extracted again from its verified archive.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use verge_shared::Sha256Digest;
use verge_shared::limits::MAX_ARCHIVE_ENTRIES;

/// A manifest larger than this on disk is not read (a generous bound: the
/// entry limit times a long path and its digest).
const MAX_MANIFEST_BYTES: u64 = MAX_ARCHIVE_ENTRIES * 4096;

/// One path of the tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Node {
    File {
        mode: u32,
        size: u64,
        sha256: Sha256Digest,
    },
    Dir {
        mode: u32,
    },
    Link {
        target: String,
    },
}

/// Every path of a tree, relative to its root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    entries: BTreeMap<String, Node>,
}

impl Manifest {
    /// Reads the tree under `root`, hashing every file. A tree with more
    /// entries than an archive may have, or with anything but files,
    /// directories and links, is an error.
    pub fn of(root: &Path) -> std::io::Result<Manifest> {
        let mut entries = BTreeMap::new();
        let mut dirs = vec![PathBuf::new()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(root.join(&dir))? {
                let entry = entry?;
                let relative = dir.join(entry.file_name());
                let path = entry.path();
                let meta = std::fs::symlink_metadata(&path)?;
                let mode = meta.permissions().mode() & 0o7777;
                let node = if meta.file_type().is_symlink() {
                    Node::Link {
                        target: std::fs::read_link(&path)?.to_string_lossy().into_owned(),
                    }
                } else if meta.is_dir() {
                    dirs.push(relative.clone());
                    Node::Dir { mode }
                } else if meta.is_file() {
                    Node::File {
                        mode,
                        size: meta.len(),
                        sha256: hash_file(&path)?,
                    }
                } else {
                    return Err(std::io::Error::other(format!(
                        "{} is not a file, directory or link",
                        path.display()
                    )));
                };
                if entries.len() as u64 >= MAX_ARCHIVE_ENTRIES {
                    return Err(std::io::Error::other(format!(
                        "{} holds more than {MAX_ARCHIVE_ENTRIES} entries",
                        root.display()
                    )));
                }
                entries.insert(relative.to_string_lossy().into_owned(), node);
            }
        }
        Ok(Manifest { entries })
    }

    /// Writes the manifest to `path` durably ([`verge_durable::write`]).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        verge_durable::write(
            path,
            &serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )
    }

    /// Reads a manifest written by [`Manifest::save`].
    pub fn load(path: &Path) -> std::io::Result<Manifest> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)?
            .take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(std::io::Error::other(format!(
                "{} is larger than {MAX_MANIFEST_BYTES} bytes",
                path.display()
            )));
        }
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }

    /// Does the tree under `root` still match the manifest at `path`? Why
    /// not, when it does not.
    pub fn verify(root: &Path, path: &Path) -> Result<(), String> {
        let recorded = Manifest::load(path).map_err(|e| format!("manifest: {e}"))?;
        let actual = Manifest::of(root).map_err(|e| format!("tree: {e}"))?;
        if recorded == actual {
            return Ok(());
        }
        let differs = recorded
            .entries
            .iter()
            .find(|(name, node)| actual.entries.get(*name) != Some(node))
            .map(|(name, _)| name)
            .or_else(|| {
                actual
                    .entries
                    .keys()
                    .find(|name| !recorded.entries.contains_key(*name))
            })
            .cloned()
            .unwrap_or_default();
        Err(format!("{differs:?} differs from the extraction"))
    }
}

/// The SHA-256 of a file's content.
pub fn hash_file(path: &Path) -> Result<Sha256Digest, std::io::Error> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Sha256Digest::from_ring(hasher.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).expect("mkdir");
        std::fs::write(root.join("bin/app"), b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(root.join("bin/app"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::write(root.join("data.txt"), b"d").expect("write");
        std::os::unix::fs::symlink("bin/app", root.join("run")).expect("link");
        Manifest::of(&root)
            .expect("manifest")
            .save(&dir.path().join("m"))
            .expect("save");
        dir
    }

    #[test]
    fn an_untouched_tree_verifies() {
        let dir = tree();
        let manifest = Manifest::load(&dir.path().join("m")).expect("load");
        assert_eq!(manifest.entries.len(), 4, "{manifest:?}");
        Manifest::verify(&dir.path().join("root"), &dir.path().join("m")).expect("verifies");
    }

    #[test]
    fn every_kind_of_change_is_found() {
        type Change = fn(&Path);
        let changes: [(&str, Change); 6] = [
            ("content", |r| {
                std::fs::write(r.join("data.txt"), b"x").expect("write")
            }),
            ("missing file", |r| {
                std::fs::remove_file(r.join("bin/app")).expect("rm")
            }),
            ("extra file", |r| {
                std::fs::write(r.join("bin/extra"), b"").expect("write")
            }),
            ("mode", |r| {
                std::fs::set_permissions(r.join("data.txt"), std::fs::Permissions::from_mode(0o755))
                    .expect("chmod")
            }),
            ("link target", |r| {
                std::fs::remove_file(r.join("run")).expect("rm");
                std::os::unix::fs::symlink("data.txt", r.join("run")).expect("link");
            }),
            ("truncated", |r| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(r.join("bin/app"))
                    .and_then(|f| f.set_len(3))
                    .expect("truncate")
            }),
        ];
        for (what, change) in changes {
            let dir = tree();
            change(&dir.path().join("root"));
            let err =
                Manifest::verify(&dir.path().join("root"), &dir.path().join("m")).expect_err(what);
            assert!(err.contains("differs"), "{what}: {err}");
        }
        let dir = tree();
        std::fs::remove_file(dir.path().join("m")).expect("rm");
        assert!(Manifest::verify(&dir.path().join("root"), &dir.path().join("m")).is_err());
    }
}
