//! What this host knows of placement groups beyond itself, and the destination's re-check.
//!
//! - [`Daemon::known_group_members`]: where the members of a VM's groups run as far as this
//!   host knows without asking, for the `RuleCheck` of a decision (`rules::Rules::check_for`;
//!   the rules room adds lookups of rules-file members it cannot place): rules-file members
//!   located through the directory, this host's VMs by their metadata (exact), peers' VMs by
//!   their groups announcements, and the VMs this host holds room for.
//! - [`Daemon::moving_vm`]: what a capacity request says of the VM that would move (its groups
//!   with kind and scope), so the destination can judge it.
//! - [`Daemon::recheck`]: the destination's side: the same `RuleCheck`, built from what this
//!   host knows best, and a reservation for an accepted VM, both under one lock, so two
//!   decisions made on stale knowledge cannot both place members of one anti-affinity group
//!   here (or within its scope of here, as far as this host knows).
//!
//! The rule logic is `crate::rules`'; this room only gathers what the checks are asked about.
//! It never decides a move and never sends anything but location lookups.

use super::host::{Daemon, lock};
use crate::hypervisor::Vm;
use crate::p2p::{Known, Peers};
use crate::rules::{self, GroupId, GroupKind, Member, Rules};
use crate::topology::HostId;
use scored_proto::{GroupRef, MAX_VM_GROUPS, MovingVm, VmGroups};
use std::borrow::Cow;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The lock that makes a destination's rule check and its reservation one step.
#[derive(Default)]
pub struct Placement {
    /// Held from a capacity request's rule check to its reservation.
    gate: Mutex<()>,
}

impl<P: Peers> Daemon<P> {
    /// Where the members of `groups` (ids of `rules`) run, as far as this host knows without
    /// asking anyone: for each group, its rules-file members the directory can place, this
    /// host's VMs whose metadata names it, peers' VMs their fresh announcements name, and the VMs
    /// this host holds room for. A VM may appear more than once; `check_for` removes repeats.
    pub fn known_group_members(&self, rules: &Rules, groups: &[GroupId]) -> Vec<Member> {
        let dir = self.peers.directory();
        let mut out = Vec::new();
        for &g in groups {
            for &vm in &rules.group(g).members {
                if let Some(host) = dir.lookup(vm) {
                    out.push(Member { group: g, vm, host });
                }
            }
        }
        let id_of = |name: &str| {
            groups
                .iter()
                .copied()
                .find(|&g| rules.group(g).name == name)
        };
        let (current, local) = self.local_memberships();
        for (vm, gs) in local {
            for g in gs {
                if let Some(group) = id_of(&current.group(g).name) {
                    out.push(Member {
                        group,
                        vm,
                        host: self.me,
                    });
                }
            }
        }
        let names: Vec<&str> = groups
            .iter()
            .map(|&g| rules.group(g).name.as_str())
            .collect();
        for m in dir.group_members(&names, Instant::now()) {
            if m.known == Known::Here {
                // The inventory above is the hypervisor's word; the directory's copy may lag.
                continue;
            }
            if let Some(group) = id_of(&m.group) {
                out.push(Member {
                    group,
                    vm: m.vm,
                    host: m.host,
                });
            }
        }
        out
    }

    /// The groups of `vm` as a capacity request names them: every group the rules room puts it
    /// in (the rules file's, by id and by libvirt name, and those its metadata names, interned
    /// at the last inventory read; a tag the rules cannot resolve is left out, its error is the
    /// rules room's to report). At most `MAX_VM_GROUPS`.
    pub fn moving_vm(&self, vm: &Vm) -> MovingVm {
        let (rules, _, ids) = self.groups_of(vm.id);
        let mut groups: Vec<GroupRef> = ids.iter().map(|&g| group_ref(rules.group(g))).collect();
        // A name the wire cannot carry would make the whole request unsendable (the host would
        // count as not answering): such a group is left to the asker's own check.
        groups.retain(|g| match scored_proto::check_group_name(&g.name) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(vm = %vm.id, error = %e, "group not named in capacity requests");
                false
            }
        });
        if groups.len() > MAX_VM_GROUPS {
            tracing::warn!(vm = %vm.id, groups = groups.len(), "VM in more groups than a capacity request carries; the first {MAX_VM_GROUPS} are sent");
            groups.truncate(MAX_VM_GROUPS);
        }
        MovingVm { vm: vm.id, groups }
    }

    /// Tells the directory which groups this host's VMs are in, as the rules room read them
    /// (what only this host knows: their metadata tags, their libvirt names where the rules
    /// file lists them by name), so it announces them.
    pub(super) fn publish_local_groups(&self) {
        let (current, local) = self.local_memberships();
        let groups = local
            .into_iter()
            .map(|(vm, gs)| {
                let mut names: Vec<String> =
                    gs.iter().map(|&g| current.group(g).name.clone()).collect();
                names.retain(|n| scored_proto::check_group_name(n).is_ok());
                names.sort_unstable();
                names.dedup();
                names.truncate(MAX_VM_GROUPS);
                VmGroups { vm, groups: names }
            })
            .filter(|v| !v.groups.is_empty())
            .collect();
        self.peers.directory().set_local_groups(groups);
    }

    /// The destination's re-check of a request to take `moving` from `from`: the rules' check
    /// with what this host knows (its own VMs exactly, peers' as announced, the VMs it holds
    /// room for); when the rules allow it and `accepts` (there is room), room is held for the
    /// VM for `hold`. The refusal is the rule's sentence.
    pub(super) fn recheck(
        &self,
        from: HostId,
        moving: &MovingVm,
        accepts: bool,
        hold: Duration,
    ) -> Result<(), String> {
        let rules = self.rules();
        let mut owned: Cow<'_, Rules> = Cow::Borrowed(&*rules);
        let mut ids = Vec::with_capacity(moving.groups.len());
        for g in &moving.groups {
            let id = match owned.group_by_name(&g.name) {
                // Declared by the rules file here too: its kind and scope hold.
                Some(id) => id,
                // A group only the VM's metadata names: judged as the asker resolved it.
                None => match owned
                    .to_mut()
                    .group_named(&g.name, rules_kind(g.kind), g.scope)
                {
                    Ok(id) => id,
                    Err(e) => return Err(format!("group {}: {e}", g.name)),
                },
            };
            ids.push(id);
        }
        let _gate = lock(&self.placement.gate);
        let members = self.known_group_members(&owned, &ids);
        let check = owned.check_for(&self.topo, moving.vm, &ids, &members);
        if let Err(r) = check.allows(from, self.me) {
            return Err(r.describe(&owned, &self.topo));
        }
        if accepts && !moving.groups.is_empty() {
            let names = moving.groups.iter().map(|g| g.name.clone()).collect();
            self.peers
                .directory()
                .reserve(moving.vm, from, names, Instant::now() + hold);
        }
        Ok(())
    }
}

fn group_ref(g: &rules::Group) -> GroupRef {
    GroupRef {
        name: g.name.clone(),
        kind: wire_kind(g.kind),
        scope: g.scope,
    }
}

fn wire_kind(k: GroupKind) -> scored_proto::GroupKind {
    match k {
        GroupKind::AntiAffinity => scored_proto::GroupKind::AntiAffinity,
        GroupKind::Affinity => scored_proto::GroupKind::Affinity,
    }
}

fn rules_kind(k: scored_proto::GroupKind) -> GroupKind {
    match k {
        scored_proto::GroupKind::AntiAffinity => GroupKind::AntiAffinity,
        scored_proto::GroupKind::Affinity => GroupKind::Affinity,
    }
}
