//! The format version of a data directory: the file `<dir>/FORMAT`, its
//! explicit migrations, and the refusal to open a directory written by a
//! newer release.
//!
//! `FORMAT` holds one line, `<program> <version>` (`edge-agent 2`). A
//! directory without it was written before versions existed: that layout is
//! format 1. Opening runs every migration from the version found up to the
//! program's, writing `FORMAT` durably after each step, so a crash between
//! two steps resumes at the step that did not finish (each step must be
//! safe to run again). A version newer than the program's is refused and
//! nothing in the directory is touched.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The name of the version file in a data directory.
pub const FILE: &str = "FORMAT";

/// The format of a directory written before `FORMAT` existed.
pub const UNVERSIONED: u32 = 1;

/// One step from format `from` to `from + 1`.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub from: u32,
    /// What the step changes, for the log and the docs.
    pub describe: &'static str,
    /// Runs the step on the data directory; the error says what failed.
    pub run: fn(&Path) -> Result<(), String>,
}

/// A program's data directory format: its name (written in `FORMAT`, so one
/// program never opens another's directory), its version and the steps
/// that lead to it.
#[derive(Clone, Copy, Debug)]
pub struct DataFormat {
    pub program: &'static str,
    pub current: u32,
    /// One step for each version from [`UNVERSIONED`] to `current - 1`.
    pub migrations: &'static [Migration],
}

/// What opening did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// The directory was empty: stamped with the current version.
    Created,
    /// The directory already had the current version.
    Current,
    /// Migrated from `from`; `steps` describes each step taken.
    Migrated { from: u32, steps: Vec<&'static str> },
}

/// Why a data directory cannot be used.
#[derive(Debug)]
pub enum FormatError {
    /// Written by a newer release: a downgrade.
    Newer {
        path: PathBuf,
        program: &'static str,
        found: u32,
        supported: u32,
    },
    /// `FORMAT` names another program.
    OtherProgram {
        path: PathBuf,
        program: &'static str,
        found: String,
    },
    /// `FORMAT` is not `<program> <version>`.
    Malformed { path: PathBuf, content: String },
    /// No migration starts at `from` (a gap in the program's list).
    NoMigration { path: PathBuf, from: u32 },
    /// A migration step failed; the directory is at format `from`.
    Migration {
        path: PathBuf,
        from: u32,
        detail: String,
    },
    /// Reading the directory or writing `FORMAT` failed.
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Newer {
                path,
                program,
                found,
                supported,
            } => write!(
                f,
                "the data directory {} has format version {found}, but this {program} supports \
                 format versions up to {supported}: it was written by a newer release; run that \
                 release again (or restore a backup made before the upgrade) instead of a \
                 downgrade, which could corrupt it",
                path.display()
            ),
            FormatError::OtherProgram {
                path,
                program,
                found,
            } => write!(
                f,
                "the data directory {} belongs to {found:?}, not to {program} (its {FILE} file \
                 says so): point {program} at its own data directory",
                path.display()
            ),
            FormatError::Malformed { path, content } => write!(
                f,
                "{} should hold \"<program> <format version>\", but holds {content:?}",
                path.display()
            ),
            FormatError::NoMigration { path, from } => write!(
                f,
                "the data directory {} has format version {from}, and no migration starts there",
                path.display()
            ),
            FormatError::Migration { path, from, detail } => write!(
                f,
                "migrating the data directory {} from format version {from} failed (it is left \
                 at {from}): {detail}",
                path.display()
            ),
            FormatError::Io {
                path,
                action,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for FormatError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FormatError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl DataFormat {
    /// The version `dir` has: from `FORMAT`, or [`UNVERSIONED`] without it
    /// (`None` for an empty or missing directory).
    pub fn version_of(&self, dir: &Path) -> Result<Option<u32>, FormatError> {
        let path = dir.join(FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => self.parse(&path, &text).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let empty = match std::fs::read_dir(dir) {
                    Ok(mut entries) => entries.next().is_none(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => true,
                    Err(source) => {
                        return Err(FormatError::Io {
                            path: dir.to_owned(),
                            action: "list",
                            source,
                        });
                    }
                };
                Ok((!empty).then_some(UNVERSIONED))
            }
            Err(source) => Err(FormatError::Io {
                path,
                action: "read",
                source,
            }),
        }
    }

    fn parse(&self, path: &Path, text: &str) -> Result<u32, FormatError> {
        let malformed = || FormatError::Malformed {
            path: path.to_owned(),
            content: text.chars().take(80).collect(),
        };
        let mut words = text.split_whitespace();
        let (Some(program), Some(version), None) = (words.next(), words.next(), words.next())
        else {
            return Err(malformed());
        };
        if program != self.program {
            return Err(FormatError::OtherProgram {
                path: path.to_owned(),
                program: self.program,
                found: program.to_owned(),
            });
        }
        version.parse().map_err(|_| malformed())
    }

    fn stamp(&self, dir: &Path, version: u32) -> Result<(), FormatError> {
        let path = dir.join(FILE);
        crate::file::write(&path, format!("{} {version}\n", self.program).as_bytes()).map_err(
            |source| FormatError::Io {
                path,
                action: "write",
                source,
            },
        )
    }

    /// Brings the existing directory `dir` to the current format, or
    /// refuses it (a newer format, another program's, an unreadable
    /// `FORMAT`) without changing anything.
    pub fn open(&self, dir: &Path) -> Result<Opened, FormatError> {
        let Some(found) = self.version_of(dir)? else {
            self.stamp(dir, self.current)?;
            return Ok(Opened::Created);
        };
        if found > self.current {
            return Err(FormatError::Newer {
                path: dir.to_owned(),
                program: self.program,
                found,
                supported: self.current,
            });
        }
        if found == self.current {
            return Ok(Opened::Current);
        }
        let mut steps = Vec::new();
        for from in found..self.current {
            let step = self
                .migrations
                .iter()
                .find(|m| m.from == from)
                .ok_or_else(|| FormatError::NoMigration {
                    path: dir.to_owned(),
                    from,
                })?;
            (step.run)(dir).map_err(|detail| FormatError::Migration {
                path: dir.to_owned(),
                from,
                detail,
            })?;
            self.stamp(dir, from + 1)?;
            steps.push(step.describe);
        }
        Ok(Opened::Migrated { from: found, steps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: &[Migration] = &[
        Migration {
            from: 1,
            describe: "adds a",
            run: |dir| std::fs::write(dir.join("a"), b"a").map_err(|e| e.to_string()),
        },
        Migration {
            from: 2,
            describe: "needs a, adds b",
            run: |dir| {
                std::fs::read(dir.join("a")).map_err(|e| format!("no a: {e}"))?;
                std::fs::write(dir.join("b"), b"b").map_err(|e| e.to_string())
            },
        },
    ];
    const TEST: DataFormat = DataFormat {
        program: "test-program",
        current: 3,
        migrations: STEPS,
    };

    fn format_file(dir: &Path) -> String {
        std::fs::read_to_string(dir.join(FILE)).expect("FORMAT written")
    }

    #[test]
    fn an_empty_directory_is_stamped_with_the_current_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(TEST.open(dir.path()).expect("open"), Opened::Created);
        assert_eq!(format_file(dir.path()), "test-program 3\n");
        assert!(!dir.path().join("a").exists(), "no migration ran");
        assert_eq!(TEST.open(dir.path()).expect("reopen"), Opened::Current);
    }

    #[test]
    fn an_unversioned_directory_runs_every_step_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("old-data"), b"x").expect("write");
        assert_eq!(
            TEST.open(dir.path()).expect("open"),
            Opened::Migrated {
                from: 1,
                steps: vec!["adds a", "needs a, adds b"]
            }
        );
        assert_eq!(format_file(dir.path()), "test-program 3\n");
        assert!(dir.path().join("b").exists());
    }

    #[test]
    fn a_failed_step_leaves_the_version_it_started_from() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), "test-program 2\n").expect("write");
        let err = TEST.open(dir.path()).expect_err("step 2 needs a");
        assert!(
            matches!(err, FormatError::Migration { from: 2, .. }),
            "{err}"
        );
        assert_eq!(format_file(dir.path()), "test-program 2\n");
    }

    #[test]
    fn a_newer_version_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), "test-program 4\n").expect("write");
        let err = TEST.open(dir.path()).expect_err("a downgrade");
        let message = err.to_string();
        for part in [
            dir.path().display().to_string(),
            "format version 4".to_owned(),
            "up to 3".to_owned(),
        ] {
            assert!(message.contains(&part), "{message:?} lacks {part:?}");
        }
        assert_eq!(format_file(dir.path()), "test-program 4\n");
        assert!(!dir.path().join("a").exists());
    }

    #[test]
    fn another_programs_or_a_garbled_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE);
        std::fs::write(&path, "other-program 1\n").expect("write");
        assert!(matches!(
            TEST.open(dir.path()),
            Err(FormatError::OtherProgram { .. })
        ));
        for garbled in ["", "test-program", "test-program two", "test-program 1 2"] {
            std::fs::write(&path, garbled).expect("write");
            assert!(
                matches!(TEST.open(dir.path()), Err(FormatError::Malformed { .. })),
                "{garbled:?}"
            );
        }
    }
}
