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
