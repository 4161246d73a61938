//! Durable controller state behind the [`Store`] trait, with a sled
//! implementation and an in-memory one ([`MemoryStore`]) for tests.
//!
//! Records are JSON in one sled tree per kind. Writes that must survive a
//! crash (services, desired states, key pins) are flushed before returning;
//! frequent observations (status) are written without waiting for the disk.

mod memory;
mod records;
mod sled_store;

pub use memory::MemoryStore;
pub use records::*;
pub use sled_store::SledStore;
