//! A few seeds of the deterministic simulation, a few hundred steps each:
//! what CI runs (`verge-simulate` runs thousands; docs/testing.md).

use verge_simulation::{Config, run};

#[test]
fn a_faulty_fleet_keeps_every_invariant_and_converges_once_the_faults_stop() {
    for seed in 1..=4 {
        let config = Config {
            seed,
            agents: 6,
            steps: 250,
        };
        let summary = run(config).unwrap_or_else(|failure| panic!("{failure}"));
        // A run in which nothing happened would prove nothing.
        assert!(
            summary.desired_states_accepted > 0,
            "seed {seed}: no agent accepted a desired state: {summary:?}"
        );
        assert!(
            summary.operator_actions > 0 && !summary.faults.is_empty(),
            "seed {seed}: no operator action or no fault: {summary:?}"
        );
    }
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let config = Config {
        seed: 7,
        agents: 5,
        steps: 120,
    };
    let a = run(config).unwrap_or_else(|failure| panic!("{failure}"));
    let b = run(config).unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(format!("{a:?}"), format!("{b:?}"), "one seed, one run");
}
