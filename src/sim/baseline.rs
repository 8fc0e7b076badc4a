//! The centralised baseline S-CORE is held against: a controller that knows every VM's traffic and
//! location and every host's room, and improves the allocation by local search with moves and
//! swaps until a sweep gains less than 0.1%.
//!
//! Two plans each round:
//! - incremental: the previous round's plan (round 0: the initial allocation), improved;
//! - re-placement: the best of the incremental plan, the previous re-placement plan improved, and
//!   a fresh allocation built from the traffic alone, bottom-up like the coarsening phase of
//!   multilevel graph partitioning (VMs joined into host-sized groups along the heaviest traffic
//!   first, those into rack-sized groups, and so on up the tree, then packed onto the tree by
//!   capacity, so any tree will do: unequal hosts, racks and fan-outs), improved.
//!
//! Improving is by local search: every VM, most expensive first, takes the best move to
//! a partner's host or a host with room in a partner's rack, or the best swap with a VM on a full
//! partner host (which S-CORE's single moves cannot do), sweeping until a sweep gains < 0.1%.
//! The re-placement plan is then polished with the group moves the token policies may use
//! (`decide::group`, the same planner, free of migration cost here): a sweep of group plans, most
//! expensive VM first, then local search again, until a sweep gains < 0.1%. Without it, a token
//! policy with group moves could end below the plan that is meant to bound it (irregular tree,
//! seed 3: 99.3% against 98.7%).
//!
//! Why this one: the thesis's genetic algorithm took 12 hours; this reaches a far lower cost than
//! any token policy in seconds at 40,000 VMs, which is what a baseline must do to be a yardstick.
//! It is a plan, not a run: it migrates nothing, ignores how many VMs it would move, and respects
//! capacity throughout. It respects the scenario's placement groups too: every move and swap of
//! a member is judged by `crate::rules` as a decision is, and a traffic-built allocation that
//! breaks a group (it joins the heaviest pairs first, replicas included) is not used. Windows and
//! budgets do not apply to a plan. Pure: no I/O, no clock, no randomness.

use super::Scenario;
use super::traffic::Rates;
use crate::cost::{self, Link, PartnerTraffic};
use crate::decide::Decider;
use crate::decide::group::{GroupOptions, GroupView};
use crate::hypervisor::Capacity;
use crate::rules::RuleCheck;
use crate::topology::HostId;
use scored_proto::VmId;

/// The baseline's plans for each round of traffic.
#[derive(Clone, Debug)]
pub struct Baseline {
    /// Eq. 3.1 of the re-placement plan under each round's traffic: the best of the incremental
    /// plan, the previous re-placement plan re-optimised, and a fresh traffic-built allocation.
    pub costs: Vec<f64>,
    /// The re-placement plan after the last round.
    pub placement: Vec<HostId>,
    /// VMs whose host in the final re-placement plan differs from their initial one.
    pub vms_moved: u64,
    /// The incremental plan: local search from the current allocation only, each round
    /// continuing from the previous round's plan (what a central controller that improves the
    /// running allocation step by step would reach).
    pub incremental_costs: Vec<f64>,
    pub incremental_placement: Vec<HostId>,
    pub incremental_vms_moved: u64,
    /// Moves, swaps and sweeps applied over all searches.
    pub work: Work,
    /// Rounds whose re-placement plan came from the traffic-built allocation.
    pub constructive: u32,
    /// Rounds whose traffic-built allocation broke a placement rule and was left out.
    pub constructive_refused: u32,
}

/// What the local searches did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    pub moves: u64,
    pub swaps: u64,
    pub sweeps: u32,
    /// Group plans applied while polishing the re-placement plan, and the VMs they moved.
    pub group_plans: u64,
    pub group_moves: u64,
}

/// Stop when a sweep gains less than this share of the cost.
const MIN_SWEEP_GAIN: f64 = 1e-3;
const MAX_SWEEPS: u32 = 50;
/// Share of the cost below which the remaining VMs of a sweep are not examined.
const NEGLIGIBLE: f64 = 1e-4;
/// Rounds of group plans and local search when polishing the re-placement plan.
const MAX_POLISH: u32 = 10;

/// Plans each round's traffic in turn (a controller re-planning as traffic changes).
pub fn run(sc: &Scenario) -> Baseline {
    let mut work = Work::default();
    let mut incremental = LocalSearch::new(sc, sc.initial.clone());
    let mut incremental_costs = Vec::new();
    let mut best: Option<LocalSearch<'_>> = None;
    let mut costs = Vec::new();
    let mut constructive_rounds = 0;
    let mut constructive_refused = 0;
    for r in 0..sc.rounds() {
        let rates = &sc.rates[r];
        incremental.optimise(rates, &mut work);
        let inc_cost = sc.cost(r, &incremental.loc);
        incremental_costs.push(inc_cost);
        let mut pick = (
            inc_cost,
            LocalSearch::new(sc, incremental.loc.clone()),
            false,
        );
        if let Some(mut previous) = best.take() {
            previous.optimise(rates, &mut work);
            let c = sc.cost(r, &previous.loc);
            if c < pick.0 {
                pick = (c, previous, false);
            }
        }
        if let Some(fresh) = constructive(sc, rates) {
            let mut f = LocalSearch::new(sc, fresh);
            f.optimise(rates, &mut work);
            let c = sc.cost(r, &f.loc);
            if sc.rule_violations(&f.loc) > 0 {
                constructive_refused += 1;
            } else if c < pick.0 {
                pick = (c, f, true);
            }
        }
        let (_, mut plan, fresh) = pick;
        plan.polish(r, &mut work);
        costs.push(sc.cost(r, &plan.loc));
        constructive_rounds += fresh as u32;
        best = Some(plan);
    }
    let moved = |loc: &[HostId]| loc.iter().zip(&sc.initial).filter(|(a, b)| a != b).count() as u64;
    let placement = best.map_or_else(|| sc.initial.clone(), |b| b.loc);
    Baseline {
        costs,
        vms_moved: moved(&placement),
        placement,
        incremental_costs,
        incremental_vms_moved: moved(&incremental.loc),
        incremental_placement: incremental.loc,
        work,
        constructive: constructive_rounds,
        constructive_refused,
    }
}

enum Step {
    Move(HostId),
    Swap(u32),
}

struct LocalSearch<'s> {
    sc: &'s Scenario,
    decider: Decider<'s>,
    loc: Vec<HostId>,
    /// VMs on each host.
    members: Vec<Vec<u32>>,
    slots: Vec<u32>,
    partners: Vec<PartnerTraffic>,
    other: Vec<PartnerTraffic>,
    hosts: Vec<HostId>,
    racks: Vec<HostId>,
}

impl<'s> LocalSearch<'s> {
    fn new(sc: &'s Scenario, start: Vec<HostId>) -> Self {
        let topo = &sc.topology;
        let mut members = vec![Vec::new(); topo.hosts().len()];
        for (v, h) in start.iter().enumerate() {
            members[h.index()].push(v as u32);
        }
        LocalSearch {
            sc,
            decider: Decider::new(topo),
            loc: start,
            members,
            slots: sc.slots.clone(),
            partners: Vec::new(),
            other: Vec::new(),
            hosts: Vec::new(),
            racks: Vec::new(),
        }
    }

    fn fill(&self, rates: &Rates, v: usize, out: &mut Vec<PartnerTraffic>) {
        out.clear();
        out.extend(rates.of(v).iter().map(|&(j, rate)| PartnerTraffic {
            host: self.loc[j as usize],
            rate,
        }));
    }

    fn optimise(&mut self, rates: &Rates, stats: &mut Work) {
        let n = self.loc.len();
        let mut order: Vec<(f64, u32)> = Vec::with_capacity(n);
        let mut partners = std::mem::take(&mut self.partners);
        for _ in 0..MAX_SWEEPS {
            stats.sweeps += 1;
            let total = self.by_cost(rates, &mut partners, &mut order);
            let mut gained = 0.0;
            // VMs are visited by falling cost; once the rest together carry less than
            // NEGLIGIBLE of the total, no move among them can matter (a move gains at most twice
            // the VM's own cost).
            let mut rest = total;
            for &(c, u) in &order {
                if c <= 0.0 || rest < NEGLIGIBLE * total {
                    break;
                }
                rest -= c;
                self.fill(rates, u as usize, &mut partners);
                let (gain, step) = self.best_step(rates, u as usize, &partners);
                if gain > 1e-12 * total.max(1.0) {
                    match step {
                        Some(Step::Move(to)) => {
                            self.relocate(u, to);
                            stats.moves += 1;
                        }
                        Some(Step::Swap(w)) => {
                            let (x, y) = (self.loc[u as usize], self.loc[w as usize]);
                            self.relocate(u, y);
                            self.relocate(w, x);
                            stats.swaps += 1;
                        }
                        None => continue,
                    }
                    gained += gain;
                }
            }
            if gained < MIN_SWEEP_GAIN * total {
                break;
            }
        }
        self.partners = partners;
    }

    /// Every VM with its own cost, most expensive first, in `order`; returns their sum.
    fn by_cost(
        &self,
        rates: &Rates,
        partners: &mut Vec<PartnerTraffic>,
        order: &mut Vec<(f64, u32)>,
    ) -> f64 {
        let topo = &self.sc.topology;
        order.clear();
        for v in 0..self.loc.len() {
            self.fill(rates, v, partners);
            order.push((cost::vm_cost(topo, self.loc[v], partners), v as u32));
        }
        let total = order.iter().map(|o| o.0).sum();
        order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        total
    }

    /// Group plans (`decide::group`, as a token policy with group moves would make them, with no
    /// migration cost) for every VM, most expensive first, each applied when it lowers the cost,
    /// then local search again; until a round of both gains < `MIN_SWEEP_GAIN` of the cost.
    fn polish(&mut self, round: usize, stats: &mut Work) {
        let sc = self.sc;
        let rates = &sc.rates[round];
        let n = self.loc.len();
        let opt = GroupOptions::default();
        let mut partners = std::mem::take(&mut self.partners);
        let mut order: Vec<(f64, u32)> = Vec::with_capacity(n);
        for _ in 0..MAX_POLISH {
            let total = self.by_cost(rates, &mut partners, &mut order);
            let mut gained = 0.0;
            for &(c, u) in &order {
                if c <= 0.0 {
                    break;
                }
                let mut view = PlanView {
                    sc: self.sc,
                    rates,
                    loc: &self.loc,
                    members: &self.members,
                    slots: &self.slots,
                };
                let Some(plan) =
                    self.decider
                        .plan_group(&mut view, self.sc.ids[u as usize], &opt, 0.0)
                else {
                    continue;
                };
                if plan.benefit <= 1e-12 * total.max(1.0) {
                    continue;
                }
                let base = self.sc.ids[0].0;
                for m in &plan.moves {
                    self.relocate(m.vm.0 - base, m.to);
                }
                stats.group_plans += 1;
                stats.group_moves += plan.moves.len() as u64;
                gained += plan.benefit;
            }
            let before = sc.cost(round, &self.loc);
            self.partners = std::mem::take(&mut partners);
            self.optimise(rates, stats);
            partners = std::mem::take(&mut self.partners);
            gained += before - sc.cost(round, &self.loc);
            if gained < MIN_SWEEP_GAIN * total {
                break;
            }
        }
        self.partners = partners;
    }

    /// The rules for VM `v` where everything runs now, except `apart` (the partner of a swap,
    /// whose relation to `v` a swap leaves as it was); `None` when no group names `v`.
    fn check(&self, v: usize, apart: Option<usize>) -> Option<RuleCheck<'s>> {
        let sc = self.sc;
        let vm = sc.ids[v];
        if sc.rules.groups_of(vm).is_empty() {
            return None;
        }
        let base = sc.ids[0].0;
        let loc = &self.loc;
        Some(sc.rules.check_located(&sc.topology, vm, |m| {
            let i = (m.0 - base) as usize;
            (Some(i) != apart).then(|| loc[i])
        }))
    }

    fn relocate(&mut self, v: u32, to: HostId) {
        let from = self.loc[v as usize];
        let m = &mut self.members[from.index()];
        let pos = m
            .iter()
            .position(|&x| x == v)
            .expect("member lists match loc");
        m.swap_remove(pos);
        self.members[to.index()].push(v);
        self.loc[v as usize] = to;
    }

    /// The best move or swap for `u`, with the drop in Eq. 3.1 it brings.
    fn best_step(
        &mut self,
        rates: &Rates,
        u: usize,
        partners: &[PartnerTraffic],
    ) -> (f64, Option<Step>) {
        let topo = &self.sc.topology;
        let x = self.loc[u];
        self.hosts.clear();
        self.hosts
            .extend(partners.iter().map(|p| p.host).filter(|&h| h != x));
        self.hosts.sort_unstable();
        self.hosts.dedup();
        let mut best = (0.0, None);
        let mut other = std::mem::take(&mut self.other);
        let rules_u = self.check(u, None);
        let allowed = |c: &Option<RuleCheck<'_>>, from: HostId, to: HostId| {
            c.as_ref().is_none_or(|c| c.allows(from, to).is_ok())
        };
        for hi in 0..self.hosts.len() {
            let y = self.hosts[hi];
            let gain_u = cost::benefit(topo, x, y, partners);
            if (self.members[y.index()].len() as u32) < self.slots[y.index()] {
                if gain_u > best.0 && allowed(&rules_u, x, y) {
                    best = (gain_u, Some(Step::Move(y)));
                }
                continue;
            }
            // y is full: swap u with one of its VMs. Only worth a look when u gains by going
            // there (a swap where u loses is almost never a net gain).
            if gain_u <= best.0 {
                continue;
            }
            let pc = topo.path_cost(x, y);
            for wi in 0..self.members[y.index()].len() {
                let w = self.members[y.index()][wi] as usize;
                self.fill(rates, w, &mut other);
                let gain_w = cost::benefit(topo, y, x, &other);
                let lam = rates
                    .of(u)
                    .iter()
                    .find(|&&(j, _)| j as usize == w)
                    .map_or(0.0, |&(_, r)| r);
                // Both one-sided benefits count the u–w pair as if the other stayed put; after a
                // swap their level is unchanged.
                let gain = gain_u + gain_w - 4.0 * lam * pc;
                if gain > best.0
                    && allowed(&self.check(u, Some(w)), x, y)
                    && allowed(&self.check(w, Some(u)), y, x)
                {
                    best = (gain, Some(Step::Swap(w as u32)));
                }
            }
        }
        // A host with room in each partner's rack (hosts of one rack without u's partners are
        // interchangeable for u, so the first with room stands for all).
        self.racks.clear();
        for hi in 0..self.hosts.len() {
            let y = self.hosts[hi];
            let rack = self.decider.rack_of(y);
            if self.racks.contains(&rack[0]) {
                continue;
            }
            self.racks.push(rack[0]);
            // (A rule may refuse some of them: the first with room the rules allow.)
            if let Some(&z) = rack.iter().find(|&&z| {
                z != x
                    && (self.members[z.index()].len() as u32) < self.slots[z.index()]
                    && self.hosts.binary_search(&z).is_err()
                    && allowed(&rules_u, x, z)
            }) {
                let g = cost::benefit(topo, x, z, partners);
                if g > best.0 {
                    best = (g, Some(Step::Move(z)));
                }
            }
        }
        self.other = other;
        best
    }
}

/// A plan's allocation as the group planner sees it: everything known, every VM free to move
/// (a plan has no windows, budgets or cooldowns), the placement rules checked, no migration cost.
struct PlanView<'a> {
    sc: &'a Scenario,
    rates: &'a Rates,
    loc: &'a [HostId],
    members: &'a [Vec<u32>],
    slots: &'a [u32],
}

impl PlanView<'_> {
    fn index(&self, vm: VmId) -> Option<usize> {
        let i = vm.0.checked_sub(self.sc.ids[0].0)? as usize;
        (i < self.loc.len()).then_some(i)
    }
}

impl GroupView for PlanView<'_> {
    fn host_of(&self, vm: VmId) -> Option<HostId> {
        self.index(vm).map(|i| self.loc[i])
    }

    fn partners(&mut self, vm: VmId, out: &mut Vec<Link>) {
        let Some(i) = self.index(vm) else { return };
        out.extend(self.rates.of(i).iter().map(|&(j, rate)| Link {
            vm: self.sc.ids[j as usize],
            host: self.loc[j as usize],
            rate,
        }));
    }

    fn residents(&mut self, host: HostId, out: &mut Vec<VmId>) {
        out.extend(
            self.members[host.index()]
                .iter()
                .map(|&i| self.sc.ids[i as usize]),
        );
    }

    fn capacity(&mut self, host: HostId) -> Option<Capacity> {
        // What `Room::of` turns back into the host's free slots (VM limit and memory after the
        // reserve both counted in `slots`).
        let h = self.sc.topology.host(host);
        let free = self.slots[host.index()].saturating_sub(self.members[host.index()].len() as u32);
        Some(Capacity {
            running_vms: h.max_vms.saturating_sub(free),
            incoming_migrations: 0,
            free_memory_mib: h.reserve_memory_mib + u64::from(free) * self.sc.vm_memory_mib,
            total_memory_mib: h.memory_mib,
            cpu_load: 0.0,
            cpus: 0,
        })
    }

    fn memory_mib(&self, _vm: VmId) -> u64 {
        self.sc.vm_memory_mib
    }

    fn movable(&mut self, vm: VmId) -> bool {
        self.index(vm).is_some()
    }

    fn admits(
        &mut self,
        vm: VmId,
        from: HostId,
        to: HostId,
        placed: &dyn Fn(VmId) -> Option<HostId>,
    ) -> bool {
        let sc = self.sc;
        if sc.rules.groups_of(vm).is_empty() {
            return true;
        }
        let check = sc
            .rules
            .check_located(&sc.topology, vm, |m| placed(m).or_else(|| self.host_of(m)));
        check.allows(from, to).is_ok()
    }

    fn migration_cost(&mut self, _: VmId, _: HostId, _: HostId, _: &[Link]) -> f64 {
        0.0
    }
}

/// The tree as tiers, bottom-up: tier 0 are the hosts, tier t > 0 the switches t levels above
/// them (tier 1 the racks), and a last tier with one root above the top switches.
/// `children[t][k]` lists, in order, the tier t−1 nodes under node k of tier t.
struct Tiers {
    children: Vec<Vec<Vec<u32>>>,
}

impl Tiers {
    fn new(sc: &Scenario) -> Tiers {
        let topo = &sc.topology;
        let d = topo.depth();
        let mut children: Vec<Vec<Vec<u32>>> = Vec::with_capacity(d + 2);
        // node of each host at each tier, as a local index.
        let mut below: Vec<u32> = (0..topo.hosts().len() as u32).collect();
        for t in 1..=d + 1 {
            let mut local: std::collections::HashMap<u32, u32> = Default::default();
            let mut kids: Vec<Vec<u32>> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut next_below = Vec::with_capacity(below.len());
            for (h, host) in topo.hosts().iter().enumerate() {
                // The switch t levels up; the implicit root above the top switches.
                let key = if t <= d { host.path[d - t].0 } else { u32::MAX };
                let n = kids.len() as u32;
                let k = *local.entry(key).or_insert(n);
                if k as usize == kids.len() {
                    kids.push(Vec::new());
                }
                if seen.insert((t, below[h])) {
                    kids[k as usize].push(below[h]);
                }
                next_below.push(k);
            }
            children.push(kids);
            below = next_below;
        }
        Tiers { children }
    }
}

/// Union-find with group sizes.
struct Groups {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl Groups {
    fn new(sizes: Vec<u32>) -> Self {
        Groups {
            parent: (0..sizes.len() as u32).collect(),
            size: sizes,
        }
    }

    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = p;
        }
        x
    }

    /// Joins the groups of `a` and `b` when together they stay within `cap`.
    fn join(&mut self, a: u32, b: u32, cap: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb && self.size[ra as usize] + self.size[rb as usize] <= cap {
            let (big, small) = if self.size[ra as usize] >= self.size[rb as usize] {
                (ra, rb)
            } else {
                (rb, ra)
            };
            self.parent[small as usize] = big;
            self.size[big as usize] += self.size[small as usize];
        }
    }
}

/// Groups `units` (of the given sizes) into bins of at most `cap`: heaviest traffic between
/// units first (greedy agglomeration, as in multilevel graph partitioning's coarsening), then the
/// groups packed first-fit decreasing. Returns the bins as lists of units.
fn agglomerate(sizes: Vec<u32>, edges: &[(u32, u32, f64)], cap: u32) -> Vec<Vec<u32>> {
    let n = sizes.len();
    let mut g = Groups::new(sizes.clone());
    for &(a, b, _) in edges {
        g.join(a, b, cap);
    }
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); n];
    for u in 0..n as u32 {
        let r = g.find(u);
        members[r as usize].push(u);
    }
    let mut groups: Vec<(u32, Vec<u32>)> = members
        .into_iter()
        .filter(|m| !m.is_empty())
        .map(|m| (m.iter().map(|&u| sizes[u as usize]).sum(), m))
        .collect();
    groups.sort_by(|a, b| b.0.cmp(&a.0).then(a.1[0].cmp(&b.1[0])));
    let mut bins: Vec<(u32, Vec<u32>)> = Vec::new();
    for (s, m) in groups {
        match bins.iter_mut().find(|b| b.0 + s <= cap) {
            Some(b) => {
                b.0 += s;
                b.1.extend(m);
            }
            None => bins.push((s, m)),
        }
    }
    bins.into_iter().map(|b| b.1).collect()
}

/// Edges between units (`unit_of` each VM), merged, heaviest first.
fn unit_edges(rates: &Rates, unit_of: &[u32]) -> Vec<(u32, u32, f64)> {
    let mut e: Vec<(u32, u32, f64)> = rates
        .pairs()
        .iter()
        .filter_map(|&(a, b, r)| {
            let (ua, ub) = (unit_of[a as usize], unit_of[b as usize]);
            (ua != ub).then(|| (ua.min(ub), ua.max(ub), r))
        })
        .collect();
    e.sort_unstable_by_key(|x| (x.0, x.1));
    e.dedup_by(|later, first| {
        if (later.0, later.1) == (first.0, first.1) {
            first.2 += later.2;
            true
        } else {
            false
        }
    });
    e.sort_by(|a, b| b.2.total_cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
    e
}

/// A tier's typical node, in VMs: the capacity the median slot sits in (half of the tier's slots
/// are in nodes at least this large). On a regular tree, every node's.
fn typical(caps: &[u64]) -> u32 {
    let mut sorted = caps.to_vec();
    sorted.sort_unstable();
    let total: u64 = sorted.iter().sum();
    let mut seen = 0;
    for &c in sorted.iter().rev() {
        seen += c;
        if 2 * seen >= total {
            return c.clamp(1, u32::MAX as u64) as u32;
        }
    }
    1
}

/// A fresh allocation built from the traffic alone, on any tree. Bottom-up, VMs are grouped by
/// heaviest traffic into groups the size of a typical host, those into groups the size of a
/// typical rack, and so on up the tree (sizes in VMs, so unequal hosts and fan-outs are
/// measured by what they hold). Top-down, each node's groups are then packed onto its children
/// by capacity, largest group first, each into the child with the least room that holds it
/// whole; a group no child holds is split into its own groups, down to single VMs, which always
/// fit since a node is given no more VMs than it holds. Children of one node are
/// interchangeable for the cost, so only capacity decides there. `None` when the VMs do not fit
/// the tree.
fn constructive(sc: &Scenario, rates: &Rates) -> Option<Vec<HostId>> {
    let tiers = Tiers::new(sc);
    let n = sc.vms();
    let top = tiers.children.len();
    // room[t][k]: VMs node k of tier t holds.
    let mut room: Vec<Vec<u64>> = vec![sc.slots.iter().map(|&s| s as u64).collect()];
    for t in 1..=top {
        let below = &room[t - 1];
        let here = tiers.children[t - 1]
            .iter()
            .map(|kids| kids.iter().map(|&c| below[c as usize]).sum())
            .collect();
        room.push(here);
    }
    if room[top].iter().sum::<u64>() < n as u64 {
        return None;
    }
    // Groups of level l + 1 are made for nodes of tier l; level 0 are the VMs themselves.
    // size[l][g]: VMs in group g of level l; parts[l][g]: its groups of level l − 1.
    let mut size: Vec<Vec<u32>> = vec![vec![1; n]];
    let mut parts: Vec<Vec<Vec<u32>>> = vec![Vec::new()];
    let mut unit_of: Vec<u32> = (0..n as u32).collect();
    for t in 0..top {
        let edges = unit_edges(rates, &unit_of);
        let groups = agglomerate(size[t].clone(), &edges, typical(&room[t]));
        let mut group_of = vec![0u32; size[t].len()];
        for (g, members) in groups.iter().enumerate() {
            for &u in members {
                group_of[u as usize] = g as u32;
            }
        }
        for u in unit_of.iter_mut() {
            *u = group_of[*u as usize];
        }
        let sizes = groups
            .iter()
            .map(|m| m.iter().map(|&u| size[t][u as usize]).sum())
            .collect();
        size.push(sizes);
        parts.push(groups);
    }
    // Lay the groups onto the tree: (tier, node, groups given to it as (level, group)).
    const NOWHERE: HostId = HostId(u32::MAX);
    let mut placement = vec![NOWHERE; n];
    let whole: Vec<(usize, u32)> = (0..size[top].len() as u32).map(|g| (top, g)).collect();
    let mut stack = vec![(top, 0usize, whole)];
    let by_size = |items: &mut Vec<(usize, u32)>| {
        items.sort_by(|a, b| {
            size[a.0][a.1 as usize]
                .cmp(&size[b.0][b.1 as usize])
                .then(b.cmp(a))
        })
    };
    while let Some((t, node, given)) = stack.pop() {
        // Open every group meant for this node itself into the groups meant for its children.
        let mut items = Vec::with_capacity(given.len());
        let mut open = given;
        while let Some((l, g)) = open.pop() {
            if l > t {
                open.extend(parts[l][g as usize].iter().map(|&p| (l - 1, p)));
            } else {
                items.push((l, g));
            }
        }
        if t == 0 {
            for (_, v) in items {
                placement[v as usize] = HostId(node as u32);
            }
            continue;
        }
        let kids = &tiers.children[t - 1][node];
        let mut left: Vec<u64> = kids.iter().map(|&c| room[t - 1][c as usize]).collect();
        let mut share: Vec<Vec<(usize, u32)>> = vec![Vec::new(); kids.len()];
        // Largest last, so popped first.
        by_size(&mut items);
        while let Some((l, g)) = items.pop() {
            let s = size[l][g as usize] as u64;
            let fit = (0..kids.len())
                .filter(|&i| left[i] >= s)
                .min_by_key(|&i| (left[i], i));
            match fit {
                Some(i) => {
                    left[i] -= s;
                    share[i].push((l, g));
                }
                None if l > 0 => {
                    let mut split: Vec<(usize, u32)> =
                        parts[l][g as usize].iter().map(|&p| (l - 1, p)).collect();
                    by_size(&mut split);
                    items.extend(split);
                }
                None => return None,
            }
        }
        for (i, s) in share.into_iter().enumerate() {
            stack.push((t - 1, kids[i] as usize, s));
        }
    }
    let mut count = vec![0u32; sc.slots.len()];
    for h in &placement {
        if *h == NOWHERE {
            return None;
        }
        count[h.index()] += 1;
    }
    count
        .iter()
        .zip(&sc.slots)
        .all(|(c, s)| c <= s)
        .then_some(placement)
}
