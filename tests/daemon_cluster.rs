//! Eight real `scored run` processes on 127.0.0.1 (libp2p with Noise between them), simulated
//! hypervisors in one shared cluster file and synthetic traffic from a simulator scenario: the
//! daemons must cut the communication cost as the simulator does on the same seed, and keep every
//! safety promise (one token, one VM per host at a time, dry-run, pinning, maintenance).

mod support;

use scored::daemon::control::{Reply, Request};
use scored::proto::PolicyKind;
use scored::sim::{Scenario, ScenarioParams, engine};
use std::time::{Duration, Instant};
use support::cluster::{Cluster, Options};

/// Waits until the token has completed at least `rounds` passes and then two more in which nothing
/// changed (no migration, no decision deferred as `busy` for want of a partner's location, as
/// happens while caches are cold), checking the cluster's invariants all along, or until `limit`.
/// Returns the migrations done.
fn settle(c: &mut Cluster, rounds: u32, limit: Duration) -> u64 {
    let start = Instant::now();
    let mut mark: Option<(u32, u64, usize)> = None;
    while start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(500));
        let f = c.shared();
        f.check().expect("cluster invariants");
        let migrations = f.migrations();
        let busy = c
            .events()
            .iter()
            .filter(|(_, e)| e["message"] == "decision" && e["outcome"] == "busy")
            .count();
        let round = (0..c.hosts.len())
            .filter_map(|i| c.status(i).map(|s| s.token.round))
            .max()
            .unwrap_or(0);
        match mark {
            Some((r0, m0, b0)) if m0 == migrations && b0 == busy => {
                if round >= rounds && round >= r0 + 2 {
                    break;
                }
            }
            _ => mark = Some((round, migrations, busy)),
        }
    }
    c.shared().migrations()
}

fn simulated_reduction(c: &Cluster, policy: PolicyKind) -> f64 {
    let mut params: ScenarioParams = c.scenario.params.clone();
    params.rounds = 6;
    let sc = Scenario::build(c.scenario.topology.clone(), params).unwrap();
    let run = engine::run(
        &sc,
        &engine::RunOptions {
            policy,
            migration_cost: 0.0,
            rack_alternates: 3,
            return_margin: 0.0,
            record_steps: true,
            verify_moves: false,
        },
        |_| {},
    );
    let initial = sc.cost(0, &sc.initial);
    1.0 - run.final_cost() / initial
}

#[test]
fn eight_daemons_cut_cost_like_the_simulator() {
    let mut c = Cluster::new(Options::default());
    c.start_all();
    let migrations = settle(&mut c, 5, Duration::from_secs(400));
    let f = c.shared();
    f.check().unwrap();
    assert_eq!(
        f.placement().len(),
        c.scenario.ids.len(),
        "VM count conserved"
    );
    let daemons = 1.0 - c.cost() / c.initial_cost();
    let sim = simulated_reduction(&c, PolicyKind::Distributed);
    eprintln!(
        "daemons: {migrations} migrations, reduction {:.1}%; simulator: {:.1}%",
        daemons * 100.0,
        sim * 100.0
    );
    assert!(migrations > 0);
    assert!(
        (daemons - sim).abs() <= 0.05,
        "daemons cut {:.1}%, the simulator {:.1}%",
        daemons * 100.0,
        sim * 100.0
    );
    // Every host answers status with the same token epoch, and each decision was logged with
    // its Eq. 3.2 numbers.
    let decisions = c
        .events()
        .into_iter()
        .filter(|(_, e)| e["message"] == "decision")
        .count();
    assert!(
        decisions >= c.scenario.ids.len(),
        "{decisions} decisions logged"
    );
    for i in 0..c.hosts.len() {
        let s = c.status(i).expect("status");
        assert_eq!(s.host, c.hosts[i].name);
    }
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
            Ok(Reply::Plan { decisions }) => Some(decisions),
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
