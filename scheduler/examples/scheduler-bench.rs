//! Scheduler benchmark: prints figures, asserts nothing.
//!
//! `cargo run --release -p verge-scheduler --example scheduler-bench`
//!
//! 1. Speed, one core: 100,000 replicas (a mix of latency-targeted,
//!    region-restricted, per-target-region and unconstrained services) on
//!    10,000 nodes in 50 regions, placed from scratch, then re-planned after
//!    one node is lost: in full, and re-placing only the lost node's replicas.
//! 2. Quality, seeded: on a synthetic topology where a fifth of the nodes
//!    sit behind a slow last mile, the share of latency-targeted replicas
//!    that really meet their target when placed by measured latency versus
//!    by static region labels alone.

use std::collections::BTreeMap;
use std::time::Instant;

use verge_scheduler::{
    Figure, LatencyTarget, NodeInput, Percentile, Placement, Plan, ServiceInput, Spread,
    Unschedulable, plan, replan_displaced,
};
use verge_shared::messages::Resources;
use verge_shared::{AgentId, RegionId, ServiceName};

/// SplitMix64: a seeded generator, so every run sees the same fleet.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    #[allow(clippy::cast_precision_loss)]
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const N_REGIONS: usize = 50;
const N_NODES: usize = 10_000;
const N_REPLICAS: u32 = 100_000;
const SEED: u64 = 0x5eed_2024;

struct Topology {
    regions: Vec<RegionId>,
    /// Round-trip ms between region centres.
    between: Vec<Vec<f64>>,
}

fn topology(rng: &mut Rng) -> Topology {
    // Region centres on a 300 x 300 plane; 1 unit = 1 ms of round trip.
    let points: Vec<(f64, f64)> = (0..N_REGIONS)
        .map(|_| (rng.unit() * 300.0, rng.unit() * 300.0))
        .collect();
    let between = points
        .iter()
        .map(|a| {
            points
                .iter()
                .map(|b| ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt() + 2.0)
                .collect()
        })
        .collect();
    Topology {
        regions: (0..N_REGIONS)
            .map(|i| RegionId::new(format!("region-{i:02}")).expect("region"))
            .collect(),
        between,
    }
}

/// Nodes with their true latency to every region: the region distance plus
/// a per-node last mile (slow for one node in five) plus jitter.
fn nodes(rng: &mut Rng, topo: &Topology) -> Vec<NodeInput> {
    (0..N_NODES)
        .map(|i| {
            let home = i % N_REGIONS;
            let last_mile = if rng.below(5) == 0 {
                15.0 + rng.unit() * 25.0
            } else {
                rng.unit() * 2.0
            };
            let latency: BTreeMap<RegionId, Figure> = topo
                .regions
                .iter()
                .enumerate()
                .map(|(r, id)| {
                    let base = topo.between[home][r] + last_mile + rng.unit();
                    let figure = Figure {
                        p50_ms: base,
                        p90_ms: base * 1.1,
                        p99_ms: base * 1.3,
                    };
                    (id.clone(), figure)
                })
                .collect();
            NodeInput {
                id: AgentId::new(format!("node-{i:05}")).expect("id"),
                region: topo.regions[home].clone(),
                zone: Some(format!("zone-{}", home / 5)),
                capacity: Resources {
                    cpu_millis: 8000,
                    memory_mb: 16_384,
                },
                schedulable: Ok(()),
                latency,
            }
        })
        .collect()
}

fn pick_regions(rng: &mut Rng, topo: &Topology, n: usize) -> Vec<RegionId> {
    let mut out: Vec<RegionId> = Vec::new();
    while out.len() < n {
        let r = topo.regions[rng.below(N_REGIONS as u64) as usize].clone();
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// The region closest to `region` (other than itself).
fn nearest(topo: &Topology, region: &RegionId) -> RegionId {
    let from = topo
        .regions
        .iter()
        .position(|r| r == region)
        .expect("known region");
    let (to, _) = topo.between[from]
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != from)
        .min_by(|a, b| a.1.total_cmp(b.1))
        .expect("more than one region");
    topo.regions[to].clone()
}

/// A realistic mix until `N_REPLICAS` replicas are asked for.
fn services(rng: &mut Rng, topo: &Topology) -> Vec<ServiceInput> {
    let mut out = Vec::new();
    let mut total = 0;
    while total < N_REPLICAS {
        let kind = rng.below(10);
        let replicas = 5 + u32::try_from(rng.below(16)).unwrap_or(0);
        let mut s = ServiceInput {
            name: ServiceName::new(format!("svc-{:05}", out.len())).expect("name"),
            replicas,
            regions: Vec::new(),
            resources: Resources {
                cpu_millis: 50 + u32::try_from(rng.below(450)).unwrap_or(0),
                memory_mb: 32 + u32::try_from(rng.below(224)).unwrap_or(0),
            },
            latency: None,
            per_target_region: false,
            spread: Spread::Zone,
            priority: u32::try_from(rng.below(3)).unwrap_or(0),
        };
        match kind {
            // 40 %: a latency target to one region, or to two neighbouring ones.
            0..=3 => {
                let mut to = pick_regions(rng, topo, 1);
                if rng.below(4) == 0 {
                    to.push(nearest(topo, &to[0]));
                }
                s.latency = Some(LatencyTarget {
                    to,
                    max_ms: [20.0, 40.0, 60.0][usize::try_from(rng.below(3)).unwrap_or(0)],
                    percentile: Percentile::P90,
                });
                s.spread = Spread::Node;
            }
            // 30 %: allowed regions only.
            4..=6 => {
                let n = 1 + usize::try_from(rng.below(3)).unwrap_or(0);
                s.regions = pick_regions(rng, topo, n);
            }
            // 20 %: two replicas near each of two or three regions.
            7 | 8 => {
                let n = 2 + usize::try_from(rng.below(2)).unwrap_or(0);
                s.latency = Some(LatencyTarget {
                    to: pick_regions(rng, topo, n),
                    max_ms: 20.0,
                    percentile: Percentile::P90,
                });
                s.per_target_region = true;
                s.replicas = 2 * u32::try_from(n).unwrap_or(1);
            }
            // 10 %: anywhere.
            _ => {}
        }
        total += s.replicas;
        out.push(s);
    }
    out
}

/// Timed runs of the incremental re-placement (it is short enough for
/// one sample to be noise).
const INCREMENTAL_RUNS: usize = 21;

fn count(plan: &verge_scheduler::Plan) -> (usize, usize) {
    let all: usize = plan.services.values().map(Vec::len).sum();
    let placed = plan
        .services
        .values()
        .flatten()
        .filter(|r| r.node.is_some())
        .count();
    (placed, all - placed)
}

fn speed() {
    let mut rng = Rng(SEED);
    let topo = topology(&mut rng);
    let nodes = nodes(&mut rng, &topo);
    let services = services(&mut rng, &topo);
    let replicas: u32 = services.iter().map(|s| s.replicas).sum();

    let start = Instant::now();
    let first = plan(&nodes, &services, &Placement::new());
    let scratch = start.elapsed();
    let (placed, unplaced) = count(&first);
    let previous = first.placement();

    // Lose the node that carries the most replicas.
    let mut load: BTreeMap<&AgentId, usize> = BTreeMap::new();
    for node in previous.values() {
        *load.entry(node).or_default() += 1;
    }
    let (lost, on_lost) = load
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, n)| ((*id).clone(), *n))
        .expect("something placed");
    let remaining: Vec<NodeInput> = nodes.iter().filter(|n| n.id != lost).cloned().collect();
    let start = Instant::now();
    let second = plan(&remaining, &services, &previous);
    let after_loss = start.elapsed();
    let after = second.placement();
    let moved = after
        .iter()
        .filter(|(k, v)| previous.get(*k).is_some_and(|old| old != *v))
        .count();
    let lost_unplaced = previous
        .iter()
        .filter(|(k, v)| **v == lost && !after.contains_key(*k))
        .count();

    // The same loss, re-placing only the displaced replicas: the node is
    // reported offline, as the controller sees a lost node.
    let mut offline = nodes.clone();
    for n in offline.iter_mut().filter(|n| n.id == lost) {
        n.schedulable = Err(Unschedulable::Offline);
    }
    let mut incremental_ms = Vec::with_capacity(INCREMENTAL_RUNS);
    let mut incremental = Plan::default();
    for _ in 0..INCREMENTAL_RUNS {
        let input = first.clone();
        let start = Instant::now();
        let out = replan_displaced(&offline, &services, input);
        incremental_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        // Dropping the previous result is not part of the re-placement.
        incremental = out;
    }
    incremental_ms.sort_by(f64::total_cmp);
    let same_as_full = incremental.placement() == plan(&offline, &services, &previous).placement();

    println!("== Scheduler speed (one core, seed {SEED:#x}) ==");
    println!(
        "fleet: {} nodes in {N_REGIONS} regions; {} services, {replicas} replicas",
        nodes.len(),
        services.len()
    );
    #[allow(clippy::cast_precision_loss)]
    let rate = f64::from(replicas) / scratch.as_secs_f64();
    println!(
        "from scratch: {:.1} ms ({rate:.0} replicas/s); {placed} placed, {unplaced} unplaced",
        scratch.as_secs_f64() * 1000.0
    );
    println!(
        "after losing {lost} ({on_lost} replicas): full re-plan {:.1} ms; {moved} replicas moved, {lost_unplaced} left unplaced",
        after_loss.as_secs_f64() * 1000.0
    );
    println!(
        "after the same node goes offline: incremental re-placement median {:.2} ms, max {:.2} ms over {INCREMENTAL_RUNS} runs; same placements as a full re-plan: {same_as_full}",
        incremental_ms[INCREMENTAL_RUNS / 2],
        incremental_ms[INCREMENTAL_RUNS - 1]
    );
}

/// Share of latency-targeted replicas (targets to all of one or two
/// regions) whose node really meets the target.
fn quality() {
    let mut rng = Rng(SEED ^ 0xabcd);
    let topo = topology(&mut rng);
    let nodes = nodes(&mut rng, &topo);
    let targeted: Vec<ServiceInput> = services(&mut rng, &topo)
        .into_iter()
        .filter(|s| s.latency.is_some() && !s.per_target_region)
        .collect();
    let by_id: BTreeMap<&AgentId, &NodeInput> = nodes.iter().map(|n| (&n.id, n)).collect();
    let meets = |p: &verge_scheduler::Plan| {
        let mut ok = 0usize;
        let mut all = 0usize;
        for s in &targeted {
            let target = s.latency.as_ref().expect("targeted");
            for r in &p.services[&s.name] {
                all += 1;
                let Some(node) = r.node.as_ref().map(|id| by_id[id]) else {
                    continue;
                };
                if target
                    .to
                    .iter()
                    .all(|region| node.latency[region].at(target.percentile) <= target.max_ms)
                {
                    ok += 1;
                }
            }
        }
        (ok, all)
    };
    let verge = plan(&nodes, &targeted, &Placement::new());
    // Static labels: the target regions become allowed regions; no latency filter.
    let labelled: Vec<ServiceInput> = targeted
        .iter()
        .map(|s| {
            let target = s.latency.as_ref().expect("targeted");
            ServiceInput {
                regions: target.to.clone(),
                latency: None,
                ..s.clone()
            }
        })
        .collect();
    let static_plan = plan(&nodes, &labelled, &Placement::new());
    let (v_ok, v_all) = meets(&verge);
    let (s_ok, s_all) = meets(&static_plan);
    #[allow(clippy::cast_precision_loss)]
    let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
    println!("== Placement quality (seed {:#x}) ==", SEED ^ 0xabcd);
    println!(
        "topology: {N_REGIONS} regions on a 300 ms plane, {N_NODES} nodes, 1 in 5 behind a 15-40 ms last mile"
    );
    println!(
        "measured latency (Verge): {v_ok}/{v_all} targeted replicas meet their target ({:.1} %)",
        pct(v_ok, v_all)
    );
    println!(
        "static region labels:     {s_ok}/{s_all} targeted replicas meet their target ({:.1} %)",
        pct(s_ok, s_all)
    );
}

fn main() {
    speed();
    quality();
}
