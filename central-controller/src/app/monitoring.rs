//! What `GET /metrics` shows: the counters kept as things happen, and the
//! gauges of state (nodes, services, store size, watchers, active alarms), filled in at
//! each scrape.

use std::collections::BTreeMap;
use std::time::Duration;

use super::composition::App;
use super::error::AppError;
use super::metrics::{NodeLabels, RequestLabels, SeverityLabel};
use crate::store::{Cordon, NodeRecord};
use verge_shared::alarms::Severity;

/// The one state a node is counted in, the most pressing first.
fn node_state(node: &NodeRecord, healthy: bool) -> &'static str {
    if node.revoked {
        "revoked"
    } else if !node.online {
        "offline"
    } else if node.cordon == Some(Cordon::Drained) {
        "drained"
    } else if node.cordon == Some(Cordon::Cordoned) {
        "cordoned"
    } else if healthy {
        "healthy"
    } else {
        "unhealthy"
    }
}

/// The states [`App::node_counts`] counts nodes in, in the order a person
/// reads them.
pub const NODE_STATES: [&str; 6] = [
    "healthy",
    "unhealthy",
    "cordoned",
    "drained",
    "offline",
    "revoked",
];

impl App {
    /// How many nodes each region has in each state (one state per node,
    /// the most pressing: revoked, offline, drained, cordoned, unhealthy,
    /// healthy).
    pub fn node_counts(&self) -> BTreeMap<(String, &'static str), usize> {
        let now = self.now();
        let mut counts = BTreeMap::new();
        let registry = self.nodes.records();
        for node in registry.values() {
            let healthy = self.nodes.health(node, now).healthy;
            *counts
                .entry((node.region.to_string(), node_state(node, healthy)))
                .or_default() += 1;
        }
        counts
    }

    /// Counts one API request and the time to its response head.
    pub fn observe_request(&self, labels: RequestLabels, took: Duration) {
        self.metrics.observe_request(labels, took);
    }

    /// Every metric as OpenMetrics text.
    pub fn metrics_text(&self) -> Result<String, AppError> {
        self.metrics.nodes.clear();
        for ((region, state), n) in self.node_counts() {
            self.metrics
                .nodes
                .get_or_create(&NodeLabels { region, state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let services = i64::try_from(self.store.services()?.len()).unwrap_or(i64::MAX);
        self.metrics.services.set(services);
        let size = i64::try_from(self.store.size_on_disk()?).unwrap_or(i64::MAX);
        self.metrics.store_bytes.set(size);
        let watchers = i64::try_from(self.changes.n_watchers()).unwrap_or(i64::MAX);
        self.metrics.watchers.set(watchers);
        let active = self.active_alarms_by_severity();
        for severity in [
            Severity::Critical,
            Severity::Major,
            Severity::Minor,
            Severity::Warning,
        ] {
            let n = active.get(&severity).copied().unwrap_or(0);
            self.metrics
                .alarms
                .get_or_create(&SeverityLabel {
                    severity: severity.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        Ok(self.metrics.encode())
    }
}
