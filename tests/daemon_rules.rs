//! Placement rules in the daemon: real `Daemon`s deciding through the in-process transport, the
//! rules built in code (the rules file's parser is `rules::file`, tested on its own). Four hosts
//! in two racks (h1 h2 | h3 h4); h2–h4 run their event loops in dry-run (they answer location
//! and capacity queries and never move anything); h1's decisions are asked for directly.
//!
//! - a replica pair with the heaviest traffic is never put on one host, while a chatty pair
//!   that is no replica set is;
//! - outside the migration window the decision is made (and `plan` shows it) but nothing moves;
//! - a VM that used its daily budget stays, also after a restart;
//! - two replicas found on one host are reported (status, gauge) and one moves away when the
//!   repair option is on, though the move gains nothing.

mod support;

use scored::config::Config;
use scored::daemon::Daemon;
use scored::daemon::control::render_status;
use scored::daemon::event_loop::drive;
use scored::decide::TurnOutcome;
use scored::flows::synthetic::Demand;
use scored::hypervisor::GroupTag;
use scored::hypervisor::memory::{MemoryCluster, synthetic_vm};
use scored::p2p::{DirectNetwork, DirectPeers, Directory};
use scored::proto::{Announcement, MigrationAnnounce, Stamp, VmId};
use scored::rules::{Budget, GroupKind, Rules, Span, Window, window::EVERY_DAY};
use scored::topology::{HostId, Topology};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use support::inprocess;

/// db-main's two replicas.
const R1: VmId = VmId(0x0a00_0001);
const R2: VmId = VmId(0x0a00_0002);
/// A chatty pair that is no replica set.
const C1: VmId = VmId(0x0a00_0003);
const C2: VmId = VmId(0x0a00_0004);

const H1: HostId = HostId(0);
const H2: HostId = HostId(1);
const H3: HostId = HostId(2);
const H4: HostId = HostId(3);

fn topology() -> Arc<Topology> {
    let mut t = String::from(
        "[levels]\nnames = [\"rack\", \"core\"]\nweights = [1.0, 5.0]\n\n\
         [defaults]\nmax_vms = 4\nmemory_mib = 4096\nreserve_memory_mib = 256\n",
    );
    for (h, rack) in [(1, 1), (2, 1), (3, 2), (4, 2)] {
        t.push_str(&format!(
            "\n[[host]]\nname = \"h{h}\"\npath = [\"tor{rack}\"]\n"
        ));
    }
    Arc::new(Topology::parse(Path::new("rules-topology.toml"), &t).unwrap())
}

/// The replicas talk the most; the chatty pair less.
fn demands() -> Vec<Demand> {
    let pair = |vm, partner, bytes_per_sec| {
        [
            Demand {
                vm,
                partner,
                bytes_per_sec,
            },
            Demand {
                vm: partner,
                partner: vm,
                bytes_per_sec,
            },
        ]
    };
    pair(R1, R2, 10_000.0)
        .into_iter()
        .chain(pair(C1, C2, 1_000.0))
        .collect()
}

fn config() -> Config {
    let mut c = Config::default();
    c.token.handoff_timeout_ms = 300;
    c.decision.cooldown_base_s = 0;
    c.decision.migration_cost_fraction = 0.0;
    c.decision.return_margin_fraction = 0.0;
    c
}

fn replicas(kind: GroupKind) -> Rules {
    let mut rules = Rules::none();
    let g = rules.add_group("db-main", kind, 0).unwrap();
    rules.add_member(g, R1);
    rules.add_member(g, R2);
    rules
}

struct World {
    topo: Arc<Topology>,
    sim: MemoryCluster,
    net: DirectNetwork,
    dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// The VMs placed, h2–h4 running in dry-run.
async fn world(placement: &[(VmId, HostId)]) -> World {
    let topo = topology();
    let dir = tempfile::tempdir().unwrap();
    let sim = MemoryCluster::new(&topo);
    for &(vm, h) in placement {
        sim.add_vm(h, synthetic_vm(vm, 512)).unwrap();
    }
    let net = DirectNetwork::new(topo.clone());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    for h in [H2, H3, H4] {
        let (peers, inbound) = net.join(h, Arc::new(Directory::new(topo.clone(), h)));
        let mut c = config();
        c.decision.dry_run = true;
        let node = inprocess::node(
            &topo,
            h,
            peers,
            Arc::new(sim.host(h)),
            demands(),
            c,
            dir.path(),
        );
        node.refresh_inventory().await.unwrap();
        let mut stop = stop_rx.clone();
        tokio::spawn(drive(node, inbound, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    World {
        topo,
        sim,
        net,
        dir,
        _stop: stop,
    }
}

/// h1's daemon (its journal, and the moves beside it, in the world's directory), with `rules`
/// in force; `before` runs on its directory before it first reads its inventory.
async fn h1(
    w: &World,
    config: Config,
    rules: Rules,
    before: impl FnOnce(&Directory),
) -> Arc<Daemon<DirectPeers>> {
    let directory = Arc::new(Directory::new(w.topo.clone(), H1));
    before(&directory);
    let (peers, _inbound) = w.net.join(H1, directory);
    let node = inprocess::node(
        &w.topo,
        H1,
        peers,
        Arc::new(w.sim.host(H1)),
        demands(),
        config,
        w.dir.path(),
    );
    node.set_rules(rules);
    node.refresh_inventory().await.unwrap();
    node.traffic().tick(Instant::now());
    node
}

fn local(node: &Daemon<DirectPeers>, vm: VmId) -> scored::hypervisor::Vm {
    node.inventory().into_iter().find(|v| v.id == vm).unwrap()
}

#[test]
fn a_replica_never_joins_its_partner_while_a_chatty_pair_is_co_located() {
    inprocess::runtime().block_on(async {
        let w = world(&[(R1, H1), (R2, H3), (C1, H1), (C2, H4)]).await;
        let node = h1(&w, config(), replicas(GroupKind::AntiAffinity), |_| {}).await;
        let a = node.assess(&local(&node, R1)).await;
        let to = a.decision.as_ref().and_then(|d| d.migrates_to());
        assert_ne!(
            to,
            Some(H3),
            "db-main-1 must not join db-main-2 on h3: {}",
            a.detail
        );
        // h3's rack-mate is the best place the rule leaves.
        assert_eq!(
            (a.outcome, to),
            (TurnOutcome::Migrated, Some(H4)),
            "{}",
            a.detail
        );
        assert!(
            a.detail
                .contains("anti-affinity group db-main, scope host: h3 runs 10.0.0.2"),
            "the decision names the rule: {}",
            a.detail
        );
        // The chatty pair has no rule: C1 joins C2.
        let a = node.assess(&local(&node, C1)).await;
        assert_eq!(
            a.decision.as_ref().and_then(|d| d.migrates_to()),
            Some(H4),
            "{}",
            a.detail
        );
    });
}

#[test]
fn outside_the_window_the_move_is_decided_and_planned_but_not_made() {
    inprocess::runtime().block_on(async {
        let w = world(&[(C1, H1), (C2, H4)]).await;
        // A window that opens in an hour and closes in two: closed now.
        let now_min = (jiff::Timestamp::now().as_second().rem_euclid(86_400) / 60) as u16;
        let mut rules = Rules::none();
        rules.windows.push(Window {
            name: "later".into(),
            hosts: None,
            tz: jiff::tz::TimeZone::UTC,
            spans: vec![Span {
                days: EVERY_DAY,
                start: (now_min + 60) % 1440,
                end: (now_min + 120) % 1440,
            }],
        });
        let node = h1(&w, config(), rules, |_| {}).await;
        let a = node.assess(&local(&node, C1)).await;
        assert_eq!(a.outcome, TurnOutcome::OutsideWindow, "{}", a.detail);
        assert_eq!(a.decision.as_ref().and_then(|d| d.migrates_to()), Some(H4));
        assert!(
            a.detail.contains("outside its migration windows"),
            "{}",
            a.detail
        );
        let plan = node.plan().await;
        let c1 = plan.iter().find(|r| r.vm == C1.to_string()).unwrap();
        assert_eq!(
            (c1.outcome.as_str(), c1.to.as_deref()),
            ("outside_window", Some("h4")),
            "plan shows what it would do: {c1:?}"
        );
        assert_eq!(w.sim.host_of(C1), Some(H1), "nothing moved");
    });
}

#[test]
fn a_vm_that_used_its_daily_budget_stays_also_after_a_restart() {
    inprocess::runtime().block_on(async {
        let w = world(&[(C1, H1), (C2, H4)]).await;
        let rules = || {
            let mut r = Rules::none();
            r.budget = Budget {
                per_vm_per_day: Some(1),
                per_host_per_hour: None,
            };
            r
        };
        // C1 has just come from h2: h2 said so before h1 read its inventory.
        let came = |d: &Directory| {
            let a = Announcement::Migration(MigrationAnnounce {
                vm: C1,
                from: "h2".into(),
                to: "h1".into(),
                at: Stamp::default(),
            });
            d.apply(H2, &a).unwrap();
        };
        let node = h1(&w, config(), rules(), came).await;
        let a = node.assess(&local(&node, C1)).await;
        assert_eq!(a.outcome, TurnOutcome::OverBudget, "{}", a.detail);
        assert!(
            a.detail
                .contains("budget: the VM moved 1 time(s) in the last 24 h (limit 1)"),
            "{}",
            a.detail
        );
        drop(node);
        // A restart: the move is still counted.
        let node = h1(&w, config(), rules(), |_| {}).await;
        let a = node.assess(&local(&node, C1)).await;
        assert_eq!(
            a.outcome,
            TurnOutcome::OverBudget,
            "after a restart: {}",
            a.detail
        );
    });
}

#[test]
fn replicas_on_one_host_are_reported_and_repaired_when_asked() {
    inprocess::runtime().block_on(async {
        let w = world(&[(R1, H1), (R2, H1), (C2, H4)]).await;
        let mut rules = replicas(GroupKind::AntiAffinity);
        rules.repair = true;
        let node = h1(&w, config(), rules, |_| {}).await;
        let s = node.status();
        let broken: Vec<(&str, &str)> = s
            .violations
            .iter()
            .map(|v| (v.vm.as_str(), v.rule.as_str()))
            .collect();
        assert_eq!(
            broken,
            vec![
                (
                    "10.0.0.1",
                    "anti-affinity group db-main, scope host: h1 runs vm-10.0.0.2"
                ),
                (
                    "10.0.0.2",
                    "anti-affinity group db-main, scope host: h1 runs vm-10.0.0.1"
                ),
            ]
        );
        assert!(
            render_status(&s).contains(
                "RULE BROKEN: VM 10.0.0.1 (vm-10.0.0.1): anti-affinity group db-main, scope host: h1 runs vm-10.0.0.2"
            ),
            "{}",
            render_status(&s)
        );
        assert_eq!(node.metrics().rule_violations("anti_affinity").get(), 2);
        // Their traffic holds them together (no move gains); the repair option moves one.
        let a = node.assess(&local(&node, R1)).await;
        assert_eq!(a.outcome, TurnOutcome::Migrated, "{}", a.detail);
        assert!(a.detail.contains("repair"), "{}", a.detail);
        assert_ne!(a.to, Some(H1));
    });
}

#[test]
fn groups_from_the_vms_own_metadata_count_like_the_files() {
    inprocess::runtime().block_on(async {
        let topo = topology();
        let dir = tempfile::tempdir().unwrap();
        let sim = MemoryCluster::new(&topo);
        // Two members of a group only their libvirt metadata declares, started on one host.
        for vm in [R1, R2] {
            let mut v = synthetic_vm(vm, 512);
            v.groups = vec![GroupTag {
                name: "cache".into(),
                kind: Some(GroupKind::AntiAffinity),
                scope: Some("rack".into()),
            }];
            sim.add_vm(H1, v).unwrap();
        }
        let w = World {
            topo: topo.clone(),
            sim,
            net: DirectNetwork::new(topo),
            dir,
            _stop: tokio::sync::watch::channel(false).0,
        };
        let node = h1(&w, config(), Rules::none(), |_| {}).await;
        let rules: Vec<String> = node
            .status()
            .violations
            .into_iter()
            .map(|v| v.rule)
            .collect();
        assert_eq!(
            rules,
            vec![
                "anti-affinity group cache, scope rack: h1 runs vm-10.0.0.2",
                "anti-affinity group cache, scope rack: h1 runs vm-10.0.0.1"
            ]
        );
    });
}

#[test]
fn a_rules_file_that_does_not_load_on_reload_leaves_the_rules_in_force() {
    inprocess::runtime().block_on(async {
        let w = world(&[(R1, H1), (R2, H3)]).await;
        let file = w.dir.path().join("rules.toml");
        std::fs::write(
            &file,
            "[[group]]\nname = \"db-main\"\nkind = \"anti-affinity\"\nscope = \"host\"\nmembers = [\"10.0.0.1\", \"10.0.0.2\"]\n",
        )
        .unwrap();
        let mut c = config();
        c.placement.rules_file = file.clone();
        let node = h1(&w, c, Rules::none(), |_| {}).await;
        assert!(node.load_rules(), "the file loads");
        assert_eq!(node.rules().groups().len(), 1);
        // A typo: the reload is refused, counted, and db-main still holds.
        std::fs::write(&file, "[[group]]\nname = \"db-main\"\nkind = \"anti-afinity\"\n").unwrap();
        assert!(!node.load_rules());
        assert_eq!(node.metrics().rules_file_errors.get(), 1);
        assert_eq!(node.rules().groups().len(), 1);
        let a = node.assess(&local(&node, R1)).await;
        assert_ne!(a.to, Some(H3), "{}", a.detail);
    });
}

// ---- The same rules on a cluster of real `scored run` processes over libp2p, read from the
// rules file (tests/support/cluster.rs: eight hosts, two per rack).

mod cluster {
    use super::support::cluster::{Cluster, Options};
    use scored::hypervisor::file::set_shared_traffic;
    use scored::proto::VmId;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    /// A cluster reading `rules.toml` (beside its configuration) with `text` in it.
    fn with_rules(text: &str, vms: usize) -> Cluster {
        let c = Cluster::new(Options {
            vms,
            overrides: vec![("placement.rules_file".into(), "\"rules.toml\"".into())],
            ..Options::default()
        });
        std::fs::write(c.path("rules.toml"), text).unwrap();
        c
    }

    fn traffic(c: &Cluster) -> Vec<(VmId, VmId, f64)> {
        c.shared().traffic.clone()
    }

    /// Every pair talks to a new partner five VMs on: gains everywhere once more.
    fn rotate_partners(c: &Cluster) {
        let ids = &c.scenario.ids;
        let n = ids.len();
        let t: Vec<(VmId, VmId, f64)> = (0..n)
            .map(|i| (ids[i], ids[(i + 5) % n], 2000.0 + i as f64))
            .collect();
        set_shared_traffic(&c.shared, &t).unwrap();
    }

    /// Decisions logged since `cursor`: (host index, vm, outcome, detail).
    fn decisions(c: &Cluster, cursor: &mut Vec<usize>) -> Vec<(usize, String, String, String)> {
        c.new_events(cursor)
            .into_iter()
            .filter(|(_, e)| e["message"] == "decision")
            .map(|(h, e)| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (h, s("vm"), s("outcome"), s("detail"))
            })
            .collect()
    }

    /// Polls the placement every 250 ms, checking `each`, until no migration happened for
    /// `quiet` after at least one, or `limit` passed; returns the migrations.
    fn settle(
        c: &mut Cluster,
        quiet: Duration,
        limit: Duration,
        mut each: impl FnMut(&HashMap<VmId, String>),
    ) -> u64 {
        let start = Instant::now();
        let mut last = (c.shared().migrations(), Instant::now());
        while start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(250));
            let f = c.shared();
            f.check().expect("cluster invariants");
            each(&f.placement());
            let m = f.migrations();
            if m != last.0 {
                last = (m, Instant::now());
            } else if m > 0 && last.1.elapsed() >= quiet {
                break;
            }
        }
        last.0
    }

    fn hup_all(c: &Cluster) {
        for h in &c.hosts {
            let pid = h.child.as_ref().expect("running").id();
            // SAFETY: a signal to our own child process.
            unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        }
    }

    fn count(c: &Cluster, host: usize, message: &str) -> usize {
        c.events()
            .iter()
            .filter(|(h, e)| *h == host && e["message"] == message)
            .count()
    }

    #[test]
    fn replicas_with_the_heaviest_traffic_are_never_co_located_while_other_pairs_are() {
        let probe = Cluster::new(Options {
            vms: 16,
            ..Options::default()
        });
        let (ids, initial) = (probe.scenario.ids.clone(), probe.scenario.initial.clone());
        drop(probe);
        // Two VMs on different hosts become db-main's replicas and the heaviest pair.
        let a = ids[0];
        let b = *ids
            .iter()
            .zip(&initial)
            .find(|(_, h)| **h != initial[0])
            .unwrap()
            .0;
        let rules = format!(
            "[[group]]\nname = \"db-main\"\nkind = \"anti-affinity\"\nscope = \"host\"\nmembers = [\"{a}\", \"{b}\"]\n"
        );
        let mut c = with_rules(&rules, 16);
        let mut t = traffic(&c);
        let heaviest = t.iter().map(|p| p.2).fold(0.0, f64::max);
        t.retain(|&(x, y, _)| !([x, y].contains(&a) && [x, y].contains(&b)));
        t.push((a, b, 4.0 * heaviest));
        set_shared_traffic(&c.shared, &t).unwrap();
        let together = |p: &HashMap<VmId, String>| {
            t.iter()
                .filter(|&&(x, y, _)| x != a && p[&x] == p[&y])
                .count()
        };
        let before = together(&c.shared().placement());
        c.start_all();
        let mut polls = 0;
        let moves = settle(
            &mut c,
            Duration::from_secs(15),
            Duration::from_secs(150),
            |p| {
                polls += 1;
                assert_ne!(p[&a], p[&b], "db-main's replicas on one host");
            },
        );
        assert!(moves > 0, "nothing moved");
        let p = c.shared().placement();
        assert!(
            together(&p) > before,
            "other chatty pairs were co-located: {before} -> {}",
            together(&p)
        );
        let named = c.events().iter().any(|(_, e)| {
            e["message"] == "decision"
                && e["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("anti-affinity group db-main, scope host:")
        });
        assert!(
            named,
            "a decision names the rule that kept the replicas apart"
        );
        eprintln!("{moves} migrations, {polls} polls, replicas apart at each");
    }

    #[test]
    fn migrations_stop_when_the_window_closes() {
        let mut c = with_rules("", 16);
        c.start_all();
        assert!(
            c.wait(Duration::from_secs(90), |c| c.shared().migrations() > 0),
            "no migration while the window is open"
        );
        // A window that opened an hour and a half ago and closed half an hour ago: closed now.
        let min = (super::support::time::unix_ms() / 60_000 % 1440) as i64;
        let hhmm = |m: i64| {
            let m = m.rem_euclid(1440);
            format!("{:02}:{:02}", m / 60, m % 60)
        };
        std::fs::write(
            c.path("rules.toml"),
            format!(
                "[[window]]\nname = \"nights\"\ntimezone = \"UTC\"\nstart = \"{}\"\nend = \"{}\"\n",
                hhmm(min - 90),
                hhmm(min - 30)
            ),
        )
        .unwrap();
        hup_all(&c);
        assert!(
            c.wait(Duration::from_secs(30), |c| (0..c.hosts.len())
                .all(|i| count(c, i, "placement rules in force") >= 2)),
            "every host reloads its rules"
        );
        // A migration decided just before the reload may still finish.
        std::thread::sleep(Duration::from_secs(2));
        let closed_at = c.shared().migrations();
        let mut cursor = Vec::new();
        let _ = decisions(&c, &mut cursor);
        rotate_partners(&c);
        let mut outside = 0;
        let waited = c.wait(Duration::from_secs(120), |c| {
            assert_eq!(
                c.shared().migrations(),
                closed_at,
                "a migration outside the window"
            );
            outside += decisions(c, &mut cursor)
                .iter()
                .filter(|d| d.2 == "outside_window")
                .count();
            outside >= 4
        });
        assert!(
            waited,
            "decisions went on, each held back by the window ({outside})"
        );
    }

    #[test]
    fn a_vm_whose_budget_is_spent_stays() {
        let mut c = with_rules("[budget]\nper_vm_per_day = 1\n", 16);
        c.start_all();
        settle(
            &mut c,
            Duration::from_secs(10),
            Duration::from_secs(120),
            |_| {},
        );
        let mut cursor = Vec::new();
        let _ = decisions(&c, &mut cursor);
        // New partners everywhere: VMs that moved once would move again.
        rotate_partners(&c);
        let mut spent: Vec<String> = Vec::new();
        let found = c.wait(Duration::from_secs(120), |c| {
            spent.extend(
                decisions(c, &mut cursor)
                    .into_iter()
                    .filter(|d| d.2 == "over_budget")
                    .map(|d| d.1),
            );
            !spent.is_empty()
        });
        assert!(found, "no VM reached its budget");
        settle(
            &mut c,
            Duration::from_secs(10),
            Duration::from_secs(60),
            |_| {},
        );
        let mut moved: HashMap<String, usize> = HashMap::new();
        for (_, e) in c.events() {
            if e["message"] == "migration succeeded" {
                *moved
                    .entry(e["vm"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
        for (vm, n) in &moved {
            assert!(*n <= 1, "VM {vm} moved {n} times with a budget of 1 a day");
        }
        assert!(
            spent.iter().all(|vm| moved.get(vm) == Some(&1)),
            "a VM held back had moved once: {spent:?} {moved:?}"
        );
    }
}
