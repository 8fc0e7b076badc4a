use super::*;
use crate::hypervisor::GroupTag;
use crate::rules::{GroupKind, Refusal, TagError, WindowState};
use crate::topology::HostId;
use scored_proto::VmId;
use std::path::Path;

/// hv1, hv2 share tor1; hv3 is in tor2 under agg1 with them; hv4 alone under agg2.
fn testbed() -> Topology {
    Topology::parse(
        Path::new("topology/testbed.toml"),
        include_str!("../../../topology/testbed.toml"),
    )
    .unwrap()
}

fn vm(s: &str) -> VmId {
    VmId::from_ipv4(s.parse().unwrap())
}

const GOOD: &str = r#"repair = true

[budget]
per_vm_per_day = 4
per_host_per_hour = 10

[[group]]
name = "db-main"
kind = "anti-affinity"
scope = "host"
members = ["10.0.0.2", "db-main-2"]

[[group]]
name = "quorum"
kind = "anti-affinity"
scope = "rack"

[[group]]
name = "web"
kind = "affinity"
scope = "aggregation"
members = ["10.0.1.1", "10.0.1.2"]

[[exclusion]]
name = "db-not-on-agg2"
groups = ["db-main"]
vms = ["batch-7"]
switches = ["agg2"]

[[window]]
name = "nights"
timezone = "Europe/Paris"
days = ["mon-fri"]
start = "22:00"
end = "06:00"

[[window]]
name = "weekends"
timezone = "America/New_York"
days = ["sat", "sun"]
start = "00:00"
end = "00:00"
hosts = ["hv4"]
"#;

#[test]
fn a_file_with_every_kind_of_rule_gives_those_rules() {
    let topo = testbed();
    let rules = parse(Path::new("rules.toml"), GOOD, &topo).unwrap();
    assert!(rules.repair);
    assert_eq!(rules.budget.per_vm_per_day, Some(4));
    assert_eq!(rules.budget.per_host_per_hour, Some(10));
    let db = rules.group_by_name("db-main").unwrap();
    assert_eq!(rules.group(db).kind, GroupKind::AntiAffinity);
    assert_eq!(rules.group(db).scope, 0);
    assert_eq!(rules.group(rules.group_by_name("quorum").unwrap()).scope, 1);
    assert_eq!(rules.group(rules.group_by_name("web").unwrap()).scope, 2);
    // The replica named by address may not join the one on hv2, and the group stays off agg2.
    let member = crate::rules::Member {
        group: db,
        vm: VmId(99),
        host: HostId(1),
    };
    let check = rules.check_for(&topo, vm("10.0.0.2"), &[], &[member]);
    assert_eq!(
        check
            .allows(HostId(2), HostId(1))
            .unwrap_err()
            .describe(&rules, &topo),
        "anti-affinity group db-main, scope host: hv2 runs 0.0.0.99"
    );
    assert_eq!(
        check
            .allows(HostId(2), HostId(3))
            .unwrap_err()
            .describe(&rules, &topo),
        "exclusion db-not-on-agg2: hv4 is excluded"
    );
    assert!(check.allows(HostId(1), HostId(0)).is_ok());
    // Windows: nights for every host in Paris time, weekends for hv4 in New York time.
    assert_eq!(rules.windows.len(), 2);
    assert!(rules.windows[0].hosts.is_none());
    assert!(rules.windows[1].applies_to(HostId(3)));
    assert!(!rules.windows[1].applies_to(HostId(0)));
    // 2026-12-02 (a Wednesday) 21:30 UTC = 22:30 in Paris: open.
    let wed_2130_utc = 1_796_247_000_000;
    assert!(matches!(
        rules.window(HostId(0), wed_2130_utc),
        WindowState::Open { window: 0 }
    ));
    // 20:30 UTC = 21:30 in Paris: closed, opens in half an hour.
    assert_eq!(
        rules.window(HostId(0), wed_2130_utc - 3_600_000),
        WindowState::Closed {
            next_open_unix_ms: Some(wed_2130_utc - 1_800_000)
        }
    );
}

#[test]
fn members_named_by_libvirt_name_join_where_the_vm_is_known() {
    let topo = testbed();
    let mut rules = parse(Path::new("rules.toml"), GOOD, &topo).unwrap();
    let db = rules.group_by_name("db-main").unwrap();
    let id = vm("10.0.0.3");
    // Before its host binds the name, the VM is in no group and no exclusion applies to it.
    assert!(rules.check_for(&topo, id, &[], &[]).is_empty());
    assert_eq!(rules.groups_named("db-main-2"), &[db]);
    let bound = rules.bind_names([(id, "db-main-2"), (vm("10.0.0.9"), "batch-7")]);
    assert_eq!(bound, 2);
    assert_eq!(rules.groups_of(id), &[db]);
    let check = rules.check_for(&topo, id, &[], &[]);
    assert!(matches!(
        check.allows(HostId(0), HostId(3)),
        Err(Refusal::Excluded { .. })
    ));
    // The exclusion named by name binds too; binding again changes nothing.
    let batch = rules.check_for(&topo, vm("10.0.0.9"), &[], &[]);
    assert!(batch.allows(HostId(0), HostId(3)).is_err());
    assert_eq!(rules.bind_names([(id, "db-main-2")]), 0);
}

#[test]
fn every_mistake_is_reported_at_its_place_in_one_pass() {
    let topo = testbed();
    let text = r#"[budget]
per_vm_per_day = 0

[[group]]
name = "db-main"
kind = "anti-afinity"
scope = "row"
members = ["10.0.0.2", "bad/name", "10.0.0.2"]

[[group]]
name = "db-main"
kind = "affinity"
scope = "host"

[[exclusion]]
groups = ["nosuch"]
hosts = ["tor1", "hv9"]
switches = ["hv1"]

[[exclusion]]
name = "empty"

[[window]]
name = "nights"
timezone = "Europe/Pariss"
days = ["mon", "funday"]
start = "25:00"
end = "6h"
hosts = ["hv5"]

[[window]]
name = "nights"
start = "22:00"
end = "06:00"
"#;
    let errs = parse(Path::new("rules.toml"), text, &topo).unwrap_err();
    let lines: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        lines,
        vec![
            "rules.toml:2:18: `per_vm_per_day = 0` would forbid every migration: leave the key out for no limit",
            "rules.toml:6:8: unknown kind `anti-afinity` (anti-affinity or affinity)",
            "rules.toml:7:9: unknown scope `row` (host, rack, aggregation or core)",
            "rules.toml:8:24: `bad/name` is neither a VM address (IPv4) nor a libvirt domain name",
            "rules.toml:8:36: `10.0.0.2` is listed twice in group `db-main`",
            "rules.toml:11:8: group `db-main` is declared twice (first on line 5)",
            "rules.toml:16:11: group `nosuch` is not declared in this file: declare it in a [[group]] table (its members may come from the VMs' metadata)",
            "rules.toml:17:10: `tor1` is a switch, not a host: list it under `switches`",
            "rules.toml:17:18: `hv9` is not a host of the topology",
            "rules.toml:18:13: `hv1` is a host, not a switch: list it under `hosts`",
            "rules.toml:20:1: exclusion `empty` names no VM or group: give `vms` or `groups`",
            "rules.toml:20:1: exclusion `empty` names no host or switch: give `hosts` or `switches`",
            "rules.toml:25:12: unknown time zone `Europe/Pariss` (an IANA name such as `Europe/Paris` or `UTC`)",
            "rules.toml:26:16: unknown day `funday` (mon, tue, wed, thu, fri, sat, sun, or a range such as `mon-fri`)",
            "rules.toml:27:9: `25:00` is not a time of day HH:MM (00:00 to 23:59)",
            "rules.toml:28:7: `6h` is not a time of day HH:MM (00:00 to 23:59, or 24:00 for an end)",
            "rules.toml:29:10: `hv5` is not a host of the topology",
            "rules.toml:31:1: window `nights` has no `timezone`: name one (e.g. `UTC` or `Europe/Paris`), windows are never in the host's local time",
            "rules.toml:32:8: window `nights` is declared twice (first on line 24)",
        ]
    );
}

#[test]
fn groups_that_cannot_both_hold_are_an_error() {
    let topo = testbed();
    let text = r#"[[group]]
name = "together"
kind = "affinity"
scope = "host"
members = ["10.0.0.1", "10.0.0.2"]

[[group]]
name = "apart"
kind = "anti-affinity"
scope = "rack"
members = ["10.0.0.2", "10.0.0.1"]
"#;
    let errs = parse(Path::new("r.toml"), text, &topo).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "r.toml:11:24: 10.0.0.1 and 10.0.0.2 must share a host (affinity group `together`, line 2) and be in different racks (anti-affinity group `apart`): no placement satisfies both"
    );
}

#[test]
fn a_syntax_error_or_an_unknown_key_has_its_position() {
    let topo = testbed();
    let errs = parse(
        Path::new("r.toml"),
        "[[group]]\nname = \"a\"\nkinds = \"affinity\"\n",
        &topo,
    )
    .unwrap_err();
    let e = errs.to_string();
    assert!(e.starts_with("r.toml:3:1: unknown key `kinds`"), "{e}");
    let errs = parse(Path::new("r.toml"), "repair = maybe\n", &topo).unwrap_err();
    assert!(errs.to_string().starts_with("r.toml:1:10: "), "{errs}");
}

#[test]
fn a_missing_file_is_no_rules_and_an_unreadable_one_an_error() {
    let topo = testbed();
    let dir = tempfile::tempdir().unwrap();
    let rules = load(&dir.path().join("rules.toml"), &topo).unwrap();
    assert!(rules.is_empty());
    // A directory where the file should be cannot be read.
    let errs = load(dir.path(), &topo).unwrap_err();
    let e = errs.to_string();
    assert!(
        e.starts_with(&format!("{}: cannot read file", dir.path().display())),
        "{e}"
    );
}

fn tag(name: &str, kind: Option<GroupKind>, scope: Option<&str>) -> GroupTag {
    GroupTag {
        name: name.into(),
        kind,
        scope: scope.map(String::from),
    }
}

#[test]
fn metadata_groups_become_group_ids() {
    let topo = testbed();
    let mut rules = parse(Path::new("rules.toml"), GOOD, &topo).unwrap();
    let db = rules.group_by_name("db-main").unwrap();
    // Declared by the file: a bare tag joins it; a disagreeing one joins it too (the file wins)
    // and says so.
    let (groups, errors) = rules.intern_tags(
        &topo,
        &[
            tag("db-main", None, None),
            tag("quorum", Some(GroupKind::Affinity), Some("host")),
        ],
    );
    let quorum = rules.group_by_name("quorum").unwrap();
    assert_eq!(groups, vec![db, quorum]);
    assert_eq!(
        errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        vec![
            "metadata group `quorum` says affinity at scope host, but the rules file declares it anti-affinity at scope rack: the rules file's applies"
        ]
    );
    // Undeclared with kind and scope: a group of its own, the same one for every VM naming it.
    let (a, errors) = rules.intern_tags(
        &topo,
        &[tag(
            "cache",
            Some(GroupKind::AntiAffinity),
            Some("aggregation"),
        )],
    );
    assert!(errors.is_empty());
    let (b, _) = rules.intern_tags(
        &topo,
        &[tag(
            "cache",
            Some(GroupKind::AntiAffinity),
            Some("aggregation"),
        )],
    );
    assert_eq!(a, b);
    assert_eq!(rules.group(a[0]).scope, 2);
    assert_eq!(rules.group(a[0]).kind, GroupKind::AntiAffinity);
    // Undeclared without a kind or scope, or with a scope the topology lacks: errors, no group.
    let (groups, errors) = rules.intern_tags(
        &topo,
        &[
            tag("mystery", None, Some("host")),
            tag("far", Some(GroupKind::Affinity), Some("row")),
        ],
    );
    assert!(groups.is_empty());
    assert_eq!(
        errors,
        vec![
            TagError::Undeclared {
                name: "mystery".into()
            },
            TagError::UnknownScope {
                name: "far".into(),
                scope: "row".into()
            },
        ]
    );
    assert_eq!(
        errors[0].to_string(),
        "metadata group `mystery` is not in the rules file and its metadata lacks a kind or a scope: give both (kind='anti-affinity' scope='host', say) or declare the group in the rules file"
    );
    // A metadata group does not become a file group: a later bare tag naming it is still an error.
    let (_, errors) = rules.intern_tags(&topo, &[tag("cache", None, None)]);
    assert_eq!(
        errors,
        vec![TagError::Undeclared {
            name: "cache".into()
        }]
    );
}
