//! Placement: a pure function from nodes (with their latency to regions),
//! services (with their placement intent) and the previous placement to a
//! plan. No I/O, no clock, no randomness; docs/placement.md is the
//! operator's version of this comment.
//!
//! Hard filters (a node must pass all of them):
//! 1. schedulable: healthy (or within the failover grace), not cordoned
//!    (a cordoned node keeps the replicas it runs) and not drained;
//! 2. in one of the service's allowed regions (none listed: any region);
//! 3. within the latency target to every target region of the replica, at
//!    the target's percentile: `max_ms` for a new placement, `max_ms` plus a
//!    hysteresis margin ([`keep_limit`]) for a replica that already runs there;
//! 4. not already running a replica of the same service;
//! 5. enough free CPU and memory (capacity is never exceeded).
//!
//! Order and scores:
//! - Services are handled by priority (higher first), then by name.
//! - Stability first: every replica whose previous node still passes the
//!   filters stays, for all services, before anything new claims capacity.
//! - A new replica goes to the passing node with, in order: the fewest
//!   replicas of this service in its zone (spread `zone`; spread `node`
//!   skips this), the lowest latency to its targets in 5 ms steps, the
//!   largest free memory fraction, the first in a rotation of the nodes
//!   seeded by the service's name. At most `NODES_TO_SCORE` nodes are
//!   scored per replica: the closest, then those with the most free memory.
//!
//! A replica that cannot be placed carries a reason that counts why each
//! node was ruled out, largest group first, in the style of Kubernetes'
//! scheduler events: "0/12 nodes: 5 over the 20 ms target to ap-seoul
//! (best 38 ms), 4 insufficient memory, 3 offline".

use std::borrow::Cow;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;

use verge_shared::digest::Sha256Digest;
use verge_shared::messages::Resources;
use verge_shared::{AgentId, RegionId, ServiceName};

/// Why a node takes no new work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unschedulable {
    /// The node said it is offline (or its Last Will did).
    Offline,
    /// The node stopped sending heartbeats.
    NotResponding,
    /// An operator cordoned the node: it keeps what it runs, takes nothing new.
    Cordoned,
    /// An operator drained the node: its replicas move elsewhere.
    Drained,
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unschedulable::Offline => "offline",
            Unschedulable::NotResponding => "not responding",
            Unschedulable::Cordoned => "cordoned",
            Unschedulable::Drained => "drained",
        })
    }
}

/// Which percentile of the round-trip time a latency target bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Percentile {
    P50,
    P90,
    P99,
}

/// A node's latency to one region, in milliseconds, at the percentiles a
/// target may name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figure {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

impl Figure {
    /// The same value at every percentile (a static hint or an estimate).
    pub fn flat(ms: f64) -> Self {
        Self {
            p50_ms: ms,
            p90_ms: ms,
            p99_ms: ms,
        }
    }

    pub fn at(&self, percentile: Percentile) -> f64 {
        match percentile {
            Percentile::P50 => self.p50_ms,
            Percentile::P90 => self.p90_ms,
            Percentile::P99 => self.p99_ms,
        }
    }
}

/// "Every replica within `max_ms` of the regions in `to`."
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyTarget {
    pub to: Vec<RegionId>,
    pub max_ms: f64,
    pub percentile: Percentile,
}

/// Replicas placed on nodes closer to `max_ms` than this stay where they
/// run while their latency stays under the returned limit, so that a
/// measurement wobbling around the target does not move them back and
/// forth: a quarter of the target, at least 2 ms.
pub fn keep_limit(max_ms: f64) -> f64 {
    max_ms + (max_ms * 0.25).max(2.0)
}

/// Width of the latency steps in the score: nodes within the same step are
/// equally close, and spread and free memory decide between them.
const LATENCY_STEP_MS: f64 = 5.0;

/// How replicas of one service are spread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Spread {
    /// Fewest replicas per zone first (a region without a zone is its own zone).
    #[default]
    Zone,
    /// Only one replica per node; latency decides first.
    Node,
}

/// A node as the scheduler sees it.
#[derive(Clone, Debug)]
pub struct NodeInput {
    pub id: AgentId,
    pub region: RegionId,
    /// The zone of the node's region; `None` makes the region its own zone.
    pub zone: Option<String>,
    pub capacity: Resources,
    /// `Err` says why the node may not run anything.
    pub schedulable: Result<(), Unschedulable>,
    /// The node's latency to regions; a region missing here has no figure.
    pub latency: BTreeMap<RegionId, Figure>,
}

/// A service as the scheduler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceInput {
    pub name: ServiceName,
    /// Total replicas. With `per_target_region`, replica `i` targets only
    /// `latency.to[i % to.len()]`.
    pub replicas: u32,
    /// Empty means any region.
    pub regions: Vec<RegionId>,
    pub resources: Resources,
    pub latency: Option<LatencyTarget>,
    pub per_target_region: bool,
    pub spread: Spread,
    /// Higher places first.
    pub priority: u32,
}

impl ServiceInput {
    /// Which regions of `latency.to` replica `index` targets.
    fn target_range(&self, index: u32) -> std::ops::Range<usize> {
        match &self.latency {
            None => 0..0,
            Some(t) if self.per_target_region && !t.to.is_empty() => {
                let i = index as usize % t.to.len();
                i..i + 1
            }
            Some(t) => 0..t.to.len(),
        }
    }

    /// Replicas with the same targets share candidates and reasons.
    fn group(&self, index: u32) -> usize {
        match &self.latency {
            Some(t) if self.per_target_region && !t.to.is_empty() => index as usize % t.to.len(),
            _ => 0,
        }
    }
}

/// Where each (service, replica index) ran before.
pub type Placement = BTreeMap<(ServiceName, u32), AgentId>;

/// The decision for one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaPlan {
    pub index: u32,
    pub node: Option<AgentId>,
    /// Why `node` is `None`.
    pub reason: Option<String>,
}

/// The decisions for every replica of every service.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub services: BTreeMap<ServiceName, Vec<ReplicaPlan>>,
    /// Per node, what `services` places there. Derived data, kept so that
    /// [`replan_displaced`] need not scan every replica; rebuilt there when
    /// it does not match `services` (a plan not made by the scheduler).
    load: BTreeMap<AgentId, NodeLoad>,
}

/// Plans are equal when they decide the same; `load` follows from that.
impl PartialEq for Plan {
    fn eq(&self, other: &Self) -> bool {
        self.services == other.services
    }
}

impl Eq for Plan {}

/// The replicas one node runs under a plan, and the resources they take.
#[derive(Clone, Debug, Default)]
struct NodeLoad {
    used: Resources,
    replicas: Vec<(ServiceName, u32)>,
}

impl NodeLoad {
    fn add(&mut self, service: &ServiceInput, replica: u32) {
        self.used.cpu_millis = self
            .used
            .cpu_millis
            .saturating_add(service.resources.cpu_millis);
        self.used.memory_mb = self
            .used
            .memory_mb
            .saturating_add(service.resources.memory_mb);
        self.replicas.push((service.name.clone(), replica));
    }
}

impl Plan {
    /// Every placed replica, in the shape the next plan takes as `previous`.
    pub fn placement(&self) -> Placement {
        self.services
            .iter()
            .flat_map(|(service, replicas)| {
                replicas.iter().filter_map(move |r| {
                    r.node
                        .clone()
                        .map(|node| ((service.clone(), r.index), node))
                })
            })
            .collect()
    }
}

/// Why one node cannot take one replica; ordered for the reason text.
/// Latency misfits name the target by its position in `latency.to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Misfit {
    Unschedulable(Unschedulable),
    Region,
    /// Over the target to this region.
    Latency(usize),
    /// No figure at all to this region.
    NoLatency(usize),
    AlreadyRuns,
    Cpu,
    Memory,
}

/// Whether a latency check is for a replica already on the node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Keep,
    New,
}

/// How many passing nodes are scored for one replica: closest first, then
/// those with the most free memory (so the least loaded equal nodes are
/// always among them). Like kube-scheduler's `percentageOfNodesToScore`,
/// this bounds the work per replica on large fleets; a fleet or candidate
/// list smaller than this is scored in full.
const NODES_TO_SCORE: usize = 100;

struct NodeState<'a> {
    input: &'a NodeInput,
    region: usize,
    zone: usize,
    free: Resources,
    /// Latency figures by target slot (see [`World::new`]).
    latency: Vec<Option<Figure>>,
}

/// A service with its regions interned.
struct ServiceState<'a> {
    input: &'a ServiceInput,
    /// Interned allowed regions; `None` means any region.
    allowed: Option<Vec<usize>>,
    /// `latency.to` as target slots.
    to: Vec<usize>,
}

impl ServiceState<'_> {
    fn percentile(&self) -> Percentile {
        self.input
            .latency
            .as_ref()
            .map_or(Percentile::P90, |t| t.percentile)
    }

    fn limit(&self, mode: Mode) -> f64 {
        match (&self.input.latency, mode) {
            (None, _) => f64::INFINITY,
            (Some(t), Mode::New) => t.max_ms,
            (Some(t), Mode::Keep) => keep_limit(t.max_ms),
        }
    }
}

impl NodeState<'_> {
    /// The hard filters that do not change while a plan is made; with the
    /// latency seen when the latency filter fails.
    fn static_misfit(
        &self,
        service: &ServiceState<'_>,
        targets: std::ops::Range<usize>,
        mode: Mode,
    ) -> Option<(Misfit, f64)> {
        if let Err(why) = self.input.schedulable {
            // A cordoned node keeps what it runs; only draining moves replicas.
            if !(mode == Mode::Keep && why == Unschedulable::Cordoned) {
                return Some((Misfit::Unschedulable(why), 0.0));
            }
        }
        if let Some(allowed) = &service.allowed
            && !allowed.contains(&self.region)
        {
            return Some((Misfit::Region, 0.0));
        }
        let limit = service.limit(mode);
        for k in targets {
            match self.latency[service.to[k]] {
                None => return Some((Misfit::NoLatency(k), 0.0)),
                Some(figure) => {
                    let ms = figure.at(service.percentile());
                    if ms.is_nan() || ms > limit {
                        return Some((Misfit::Latency(k), ms));
                    }
                }
            }
        }
        None
    }

    /// The filters that depend on what has been placed so far.
    fn dynamic_misfit(&self, service: &ServiceInput, runs_it: bool) -> Option<Misfit> {
        if runs_it {
            return Some(Misfit::AlreadyRuns);
        }
        self.capacity_misfit(service)
    }

    /// Whether a replica of `service` does not fit in what is free.
    fn capacity_misfit(&self, service: &ServiceInput) -> Option<Misfit> {
        if service.resources.cpu_millis > self.free.cpu_millis {
            return Some(Misfit::Cpu);
        }
        if service.resources.memory_mb > self.free.memory_mb {
            return Some(Misfit::Memory);
        }
        None
    }

    fn take(&mut self, service: &ServiceInput) {
        self.free.cpu_millis -= service.resources.cpu_millis;
        self.free.memory_mb -= service.resources.memory_mb;
    }

    /// The worst latency to `targets` at the service's percentile (0 without a target).
    fn latency_to(&self, service: &ServiceState<'_>, targets: std::ops::Range<usize>) -> f64 {
        targets
            .filter_map(|k| self.latency[service.to[k]])
            .map(|f| f.at(service.percentile()))
            .fold(0.0, f64::max)
    }
}

/// What has been placed of one service so far.
#[derive(Default)]
struct Placed {
    nodes: Vec<usize>,
    per_zone: HashMap<usize, u32>,
}

impl Placed {
    fn runs_on(&self, node: usize) -> bool {
        self.nodes.contains(&node)
    }

    fn add(&mut self, node: usize, zone: usize) {
        self.nodes.push(node);
        *self.per_zone.entry(zone).or_default() += 1;
    }
}

/// Lookups built once per plan: nodes per region, and nodes within a
/// latency of a target region.
struct Index {
    by_region: Vec<Vec<usize>>,
    /// Per (target slot, percentile): nodes sorted closest first, built on
    /// first use. Sorting pays off when many services share a target (a
    /// full plan); for a handful of replicas (an incremental re-placement)
    /// one pass over `columns` is cheaper, so `sorted` is off there.
    closest: HashMap<(usize, Percentile), Vec<(f64, usize)>>,
    sorted: bool,
    /// Without `sorted`: per target slot, every node's figure in node
    /// order, so that a pass reads one contiguous column.
    columns: Vec<Vec<Option<Figure>>>,
    /// Schedulable nodes in id order: the candidates of every service
    /// without allowed regions and latency target, built on first use.
    open: Option<Vec<usize>>,
}

impl Index {
    /// Nodes whose figure to target `slot` at `percentile` is within `limit`.
    fn within(
        &mut self,
        states: &[NodeState<'_>],
        slot: usize,
        percentile: Percentile,
        limit: f64,
    ) -> Vec<usize> {
        let figure = |s: &NodeState<'_>| s.latency[slot].map(|f| f.at(percentile));
        if !self.sorted {
            return (self.columns[slot].iter().enumerate())
                .filter(|(_, f)| f.is_some_and(|f| f.at(percentile) <= limit))
                .map(|(i, _)| i)
                .collect();
        }
        let closest = self.closest.entry((slot, percentile)).or_insert_with(|| {
            let mut list: Vec<(f64, usize)> = states
                .iter()
                .enumerate()
                .filter_map(|(i, s)| figure(s).map(|ms| (ms, i)))
                .collect();
            list.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            list
        });
        let end = closest.partition_point(|(ms, _)| *ms <= limit);
        closest[..end].iter().map(|(_, i)| *i).collect()
    }
}

/// The nodes of one plan in id order (duplicates dropped), with their
/// positions by id.
struct Fleet<'a> {
    sorted: Vec<&'a NodeInput>,
    ids: HashMap<&'a AgentId, usize>,
}

impl<'a> Fleet<'a> {
    fn new(nodes: &'a [NodeInput]) -> Self {
        let mut sorted: Vec<&NodeInput> = nodes.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        sorted.dedup_by(|a, b| a.id == b.id);
        let ids = sorted.iter().enumerate().map(|(i, n)| (&n.id, i)).collect();
        Self { sorted, ids }
    }
}

/// The scheduler's working state for a set of services on a fleet: node
/// states (free capacity starts at full capacity), lookups, and the
/// services in placement order with their regions interned.
struct World<'a> {
    states: Vec<NodeState<'a>>,
    index: Index,
    services: Vec<ServiceState<'a>>,
}

impl<'a> World<'a> {
    /// Interns the regions nodes are in, and gives each region `services`
    /// target a slot in the nodes' latency tables: latency to any other
    /// region is never looked at, so the tables hold only what the services
    /// need. `sorted`: see [`Index::closest`].
    fn new(fleet: &Fleet<'a>, services: Vec<&'a ServiceInput>, sorted: bool) -> Self {
        let mut services = services;
        services
            .sort_by(|a, b| (Reverse(a.priority), &a.name).cmp(&(Reverse(b.priority), &b.name)));
        services.dedup_by(|a, b| a.name == b.name);

        let mut regions: HashMap<&RegionId, usize> = HashMap::new();
        for n in &fleet.sorted {
            let next = regions.len();
            regions.entry(&n.region).or_insert(next);
        }
        let mut slots: HashMap<&RegionId, usize> = HashMap::new();
        for t in services.iter().filter_map(|s| s.latency.as_ref()) {
            for r in &t.to {
                let next = slots.len();
                slots.entry(r).or_insert(next);
            }
        }
        let mut zones: HashMap<&str, usize> = HashMap::new();
        let mut index = Index {
            by_region: vec![Vec::new(); regions.len()],
            closest: HashMap::new(),
            open: None,
            sorted,
            columns: if sorted {
                Vec::new()
            } else {
                vec![Vec::with_capacity(fleet.sorted.len()); slots.len()]
            },
        };
        let mut states: Vec<NodeState<'_>> = Vec::with_capacity(fleet.sorted.len());
        for (i, n) in fleet.sorted.iter().enumerate() {
            let zone_name = n.zone.as_deref().unwrap_or(n.region.as_str());
            let next = zones.len();
            let mut latency = vec![None; slots.len()];
            for (r, slot) in &slots {
                latency[*slot] = n.latency.get(*r).copied();
            }
            for (column, figure) in index.columns.iter_mut().zip(&latency) {
                column.push(*figure);
            }
            let region = regions[&n.region];
            index.by_region[region].push(i);
            states.push(NodeState {
                input: n,
                region,
                zone: *zones.entry(zone_name).or_insert(next),
                free: n.capacity,
                latency,
            });
        }
        let services = services
            .into_iter()
            .map(|s| ServiceState {
                input: s,
                allowed: (!s.regions.is_empty()).then(|| {
                    s.regions
                        .iter()
                        .filter_map(|r| regions.get(r).copied())
                        .collect()
                }),
                to: s
                    .latency
                    .as_ref()
                    .map_or_else(Vec::new, |t| t.to.iter().map(|r| slots[r]).collect()),
            })
            .collect();
        Self {
            states,
            index,
            services,
        }
    }

    /// Places one replica that is not kept where it ran.
    fn place(
        &mut self,
        si: usize,
        groups: &mut HashMap<usize, Group>,
        replica: u32,
        placed: &mut Placed,
    ) -> ReplicaPlan {
        let service = &self.services[si];
        let group = groups
            .entry(service.input.group(replica))
            .or_insert_with(|| Group::new(&self.states, &mut self.index, service, replica));
        match group.place(&mut self.states, service, replica, placed) {
            Ok(node) => ReplicaPlan {
                index: replica,
                node: Some(self.states[node].input.id.clone()),
                reason: None,
            },
            Err(reason) => ReplicaPlan {
                index: replica,
                node: None,
                reason: Some(reason),
            },
        }
    }
}

/// Computes a placement. Deterministic: the same input gives the same plan,
/// whatever the order of `nodes` and `services`.
pub fn plan(nodes: &[NodeInput], services: &[ServiceInput], previous: &Placement) -> Plan {
    let fleet = Fleet::new(nodes);
    let mut world = World::new(&fleet, services.iter().collect(), true);

    // Stability: keep what runs, before anything new claims capacity.
    let mut placed: Vec<Placed> = world.services.iter().map(|_| Placed::default()).collect();
    let mut kept: HashMap<(usize, u32), usize> = HashMap::new();
    for (si, service) in world.services.iter().enumerate() {
        let input = service.input;
        for replica in 0..input.replicas {
            let Some(&node) = previous
                .get(&(input.name.clone(), replica))
                .and_then(|id| fleet.ids.get(id))
            else {
                continue;
            };
            let state = &mut world.states[node];
            let fits = state
                .static_misfit(service, input.target_range(replica), Mode::Keep)
                .is_none()
                && state
                    .dynamic_misfit(input, placed[si].runs_on(node))
                    .is_none();
            if fits {
                state.take(input);
                placed[si].add(node, state.zone);
                kept.insert((si, replica), node);
            }
        }
    }

    let mut plan = Plan::default();
    for (si, placed) in placed.iter_mut().enumerate() {
        let input = world.services[si].input;
        let mut groups: HashMap<usize, Group> = HashMap::new();
        let mut replicas = Vec::with_capacity(input.replicas as usize);
        for replica in 0..input.replicas {
            replicas.push(match kept.get(&(si, replica)) {
                Some(&node) => ReplicaPlan {
                    index: replica,
                    node: Some(world.states[node].input.id.clone()),
                    reason: None,
                },
                None => world.place(si, &mut groups, replica, placed),
            });
        }
        plan.services.insert(input.name.clone(), replicas);
    }
    plan.load = index_load(&plan.services, services);
    plan
}

/// Per node, the replicas `decided` places there and what they take.
fn index_load(
    decided: &BTreeMap<ServiceName, Vec<ReplicaPlan>>,
    services: &[ServiceInput],
) -> BTreeMap<AgentId, NodeLoad> {
    let by_name: HashMap<&ServiceName, &ServiceInput> =
        services.iter().map(|s| (&s.name, s)).collect();
    let mut load: BTreeMap<AgentId, NodeLoad> = BTreeMap::new();
    for (name, replicas) in decided {
        let Some(input) = by_name.get(name) else {
            continue;
        };
        for r in replicas {
            if let Some(node) = &r.node {
                load.entry(node.clone()).or_default().add(input, r.index);
            }
        }
    }
    load
}

/// Re-places only the replicas of `previous` whose node is gone or may no
/// longer run them (offline, not responding, drained); every other
/// placement, and every reason of a replica that was already unplaced,
/// stays as it is. Capacity is accounted from the kept placements.
///
/// `previous` must be what [`plan`] returned for the same services and
/// nodes, where only nodes' `schedulable` may have changed since, and only
/// away from `Ok`. Under that condition the outcome equals
/// `plan(nodes, services, &previous.placement())`: the full planner keeps
/// every replica that still passes the filters, which is every replica on
/// a node that may still run it, and replicas that found no node before
/// find none now, as capacity only shrank. The cost is one pass over the
/// nodes (the plan's per-node load gives capacity and the replicas to
/// move) plus the work for the displaced replicas' services, instead of
/// re-planning every service.
pub fn replan_displaced(nodes: &[NodeInput], services: &[ServiceInput], previous: Plan) -> Plan {
    let mut plan = previous;
    let n_placed: usize = plan
        .services
        .values()
        .flatten()
        .filter(|r| r.node.is_some())
        .count();
    if plan.load.values().map(|l| l.replicas.len()).sum::<usize>() != n_placed {
        plan.load = index_load(&plan.services, services);
    }
    let fleet = Fleet::new(nodes);
    let keeps: Vec<bool> = fleet.sorted.iter().map(|n| runs_what_it_has(n)).collect();
    // What the kept placements use, per node; and the replicas to move.
    let mut used = vec![Resources::default(); fleet.sorted.len()];
    let mut displaced: BTreeMap<ServiceName, Vec<u32>> = BTreeMap::new();
    let mut gone: Vec<AgentId> = Vec::new();
    for (id, load) in &plan.load {
        match fleet.ids.get(id) {
            Some(&i) if keeps[i] => used[i] = load.used,
            _ => {
                gone.push(id.clone());
                for (service, replica) in &load.replicas {
                    displaced.entry(service.clone()).or_default().push(*replica);
                }
            }
        }
    }
    if displaced.is_empty() {
        return plan;
    }
    for id in &gone {
        plan.load.remove(id);
    }
    let inputs: Vec<&ServiceInput> = services
        .iter()
        .filter(|s| displaced.contains_key(&s.name))
        .collect();
    let mut world = World::new(&fleet, inputs, false);
    for (state, used) in world.states.iter_mut().zip(&used) {
        state.free.cpu_millis = state.free.cpu_millis.saturating_sub(used.cpu_millis);
        state.free.memory_mb = state.free.memory_mb.saturating_sub(used.memory_mb);
    }
    for si in 0..world.services.len() {
        let input = world.services[si].input;
        let (Some(replicas), Some(moving)) = (
            plan.services.get_mut(&input.name),
            displaced.get_mut(&input.name),
        ) else {
            continue;
        };
        let mut placed = Placed::default();
        for node in replicas.iter().filter_map(|r| r.node.as_ref()) {
            if let Some(&i) = fleet.ids.get(node)
                && keeps[i]
            {
                placed.add(i, world.states[i].zone);
            }
        }
        // In index order, as the full planner places them.
        moving.sort_unstable();
        let mut groups: HashMap<usize, Group> = HashMap::new();
        for &index in moving.iter() {
            let Some(slot) = replicas.iter_mut().find(|r| r.index == index) else {
                continue;
            };
            *slot = world.place(si, &mut groups, index, &mut placed);
            if let Some(node) = &slot.node {
                plan.load.entry(node.clone()).or_default().add(input, index);
            }
        }
    }
    plan
}

/// Whether `now` differs from `before` only by nodes that may no longer run
/// what they run (schedulable or cordoned before, offline, not responding,
/// drained or cordoned now): the condition under which [`replan_displaced`]
/// of the plan made from `before` equals a full re-plan.
pub fn only_nodes_lost(before: &[NodeInput], now: &[NodeInput]) -> bool {
    before.len() == now.len()
        && before.iter().zip(now).all(|(b, n)| {
            b.id == n.id
                && b.region == n.region
                && b.zone == n.zone
                && b.capacity == n.capacity
                && b.latency == n.latency
                && (b.schedulable == n.schedulable
                    || (runs_what_it_has(b) && n.schedulable.is_err()))
        })
}

/// Whether a node keeps the replicas it runs: schedulable, or cordoned.
fn runs_what_it_has(node: &NodeInput) -> bool {
    matches!(node.schedulable, Ok(()) | Err(Unschedulable::Cordoned))
}

/// The replicas of one service with the same targets: the nodes that could
/// take one when the group is formed, in the order they are scored, and the
/// reason once they are used up.
struct Group {
    /// Passing nodes with their latency step, in scoring order: closest
    /// step first, then most free memory, then a rotation seeded by the
    /// service. Only the first `NODES_TO_SCORE` plus the service's replica
    /// count are kept: at most that many are skipped (each runs one of the
    /// service's replicas) or scored by any replica of the group.
    candidates: Vec<(u64, usize)>,
    exhausted: Option<String>,
}

impl Group {
    /// The nodes passing the filters for `replica`'s group, given what is
    /// placed so far (nodes that run the service are not ruled out here). While the service's replicas are placed, only its own
    /// placements change the nodes' free capacity (services are placed one
    /// after another), and a node it took is ruled out for it anyway: the
    /// order fixed here stays right for the whole group.
    fn new(
        states: &[NodeState<'_>],
        index: &mut Index,
        service: &ServiceState<'_>,
        replica: u32,
    ) -> Self {
        let input = service.input;
        let targets = input.target_range(replica);
        let fits = |i: &usize| {
            states[*i]
                .static_misfit(service, targets.clone(), Mode::New)
                .is_none()
        };
        // Start from the smallest set that can hold every passing node.
        let pool: Cow<'_, [usize]> = match (&service.allowed, targets.clone().next()) {
            // Only health and cordon filter: the same pool for every such
            // service, found once.
            (None, None) => Cow::Borrowed(index.open.get_or_insert_with(|| {
                (0..states.len())
                    .filter(|i| states[*i].input.schedulable.is_ok())
                    .collect()
            })),
            (Some(allowed), _) => allowed
                .iter()
                .flat_map(|r| index.by_region[*r].iter().copied())
                .filter(fits)
                .collect::<Vec<_>>()
                .into(),
            (None, Some(first)) => index
                .within(
                    states,
                    service.to[first],
                    service.percentile(),
                    service.limit(Mode::New),
                )
                .into_iter()
                .filter(fits)
                .collect::<Vec<_>>()
                .into(),
        };
        let n = states.len();
        let start = rotation(&input.name, input.group(replica), n);
        // The scoring order as one key: closest step first, then the
        // largest free memory fraction, then the node's position counted
        // from `start` (nodes are indexed in id order). The rotation keeps
        // services that take no memory, or find many equal nodes, from all
        // starting at the lowest ids.
        // Nodes that already run the service are left in (checking each
        // against the placed replicas costs more than skipping them while
        // scoring); there are at most `replicas` of them.
        let keep = NODES_TO_SCORE.saturating_add(input.replicas as usize);
        // The first `keep` in scoring order, found with a bounded heap
        // whose top is the last of them: no list of the whole pool.
        let mut first: BinaryHeap<(u64, Reverse<u64>, usize, usize)> =
            BinaryHeap::with_capacity(keep + 1);
        for &i in pool.iter() {
            if states[i].capacity_misfit(input).is_some() {
                continue;
            }
            // Truncation is the point: 5 ms steps.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let step = (states[i].latency_to(service, targets.clone()) / LATENCY_STEP_MS) as u64;
            let key = (
                step,
                Reverse(free_fraction(&states[i])),
                (i + n - start) % n,
                i,
            );
            if first.len() < keep {
                first.push(key);
            } else if first.peek().is_some_and(|last| key < *last) {
                first.pop();
                first.push(key);
            }
        }
        let keyed = first.into_sorted_vec();
        Self {
            candidates: keyed.into_iter().map(|(step, _, _, i)| (step, i)).collect(),
            exhausted: None,
        }
    }

    fn place(
        &mut self,
        states: &mut [NodeState<'_>],
        service: &ServiceState<'_>,
        replica: u32,
        placed: &mut Placed,
    ) -> Result<usize, String> {
        if let Some(reason) = &self.exhausted {
            return Err(reason.clone());
        }
        let input = service.input;
        let spread = |node: usize, states: &[NodeState<'_>]| match input.spread {
            Spread::Zone => placed
                .per_zone
                .get(&states[node].zone)
                .copied()
                .unwrap_or(0),
            Spread::Node => 0,
        };
        let mut best: Option<(usize, u32, u64)> = None;
        let mut scored = 0;
        for (position, &(step, node)) in self.candidates.iter().enumerate() {
            if scored >= NODES_TO_SCORE {
                break;
            }
            if states[node]
                .dynamic_misfit(input, placed.runs_on(node))
                .is_some()
            {
                continue;
            }
            scored += 1;
            let key = (position, spread(node, states), step);
            if best.is_none_or(|current| compare(key, current) == Ordering::Less) {
                best = Some(key);
            }
        }
        match best.map(|(position, _, _)| self.candidates[position].1) {
            Some(node) => {
                states[node].take(input);
                placed.add(node, states[node].zone);
                Ok(node)
            }
            None => {
                let reason = explain(states, service, replica, placed);
                self.exhausted = Some(reason.clone());
                Err(reason)
            }
        }
    }
}

/// A node's free memory as a fraction of its memory, in units of 2^-32
/// (exact enough to order nodes; equal fractions give equal values); a node
/// without memory capacity counts as full.
fn free_fraction(state: &NodeState<'_>) -> u64 {
    match state.input.capacity.memory_mb {
        0 => 0,
        cap => (u64::from(state.free.memory_mb) << 32) / u64::from(cap),
    }
}

/// Where the rotation of service `name`'s replica group `group` starts among
/// `n` nodes: derived from the name, so the same inputs give the same plan
/// and different services start at different nodes.
fn rotation(name: &ServiceName, group: usize, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let seed = Sha256Digest::of(format!("{name}/{group}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&seed.as_bytes()[..8]);
    // The remainder is below `n`, which is a usize.
    #[allow(clippy::cast_possible_truncation)]
    let start = (u64::from_le_bytes(first) % n as u64) as usize;
    start
}

/// Orders two candidates `(position in the group's order, spread count,
/// latency step)`: fewer in the zone, then closer, then earlier in the
/// group's order (more free memory, then the rotation).
fn compare(a: (usize, u32, u64), b: (usize, u32, u64)) -> Ordering {
    (a.1, a.2, a.0).cmp(&(b.1, b.2, b.0))
}

/// "0/12 nodes: 5 over the 20 ms target to ap-seoul (best 38 ms), 4
/// insufficient memory, 3 offline": every node's first misfit, counted,
/// largest group first.
fn explain(
    states: &[NodeState<'_>],
    service: &ServiceState<'_>,
    replica: u32,
    placed: &Placed,
) -> String {
    if states.is_empty() {
        return "0/0 nodes: no nodes are registered".to_owned();
    }
    let input = service.input;
    let targets = input.target_range(replica);
    // Per misfit: how many nodes, the best latency seen, the most free resources.
    let mut groups: HashMap<Misfit, (usize, f64, Resources)> = HashMap::new();
    for (i, state) in states.iter().enumerate() {
        let (misfit, ms) = match state.static_misfit(service, targets.clone(), Mode::New) {
            Some(found) => found,
            None => match state.dynamic_misfit(input, placed.runs_on(i)) {
                Some(misfit) => (misfit, 0.0),
                // Cannot happen for an exhausted group; counted honestly anyway.
                None => continue,
            },
        };
        let entry = groups
            .entry(misfit)
            .or_insert((0, f64::INFINITY, Resources::default()));
        entry.0 += 1;
        entry.1 = entry.1.min(ms);
        entry.2.cpu_millis = entry.2.cpu_millis.max(state.free.cpu_millis);
        entry.2.memory_mb = entry.2.memory_mb.max(state.free.memory_mb);
    }
    let mut groups: Vec<(Misfit, (usize, f64, Resources))> = groups.into_iter().collect();
    // Largest group first, then the misfit order: deterministic.
    groups.sort_by_key(|(misfit, (count, _, _))| (Reverse(*count), *misfit));
    let region = |k: usize| {
        input
            .latency
            .as_ref()
            .and_then(|t| t.to.get(k))
            .map_or("?", RegionId::as_str)
    };
    let parts: Vec<String> = groups
        .into_iter()
        .map(|(misfit, (count, best, most_free))| {
            let at_most = if count > 1 { "at most " } else { "" };
            match misfit {
                Misfit::Unschedulable(why) => format!("{count} {why}"),
                Misfit::Region => {
                    let regions: Vec<&str> = input.regions.iter().map(RegionId::as_str).collect();
                    format!("{count} not in an allowed region ({})", regions.join(", "))
                }
                Misfit::Latency(k) => format!(
                    "{count} over the {} ms target to {} (best {best:.0} ms)",
                    input.latency.as_ref().map_or(0.0, |t| t.max_ms),
                    region(k)
                ),
                Misfit::NoLatency(k) => {
                    format!("{count} without a latency figure to {}", region(k))
                }
                Misfit::AlreadyRuns => format!("{count} already running a replica of it"),
                Misfit::Cpu => format!(
                    "{count} insufficient cpu (needs {} millicores, {at_most}{} free)",
                    input.resources.cpu_millis, most_free.cpu_millis
                ),
                Misfit::Memory => format!(
                    "{count} insufficient memory (needs {} MB, {at_most}{} free)",
                    input.resources.memory_mb, most_free.memory_mb
                ),
            }
        })
        .collect();
    format!("0/{} nodes: {}", states.len(), parts.join(", "))
}

#[cfg(test)]
mod tests;
