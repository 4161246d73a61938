//! The latency part: round-trip samples from agents' reports and the probe
//! plan last published to each agent, each under its own lock.
//!
//! A part of the app: it holds state only; choosing targets and signing
//! plans happen in `placement`, which reads the node registry first and
//! releases it before taking these locks.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use verge_shared::AgentId;
use verge_shared::latency::ProbeTarget;

use super::types::lock;
use crate::latency::LatencyBook;

/// The probe plan last published to one agent.
pub(crate) struct PublishedProbes {
    pub(crate) targets: Vec<ProbeTarget>,
    pub(crate) envelope: Vec<u8>,
}

/// Latency samples and published probe plans.
#[derive(Default)]
pub(crate) struct Probes {
    book: Mutex<LatencyBook>,
    published: Mutex<BTreeMap<AgentId, PublishedProbes>>,
}

impl Probes {
    /// The samples' lock.
    pub(crate) fn book(&self) -> MutexGuard<'_, LatencyBook> {
        lock(&self.book)
    }

    /// The published plans' lock; taken after [`Probes::book`] is released.
    pub(crate) fn published(&self) -> MutexGuard<'_, BTreeMap<AgentId, PublishedProbes>> {
        lock(&self.published)
    }
}
