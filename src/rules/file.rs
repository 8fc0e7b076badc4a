//! The rules file (`/etc/scored/rules.toml`, the same on every host): TOML into [`Rules`],
//! checked against the topology, every problem at its `file:line:col` in one pass.
//!
//! ```toml
//! repair = true                       # move a replica away from a violation when its turn comes
//! [budget]                            # migrations per VM per day, per host per hour
//! per_vm_per_day = 4
//! [[group]]                           # anti-affinity / affinity, scope host, rack or a level name
//! name = "db-main"
//! kind = "anti-affinity"
//! scope = "host"
//! members = ["10.0.0.2", "db-main-2"] # VM addresses or libvirt names
//! [[exclusion]]                       # VMs and/or groups never on these hosts / switches
//! groups = ["db-main"]
//! switches = ["agg2"]
//! [[window]]                          # migrate only inside; timezone is required
//! name = "nights"
//! timezone = "Europe/Paris"
//! days = ["mon-fri"]
//! start = "22:00"
//! end = "06:00"
//! ```
//!
//! Parses and checks only: values are read as `toml::Spanned` so each error names its place, and
//! checking goes on after a problem (as the topology file's does). It reads no clock and decides
//! nothing; what the rules mean is `super`'s.

use super::{Exclusion, GroupKind, HostSet, Rules, scope_name, scope_of};
use crate::config::VmRef;
use crate::diagnostics::{line_col, syntax_message};
use crate::topology::{Topology, valid_name};
use scored_proto::Level;
use serde::Deserialize;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;

mod error;
mod window;

pub use error::{RulesFileCause, RulesFileError, RulesFileErrors};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    repair: Option<bool>,
    budget: Option<RawBudget>,
    #[serde(default, rename = "group")]
    groups: Vec<Spanned<RawGroup>>,
    #[serde(default, rename = "exclusion")]
    exclusions: Vec<Spanned<RawExclusion>>,
    #[serde(default, rename = "window")]
    windows: Vec<Spanned<RawWindow>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    per_vm_per_day: Option<Spanned<u32>>,
    per_host_per_hour: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    scope: Option<Spanned<String>>,
    #[serde(default)]
    members: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExclusion {
    name: Option<Spanned<String>>,
    #[serde(default)]
    vms: Vec<Spanned<String>>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    switches: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    name: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    days: Option<Vec<Spanned<String>>>,
    start: Option<Spanned<String>>,
    end: Option<Spanned<String>>,
    hosts: Option<Vec<Spanned<String>>>,
    switches: Option<Vec<Spanned<String>>>,
}

struct Errors<'a> {
    file: &'a Path,
    text: &'a str,
    list: Vec<(usize, RulesFileError)>,
}

impl Errors<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(self.text, span.start);
        self.list.push((
            span.start,
            RulesFileError {
                file: self.file.to_path_buf(),
                line,
                col,
                message: message.into(),
                cause: None,
            },
        ));
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }
}

/// Reads and checks the rules file at `path`; a file that does not exist is no rules (the
/// default path need not exist on a cluster without rules).
pub fn load(path: &Path, topo: &Topology) -> Result<Rules, RulesFileErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text, topo),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Rules::none()),
        Err(e) => Err(RulesFileErrors(vec![RulesFileError {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            message: format!("cannot read file: {e}"),
            cause: Some(e.into()),
        }])),
    }
}

/// Parses and checks rules text against the topology; `path` is used in messages only.
pub fn parse(path: &Path, text: &str, topo: &Topology) -> Result<Rules, RulesFileErrors> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        RulesFileErrors(vec![RulesFileError {
            file: path.to_path_buf(),
            line,
            col,
            message: syntax_message(e.message()),
            cause: Some(e.into()),
        }])
    })?;
    let mut errs = Errors {
        file: path,
        text,
        list: Vec::new(),
    };
    let mut rules = Rules::none();
    rules.repair = raw.repair.unwrap_or(false);
    if let Some(b) = &raw.budget {
        rules.budget.per_vm_per_day = positive(&mut errs, "per_vm_per_day", &b.per_vm_per_day);
        rules.budget.per_host_per_hour =
            positive(&mut errs, "per_host_per_hour", &b.per_host_per_hour);
    }
    let members = groups(&mut errs, &mut rules, &raw.groups, topo);
    conflicts(&mut errs, &rules, &members, topo);
    exclusions(&mut errs, &mut rules, &raw.exclusions, topo);
    window::windows(&mut errs, &mut rules, &raw.windows, topo);
    if errs.list.is_empty() {
        return Ok(rules);
    }
    errs.list.sort_by_key(|(o, _)| *o);
    Err(RulesFileErrors(
        errs.list.into_iter().map(|(_, e)| e).collect(),
    ))
}

fn positive(errs: &mut Errors, key: &str, v: &Option<Spanned<u32>>) -> Option<u32> {
    let v = v.as_ref()?;
    if *v.get_ref() == 0 {
        errs.at(
            v.span(),
            format!("`{key} = 0` would forbid every migration: leave the key out for no limit"),
        );
        return None;
    }
    Some(*v.get_ref())
}

fn check_name(errs: &mut Errors, what: &str, name: &Spanned<String>) {
    if !valid_name(name.get_ref()) {
        errs.at(
            name.span(),
            format!(
                "{what} name `{}` must be 1-64 characters of letters, digits, `-`, `_` or `.`",
                name.get_ref()
            ),
        );
    }
}

/// A name declared twice in one kind of table: says where it was first.
fn once(
    errs: &mut Errors,
    seen: &mut HashMap<String, Range<usize>>,
    what: &str,
    name: &Spanned<String>,
) -> bool {
    if let Some(first) = seen.get(name.get_ref()) {
        let line = errs.line_of(first);
        errs.at(
            name.span(),
            format!(
                "{what} `{}` is declared twice (first on line {line})",
                name.get_ref()
            ),
        );
        return false;
    }
    seen.insert(name.get_ref().clone(), name.span());
    true
}

fn vm_ref(errs: &mut Errors, s: &Spanned<String>) -> Option<VmRef> {
    match s.get_ref().parse::<VmRef>() {
        Ok(v) => Some(v),
        Err(e) => {
            errs.at(s.span(), e.to_string());
            None
        }
    }
}

/// The scope names the topology has, for an error message: `host, rack, aggregation or core`.
fn scope_names(topo: &Topology) -> String {
    let mut names = vec!["host".to_string()];
    names.extend((1..=topo.levels()).map(|l| scope_name(topo, l)));
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// A group's members as the file lists them, for the conflict check.
struct Listed<'r> {
    group: super::GroupId,
    /// Where its name is (the line is worked out only for a message: it costs a scan).
    name_at: Range<usize>,
    members: Vec<(VmRef, &'r Spanned<String>)>,
}

fn groups<'r>(
    errs: &mut Errors,
    rules: &mut Rules,
    raw: &'r [Spanned<RawGroup>],
    topo: &Topology,
) -> Vec<Listed<'r>> {
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for g in raw {
        let r = g.get_ref();
        let Some(name) = &r.name else {
            errs.at(g.span(), "this [[group]] has no `name`");
            continue;
        };
        check_name(errs, "group", name);
        let first = once(errs, &mut seen, "group", name);
        let kind = match &r.kind {
            None => {
                errs.at(
                    g.span(),
                    format!(
                        "group `{}` has no `kind` (anti-affinity or affinity)",
                        name.get_ref()
                    ),
                );
                None
            }
            Some(k) => match k.get_ref().as_str() {
                "anti-affinity" => Some(GroupKind::AntiAffinity),
                "affinity" => Some(GroupKind::Affinity),
                other => {
                    errs.at(
                        k.span(),
                        format!("unknown kind `{other}` (anti-affinity or affinity)"),
                    );
                    None
                }
            },
        };
        let scope: Option<Level> = match &r.scope {
            None => {
                errs.at(
                    g.span(),
                    format!(
                        "group `{}` has no `scope` ({})",
                        name.get_ref(),
                        scope_names(topo)
                    ),
                );
                None
            }
            Some(s) => {
                let l = scope_of(topo, s.get_ref());
                if l.is_none() {
                    errs.at(
                        s.span(),
                        format!("unknown scope `{}` ({})", s.get_ref(), scope_names(topo)),
                    );
                }
                l
            }
        };
        let mut members: Vec<(VmRef, &Spanned<String>)> = Vec::new();
        for m in &r.members {
            let Some(v) = vm_ref(errs, m) else { continue };
            if members.iter().any(|(w, _)| *w == v) {
                errs.at(
                    m.span(),
                    format!(
                        "`{}` is listed twice in group `{}`",
                        m.get_ref(),
                        name.get_ref()
                    ),
                );
                continue;
            }
            members.push((v, m));
        }
        let (Some(kind), Some(scope), true) = (kind, scope, first) else {
            continue;
        };
        let id = rules
            .add_group(name.get_ref(), kind, scope)
            .expect("names are checked once above");
        for (v, _) in &members {
            match v {
                VmRef::Id(vm) => rules.add_member(id, *vm),
                VmRef::Name(n) => rules.add_member_name(id, n),
            }
        }
        out.push(Listed {
            group: id,
            name_at: name.span(),
            members,
        });
    }
    out
}

/// Two VMs an affinity group keeps within scope `a` and an anti-affinity group keeps apart at
/// scope `b ≥ a` can never both be satisfied: say so at the later group's member that closes
/// the pair. (Contradictions through chains of groups are not looked for.)
fn conflicts(errs: &mut Errors, rules: &Rules, listed: &[Listed], topo: &Topology) {
    // Only groups that share a member can conflict: index the groups of each member so a file
    // with thousands of groups is not compared pair by pair.
    let mut of_member: HashMap<&VmRef, Vec<usize>> = HashMap::new();
    for (j, later) in listed.iter().enumerate() {
        let mut earlier_ones: Vec<usize> = (later.members.iter())
            .flat_map(|(v, _)| of_member.get(v).into_iter().flatten().copied())
            .collect();
        earlier_ones.sort_unstable();
        earlier_ones.dedup();
        for (v, _) in &later.members {
            of_member.entry(v).or_default().push(j);
        }
        for earlier in earlier_ones.iter().map(|&i| &listed[i]) {
            let (a, b) = (rules.group(earlier.group), rules.group(later.group));
            let (together, apart, together_at) = match (a.kind, b.kind) {
                (GroupKind::Affinity, GroupKind::AntiAffinity) => (a, b, &earlier.name_at),
                (GroupKind::AntiAffinity, GroupKind::Affinity) => (b, a, &later.name_at),
                _ => continue,
            };
            if together.scope > apart.scope {
                continue;
            }
            let shared: Vec<_> = (later.members.iter())
                .filter(|(v, _)| earlier.members.iter().any(|(w, _)| w == v))
                .collect();
            if shared.len() < 2 {
                continue;
            }
            let mut pair = [shared[0].0.to_string(), shared[1].0.to_string()];
            pair.sort();
            let together_line = errs.line_of(together_at);
            let within = scope_name(topo, together.scope);
            let article = if within.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            errs.at(
                shared[1].1.span(),
                format!(
                    "{} and {} must share {article} {within} (affinity group `{}`, line {together_line}) and be in different {}s (anti-affinity group `{}`): no placement satisfies both",
                    pair[0],
                    pair[1],
                    together.name,
                    scope_name(topo, apart.scope),
                    apart.name,
                ),
            );
        }
    }
}

/// Host and switch names into a set of hosts; each list holds only its own kind of name.
fn host_set(
    errs: &mut Errors,
    topo: &Topology,
    hosts: &[Spanned<String>],
    switches: &[Spanned<String>],
) -> HostSet {
    let mut set = HostSet::new();
    for h in hosts {
        let name = h.get_ref();
        if topo.host_by_name(name).is_some() {
            set.insert_named(topo, name);
        } else if topo.switches().iter().any(|s| s.name == *name) {
            errs.at(
                h.span(),
                format!("`{name}` is a switch, not a host: list it under `switches`"),
            );
        } else {
            errs.at(h.span(), format!("`{name}` is not a host of the topology"));
        }
    }
    for s in switches {
        let name = s.get_ref();
        if topo.host_by_name(name).is_some() {
            errs.at(
                s.span(),
                format!("`{name}` is a host, not a switch: list it under `hosts`"),
            );
        } else if !set.insert_named(topo, name) {
            errs.at(
                s.span(),
                format!("`{name}` is not a switch of the topology"),
            );
        }
    }
    set
}

fn exclusions(
    errs: &mut Errors,
    rules: &mut Rules,
    raw: &[Spanned<RawExclusion>],
    topo: &Topology,
) {
    let mut seen = HashMap::new();
    for (i, x) in raw.iter().enumerate() {
        let r = x.get_ref();
        let name = match &r.name {
            Some(n) => {
                check_name(errs, "exclusion", n);
                once(errs, &mut seen, "exclusion", n);
                n.get_ref().clone()
            }
            None => format!("exclusion {}", i + 1),
        };
        let vms: Vec<VmRef> = r.vms.iter().filter_map(|v| vm_ref(errs, v)).collect();
        let mut groups = Vec::new();
        for g in &r.groups {
            match rules.group_by_name(g.get_ref()) {
                Some(id) => groups.push(id),
                None => errs.at(
                    g.span(),
                    format!(
                        "group `{}` is not declared in this file: declare it in a [[group]] table (its members may come from the VMs' metadata)",
                        g.get_ref()
                    ),
                ),
            }
        }
        if r.vms.is_empty() && r.groups.is_empty() {
            errs.at(
                x.span(),
                format!("exclusion `{name}` names no VM or group: give `vms` or `groups`"),
            );
        }
        if r.hosts.is_empty() && r.switches.is_empty() {
            errs.at(
                x.span(),
                format!("exclusion `{name}` names no host or switch: give `hosts` or `switches`"),
            );
        }
        let hosts = host_set(errs, topo, &r.hosts, &r.switches);
        let ids: Vec<_> = (vms.iter())
            .filter_map(|v| match v {
                VmRef::Id(id) => Some(*id),
                VmRef::Name(_) => None,
            })
            .collect();
        let id = rules.add_exclusion(Exclusion { name, hosts }, &ids, &groups);
        for v in &vms {
            if let VmRef::Name(n) = v {
                rules.exclude_name(id, n);
            }
        }
    }
}

#[cfg(test)]
mod tests;
