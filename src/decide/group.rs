//! Group moves: the token holder moves its VM u together with the partners u is bound to in
//! its rack, into the rack their traffic goes to, as one decision; when the destination rack is
//! full, the VM least bound to the chosen host takes the slot the arriving VM left.
//!
//! Why (docs/evaluation.md, "Group moves"): S-CORE moves one VM at a time, and a VM with heavy
//! partners both in its own rack and in a far rack gains nothing by moving alone: whichever side
//! it joins, it leaves the other behind. Every token policy stops near 70% on dc-2560 for that
//! reason. Moving the rack-local piece of u's cluster together crosses that barrier, with the
//! exact Eq. 3.1 drop of the whole set (`cost::set_benefit`) set against the sum of its moves'
//! `c_m`.
//!
//! Pure like the rest of `decide`: what lies beyond the holder's own host (partners' partners,
//! a destination's residents and room, the gates of VMs on other hosts) comes through
//! [`GroupView`], answered from memory in the simulator.

use super::{Decider, Room};
use crate::cost::{self, Link, SetMove};
use crate::hypervisor::Capacity;
use crate::topology::HostId;
use scored_proto::VmId;
use std::collections::HashMap;

/// What a group decision asks beyond the deciding VM.
pub trait GroupView {
    /// Where `vm` runs (`None`: unknown, e.g. an address outside the data centre).
    fn host_of(&self, vm: VmId) -> Option<HostId>;
    /// `vm`'s partners with their hosts and rates, appended to `out`.
    fn partners(&mut self, vm: VmId, out: &mut Vec<Link>);
    /// The VMs running on `host`, appended to `out`.
    fn residents(&mut self, host: HostId, out: &mut Vec<VmId>);
    /// `host`'s capacity answer (`None`: it did not answer and takes no part).
    fn capacity(&mut self, host: HostId) -> Option<Capacity>;
    fn memory_mib(&self, vm: VmId) -> u64;
    /// Whether `vm` may move now at all (not pinned, not cooling down, its host not in
    /// maintenance).
    fn movable(&mut self, vm: VmId) -> bool;
    /// Whether `vm` may go from `from` to `to` (placement rules, the destination's maintenance,
    /// the return gate) when the plan has moved the VMs `placed` names (`Some(host)`) and left
    /// the others where they run (`None`).
    fn admits(
        &mut self,
        vm: VmId,
        from: HostId,
        to: HostId,
        placed: &dyn Fn(VmId) -> Option<HostId>,
    ) -> bool;
    /// `c_m` of moving `vm` from `from` to `to` (the daemon's rule for a single move).
    fn migration_cost(&mut self, vm: VmId, from: HostId, to: HostId, partners: &[Link]) -> f64;
}

/// How groups are formed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupOptions {
    /// A partner joins the group when its rate to a member is at least this share of u's
    /// heaviest rate (and it runs in u's rack).
    pub bond: f64,
    /// At most this many VMs in a group (evicted VMs not counted).
    pub max_group: usize,
    /// Destination racks tried, those that receive most of the group's cost first.
    pub racks: usize,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            bond: 0.05,
            max_group: 32,
            racks: 2,
        }
    }
}

/// One move of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedMove {
    pub vm: VmId,
    pub from: HostId,
    pub to: HostId,
    /// Moved out of a full destination to make room (not a member of the group).
    pub evicted: bool,
}

/// A multi-VM decision: carried out in `moves`' order, every host stays within its capacity
/// after each move.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupPlan {
    pub moves: Vec<PlannedMove>,
    /// The exact drop in Eq. 3.1 once every move is done.
    pub benefit: f64,
    /// The sum of the moves' `c_m`.
    pub migration_cost: f64,
    /// The members of the group (u first), moved or not.
    pub group: usize,
}

impl GroupPlan {
    /// Eq. 3.2 for the set: the drop exceeds the moves' migration costs.
    pub fn worth_it(&self) -> bool {
        cost::should_migrate(self.benefit, self.migration_cost)
    }

    /// What the plan gains after its migration costs.
    pub fn net(&self) -> f64 {
        self.benefit - self.migration_cost
    }
}

/// The partner lists, residents and rooms a plan reads, each asked once.
struct Asked<'v, V: GroupView + ?Sized> {
    view: &'v mut V,
    partners: HashMap<VmId, Vec<Link>>,
    /// Each host's room as it answered (`None`: it did not answer).
    rooms: HashMap<HostId, Option<Room>>,
}

impl<V: GroupView + ?Sized> Asked<'_, V> {
    fn partners(&mut self, vm: VmId) -> &[Link] {
        let view = &mut *self.view;
        self.partners.entry(vm).or_insert_with(|| {
            let mut out = Vec::new();
            view.partners(vm, &mut out);
            out
        })
    }

    fn room(&mut self, d: &Decider<'_>, host: HostId) -> Option<Room> {
        let view = &mut *self.view;
        *self
            .rooms
            .entry(host)
            .or_insert_with(|| view.capacity(host).map(|c| Room::of(d.topo.host(host), &c)))
    }

    /// The room the plan may count on at `host`: none beyond what the plan frees there when
    /// the host did not answer.
    fn room_or_none(&mut self, d: &Decider<'_>, host: HostId) -> Room {
        self.room(d, host).unwrap_or(Room::NONE)
    }

    /// `rooms` after move `m`: a slot and the VM's memory taken at its destination, given back
    /// at its source.
    fn shift(&mut self, d: &Decider<'_>, rooms: &mut HashMap<HostId, Room>, m: &PlannedMove) {
        let mem = self.view.memory_mib(m.vm) as i64;
        for (host, sign) in [(m.to, -1), (m.from, 1)] {
            let room = rooms
                .entry(host)
                .or_insert_with(|| self.room_or_none(d, host));
            room.vms += sign;
            room.mib += sign * mem;
        }
    }
}

impl Decider<'_> {
    /// The best group move for `u` (by benefit less migration costs), whether or not it is worth
    /// its migration costs; `None` when u's costliest link stays in its rack, u cannot move, no
    /// plan could gain more than `floor` after u's own migration cost (what another decision
    /// already gains), or no destination rack can take u.
    pub fn plan_group<V: GroupView + ?Sized>(
        &self,
        view: &mut V,
        u: VmId,
        opt: &GroupOptions,
        floor: f64,
    ) -> Option<GroupPlan> {
        let home = view.host_of(u)?;
        if !view.movable(u) {
            return None;
        }
        let mut asked = Asked {
            view,
            partners: HashMap::new(),
            rooms: HashMap::new(),
        };
        let rack = self.rack_of[home.index()];
        // u leads a group when its costliest link leaves its rack: a VM whose cost stays in its
        // rack has nothing to take its partners to (and they lead their own groups).
        let mut heaviest = 0.0f64;
        let mut costliest: Option<(f64, HostId)> = None;
        for l in asked.partners(u) {
            heaviest = heaviest.max(l.rate);
            let c = l.rate * self.topo.path_cost(home, l.host);
            if costliest.is_none_or(|b| c > b.0) {
                costliest = Some((c, l.host));
            }
        }
        match costliest {
            Some((c, far)) if c > 0.0 && self.rack_of[far.index()] != rack => {}
            _ => return None,
        }
        // u's own part of what its group could gain in the rack its costliest link goes to (its
        // heavy rack-mates coming along, every far link into that rack saved): when that does
        // not beat `floor` after u's own migration cost, u does not lead a group and nobody is
        // asked; a group whose gain lies in other members' links is led by them at their turns.
        let far_rack = self.rack_of[costliest.map_or(home, |c| c.1).index()];
        let there = self.rack_hosts[far_rack as usize][0];
        let own = asked.partners(u).to_vec();
        let own_part = self.ideal_gain(home, &own, far_rack, |l| {
            self.rack_of[l.host.index()] == rack && l.rate >= opt.bond * heaviest
        });
        if own_part - asked.view.migration_cost(u, home, there, &own) <= floor {
            return None;
        }
        // The group: u and, breadth first, the partners bound to a member by a heavy rate that
        // run in u's rack and may move.
        let mut group: Vec<(VmId, HostId)> = vec![(u, home)];
        let mut next = 0;
        while next < group.len() && group.len() < opt.max_group {
            let x = group[next].0;
            next += 1;
            let links = asked.partners(x).to_vec();
            for l in links {
                if group.len() >= opt.max_group {
                    break;
                }
                if l.rate >= opt.bond * heaviest
                    && self.rack_of[l.host.index()] == rack
                    && !group.iter().any(|g| g.0 == l.vm)
                    && asked.view.host_of(l.vm) == Some(l.host)
                    && asked.view.movable(l.vm)
                {
                    group.push((l.vm, l.host));
                }
            }
        }
        // Where the group's cost goes: racks by the cost of the group's links into them.
        let mut towards: Vec<(u32, f64)> = Vec::new();
        for &(x, at) in &group {
            for l in asked.partners(x) {
                let r = self.rack_of[l.host.index()];
                if r != rack && !group.iter().any(|g| g.0 == l.vm) {
                    let c = l.rate * self.topo.path_cost(at, l.host);
                    match towards.iter_mut().find(|t| t.0 == r) {
                        Some(t) => t.1 += c,
                        None => towards.push((r, c)),
                    }
                }
            }
        }
        towards.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        towards.truncate(opt.racks.max(1));
        // What the whole group would gain in each rack if it all fit (every host of a rack is
        // as far from a VM outside it): a rack where even that does not beat `floor` after u's
        // own migration cost is not surveyed.
        let mut worth = Vec::with_capacity(towards.len());
        for &(r, _) in &towards {
            let mut ideal = 0.0;
            for &(x, at) in &group {
                let links = asked.partners(x);
                ideal += self.ideal_gain(at, links, r, |l| group.iter().any(|g| g.0 == l.vm));
            }
            let there = self.rack_hosts[r as usize][0];
            if ideal - asked.view.migration_cost(u, home, there, &own) > floor {
                worth.push(r);
            }
        }
        let mut best: Option<GroupPlan> = None;
        for r in worth {
            if let Some(plan) = self.plan_into(&mut asked, &group, r)
                && best.as_ref().is_none_or(|b| plan.net() > b.net())
            {
                best = Some(plan);
            }
        }
        best
    }

    /// What a VM at `at` with `links` would gain from its group moving into rack `r` if the
    /// whole group fit there: the links to VMs that come along (`along`) at most their whole cost
    /// once (the pair is seen from both sides), the links into `r` their whole cost, every other
    /// link the difference its cost makes from any host of `r` (all equally far from a VM outside
    /// it). Not a bound: it ignores what a VM sent away to make room gains or loses.
    fn ideal_gain(&self, at: HostId, links: &[Link], r: u32, along: impl Fn(&Link) -> bool) -> f64 {
        let there = self.rack_hosts[r as usize][0];
        links
            .iter()
            .map(|l| {
                let now = l.rate * self.topo.path_cost(at, l.host);
                if along(l) {
                    now
                } else if self.rack_of[l.host.index()] == r {
                    2.0 * now
                } else {
                    2.0 * (now - l.rate * self.topo.path_cost(there, l.host))
                }
            })
            .sum()
    }

    /// Places `group` on the hosts of rack `r`: each member on the host with room it is most
    /// bound to (partners there and members already placed there); when the rack is full, on
    /// the host it is most bound to, which sends its least-bound VM to the member's old host.
    fn plan_into<V: GroupView + ?Sized>(
        &self,
        asked: &mut Asked<'_, V>,
        group: &[(VmId, HostId)],
        r: u32,
    ) -> Option<GroupPlan> {
        let topo = self.topo;
        let hosts = &self.rack_hosts[r as usize];
        let mut placed: HashMap<VmId, HostId> = HashMap::new();
        let mut moves: Vec<PlannedMove> = Vec::new();
        let mut rooms: HashMap<HostId, Room> = HashMap::new();
        // Each host of the rack with the member's bond to it and its room.
        let mut bound: Vec<(HostId, f64, Room)> = Vec::with_capacity(hosts.len());
        let mut residents: Vec<VmId> = Vec::new();
        for &(x, from) in group {
            let mem = asked.view.memory_mib(x);
            bound.clear();
            for &h in hosts {
                // A host that did not answer receives nothing.
                let room = match rooms.get(&h) {
                    Some(&room) => Some(room),
                    None => asked.room(self, h),
                };
                if let Some(room) = room {
                    bound.push((h, 0.0, room));
                }
            }
            for l in asked.partners(x) {
                let at = placed.get(&l.vm).copied().unwrap_or(l.host);
                if let Some(b) = bound.iter_mut().find(|b| b.0 == at) {
                    b.1 += l.rate;
                }
            }
            // A host with room first: every host of the rack is as far from the group's partners
            // outside it, so a member placed off its partners' host loses a rack link at most,
            // while a VM sent away to make room may lose links across the core.
            bound.sort_by(|a, b| {
                b.2.fits(mem)
                    .cmp(&a.2.fits(mem))
                    .then(b.1.total_cmp(&a.1))
                    .then(b.2.vms.cmp(&a.2.vms))
                    .then(a.0.cmp(&b.0))
            });
            let mut chosen: Option<(HostId, Option<VmId>)> = None;
            for &(h, _, _) in bound.iter().take(3) {
                let at_after = |vm: VmId| {
                    if vm == x {
                        Some(h)
                    } else {
                        placed.get(&vm).copied()
                    }
                };
                if !asked.view.admits(x, from, h, &at_after) {
                    continue;
                }
                let room_h = *rooms
                    .entry(h)
                    .or_insert_with(|| asked.room_or_none(self, h));
                if room_h.fits(mem) {
                    chosen = Some((h, None));
                    break;
                }
                // Full: the resident least bound to the host (by its rate to VMs there and to
                // the plan's arrivals; the lightest first among equals) goes where x was.
                let room_from = *rooms
                    .entry(from)
                    .or_insert_with(|| asked.room_or_none(self, from));
                let free_there = room_from.mib + mem as i64;
                residents.clear();
                asked.view.residents(h, &mut residents);
                let mut pick: Option<((f64, f64), VmId)> = None;
                for &w in &residents {
                    if placed.contains_key(&w)
                        || group.iter().any(|g| g.0 == w)
                        || asked.view.memory_mib(w) as i64 > free_there
                        || !asked.view.movable(w)
                    {
                        continue;
                    }
                    let (mut held, mut total) = (0.0, 0.0);
                    for l in asked.partners(w) {
                        total += l.rate;
                        let z = if l.vm == x {
                            h
                        } else {
                            placed.get(&l.vm).copied().unwrap_or(l.host)
                        };
                        if z == h {
                            held += l.rate;
                        }
                    }
                    let key = (held, total);
                    if pick.is_some_and(|p| {
                        p.0.0
                            .total_cmp(&key.0)
                            .then(p.0.1.total_cmp(&key.1))
                            .is_le()
                    }) {
                        continue;
                    }
                    let at_swapped = |vm: VmId| {
                        if vm == x {
                            Some(h)
                        } else if vm == w {
                            Some(from)
                        } else {
                            placed.get(&vm).copied()
                        }
                    };
                    if asked.view.admits(w, h, from, &at_swapped) {
                        pick = Some((key, w));
                    }
                }
                if let Some((_, w)) = pick {
                    chosen = Some((h, Some(w)));
                    break;
                }
            }
            let Some((to, evict)) = chosen else {
                if x == group[0].0 {
                    return None;
                }
                continue;
            };
            let arrive = PlannedMove {
                vm: x,
                from,
                to,
                evicted: false,
            };
            asked.shift(self, &mut rooms, &arrive);
            placed.insert(x, to);
            moves.push(arrive);
            if let Some(w) = evict {
                let leave = PlannedMove {
                    vm: w,
                    from: to,
                    to: from,
                    evicted: true,
                };
                asked.shift(self, &mut rooms, &leave);
                placed.insert(w, from);
                moves.push(leave);
            }
        }
        // Every move once more against the plan's final placement (a later move may have
        // brought a VM its rules keep apart).
        let at_end = |vm: VmId| placed.get(&vm).copied();
        for m in &moves {
            if !asked.view.admits(m.vm, m.from, m.to, &at_end) {
                return None;
            }
        }
        let moves = self.in_feasible_order(asked, moves)?;
        let mut benefit_moves = Vec::with_capacity(moves.len());
        for m in &moves {
            asked.partners(m.vm);
        }
        let mut migration_cost = 0.0;
        for m in &moves {
            let partners = &asked.partners[&m.vm];
            migration_cost += asked.view.migration_cost(m.vm, m.from, m.to, partners);
            benefit_moves.push(SetMove {
                vm: m.vm,
                from: m.from,
                to: m.to,
                partners,
            });
        }
        let benefit = cost::set_benefit(topo, &benefit_moves);
        Some(GroupPlan {
            moves,
            benefit,
            migration_cost,
            group: group.len(),
        })
    }

    /// The moves in an order in which each destination has room when its VM arrives (a host's
    /// room grows as its VMs leave) and each move is admitted where the moves before it left
    /// the others (a destination re-checks the rules against what runs at that moment); `None`
    /// when no such order exists.
    fn in_feasible_order<V: GroupView + ?Sized>(
        &self,
        asked: &mut Asked<'_, V>,
        mut pending: Vec<PlannedMove>,
    ) -> Option<Vec<PlannedMove>> {
        let mut order = Vec::with_capacity(pending.len());
        let mut rooms: HashMap<HostId, Room> = HashMap::new();
        let mut done: HashMap<VmId, HostId> = HashMap::new();
        while !pending.is_empty() {
            let mut found = None;
            for (i, m) in pending.iter().enumerate() {
                let room = *rooms
                    .entry(m.to)
                    .or_insert_with(|| asked.room_or_none(self, m.to));
                let now = |vm: VmId| done.get(&vm).copied();
                if room.fits(asked.view.memory_mib(m.vm))
                    && asked.view.admits(m.vm, m.from, m.to, &now)
                {
                    found = Some(i);
                    break;
                }
            }
            let m = pending.remove(found?);
            asked.shift(self, &mut rooms, &m);
            done.insert(m.vm, m.to);
            order.push(m);
        }
        Some(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::{PartnerTraffic, total_cost};
    use crate::decide::{Gates, Outcome, Subject};
    use crate::topology::Topology;
    use std::path::Path;

    /// Two racks of two hosts under one core switch; a rack link costs 1, the core 10 more.
    fn two_racks(max_vms: u32) -> Topology {
        let mut text = format!(
            "[levels]\nnames = [\"rack\", \"core\"]\nweights = [1.0, 10.0]\n\n[defaults]\nmax_vms = {max_vms}\nmemory_mib = 65536\nreserve_memory_mib = 0\n"
        );
        for (host, rack) in [("a1", "r1"), ("a2", "r1"), ("b1", "r2"), ("b2", "r2")] {
            text += &format!("\n[[host]]\nname = \"{host}\"\npath = [\"core\", \"{rack}\"]\n");
        }
        Topology::parse(Path::new("two-racks.toml"), &text).unwrap()
    }

    /// A data centre in a few maps: where each VM runs, who talks to whom, which VMs may not move
    /// and which moves the rules refuse.
    struct World<'t> {
        topo: &'t Topology,
        at: HashMap<VmId, HostId>,
        links: Vec<(VmId, VmId, f64)>,
        pinned: Vec<VmId>,
        refused: Vec<(VmId, HostId)>,
        /// Hosts whose VMs, residents or room the decision asked for.
        asked: Vec<HostId>,
    }

    impl World<'_> {
        fn host(&self, name: &str) -> HostId {
            self.topo.host_by_name(name).unwrap().id
        }

        fn cost(&self) -> f64 {
            total_cost(self.topo, self.links.iter().copied(), &self.at)
        }

        fn partners(&self, vm: VmId) -> Vec<PartnerTraffic> {
            let mut out = Vec::new();
            self.links(vm, &mut out);
            out.iter()
                .map(|l| PartnerTraffic {
                    host: l.host,
                    rate: l.rate,
                })
                .collect()
        }

        fn links(&self, vm: VmId, out: &mut Vec<Link>) {
            for &(a, b, rate) in &self.links {
                let other = if a == vm {
                    b
                } else if b == vm {
                    a
                } else {
                    continue;
                };
                out.push(Link {
                    vm: other,
                    host: self.at[&other],
                    rate,
                });
            }
        }

        fn capacity(&self, host: HostId) -> Capacity {
            let running = self.at.values().filter(|&&h| h == host).count() as u32;
            Capacity {
                running_vms: running,
                incoming_migrations: 0,
                free_memory_mib: 65536 - 1024 * running as u64,
                total_memory_mib: 65536,
                cpu_load: 0.0,
                cpus: 0,
            }
        }

        /// Carries `plan` out move by move, checking each host's VM limit after every move.
        fn carry_out(&mut self, plan: &GroupPlan) {
            for m in &plan.moves {
                assert_eq!(self.at[&m.vm], m.from, "{m:?}");
                self.at.insert(m.vm, m.to);
                let now = World::capacity(self, m.to).running_vms;
                assert!(
                    now <= self.topo.host(m.to).max_vms,
                    "{m:?} overfills its destination"
                );
            }
        }
    }

    impl GroupView for World<'_> {
        fn host_of(&self, vm: VmId) -> Option<HostId> {
            self.at.get(&vm).copied()
        }
        fn partners(&mut self, vm: VmId, out: &mut Vec<Link>) {
            self.asked.push(self.at[&vm]);
            self.links(vm, out);
        }
        fn residents(&mut self, host: HostId, out: &mut Vec<VmId>) {
            self.asked.push(host);
            let mut here: Vec<VmId> = self
                .at
                .iter()
                .filter(|e| *e.1 == host)
                .map(|e| *e.0)
                .collect();
            here.sort();
            out.extend(here);
        }
        fn capacity(&mut self, host: HostId) -> Option<Capacity> {
            self.asked.push(host);
            Some(World::capacity(self, host))
        }
        fn memory_mib(&self, _vm: VmId) -> u64 {
            1024
        }
        fn movable(&mut self, vm: VmId) -> bool {
            !self.pinned.contains(&vm)
        }
        fn admits(
            &mut self,
            vm: VmId,
            _from: HostId,
            to: HostId,
            _placed: &dyn Fn(VmId) -> Option<HostId>,
        ) -> bool {
            !self.refused.contains(&(vm, to))
        }
        fn migration_cost(&mut self, _: VmId, _: HostId, _: HostId, _: &[Link]) -> f64 {
            1.0
        }
    }

    const U: VmId = VmId(1);
    const V: VmId = VmId(2);
    const W: VmId = VmId(3);

    /// u and v share host a1 and talk heavily; both talk to w in rack r2. Alone, either would
    /// lose the other to gain w: S-CORE's rule never moves them.
    fn stuck(topo: &Topology) -> World<'_> {
        let mut w = World {
            topo,
            at: HashMap::new(),
            links: vec![(U, V, 10.0), (U, W, 6.0), (V, W, 6.0)],
            pinned: Vec::new(),
            refused: Vec::new(),
            asked: Vec::new(),
        };
        for (vm, host) in [(U, "a1"), (V, "a1"), (W, "b1")] {
            let h = w.host(host);
            w.at.insert(vm, h);
        }
        w
    }

    #[test]
    fn a_vm_bound_to_a_rack_mate_follows_their_far_partner_only_as_a_group() {
        let topo = two_racks(4);
        let mut world = stuck(&topo);
        let mut d = Decider::new(&topo);
        let partners = world.partners(U);
        let subject = Subject {
            vm: U,
            host: world.host("a1"),
            memory_mib: 1024,
            cpu_cores: 0.0,
            partners: &partners,
        };
        let single = d.decide(&subject, &Gates::thesis(1.0), |h| Some(world.capacity(h)));
        assert_eq!(single.outcome, Outcome::NoBenefit, "{single:?}");

        let before = world.cost();
        let plan = d
            .plan_group(&mut world, U, &GroupOptions::default(), 0.0)
            .expect("a plan into r2");
        assert!(plan.worth_it(), "{plan:?}");
        assert_eq!(plan.group, 2);
        assert_eq!(plan.migration_cost, 2.0);
        let moved: Vec<VmId> = plan.moves.iter().map(|m| m.vm).collect();
        assert_eq!(moved, vec![U, V]);
        world.carry_out(&plan);
        // Before: 2·(6·11 + 6·11) = 264; after, all three on b1: nothing.
        assert_eq!(before, 264.0);
        assert_eq!(world.cost(), 0.0);
        assert!((plan.benefit - 264.0).abs() < 1e-9, "{plan:?}");
    }

    #[test]
    fn a_full_destination_sends_its_coldest_vms_back_and_no_host_overfills() {
        // Three VMs a host. b1 is full with w and two VMs that talk to nobody; b2 is full with
        // three VMs bound to each other.
        let topo = two_racks(3);
        let mut world = stuck(&topo);
        let vm = |i: u32| VmId(10 + i);
        for (i, host) in [(0, "b1"), (1, "b1"), (2, "b2"), (3, "b2"), (4, "b2")] {
            let h = world.host(host);
            world.at.insert(vm(i), h);
        }
        world
            .links
            .extend([(vm(2), vm(3), 50.0), (vm(3), vm(4), 50.0)]);
        let before = world.cost();
        let plan = Decider::new(&topo)
            .plan_group(&mut world, U, &GroupOptions::default(), 0.0)
            .expect("a plan into r2");
        assert!(plan.worth_it(), "{plan:?}");
        let mut evicted: Vec<VmId> = plan
            .moves
            .iter()
            .filter(|m| m.evicted)
            .map(|m| m.vm)
            .collect();
        evicted.sort();
        assert_eq!(evicted, vec![vm(0), vm(1)], "{plan:?}");
        // b1 has no room for u until a cold VM has left for a1.
        assert!(plan.moves[0].evicted, "{plan:?}");
        world.carry_out(&plan);
        assert!((before - world.cost() - plan.benefit).abs() < 1e-9);
        assert_eq!(world.cost(), 0.0);
    }

    #[test]
    fn pinned_and_refused_vms_stay_out_of_a_group() {
        let topo = two_racks(4);
        let mut world = stuck(&topo);
        world.pinned.push(V);
        let plan = Decider::new(&topo).plan_group(&mut world, U, &GroupOptions::default(), 0.0);
        // u alone loses its rack-mate: nothing worth doing, v never named.
        assert!(plan.as_ref().is_none_or(|p| !p.worth_it()), "{plan:?}");
        assert!(plan.is_none_or(|p| p.moves.iter().all(|m| m.vm != V)));

        let mut world = stuck(&topo);
        world.pinned.push(U);
        assert_eq!(
            Decider::new(&topo).plan_group(&mut world, U, &GroupOptions::default(), 0.0),
            None
        );

        // The rules refuse v in both hosts of r2: v is left where it runs.
        let mut world = stuck(&topo);
        world.refused = vec![(V, world.host("b1")), (V, world.host("b2"))];
        let plan = Decider::new(&topo).plan_group(&mut world, U, &GroupOptions::default(), 0.0);
        assert!(plan.is_none_or(|p| p.moves.iter().all(|m| m.vm != V)));
    }

    #[test]
    fn nobody_is_asked_when_the_group_cannot_beat_the_floor() {
        let topo = two_racks(4);
        // v on the other host of u's rack: forming the group would ask that host.
        let world_of = |topo| {
            let mut w = stuck(topo);
            let a2 = w.host("a2");
            w.at.insert(V, a2);
            w
        };
        let mut world = world_of(&topo);
        let plan = Decider::new(&topo)
            .plan_group(&mut world, U, &GroupOptions::default(), 0.0)
            .unwrap();
        assert!(plan.worth_it(), "{plan:?}");
        assert!(world.asked.contains(&world.host("a2")));
        let floor = plan.benefit + 1_000.0;
        let mut world = world_of(&topo);
        assert_eq!(
            Decider::new(&topo).plan_group(&mut world, U, &GroupOptions::default(), floor),
            None
        );
        // Only u's own host (what the holder knows) was read: no message would have been sent.
        let a1 = world.host("a1");
        assert!(world.asked.iter().all(|&h| h == a1), "{:?}", world.asked);
    }
}
