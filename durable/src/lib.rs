//! Durable file writes: the one rule every Verge binary uses for a file that
//! must be whole after a crash or a power cut.
//!
//! The rule: write a temporary file in the target's directory, fsync it,
//! rename it over the target, then fsync the directory so the rename itself
//! survives. A reader (or the next start after a crash) sees the old contents
//! or the new ones, never a mix, and never an empty file where the old one
//! stood. Standard library only: the agent, the controller and the offline
//! tool all depend on this crate, and it must stay small.

mod file;
pub mod format;

pub use file::{PRIVATE, PUBLIC, commit, create_new, sync_dir, write, write_with_mode};
