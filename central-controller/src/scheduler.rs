//! Placement v0: a pure function from nodes, services and the previous
//! placement to a plan. No I/O, no clock, no randomness.
//!
//! Rules, in priority order:
//! 1. Stability: a previous placement is kept while its node is schedulable,
//!    still in an allowed region and has capacity. Kept replicas of every
//!    service are accounted before anything new is placed.
//! 2. At most one replica of a service per node (ports may be fixed).
//! 3. Capacity (`cpu_millis`, `memory_mb`) is never exceeded.
//! 4. New replicas go to the node with the fewest replicas of this service in
//!    its region, then the largest free memory fraction, then the smallest id.
//!
//! Services are processed in name order, replicas in index order. A replica
//! that cannot be placed gets a readable reason that counts why each node was
//! ruled out, in the style of Kubernetes' scheduler events.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use verge_shared::messages::Resources;
use verge_shared::{AgentId, RegionId, ServiceName};

/// Why a node takes no new work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unschedulable {
    /// The node said it is offline (or its Last Will did).
    Offline,
    /// The node stopped sending heartbeats.
    NotResponding,
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unschedulable::Offline => "offline",
            Unschedulable::NotResponding => "not responding",
        })
    }
}

/// A node as the scheduler sees it.
#[derive(Clone, Debug)]
pub struct NodeInput {
    pub id: AgentId,
    pub region: RegionId,
    pub capacity: Resources,
    /// `Err` says why the node may not run anything.
    pub schedulable: Result<(), Unschedulable>,
}

/// A service as the scheduler sees it.
#[derive(Clone, Debug)]
pub struct ServiceInput {
    pub name: ServiceName,
    pub replicas: u32,
    /// Empty means any region.
    pub regions: Vec<RegionId>,
    pub resources: Resources,
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub services: BTreeMap<ServiceName, Vec<ReplicaPlan>>,
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
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Misfit {
    Unschedulable(Unschedulable),
    Region,
    AlreadyRuns,
    Cpu,
    Memory,
}

struct NodeState<'a> {
    input: &'a NodeInput,
    free: Resources,
    services: BTreeSet<ServiceName>,
}

impl NodeState<'_> {
    fn misfit(&self, service: &ServiceInput) -> Option<Misfit> {
        if let Err(why) = self.input.schedulable {
            return Some(Misfit::Unschedulable(why));
        }
        if !service.regions.is_empty() && !service.regions.contains(&self.input.region) {
            return Some(Misfit::Region);
        }
        if self.services.contains(&service.name) {
            return Some(Misfit::AlreadyRuns);
        }
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
        self.services.insert(service.name.clone());
    }

    /// Free memory as a fraction (numerator, denominator); a node without
    /// memory capacity counts as full.
    fn free_memory_fraction(&self) -> (u64, u64) {
        match self.input.capacity.memory_mb {
            0 => (0, 1),
            cap => (u64::from(self.free.memory_mb), u64::from(cap)),
        }
    }
}

/// Computes a placement. Deterministic: the same input gives the same plan.
pub fn plan(nodes: &[NodeInput], services: &[ServiceInput], previous: &Placement) -> Plan {
    let mut states: BTreeMap<&AgentId, NodeState<'_>> = nodes
        .iter()
        .map(|n| {
            (
                &n.id,
                NodeState {
                    input: n,
                    free: n.capacity,
                    services: BTreeSet::new(),
                },
            )
        })
        .collect();
    let mut services: Vec<&ServiceInput> = services.iter().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));

    // Rule 1: keep what runs, before anything new claims capacity.
    let mut chosen: BTreeMap<(ServiceName, u32), AgentId> = BTreeMap::new();
    for service in &services {
        for index in 0..service.replicas {
            let key = (service.name.clone(), index);
            let Some(node_id) = previous.get(&key) else {
                continue;
            };
            if let Some(state) = states.get_mut(node_id)
                && state.misfit(service).is_none()
            {
                state.take(service);
                chosen.insert(key, node_id.clone());
            }
        }
    }

    let mut plan = Plan::default();
    for service in &services {
        let mut replicas = Vec::with_capacity(service.replicas as usize);
        for index in 0..service.replicas {
            if let Some(node) = chosen.get(&(service.name.clone(), index)) {
                replicas.push(ReplicaPlan {
                    index,
                    node: Some(node.clone()),
                    reason: None,
                });
                continue;
            }
            let replica = place_new(&mut states, service, index);
            if let Some(node) = &replica.node {
                chosen.insert((service.name.clone(), index), node.clone());
            }
            replicas.push(replica);
        }
        plan.services.insert(service.name.clone(), replicas);
    }
    plan
}

fn place_new(
    states: &mut BTreeMap<&AgentId, NodeState<'_>>,
    service: &ServiceInput,
    index: u32,
) -> ReplicaPlan {
    // Spread: how many replicas of this service each region already has.
    let mut per_region: BTreeMap<&RegionId, usize> = BTreeMap::new();
    for state in states.values() {
        if state.services.contains(&service.name) {
            *per_region.entry(&state.input.region).or_default() += 1;
        }
    }
    let mut misfits: Vec<(Misfit, Resources)> = Vec::new();
    let mut best: Option<&NodeState<'_>> = None;
    for state in states.values() {
        if let Some(misfit) = state.misfit(service) {
            misfits.push((misfit, state.free));
            continue;
        }
        let better = match best {
            None => true,
            Some(current) => {
                let spread =
                    |s: &NodeState<'_>| per_region.get(&s.input.region).copied().unwrap_or(0);
                let (an, ad) = state.free_memory_fraction();
                let (bn, bd) = current.free_memory_fraction();
                // Fewer replicas in the region first, then more free memory
                // (compared as fractions by cross-multiplying); ids break ties
                // because states iterate in id order and ties keep the first.
                (spread(state), bn * ad) < (spread(current), an * bd)
            }
        };
        if better {
            best = Some(state);
        }
    }
    match best.map(|s| s.input.id.clone()) {
        Some(id) => {
            if let Some(state) = states.get_mut(&id) {
                state.take(service);
            }
            ReplicaPlan {
                index,
                node: Some(id),
                reason: None,
            }
        }
        None => ReplicaPlan {
            index,
            node: None,
            reason: Some(explain(states.len(), service, &misfits)),
        },
    }
}

/// "0/3 nodes can run it: 1 offline, 1 not in an allowed region (a, b), ...".
fn explain(n_nodes: usize, service: &ServiceInput, misfits: &[(Misfit, Resources)]) -> String {
    if n_nodes == 0 {
        return "0/0 nodes can run it: no nodes are registered".to_owned();
    }
    let mut groups: BTreeMap<&Misfit, (usize, Resources)> = BTreeMap::new();
    for (misfit, free) in misfits {
        let entry = groups.entry(misfit).or_default();
        entry.0 += 1;
        entry.1.cpu_millis = entry.1.cpu_millis.max(free.cpu_millis);
        entry.1.memory_mb = entry.1.memory_mb.max(free.memory_mb);
    }
    let parts: Vec<String> = groups
        .into_iter()
        .map(|(misfit, (count, most_free))| {
            let at_most = if count > 1 { "at most " } else { "" };
            match misfit {
                Misfit::Unschedulable(why) => format!("{count} {why}"),
                Misfit::Region => {
                    let regions: Vec<&str> = service.regions.iter().map(RegionId::as_str).collect();
                    format!("{count} not in an allowed region ({})", regions.join(", "))
                }
                Misfit::AlreadyRuns => format!("{count} already running a replica of it"),
                Misfit::Cpu => format!(
                    "{count} insufficient cpu (needs {} millicores, {at_most}{} free)",
                    service.resources.cpu_millis, most_free.cpu_millis
                ),
                Misfit::Memory => format!(
                    "{count} insufficient memory (needs {} MB, {at_most}{} free)",
                    service.resources.memory_mb, most_free.memory_mb
                ),
            }
        })
        .collect();
    format!("0/{n_nodes} nodes can run it: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(id: &str, region: &str, cpu: u32, mem: u32) -> NodeInput {
        NodeInput {
            id: AgentId::new(id).expect("id"),
            region: RegionId::new(region).expect("region"),
            capacity: Resources {
                cpu_millis: cpu,
                memory_mb: mem,
            },
            schedulable: Ok(()),
        }
    }

    fn service(name: &str, replicas: u32, regions: &[&str], cpu: u32, mem: u32) -> ServiceInput {
        ServiceInput {
            name: ServiceName::new(name).expect("name"),
            replicas,
            regions: regions
                .iter()
                .map(|r| RegionId::new(*r).expect("region"))
                .collect(),
            resources: Resources {
                cpu_millis: cpu,
                memory_mb: mem,
            },
        }
    }

    fn nodes_of(plan: &Plan, name: &str) -> Vec<Option<String>> {
        plan.services[&ServiceName::new(name).expect("name")]
            .iter()
            .map(|r| r.node.as_ref().map(|n| n.to_string()))
            .collect()
    }

    #[test]
    fn spreads_across_regions_then_by_free_memory() {
        let nodes = [
            node("a1", "a", 1000, 100),
            node("a2", "a", 1000, 200),
            node("b1", "b", 1000, 50),
        ];
        let p = plan(&nodes, &[service("web", 3, &[], 10, 10)], &Placement::new());
        // Replica 0: all regions empty, most free memory fraction ties (all 1.0) → id order.
        // Replica 1: region b has none → b1. Replica 2: a2 (a1 already runs it).
        assert_eq!(
            nodes_of(&p, "web"),
            [Some("a1".into()), Some("b1".into()), Some("a2".into())]
        );
    }

    #[test]
    fn keeps_previous_placement_while_possible() {
        let nodes = [node("a1", "a", 1000, 100), node("a2", "a", 1000, 100)];
        let mut previous = Placement::new();
        previous.insert(
            (ServiceName::new("web").expect("name"), 0),
            AgentId::new("a2").expect("id"),
        );
        let p = plan(&nodes, &[service("web", 1, &[], 10, 10)], &previous);
        assert_eq!(nodes_of(&p, "web"), [Some("a2".into())]);

        let mut down = nodes.clone();
        down[1].schedulable = Err(Unschedulable::Offline);
        let p = plan(&down, &[service("web", 1, &[], 10, 10)], &previous);
        assert_eq!(nodes_of(&p, "web"), [Some("a1".into())]);
    }

    #[test]
    fn reason_counts_each_kind_of_misfit() {
        let mut nodes = vec![
            node("n1", "a", 1000, 32),
            node("n2", "c", 1000, 1000),
            node("n3", "a", 1000, 1000),
        ];
        nodes[2].schedulable = Err(Unschedulable::Offline);
        let p = plan(
            &nodes,
            &[service("web", 1, &["a", "b"], 10, 64)],
            &Placement::new(),
        );
        let replica = &p.services[&ServiceName::new("web").expect("name")][0];
        assert_eq!(replica.node, None);
        assert_eq!(
            replica.reason.as_deref(),
            Some(
                "0/3 nodes can run it: 1 offline, 1 not in an allowed region (a, b), 1 insufficient memory (needs 64 MB, 32 free)"
            )
        );
        let p = plan(&[], &[service("web", 1, &[], 0, 0)], &Placement::new());
        assert!(
            p.services[&ServiceName::new("web").expect("name")][0]
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("0/0"))
        );
    }

    fn arb_nodes() -> impl Strategy<Value = Vec<NodeInput>> {
        prop::collection::vec((0..3u8, 0..2000u32, 0..512u32, 0..4u8), 0..6).prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (region, cpu, mem, health))| {
                    let mut n = node(&format!("n{i}"), &format!("r{region}"), cpu, mem);
                    n.schedulable = match health {
                        0 => Err(Unschedulable::Offline),
                        1 => Err(Unschedulable::NotResponding),
                        _ => Ok(()),
                    };
                    n
                })
                .collect()
        })
    }

    fn arb_services() -> impl Strategy<Value = Vec<ServiceInput>> {
        prop::collection::vec(
            (
                0..5u32,
                prop::collection::vec(0..3u8, 0..2),
                0..800u32,
                0..200u32,
            ),
            0..5,
        )
        .prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (replicas, regions, cpu, mem))| {
                    let regions: Vec<String> = regions.iter().map(|r| format!("r{r}")).collect();
                    let regions: Vec<&str> = regions.iter().map(String::as_str).collect();
                    service(&format!("s{i}"), replicas, &regions, cpu, mem)
                })
                .collect()
        })
    }

    fn arb_previous() -> impl Strategy<Value = Vec<(u8, u8, u8)>> {
        prop::collection::vec((0..5u8, 0..5u8, 0..6u8), 0..10)
    }

    fn to_placement(raw: &[(u8, u8, u8)]) -> Placement {
        raw.iter()
            .map(|(s, r, n)| {
                (
                    (
                        ServiceName::new(format!("s{s}")).expect("name"),
                        u32::from(*r),
                    ),
                    AgentId::new(format!("n{n}")).expect("id"),
                )
            })
            .collect()
    }

    proptest! {
        #[test]
        fn plans_respect_every_rule(nodes in arb_nodes(), services in arb_services(), previous in arb_previous()) {
            let previous = to_placement(&previous);
            let p = plan(&nodes, &services, &previous);
            let by_id: BTreeMap<&AgentId, &NodeInput> = nodes.iter().map(|n| (&n.id, n)).collect();
            let mut used: BTreeMap<&AgentId, (u64, u64)> = BTreeMap::new();
            for s in &services {
                let replicas = &p.services[&s.name];
                prop_assert_eq!(replicas.len(), s.replicas as usize);
                let mut hosts = BTreeSet::new();
                for r in replicas {
                    match &r.node {
                        None => prop_assert!(r.reason.is_some(), "unplaced without a reason"),
                        Some(id) => {
                            let n = by_id[id];
                            prop_assert!(n.schedulable.is_ok(), "placed on an unschedulable node");
                            prop_assert!(s.regions.is_empty() || s.regions.contains(&n.region));
                            prop_assert!(hosts.insert(id.clone()), "two replicas on one node");
                            let u = used.entry(id).or_default();
                            u.0 += u64::from(s.resources.cpu_millis);
                            u.1 += u64::from(s.resources.memory_mb);
                        }
                    }
                }
            }
            for (id, (cpu, mem)) in used {
                prop_assert!(cpu <= u64::from(by_id[id].capacity.cpu_millis), "cpu exceeded");
                prop_assert!(mem <= u64::from(by_id[id].capacity.memory_mb), "memory exceeded");
            }
            // Stability: re-planning with the output as previous changes no placement.
            let again = plan(&nodes, &services, &p.placement());
            prop_assert_eq!(again.placement(), p.placement());
        }
    }
}
