//! The safety gates operators rely on, on the loopback cluster of real `scored run` processes,
//! driven through the real CLI (`scored pin`, `scored maintenance on`, `scored drain`, `status
//! --json`, `plan --json`): pinned VMs never move, a host in maintenance is never a destination,
//! a drain empties its host, and the cooldown stops a VM from following traffic that alternates
//! between two partners.

mod support;

use scored::hypervisor::file::set_shared_traffic;
use scored::proto::VmId;
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};
use support::cluster::{Cluster, Options};
use support::time::unix_ms;

/// Runs `scored ARGS --socket <host i's socket>`; returns (success, stdout, stderr).
fn cli(c: &Cluster, i: usize, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scored"))
        .args(args)
        .arg("--socket")
        .arg(&c.hosts[i].socket)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cli` retried until the daemon's control socket answers (it binds after the swarm is up).
fn cli_ok(c: &mut Cluster, i: usize, args: &[&str]) -> String {
    let mut last = (false, String::new(), String::new());
    let ok = c.wait(Duration::from_secs(60), |c| {
        last = cli(c, i, args);
        last.0
    });
    assert!(
        ok,
        "scored {args:?} on {} failed: {}",
        c.hosts[i].name, last.2
    );
    last.1
}

fn host_index(c: &Cluster, name: &str) -> usize {
    c.hosts.iter().position(|h| h.name == name).unwrap()
}

/// The VM ids a cluster of these options will have (the scenario is deterministic in its seed).
fn ids_of(opts: Options) -> (Vec<VmId>, Vec<String>) {
    let c = Cluster::new(opts);
    let topo = &c.scenario.topology;
    let initial = c
        .scenario
        .initial
        .iter()
        .map(|h| topo.host(*h).name.clone())
        .collect();
    (c.scenario.ids.clone(), initial)
}

/// Waits until no migration happened for `quiet` (after at least one), or `limit` passed.
fn settle(c: &mut Cluster, vms: usize, quiet: Duration, limit: Duration) -> u64 {
    let start = Instant::now();
    let mut last = (c.shared().migrations(), Instant::now());
    while start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(250));
        let f = c.shared();
        f.check().expect("cluster invariants");
        assert_eq!(f.placement().len(), vms, "VM count conserved");
        let m = f.migrations();
        if m != last.0 {
            last = (m, Instant::now());
        } else if m > 0 && last.1.elapsed() >= quiet {
            break;
        }
    }
    last.0
}

/// Every "decision" log line: (host index, vm, outcome, to, started_unix_ms).
fn decisions(c: &Cluster) -> Vec<(usize, String, String, Option<String>, u64)> {
    c.events()
        .into_iter()
        .filter(|(_, e)| e["message"] == "decision")
        .map(|(h, e)| {
            // `to` is logged with Debug formatting: Some("h3") or None.
            let to = e["to"]
                .as_str()
                .and_then(|s| s.strip_prefix("Some(\"")?.strip_suffix("\")"))
                .map(str::to_string);
            (
                h,
                e["vm"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
                to,
                e["started_unix_ms"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn pinned_vms_stay_maintenance_hosts_receive_nothing_and_drain_empties_a_host() {
    let base = || Options {
        vms: 16,
        ..Options::default()
    };
    let (ids, initial) = ids_of(base());
    // ids[0], ids[1] pinned in every host's configuration, ids[2] at run time with `scored pin`;
    // h8 starts in maintenance (configuration), h7 is put there with `scored maintenance on`.
    let pinned_conf = format!("[\"{}\", \"{}\"]", ids[0], ids[1]);
    let mut c = Cluster::new(Options {
        overrides: vec![("placement.pinned".into(), pinned_conf)],
        host_overrides: vec![(7, "placement.maintenance".into(), "true".into())],
        ..base()
    });
    assert_eq!(c.scenario.ids, ids);
    let vms = ids.len();
    c.start_all();
    let pin_host = host_index(&c, &initial[2]);
    let out = cli_ok(&mut c, pin_host, &["pin", &ids[2].to_string()]);
    eprintln!("pin: {out}");
    let out = cli_ok(&mut c, 6, &["maintenance", "on"]);
    eprintln!("maintenance: {out}");
    let h7_maintenance_from = unix_ms();
    let moved = settle(
        &mut c,
        vms,
        Duration::from_secs(20),
        Duration::from_secs(180),
    );
    assert!(
        moved > 0,
        "nothing moved: the gates were never put to the test"
    );

    let placement = c.shared().placement();
    for (k, vm) in ids.iter().take(3).enumerate() {
        assert_eq!(
            placement[vm], initial[k],
            "pinned VM {vm} moved from {} to {}",
            initial[k], placement[vm]
        );
    }
    let d = decisions(&c);
    for vm in ids.iter().take(3) {
        assert!(
            d.iter()
                .any(|(_, v, o, _, _)| *v == vm.to_string() && o == "pinned"),
            "no decision for pinned VM {vm} was refused as pinned"
        );
    }
    for (_, vm, outcome, to, started) in &d {
        if outcome != "migrated" {
            continue;
        }
        assert_ne!(to.as_deref(), Some("h8"), "{vm} moved to h8 in maintenance");
        if *started > h7_maintenance_from {
            assert_ne!(to.as_deref(), Some("h7"), "{vm} moved to h7 in maintenance");
        }
    }
    for (vm, host) in &placement {
        if host == "h8" {
            let k = ids.iter().position(|i| i == vm).unwrap();
            assert_eq!(initial[k], "h8", "{vm} arrived on h8 in maintenance");
        }
    }

    // `status --json` and `plan --json` of a running daemon, through the CLI.
    let status: serde_json::Value =
        serde_json::from_str(&cli_ok(&mut c, 0, &["status", "--json"])).unwrap();
    assert_eq!(status["host"], "h1");
    let on_h1 = placement.values().filter(|h| *h == "h1").count();
    assert_eq!(status["vms"].as_array().unwrap().len(), on_h1);
    assert_eq!(
        status["peers_reachable"].as_array().unwrap().len(),
        c.hosts.len() - 1
    );
    let plan: serde_json::Value =
        serde_json::from_str(&cli_ok(&mut c, 0, &["plan", "--json"])).unwrap();
    let plan = plan["decisions"].as_array().expect("plan decisions");
    assert_eq!(plan.len(), on_h1);
    assert!(plan.iter().all(|d| d["outcome"] != "migrated"));

    // Drain a host that runs VMs but none of the pinned ones.
    let drained = (0..6)
        .map(|i| c.hosts[i].name.clone())
        .find(|h| {
            placement.values().any(|p| p == h) && !ids.iter().take(3).any(|vm| placement[vm] == *h)
        })
        .expect("a host with VMs and no pinned VM");
    let di = host_index(&c, &drained);
    let drain_from = unix_ms();
    cli_ok(&mut c, di, &["drain"]);
    let empty = c.wait(Duration::from_secs(180), |c| {
        let f = c.shared();
        f.check().expect("cluster invariants");
        f.placement().values().all(|h| *h != drained)
    });
    assert!(
        empty,
        "{drained} still runs VMs 180 s after `scored drain`: {:?}",
        c.shared().placement()
    );
    assert_eq!(c.shared().placement().len(), vms);
    for (_, vm, outcome, to, started) in decisions(&c) {
        if outcome == "migrated" && started > drain_from {
            assert_ne!(
                to.as_deref(),
                Some(drained.as_str()),
                "{vm} moved to {drained} while it drained"
            );
        }
    }
}

#[test]
fn cooldown_stops_ping_pong_between_two_partners() {
    let base = || Options {
        vms: 8,
        ..Options::default()
    };
    let (ids, initial) = ids_of(base());
    let c0 = Cluster::new(base());
    let topo = c0.scenario.topology.clone();
    drop(c0);
    let host = |name: &str| topo.host_by_name(name).unwrap().id;
    // A talks to B in another pod, then to C, which is in neither A's nor B's rack.
    let a = 0;
    let b = (1..ids.len())
        .find(|&k| topo.level(host(&initial[a]), host(&initial[k])) == 3)
        .expect("a VM in the other pod");
    let cc = (1..ids.len())
        .find(|&k| {
            k != b
                && topo.level(host(&initial[b]), host(&initial[k])) >= 2
                && topo.level(host(&initial[a]), host(&initial[k])) >= 1
        })
        .expect("a third VM away from B");
    let (va, vb, vc) = (ids[a], ids[b], ids[cc]);
    let mut c = Cluster::new(Options {
        overrides: vec![
            ("placement.pinned".into(), format!("[\"{vb}\", \"{vc}\"]")),
            ("decision.cooldown_base_s".into(), "600".into()),
        ],
        ..base()
    });
    set_shared_traffic(&c.shared, &[(va, vb, 50e6)]).unwrap();
    c.start_all();
    let moved = c.wait(Duration::from_secs(120), |c| {
        c.shared().placement()[&va] != initial[a]
    });
    assert!(moved, "{va} never followed its partner {vb}");
    let first_home = c.shared().placement()[&va].clone();
    assert!(topo.level(host(&first_home), host(&initial[b])) < 3);

    // The traffic turns to C: A would gain by following, but it has just moved.
    let flipped_at = unix_ms();
    set_shared_traffic(&c.shared, &[(va, vc, 50e6)]).unwrap();
    let cooled = c.wait(Duration::from_secs(120), |c| {
        decisions(c)
            .iter()
            .filter(|(_, v, o, _, s)| {
                *v == va.to_string() && o == "cooldown" && *s > flipped_at + 5000
            })
            .count()
            >= 3
    });
    assert!(
        cooled,
        "no cooldown refusal for {va} after its traffic moved to {vc}"
    );
    let moves: Vec<_> = decisions(&c)
        .into_iter()
        .filter(|(_, v, o, _, _)| *v == va.to_string() && o == "migrated")
        .collect();
    assert_eq!(moves.len(), 1, "{va} moved more than once: {moves:?}");
    assert_eq!(c.shared().placement()[&va], first_home);
    let counts: HashMap<String, usize> =
        c.shared()
            .placement()
            .values()
            .fold(HashMap::new(), |mut m, h| {
                *m.entry(h.clone()).or_default() += 1;
                m
            });
    assert_eq!(counts.values().sum::<usize>(), ids.len());
}
