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
