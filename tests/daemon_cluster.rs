//! Eight real `scored run` processes on 127.0.0.1 (libp2p with Noise between them), simulated
//! hypervisors in one shared cluster file and synthetic traffic from a simulator scenario: the
//! daemons must cut the communication cost as the simulator does on the same seed, and keep every
//! safety promise (one token, one VM per host at a time, dry-run, pinning, maintenance).

mod support;

use scored::daemon::control::{Reply, Request};
use scored::lab::report::DEFERRED;
use scored::proto::{PolicyKind, Token, VmId};
use scored::sim::{Scenario, ScenarioParams, engine};
use scored::token::{Next, Queue, Turn};
use std::cmp::Reverse;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::cluster::{Cluster, Options};

/// Waits until the token has completed at least `rounds` passes and then two more in which nothing
/// changed (no migration, no decision deferred as `busy` for want of a partner's location, as
/// happens while caches are cold), checking the cluster's invariants all along, or until `limit`.
/// Returns the migrations done.
fn settle(c: &mut Cluster, rounds: u32, limit: Duration) -> u64 {
    let start = Instant::now();
    let mut mark: Option<(u32, u64, usize, usize)> = None;
    let vms = c.scenario.ids.len();
    // Turns and deferred turns so far, read from the logs as they grow.
    let (mut cursor, mut turns, mut busy) = (Vec::new(), 0, 0);
    while start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(500));
        let f = c.shared();
        f.check().expect("cluster invariants");
        let migrations = f.migrations();
        // A turn put off (a partner not located, a VM claimed by two hosts for a moment after
        // its migration, a hypervisor outage) is not a settled one.
        for (_, e) in c.new_events(&mut cursor) {
            if e["message"] == "decision" {
                turns += 1;
                busy += usize::from(DEFERRED.iter().any(|o| e["outcome"] == o.name()));
            }
        }
        let round = (0..c.hosts.len())
            .filter_map(|i| c.status(i).map(|s| s.token.round))
            .max()
            .unwrap_or(0);
        // Settled: two rounds, and at least a pass of turns (one per VM) in them, without a
        // migration or a deferral. Rounds alone are not turns: a full-suite run stopped global
        // at 3 migrations in 4 rounds, 17% against the simulator's 47%.
        match mark {
            Some((r0, m0, b0, d0)) if m0 == migrations && b0 == busy => {
                if round >= rounds && round >= r0 + 2 && turns >= d0 + vms {
                    break;
                }
            }
            _ => mark = Some((round, migrations, busy, turns)),
        }
    }
    c.shared().migrations()
}

fn simulated_reduction(c: &Cluster, policy: PolicyKind, group: bool) -> f64 {
    let mut params: ScenarioParams = c.scenario.params.clone();
    params.rounds = 6;
    let sc = Scenario::build(c.scenario.topology.clone(), params).unwrap();
    let run = engine::run(
        &sc,
        &engine::RunOptions {
            policy,
            migration_cost: 0.0,
            migration_cost_fraction: 0.0,
            per_move: None,
            rack_alternates: 3,
            return_margin: 0.0,
            record_steps: true,
            verify_moves: false,
            rules: true,
            cooldown: None,
            group: group.then(scored::decide::group::GroupOptions::default),
        },
        |_| {},
    );
    let initial = sc.cost(0, &sc.initial);
    1.0 - run.final_cost() / initial
}

/// Runs the 8-daemon cluster under `policy` until it settles and checks what every policy owes:
/// the simulator's cost reduction on the same seed within 5 points, the cluster invariants, the
/// VM count, and every decision logged with its Eq. 3.2 numbers. Returns the cluster (still
/// running) for the policy's own checks.
fn cut_cost_like_the_simulator(policy: PolicyKind) -> Cluster {
    cut_cost_like_the_simulator_with(policy, false)
}

/// [`cut_cost_like_the_simulator`]; `group`: every daemon set to carry out group moves
/// (`decision.group_moves = "act"`), the simulator running the same planner.
fn cut_cost_like_the_simulator_with(policy: PolicyKind, group: bool) -> Cluster {
    let mut overrides = Vec::new();
    if group {
        overrides.push(("decision.group_moves".to_string(), "\"act\"".to_string()));
    }
    let mut c = Cluster::new(Options {
        policy: policy.name(),
        overrides,
        ..Options::default()
    });
    c.start_all();
    // Three passes at least: every policy here converges within them on seed 7 (the simulator
    // says so: see `simulated_reduction`), and `settle` then wants two passes without change.
    let migrations = settle(&mut c, 3, Duration::from_secs(400));
    let f = c.shared();
    f.check().unwrap();
    assert_eq!(
        f.placement().len(),
        c.scenario.ids.len(),
        "VM count conserved"
    );
    let daemons = 1.0 - c.cost() / c.initial_cost();
    let sim = simulated_reduction(&c, policy, group);
    let round = (0..c.hosts.len())
        .filter_map(|i| c.status(i).map(|s| s.token.round))
        .max()
        .unwrap_or(0);
    eprintln!(
        "{policy}: daemons: {migrations} migrations in {round} rounds, reduction {:.1}%; simulator: {:.1}%",
        daemons * 100.0,
        sim * 100.0
    );
    assert!(migrations > 0);
    // What the turns ended in (for a failure's message), and how many were logged.
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for (_, e) in c.events() {
        if e["message"] == "decision" {
            *outcomes
                .entry(e["outcome"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
    }
    assert!(
        (daemons - sim).abs() <= 0.05,
        "{policy}: daemons cut {:.1}%, the simulator {:.1}%; turns: {outcomes:?}",
        daemons * 100.0,
        sim * 100.0
    );
    let decisions: usize = outcomes.values().sum();
    assert!(
        decisions >= c.scenario.ids.len(),
        "{decisions} decisions logged"
    );
    for i in 0..c.hosts.len() {
        let s = c.status(i).expect("status");
        assert_eq!(s.host, c.hosts[i].name);
        assert_eq!(s.token.policy, policy.name());
    }
    c
}

/// A turn as the logs tell it, wherever it was taken.
#[derive(Clone, Debug, PartialEq)]
struct Pick {
    epoch: u64,
    seq: u64,
    round: u64,
    vm: VmId,
    level: u64,
    load: u64,
}

fn vm_of(v: &serde_json::Value) -> VmId {
    VmId::from_ipv4(
        v.as_str()
            .expect("vm field")
            .parse()
            .expect("an IPv4 VM id"),
    )
}

/// Every VM the token named, once per hand-off (the sender and the receiver both log it), in
/// token order: epochs only grow, and `seq` counts the names within an epoch.
fn picks(c: &Cluster) -> Vec<Pick> {
    let mut out: Vec<Pick> = c
        .events()
        .into_iter()
        .filter(|(_, e)| e["message"] == "token: next holder")
        .map(|(_, f)| Pick {
            epoch: f["epoch"].as_u64().unwrap(),
            seq: f["seq"].as_u64().unwrap(),
            round: f["round"].as_u64().unwrap(),
            vm: vm_of(&f["vm"]),
            level: f["slot_level"].as_u64().unwrap_or(0),
            load: f["slot_load"].as_u64().unwrap_or(0),
        })
        .collect();
    out.sort_by_key(|p| (p.epoch, p.seq));
    out.dedup_by_key(|p| (p.epoch, p.seq));
    out
}

/// Decisions in token order: (epoch, seq, round, vm).
fn decisions(c: &Cluster) -> Vec<(u64, u64, u64, VmId)> {
    let mut out: Vec<_> = c
        .events()
        .into_iter()
        .filter(|(_, e)| e["message"] == "decision")
        .map(|(_, e)| {
            (
                e["epoch"].as_u64().unwrap(),
                e["seq"].as_u64().unwrap(),
                e["round"].as_u64().unwrap(),
                vm_of(&e["vm"]),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn eight_daemons_cut_cost_like_the_simulator() {
    cut_cost_like_the_simulator(PolicyKind::Distributed);
}

/// The same with group moves carried out by the daemons (`act`): within 5 points of the
/// simulator running the same planner, the cluster invariants checked every half second through
/// every multi-VM decision, each plan one entry in its holder's group record, ended `done`.
#[test]
fn eight_daemons_with_group_moves_cut_cost_like_the_simulator() {
    let c = cut_cost_like_the_simulator_with(PolicyKind::Distributed, true);
    let events = c.events();
    let count = |m: &str| events.iter().filter(|(_, e)| e["message"] == m).count();
    let (started, done) = (count("group move starting"), count("group move done"));
    eprintln!("group moves: {started} started, {done} done");
    assert!(started > 0, "no group move on this scenario");
    let group_lines: Vec<String> = events
        .iter()
        .filter(|(_, e)| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("group move"))
                || e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("group move"))
        })
        .map(|(h, e)| format!("h{}: {e}", h + 1))
        .collect();
    assert_eq!(
        started,
        done,
        "every plan carried out whole:\n{}",
        group_lines.join("\n")
    );
    assert_eq!(count("group move failed: undoing the moves made"), 0);
}

/// Round-robin across real peers: each turn follows the previous one in the token code's
/// order (slot order by id, a new round from the lowest id), whichever host took it.
#[test]
fn round_robin_across_peers() {
    let c = cut_cost_like_the_simulator(PolicyKind::RoundRobin);
    let ids = c.scenario.ids.clone();
    let after = |vm: VmId| {
        let mut t = Token::new(0, PolicyKind::RoundRobin, ids.clone());
        let mut q = Queue::new(&t).unwrap();
        match q
            .hand_off(
                &mut t,
                &Turn {
                    vm,
                    neighbours: &[],
                },
            )
            .unwrap()
        {
            Next::Holder(v) => v,
            other => panic!("round-robin named {other:?} after {vm}"),
        }
    };
    let d = decisions(&c);
    let mut followed = 0;
    for w in d.windows(2) {
        let ((e0, s0, _, a), (e1, s1, _, b)) = (w[0], w[1]);
        // Consecutive names of one token: no host was skipped in between.
        if e0 == e1 && s1 == s0 + 1 {
            assert_eq!(
                b,
                after(a),
                "round-robin: {b} decided right after {a} (epoch {e0}, seq {s1})"
            );
            followed += 1;
        }
    }
    eprintln!(
        "round-robin: {followed} of {} decisions followed their predecessor in token order",
        d.len()
    );
    // Three rounds of 20 turns, less the first turn and a hand-off that re-minted the epoch.
    assert!(
        followed >= 2 * ids.len(),
        "only {followed} consecutive turns in {} decisions",
        d.len()
    );
}

/// Global across real peers: whoever ends a pass asks every other host for statistics and
/// orders the next round by them; every host then takes its turns in that order.
#[test]
fn global_gathers_statistics_and_follows_its_schedule() {
    let c = cut_cost_like_the_simulator(PolicyKind::Global);
    let peers = c.hosts.len() as u64 - 1;
    let gathered: Vec<serde_json::Value> = c
        .events()
        .into_iter()
        .filter(|(_, e)| e["message"] == "global policy: statistics gathered")
        .map(|(_, e)| e)
        .collect();
    assert!(
        gathered.len() >= 3,
        "{} round starts gathered statistics",
        gathered.len()
    );
    let mut complete = 0;
    for g in &gathered {
        assert_eq!(g["hosts_asked"].as_u64(), Some(peers), "{g}");
        if g["hosts_answered"].as_u64() == Some(peers) {
            complete += 1;
        }
    }
    assert!(
        complete >= 2,
        "only {complete} round starts heard from every peer: {gathered:?}"
    );
    let d = decisions(&c);
    let mut followed = 0;
    for g in &gathered {
        let (epoch, round) = (g["epoch"].as_u64().unwrap(), g["round"].as_u64().unwrap());
        let schedule: Vec<VmId> = g["schedule"]
            .as_str()
            .unwrap()
            .split(',')
            .map(|v| VmId::from_ipv4(v.parse().unwrap()))
            .collect();
        assert_eq!(
            schedule.len(),
            c.scenario.ids.len(),
            "the schedule names every VM once"
        );
        let taken: Vec<VmId> = d
            .iter()
            .filter(|&&(e, _, r, _)| e == epoch && r == round)
            .map(|&(.., vm)| vm)
            .collect();
        // A skipped host leaves gaps, never a change of order.
        let mut rest = schedule.iter();
        assert!(
            taken.iter().all(|vm| rest.any(|s| s == vm)),
            "round {round}: turns {taken:?} do not follow the schedule {schedule:?}"
        );
        if taken == schedule {
            followed += 1;
        }
    }
    eprintln!(
        "global: {} round starts gathered statistics ({complete} from every peer, in {:?} ms); {followed} whole rounds followed their schedule",
        gathered.len(),
        gathered
            .iter()
            .map(|g| g["elapsed_ms"].as_f64().unwrap_or(f64::NAN).round())
            .collect::<Vec<_>>()
    );
    assert!(
        followed >= 2,
        "only {followed} whole rounds followed their schedule"
    );
}

/// Load-aware across real peers: the load classes travel in the token, and each turn goes to
/// the waiting VM with the highest (level, load), lowest id on ties — unless the previous turn
/// raised it, which only a partner of the previous VM can be.
#[test]
fn load_aware_orders_by_the_loads_in_the_token() {
    let c = cut_cost_like_the_simulator(PolicyKind::LoadAware);
    let mut partners: HashSet<(VmId, VmId)> = HashSet::new();
    for &(a, b, _) in c.scenario.rates[0].pairs() {
        let (a, b) = (c.scenario.ids[a as usize], c.scenario.ids[b as usize]);
        partners.insert((a, b));
        partners.insert((b, a));
    }
    let p = picks(&c);
    let (mut checked, mut by_load) = (0, 0);
    for w in p.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.epoch != b.epoch || b.seq != a.seq + 1 || a.round != b.round {
            continue;
        }
        if partners.contains(&(a.vm, b.vm)) {
            continue;
        }
        // b waited while a was picked as the first in order: it cannot come before a.
        let key = |x: &Pick| (Reverse(x.level), Reverse(x.load), x.vm);
        assert!(
            key(a) < key(b),
            "load-aware: {b:?} was waiting when {a:?} was picked first"
        );
        checked += 1;
        if a.level == b.level && a.load != b.load {
            by_load += 1;
        }
    }
    eprintln!(
        "load-aware: {checked} consecutive turns checked against the order, {by_load} decided by load"
    );
    assert!(
        checked >= c.scenario.ids.len(),
        "only {checked} turns checked"
    );
    assert!(by_load > 0, "no turn was ordered by load: {p:?}");
}

#[test]
fn dry_run_decides_but_moves_nothing() {
    let mut c = Cluster::new(Options {
        overrides: vec![("decision.dry_run".into(), "true".into())],
        ..Options::default()
    });
    c.start_all();
    let ok = c.wait(Duration::from_secs(240), |c| {
        c.events()
            .iter()
            .filter(|(_, e)| e["outcome"] == "dry_run")
            .count()
            >= 3
    });
    assert!(ok, "no dry-run recommendation within 240 s");
    assert_eq!(c.shared().migrations(), 0);
    // `scored plan` against a running daemon: JSON with the numbers.
    let plan = (0..c.hosts.len())
        .filter_map(|i| match c.request(i, Request::Plan) {
            Ok(Reply::Plan { decisions, .. }) => Some(decisions),
            _ => None,
        })
        .flatten()
        .collect::<Vec<_>>();
    assert_eq!(plan.len(), c.scenario.ids.len());
    assert!(
        plan.iter()
            .any(|d| d.outcome == "dry_run" && d.best_benefit.unwrap_or(0.0) > 0.0)
    );
    assert_eq!(c.shared().migrations(), 0);
}
