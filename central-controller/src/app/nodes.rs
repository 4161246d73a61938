//! The node registry part: every known node's record (pinned key, region,
//! capacity, last contact, cordon, revocation) under one lock, when the
//! controller last called every agent to announce itself, and each node's
//! health by the app's clock.
//!
//! A part of the app: it knows nothing of deployment, identity or latency;
//! those read it. Its lock is held only for a lookup or an edit, never
//! across a store write or an `await`.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use verge_shared::{AgentId, PublicKey, Timestamp};

use super::health::{self, Health};
use super::types::lock;
use crate::config::NodesConfig;
use crate::store::NodeRecord;

/// Every node the controller knows, by id.
pub(crate) struct Nodes {
    records: Mutex<BTreeMap<AgentId, NodeRecord>>,
    /// When the controller started: no node is timed out from before it.
    started_at: Timestamp,
    /// When the controller last called every agent to announce itself (a
    /// leaf lock, held with nothing else).
    asked_at: Mutex<Option<Timestamp>>,
    timeouts: NodesConfig,
}

impl Nodes {
    /// The registry as stored, for a controller that started at `started_at`.
    pub(crate) fn new(
        records: Vec<NodeRecord>,
        started_at: Timestamp,
        timeouts: NodesConfig,
    ) -> Self {
        Self {
            records: Mutex::new(records.into_iter().map(|n| (n.id.clone(), n)).collect()),
            started_at,
            asked_at: Mutex::new(None),
            timeouts,
        }
    }

    /// The registry's lock: hold it only to look up or edit records.
    pub(crate) fn records(&self) -> MutexGuard<'_, BTreeMap<AgentId, NodeRecord>> {
        lock(&self.records)
    }

    /// A copy of every record, in id order.
    pub(crate) fn snapshot(&self) -> Vec<NodeRecord> {
        self.records().values().cloned().collect()
    }

    /// The node key pinned for `agent`, if it has been seen or enrolled.
    pub(crate) fn pinned_key(&self, agent: &AgentId) -> Option<PublicKey> {
        self.records().get(agent).map(|n| n.public_key)
    }

    /// Whether messages from this node are to be ignored.
    pub(crate) fn is_revoked(&self, agent: &AgentId) -> bool {
        self.records().get(agent).is_some_and(|n| n.revoked)
    }

    /// The controller called every agent to announce itself at `at`.
    pub(crate) fn asked_to_announce(&self, at: Timestamp) {
        *lock(&self.asked_at) = Some(at);
    }

    /// Whether the controller has not heard from `node` since it started:
    /// what the registry says of it is what was stored before.
    pub(crate) fn unconfirmed(&self, node: &NodeRecord) -> bool {
        node.last_seen.is_none_or(|seen| seen < self.started_at)
    }

    /// `node`'s health at `now`: never timed out from before the
    /// controller's own start, so a restart gives every node a fresh
    /// timeout; but a node that has not answered the last call to announce
    /// is not responding once `announce_timeout` has passed since the call.
    pub(crate) fn health(&self, node: &NodeRecord, now: Timestamp) -> Health {
        let heard_from = node
            .last_seen
            .map_or(self.started_at, |t| t.max(self.started_at));
        let asked_at = *lock(&self.asked_at);
        let answer_by = asked_at
            .filter(|asked| node.last_seen.is_none_or(|seen| seen < *asked))
            .map(|asked| asked.saturating_add(self.timeouts.announce_timeout));
        health::evaluate(
            node,
            heard_from,
            answer_by,
            now,
            self.timeouts.heartbeat_timeout,
            self.timeouts.failover_grace,
        )
    }
}
