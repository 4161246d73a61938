//! Deterministic simulation of a Verge fleet: the controller's real use
//! cases (ingest, health, scheduler, deployer, over the in-memory store and
//! a manual clock) and each agent's real intake and reconcile decisions,
//! over a simulated broker whose drops, duplicates, delays, partitions and
//! crashes all come from one seed, so that a failing seed replays exactly.
//!
//! After every step: generations only grow per agent, no agent acts on a
//! document it did not accept, the controller never signs two documents
//! with one generation. After the faults stop and time passes: every live
//! agent is on its stored generation, exactly the placed copies run, and
//! every replica is placed or has a reason (docs/testing.md).

pub mod agent;
pub mod broker;
pub mod world;

pub use world::{Config, Failure, Summary, run};
