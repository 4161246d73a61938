//! Latency book benchmark: prints figures, asserts nothing.
//!
//! `cargo run --release -p central-controller --example latency-bench`
//!
//! A seeded fleet of N nodes in 50 listed regions, each node reporting 10
//! round trips to each of 8 peers (as probe plans give them). Timed, median
//! of 7 runs on one core:
//! - `figures`: every node's latency to every region, what
//!   `GET /api/v1/nodes` and every deployment pass compute once;
//! - `row`: one node's figures, what `GET /api/v1/nodes/{id}` computes.

use std::time::{Duration, Instant};

use central_controller::latency::LatencyBook;
use central_controller::regions::Regions;
use verge_shared::latency::{LatencyReport, LatencySample};
use verge_shared::{AgentId, RegionId, Timestamp};

const REGIONS: usize = 50;
const TARGETS: usize = 8;
const RUNS: usize = 7;
const WINDOW: Duration = Duration::from_secs(300);

/// SplitMix64: the same fleet on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        usize::try_from((z ^ (z >> 31)) % n as u64).unwrap_or(0)
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    let mut text = String::new();
    for r in 0..REGIONS {
        text.push_str(&format!("[[region]]\nname = \"r{r}\"\n"));
    }
    let regions = Regions::parse(&text, "bench").expect("regions");
    let now = Timestamp::now();
    println!("latency book, {REGIONS} regions, {TARGETS} peers per node, median of {RUNS} runs");
    println!("{:>7} {:>14} {:>14}", "nodes", "figures (all)", "row (one)");
    for n in [500, 2_000, 10_000] {
        let mut rng = Rng(7);
        let nodes: Vec<(AgentId, RegionId)> = (0..n)
            .map(|i| {
                let id = AgentId::new(format!("n{i}")).expect("id");
                let region = RegionId::new(format!("r{}", i % REGIONS)).expect("region");
                (id, region)
            })
            .collect();
        let mut book = LatencyBook::default();
        for (id, _) in &nodes {
            let samples = (0..TARGETS)
                .map(|_| LatencySample {
                    target: nodes[rng.below(n)].0.clone(),
                    rtt_micros: (0..10)
                        .map(|_| 1_000 + 100 * rng.below(400) as u32)
                        .collect(),
                    lost: 0,
                })
                .collect();
            let report = LatencyReport {
                schema_version: 1,
                agent: id.clone(),
                at: now,
                samples,
            };
            book.record(&report, now);
        }
        let all: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let began = Instant::now();
                let figures = book.figures(&nodes, &regions, now, WINDOW);
                assert_eq!(figures.len(), n);
                began.elapsed()
            })
            .collect();
        let region_of: std::collections::HashMap<&AgentId, &RegionId> =
            nodes.iter().map(|(i, r)| (i, r)).collect();
        let one: Vec<Duration> = (0..RUNS)
            .map(|run| {
                let (id, home) = &nodes[run * n / RUNS];
                let began = Instant::now();
                let row = book.row(
                    id,
                    home,
                    |p| region_of.get(p).copied(),
                    &regions,
                    now,
                    WINDOW,
                );
                assert!(!row.is_empty());
                began.elapsed()
            })
            .collect();
        println!(
            "{n:>7} {:>11.1} ms {:>11.1} µs",
            median(all).as_secs_f64() * 1e3,
            median(one).as_secs_f64() * 1e6
        );
    }
}
