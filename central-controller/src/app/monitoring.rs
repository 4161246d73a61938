//! What `GET /metrics` shows: the counters kept as things happen, and the
//! gauges of state (nodes, services, store size, watchers), filled in at
//! each scrape.

use std::collections::BTreeMap;
use std::time::Duration;

use super::composition::App;
use super::error::AppError;
use super::metrics::{NodeLabels, RequestLabels};
use crate::store::{Cordon, NodeRecord};

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

impl App {
    /// Counts one API request and the time to its response head.
    pub fn observe_request(&self, labels: RequestLabels, took: Duration) {
        self.metrics.observe_request(labels, took);
    }

    /// Every metric as OpenMetrics text.
    pub fn metrics_text(&self) -> Result<String, AppError> {
        let now = self.now();
        let mut counts: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
        {
            let registry = self.nodes.records();
            for node in registry.values() {
                let healthy = self.nodes.health(node, now).healthy;
                *counts
                    .entry((node.region.to_string(), node_state(node, healthy)))
                    .or_default() += 1;
            }
        }
        self.metrics.nodes.clear();
        for ((region, state), n) in counts {
            self.metrics
                .nodes
                .get_or_create(&NodeLabels { region, state })
                .set(n);
        }
        let services = i64::try_from(self.store.services()?.len()).unwrap_or(i64::MAX);
        self.metrics.services.set(services);
        let size = i64::try_from(self.store.size_on_disk()?).unwrap_or(i64::MAX);
        self.metrics.store_bytes.set(size);
        let watchers = i64::try_from(self.changes.n_watchers()).unwrap_or(i64::MAX);
        self.metrics.watchers.set(watchers);
        Ok(self.metrics.encode())
    }
}
