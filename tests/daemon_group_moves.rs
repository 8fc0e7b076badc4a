//! A holder whose VM S-CORE's rule cannot move (its rack-mate and their far partner pull it two
//! ways) plans the group move instead, surveying the hosts involved over `/scored/group/1`:
//! four real `Daemon`s over the in-process transport, one hypervisor for all. The decisions
//! are taken by hand; `decision.group_moves = "recommend"` reports the plan and moves nothing.

mod support;

use scored::config::{Config, GroupMoves};
use scored::cost::total_cost;
use scored::daemon::event_loop::drive;
use scored::daemon::{Carried, Daemon};
use scored::decide::TurnOutcome;
use scored::flows::synthetic::Demand;
use scored::hypervisor::memory::{MemoryCluster, synthetic_vm};
use scored::p2p::{DirectNetwork, DirectPeers, Peers};
use scored::proto::{Announcement, MoveRequest, Stamp, SurveyRequest, VmId};
use scored::topology::{HostId, Topology};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{direct, inprocess};

/// Two racks of two hosts (a1, a2 | b1, b2); a rack link costs 1, the core 10 more.
fn topology() -> Arc<Topology> {
    let mut t = String::from(
        "[levels]\nnames = [\"rack\", \"core\"]\nweights = [1.0, 10.0]\n\n\
         [defaults]\nmax_vms = 4\nmemory_mib = 16384\nreserve_memory_mib = 256\n",
    );
    for (host, rack) in [("a1", "r1"), ("a2", "r1"), ("b1", "r2"), ("b2", "r2")] {
        t.push_str(&format!(
            "[[host]]\nname = \"{host}\"\npath = [\"core\", \"{rack}\"]\n"
        ));
    }
    Arc::new(Topology::parse(Path::new("group-moves.toml"), &t).unwrap())
}

fn vm(k: u8) -> VmId {
    VmId::from_ipv4(std::net::Ipv4Addr::new(10, 0, 0, k))
}

struct Lab {
    net: DirectNetwork,
    nodes: Vec<Arc<Daemon<DirectPeers>>>,
    stop: tokio::sync::watch::Sender<bool>,
    sim: MemoryCluster,
}

/// u on a1 and v on a2 talk heavily; both talk to w on b1. `pin_v`: v's domain is pinned.
async fn start_lab(topo: &Arc<Topology>, dir: &Path, group_moves: GroupMoves, pin_v: bool) -> Lab {
    let sim = MemoryCluster::new(topo);
    let (u, v, w) = (vm(1), vm(2), vm(3));
    for (id, host) in [(u, 0), (v, 1), (w, 2)] {
        sim.add_vm(HostId(host), synthetic_vm(id, 1024)).unwrap();
    }
    if pin_v {
        sim.set_pinned(v, true).unwrap();
    }
    let links = [(u, v, 10_000.0), (u, w, 6_000.0), (v, w, 6_000.0)];
    let demands_of = |local: VmId| -> Vec<Demand> {
        links
            .iter()
            .filter_map(|&(a, b, rate)| {
                let partner = if a == local {
                    b
                } else if b == local {
                    a
                } else {
                    return None;
                };
                Some(Demand {
                    vm: local,
                    partner,
                    bytes_per_sec: rate,
                })
            })
            .collect()
    };
    let net = DirectNetwork::new(topo.clone());
    let mut config = Config::default();
    config.token.handoff_timeout_ms = 500;
    // No token in this test: the decisions below are taken by hand.
    config.token.regeneration_timeout_ms = Some(3_600_000);
    config.decision.group_moves = group_moves;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut nodes = Vec::new();
    for (h, local) in [(0, Some(u)), (1, Some(v)), (2, Some(w)), (3, None)] {
        let me = HostId(h);
        let mine = local.map(demands_of).unwrap_or_default();
        let (node, inbound) = direct::joined(&net, topo, &sim, me, mine, config.clone(), dir);
        let mut stop = stop_rx.clone();
        tokio::spawn(drive(node.clone(), inbound, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        nodes.push(node);
    }
    let a1 = nodes[0].clone();
    support::time::poll_until("a1 knows where u's partners run", || {
        a1.cached_partners(u).len() == 2
    })
    .await;
    for n in &nodes {
        n.traffic().tick(Instant::now());
    }
    Lab {
        net,
        nodes,
        stop,
        sim,
    }
}

fn locations(sim: &MemoryCluster) -> HashMap<VmId, HostId> {
    sim.placement().into_iter().collect()
}

#[test]
fn a_vm_stuck_between_a_rack_mate_and_a_far_partner_gets_a_group_move_recommended() {
    let rt = inprocess::runtime();
    rt.block_on(async {
        let topo = topology();
        let dir = tempfile::tempdir().unwrap();
        let lab = start_lab(&topo, dir.path(), GroupMoves::Recommend, false).await;
        let a1 = lab.nodes[0].clone();
        let u = a1.inventory().into_iter().find(|x| x.id == vm(1)).unwrap();
        let before = locations(&lab.sim);

        let a = a1.assess(&u).await;
        // S-CORE's rule: u alone can only join v on a2 (w stays a core link away); moving to b1
        // would lose v. Not carried out: assess moves nothing.
        assert_eq!(a.outcome, TurnOutcome::Migrated, "{}", a.detail);
        assert_eq!(a.to, Some(HostId(1)), "{}", a.detail);
        let single = a.decision.as_ref().unwrap();
        let plan = a.group.clone().expect("a group move");
        let moves: Vec<(VmId, HostId, HostId)> =
            plan.moves.iter().map(|m| (m.vm, m.from, m.to)).collect();
        // v runs on a2: its partners, its gates and its host's room came from a2's survey.
        assert_eq!(
            moves,
            vec![(vm(1), HostId(0), HostId(2)), (vm(2), HostId(1), HostId(2))],
            "{plan:?}"
        );
        // The benefit is Eq. 3.1's exact drop under the rates the daemons measured (u's from
        // a1, v's from a2): everything ends on b1, nothing is left to cost.
        let rate = |node: &Daemon<DirectPeers>, x: VmId, y: VmId| {
            node.cached_partners(x)
                .into_iter()
                .find(|p| p.0 == y)
                .map(|p| p.2)
                .unwrap()
        };
        let a2 = lab.nodes[1].clone();
        let links = [
            (vm(1), vm(2), rate(&a1, vm(1), vm(2))),
            (vm(1), vm(3), rate(&a1, vm(1), vm(3))),
            (vm(2), vm(3), rate(&a2, vm(2), vm(3))),
        ];
        let mut after = before.clone();
        for &(v, _, to) in &moves {
            after.insert(v, to);
        }
        assert_eq!(total_cost(&topo, links, &after), 0.0);
        let drop = total_cost(&topo, links, &before);
        assert!(
            (plan.benefit - drop).abs() < 1e-6 * drop,
            "{plan:?} against {drop}"
        );
        // It beats S-CORE's own move, after both pay their migration costs.
        let best = single.best.unwrap();
        assert!(
            plan.net() > best.benefit - single.migration_cost,
            "{plan:?} against {single:?}"
        );
        assert!(plan.worth_it(), "{plan:?}");
        assert!(a.detail.contains("group move recommended"), "{}", a.detail);
        // a2 (v's host), b1 and b2 (the destination rack) were surveyed; a1 reads itself.
        assert_eq!(a1.metrics().group_surveys.get(), 3);
        assert_eq!(a1.metrics().group_plans.get(), 1);
        // Recommend-only: nothing moved.
        assert_eq!(locations(&lab.sim), before);

        // v's host stops answering: v takes no part, and u cannot gain alone in r2.
        lab.net.set_reachable(HostId(1), false);
        let a = a1.assess(&u).await;
        assert!(a.group.is_none(), "{:?}", a.group);
        assert_eq!(a1.metrics().group_plans.get(), 1);
        let _ = lab.stop.send(true);
    });
}

#[test]
fn a_pinned_rack_mate_or_group_moves_off_mean_no_group_move() {
    let rt = inprocess::runtime();
    rt.block_on(async {
        let topo = topology();
        let dir = tempfile::tempdir().unwrap();
        // v pinned on a2: a2's survey says it may not move; u alone cannot gain.
        let lab_pinned = start_lab(&topo, dir.path(), GroupMoves::Recommend, true).await;
        let a1 = lab_pinned.nodes[0].clone();
        let u = a1.inventory().into_iter().find(|x| x.id == vm(1)).unwrap();
        let a = a1.assess(&u).await;
        assert!(a.group.is_none(), "{:?}", a.group);
        assert_eq!(
            a.outcome,
            TurnOutcome::Migrated,
            "S-CORE still joins v: {}",
            a.detail
        );
        assert!(a1.metrics().group_surveys.get() >= 1, "a2 was asked");
        assert_eq!(a1.metrics().group_plans.get(), 0);
        let _ = lab_pinned.stop.send(true);

        // Off (the default): no survey is sent.
        let dir = tempfile::tempdir().unwrap();
        let lab_off = start_lab(&topo, dir.path(), GroupMoves::Off, false).await;
        let a1 = lab_off.nodes[0].clone();
        let a = a1.assess(&u).await;
        assert!(a.group.is_none());
        assert_eq!(a.outcome, TurnOutcome::Migrated, "{}", a.detail);
        assert!(!a.detail.contains("group"), "{}", a.detail);
        assert_eq!(a1.metrics().group_surveys.get(), 0);
        let _ = lab_off.stop.send(true);
    });
}

/// The holder's token as its peers hear of it: an epoch minted by a1 (host 0).
async fn announce_holder(lab: &Lab, at: Stamp) {
    lab.nodes[0]
        .peers()
        .publish(Announcement::TokenSeen {
            host: "a1".into(),
            at,
            round: 0,
        })
        .await
        .unwrap();
    for n in &lab.nodes[1..] {
        let n = n.clone();
        support::time::poll_until("every host heard a1 holds the token", move || {
            n.token_watch().holds(HostId(0), at)
        })
        .await;
    }
}

#[test]
fn a_group_move_is_carried_out_and_one_that_fails_is_undone() {
    let rt = inprocess::runtime();
    rt.block_on(async {
        let topo = topology();
        let at = Stamp::new(1 << 16, 5);

        // Carried out: u (a1's own) and v (asked of a2) end beside w on b1.
        let dir = tempfile::tempdir().unwrap();
        let lab = start_lab(&topo, dir.path(), GroupMoves::Act, false).await;
        let a1 = lab.nodes[0].clone();
        announce_holder(&lab, at).await;
        let u = a1.inventory().into_iter().find(|x| x.id == vm(1)).unwrap();
        let a = a1.assess(&u).await;
        assert!(a.detail.contains("group move chosen"), "{}", a.detail);
        let plan = a.group.clone().expect("a group move");
        assert_eq!(a1.carry_out_group(&plan, at).await, Carried::Done);
        let placed = locations(&lab.sim);
        for id in [vm(1), vm(2), vm(3)] {
            assert_eq!(placed[&id], HostId(2), "{placed:?}");
        }
        lab.sim.check().unwrap();
        // One entry for the plan on the holder: begun, two moves, ended.
        let record = std::fs::read_to_string(dir.path().join("h0.journal.groups")).unwrap();
        let kinds: Vec<&str> = record
            .lines()
            .map(|l| l.split('"').nth(3).unwrap())
            .collect();
        assert_eq!(kinds, ["begin", "step", "step", "end"], "{record}");
        // Without a cooldown (b1 set so), u and v that just arrived still may not move in a
        // group move: their rates at b1 are not measured yet, and would read them cold.
        let b1 = lab.nodes[2].clone();
        let mut no_cooldown = b1.config();
        no_cooldown.decision.cooldown_base_s = 0;
        b1.set_config(no_cooldown);
        let survey = lab.nodes[3]
            .peers()
            .survey(HostId(2), SurveyRequest { at }, Duration::from_secs(5))
            .await
            .unwrap();
        let movable: Vec<(VmId, bool)> = survey.vms.iter().map(|s| (s.vm, s.movable)).collect();
        assert_eq!(
            movable,
            vec![(vm(1), false), (vm(2), false), (vm(3), true)],
            "{survey:?}"
        );
        // Asked at a later turn of a1's (at the plan's own stamp it would be an undo).
        let later = Stamp::new(at.epoch, at.seq + 1);
        announce_holder(&lab, later).await;
        let e = a1
            .peers()
            .group_move(
                HostId(2),
                MoveRequest {
                    vm: vm(2),
                    to: "b2".into(),
                    at: later,
                },
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("still being measured"), "{e}");
        // A peer that does not hold the token is refused, whatever it names.
        let e = lab.nodes[3]
            .peers()
            .group_move(
                HostId(2),
                MoveRequest {
                    vm: vm(1),
                    to: "b2".into(),
                    at,
                },
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("does not hold the token"), "{e}");
        let _ = lab.stop.send(true);

        // a2 stops taking part (set to recommend): v's move is refused after u's went through,
        // and u is put back on a1 by b1 although it just arrived there (its cooldown does not
        // hold a VM the failed plan moved).
        let dir = tempfile::tempdir().unwrap();
        let lab = start_lab(&topo, dir.path(), GroupMoves::Act, false).await;
        let a1 = lab.nodes[0].clone();
        announce_holder(&lab, at).await;
        let before = locations(&lab.sim);
        let a = a1.assess(&u).await;
        let plan = a.group.clone().expect("a group move");
        let mut recommend = lab.nodes[1].config();
        recommend.decision.group_moves = GroupMoves::Recommend;
        lab.nodes[1].set_config(recommend);
        match a1.carry_out_group(&plan, at).await {
            Carried::Undone {
                failed,
                why,
                undone,
            } => {
                assert_eq!((failed, undone), (1, 1), "{why}");
                assert!(why.contains("does not carry out group moves"), "{why}");
            }
            other => panic!("expected the plan undone, got {other:?}"),
        }
        assert_eq!(locations(&lab.sim), before);
        lab.sim.check().unwrap();
        let _ = lab.stop.send(true);
    });
}
