//! Each policy's order pinned on small hand-made cases.

use super::*;

fn token(policy: PolicyKind, ids: &[u32]) -> Token {
    Token::new(1, policy, ids.iter().map(|&i| VmId(i)).collect())
}

fn nb(vm: u32, level: Level, rate: f64) -> Neighbour {
    Neighbour {
        vm: VmId(vm),
        level,
        rate,
    }
}

/// Plays turns: each holder reports the neighbours `turns` gives for it (none if absent).
fn play(
    t: &mut Token,
    q: &mut Queue,
    mut next: Next,
    steps: usize,
    turns: &dyn Fn(u32, &Token) -> Vec<Neighbour>,
) -> Vec<u32> {
    let mut order = Vec::new();
    for _ in 0..steps {
        let Next::Holder(v) = next else { break };
        order.push(v.0);
        let ns = turns(v.0, t);
        next = q
            .hand_off(
                t,
                &Turn {
                    vm: v,
                    neighbours: &ns,
                },
            )
            .unwrap();
    }
    order
}

#[test]
fn round_robin_goes_by_id_and_wraps_into_a_new_round() {
    let mut t = token(PolicyKind::RoundRobin, &[40, 10, 30, 20]);
    let mut q = Queue::new(&t).unwrap();
    let first = q.first(&mut t);
    assert_eq!(first, Next::Holder(VmId(10)));
    // Traffic levels do not change round-robin's order.
    let order = play(&mut t, &mut q, first, 6, &|v, _| {
        if v == 10 {
            vec![nb(40, 3, 1e6)]
        } else {
            vec![]
        }
    });
    assert_eq!(order, vec![10, 20, 30, 40, 10, 20]);
    assert_eq!(t.round, 1);
    assert_eq!(t.holder, Some(VmId(30)));
    assert_eq!(t.seq, 7, "the first holder and six hand-offs");
}

#[test]
fn distributed_follows_algorithm_1() {
    let mut t = token(PolicyKind::Distributed, &[10, 20, 30, 40, 50]);
    let mut q = Queue::new(&t).unwrap();
    let first = q.first(&mut t);
    assert_eq!(
        first,
        Next::Holder(VmId(10)),
        "levels start at 0: lowest id"
    );
    let turns = |v: u32, t: &Token| match v {
        // 10 talks across the core to 40 and within the rack to 20.
        10 => vec![nb(40, 3, 5.0), nb(20, 1, 1.0)],
        // 40 also talks to 50 across the core, until 50 moves next to it in round 0.
        40 => vec![
            nb(10, 3, 5.0),
            nb(50, if t.round == 0 { 3 } else { 0 }, 1.0),
        ],
        // 50 moved next to 40: its traffic is now on one host.
        50 => vec![nb(40, 0, 1.0)],
        20 => vec![nb(10, 1, 1.0), nb(30, 2, 1.0)],
        30 => vec![nb(20, 2, 1.0)],
        _ => vec![],
    };
    let order = play(&mut t, &mut q, first, 9, &turns);
    // Pass 1: 10 raises 40 to level 3, which goes next; 40 raises 50 (level 3, after 40 in the
    // ring); level 3 done, 20 (raised to 1 by 10) is the highest left; 20 raises 30 to 2.
    // Pass 2 starts at the lowest id of the highest level (10 and 40 at 3), sweeps level 3 in id
    // order, then level 2 (20, 30), then level 0 (50).
    assert_eq!(order, vec![10, 40, 50, 20, 30, 10, 40, 20, 30]);
    assert_eq!(t.round, 1);
    let levels: Vec<Level> = t.slots.iter().map(|s| s.level).collect();
    assert_eq!(levels, vec![3, 2, 2, 3, 0]);
}

#[test]
fn distributed_continues_a_level_in_ring_order_then_wraps() {
    let mut t = token(PolicyKind::Distributed, &[1, 2, 3, 4]);
    for (vm, level) in [(2, 2), (3, 2)] {
        t.slot_mut(VmId(vm)).unwrap().level = level;
    }
    let mut q = Queue::new(&t).unwrap();
    let first = q.first(&mut t);
    assert_eq!(first, Next::Holder(VmId(2)));
    // 2 raises 1 to level 2 behind the sweep: the sweep goes on to 3 (ring order after 2), then
    // wraps to 1, then drops to level 0.
    let order = play(&mut t, &mut q, first, 4, &|v, _| match v {
        2 => vec![nb(1, 2, 1.0), nb(3, 2, 1.0)],
        3 => vec![nb(2, 2, 1.0)],
        1 => vec![nb(2, 2, 1.0)],
        _ => vec![],
    });
    assert_eq!(order, vec![2, 3, 1, 4]);
}

#[test]
fn distributed_takes_a_level_raised_above_the_sweep_first() {
    let mut t = token(PolicyKind::Distributed, &[1, 2, 3, 4]);
    for vm in [1, 2, 3, 4] {
        t.slot_mut(VmId(vm)).unwrap().level = 1;
    }
    let mut q = Queue::new(&t).unwrap();
    let first = q.first(&mut t);
    let order = play(&mut t, &mut q, first, 4, &|v, _| match v {
        1 => vec![nb(4, 3, 1.0)],
        _ => vec![],
    });
    assert_eq!(order, vec![1, 4, 2, 3]);
}

#[test]
fn load_aware_takes_the_heaviest_of_the_highest_level_first() {
    let mut t = token(PolicyKind::LoadAware, &[1, 2, 3, 4, 5]);
    for (vm, level, load) in [(1, 2, 10), (2, 2, 50), (3, 1, 200), (4, 2, 50), (5, 0, 0)] {
        let s = t.slot_mut(VmId(vm)).unwrap();
        s.level = level;
        s.load = load;
    }
    let mut q = Queue::new(&t).unwrap();
    let first = q.first(&mut t);
    assert_eq!(first, Next::Holder(VmId(2)));
    // 2 reports heavy traffic to 5 across level 2: 5 is raised to level 2 and to the load class
    // of that rate, above 1's.
    let order = play(&mut t, &mut q, first, 6, &|v, _| match v {
        2 => vec![nb(5, 2, 1e6)],
        _ => vec![],
    });
    assert_eq!(order, vec![2, 5, 4, 1, 3, 2]);
    assert_eq!(t.slot(VmId(5)).unwrap().load, load_class(1e6));
    assert_eq!(t.round, 1);
}

#[test]
fn load_aware_equals_distributed_order_when_loads_tie() {
    for policy in [PolicyKind::LoadAware, PolicyKind::Distributed] {
        let mut t = token(policy, &[1, 2, 3]);
        let mut q = Queue::new(&t).unwrap();
        let first = q.first(&mut t);
        let order = play(&mut t, &mut q, first, 3, &|_, _| vec![]);
        assert_eq!(order, vec![1, 2, 3], "{policy}");
    }
}

#[test]
fn global_follows_the_schedule_and_asks_for_statistics_each_round() {
    let mut t = token(PolicyKind::Global, &[1, 2, 3, 4]);
    let mut q = Queue::new(&t).unwrap();
    assert_eq!(q.first(&mut t), Next::NeedsStatistics);
    let stats = [
        (VmId(1), 5.0),
        (VmId(2), 50.0),
        (VmId(4), 20.0),
        (VmId(9), 99.0),
    ];
    let first = q.start_round(&mut t, &stats);
    assert_eq!(first, Next::Holder(VmId(2)));
    assert_eq!(t.schedule, vec![VmId(2), VmId(4), VmId(1), VmId(3)]);
    let mut order = vec![];
    let mut next = first;
    while let Next::Holder(v) = next {
        order.push(v.0);
        next = q
            .hand_off(
                &mut t,
                &Turn {
                    vm: v,
                    neighbours: &[],
                },
            )
            .unwrap();
    }
    assert_eq!(order, vec![2, 4, 1, 3]);
    assert_eq!(next, Next::NeedsStatistics);
    assert_eq!(t.round, 1);
    assert!(t.slots.iter().all(|s| !s.visited));
    // A token that arrives mid-round is indexed at its holder.
    let first = q.start_round(&mut t, &[(VmId(3), 1.0)]);
    assert_eq!(first, Next::Holder(VmId(3)));
    let next = q
        .hand_off(
            &mut t,
            &Turn {
                vm: VmId(3),
                neighbours: &[],
            },
        )
        .unwrap();
    assert_eq!(next, Next::Holder(VmId(1)));
    let mut q2 = Queue::new(&t).unwrap();
    let next = q2
        .hand_off(
            &mut t,
            &Turn {
                vm: VmId(1),
                neighbours: &[],
            },
        )
        .unwrap();
    assert_eq!(next, Next::Holder(VmId(2)));
}

#[test]
fn skip_passes_over_a_vm_without_touching_levels() {
    let mut t = token(PolicyKind::Distributed, &[1, 2, 3]);
    t.slot_mut(VmId(2)).unwrap().level = 3;
    let mut q = Queue::new(&t).unwrap();
    assert_eq!(q.first(&mut t), Next::Holder(VmId(2)));
    assert_eq!(q.skip(&mut t, VmId(2)).unwrap(), Next::Holder(VmId(1)));
    assert_eq!(t.slot(VmId(2)).unwrap().level, 3);
    assert!(t.slot(VmId(2)).unwrap().visited);
}

#[test]
fn slot_update_raises_neighbours_and_sets_own_level() {
    let mut t = token(PolicyKind::Distributed, &[1, 2, 3]);
    t.slot_mut(VmId(1)).unwrap().level = 4;
    t.slot_mut(VmId(3)).unwrap().level = 3;
    let mut q = Queue::new(&t).unwrap();
    let ns = [nb(2, 2, 100.0), nb(3, 1, 1.0), nb(77, 4, 1.0)];
    q.hand_off(
        &mut t,
        &Turn {
            vm: VmId(1),
            neighbours: &ns,
        },
    )
    .unwrap();
    let s: Vec<(Level, bool)> = t.slots.iter().map(|s| (s.level, s.visited)).collect();
    // Own level drops to what its traffic crosses now; 2 raised; 3 kept (never lowered).
    assert_eq!(s, vec![(2, true), (2, false), (3, false)]);
    assert_eq!(t.slots[0].load, load_class(101.0));
}

#[test]
fn bad_tokens_are_refused() {
    let mut t = token(PolicyKind::RoundRobin, &[1, 2]);
    let mut q = Queue::new(&t).unwrap();
    let err = q
        .hand_off(
            &mut t,
            &Turn {
                vm: VmId(5),
                neighbours: &[],
            },
        )
        .unwrap_err();
    assert_eq!(err, TokenError::UnknownHolder(VmId(5), 2));
    t.slots.swap(0, 1);
    assert_eq!(Queue::new(&t).unwrap_err(), TokenError::Unsorted(1));
    let mut empty = token(PolicyKind::Distributed, &[]);
    assert_eq!(Queue::new(&empty).unwrap().first(&mut empty), Next::Empty);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the holders report, every pass gives each VM exactly one turn, and the round
        /// counter moves once per pass.
        #[test]
        fn every_pass_visits_every_vm_once(
            n in 1usize..24,
            policy in prop::sample::select(vec![
                PolicyKind::RoundRobin, PolicyKind::Distributed, PolicyKind::LoadAware,
            ]),
            reports in prop::collection::vec(
                prop::collection::vec((0u32..24, 0u8..5, 0.0f64..1e9), 0..5), 72),
        ) {
            let ids: Vec<u32> = (0..n as u32).map(|i| i * 3 + 1).collect();
            let mut t = token(policy, &ids);
            let mut q = Queue::new(&t).unwrap();
            let mut next = q.first(&mut t);
            for pass in 0..3u32 {
                let mut seen = std::collections::BTreeSet::new();
                for k in 0..n {
                    let Next::Holder(v) = next else { panic!("{next:?}") };
                    prop_assert!(seen.insert(v), "{v:?} twice in pass {pass}");
                    prop_assert_eq!(t.round, pass);
                    let r = &reports[(pass as usize * n + k) % reports.len()];
                    let ns: Vec<Neighbour> = r
                        .iter()
                        .map(|&(i, level, rate)| nb(ids[i as usize % n], level, rate))
                        .collect();
                    next = q.hand_off(&mut t, &Turn { vm: v, neighbours: &ns }).unwrap();
                }
                prop_assert_eq!(seen.len(), n);
                prop_assert_eq!(t.round, pass + 1);
            }
            // The index agrees with a fresh one built from the token.
            let fresh = Queue::new(&t).unwrap();
            prop_assert_eq!(&fresh.waiting, &q.waiting);
        }
    }
}
