//! The simulator on a small scenario (the k=4 fat-tree): real properties, not figures.

use super::engine::{self, RunOptions};
use super::*;
use std::path::Path;

fn fat_tree() -> Topology {
    Topology::parse(
        Path::new("topology/fat-tree-k4.toml"),
        include_str!("../../topology/fat-tree-k4.toml"),
    )
    .unwrap()
}

fn scenario(seed: u64) -> Scenario {
    Scenario::build(
        fat_tree(),
        ScenarioParams {
            seed,
            fill: 0.75,
            ..ScenarioParams::default()
        },
    )
    .unwrap()
}

#[test]
fn smoke() {
    let sc = scenario(1);
    assert_eq!(sc.vms(), 192);
    for p in PolicyKind::ALL {
        let r = engine::run(
            &sc,
            &RunOptions {
                policy: p,
                migration_cost: 0.0,
                rack_alternates: 3,
                return_margin: 0.0,
                record_steps: true,
                verify_moves: true,
            },
            |_| {},
        );
        eprintln!(
            "{p}: {} -> {} migrations {}",
            sc.cost(4, &sc.initial),
            r.final_cost(),
            r.migrations
        );
        assert_eq!(r.bad_moves, 0);
    }
}
