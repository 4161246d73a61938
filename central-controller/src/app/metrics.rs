//! The metrics part: counters and histograms the use cases and the API
//! update as things happen, encoded as OpenMetrics text for `GET /metrics`.
//!
//! Names follow Prometheus conventions: the `verge_` prefix, base units
//! (`_seconds`, `_bytes`), `_total` on counters (added by the encoder).
//! Labels have bounded values only (message kinds, reasons, route patterns,
//! regions), never node ids, so a fleet of any size is a fixed number of
//! series per region. Gauges of state (nodes by region and state, services,
//! store size) are filled in at each scrape from the state itself.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Kind {
    pub(super) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Reason {
    pub(super) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Outcome {
    pub(super) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct NodeLabels {
    pub(super) region: String,
    pub(super) state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct SeverityLabel {
    pub(super) severity: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route pattern (`/api/v1/services/{name}`), or `other`.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RouteLabel {
    pub(super) route: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 1 ms to about 16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Ingest lag buckets, seconds: fine between 0.1 and 2 s, where a fleet's
/// p99 against a one-second goal falls, and out to a minute for backlogs.
const INGEST_LAG_BUCKETS: [f64; 20] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0,
    5.0, 10.0, 30.0, 60.0,
];

/// Every metric the controller exports.
pub(super) struct Metrics {
    registry: Registry,
    pub(super) received: Family<Kind, Counter>,
    pub(super) refused: Family<Reason, Counter>,
    pub(super) held: Counter,
    pub(super) replayed: Counter,
    pub(super) consumer_refusals: Family<Reason, Counter>,
    pub(super) verifications: Family<Outcome, Counter>,
    pub(super) published: Family<Kind, Counter>,
    pub(super) placement_seconds: Histogram,
    pub(super) ingest_lag_seconds: Histogram,
    pub(super) requests: Family<RequestLabels, Counter>,
    pub(super) request_seconds: HistogramFamily<RouteLabel>,
    pub(super) nodes: Family<NodeLabels, Gauge>,
    pub(super) services: Gauge,
    pub(super) store_bytes: Gauge,
    pub(super) watchers: Gauge,
    pub(super) alarms: Family<SeverityLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let received = Family::<Kind, Counter>::default();
        registry.register(
            "verge_agent_messages_received",
            "Messages read from agents' topics, by kind",
            received.clone(),
        );
        let refused = Family::<Reason, Counter>::default();
        registry.register(
            "verge_agent_messages_refused",
            "Agent messages ignored, by reason",
            refused.clone(),
        );
        let held = Counter::default();
        registry.register(
            "verge_agent_messages_held",
            "Agent messages that arrived before their agent's presence and were held for it",
            held.clone(),
        );
        let replayed = Counter::default();
        registry.register(
            "verge_agent_messages_replayed",
            "Held agent messages handled after their agent's presence",
            replayed.clone(),
        );
        let consumer_refusals = Family::<Reason, Counter>::default();
        registry.register(
            "verge_broker_consumer_refusals",
            "Read-only consumers' connections to the embedded broker closed, by what they sent (publish, will, protocol, malformed)",
            consumer_refusals.clone(),
        );
        let verifications = Family::<Outcome, Counter>::default();
        registry.register(
            "verge_signature_verifications",
            "Signatures of agent messages checked, by result",
            verifications.clone(),
        );
        let published = Family::<Kind, Counter>::default();
        registry.register(
            "verge_mqtt_messages_published",
            "Messages handed to the MQTT client, by kind",
            published.clone(),
        );
        let placement_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "verge_placement_duration_seconds",
            "Time the scheduler took for one plan",
            placement_seconds.clone(),
        );
        let ingest_lag_seconds = Histogram::new(INGEST_LAG_BUCKETS);
        registry.register(
            "verge_ingest_lag_seconds",
            "Time from an agent's signed `at` to the ingest task handling its heartbeat, status, latency report or telemetry",
            ingest_lag_seconds.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "verge_api_requests",
            "HTTP API requests answered, by method, route and status",
            requests.clone(),
        );
        let request_seconds: HistogramFamily<RouteLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "verge_api_request_duration_seconds",
            "Time to answer an HTTP API request (to the response head), by route",
            request_seconds.clone(),
        );
        let nodes = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "verge_nodes",
            "Registered nodes by region and state (revoked, offline, drained, cordoned, unhealthy or healthy; each node in one)",
            nodes.clone(),
        );
        let services = Gauge::default();
        registry.register("verge_services", "Services declared", services.clone());
        let store_bytes = Gauge::default();
        registry.register(
            "verge_store_size_bytes",
            "Size of the controller's store on disk",
            store_bytes.clone(),
        );
        let watchers = Gauge::default();
        registry.register(
            "verge_api_watchers",
            "Clients connected to the watch stream",
            watchers.clone(),
        );
        let alarms = Family::<SeverityLabel, Gauge>::default();
        registry.register(
            "verge_alarms_active",
            "Active alarms by severity (critical, major, minor, warning), suppressed ones included",
            alarms.clone(),
        );
        Self {
            registry,
            received,
            refused,
            held,
            replayed,
            consumer_refusals,
            verifications,
            published,
            placement_seconds,
            ingest_lag_seconds,
            requests,
            request_seconds,
            nodes,
            services,
            store_bytes,
            watchers,
            alarms,
        }
    }
}

impl Metrics {
    pub(super) fn observe_request(&self, labels: RequestLabels, took: Duration) {
        self.request_seconds
            .get_or_create(&RouteLabel {
                route: labels.route.clone(),
            })
            .observe(took.as_secs_f64());
        self.requests.get_or_create(&labels).inc();
    }

    /// The OpenMetrics text of every metric.
    pub(super) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
