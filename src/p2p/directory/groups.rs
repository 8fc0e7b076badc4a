//! What this host knows of placement groups that VMs' own metadata names: its own VMs' (the
//! daemon tells it, and they are announced on `/scored/announce/2`), other hosts' (their signed
//! announcements, the latest per host), and the VMs this host holds room for since it accepted a
//! capacity request naming them (reservations), so that a second request on stale knowledge
//! cannot place another member of the same group here before the first has arrived.
//!
//! Names only: which rule a name stands for (kind, scope) is the rules' business (`crate::rules`),
//! as is every judgement. Bounded like the rest of the directory: a host's announcement is kept
//! only up to that host's `max_vms` VMs of at most `MAX_VM_GROUPS` names each, reservations up
//! to this host's `max_vms`, and a host's announcement counts as long as its inventory does
//! (`p2p::zombies::claims_fresh_for`: 90 s in a data centre of up to 300 hosts).

use super::{AnnouncementRejected, Directory, State};
use crate::topology::HostId;
use scored_proto::{GroupsAnnounce, VmGroups, VmId};
use std::collections::HashMap;
use std::time::Instant;

/// Room held for a VM a capacity request named, until it arrives, goes elsewhere, or `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub vm: VmId,
    /// The host that asked (the VM's host then).
    pub from: HostId,
    pub groups: Vec<String>,
    pub until: Instant,
}

/// A VM some group names, where it is believed to run, and why this host believes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    pub group: String,
    pub vm: VmId,
    pub host: HostId,
    pub known: Known,
}

/// Where a [`GroupMember`] comes from: how much it can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// This host runs it (exact).
    Here,
    /// This host accepted a request to take it (it may be on its way).
    Reserved,
    /// Another host's announcement (as fresh as its last one; the host is the directory's
    /// location of the VM when it knows one, else the announcing host).
    Announced,
}

#[derive(Default)]
pub(super) struct Groups {
    /// This host's VMs that name any group, sorted by VM.
    local: Vec<VmGroups>,
    /// Whether the last announcement of this host listed any VM (an emptied list is news once).
    announced_any: bool,
    by_host: HashMap<HostId, (Instant, Vec<VmGroups>)>,
    reserved: Vec<Reservation>,
}

impl Groups {
    /// Forgets a reservation: the VM arrived, or went elsewhere.
    pub(super) fn release(&mut self, vm: VmId) {
        self.reserved.retain(|r| r.vm != vm);
    }
}

impl Directory {
    /// The metadata groups of the VMs running here (only those that name any), as the daemon
    /// read them from the hypervisor.
    pub fn set_local_groups(&self, mut vms: Vec<VmGroups>) {
        vms.retain(|v| !v.groups.is_empty());
        vms.sort_unstable_by_key(|v| v.vm);
        let mut s = self.lock();
        for v in &vms {
            s.groups.release(v.vm);
        }
        s.groups.local = vms;
    }

    /// The announcement of this host's groups, or `None` when there is nothing to say: no VM
    /// here names a group, and none did at the last announcement.
    pub fn local_groups_announcement(&self) -> Option<GroupsAnnounce> {
        let mut s = self.lock();
        let any = !s.groups.local.is_empty();
        if !any && !s.groups.announced_any {
            return None;
        }
        s.groups.announced_any = any;
        Some(GroupsAnnounce {
            host: self.topology.host(self.me).name.clone(),
            vms: s.groups.local.clone(),
        })
    }

    /// Applies a peer's groups announcement: only about itself, and no more VMs than its slots.
    /// It replaces what that host said before.
    pub fn apply_groups(
        &self,
        author: HostId,
        a: &GroupsAnnounce,
        now: Instant,
    ) -> Result<(), AnnouncementRejected> {
        let author_name = || self.topology.host(author).name.clone();
        let Some(h) = self.topology.host_by_name(&a.host) else {
            return Err(AnnouncementRejected::UnknownHost {
                name: a.host.clone(),
            });
        };
        if h.id != author {
            return Err(AnnouncementRejected::NotItsInventory {
                author: author_name(),
                host: a.host.clone(),
            });
        }
        if a.vms.len() > h.max_vms as usize {
            return Err(AnnouncementRejected::InventoryTooLarge {
                author: author_name(),
                vms: a.vms.len(),
                slots: h.max_vms,
            });
        }
        if author == self.me {
            return Ok(());
        }
        let mut s = self.lock();
        if a.vms.is_empty() {
            s.groups.by_host.remove(&author);
        } else {
            s.groups.by_host.insert(author, (now, a.vms.clone()));
        }
        Ok(())
    }

    /// Holds room for `vm` of `groups`, asked for by `from`, until `until` (or until it arrives
    /// or is seen elsewhere). A second request for the same VM replaces the first.
    pub fn reserve(&self, vm: VmId, from: HostId, groups: Vec<String>, until: Instant) {
        let slots = self.topology.host(self.me).max_vms as usize;
        let mut s = self.lock();
        s.groups.release(vm);
        let now = Instant::now();
        s.groups.reserved.retain(|r| r.until > now);
        if s.groups.reserved.len() >= slots.max(1) {
            // One migration comes at a time per token: a full table is old; drop the oldest.
            s.groups.reserved.remove(0);
        }
        s.groups.reserved.push(Reservation {
            vm,
            from,
            groups,
            until,
        });
    }

    /// Lets the reservation of `vm` go (e.g. the asker moved it elsewhere).
    pub fn release_reservation(&self, vm: VmId) {
        self.lock().groups.release(vm);
    }

    /// The reservations in force at `now`.
    pub fn reservations(&self, now: Instant) -> Vec<Reservation> {
        let mut s = self.lock();
        s.groups.reserved.retain(|r| r.until > now);
        s.groups.reserved.clone()
    }

    /// Every VM this host knows in any of `names`, with where it runs: its own VMs (exact), its
    /// reservations, and what fresh announcements of other hosts say (located by the directory
    /// when it knows better, e.g. after a migration announcement).
    pub fn group_members(&self, names: &[&str], now: Instant) -> Vec<GroupMember> {
        // Announced with the inventory, so fresh as long as an inventory is.
        let fresh = self.zombies().fresh_for();
        let mut s = self.lock();
        s.groups.reserved.retain(|r| r.until > now);
        s.groups
            .by_host
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < fresh);
        let mut out = Vec::new();
        let mut push = |group: &str, vm: VmId, host: HostId, known: Known| {
            out.push(GroupMember {
                group: group.to_string(),
                vm,
                host,
                known,
            })
        };
        for v in &s.groups.local {
            for g in v.groups.iter().filter(|g| names.contains(&g.as_str())) {
                push(g, v.vm, self.me, Known::Here);
            }
        }
        for r in &s.groups.reserved {
            for g in r.groups.iter().filter(|g| names.contains(&g.as_str())) {
                push(g, r.vm, self.me, Known::Reserved);
            }
        }
        for (&h, (_, vms)) in &s.groups.by_host {
            for v in vms {
                let host = located(&s, self.me, v.vm).unwrap_or(h);
                for g in v.groups.iter().filter(|g| names.contains(&g.as_str())) {
                    push(g, v.vm, host, Known::Announced);
                }
            }
        }
        out
    }
}

/// Where the directory puts `vm` (here, or its cache entry).
fn located(s: &State, me: HostId, vm: VmId) -> Option<HostId> {
    if s.local.contains_key(&vm) {
        return Some(me);
    }
    s.cache.get(vm).map(|e| e.host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;
    use scored_proto::{Announcement, MigrationAnnounce, Stamp};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    /// Three hosts with room for two VMs each.
    fn directory(me: u32) -> Directory {
        let mut text = String::from("[levels]\nweights = [1]\n[defaults]\nmax_vms = 2\n");
        for i in 0..3 {
            text.push_str(&format!("[[host]]\nname = \"h{i}\"\npath = [\"tor\"]\n"));
        }
        let topo = Arc::new(Topology::parse(Path::new("groups.toml"), &text).unwrap());
        Directory::new(topo, HostId(me))
    }

    fn in_db(vm: u32) -> VmGroups {
        VmGroups {
            vm: VmId(vm),
            groups: vec!["db".into()],
        }
    }

    fn announce(host: &str, vms: Vec<VmGroups>) -> GroupsAnnounce {
        GroupsAnnounce {
            host: host.into(),
            vms,
        }
    }

    fn members(dir: &Directory, now: Instant) -> Vec<(VmId, HostId, Known)> {
        dir.group_members(&["db"], now)
            .into_iter()
            .map(|m| (m.vm, m.host, m.known))
            .collect()
    }

    #[test]
    fn a_host_speaks_only_for_its_own_vms_within_its_slots() {
        let dir = directory(0);
        let t0 = Instant::now();
        // h2 cannot speak for h1.
        let e = dir
            .apply_groups(HostId(2), &announce("h1", vec![in_db(1)]), t0)
            .unwrap_err();
        assert_eq!(e.reason(), "not_its_inventory");
        // Three VMs on a host of two slots: refused whole.
        let e = dir
            .apply_groups(
                HostId(1),
                &announce("h1", vec![in_db(1), in_db(2), in_db(3)]),
                t0,
            )
            .unwrap_err();
        assert_eq!(e.reason(), "inventory_too_large");
        assert!(members(&dir, t0).is_empty());
        dir.apply_groups(HostId(1), &announce("h1", vec![in_db(1)]), t0)
            .unwrap();
        assert_eq!(
            members(&dir, t0),
            vec![(VmId(1), HostId(1), Known::Announced)]
        );
        // A later announcement replaces the earlier one: an emptied host names nobody.
        dir.apply_groups(HostId(1), &announce("h1", vec![]), t0)
            .unwrap();
        assert!(members(&dir, t0).is_empty());
    }

    #[test]
    fn what_peers_said_lapses_and_follows_the_vm_when_it_moves() {
        let dir = directory(0);
        let t0 = Instant::now();
        dir.observe_token(Stamp::new(1 << 16, 1));
        dir.apply_groups(HostId(1), &announce("h1", vec![in_db(1)]), t0)
            .unwrap();
        // The VM moves to h2 (h2 says so): its group goes with it before h2 announces it.
        let arrival = Announcement::Migration(MigrationAnnounce {
            vm: VmId(1),
            from: "h1".into(),
            to: "h2".into(),
            at: Stamp::new(1 << 16, 2),
        });
        dir.apply(HostId(2), &arrival).unwrap();
        assert_eq!(
            members(&dir, t0),
            vec![(VmId(1), HostId(2), Known::Announced)]
        );
        // Without a fresh announcement, the word of h1 no longer counts.
        assert!(members(&dir, t0 + dir.zombies().fresh_for()).is_empty());
    }

    #[test]
    fn room_is_held_until_the_vm_arrives_goes_elsewhere_or_the_hold_ends() {
        let dir = directory(0);
        let now = Instant::now();
        let hold = now + Duration::from_secs(60);
        dir.reserve(VmId(1), HostId(1), vec!["db".into()], hold);
        assert_eq!(
            members(&dir, now),
            vec![(VmId(1), HostId(0), Known::Reserved)]
        );
        // It arrives: this host's own VM from now on, no longer a reservation.
        dir.refresh_local([VmId(1)]);
        dir.set_local_groups(vec![in_db(1)]);
        assert_eq!(members(&dir, now), vec![(VmId(1), HostId(0), Known::Here)]);
        assert!(dir.reservations(now).is_empty());
        // Another is promised, then its host moves it elsewhere.
        dir.observe_token(Stamp::new(1 << 16, 1));
        dir.reserve(VmId(2), HostId(1), vec!["db".into()], hold);
        let elsewhere = Announcement::Migration(MigrationAnnounce {
            vm: VmId(2),
            from: "h1".into(),
            to: "h2".into(),
            at: Stamp::new(1 << 16, 2),
        });
        dir.apply(HostId(1), &elsewhere).unwrap();
        assert!(dir.reservations(now).is_empty());
        // A third is promised and never comes: the hold ends.
        dir.reserve(VmId(3), HostId(2), vec!["db".into()], hold);
        assert_eq!(dir.reservations(now).len(), 1);
        assert!(dir.reservations(hold).is_empty());
        // Never more than this host's slots, however many requests come.
        for v in 10..20 {
            dir.reserve(VmId(v), HostId(1), vec!["db".into()], hold);
        }
        assert_eq!(dir.reservations(now).len(), 2);
    }
}
