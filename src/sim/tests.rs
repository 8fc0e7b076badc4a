//! The simulator on a small scenario (the k=4 fat-tree, 16 hosts): properties, not figures.

use super::baseline;
use super::bound;
use super::engine::{self, PolicyRun, RunOptions};
use super::study::{self, Study};
use super::*;
use crate::daemon::history::CooldownPolicy;
use crate::decide::group::GroupOptions;
use std::path::Path;

fn fat_tree() -> Topology {
    Topology::parse(
        Path::new("topology/fat-tree-k4.toml"),
        include_str!("../../topology/fat-tree-k4.toml"),
    )
    .unwrap()
}

/// A small irregular tree: five levels, racks of 1–6 hosts, hosts of 6, 16, 24 or 40 VMs.
fn irregular() -> Topology {
    use crate::topology::generate;
    Topology::parse(
        Path::new("irregular-small.toml"),
        &generate::irregular_tree(&generate::irregular_small()),
    )
    .unwrap()
}

fn scenario(seed: u64, fill: f64) -> Scenario {
    Scenario::build(
        fat_tree(),
        ScenarioParams {
            seed,
            fill,
            ..ScenarioParams::default()
        },
    )
    .unwrap()
}

/// A scenario where 30% of the VMs are in groups: replicas (host and rack scope) with the
/// heaviest traffic of the scenario between them, and affinity tiers.
fn grouped(seed: u64) -> Scenario {
    Scenario::build(
        fat_tree(),
        ScenarioParams {
            seed,
            fill: 0.75,
            groups: groups::GroupParams {
                share: 0.3,
                ..groups::GroupParams::default()
            },
            ..ScenarioParams::default()
        },
    )
    .unwrap()
}

fn options(policy: PolicyKind) -> RunOptions {
    RunOptions {
        policy,
        migration_cost: 0.0,
        migration_cost_fraction: 0.0,
        per_move: None,
        rack_alternates: 3,
        return_margin: 0.0,
        record_steps: true,
        verify_moves: true,
        rules: true,
        cooldown: None,
        group: None,
    }
}

fn run(sc: &Scenario, policy: PolicyKind) -> PolicyRun {
    engine::run(sc, &options(policy), |_| {})
}

#[test]
fn the_scenario_places_vms_randomly_within_capacity() {
    let sc = scenario(1, 0.75);
    // 16 hosts × 16 slots (17408 MiB − 1024 MiB reserve holds 16 VMs of 1 GiB).
    assert_eq!(sc.slots, vec![16; 16]);
    assert_eq!(sc.vms(), 192);
    let mut per_host = [0u32; 16];
    for h in &sc.initial {
        per_host[h.index()] += 1;
    }
    assert!(per_host.iter().all(|&c| c <= 16));
    assert!(
        per_host.iter().any(|&c| c < 16),
        "random, not first-fit packing"
    );
    assert_eq!(sc.rounds(), 5);
    assert!(sc.ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(sc.ids[0], VmId(0x0a00_0001));
}

#[test]
fn no_migration_ever_raises_the_cost() {
    let sc = scenario(3, 0.75);
    for p in PolicyKind::ALL {
        let r = run(&sc, p);
        assert_eq!(r.bad_moves, 0, "{p}");
        assert!(r.migrations > 0, "{p} never moved a VM");
        // Within a round the cost only falls; it jumps only where traffic changes.
        let n = sc.vms();
        for (k, w) in r.costs.windows(2).enumerate() {
            let boundary = (k + 2) % n == 0 || (k + 1) % n == 0;
            if !boundary {
                assert!(
                    w[1] <= w[0] * (1.0 + 1e-12),
                    "{p}: step {} raised the cost",
                    k + 1
                );
            }
        }
        assert!(r.drift < 1e-9, "{p}: drift {}", r.drift);
        assert!(
            r.final_cost() < sc.cost(sc.rounds() - 1, &sc.initial),
            "{p}"
        );
        // Every VM holds the token once per round.
        assert_eq!(
            r.outcomes.iter().sum::<u64>() as usize,
            sc.rounds() * n,
            "{p}"
        );
        assert_eq!(r.outcomes[0], r.migrations, "{p}");
    }
}

#[test]
fn capacity_is_never_exceeded() {
    for fill in [0.9, 1.0] {
        let sc = scenario(5, fill);
        for p in PolicyKind::ALL {
            let r = run(&sc, p);
            let mut per_host = vec![0u32; sc.slots.len()];
            for h in &r.placement {
                per_host[h.index()] += 1;
            }
            for (h, &c) in per_host.iter().enumerate() {
                assert!(c <= sc.slots[h], "{p}: host {h} holds {c}");
            }
            if fill == 1.0 {
                // Every host is full: decisions find benefit but no room.
                assert_eq!(r.migrations, 0, "{p}");
                assert!(r.outcomes[2] > 0, "{p}: no NoCapacity outcome");
            }
        }
        let b = baseline::run(&sc);
        for plan in [&b.placement, &b.incremental_placement] {
            let mut per_host = vec![0u32; sc.slots.len()];
            for h in plan {
                per_host[h.index()] += 1;
            }
            assert!(per_host.iter().zip(&sc.slots).all(|(c, s)| c <= s));
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_result() {
    let a = scenario(7, 0.75);
    let b = scenario(7, 0.75);
    assert_eq!(a.initial, b.initial);
    for p in [PolicyKind::Distributed, PolicyKind::Global] {
        let (ra, rb) = (run(&a, p), run(&b, p));
        assert_eq!(ra.costs, rb.costs, "{p}");
        assert_eq!(ra.placement, rb.placement, "{p}");
        assert_eq!(ra.migrations, rb.migrations, "{p}");
    }
    let c = scenario(8, 0.75);
    assert_ne!(a.initial, c.initial);
    // The thread count never changes a study's numbers.
    let study = |threads| Study {
        sweep: vec![0.0, 0.2],
        threads,
        ..Study::default()
    };
    let one = study::simulate(&a, &study(1), &|_| {});
    let two = study::simulate(&a, &study(2), &|_| {});
    let finals =
        |r: &study::Report| -> Vec<f64> { r.runs.iter().map(|x| x.final_cost()).collect() };
    assert_eq!(finals(&one), finals(&two));
    assert_eq!(one.sweep, two.sweep);
    assert_eq!(
        one.baseline.as_ref().unwrap().costs,
        two.baseline.as_ref().unwrap().costs
    );
}

#[test]
fn the_baseline_improves_and_reports_its_true_cost() {
    let sc = scenario(11, 0.75);
    let b = baseline::run(&sc);
    assert_eq!(b.costs.len(), sc.rounds());
    let last = sc.rounds() - 1;
    assert_eq!(*b.costs.last().unwrap(), sc.cost(last, &b.placement));
    assert!(b.costs[0] < sc.cost(0, &sc.initial));
    assert!(b.costs[last] < sc.cost(last, &sc.initial));
    assert_eq!(
        *b.incremental_costs.last().unwrap(),
        sc.cost(last, &b.incremental_placement)
    );
    // The re-placement plan considers the incremental one every round.
    for (re, inc) in b.costs.iter().zip(&b.incremental_costs) {
        assert!(re <= inc);
    }
    // On this small case the centralised search is at least as good as any token policy.
    for p in PolicyKind::ALL {
        let r = run(&sc, p);
        assert!(
            b.costs[last] <= r.final_cost() * 1.05,
            "{p}: baseline {} vs {}",
            b.costs[last],
            r.final_cost()
        );
    }
}

/// Issue 15: on an irregular tree the traffic-built allocation must exist (it assumed equal hosts
/// and equal fan-outs, and built none), and the re-placement plan must end no worse than any
/// token policy: a yardstick that loses to what it bounds is not one.
#[test]
fn the_re_placement_works_on_an_irregular_tree() {
    for seed in 1..=3 {
        let sc = Scenario::build(
            irregular(),
            ScenarioParams {
                seed,
                ..ScenarioParams::default()
            },
        )
        .unwrap();
        let b = baseline::run(&sc);
        assert!(
            b.constructive > 0,
            "seed {seed}: no re-placement plan from a fresh traffic-built allocation"
        );
        let last = sc.rounds() - 1;
        assert_eq!(*b.costs.last().unwrap(), sc.cost(last, &b.placement));
        let mut per_host = vec![0u32; sc.slots.len()];
        for h in &b.placement {
            per_host[h.index()] += 1;
        }
        assert!(per_host.iter().zip(&sc.slots).all(|(c, s)| c <= s));
        for p in PolicyKind::ALL {
            for (moves, r) in [
                ("single moves", run(&sc, p)),
                ("group moves", engine::run(&sc, &grouping(p), |_| {})),
            ] {
                assert!(
                    b.costs[last] <= r.final_cost(),
                    "seed {seed}, {p} with {moves}: re-placement {} above the policy's {}",
                    b.costs[last],
                    r.final_cost()
                );
            }
        }
    }
}

/// The lower bound holds under every round's traffic against every allocation the simulator
/// makes, on the regular and on the irregular tree, and is not trivially 0.
#[test]
fn the_lower_bound_is_below_every_plan_and_every_policy() {
    let irregular_at = |seed| {
        Scenario::build(
            irregular(),
            ScenarioParams {
                seed,
                ..ScenarioParams::default()
            },
        )
        .unwrap()
    };
    let cases = [
        scenario(11, 0.75),
        scenario(5, 1.0),
        grouped(23),
        irregular_at(2),
        irregular_at(3),
    ];
    for (k, sc) in cases.iter().enumerate() {
        let bounds: Vec<f64> = sc
            .rates
            .iter()
            .map(|r| bound::lower_bound(&sc.topology, &sc.slots, r))
            .collect();
        let b = baseline::run(sc);
        for (r, &floor) in bounds.iter().enumerate() {
            assert!(
                floor > 0.0,
                "case {k}, round {r}: a bound of 0 says nothing"
            );
            for (what, cost) in [
                ("initial", sc.cost(r, &sc.initial)),
                ("re-placement", b.costs[r]),
                ("incremental", b.incremental_costs[r]),
            ] {
                assert!(
                    floor <= cost,
                    "case {k}, round {r}: bound {floor} above the {what} allocation's {cost}"
                );
            }
        }
        let last = sc.rounds() - 1;
        for p in PolicyKind::ALL {
            let r = run(sc, p);
            assert!(bounds[last] <= r.final_cost(), "case {k}, {p}");
        }
    }
}

#[test]
fn a_higher_migration_cost_moves_fewer_vms() {
    let sc = scenario(13, 0.75);
    let unit = cost_per_vm(&sc);
    let mut last = u64::MAX;
    for f in [0.0, 0.5, 5.0, 1e9] {
        let r = engine::run(
            &sc,
            &RunOptions {
                migration_cost: f * unit,
                ..options(PolicyKind::Distributed)
            },
            |_| {},
        );
        assert!(r.migrations <= last, "c_m {f}: {} > {last}", r.migrations);
        last = r.migrations;
    }
    assert_eq!(last, 0, "an enormous c_m stops every migration");
}

#[test]
fn the_return_gate_stops_vms_moving_back() {
    let sc = scenario(17, 0.75);
    let free = run(&sc, PolicyKind::RoundRobin);
    let gated = engine::run(
        &sc,
        &RunOptions {
            return_margin: 1.0,
            ..options(PolicyKind::RoundRobin)
        },
        |_| {},
    );
    assert!(free.moved_back > 0, "the scenario should provoke returns");
    // A return must remove all of a VM's cost: only a move next to every partner qualifies.
    assert!(gated.moved_back < free.moved_back);
    assert!(gated.outcomes[4] > 0);
}

#[test]
fn outputs_are_written() {
    let sc = scenario(19, 0.75);
    let report = study::simulate(
        &sc,
        &Study {
            sweep: vec![0.0, 0.1],
            threads: 2,
            ..Study::default()
        },
        &|_| {},
    );
    let dir = tempfile::tempdir().unwrap();
    let files = output::write_all(dir.path(), &sc, &report).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let figures = [
        "fig5_2_cost_vs_iterations.svg",
        "fig5_3_reduction_vs_cm.svg",
        "fig5_1_tor_traffic_before.svg",
        "fig5_4_tor_traffic_after_distributed.svg",
    ];
    // The figures exist only in a build with the `plot` feature.
    let figures = if cfg!(feature = "plot") {
        &figures[..]
    } else {
        &[]
    };
    for &want in [
        "cost_per_step.csv",
        "summary.md",
        "summary.csv",
        "cm_sweep.csv",
    ]
    .iter()
    .chain(figures)
    {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let csv = std::fs::read_to_string(dir.path().join("cost_per_step.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "step,iteration,round-robin,global,distributed,load-aware,centralised_incremental,centralised_replacement"
    );
    assert_eq!(lines.count(), sc.rounds() * sc.vms());
    if cfg!(feature = "plot") {
        let svg =
            std::fs::read_to_string(dir.path().join("fig5_2_cost_vs_iterations.svg")).unwrap();
        assert!(svg.contains("<text") && svg.contains("centralised, re-placement"));
    }
    let summary = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(summary.contains("| distributed |"), "{summary}");
    assert!(
        summary.contains("| distributed + group moves |"),
        "{summary}"
    );
    let sweep = std::fs::read_to_string(dir.path().join("cm_sweep.csv")).unwrap();
    // Two fractions, four policies, with and without group moves.
    assert_eq!(sweep.lines().count(), 1 + 2 * 4 * 2);
    assert!(
        sweep.lines().skip(1).any(|l| l.contains(",group,")),
        "{sweep}"
    );
}

#[test]
fn no_policy_and_no_centralised_plan_breaks_a_placement_rule() {
    let sc = grouped(23);
    assert!(
        sc.group_counts.iter().all(|&c| c > 0),
        "every kind of group: {:?}",
        sc.group_counts
    );
    assert_eq!(
        sc.rule_violations(&sc.initial),
        0,
        "the initial allocation obeys every group"
    );
    for p in PolicyKind::ALL {
        let r = run(&sc, p);
        assert_eq!(r.bad_moves, 0, "{p}");
        assert!(r.migrations > 0, "{p} never moved a VM");
        assert_eq!(
            sc.rule_violations(&r.placement),
            0,
            "{p}: members of a group ended where their rule forbids"
        );
        assert_eq!(r.violations, 0, "{p}");
        // The decision's filter alone kept the rules: the destination's re-check refused nothing.
        assert_eq!(r.refused_by_rule, 0, "{p}");
        assert!(
            r.outcomes[4] > 0,
            "{p}: no decision was turned away by a rule"
        );
        // Without the rules, the same scenario puts replicas together: the rules did the work.
        let free = engine::run(
            &sc,
            &RunOptions {
                rules: false,
                ..options(p)
            },
            |_| {},
        );
        assert!(
            free.violations > 0,
            "{p}: the scenario provokes no violation"
        );
    }
    let b = baseline::run(&sc);
    assert_eq!(
        sc.rule_violations(&b.incremental_placement),
        0,
        "centralised, incremental"
    );
    assert_eq!(
        sc.rule_violations(&b.placement),
        0,
        "centralised, re-placement"
    );
}

/// `scenario(seed, 0.75)` with migration windows and budgets.
fn gated(seed: u64, windows: Vec<crate::rules::Window>, budget: crate::rules::Budget) -> Scenario {
    Scenario::build(
        fat_tree(),
        ScenarioParams {
            seed,
            fill: 0.75,
            windows,
            budget,
            ..ScenarioParams::default()
        },
    )
    .unwrap()
}

/// Every day from `start` to `end` (minutes of the day), UTC, every host.
fn nightly(start: u16, end: u16) -> crate::rules::Window {
    crate::rules::Window {
        name: "night".into(),
        hosts: None,
        tz: jiff::tz::TimeZone::UTC,
        spans: vec![crate::rules::Span {
            days: crate::rules::window::EVERY_DAY,
            start,
            end,
        }],
    }
}

#[test]
fn no_vm_migrates_outside_its_window_in_simulated_time() {
    // The run starts at midnight, one turn a second: 192 VMs x 5 rounds = 16 minutes. The
    // window opens at 00:05 (step 300) and closes at 00:10 (step 600).
    let sc = gated(29, vec![nightly(5, 10)], crate::rules::Budget::default());
    let r = run(&sc, PolicyKind::Distributed);
    assert!(r.migrations > 0, "nothing moved inside the window");
    let c0 = sc.cost(0, &sc.initial);
    let n = sc.vms();
    for (k, c) in r.costs.iter().enumerate() {
        let step = k + 1;
        // Before the window every step keeps the initial cost (the first round's traffic).
        if step < 300 && step < n {
            assert_eq!(
                *c, c0,
                "a VM moved at step {step}, before the window opened"
            );
        }
        // After it, the cost changes only where a round brings new traffic.
        if step > 601 && (step % n) != 0 && step < r.costs.len() {
            assert_eq!(
                r.costs[k - 1],
                *c,
                "a VM moved at step {step}, after the window closed"
            );
        }
    }
    // Outside the window decisions are still made: they are counted, not skipped.
    assert!(r.outcomes[5] > 0);
    assert_eq!(r.outcomes.iter().sum::<u64>() as usize, sc.rounds() * n);
}

#[test]
fn budgets_cap_migrations_per_vm_and_per_host() {
    let free = run(
        &gated(31, Vec::new(), crate::rules::Budget::default()),
        PolicyKind::RoundRobin,
    );
    assert!(
        free.migrations > free.vms_moved,
        "the scenario should move some VM twice"
    );
    let per_vm = gated(
        31,
        Vec::new(),
        crate::rules::Budget {
            per_vm_per_day: Some(1),
            per_host_per_hour: None,
        },
    );
    let r = run(&per_vm, PolicyKind::RoundRobin);
    assert!(r.migrations > 0);
    assert_eq!(r.migrations, r.vms_moved, "a VM moved twice in a day");
    assert!(r.outcomes[6] > 0);
    // The whole run lasts 16 simulated minutes: at most 2 migrations touch each host.
    let per_host = gated(
        31,
        Vec::new(),
        crate::rules::Budget {
            per_vm_per_day: None,
            per_host_per_hour: Some(2),
        },
    );
    let r = run(&per_host, PolicyKind::RoundRobin);
    assert!(r.migrations > 0);
    assert!(
        r.migrations <= 16,
        "{} migrations over 16 hosts with 2 each (out or in)",
        r.migrations
    );
}

#[test]
fn impossible_scenarios_are_refused() {
    let err = Scenario::build(
        fat_tree(),
        ScenarioParams {
            vms: Some(257),
            ..ScenarioParams::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "257 VMs of 1024 MiB do not fit: the topology's hosts hold at most 256"
    );
    assert_eq!(
        Scenario::build(
            fat_tree(),
            ScenarioParams {
                rounds: 0,
                ..ScenarioParams::default()
            }
        )
        .unwrap_err(),
        SimError::NoRounds
    );
    let err = Scenario::build(
        fat_tree(),
        ScenarioParams {
            vms: Some(1),
            ..ScenarioParams::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "1 VMs in 1 racks make no traffic: there is nothing to optimise"
    );
}

#[test]
fn the_workloads_change_no_placement_and_no_traffic() {
    // They come from a stream of their own: a scenario is the thesis's whatever its workloads.
    let a = scenario(5, 0.75);
    let b = Scenario::build(
        fat_tree(),
        ScenarioParams {
            seed: 5,
            fill: 0.75,
            workload: workload::WorkloadParams {
                bandwidth_mib_s: 64.0,
                dirty_median_mib_s: 40.0,
                ..workload::WorkloadParams::default()
            },
            ..ScenarioParams::default()
        },
    )
    .unwrap();
    assert_eq!(a.initial, b.initial);
    assert_eq!(a.rates[0].pairs(), b.rates[0].pairs());
    assert_ne!(a.migration_bytes, b.migration_bytes);
    // Busier guests on a slower link send more.
    let sum = |s: &Scenario| s.migration_bytes.iter().sum::<f64>();
    assert!(sum(&b) > sum(&a));
}

#[test]
fn a_per_move_charge_counts_each_migration_bytes_and_never_moves_more_than_none() {
    let sc = scenario(9, 0.75);
    for p in PolicyKind::ALL {
        let free = run(&sc, p);
        // Migrated bytes are each moving VM's own figure, once per migration.
        assert!(free.migrations > 0);
        assert!(free.migrated_bytes >= free.migrations as f64 * 256.0 * 1024.0 * 1024.0);
        let charged = |horizon_s: f64| {
            engine::run(
                &sc,
                &RunOptions {
                    per_move: Some(engine::PerMove {
                        horizon_s,
                        disruption: 0.0,
                    }),
                    ..options(p)
                },
                |_| {},
            )
        };
        let short = charged(60.0);
        assert_eq!(short.bad_moves, 0, "{p:?}");
        assert!(short.migrations < free.migrations, "{p:?}");
        assert!(short.migrated_bytes < free.migrated_bytes, "{p:?}");
        // A charge spread over an hour weighs less than over a minute.
        let long = charged(3600.0);
        assert!(long.migrations >= short.migrations, "{p:?}");
        // Group moves are charged the same way, each of a plan's moves its own bytes.
        let grouped = |per_move| {
            engine::run(
                &sc,
                &RunOptions {
                    per_move,
                    ..grouping(p)
                },
                |_| {},
            )
        };
        let free = grouped(None);
        let charged = grouped(Some(engine::PerMove {
            horizon_s: 60.0,
            disruption: 0.0,
        }));
        assert_eq!(charged.bad_moves, 0, "{p:?}");
        assert!(charged.drift < 1e-9, "{p:?}");
        assert!(
            charged.migrations < free.migrations,
            "{p:?} with group moves"
        );
        assert!(charged.migrated_bytes < free.migrated_bytes, "{p:?}");
    }
}

/// `--cm-own`: every run of a study charges at least that share of the deciding VM's own cost,
/// as the daemon's `migration_cost_fraction` does (S-CORE's single moves then move less; with
/// group moves the trajectory changes and a run may move more: fewer single moves leave more
/// for plans), and the summary says which c_m applied.
#[test]
fn a_study_can_charge_the_daemons_share_of_the_vms_own_cost() {
    let sc = scenario(9, 0.75);
    let study = |cm_own_fraction| Study {
        policies: vec![PolicyKind::Global],
        cm_own_fraction,
        sweep: Vec::new(),
        baseline: false,
        threads: 2,
        ..Study::default()
    };
    let free = study::simulate(&sc, &study(0.0), &|_| {});
    let own = study::simulate(&sc, &study(0.05), &|_| {});
    let (a, b) = (&free.runs[0], &own.runs[0]);
    assert!(
        b.migrations < a.migrations,
        "{} ≥ {}",
        b.migrations,
        a.migrations
    );
    for r in own.runs_with_rules() {
        assert_eq!(r.bad_moves, 0);
        assert!(r.drift < 1e-9, "drift {}", r.drift);
    }
    let text = output::summary_text(&sc, &own);
    assert!(
        text.contains("and at least 5% of the deciding VM's own cost"),
        "{text}"
    );
}

#[test]
fn a_vm_sits_out_its_cooldown_as_in_the_daemon() {
    // Three rounds of 192 turns, a turn a second: a cooldown of an hour covers the run, one of
    // a second none of it.
    let sc = Scenario::build(
        fat_tree(),
        ScenarioParams {
            seed: 3,
            fill: 0.75,
            rounds: 3,
            ..ScenarioParams::default()
        },
    )
    .unwrap();
    let with = |base_s: u64| {
        engine::run(
            &sc,
            &RunOptions {
                cooldown: Some(CooldownPolicy {
                    base: std::time::Duration::from_secs(base_s),
                    cap: std::time::Duration::from_secs(base_s),
                    window: std::time::Duration::from_secs(24 * 3600),
                }),
                ..options(PolicyKind::RoundRobin)
            },
            |_| {},
        )
    };
    let free = run(&sc, PolicyKind::RoundRobin);
    assert!(
        free.migrations > free.vms_moved,
        "the scenario must move some VM twice: {} migrations of {} VMs",
        free.migrations,
        free.vms_moved
    );
    let short = with(1);
    assert_eq!(short.migrations, free.migrations);
    assert_eq!(short.outcomes[engine::COOLING], 0);

    let long = with(3600);
    assert_eq!(
        long.migrations, long.vms_moved,
        "no VM moves twice within its cooldown"
    );
    assert!(
        long.outcomes[engine::COOLING] > 0,
        "turns sat out: {:?}",
        long.outcomes
    );
    assert_eq!(
        long.outcomes.iter().sum::<u64>() as usize,
        sc.rounds() * sc.vms(),
        "every turn is counted once"
    );
    // Sat out, not decided: the cooldown leaves the cost higher than without it.
    assert!(long.final_cost() > free.final_cost());
}

#[test]
fn c_m_as_a_share_of_the_deciding_vms_cost_is_the_daemons_rule() {
    // A move lowers Eq. 3.1 by at most twice the VM's cost (its pairs are counted from both
    // ends): with c_m twice that cost, none is worth making; with a tenth, fewer than with none.
    let sc = scenario(2, 0.75);
    let with = |fraction: f64| {
        engine::run(
            &sc,
            &RunOptions {
                migration_cost_fraction: fraction,
                ..options(PolicyKind::RoundRobin)
            },
            |_| {},
        )
    };
    let none = with(0.0);
    let tenth = with(0.1);
    let all = with(2.0);
    assert!(none.migrations > 0);
    assert!(
        tenth.migrations < none.migrations,
        "{} ≥ {}",
        tenth.migrations,
        none.migrations
    );
    assert_eq!(all.migrations, 0, "{:?}", all.outcomes);
    assert_eq!(
        all.outcomes[1] as usize,
        sc.rounds() * sc.vms() - all.outcomes[3] as usize
    );
}

fn grouping(policy: PolicyKind) -> RunOptions {
    RunOptions {
        group: Some(GroupOptions::default()),
        ..options(policy)
    }
}

#[test]
fn group_moves_cut_the_cost_further_and_every_move_counts() {
    let small_irregular = Scenario::build(
        irregular(),
        ScenarioParams {
            seed: 2,
            ..ScenarioParams::default()
        },
    )
    .unwrap();
    for (name, sc) in [
        ("fat tree", scenario(3, 0.75)),
        ("irregular", small_irregular),
    ] {
        let n = sc.vms();
        for p in [PolicyKind::Global, PolicyKind::Distributed] {
            let single = run(&sc, p);
            let r = engine::run(&sc, &grouping(p), |_| {});
            assert!(r.group.decisions > 0, "{name}, {p}: no group move");
            assert!(r.group.moves >= 2 * r.group.decisions, "{name}, {p}");
            assert_eq!(r.bad_moves, 0, "{name}, {p}");
            assert_eq!(r.refused_by_rule, 0, "{name}, {p}");
            assert!(r.drift < 1e-9, "{name}, {p}: drift {}", r.drift);
            // A group move is one decision, each of its moves one migration.
            assert_eq!(
                r.outcomes[0],
                r.migrations - r.group.moves + r.group.decisions,
                "{name}, {p}"
            );
            assert_eq!(r.outcomes.iter().sum::<u64>() as usize, sc.rounds() * n);
            for (k, w) in r.costs.windows(2).enumerate() {
                let boundary = (k + 2) % n == 0 || (k + 1) % n == 0;
                assert!(
                    boundary || w[1] <= w[0] * (1.0 + 1e-12),
                    "{name}, {p}: step {} raised the cost",
                    k + 1
                );
            }
            assert!(
                r.final_cost() < single.final_cost(),
                "{name}, {p}: group moves {} against single moves {}",
                r.final_cost(),
                single.final_cost()
            );
        }
    }
}

#[test]
fn group_moves_keep_capacity_rules_windows_budgets_and_cooldowns() {
    let slots_kept = |sc: &Scenario, r: &PolicyRun| {
        let mut per_host = vec![0u32; sc.slots.len()];
        for h in &r.placement {
            per_host[h.index()] += 1;
        }
        per_host.iter().zip(&sc.slots).all(|(c, s)| c <= s)
    };
    let sc = scenario(5, 0.9);
    let r = engine::run(&sc, &grouping(PolicyKind::RoundRobin), |_| {});
    assert!(r.group.evictions > 0, "a full destination sent no VM away");
    assert!(slots_kept(&sc, &r));
    // Every host full: no first move has room, so no group move either.
    let full = scenario(5, 1.0);
    let r = engine::run(&full, &grouping(PolicyKind::RoundRobin), |_| {});
    assert_eq!(r.migrations, 0);

    let sc = grouped(23);
    for p in PolicyKind::ALL {
        let r = engine::run(&sc, &grouping(p), |_| {});
        assert!(r.group.decisions > 0, "{p}: no group move");
        assert_eq!(r.bad_moves, 0, "{p}");
        assert_eq!(sc.rule_violations(&r.placement), 0, "{p}");
        // The plan admitted each move against the rules at its place in the order: no
        // destination's re-check refused one.
        assert_eq!(r.refused_by_rule, 0, "{p}");
    }

    // The window of `no_vm_migrates_outside_its_window_in_simulated_time`: 00:05 to 00:10.
    let sc = gated(29, vec![nightly(5, 10)], crate::rules::Budget::default());
    let r = engine::run(&sc, &grouping(PolicyKind::Distributed), |_| {});
    assert!(r.migrations > 0 && r.outcomes[5] > 0);
    let n = sc.vms();
    for (k, c) in r.costs.iter().enumerate() {
        let step = k + 1;
        if step < 300 && step < n {
            assert_eq!(*c, sc.cost(0, &sc.initial), "a VM moved at step {step}");
        }
        if step > 601 && step % n != 0 && step < r.costs.len() {
            assert_eq!(r.costs[k - 1], *c, "a VM moved at step {step}");
        }
    }

    // One migration a VM a day; and a cooldown longer than the run: each VM moves once.
    let budget = crate::rules::Budget {
        per_vm_per_day: Some(1),
        per_host_per_hour: None,
    };
    let r = engine::run(
        &gated(31, Vec::new(), budget),
        &grouping(PolicyKind::RoundRobin),
        |_| {},
    );
    assert!(r.group.decisions > 0 && r.outcomes[6] > 0);
    assert_eq!(r.migrations, r.vms_moved, "a VM moved twice in a day");
    let hour = std::time::Duration::from_secs(3600);
    let r = engine::run(
        &scenario(3, 0.75),
        &RunOptions {
            cooldown: Some(CooldownPolicy {
                base: hour,
                cap: hour,
                window: 24 * hour,
            }),
            ..grouping(PolicyKind::RoundRobin)
        },
        |_| {},
    );
    assert!(r.group.decisions > 0 && r.outcomes[engine::COOLING] > 0);
    assert_eq!(
        r.migrations, r.vms_moved,
        "a VM moved twice within its cooldown"
    );
}
