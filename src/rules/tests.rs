use super::*;
use jiff::tz::TimeZone;
use std::path::Path;

/// k=4 fat-tree: hosts 2r and 2r+1 share rack r; racks 0-1 pod 1, 2-3 pod 2, …
fn fat_tree() -> Topology {
    Topology::parse(
        Path::new("topology/fat-tree-k4.toml"),
        include_str!("../../topology/fat-tree-k4.toml"),
    )
    .unwrap()
}

fn m(group: GroupId, vm: u32, host: u32) -> Member {
    Member {
        group,
        vm: VmId(vm),
        host: HostId(host),
    }
}

#[test]
fn anti_affinity_at_host_scope_refuses_only_the_members_host() {
    let topo = fat_tree();
    let mut rules = Rules::none();
    let g = rules
        .add_group("db-main", GroupKind::AntiAffinity, 0)
        .unwrap();
    rules.add_member(g, VmId(1));
    rules.add_member(g, VmId(2));
    let check = rules.check_for(&topo, VmId(1), &[], &[m(g, 2, 5)]);
    let r = check.allows(HostId(0), HostId(5)).unwrap_err();
    assert_eq!(
        r.describe(&rules, &topo),
        "anti-affinity group db-main, scope host: r003h02 runs 0.0.0.2"
    );
    // Same rack is fine at host scope.
    assert!(check.allows(HostId(0), HostId(4)).is_ok());
    assert!(check.violations(HostId(5)).len() == 1);
    assert!(check.violations(HostId(4)).is_empty());
    assert!(check.repairs(HostId(5), HostId(4)));
    assert!(!check.repairs(HostId(4), HostId(0)));
}

#[test]
fn anti_affinity_at_rack_scope_refuses_the_whole_rack() {
    let topo = fat_tree();
    assert_eq!(scope_of(&topo, "rack"), Some(1));
    assert_eq!(scope_of(&topo, "edge"), Some(1));
    assert_eq!(scope_of(&topo, "aggregation"), Some(2));
    assert_eq!(scope_of(&topo, "spine"), None);
    let mut rules = Rules::none();
    let g = rules
        .add_group("quorum", GroupKind::AntiAffinity, 1)
        .unwrap();
    let check = rules.check_for(&topo, VmId(1), &[g], &[m(g, 2, 5)]);
    let r = check.allows(HostId(0), HostId(4)).unwrap_err();
    assert_eq!(
        r.describe(&rules, &topo),
        "anti-affinity group quorum, scope edge: r003h02 runs 0.0.0.2"
    );
    assert!(check.allows(HostId(0), HostId(6)).is_ok());
}

#[test]
fn affinity_never_separates_but_lets_a_separated_member_come_back() {
    let topo = fat_tree();
    let mut rules = Rules::none();
    let g = rules.add_group("web", GroupKind::Affinity, 1).unwrap();
    rules.add_member(g, VmId(1));
    rules.add_member(g, VmId(2));
    // Member 2 on host 1, u on host 0: same rack; host 2 would separate them.
    let check = rules.check_for(&topo, VmId(1), &[], &[m(g, 2, 1)]);
    assert!(matches!(
        check.allows(HostId(0), HostId(2)),
        Err(Refusal::Affinity { .. })
    ));
    assert!(check.allows(HostId(0), HostId(1)).is_ok());
    // u already apart (on host 8): any move is allowed, the violation is reported.
    assert!(check.allows(HostId(8), HostId(10)).is_ok());
    assert_eq!(check.violations(HostId(8)).len(), 1);
}

#[test]
fn exclusions_apply_to_vms_and_to_every_member_of_a_group() {
    let topo = fat_tree();
    let mut rules = Rules::none();
    let g = rules.add_group("gpu", GroupKind::Affinity, 3).unwrap();
    rules.add_member(g, VmId(3));
    let mut hosts = HostSet::new();
    assert!(hosts.insert_named(&topo, "pod1"));
    assert!(!hosts.insert_named(&topo, "nowhere"));
    assert_eq!(hosts.len(), 4);
    rules.add_exclusion(
        Exclusion {
            name: "no-pod1".into(),
            hosts,
        },
        &[VmId(1)],
        &[g],
    );
    for vm in [1, 3] {
        let check = rules.check_for(&topo, VmId(vm), &[], &[]);
        let r = check.allows(HostId(8), HostId(2)).unwrap_err();
        assert_eq!(
            r.describe(&rules, &topo),
            "exclusion no-pod1: r002h01 is excluded"
        );
        assert!(check.allows(HostId(8), HostId(4)).is_ok());
    }
    assert!(rules.check_for(&topo, VmId(2), &[], &[]).is_empty());
}

#[test]
fn a_group_declared_twice_or_with_two_kinds_is_an_error() {
    let mut rules = Rules::none();
    rules.add_group("a", GroupKind::Affinity, 0).unwrap();
    assert_eq!(
        rules.add_group("a", GroupKind::Affinity, 0),
        Err(RulesError::GroupTwice("a".into()))
    );
    assert!(rules.group_named("a", GroupKind::Affinity, 0).is_ok());
    assert!(rules.group_named("a", GroupKind::AntiAffinity, 0).is_err());
}

#[test]
fn budgets_count_the_vm_and_both_hosts() {
    let b = Budget {
        per_vm_per_day: Some(2),
        per_host_per_hour: Some(5),
    };
    assert!(b.allows(1, (HostId(0), 4), Some((HostId(1), 4))).is_ok());
    assert_eq!(
        b.allows(2, (HostId(0), 0), None),
        Err(BudgetSpent::Vm { moves: 2, limit: 2 })
    );
    assert_eq!(
        b.allows(0, (HostId(0), 0), Some((HostId(1), 5))),
        Err(BudgetSpent::Host {
            host: HostId(1),
            moves: 5,
            limit: 5
        })
    );
    assert!(
        Budget::default()
            .allows(100, (HostId(0), 100), None)
            .is_ok()
    );
}

#[test]
fn windows_open_in_their_time_zone_and_across_midnight() {
    // 2026-12-02 is a Wednesday. 21:30 UTC = 22:30 in Paris (UTC+1 in winter).
    let wed_2130_utc: i64 = jiff::Timestamp::from_second(1_796_247_000)
        .unwrap()
        .as_millisecond();
    let nights = Window {
        name: "nights".into(),
        hosts: None,
        tz: TimeZone::get("Europe/Paris").unwrap(),
        spans: vec![Span {
            days: window::EVERY_DAY,
            start: 22 * 60,
            end: 6 * 60,
        }],
    };
    let z = jiff::Timestamp::from_millisecond(wed_2130_utc)
        .unwrap()
        .to_zoned(TimeZone::UTC);
    assert_eq!((z.hour(), z.minute()), (21, 30), "{z}");
    assert!(nights.is_open(wed_2130_utc));
    // 20:30 UTC = 21:30 Paris: closed, opens in 30 minutes.
    let before = wed_2130_utc - 3_600_000;
    assert!(!nights.is_open(before));
    assert_eq!(nights.next_open(before), Some(before + 1_800_000));
    // 04:00 UTC Thursday = 05:00 Paris: still inside Wednesday's span.
    assert!(nights.is_open(wed_2130_utc + 6 * 3_600_000 + 1_800_000));
    // Weekends only (Saturday, Sunday): closed on Wednesday, next open Saturday 00:00 Paris.
    let weekends = Window {
        name: "weekends".into(),
        hosts: None,
        tz: TimeZone::get("Europe/Paris").unwrap(),
        spans: vec![Span {
            days: 0b110_0000,
            start: 0,
            end: 0,
        }],
    };
    assert!(!weekends.is_open(wed_2130_utc));
    let sat = weekends.next_open(wed_2130_utc).unwrap();
    let z = jiff::Timestamp::from_millisecond(sat)
        .unwrap()
        .to_zoned(TimeZone::get("Europe/Paris").unwrap());
    assert_eq!(z.weekday(), jiff::civil::Weekday::Saturday);
    assert_eq!((z.hour(), z.minute()), (0, 0));
    // A host no window names may always migrate; one a window names only inside it.
    let mut only = HostSet::new();
    only.insert(HostId(3));
    let rules = Rules {
        windows: vec![Window {
            hosts: Some(only),
            ..weekends
        }],
        ..Rules::none()
    };
    assert_eq!(rules.window(HostId(0), wed_2130_utc), WindowState::Always);
    assert!(!rules.window(HostId(3), wed_2130_utc).allows());
}

/// Property tests: decisions made through [`crate::decide::Decider`] with the `RuleCheck` of the
/// true placement never create a violation, and a repair move never breaks another rule. The
/// violations are counted here from first principles (pairs of members and their level), not
/// through `RuleCheck`, so the oracle does not share the code it judges.
mod property {
    use super::*;
    use crate::cost::PartnerTraffic;
    use crate::decide::{Decider, Gates, Subject};
    use crate::hypervisor::Capacity;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::collections::BTreeSet;
    use std::fmt::Write;

    /// A random tree: 1-3 aggregation switches (more than one meet at an implicit top), 1-3
    /// racks each, 1-3 hosts per rack, each host with room for 2-5 VMs.
    fn topology(rng: &mut ChaCha8Rng) -> Topology {
        let aggs = rng.random_range(1..=3);
        let levels = if aggs > 1 { 3 } else { 2 };
        let mut t = String::new();
        let weights = ["1", "2", "4"][..levels].join(", ");
        let _ = writeln!(t, "[levels]\nweights = [{weights}]");
        let mut n = 0;
        for a in 0..aggs {
            for r in 0..rng.random_range(1..=3) {
                for _ in 0..rng.random_range(1..=3) {
                    n += 1;
                    let _ = writeln!(
                        t,
                        "[[host]]\nname = \"h{n}\"\npath = [\"agg{a}\", \"a{a}r{r}\"]\nmax_vms = {}",
                        rng.random_range(2..=5)
                    );
                }
            }
        }
        Topology::parse(Path::new("random.toml"), &t).unwrap()
    }

    /// One random world: where the VMs run, the rules, who talks to whom.
    struct World {
        topo: Topology,
        rules: Rules,
        host: Vec<HostId>,
        /// Members of each group (by the file or by metadata).
        members: Vec<Vec<usize>>,
        /// Groups each VM's metadata names (passed as `extra`).
        metadata: Vec<Vec<GroupId>>,
        /// For each exclusion: the VMs it applies to.
        excluded: Vec<Vec<usize>>,
        traffic: Vec<Vec<(usize, f64)>>,
    }

    fn id(vm: usize) -> VmId {
        VmId(vm as u32 + 1)
    }

    fn world(seed: u64) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let topo = topology(&mut rng);
        let hosts = topo.hosts().len();
        let mut load = vec![0u32; hosts];
        let mut host = Vec::new();
        for _ in 0..rng.random_range(4..=20) {
            let free: Vec<usize> = (0..hosts)
                .filter(|&h| load[h] < topo.hosts()[h].max_vms)
                .collect();
            if free.is_empty() {
                break;
            }
            let h = free[rng.random_range(0..free.len())];
            load[h] += 1;
            host.push(HostId(h as u32));
        }
        let n = host.len();
        let mut rules = Rules::none();
        let mut members = Vec::new();
        let mut metadata = vec![Vec::new(); n];
        let mut traffic = vec![Vec::new(); n];
        for g in 0..rng.random_range(1..=4) {
            let kind = if rng.random_bool(0.6) {
                GroupKind::AntiAffinity
            } else {
                GroupKind::Affinity
            };
            let scope = rng.random_range(0..=topo.levels().min(2));
            let gid = rules.add_group(&format!("g{g}"), kind, scope).unwrap();
            let mut m: Vec<usize> = Vec::new();
            for _ in 0..rng.random_range(2..=5usize.min(n)) {
                let v = rng.random_range(0..n);
                if !m.contains(&v) {
                    m.push(v);
                }
            }
            for &v in &m {
                // Half the groups list their members in the file, half through metadata.
                if g % 2 == 0 {
                    rules.add_member(gid, id(v));
                } else {
                    metadata[v].push(gid);
                }
                // Replicas talk heavily: exactly what pulls them together without rules.
                for &w in &m {
                    if w != v {
                        traffic[v].push((w, 1000.0));
                    }
                }
            }
            members.push(m);
        }
        for _ in 0..n {
            let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
            if a != b {
                let r = rng.random_range(1.0..100.0);
                traffic[a].push((b, r));
                traffic[b].push((a, r));
            }
        }
        let mut excluded = Vec::new();
        if rng.random_bool(0.5) {
            let mut set = HostSet::new();
            for _ in 0..rng.random_range(1..=2) {
                set.insert(HostId(rng.random_range(0..hosts) as u32));
            }
            let vm = rng.random_range(0..n);
            let group = GroupId(rng.random_range(0..members.len()) as u32);
            rules.add_exclusion(
                Exclusion {
                    name: "x".into(),
                    hosts: set,
                },
                &[id(vm)],
                &[group],
            );
            let mut applies = members[group.0 as usize].clone();
            applies.push(vm);
            excluded.push(applies);
        }
        World {
            topo,
            rules,
            host,
            members,
            metadata,
            excluded,
            traffic,
        }
    }

    impl World {
        /// Every rule broken by a placement: (kind, rule, VM, VM).
        fn violations(&self, host: &[HostId]) -> BTreeSet<(u8, usize, usize, usize)> {
            let mut out = BTreeSet::new();
            for (g, m) in self.members.iter().enumerate() {
                let group = self.rules.group(GroupId(g as u32));
                for (i, &a) in m.iter().enumerate() {
                    for &b in &m[i + 1..] {
                        let within = self.topo.level(host[a], host[b]) <= group.scope;
                        let broken = match group.kind {
                            GroupKind::AntiAffinity => within,
                            GroupKind::Affinity => !within,
                        };
                        if broken {
                            out.insert((0, g, a.min(b), a.max(b)));
                        }
                    }
                }
            }
            for (e, vms) in self.excluded.iter().enumerate() {
                for &v in vms {
                    if self
                        .rules
                        .exclusion(ExclusionId(e as u32))
                        .hosts
                        .contains(host[v])
                    {
                        out.insert((1, e, v, v));
                    }
                }
            }
            out
        }

        fn known_members(&self, host: &[HostId]) -> Vec<Member> {
            let mut out = Vec::new();
            for (g, m) in self.members.iter().enumerate() {
                for &v in m {
                    out.push(Member {
                        group: GroupId(g as u32),
                        vm: id(v),
                        host: host[v],
                    });
                }
            }
            out
        }
    }

    fn capacity(topo: &Topology, host: &[HostId], h: HostId) -> Capacity {
        let running = host.iter().filter(|x| **x == h).count() as u32;
        let total = topo.host(h).memory_mib;
        Capacity {
            running_vms: running,
            incoming_migrations: 0,
            free_memory_mib: total.saturating_sub(1024 * running as u64),
            total_memory_mib: total,
            cpu_load: 0.0,
            cpus: 0,
        }
    }

    /// Runs 80 decisions on random VMs of world `seed`, each with the `RuleCheck` of the true
    /// placement (or none, `with_rules = false`), moving VMs as decided; checks every repair the
    /// rules offer on the way. Returns the number of moves, or the first rule a move broke.
    fn decide_all(seed: u64, with_rules: bool) -> Result<usize, String> {
        let w = world(seed);
        let mut host = w.host.clone();
        let mut decider = Decider::new(&w.topo);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let mut moves = 0;
        for _ in 0..80 {
            let u = rng.random_range(0..host.len());
            let partners: Vec<PartnerTraffic> = (w.traffic[u].iter())
                .map(|&(v, rate)| PartnerTraffic {
                    host: host[v],
                    rate,
                })
                .collect();
            let members = w.known_members(&host);
            let check = w.rules.check_for(&w.topo, id(u), &w.metadata[u], &members);
            let before = w.violations(&host);
            let from = host[u];
            // Every repair the rules offer ends u's anti-affinity violations and breaks nothing
            // that held.
            for h in w.topo.hosts() {
                if h.id == from || !check.repairs(from, h.id) {
                    continue;
                }
                let mut after = host.clone();
                after[u] = h.id;
                let now = w.violations(&after);
                let new: Vec<_> = now.difference(&before).collect();
                if !new.is_empty() {
                    return Err(format!("repairing VM {u} to {} breaks {new:?}", h.name));
                }
                let beside = now.iter().any(|v| {
                    v.0 == 0
                        && w.rules.group(GroupId(v.1 as u32)).kind == GroupKind::AntiAffinity
                        && (v.2 == u || v.3 == u)
                });
                if beside {
                    return Err(format!(
                        "repairing VM {u} to {} leaves a replica beside it",
                        h.name
                    ));
                }
            }
            let subject = Subject {
                vm: id(u),
                host: from,
                memory_mib: 1024,
                cpu_cores: 0.0,
                partners: &partners,
            };
            let gates = Gates {
                rules: if with_rules { &check } else { &NO_RULES },
                ..Gates::thesis(1.0)
            };
            let d = decider.decide(&subject, &gates, |h| Some(capacity(&w.topo, &host, h)));
            if let Some(to) = d.migrates_to() {
                host[u] = to;
                moves += 1;
                let after = w.violations(&host);
                let new: Vec<_> = after.difference(&before).collect();
                if !new.is_empty() {
                    return Err(format!(
                        "moving VM {u} from {} to {} created {new:?} (kind, rule, VM, VM)",
                        w.topo.host(from).name,
                        w.topo.host(to).name
                    ));
                }
            }
        }
        Ok(moves)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn decisions_never_create_a_violation_and_repairs_break_no_rule(seed in any::<u64>()) {
            if let Err(e) = decide_all(seed, true) {
                prop_assert!(false, "seed {seed}: {e}");
            }
        }
    }

    /// The worlds are hard enough to mean something: without the rules, the replicas' traffic
    /// pulls members together and the decisions do break rules, on many seeds.
    #[test]
    fn without_the_rules_the_same_decisions_break_them() {
        let mut broken = Vec::new();
        let mut moves = 0;
        for seed in 0..100 {
            match decide_all(seed, false) {
                Ok(m) => moves += m,
                Err(e) => broken.push(format!("seed {seed}: {e}")),
            }
        }
        assert!(
            broken.len() >= 20,
            "only {} of 100 worlds broke a rule without rules ({moves} moves)",
            broken.len()
        );
        let with: usize = (0..100).map(|s| decide_all(s, true).unwrap()).sum();
        assert!(
            with > 0,
            "no VM ever moved with the rules: the property would hold vacuously"
        );
    }
}
