//! Placement intent and latency in the app: validating a service's
//! `placement`, building the scheduler's inputs from records and measured
//! latency, choosing and publishing each agent's probe plan, cordon and
//! drain, and the regions and latency views.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use verge_shared::latency::{
    CONTROLLER_TARGET, LatencyReport, PLAN_PAYLOAD_TYPE, ProbePlan, ProbeTarget,
};
use verge_shared::messages::SCHEMA_VERSION;
use verge_shared::topic::Channel;
use verge_shared::{AgentId, RegionId, Timestamp};

use super::composition::App;
use super::error::AppError;
use super::health::Health;
use super::probes::PublishedProbes;
use super::types::{MAX_REPLICAS, Outgoing};
use super::views::NodeView;
use crate::latency::{Estimate, Source, choose_targets};
use crate::regions::Regions;
use crate::store::{
    Cordon, Durability, LatencySpec, NodeRecord, PlacementSpec, ServiceRecord, SpreadSpec,
};
use verge_scheduler::{LatencyTarget, NodeInput, Percentile, ServiceInput, Spread, Unschedulable};

/// Highest priority a service may ask for.
pub const MAX_PRIORITY: i64 = 1000;
/// Loosest latency target, in milliseconds.
pub const MAX_TARGET_MS: i64 = 60_000;
/// Most regions one latency target may name.
pub const MAX_TARGET_REGIONS: usize = 16;

/// The `placement` object of a service spec, as sent.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[derive(utoipa::ToSchema)]
pub struct PlacementRequest {
    pub latency: Option<LatencyRequest>,
    pub replicas_per_region: Option<i64>,
    pub spread: Option<String>,
    pub priority: Option<i64>,
}

/// `placement.latency`, as sent.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct LatencyRequest {
    pub to: Vec<String>,
    pub max_ms: i64,
    #[serde(default)]
    pub percentile: Option<i64>,
}

/// Validates `placement` with the spec's `replicas`; returns the placement
/// and the total number of replicas. Errors name the field.
pub(super) fn validate(
    request: &PlacementRequest,
    replicas: Option<i64>,
) -> Result<(PlacementSpec, u32), AppError> {
    let latency = request.latency.as_ref().map(validate_latency).transpose()?;
    let spread = match request.spread.as_deref() {
        None | Some("zone") => SpreadSpec::Zone,
        Some("node") => SpreadSpec::Node,
        Some(other) => {
            return Err(AppError::invalid(
                "placement.spread",
                format!("{other:?} is not one of \"zone\", \"node\""),
            ));
        }
    };
    let priority = match request.priority {
        None => 0,
        Some(p) => u32::try_from(p)
            .ok()
            .filter(|p| i64::from(*p) <= MAX_PRIORITY)
            .ok_or_else(|| {
                AppError::invalid("placement.priority", format!("must be 0 to {MAX_PRIORITY}"))
            })?,
    };
    let total = match (replicas, request.replicas_per_region) {
        (Some(n), None) => n,
        (None, Some(per)) => {
            let n_regions = latency.as_ref().map_or(0, |l| l.to.len());
            if n_regions == 0 {
                return Err(AppError::invalid(
                    "placement.replicas_per_region",
                    "needs placement.latency.to to name the regions",
                ));
            }
            if !(0..=MAX_REPLICAS).contains(&per) {
                return Err(AppError::invalid(
                    "placement.replicas_per_region",
                    format!("must be 0 to {MAX_REPLICAS}"),
                ));
            }
            per.saturating_mul(i64::try_from(n_regions).unwrap_or(i64::MAX))
        }
        (Some(_), Some(_)) => {
            return Err(AppError::invalid(
                "replicas",
                "give either replicas or placement.replicas_per_region, not both",
            ));
        }
        (None, None) => {
            return Err(AppError::invalid(
                "replicas",
                "is required (or give placement.replicas_per_region)",
            ));
        }
    };
    if !(0..=MAX_REPLICAS).contains(&total) {
        return Err(AppError::invalid(
            "replicas",
            format!("must be 0 to {MAX_REPLICAS} in total, not {total}"),
        ));
    }
    let per_region = request
        .replicas_per_region
        .map(|p| u32::try_from(p).unwrap_or_default());
    Ok((
        PlacementSpec {
            latency,
            replicas_per_region: per_region,
            spread,
            priority,
        },
        u32::try_from(total).unwrap_or_default(),
    ))
}

fn validate_latency(request: &LatencyRequest) -> Result<LatencySpec, AppError> {
    if request.to.is_empty() || request.to.len() > MAX_TARGET_REGIONS {
        return Err(AppError::invalid(
            "placement.latency.to",
            format!("must name 1 to {MAX_TARGET_REGIONS} regions"),
        ));
    }
    let mut to: Vec<RegionId> = Vec::with_capacity(request.to.len());
    for (i, region) in request.to.iter().enumerate() {
        let field = || format!("placement.latency.to[{i}]");
        let region = RegionId::new(region.as_str())
            .map_err(|e| AppError::invalid(field(), e.to_string()))?;
        if to.contains(&region) {
            return Err(AppError::invalid(
                field(),
                format!("{region} appears twice"),
            ));
        }
        to.push(region);
    }
    let max_ms = u32::try_from(request.max_ms)
        .ok()
        .filter(|ms| (1..=MAX_TARGET_MS).contains(&i64::from(*ms)))
        .ok_or_else(|| {
            AppError::invalid(
                "placement.latency.max_ms",
                format!("must be 1 to {MAX_TARGET_MS}"),
            )
        })?;
    let percentile = match request.percentile.unwrap_or(90) {
        p @ (50 | 90 | 99) => u8::try_from(p).unwrap_or(90),
        other => {
            return Err(AppError::invalid(
                "placement.latency.percentile",
                format!("{other} is not one of 50, 90, 99"),
            ));
        }
    };
    Ok(LatencySpec {
        to,
        max_ms,
        percentile,
    })
}

/// A node as the scheduler sees it: health, then the operator's cordon.
pub(super) fn node_input(
    node: &NodeRecord,
    health: Health,
    regions: &Regions,
    figures: Option<BTreeMap<RegionId, Estimate>>,
) -> NodeInput {
    // A revoked node is treated like a drained one.
    let cordon = if node.revoked {
        Some(Cordon::Drained)
    } else {
        node.cordon
    };
    let schedulable = health.schedulable.and(match cordon {
        None => Ok(()),
        Some(Cordon::Cordoned) => Err(Unschedulable::Cordoned),
        Some(Cordon::Drained) => Err(Unschedulable::Drained),
    });
    NodeInput {
        id: node.id.clone(),
        region: node.region.clone(),
        zone: regions.zone(&node.region).map(str::to_owned),
        capacity: node.capacity,
        schedulable,
        latency: figures
            .unwrap_or_default()
            .into_iter()
            .map(|(region, estimate)| (region, estimate.figure()))
            .collect(),
    }
}

/// A service as the scheduler sees it.
pub(super) fn service_input(service: &ServiceRecord) -> ServiceInput {
    let placement = &service.spec.placement;
    ServiceInput {
        name: service.name.clone(),
        replicas: service.spec.replicas,
        regions: service.spec.regions.clone(),
        resources: service.release.resources,
        latency: placement.latency.as_ref().map(|l| LatencyTarget {
            to: l.to.clone(),
            max_ms: f64::from(l.max_ms),
            percentile: match l.percentile {
                50 => Percentile::P50,
                99 => Percentile::P99,
                _ => Percentile::P90,
            },
        }),
        per_target_region: placement.replicas_per_region.is_some(),
        spread: match placement.spread {
            SpreadSpec::Zone => Spread::Zone,
            SpreadSpec::Node => Spread::Node,
        },
        priority: placement.priority,
    }
}

/// A region as `GET /api/v1/regions` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct RegionView {
    pub name: RegionId,
    pub parent: Option<String>,
    pub zone: Option<String>,
    /// Whether the regions file lists it (otherwise only nodes report it).
    pub listed: bool,
    pub nodes: usize,
    pub healthy_nodes: usize,
}

/// `GET /api/v1/latency`: every figure with how it was obtained and its age.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LatencyView {
    pub window_secs: u64,
    /// Node → region → figure.
    pub nodes: BTreeMap<AgentId, BTreeMap<RegionId, Estimate>>,
    /// Region → region: the median of the measured figures of the first
    /// region's nodes, else the static hint.
    pub regions: BTreeMap<RegionId, BTreeMap<RegionId, Estimate>>,
    /// Node → its measured round-trip time to the controller's probe
    /// listener (nodes without a fresh measurement are left out).
    pub controller: BTreeMap<AgentId, Estimate>,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[(values.len() - 1) / 2]
}

impl App {
    /// Every node's latency figures at `now`, after forgetting old samples.
    pub(super) fn latency_figures(
        &self,
        nodes: &[NodeRecord],
        now: Timestamp,
    ) -> BTreeMap<AgentId, BTreeMap<RegionId, Estimate>> {
        let window = self.settings.placement.latency_window;
        let controller = AgentId::new(CONTROLLER_TARGET).ok();
        let known: BTreeSet<&AgentId> = nodes
            .iter()
            .map(|n| &n.id)
            .chain(controller.as_ref())
            .collect();
        let pairs: Vec<(AgentId, RegionId)> = nodes
            .iter()
            .map(|n| (n.id.clone(), n.region.clone()))
            .collect();
        let mut book = self.probes.book();
        book.prune(now, window, &|id| known.contains(id));
        book.figures(&pairs, &self.settings.regions, now, window)
    }

    /// Takes a verified latency report into the book.
    pub(super) fn record_latency(&self, report: &LatencyReport, now: Timestamp) {
        self.probes.book().record(report, now);
    }

    /// Chooses every probing agent's targets among the healthy nodes that
    /// listen for probes, and publishes (signed, retained) the plans that changed.
    pub(super) fn update_probe_plans(&self, now: Timestamp) {
        let nodes: Vec<NodeRecord> = self.nodes.snapshot();
        let peers: Vec<(AgentId, RegionId, SocketAddr)> = nodes
            .iter()
            .filter(|n| self.nodes.health(n, now).healthy)
            .filter_map(|n| {
                n.probe_addr
                    .map(|addr| (n.id.clone(), n.region.clone(), addr))
            })
            .collect();
        let interval_secs =
            u32::try_from(self.settings.placement.probe_interval.as_secs()).unwrap_or(u32::MAX);
        let controller = self.controller_target();
        let mut published = self.probes.published();
        for node in nodes.iter().filter(|n| n.probe_addr.is_some()) {
            let mut targets = choose_targets(&node.id, &peers);
            if let Some(controller) = &controller {
                // The controller takes the place of the last peer when the plan is full.
                targets.truncate(verge_shared::latency::MAX_TARGETS - 1);
                targets.push(controller.clone());
                targets.sort();
            }
            if published
                .get(&node.id)
                .is_some_and(|p| p.targets == targets)
            {
                continue;
            }
            let plan = ProbePlan {
                schema_version: SCHEMA_VERSION,
                agent: node.id.clone(),
                issued_at: now,
                interval_secs,
                targets: targets.clone(),
            };
            let envelope = self.key.sign_json(PLAN_PAYLOAD_TYPE, &plan);
            info!(agent = %node.id, n_targets = targets.len(), "Issued a new probe plan.");
            self.send_probe_plan(&node.id, &envelope);
            published.insert(node.id.clone(), PublishedProbes { targets, envelope });
        }
    }

    /// The controller's own probe listener as a target, when it has one.
    fn controller_target(&self) -> Option<ProbeTarget> {
        let addr = self.settings.placement.probe_advertise?;
        let agent = AgentId::new(CONTROLLER_TARGET).ok()?;
        Some(ProbeTarget { agent, addr })
    }

    /// Publishes every probe plan again (the broker may have lost them).
    pub(super) fn republish_probe_plans(&self) {
        for (agent, plan) in self.probes.published().iter() {
            self.send_probe_plan(agent, &plan.envelope);
        }
    }

    fn send_probe_plan(&self, agent: &AgentId, envelope: &[u8]) {
        let message = Outgoing {
            topic: self.settings.topics.agent(agent, Channel::Probes),
            payload: envelope.to_vec(),
            retain: true,
        };
        if !self.send("probe_plan", message) {
            warn!(agent = %agent, "The MQTT client is gone; the probe plan will be republished later.");
        }
    }

    /// Cordons, drains or (with `None`) uncordons a node, then re-plans.
    pub async fn set_cordon(&self, id: &str, cordon: Option<Cordon>) -> Result<NodeView, AppError> {
        let not_found = || AppError::NotFound {
            what: "node",
            name: id.to_owned(),
        };
        let agent = AgentId::new(id).map_err(|_| not_found())?;
        let record = {
            let mut nodes = self.nodes.records();
            let node = nodes.get_mut(&agent).ok_or_else(not_found)?;
            node.cordon = cordon;
            node.clone()
        };
        self.store.put_node(&record, Durability::Flush)?;
        info!(agent = %agent, cordon = ?cordon, "An operator changed a node's cordon.");
        self.reconcile(self.now(), true).await?;
        self.node_changed(
            &agent,
            match cordon {
                Some(Cordon::Cordoned) => "cordoned",
                Some(Cordon::Drained) => "drained",
                None => "uncordoned",
            },
        );
        self.node(id)
    }

    /// One node's latency figures, for its view: read from what that node
    /// measured, at a cost independent of the fleet's size. Stale samples
    /// are skipped here and pruned by the deployment loop.
    pub(super) fn node_latency(
        &self,
        node: &NodeRecord,
        now: Timestamp,
    ) -> BTreeMap<RegionId, Estimate> {
        let window = self.settings.placement.latency_window;
        let peers = self.probes.book().neighbours_of(&node.id);
        let region_of: BTreeMap<AgentId, RegionId> = {
            let records = self.nodes.records();
            peers
                .into_iter()
                .filter_map(|p| records.get(&p).map(|n| (p, n.region.clone())))
                .collect()
        };
        self.probes.book().row(
            &node.id,
            &node.region,
            |p| region_of.get(p),
            &self.settings.regions,
            now,
            window,
        )
    }

    /// Regions from the regions file and from the nodes, with node counts.
    pub fn regions(&self) -> Vec<RegionView> {
        let now = self.now();
        let mut out: BTreeMap<RegionId, RegionView> = self
            .settings
            .regions
            .regions
            .values()
            .map(|r| {
                let view = RegionView {
                    name: r.name.clone(),
                    parent: r.parent.clone(),
                    zone: r.zone.clone(),
                    listed: true,
                    nodes: 0,
                    healthy_nodes: 0,
                };
                (r.name.clone(), view)
            })
            .collect();
        for node in self.nodes.records().values() {
            let view = out
                .entry(node.region.clone())
                .or_insert_with(|| RegionView {
                    name: node.region.clone(),
                    parent: None,
                    zone: None,
                    listed: false,
                    nodes: 0,
                    healthy_nodes: 0,
                });
            view.nodes += 1;
            if self.nodes.health(node, now).healthy {
                view.healthy_nodes += 1;
            }
        }
        out.into_values().collect()
    }

    /// The latency matrix per node and per region pair.
    pub fn latency_view(&self) -> LatencyView {
        let now = self.now();
        let records: Vec<NodeRecord> = self.nodes.snapshot();
        let nodes = self.latency_figures(&records, now);
        let mut names: BTreeSet<RegionId> = self.settings.regions.regions.keys().cloned().collect();
        names.extend(records.iter().map(|n| n.region.clone()));
        let mut regions: BTreeMap<RegionId, BTreeMap<RegionId, Estimate>> = BTreeMap::new();
        for from in &names {
            let members: Vec<&BTreeMap<RegionId, Estimate>> = records
                .iter()
                .filter(|n| &n.region == from)
                .filter_map(|n| nodes.get(&n.id))
                .collect();
            let row = regions.entry(from.clone()).or_default();
            for to in &names {
                let measured: Vec<&Estimate> = members
                    .iter()
                    .filter_map(|m| m.get(to))
                    .filter(|e| e.source == Source::Measured)
                    .collect();
                let estimate = if measured.is_empty() {
                    self.settings.regions.hint(from, to).map(Estimate::hint)
                } else {
                    let pick = |f: fn(&Estimate) -> f64| {
                        median(&mut measured.iter().map(|e| f(e)).collect::<Vec<_>>())
                    };
                    Some(Estimate {
                        p50_ms: pick(|e| e.p50_ms),
                        p90_ms: pick(|e| e.p90_ms),
                        p99_ms: pick(|e| e.p99_ms),
                        source: Source::Measured,
                        age_secs: measured.iter().filter_map(|e| e.age_secs).min(),
                        samples: measured.iter().map(|e| e.samples).sum(),
                    })
                };
                if let Some(estimate) = estimate {
                    row.insert(to.clone(), estimate);
                }
            }
        }
        let controller = AgentId::new(CONTROLLER_TARGET).map_or_else(
            |_| BTreeMap::new(),
            |controller| {
                let ids: Vec<AgentId> = records.iter().map(|n| n.id.clone()).collect();
                let book = self.probes.book();
                book.to_peer(
                    &ids,
                    &controller,
                    now,
                    self.settings.placement.latency_window,
                )
            },
        );
        LatencyView {
            window_secs: self.settings.placement.latency_window.as_secs(),
            nodes,
            regions,
            controller,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> PlacementRequest {
        serde_json::from_value(json).expect("placement request")
    }

    fn field_of(result: Result<(PlacementSpec, u32), AppError>) -> String {
        match result {
            Err(AppError::InvalidField { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    fn report(key: &verge_shared::SigningKey, from: &str, to: &str, at: Timestamp) -> Vec<u8> {
        let report = LatencyReport {
            schema_version: SCHEMA_VERSION,
            agent: AgentId::new(from).expect("id"),
            at,
            samples: vec![verge_shared::latency::LatencySample {
                target: AgentId::new(to).expect("id"),
                rtt_micros: vec![30_000, 31_000, 29_000],
                lost: 0,
            }],
        };
        key.sign_json(verge_shared::latency::REPORT_PAYLOAD_TYPE, &report)
    }

    #[test]
    fn signed_reports_become_measured_figures_and_stale_ones_are_dropped() {
        let fx = crate::testing::fixture();
        let (a, b) = (
            verge_shared::SigningKey::generate().expect("key").0,
            verge_shared::SigningKey::generate().expect("key").0,
        );
        let now = Timestamp::now();
        for (key, id, region) in [(&a, "a1", "ra"), (&b, "b1", "rb")] {
            let topic = format!("verge/v1/agents/{id}/presence");
            fx.app
                .ingest(&topic, &crate::testing::presence(key, id, region), now);
        }
        let old = Timestamp::from_unix_millis(1_000);
        fx.app.ingest(
            "verge/v1/agents/a1/latency",
            &report(&a, "a1", "b1", old),
            now,
        );
        assert_eq!(
            fx.app.latency_view().nodes[&AgentId::new("a1").expect("id")].len(),
            1
        );
        // Signed by the wrong node: refused and counted.
        fx.app.ingest(
            "verge/v1/agents/a1/latency",
            &report(&b, "a1", "b1", now),
            now,
        );
        assert_eq!(fx.app.rejected_messages(), 1);
        fx.app.ingest(
            "verge/v1/agents/a1/latency",
            &report(&a, "a1", "b1", now),
            now,
        );
        let view = fx.app.latency_view();
        let figure =
            &view.nodes[&AgentId::new("a1").expect("id")][&RegionId::new("rb").expect("region")];
        assert_eq!((figure.source, figure.p50_ms), (Source::Measured, 30.0));
        let back = &view.regions[&RegionId::new("rb").expect("region")]
            [&RegionId::new("ra").expect("region")];
        assert_eq!(back.source, Source::Measured, "round trips count both ways");
    }

    #[test]
    fn every_placement_field_is_validated_by_name() {
        let ok = request(serde_json::json!({
            "latency": {"to": ["ap-seoul", "ap-busan"], "max_ms": 20},
            "replicas_per_region": 2, "spread": "node", "priority": 5
        }));
        let (spec, total) = validate(&ok, None).expect("valid");
        assert_eq!(total, 4);
        assert_eq!(spec.latency.as_ref().map(|l| l.percentile), Some(90));
        assert_eq!(spec.spread, SpreadSpec::Node);
        for (json, replicas, field) in [
            (
                serde_json::json!({"latency": {"to": [], "max_ms": 20}}),
                Some(1),
                "placement.latency.to",
            ),
            (
                serde_json::json!({"latency": {"to": ["A B"], "max_ms": 20}}),
                Some(1),
                "placement.latency.to[0]",
            ),
            (
                serde_json::json!({"latency": {"to": ["a", "a"], "max_ms": 20}}),
                Some(1),
                "placement.latency.to[1]",
            ),
            (
                serde_json::json!({"latency": {"to": ["a"], "max_ms": 0}}),
                Some(1),
                "placement.latency.max_ms",
            ),
            (
                serde_json::json!({"latency": {"to": ["a"], "max_ms": 5, "percentile": 95}}),
                Some(1),
                "placement.latency.percentile",
            ),
            (
                serde_json::json!({"spread": "rack"}),
                Some(1),
                "placement.spread",
            ),
            (
                serde_json::json!({"priority": -1}),
                Some(1),
                "placement.priority",
            ),
            (
                serde_json::json!({"replicas_per_region": 1}),
                None,
                "placement.replicas_per_region",
            ),
            (
                serde_json::json!({"latency": {"to": ["a"], "max_ms": 5}, "replicas_per_region": 1}),
                Some(1),
                "replicas",
            ),
            (serde_json::json!({}), None, "replicas"),
            (serde_json::json!({}), Some(101), "replicas"),
        ] {
            assert_eq!(
                field_of(validate(&request(json.clone()), replicas)),
                field,
                "{json}"
            );
        }
    }
}
