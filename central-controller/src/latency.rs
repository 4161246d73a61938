//! The latency book: round-trip samples agents report, kept per (node, peer)
//! pair over a sliding window, and the figures the scheduler and the API
//! use, each with how it was obtained (measured or static hint) and its age.
//!
//! A node's latency to a region is the median, over the fresh peers it
//! measured in that region, of each pair's percentiles (p50, p90, p99 by
//! nearest rank over the window). Round-trip time is symmetric, so a pair
//! measured only in the other direction counts too. Without a fresh
//! measurement the static hint from the regions file stands in.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use serde::Serialize;
use verge_shared::latency::{LatencyReport, ProbeTarget};
use verge_shared::{AgentId, RegionId, Timestamp};

use crate::regions::Regions;
use verge_scheduler::Figure;

/// Most samples kept per pair; older ones fall out first.
pub const MAX_SAMPLES_PER_PAIR: usize = 64;

/// Most probe targets chosen per region for one agent.
const TARGETS_PER_REGION: usize = 2;

/// How a figure was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
#[schema(as = LatencySource)]
pub enum Source {
    /// From round-trip samples within the window.
    Measured,
    /// From the regions file, because nothing fresh was measured.
    Static,
}

/// A figure with its provenance, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Estimate {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub source: Source,
    /// Age of the newest sample behind a measured figure.
    pub age_secs: Option<u64>,
    /// Samples behind a measured figure.
    pub samples: usize,
}

impl Estimate {
    /// The static hint of the regions file, as an estimate.
    pub fn hint(ms: f64) -> Self {
        Estimate {
            p50_ms: ms,
            p90_ms: ms,
            p99_ms: ms,
            source: Source::Static,
            age_secs: None,
            samples: 0,
        }
    }

    pub fn figure(&self) -> Figure {
        Figure {
            p50_ms: self.p50_ms,
            p90_ms: self.p90_ms,
            p99_ms: self.p99_ms,
        }
    }
}

#[derive(Default)]
struct Pair {
    /// (when received, round-trip in ms), oldest first.
    samples: VecDeque<(Timestamp, f64)>,
}

/// Samples per ordered (from, to) pair, and who has samples with whom, so
/// that one node's figures cost what that node measured, not the fleet.
#[derive(Default)]
pub struct LatencyBook {
    pairs: HashMap<(AgentId, AgentId), Pair>,
    /// For every agent, the agents it has a pair with, in either direction.
    neighbours: HashMap<AgentId, BTreeSet<AgentId>>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(values, 50.0)
}

impl LatencyBook {
    /// Records a verified report received at `now` (the controller's clock,
    /// so agents' clocks do not matter).
    pub fn record(&mut self, report: &LatencyReport, now: Timestamp) {
        for sample in &report.samples {
            if sample.target == report.agent {
                continue;
            }
            if sample.rtt_micros.is_empty() {
                continue;
            }
            self.link(&report.agent, &sample.target);
            let pair = self
                .pairs
                .entry((report.agent.clone(), sample.target.clone()))
                .or_default();
            for rtt in &sample.rtt_micros {
                pair.samples.push_back((now, f64::from(*rtt) / 1000.0));
            }
            while pair.samples.len() > MAX_SAMPLES_PER_PAIR {
                pair.samples.pop_front();
            }
        }
    }

    /// Forgets samples older than `window` and pairs involving unknown nodes.
    pub fn prune(&mut self, now: Timestamp, window: Duration, known: &dyn Fn(&AgentId) -> bool) {
        let mut gone = Vec::new();
        self.pairs.retain(|(from, to), pair| {
            while pair
                .samples
                .front()
                .is_some_and(|(at, _)| now.saturating_since(*at) > window)
            {
                pair.samples.pop_front();
            }
            let keep = !pair.samples.is_empty() && known(from) && known(to);
            if !keep {
                gone.push((from.clone(), to.clone()));
            }
            keep
        });
        for (a, b) in gone {
            if !self.pairs.contains_key(&(b.clone(), a.clone())) {
                self.unlink(&a, &b);
            }
        }
    }

    fn link(&mut self, a: &AgentId, b: &AgentId) {
        self.neighbours
            .entry(a.clone())
            .or_default()
            .insert(b.clone());
        self.neighbours
            .entry(b.clone())
            .or_default()
            .insert(a.clone());
    }

    fn unlink(&mut self, a: &AgentId, b: &AgentId) {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(set) = self.neighbours.get_mut(x) {
                set.remove(y);
                if set.is_empty() {
                    self.neighbours.remove(x);
                }
            }
        }
    }

    /// The agents `id` has samples with (in either direction, fresh or not
    /// yet pruned).
    pub fn neighbours_of(&self, id: &AgentId) -> Vec<AgentId> {
        self.neighbours
            .get(id)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The fresh samples between two nodes, in both directions.
    fn between(
        &self,
        a: &AgentId,
        b: &AgentId,
        now: Timestamp,
        window: Duration,
    ) -> (Vec<f64>, Option<u64>) {
        let mut values = Vec::new();
        let mut newest: Option<u64> = None;
        for key in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
            if let Some(pair) = self.pairs.get(&key) {
                for (at, ms) in &pair.samples {
                    let age = now.saturating_since(*at);
                    if age <= window {
                        values.push(*ms);
                        let secs = age.as_secs();
                        newest = Some(newest.map_or(secs, |n| n.min(secs)));
                    }
                }
            }
        }
        (values, newest)
    }

    /// The median over `peers` of each fresh pair's percentiles; `None`
    /// when nothing fresh was measured.
    fn measured<'a>(
        &self,
        id: &AgentId,
        peers: impl Iterator<Item = &'a AgentId>,
        now: Timestamp,
        window: Duration,
    ) -> Option<Estimate> {
        let mut per_peer: [Vec<f64>; 3] = Default::default();
        let mut samples = 0;
        let mut newest: Option<u64> = None;
        for peer in peers {
            let (mut values, age) = self.between(id, peer, now, window);
            if values.is_empty() {
                continue;
            }
            values.sort_by(f64::total_cmp);
            for (slot, p) in per_peer.iter_mut().zip([50.0, 90.0, 99.0]) {
                slot.push(percentile(&values, p));
            }
            samples += values.len();
            newest = match (newest, age) {
                (Some(n), Some(a)) => Some(n.min(a)),
                (n, a) => n.or(a),
            };
        }
        (samples > 0).then(|| {
            let [p50, p90, p99] = &mut per_peer;
            Estimate {
                p50_ms: median(p50),
                p90_ms: median(p90),
                p99_ms: median(p99),
                source: Source::Measured,
                age_secs: newest,
                samples,
            }
        })
    }

    /// Each node's measured latency to one peer that is not a node (the
    /// controller's probe listener); nodes without fresh samples are left out.
    pub fn to_peer(
        &self,
        nodes: &[AgentId],
        peer: &AgentId,
        now: Timestamp,
        window: Duration,
    ) -> BTreeMap<AgentId, Estimate> {
        nodes
            .iter()
            .filter_map(|id| {
                self.measured(id, std::iter::once(peer), now, window)
                    .map(|e| (id.clone(), e))
            })
            .collect()
    }

    /// Every node's latency to every region that has nodes or is listed in
    /// `regions`. `nodes` are (id, region) of the nodes to consider.
    pub fn figures(
        &self,
        nodes: &[(AgentId, RegionId)],
        regions: &Regions,
        now: Timestamp,
        window: Duration,
    ) -> BTreeMap<AgentId, BTreeMap<RegionId, Estimate>> {
        let region_of: HashMap<&AgentId, &RegionId> = nodes.iter().map(|(i, r)| (i, r)).collect();
        nodes
            .iter()
            .map(|(id, home)| {
                let row = self.row(
                    id,
                    home,
                    |p| region_of.get(p).copied(),
                    regions,
                    now,
                    window,
                );
                (id.clone(), row)
            })
            .collect()
    }

    /// One node's latency to every region it measured, every region listed
    /// in `regions` and its own: measured over its fresh peers there, else
    /// the static hint (which exists only between listed regions and within
    /// a region). `region_of` gives a known node's region; peers it does not
    /// know (the controller's listener, forgotten nodes) do not count. The
    /// cost is in what this node measured, not in the size of the fleet.
    pub fn row<'a>(
        &self,
        id: &AgentId,
        home: &RegionId,
        region_of: impl Fn(&AgentId) -> Option<&'a RegionId>,
        regions: &Regions,
        now: Timestamp,
        window: Duration,
    ) -> BTreeMap<RegionId, Estimate> {
        let mut peers_in: BTreeMap<&RegionId, Vec<&AgentId>> = BTreeMap::new();
        for peer in self.neighbours.get(id).into_iter().flatten() {
            if let Some(region) = region_of(peer) {
                peers_in.entry(region).or_default().push(peer);
            }
        }
        let mut names: BTreeSet<&RegionId> = regions.regions.keys().collect();
        names.insert(home);
        names.extend(peers_in.keys().copied());
        let mut row = BTreeMap::new();
        for region in names {
            let measured = peers_in
                .get(region)
                .and_then(|peers| self.measured(id, peers.iter().copied(), now, window));
            let estimate = measured.or_else(|| regions.hint(home, region).map(Estimate::hint));
            if let Some(estimate) = estimate {
                row.insert(region.clone(), estimate);
            }
        }
        row
    }
}

/// The peers `agent` probes: in every region (its own included), up to
/// `TARGETS_PER_REGION` nodes, starting at an offset derived from the
/// agent's id so that probing load spreads over a region's nodes; at most
/// [`verge_shared::latency::MAX_TARGETS`], sorted by agent id.
/// `peers` are (id, region, probe address) of the nodes that can be probed.
pub fn choose_targets(
    agent: &AgentId,
    peers: &[(AgentId, RegionId, std::net::SocketAddr)],
) -> Vec<ProbeTarget> {
    let mut by_region: BTreeMap<&RegionId, Vec<(&AgentId, std::net::SocketAddr)>> = BTreeMap::new();
    for (id, region, addr) in peers {
        if id != agent {
            by_region.entry(region).or_default().push((id, *addr));
        }
    }
    // A stable offset: FNV-1a of the id (no randomness, same on every run).
    let offset = agent
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let mut targets: Vec<ProbeTarget> = Vec::new();
    for nodes in by_region.values_mut() {
        nodes.sort();
        #[allow(clippy::cast_possible_truncation)]
        let start = (offset % nodes.len() as u64) as usize;
        for k in 0..TARGETS_PER_REGION.min(nodes.len()) {
            let (id, addr) = nodes[(start + k) % nodes.len()];
            targets.push(ProbeTarget {
                agent: id.clone(),
                addr,
            });
        }
    }
    targets.sort();
    targets.truncate(verge_shared::latency::MAX_TARGETS);
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_shared::latency::LatencySample;

    fn agent(s: &str) -> AgentId {
        AgentId::new(s).expect("id")
    }

    fn region(s: &str) -> RegionId {
        RegionId::new(s).expect("region")
    }

    fn report(from: &str, to: &str, rtts_ms: &[u32]) -> LatencyReport {
        LatencyReport {
            schema_version: 1,
            agent: agent(from),
            at: Timestamp::from_unix_millis(0),
            samples: vec![LatencySample {
                target: agent(to),
                rtt_micros: rtts_ms.iter().map(|ms| ms * 1000).collect(),
                lost: 0,
            }],
        }
    }

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn measured_figures_are_robust_symmetric_and_go_stale() {
        let regions = Regions::parse(
            "[[region]]\nname = \"a\"\n[[region]]\nname = \"b\"\n[[hint]]\nfrom = \"a\"\nto = \"b\"\nms = 50\n",
            "t",
        )
        .expect("regions");
        let nodes = [(agent("a1"), region("a")), (agent("b1"), region("b"))];
        let mut book = LatencyBook::default();
        let t0 = Timestamp::from_unix_millis(1_000_000);
        // One outlier among ten samples moves neither median nor p90.
        book.record(
            &report("a1", "b1", &[30, 31, 29, 30, 32, 30, 31, 29, 30, 500]),
            t0,
        );
        let f = book.figures(&nodes, &regions, t0, WINDOW);
        let a1_to_b = &f[&agent("a1")][&region("b")];
        assert_eq!(a1_to_b.source, Source::Measured);
        assert_eq!(
            (a1_to_b.p50_ms, a1_to_b.p90_ms, a1_to_b.p99_ms),
            (30.0, 32.0, 500.0)
        );
        // b1 never measured a1, but round trips are symmetric.
        assert_eq!(f[&agent("b1")][&region("a")].source, Source::Measured);
        // Own region without peers: the intra-region default.
        assert_eq!(f[&agent("a1")][&region("a")].source, Source::Static);

        let later = t0.saturating_add(Duration::from_secs(61));
        let f = book.figures(&nodes, &regions, later, WINDOW);
        assert_eq!(f[&agent("a1")][&region("b")].source, Source::Static);
        assert_eq!(f[&agent("a1")][&region("b")].p90_ms, 50.0);
        book.prune(later, WINDOW, &|_| true);
        assert!(book.pairs.is_empty());
    }

    /// The figures by their definition, over every node of each region:
    /// what the neighbour index must reproduce.
    fn figures_by_definition(
        book: &LatencyBook,
        nodes: &[(AgentId, RegionId)],
        regions: &Regions,
        now: Timestamp,
    ) -> BTreeMap<AgentId, BTreeMap<RegionId, Estimate>> {
        let mut names: BTreeSet<&RegionId> = regions.regions.keys().collect();
        names.extend(nodes.iter().map(|(_, r)| r));
        nodes
            .iter()
            .map(|(id, home)| {
                let row = names
                    .iter()
                    .filter_map(|&region| {
                        let peers = nodes
                            .iter()
                            .filter(|(p, r)| r == region && p != id)
                            .map(|(p, _)| p);
                        let estimate = book
                            .measured(id, peers, now, WINDOW)
                            .or_else(|| regions.hint(home, region).map(Estimate::hint));
                        estimate.map(|e| (region.clone(), e))
                    })
                    .collect();
                (id.clone(), row)
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn indexed_figures_equal_the_definition(
            homes in proptest::collection::vec(0..4usize, 1..10),
            reports in proptest::collection::vec(
                (0..12usize, 0..12usize, proptest::collection::vec(1..200u32, 0..4), 0..90u64),
                0..40,
            ),
            forget in proptest::option::of(0..12usize),
            at in 0..150u64,
        ) {
            // Regions a and b are listed with a hint; c is listed; d is not.
            let regions = Regions::parse(
                "[[region]]\nname = \"a\"\n[[region]]\nname = \"b\"\n[[region]]\nname = \"c\"\n\
                 [[hint]]\nfrom = \"a\"\nto = \"b\"\nms = 50\n",
                "t",
            )
            .expect("regions");
            let names = ["a", "b", "c", "d"];
            let mut nodes: Vec<(AgentId, RegionId)> = homes
                .iter()
                .enumerate()
                .map(|(i, h)| (agent(&format!("n{i}")), region(names[*h])))
                .collect();
            let t0 = Timestamp::from_unix_millis(1_000_000);
            let mut book = LatencyBook::default();
            // Reports may name agents that are not nodes (n10, n11).
            for (from, to, rtts, secs) in &reports {
                let mut r = report(&format!("n{from}"), &format!("n{to}"), rtts);
                r.samples[0].rtt_micros = rtts.iter().map(|ms| ms * 1000).collect();
                book.record(&r, t0.saturating_add(Duration::from_secs(*secs)));
            }
            let now = t0.saturating_add(Duration::from_secs(at));
            if let Some(i) = forget {
                nodes.retain(|(id, _)| id != &agent(&format!("n{i}")));
            }
            let known: BTreeSet<AgentId> = nodes.iter().map(|(id, _)| id.clone()).collect();
            book.prune(now, WINDOW, &|id| known.contains(id));
            proptest::prop_assert_eq!(
                book.figures(&nodes, &regions, now, WINDOW),
                figures_by_definition(&book, &nodes, &regions, now)
            );
            // The index holds exactly the pairs left.
            for (a, set) in &book.neighbours {
                for b in set {
                    proptest::prop_assert!(
                        book.pairs.contains_key(&(a.clone(), b.clone()))
                            || book.pairs.contains_key(&(b.clone(), a.clone()))
                    );
                }
            }
            for (a, b) in book.pairs.keys() {
                proptest::prop_assert!(book.neighbours.get(a).is_some_and(|s| s.contains(b)));
            }
        }
    }

    #[test]
    fn targets_cover_every_region_and_are_bounded() {
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let peers: Vec<_> = (0..40)
            .map(|i| {
                (
                    agent(&format!("n{i:02}")),
                    region(&format!("r{}", i % 10)),
                    addr,
                )
            })
            .collect();
        let targets = choose_targets(&agent("n00"), &peers);
        assert_eq!(targets.len(), verge_shared::latency::MAX_TARGETS);
        assert!(targets.iter().all(|t| t.agent != agent("n00")));
        assert!(targets.windows(2).all(|w| w[0] < w[1]));
        let few = choose_targets(&agent("n00"), &peers[..6]);
        assert_eq!(
            few.len(),
            5,
            "one peer per other region, none for itself: {few:?}"
        );
        assert_eq!(
            choose_targets(&agent("n00"), &peers[..6]),
            few,
            "deterministic"
        );
    }
}
