//! Placement rules an operator states: anti-affinity and affinity groups with a topology scope,
//! exclusions, migration windows and budgets.
//!
//! Pure: no I/O, no clock (times come in as arguments). The daemon, the simulator, `scored plan`
//! and the tests all ask the same questions here:
//! - [`RuleCheck::allows`]: may VM u move from one host to another? (the decision's candidate
//!   filter, and a destination's re-check when it is asked for room)
//! - [`RuleCheck::violations`]: which rules does u break where it runs now?
//! - [`Rules::window`]: may this host migrate at this instant?
//! - [`Budget`]: has a VM or a host used up its migrations?
//!
//! Where rules come from: [`file`] reads the cluster's rules file; [`tags`] joins a VM to groups
//! by its libvirt name (named in the file) and by its own metadata (`<scored:group …/>`).
//!
//! A *scope* is a level of the topology: 0 is the host itself, 1 the rack, 2 the next switch tier
//! up, and so on (`ℓ(x, y)` of docs/s-core.md). Two hosts are *within* scope `s` when
//! `ℓ(x, y) ≤ s`.

pub mod file;
mod summary;
mod tags;
pub mod window;

use crate::topology::{HostId, Topology};
use scored_proto::{Level, VmId};
use std::collections::HashMap;
use std::fmt;

pub use file::{RulesFileError, RulesFileErrors};
pub use summary::summary;
pub use tags::TagError;
pub use window::{Span, Window, WindowState};

/// Index of a group in its [`Rules`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u32);

/// Index of an exclusion in its [`Rules`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExclusionId(pub u32);

/// What a group asks of its members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupKind {
    /// No two members within the scope (replicas on different hosts, racks, ...).
    AntiAffinity,
    /// Members kept within the scope: scored never separates them.
    Affinity,
}

impl GroupKind {
    /// As the rules file and the metric labels write it.
    pub fn name(self) -> &'static str {
        match self {
            GroupKind::AntiAffinity => "anti-affinity",
            GroupKind::Affinity => "affinity",
        }
    }

    /// The kind [`GroupKind::name`] writes as `name` (domain metadata, the testbed's flags).
    pub fn from_name(name: &str) -> Option<GroupKind> {
        [GroupKind::AntiAffinity, GroupKind::Affinity]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

/// A named group of VMs with a kind and a scope.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub name: String,
    pub kind: GroupKind,
    /// The topology level the rule holds at: 0 host, 1 rack, ...
    pub scope: Level,
    /// Members named by id (the rules file). Members named by their own libvirt metadata are
    /// not listed here: their host knows them and reports them.
    pub members: Vec<VmId>,
    /// Members the rules file names by libvirt domain name: only the host a VM runs on knows its
    /// name, so they join by id there ([`Rules::bind_names`]) and reach other hosts as that
    /// host reports them.
    pub names: Vec<String>,
    /// Who declared the group: a VM's metadata may join a group the rules file declares with
    /// its name alone, but must give kind and scope for any other.
    pub source: GroupSource,
}

/// Who declared a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupSource {
    /// The rules file (or a program building rules as the file would, e.g. the simulator).
    RulesFile,
    /// A VM's own metadata, with kind and scope.
    Metadata,
}

/// A set of hosts, one bit each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSet {
    bits: Vec<u64>,
}

impl HostSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, h: HostId) {
        let (w, b) = (h.index() / 64, h.index() % 64);
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        self.bits[w] |= 1 << b;
    }

    pub fn contains(&self, h: HostId) -> bool {
        let (w, b) = (h.index() / 64, h.index() % 64);
        self.bits.get(w).is_some_and(|x| x & (1 << b) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Every host under `switch` (a switch of the topology), or the host of that name.
    pub fn insert_named(&mut self, topo: &Topology, name: &str) -> bool {
        if let Some(h) = topo.host_by_name(name) {
            self.insert(h.id);
            return true;
        }
        let Some(s) = topo.switches().iter().position(|s| s.name == name) else {
            return false;
        };
        let s = crate::topology::SwitchId(s as u32);
        for h in topo.hosts() {
            if h.path.contains(&s) {
                self.insert(h.id);
            }
        }
        true
    }
}

/// Hosts (or switches, as the hosts under them) where some VMs must never run.
#[derive(Clone, Debug, PartialEq)]
pub struct Exclusion {
    /// The operator's name for it (or `exclusion N` when the file gives none).
    pub name: String,
    pub hosts: HostSet,
}

/// Migrations allowed per VM and per host; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// At most this many migrations of one VM in any 24 hours.
    pub per_vm_per_day: Option<u32>,
    /// At most this many migrations out of or into one host in any hour.
    pub per_host_per_hour: Option<u32>,
}

/// Which budget a move would exceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetSpent {
    /// The VM already moved `moves` times in the last 24 h (limit `limit`).
    Vm { moves: u32, limit: u32 },
    /// The host already saw `moves` migrations (out or in) in the last hour.
    Host {
        host: HostId,
        moves: u32,
        limit: u32,
    },
}

impl Budget {
    /// Whether one more migration of a VM that moved `vm_moves_last_day` times, between hosts
    /// that saw `from_moves_last_hour` and `to_moves_last_hour` migrations, stays in budget.
    pub fn allows(
        &self,
        vm_moves_last_day: u32,
        from: (HostId, u32),
        to: Option<(HostId, u32)>,
    ) -> Result<(), BudgetSpent> {
        if let Some(limit) = self.per_vm_per_day
            && vm_moves_last_day >= limit
        {
            return Err(BudgetSpent::Vm {
                moves: vm_moves_last_day,
                limit,
            });
        }
        if let Some(limit) = self.per_host_per_hour {
            for (host, moves) in std::iter::once(from).chain(to) {
                if moves >= limit {
                    return Err(BudgetSpent::Host { host, moves, limit });
                }
            }
        }
        Ok(())
    }
}

impl BudgetSpent {
    pub fn describe(&self, topo: &Topology) -> String {
        match *self {
            BudgetSpent::Vm { moves, limit } => {
                format!("budget: the VM moved {moves} time(s) in the last 24 h (limit {limit})")
            }
            BudgetSpent::Host { host, moves, limit } => format!(
                "budget: {} saw {moves} migration(s) in the last hour (limit {limit})",
                topo.host(host).name
            ),
        }
    }
}

/// Why a rule stops u from running on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `member` of u's anti-affinity group runs at `at`, within the group's scope of the host.
    AntiAffinity {
        group: GroupId,
        member: VmId,
        at: HostId,
    },
    /// The move would take u out of the scope of `member` (of u's affinity group), at `at`.
    Affinity {
        group: GroupId,
        member: VmId,
        at: HostId,
    },
    /// The host is in an exclusion that applies to u.
    Excluded {
        exclusion: ExclusionId,
        host: HostId,
    },
}

impl Refusal {
    /// The kind of rule, as a metric label: `anti_affinity`, `affinity`, `exclusion`.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::AntiAffinity { .. } => "anti_affinity",
            Refusal::Affinity { .. } => "affinity",
            Refusal::Excluded { .. } => "exclusion",
        }
    }

    /// For a person: "anti-affinity group db-main, scope host: hv7 runs 10.0.0.2".
    pub fn describe(&self, rules: &Rules, topo: &Topology) -> String {
        match *self {
            Refusal::AntiAffinity { group, member, at } => {
                let g = rules.group(group);
                format!(
                    "anti-affinity group {}, scope {}: {} runs {member}",
                    g.name,
                    scope_name(topo, g.scope),
                    topo.host(at).name
                )
            }
            Refusal::Affinity { group, member, at } => {
                let g = rules.group(group);
                format!(
                    "affinity group {}, scope {}: would leave {member} on {}",
                    g.name,
                    scope_name(topo, g.scope),
                    topo.host(at).name
                )
            }
            Refusal::Excluded { exclusion, host } => format!(
                "exclusion {}: {} is excluded",
                rules.exclusion(exclusion).name,
                topo.host(host).name
            ),
        }
    }
}

/// The name of a scope: `host` for 0, else the topology's name of that level (`rack`, ...).
pub fn scope_name(topo: &Topology, scope: Level) -> String {
    if scope == 0 {
        return "host".to_string();
    }
    topo.level_names()
        .get(scope as usize - 1)
        .cloned()
        .unwrap_or_else(|| format!("level {scope}"))
}

/// The scope a name denotes: `host`, a level name of the topology, or `rack` (level 1, whatever
/// the topology calls it).
pub fn scope_of(topo: &Topology, name: &str) -> Option<Level> {
    if name == "host" {
        return Some(0);
    }
    if let Some(i) = topo.level_names().iter().position(|n| n == name) {
        return Some((i + 1) as Level);
    }
    (name == "rack").then_some(1)
}

/// A rule set that cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesError {
    #[error("group `{0}` is declared twice")]
    GroupTwice(String),
    #[error("group `{name}` is declared as {first} and as {second}")]
    GroupKindsDiffer {
        name: String,
        first: &'static str,
        second: &'static str,
    },
}

/// Every rule of the cluster: the rules file's, plus groups the VMs' metadata declares.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    groups: Vec<Group>,
    by_name: HashMap<String, GroupId>,
    /// Groups each VM belongs to by the rules file (by id, or by name once bound).
    of_vm: HashMap<VmId, Vec<GroupId>>,
    /// Groups and exclusions the rules file puts a libvirt domain name in.
    of_name: HashMap<String, Vec<GroupId>>,
    name_exclusions: HashMap<String, Vec<ExclusionId>>,
    exclusions: Vec<Exclusion>,
    /// Exclusions for one VM, and for every member of a group.
    vm_exclusions: HashMap<VmId, Vec<ExclusionId>>,
    group_exclusions: HashMap<GroupId, Vec<ExclusionId>>,
    /// Migration windows; a host with none that applies may migrate at any time.
    pub windows: Vec<Window>,
    pub budget: Budget,
    /// Move a member of an anti-affinity group away from a violation when its turn comes, even
    /// when the move gains nothing by Eq. 3.2.
    pub repair: bool,
}

impl Rules {
    /// No rules at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether there is no rule of any kind.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
            && self.exclusions.is_empty()
            && self.windows.is_empty()
            && self.budget == Budget::default()
    }

    /// Declares a group (or returns the one of that name when kind and scope agree).
    pub fn group_named(
        &mut self,
        name: &str,
        kind: GroupKind,
        scope: Level,
    ) -> Result<GroupId, RulesError> {
        if let Some(&id) = self.by_name.get(name) {
            let g = &self.groups[id.0 as usize];
            if g.kind != kind || g.scope != scope {
                return Err(RulesError::GroupKindsDiffer {
                    name: name.to_string(),
                    first: g.kind.name(),
                    second: kind.name(),
                });
            }
            return Ok(id);
        }
        let id = GroupId(self.groups.len() as u32);
        self.groups.push(Group {
            name: name.to_string(),
            kind,
            scope,
            members: Vec::new(),
            names: Vec::new(),
            source: GroupSource::RulesFile,
        });
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    /// Declares a new group; an existing name is an error.
    pub fn add_group(
        &mut self,
        name: &str,
        kind: GroupKind,
        scope: Level,
    ) -> Result<GroupId, RulesError> {
        if self.by_name.contains_key(name) {
            return Err(RulesError::GroupTwice(name.to_string()));
        }
        self.group_named(name, kind, scope)
    }

    /// Adds `vm` to `group` (once).
    pub fn add_member(&mut self, group: GroupId, vm: VmId) {
        let g = &mut self.groups[group.0 as usize];
        if !g.members.contains(&vm) {
            g.members.push(vm);
            self.of_vm.entry(vm).or_default().push(group);
        }
    }

    /// Adds the VM of libvirt name `name` to `group` (once): it joins by id where it runs, when
    /// its host calls [`Rules::bind_names`].
    pub fn add_member_name(&mut self, group: GroupId, name: &str) {
        let g = &mut self.groups[group.0 as usize];
        if !g.names.iter().any(|n| n == name) {
            g.names.push(name.to_string());
            self.of_name
                .entry(name.to_string())
                .or_default()
                .push(group);
        }
    }

    /// Adds an exclusion for these VMs and every member of these groups.
    pub fn add_exclusion(
        &mut self,
        exclusion: Exclusion,
        vms: &[VmId],
        groups: &[GroupId],
    ) -> ExclusionId {
        let id = ExclusionId(self.exclusions.len() as u32);
        self.exclusions.push(exclusion);
        for vm in vms {
            self.vm_exclusions.entry(*vm).or_default().push(id);
        }
        for g in groups {
            self.group_exclusions.entry(*g).or_default().push(id);
        }
        id
    }

    /// Applies exclusion `id` to the VM of libvirt name `name` too (bound like group members).
    pub fn exclude_name(&mut self, id: ExclusionId, name: &str) {
        let list = self.name_exclusions.entry(name.to_string()).or_default();
        if !list.contains(&id) {
            list.push(id);
        }
    }

    /// Whom exclusion `id` applies to: VMs by id, by libvirt name, and groups.
    pub fn excluded(&self, id: ExclusionId) -> (Vec<VmId>, Vec<&str>, Vec<GroupId>) {
        let mut vms: Vec<VmId> = (self.vm_exclusions.iter())
            .filter(|(_, e)| e.contains(&id))
            .map(|(v, _)| *v)
            .collect();
        let mut names: Vec<&str> = (self.name_exclusions.iter())
            .filter(|(_, e)| e.contains(&id))
            .map(|(n, _)| n.as_str())
            .collect();
        let mut groups: Vec<GroupId> = (self.group_exclusions.iter())
            .filter(|(_, e)| e.contains(&id))
            .map(|(g, _)| *g)
            .collect();
        vms.sort_unstable();
        names.sort_unstable();
        groups.sort_unstable();
        (vms, names, groups)
    }

    pub fn group(&self, id: GroupId) -> &Group {
        &self.groups[id.0 as usize]
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    pub fn group_by_name(&self, name: &str) -> Option<GroupId> {
        self.by_name.get(name).copied()
    }

    pub fn exclusion(&self, id: ExclusionId) -> &Exclusion {
        &self.exclusions[id.0 as usize]
    }

    pub fn exclusions(&self) -> &[Exclusion] {
        &self.exclusions
    }

    /// The groups the rules file puts `vm` in.
    pub fn groups_of(&self, vm: VmId) -> &[GroupId] {
        self.of_vm.get(&vm).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The window state of `host` at `unix_ms`: open when no window applies to it, else open
    /// inside any window that applies.
    pub fn window(&self, host: HostId, unix_ms: i64) -> WindowState {
        window::state(&self.windows, host, unix_ms)
    }

    /// The rules that bear on `vm`, for a check: its groups (the file's and `extra`, e.g. from
    /// its metadata), where their other members run (`members`: group, member, host; u itself
    /// and members of groups u is not in are ignored), and its exclusions.
    pub fn check_for<'a>(
        &'a self,
        topo: &'a Topology,
        vm: VmId,
        extra: &[GroupId],
        members: &[Member],
    ) -> RuleCheck<'a> {
        let mut groups: Vec<GroupId> = self.groups_of(vm).to_vec();
        for g in extra {
            if !groups.contains(g) {
                groups.push(*g);
            }
        }
        groups.sort_unstable();
        let mut known: Vec<Member> = members
            .iter()
            .filter(|m| m.vm != vm && groups.binary_search(&m.group).is_ok())
            .copied()
            .collect();
        known.sort_unstable_by_key(|m| (m.group, m.vm, m.host));
        known.dedup();
        let mut exclusions: Vec<ExclusionId> = self
            .vm_exclusions
            .get(&vm)
            .map(|v| v.to_vec())
            .unwrap_or_default();
        for g in &groups {
            if let Some(e) = self.group_exclusions.get(g) {
                exclusions.extend_from_slice(e);
            }
        }
        exclusions.sort_unstable();
        exclusions.dedup();
        RuleCheck {
            on: Some((self, topo)),
            vm,
            groups,
            members: known,
            exclusions,
        }
    }

    /// [`Rules::check_for`] where the caller can locate every VM (`locate`: where a VM runs,
    /// `None` when unknown): the members the rules name for u's groups, located. For whoever
    /// holds the whole placement: the simulator, the in-memory hypervisor's re-check, tests.
    /// Members known only from their own metadata are not listed here and are not found.
    pub fn check_located<'a>(
        &'a self,
        topo: &'a Topology,
        vm: VmId,
        mut locate: impl FnMut(VmId) -> Option<HostId>,
    ) -> RuleCheck<'a> {
        let groups = self.groups_of(vm);
        if groups.is_empty() {
            return self.check_for(topo, vm, &[], &[]);
        }
        let mut members = Vec::new();
        for &g in groups {
            for &m in &self.group(g).members {
                if m == vm {
                    continue;
                }
                if let Some(host) = locate(m) {
                    members.push(Member {
                        group: g,
                        vm: m,
                        host,
                    });
                }
            }
        }
        self.check_for(topo, vm, &[], &members)
    }
}

/// A member of a group and the host it runs on, as some host knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    pub group: GroupId,
    pub vm: VmId,
    pub host: HostId,
}

/// The rules for one VM with what is known of its groups' members: answers "may u run there?".
#[derive(Clone, Debug)]
pub struct RuleCheck<'a> {
    on: Option<(&'a Rules, &'a Topology)>,
    vm: VmId,
    groups: Vec<GroupId>,
    members: Vec<Member>,
    exclusions: Vec<ExclusionId>,
}

/// The check of a VM no rule names.
pub static NO_RULES: RuleCheck<'static> = RuleCheck {
    on: None,
    vm: VmId(0),
    groups: Vec::new(),
    members: Vec::new(),
    exclusions: Vec::new(),
};

impl<'a> RuleCheck<'a> {
    /// Whether any rule bears on this VM.
    pub fn is_empty(&self) -> bool {
        self.on.is_none() || (self.groups.is_empty() && self.exclusions.is_empty())
    }

    pub fn vm(&self) -> VmId {
        self.vm
    }

    /// u's groups.
    pub fn groups(&self) -> &[GroupId] {
        &self.groups
    }

    /// The other members of u's groups whose host is known.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn rules(&self) -> Option<&'a Rules> {
        self.on.map(|(r, _)| r)
    }

    /// Whether u may move from `from` to `to`; the first rule that says no, if any. Exclusions
    /// first, then groups in id order, members in id order: the same answer on every host.
    pub fn allows(&self, from: HostId, to: HostId) -> Result<(), Refusal> {
        let Some((rules, topo)) = self.on else {
            return Ok(());
        };
        for &e in &self.exclusions {
            if rules.exclusion(e).hosts.contains(to) {
                return Err(Refusal::Excluded {
                    exclusion: e,
                    host: to,
                });
            }
        }
        for m in &self.members {
            let g = rules.group(m.group);
            match g.kind {
                GroupKind::AntiAffinity => {
                    if topo.level(to, m.host) <= g.scope {
                        return Err(Refusal::AntiAffinity {
                            group: m.group,
                            member: m.vm,
                            at: m.host,
                        });
                    }
                }
                GroupKind::Affinity => {
                    // Never separate: a member within scope now must stay within it. A member
                    // already apart (an existing violation) does not stop u from moving.
                    if topo.level(from, m.host) <= g.scope && topo.level(to, m.host) > g.scope {
                        return Err(Refusal::Affinity {
                            group: m.group,
                            member: m.vm,
                            at: m.host,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The rules u breaks where it runs (`at`): members of its anti-affinity groups within
    /// scope, members of its affinity groups outside it, an exclusion of its host.
    pub fn violations(&self, at: HostId) -> Vec<Refusal> {
        let Some((rules, topo)) = self.on else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for &e in &self.exclusions {
            if rules.exclusion(e).hosts.contains(at) {
                out.push(Refusal::Excluded {
                    exclusion: e,
                    host: at,
                });
            }
        }
        for m in &self.members {
            let g = rules.group(m.group);
            let within = topo.level(at, m.host) <= g.scope;
            match g.kind {
                GroupKind::AntiAffinity if within => out.push(Refusal::AntiAffinity {
                    group: m.group,
                    member: m.vm,
                    at: m.host,
                }),
                GroupKind::Affinity if !within => out.push(Refusal::Affinity {
                    group: m.group,
                    member: m.vm,
                    at: m.host,
                }),
                _ => {}
            }
        }
        out
    }

    /// Whether moving to `to` ends every anti-affinity violation u has at `from` and breaks no
    /// rule: a move the repair option may make without a benefit.
    pub fn repairs(&self, from: HostId, to: HostId) -> bool {
        self.violations(from)
            .iter()
            .any(|v| matches!(v, Refusal::AntiAffinity { .. }))
            && self.allows(from, to).is_ok()
    }
}

impl fmt::Display for GroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests;
