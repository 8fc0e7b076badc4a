//! `scored lab` in small: real daemons on libp2p over 127.0.0.1, in this process, over the
//! simulated data centre with external traffic and one host down. Decisions must proceed, and
//! what a decision costs in messages must not grow with the number of hosts (#12).

use scored::lab::{self, LabArgs};
use scored_proto::PolicyKind;

fn args(hosts: usize) -> LabArgs {
    LabArgs {
        hosts,
        topology: None,
        vms_per_host: 16,
        fill: 0.8,
        external: 0.3,
        // One host down at any time, whatever the count.
        down: 1.0 / hosts as f64,
        down_for: 20.0,
        stalled: 0,
        partition_at: None,
        partition_for: 0.0,
        churn: 0.05,
        traffic_rounds: 5,
        duration: 45.0,
        policy: PolicyKind::Distributed,
        seed: 12,
        migration_mb_s: 10_000.0,
        overrides: ["token.min_round_s=0", "flows.window_s=5"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
        dir: None,
        no_vm_networks: false,
        start_rate: 50.0,
        json: false,
        log: None,
    }
}

/// One lab at a time: each plays dozens of hosts on the machine's two cores, and what it
/// measures (turns, the simulator's figure after as many) shifts when another lab shares them
/// (the group-move comparison failed once in seven runs so: 40.8% against 58.0%).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(hosts: usize) -> lab::report::Report {
    run_with(&args(hosts))
}

fn run_with(a: &LabArgs) -> lab::report::Report {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(lab::run(a, false)).unwrap();
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    eprintln!("{}", lab::report::text(&r));
    r
}

#[test]
fn decisions_proceed_and_messages_per_decision_do_not_grow_with_the_hosts() {
    let small = run(32);
    let large = run(64);
    for r in [&small, &large] {
        assert_eq!(
            r.vm_check, None,
            "{} hosts: a VM lost or duplicated",
            r.hosts
        );
        assert!(
            r.decisions > 0,
            "{} hosts: no turn ended in a decision in {:.0} s ({} turns: {:?}; deferred because {:?})",
            r.hosts,
            r.elapsed_s,
            r.turns,
            r.outcomes,
            r.deferral_reasons
        );
        // What the decisions had to reach is counted (the report's "reach" line: requests per
        // host reached, the #12 target of ≤ 4, is a figure of the report, not asserted here).
        assert!(
            r.partner_hosts_per_decision.is_some_and(|p| p > 0.0)
                && r.requests_per_host_reached.is_some(),
            "{} hosts: reach not counted: {:?} {:?}",
            r.hosts,
            r.partner_hosts_per_decision,
            r.requests_per_host_reached
        );
    }
    // What deciding costs (hand-offs, lookups, capacity: requests and their answers) must not
    // grow with the data centre; gossip, heard by every host, does, and is reported apart.
    let (s, l) = (
        small.requests_per_decision.unwrap(),
        large.requests_per_decision.unwrap(),
    );
    assert!(
        l <= 1.5 * s,
        "requests per decision grew with the hosts: {s:.0} at 32 hosts, {l:.0} at 64"
    );
}

/// Group moves carried out by the daemons (`decision.group_moves = "act"`, #15): plans run
/// across hosts over libp2p while hosts go down, every VM stays on exactly one host at every
/// poll, and the daemons' reduction tracks the simulator's with the same planner on the same
/// scenario after as many turns.
#[test]
fn group_moves_carried_out_by_the_daemons_track_the_simulator_and_lose_no_vm() {
    let mut a = args(32);
    a.overrides
        .push("decision.group_moves=act".parse().unwrap());
    let r = run_with(&a);
    assert_eq!(r.vm_check, None, "a VM lost or duplicated");
    assert!(r.group_plans > 0, "no group move carried out: {r:?}");
    let sim = r.sim_cost_reduction_pct.expect("the simulator's figure");
    assert!(
        (r.cost_reduction_pct - sim).abs() <= 5.0,
        "daemons {:.1}% against the simulator's {sim:.1}%",
        r.cost_reduction_pct
    );
}
