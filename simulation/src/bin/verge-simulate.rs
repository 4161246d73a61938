//! Runs deterministic simulations of a Verge fleet, one seed after another,
//! and prints what each did; the first broken invariant stops the run with
//! the command that replays it.
//!
//! ```text
//! cargo run -p verge-simulation --bin verge-simulate -- --seed 1 --seeds 100 --steps 2000
//! ```

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use verge_simulation::{Config, run};

#[derive(Parser)]
#[command(about = "Deterministic simulation of a Verge fleet under seeded faults")]
struct Args {
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many seeds, from --seed on.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Agents in the fleet.
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// Steps with faults and operator actions per seed.
    #[arg(long, default_value_t = 500)]
    steps: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.agents == 0 {
        eprintln!("--agents must be at least 1");
        return ExitCode::from(2);
    }
    for seed in args.seed..args.seed.saturating_add(args.seeds) {
        let config = Config {
            seed,
            agents: args.agents,
            steps: args.steps,
        };
        let started = Instant::now();
        match run(config) {
            Ok(s) => println!(
                "seed {seed}: ok, {} steps, {:.0} s simulated in {:.2} s; messages {} published, {} delivered, {} dropped, {} duplicated, {} undeliverable; desired states {} accepted, {} refused; operator actions {}; faults {:?}",
                s.steps,
                s.simulated.as_secs_f64(),
                started.elapsed().as_secs_f64(),
                s.broker.published,
                s.broker.delivered,
                s.broker.dropped,
                s.broker.duplicated,
                s.broker.undeliverable,
                s.desired_states_accepted,
                s.desired_states_refused,
                s.operator_actions,
                s.faults,
            ),
            Err(failure) => {
                eprintln!("{failure}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
