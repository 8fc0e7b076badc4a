use super::*;
use std::path::Path;

/// k=4 fat-tree: hosts 2r and 2r+1 share rack r; racks 0-1 pod 1, 2-3 pod 2, …
/// Path costs: rack 1, pod 1 + e = 3.718…, core 1 + e + e³ = 23.80….
fn fat_tree() -> Topology {
    Topology::parse(
        Path::new("topology/fat-tree-k4.toml"),
        include_str!("../../topology/fat-tree-k4.toml"),
    )
    .unwrap()
}

fn p(host: u32, rate: f64) -> PartnerTraffic {
    PartnerTraffic {
        host: HostId(host),
        rate,
    }
}

fn cap(running: u32) -> Option<Capacity> {
    Some(Capacity {
        running_vms: running,
        incoming_migrations: 0,
        free_memory_mib: 17408 - 1024 * running as u64,
        total_memory_mib: 17408,
        cpu_load: 0.0,
        cpus: 0,
    })
}

fn subject(partners: &[PartnerTraffic]) -> Subject<'_> {
    Subject {
        vm: VmId(7),
        host: HostId(0),
        memory_mib: 1024,
        cpu_cores: 0.0,
        partners,
    }
}

#[test]
fn candidates_follow_cost_contribution_and_merge_hosts() {
    let t = fat_tree();
    let mut d = Decider::new(&t);
    // Host 8 (other pod) carries 10 B/s; host 2 (same pod) 100 + 50; host 1 (same rack) 200;
    // a partner on u's own host is no candidate.
    let partners = [
        p(8, 10.0),
        p(2, 100.0),
        p(1, 200.0),
        p(2, 50.0),
        p(0, 999.0),
    ];
    let c = d.candidates(HostId(0), &partners).to_vec();
    let hosts: Vec<u32> = c.iter().map(|c| c.host.0).collect();
    // Contributions: host 2: 150·3.718 = 557.7; host 8: 10·23.80 = 238.0; host 1: 200·1 = 200.
    assert_eq!(hosts, vec![2, 8, 1]);
    for c in &c {
        assert_eq!(c.via, Via::PartnerHost);
        assert_eq!(c.benefit, cost::benefit(&t, HostId(0), c.host, &partners));
    }
    assert!((c[0].contribution - 150.0 * (1.0 + std::f64::consts::E)).abs() < 1e-9);
}

#[test]
fn migrates_to_the_best_host_with_room() {
    let t = fat_tree();
    let mut d = Decider::new(&t);
    let partners = [p(8, 10.0), p(2, 100.0), p(3, 90.0)];
    let s = subject(&partners);
    let mut asked = vec![];
    let dec = d.decide(&s, &Gates::thesis(0.0), |h| {
        asked.push(h.0);
        cap(if h.0 == 2 { 16 } else { 3 })
    });
    // Host 2 (the best) is full; host 3 in the same rack is next best and has room.
    assert_eq!(asked, vec![2, 3]);
    let best = cost::benefit(&t, HostId(0), HostId(3), &partners);
    assert_eq!(
        dec.outcome,
        Outcome::Migrate {
            to: HostId(3),
            benefit: best,
            via: Via::PartnerHost
        }
    );
    assert_eq!(dec.best.unwrap().host, HostId(2));
    assert_eq!((dec.queries, dec.full), (2, 1));
    assert!((dec.current_cost - cost::vm_cost(&t, HostId(0), &partners)).abs() < 1e-9);
}

#[test]
fn a_full_partner_host_brings_in_its_rack_mates() {
    let t = fat_tree();
    let mut d = Decider::new(&t);
    // One partner across the core on host 9 (rack 4 = hosts 8, 9).
    let partners = [p(9, 50.0)];
    let s = subject(&partners);
    let mut asked = vec![];
    let dec = d.decide(&s, &Gates::thesis(0.0), |h| {
        asked.push(h.0);
        cap(if h.0 == 9 { 16 } else { 0 })
    });
    assert_eq!(asked, vec![9, 8]);
    match dec.outcome {
        Outcome::Migrate { to, benefit, via } => {
            assert_eq!(to, HostId(8));
            assert_eq!(via, Via::PartnerRack { of: HostId(9) });
            // From the core (23.80) to the rack (1): 2·50·22.80.
            assert!((benefit - 2.0 * 50.0 * (t.weights().path_cost(3) - 1.0)).abs() < 1e-9);
        }
        other => panic!("{other:?}"),
    }
    // Without alternates the decision runs out of room.
    let gates = Gates {
        rack_alternates: 0,
        ..Gates::thesis(0.0)
    };
    let dec = d.decide(&s, &gates, |_| cap(16));
    assert_eq!(dec.outcome, Outcome::NoCapacity);
    assert_eq!((dec.queries, dec.full), (1, 1));
}

#[test]
fn eq_3_2_needs_more_than_the_migration_cost() {
    let t = fat_tree();
    let mut d = Decider::new(&t);
    let partners = [p(1, 10.0)];
    let s = subject(&partners);
    // Moving next to the partner saves 2·10·1 = 20.
    let dec = d.decide(&s, &Gates::thesis(20.0), |_| cap(0));
    assert_eq!(dec.outcome, Outcome::NoBenefit);
    assert_eq!(dec.queries, 0, "no capacity query without a benefit");
    assert_eq!(dec.best.unwrap().benefit, 20.0);
    let dec = d.decide(&s, &Gates::thesis(19.9), |_| cap(0));
    assert_eq!(dec.migrates_to(), Some(HostId(1)));
}

#[test]
fn a_per_move_charge_grows_with_the_path_the_migration_crosses() {
    let t = fat_tree();
    let mut d = Decider::new(&t);
    // One partner across the core: moving next to it saves 2·10·23.80 = 476.0.
    let partners = [p(9, 10.0)];
    let s = subject(&partners);
    let charged = |bytes: f64, floor: f64| Gates {
        per_move: Some(MoveCharge {
            bytes,
            horizon_s: 100.0,
            disruption: 0.0,
        }),
        ..Gates::thesis(floor)
    };
    // 1000 bytes across the core, over 100 s: c_m = 1000·23.80/100 = 238.0 < 476.0.
    let dec = d.decide(&s, &charged(1000.0, 0.0), |_| cap(0));
    assert_eq!(dec.migrates_to(), Some(HostId(9)));
    let core = t.path_cost(HostId(0), HostId(9));
    assert!((dec.migration_cost - 1000.0 * core / 100.0).abs() < 1e-9);
    // 2500 bytes: c_m = 595.0 > 476.0; no host is asked.
    let dec = d.decide(&s, &charged(2500.0, 0.0), |_| cap(0));
    assert_eq!(dec.outcome, Outcome::NoBenefit);
    assert_eq!(dec.queries, 0);
    assert!((dec.migration_cost - 2500.0 * core / 100.0).abs() < 1e-9);
    // The constant stays a floor under the move's own charge.
    let dec = d.decide(&s, &charged(1000.0, 500.0), |_| cap(0));
    assert_eq!(dec.outcome, Outcome::NoBenefit);
    assert_eq!(dec.migration_cost, 500.0);
}

#[test]
fn a_per_move_charge_prefers_the_nearer_destination_when_gains_are_close() {
    let t = fat_tree();
    let mut d = Decider::new(&t);
    // current cost = 9.9·1 + 10·23.80 = 247.9. To host 9 (across the core) the benefit is
    // 2·(10·23.80 − 9.9·22.80) = 24.56; to host 1 (rack-mate) 2·9.9 = 19.8.
    let partners = [p(9, 10.0), p(1, 9.9)];
    let s = subject(&partners);
    let dec = d.decide(&s, &Gates::thesis(0.0), |_| cap(0));
    assert_eq!(dec.migrates_to(), Some(HostId(9)), "the larger benefit");
    // Each byte of migration costs its path: 50 bytes over 100 s charge host 9 0.5·23.80 =
    // 11.9 (gain 12.66) and host 1 0.5 (gain 19.3).
    let gates = Gates {
        per_move: Some(MoveCharge {
            bytes: 50.0,
            horizon_s: 100.0,
            disruption: 0.0,
        }),
        ..Gates::thesis(0.0)
    };
    let dec = d.decide(&s, &gates, |_| cap(0));
    assert_eq!(dec.migrates_to(), Some(HostId(1)), "{dec:?}");
    assert!((dec.migration_cost - 0.5).abs() < 1e-9);
    // The disruption charge is added to every move alike.
    let gates = Gates {
        per_move: Some(MoveCharge {
            bytes: 50.0,
            horizon_s: 100.0,
            disruption: 19.5,
        }),
        ..Gates::thesis(0.0)
    };
    let dec = d.decide(&s, &gates, |_| cap(0));
    assert_eq!(dec.outcome, Outcome::NoBenefit, "{dec:?}");
}

#[test]
fn pinned_and_silent_vms_do_not_move() {
    let t = fat_tree();
    let mut d = Decider::new(&t);
    let partners = [p(9, 50.0)];
    let gates = Gates {
        pinned: true,
        ..Gates::thesis(0.0)
    };
    let dec = d.decide(&subject(&partners), &gates, |_| cap(0));
    assert_eq!(dec.outcome, Outcome::Pinned);
    let silent = [p(9, 0.0)];
    let dec = d.decide(&subject(&silent), &Gates::thesis(0.0), |_| cap(0));
    assert_eq!(dec.outcome, Outcome::NoTraffic);
    let dec = d.decide(&subject(&[]), &Gates::thesis(0.0), |_| cap(0));
    assert_eq!(dec.outcome, Outcome::NoTraffic);
}

#[test]
fn maintenance_hosts_are_never_chosen() {
    let t = fat_tree();
    let mut d = Decider::new(&t);
    let partners = [p(9, 50.0)];
    let maintenance = [HostId(9), HostId(8)];
    let gates = Gates {
        maintenance: &maintenance,
        ..Gates::thesis(0.0)
    };
    let dec = d.decide(&subject(&partners), &gates, |_| cap(0));
    assert_eq!(dec.outcome, Outcome::Excluded);
    assert_eq!(dec.in_maintenance, 1);
    let maintenance = [HostId(9)];
    let gates = Gates {
        maintenance: &maintenance,
        ..Gates::thesis(0.0)
    };
    // The partner's host is in maintenance; its rack-mate is not offered, since alternates
    // come only from a host that was asked and could not take u.
    let dec = d.decide(&subject(&partners), &gates, |_| cap(0));
    assert_eq!(dec.outcome, Outcome::Excluded);
}

#[test]
fn a_vm_returns_to_a_host_it_left_only_for_a_large_gain() {
    let t = fat_tree();
    let mut d = Decider::new(&t);
    // Partners: 100 B/s on host 1 (rack-mate), 1 B/s on host 9 (core).
    let partners = [p(1, 100.0), p(9, 1.0)];
    let previous = [HostId(9), HostId(1)];
    let gates = Gates {
        previous_hosts: &previous,
        return_margin: 0.5,
        ..Gates::thesis(0.0)
    };
    // current cost = 100·1 + 1·23.80 = 123.80; the most a move saves is 2·123.80 = 247.6.
    // To host 1: benefit 2·(100·1 + 1·(23.80 − 23.80)) = 200 ≥ 0.5·247.6: allowed.
    let dec = d.decide(&subject(&partners), &gates, |_| cap(0));
    assert_eq!(dec.migrates_to(), Some(HostId(1)));
    let partners = [p(9, 10.0), p(1, 9.0)];
    // current cost = 9·1 + 10·23.80 = 247.0. To host 9: 2·(10·23.80 + 9·(1 − 23.80)) = 65.6,
    // to host 1: 2·(9·1 + 10·0) = 18; both are previous hosts and both gains are below
    // 0.5·2·247.0, so neither is offered.
    let dec = d.decide(&subject(&partners), &gates, |_| cap(0));
    assert_eq!(dec.returning, 2);
    assert_eq!(dec.outcome, Outcome::Excluded);
    assert_eq!(dec.queries, 0);
    // Without the memory the thesis's rule moves it to host 9.
    let dec = d.decide(&subject(&partners), &Gates::thesis(0.0), |_| cap(0));
    assert_eq!(dec.migrates_to(), Some(HostId(9)));
}

#[test]
fn unanswered_hosts_count_as_unreachable() {
    let t = fat_tree();
    let mut d = Decider::new(&t);
    let partners = [p(9, 50.0), p(4, 1.0)];
    let dec = d.decide(&subject(&partners), &Gates::thesis(0.0), |_| None);
    assert_eq!(dec.outcome, Outcome::NoCapacity);
    assert_eq!(dec.full, 0);
    assert!(dec.unreachable >= 2);
}

#[test]
fn the_step_by_step_search_matches_the_one_call_decision() {
    let t = fat_tree();
    let mut d = Decider::new(&t);
    let partners = [p(9, 50.0), p(8, 5.0), p(3, 20.0), p(14, 7.0)];
    let s = subject(&partners);
    let room = |h: HostId| cap(if h.0.is_multiple_of(3) { 16 } else { 2 });
    let one = d.decide(&s, &Gates::thesis(0.0), room);
    let gates = Gates::thesis(0.0);
    let mut search = d.search(&s, &gates);
    let listed: Vec<HostId> = search.queue().iter().map(|c| c.host).collect();
    assert!(!listed.is_empty());
    while let Some(h) = search.next_query() {
        search.answer(h, room(h).as_ref());
    }
    assert_eq!(search.finish(), one);
    // An early stop reports the unasked hosts as not answered.
    let search = d.search(&s, &gates);
    let left = search.queue().len() as u32;
    let dec = search.finish();
    assert_eq!((dec.outcome, dec.unreachable), (Outcome::NoCapacity, left));
}

#[test]
fn room_keeps_the_vm_limit_and_the_reserve() {
    let t = fat_tree();
    let h = t.host(HostId(0));
    assert!(room_for(h, &cap(15).unwrap(), 1024));
    assert!(!room_for(h, &cap(16).unwrap(), 1024));
    let tight = Capacity {
        running_vms: 1,
        incoming_migrations: 0,
        free_memory_mib: 2047,
        total_memory_mib: 17408,
        cpu_load: 0.0,
        cpus: 0,
    };
    assert!(
        !room_for(h, &tight, 1024),
        "1024 MiB reserve must stay free"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A migration goes to a host with room, its benefit is Eq. 3.2's and beats c_m, and no
        /// partner host with room (and not in maintenance) offers more.
        #[test]
        fn the_chosen_host_is_the_best_partner_host_with_room(
            // Up to 120 partners: past 48 benefits come from the subtree index.
            partners in prop::collection::vec((0u32..16, 0.0f64..1e6), 0..120),
            running in prop::collection::vec(10u32..17, 16),
            cm in 0.0f64..1e7,
            from in 0u32..16,
        ) {
            let t = fat_tree();
            let mut d = Decider::new(&t);
            let ps: Vec<PartnerTraffic> = partners.iter().map(|&(h, r)| p(h, r)).collect();
            let s = Subject { vm: VmId(1), host: HostId(from), memory_mib: 1024, cpu_cores: 0.0, partners: &ps };
            let dec = d.decide(&s, &Gates::thesis(cm), |h| cap(running[h.index()]));
            let has_room = |h: HostId| running[h.index()] < 16;
            let tol = 1e-9 * ps.iter().map(|q| q.rate).sum::<f64>().max(1.0) * 50.0;
            let best_partner_host = ps
                .iter()
                .filter(|q| q.host != s.host && q.rate > 0.0 && has_room(q.host))
                .map(|q| cost::benefit(&t, s.host, q.host, &ps))
                .fold(f64::NEG_INFINITY, f64::max);
            match dec.outcome {
                Outcome::Migrate { to, benefit, .. } => {
                    prop_assert!(to != s.host);
                    prop_assert!(has_room(to));
                    prop_assert!((benefit - cost::benefit(&t, s.host, to, &ps)).abs() <= tol);
                    prop_assert!(benefit > cm);
                    prop_assert!(benefit >= best_partner_host - tol);
                }
                Outcome::NoTraffic => prop_assert!(ps.iter().all(|q| q.rate <= 0.0)),
                _ => prop_assert!(best_partner_host <= cm + tol),
            }
            if let Some(b) = dec.best {
                prop_assert!(ps.iter().all(|q| q.host == s.host
                    || cost::benefit(&t, s.host, q.host, &ps) <= b.benefit + tol));
            }
        }
    }
}

#[test]
fn a_rule_refuses_a_candidate_names_itself_and_sends_the_search_to_the_rack() {
    use crate::rules::{GroupKind, Member, Rules};
    let topo = fat_tree();
    let mut d = Decider::new(&topo);
    let mut rules = Rules::none();
    let g = rules
        .add_group("db-main", GroupKind::AntiAffinity, 0)
        .unwrap();
    // u (on host 0) talks to its replica on host 9; another partner on host 10 (pod 3).
    let partners = [p(9, 100.0), p(10, 1.0)];
    let members = [Member {
        group: g,
        vm: VmId(8),
        host: HostId(9),
    }];
    let check = rules.check_for(&topo, VmId(7), &[g], &members);
    let gates = Gates {
        rules: &check,
        ..Gates::thesis(0.0)
    };
    let dec = d.decide(&subject(&partners), &gates, |_| cap(0));
    // Host 9 is refused; its rack-mate, host 8, is as close to the replica as allowed.
    assert_eq!(dec.migrates_to(), Some(HostId(8)));
    assert_eq!(dec.by_rule, 1);
    assert_eq!(
        dec.refusal.unwrap().describe(&rules, &topo),
        "anti-affinity group db-main, scope host: r005h02 runs 0.0.0.8"
    );
    // At rack scope the whole rack is refused: u goes to host 10's rack instead, or nowhere.
    let mut rules = Rules::none();
    let g = rules
        .add_group("db-main", GroupKind::AntiAffinity, 1)
        .unwrap();
    let members = [Member {
        group: g,
        vm: VmId(8),
        host: HostId(9),
    }];
    let check = rules.check_for(&topo, VmId(7), &[g], &members);
    let gates = Gates {
        rules: &check,
        ..Gates::thesis(0.0)
    };
    let dec = d.decide(&subject(&partners), &gates, |_| cap(0));
    assert_ne!(
        dec.migrates_to().map(|h| topo.level(h, HostId(9)) <= 1),
        Some(true)
    );
    assert!(dec.by_rule >= 1);
}

#[test]
fn a_rack_a_rule_refuses_sends_the_search_to_the_racks_beside_it() {
    use crate::rules::{GroupKind, Member, Rules};
    let topo = fat_tree();
    let mut d = Decider::new(&topo);
    let mut rules = Rules::none();
    let g = rules.add_group("etcd", GroupKind::AntiAffinity, 1).unwrap();
    // u on host 0 (pod 1) talks only to its replica on host 9 (pod 3, rack 4 = hosts 8, 9).
    let partners = [p(9, 100.0)];
    let members = [Member {
        group: g,
        vm: VmId(8),
        host: HostId(9),
    }];
    let check = rules.check_for(&topo, VmId(7), &[g], &members);
    let gates = Gates {
        rules: &check,
        ..Gates::thesis(0.0)
    };
    let dec = d.decide(&subject(&partners), &gates, |_| cap(0));
    // Rack 4 is refused whole; rack 5 (hosts 10, 11) is under the same pod switch.
    let to = dec.migrates_to().expect("a host in the next rack");
    assert!([HostId(10), HostId(11)].contains(&to), "{dec:?}");
    assert!(matches!(
        dec.outcome,
        Outcome::Migrate {
            via: Via::PartnerPod { of: HostId(9) },
            ..
        }
    ));
    assert_eq!(dec.by_rule, 2, "host 9 and its rack-mate 8");
}

#[test]
fn a_destination_that_refuses_by_rule_is_a_rule_refusal_and_sends_the_search_on() {
    let topo = fat_tree();
    let mut d = Decider::new(&topo);
    // u (host 0) talks to a partner on host 9 and, a little, to one on host 10.
    let partners = [p(9, 100.0), p(10, 1.0)];
    let gates = Gates::thesis(0.0);
    let s = subject(&partners);
    let mut search = d.search(&s, &gates);
    assert_eq!(search.next_query(), Some(HostId(9)));
    // Host 9 knows better than u's host: a replica arrived there meanwhile.
    search.refused_by_rule(HostId(9));
    // Its rack-mate is asked next, as for a full host; it has room.
    assert_eq!(search.next_query(), Some(HostId(8)));
    search.answer(HostId(8), cap(0).as_ref());
    let dec = search.finish();
    assert_eq!(dec.migrates_to(), Some(HostId(8)));
    assert_eq!((dec.by_rule, dec.full, dec.queries), (1, 0, 2));
    assert_eq!(dec.destination_refusal, Some(HostId(9)));
    // Every candidate refuses: the VM stays, excluded by a rule, not for want of room.
    let gates = Gates {
        rack_alternates: 0,
        ..Gates::thesis(0.0)
    };
    let mut search = d.search(&s, &gates);
    while let Some(h) = search.next_query() {
        search.refused_by_rule(h);
    }
    let dec = search.finish();
    assert_eq!(dec.outcome, Outcome::Excluded);
    assert_eq!(dec.full + dec.unreachable, 0);
    assert_eq!(
        dec.destination_refusal,
        Some(HostId(9)),
        "the best candidate's refusal is the one named"
    );
}

#[test]
fn a_host_without_cpu_for_the_vm_reads_as_full() {
    let t = fat_tree();
    let mut d = Decider::new(&t);
    let partners = [p(9, 50.0)];
    let busy = |load: f32| {
        move |_| {
            Some(Capacity {
                cpu_load: load,
                cpus: 8,
                ..cap(0).unwrap()
            })
        }
    };
    let s = Subject {
        cpu_cores: 2.0,
        ..subject(&partners)
    };
    let gates = Gates {
        max_cpu_load: 0.9,
        ..Gates::thesis(0.0)
    };
    // 0.7 + 2/8 = 0.95 > 0.9: host 9 and its rack-mate are full.
    let dec = d.decide(&s, &gates, busy(0.7));
    assert_eq!(dec.outcome, Outcome::NoCapacity);
    assert_eq!((dec.full, dec.cpu_full), (2, 2));
    // 0.6 + 0.25 fits.
    let dec = d.decide(&s, &gates, busy(0.6));
    assert_eq!(dec.migrates_to(), Some(HostId(9)));
    assert!(
        cpu_room(&busy(0.7)(HostId(0)).unwrap(), 2.0, 0.0),
        "0 turns it off"
    );
}
