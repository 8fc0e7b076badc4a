//! The S-CORE cost model: Eq. 3.1 (overall communication cost of an allocation) and Eq. 3.2
//! (benefit of moving one VM), as pure functions.
//!
//! Traffic is given as rates λ(u, v) in bytes/s between two VMs, both directions summed, so
//! λ(u, v) = λ(v, u). Nothing here does I/O, reads a clock or knows where rates come from: the
//! daemon, the simulator and the tests all call these same functions.

use crate::topology::{HostId, SwitchId, Topology};
use scored_proto::{Level, VmId};

/// Where VMs run: the allocation A of the thesis, σ_A(u).
pub trait Placement {
    fn host_of(&self, vm: VmId) -> Option<HostId>;
}

impl Placement for std::collections::HashMap<VmId, HostId> {
    fn host_of(&self, vm: VmId) -> Option<HostId> {
        self.get(&vm).copied()
    }
}

impl<F: Fn(VmId) -> Option<HostId>> Placement for F {
    fn host_of(&self, vm: VmId) -> Option<HostId> {
        self(vm)
    }
}

/// One partner of a VM as the decision sees it: where it runs and the rate between them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PartnerTraffic {
    pub host: HostId,
    /// λ(u, v), bytes/s, both directions.
    pub rate: f64,
}

/// Eq. 3.1: `C_A = Σ_u Σ_{v ∈ V_u} λ(u,v) · Σ_{i=1..ℓ_A(u,v)} c_i`.
///
/// `pairs` lists each communicating pair once, as (u, v, λ(u, v)); since the sum of Eq. 3.1 runs
/// over every VM and each of its partners, each pair is counted twice. Pairs with a VM whose host
/// is unknown (traffic leaving the data centre) and self-pairs contribute nothing.
pub fn total_cost<P: Placement>(
    topo: &Topology,
    pairs: impl IntoIterator<Item = (VmId, VmId, f64)>,
    placement: &P,
) -> f64 {
    let mut sum = 0.0;
    for (u, v, rate) in pairs {
        if u == v {
            continue;
        }
        if let (Some(a), Some(b)) = (placement.host_of(u), placement.host_of(v)) {
            sum += rate * topo.path_cost(a, b);
        }
    }
    2.0 * sum
}

/// Eq. 3.1 broken down by level: `out[ℓ]` is the part of the total carried at level ℓ.
pub fn total_cost_by_level<P: Placement>(
    topo: &Topology,
    pairs: impl IntoIterator<Item = (VmId, VmId, f64)>,
    placement: &P,
) -> Vec<f64> {
    let mut out = vec![0.0; topo.levels() as usize + 1];
    for (u, v, rate) in pairs {
        if u == v {
            continue;
        }
        if let (Some(a), Some(b)) = (placement.host_of(u), placement.host_of(v)) {
            let l = topo.level(a, b);
            out[l as usize] += 2.0 * rate * topo.weights().path_cost(l);
        }
    }
    out
}

/// Eq. 3.2's `c_m` for a VM whose current cost (its share of Eq. 3.1) is `vm_cost`: the constant,
/// or `fraction` of that cost when larger (`[decision] migration_cost`, `migration_cost_fraction`).
pub fn migration_cost(constant: f64, fraction: f64, vm_cost: f64) -> f64 {
    constant.max(fraction * vm_cost.max(0.0))
}

/// A VM's own share of the cost if it runs on `at`: `Σ_{z ∈ V_u} λ(z,u) · Σ_{i ≤ ℓ(at, σ(z))} c_i`.
pub fn vm_cost(topo: &Topology, at: HostId, partners: &[PartnerTraffic]) -> f64 {
    cost_at(topo, at, partners.iter().map(|p| (p.host, p.rate)))
}

/// [`vm_cost`] for partners given as (host, rate), e.g. [`Link`]s.
pub fn cost_at(
    topo: &Topology,
    at: HostId,
    partners: impl IntoIterator<Item = (HostId, f64)>,
) -> f64 {
    partners
        .into_iter()
        .map(|(host, rate)| rate * topo.path_cost(at, host))
        .sum()
}

/// The left side of Eq. 3.2: the drop in the overall cost C_A if u moves from `from` to `to`,
///
/// `2 · Σ_{z ∈ V_u} λ(z,u) · (Σ_{i ≤ ℓ_A(z,u)} c_i − Σ_{i ≤ ℓ_{A:u→x̂}(z,u)} c_i)`.
///
/// Positive means the move saves cost. S-CORE migrates only when this exceeds `c_m`.
pub fn benefit(topo: &Topology, from: HostId, to: HostId, partners: &[PartnerTraffic]) -> f64 {
    if from == to {
        return 0.0;
    }
    2.0 * partners
        .iter()
        .map(|p| p.rate * (topo.path_cost(from, p.host) - topo.path_cost(to, p.host)))
        .sum::<f64>()
}

/// One partner of a VM when several VMs may move together: which VM it is, where it runs, the
/// rate between them. A group decision needs the partner's identity to see which partners move
/// too.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    pub vm: VmId,
    pub host: HostId,
    /// λ(u, v), bytes/s, both directions.
    pub rate: f64,
}

/// One VM's part in a set of moves: from where to where, and its partners (as they run before
/// any of the moves).
#[derive(Clone, Copy, Debug)]
pub struct SetMove<'a> {
    pub vm: VmId,
    pub from: HostId,
    pub to: HostId,
    pub partners: &'a [Link],
}

/// Eq. 3.2 for a set of moves carried out together: the exact drop in C_A. A pair with one VM
/// moving counts twice (as in Eq. 3.1 and [`benefit`]); a pair with both VMs moving is seen from
/// each side once, at both VMs' new hosts, so two VMs that move together do not count the link
/// between them as gained or lost. With one move this is [`benefit`]. `moves` names each VM once.
pub fn set_benefit(topo: &Topology, moves: &[SetMove<'_>]) -> f64 {
    let moved_to = |vm: VmId| moves.iter().find(|m| m.vm == vm).map(|m| m.to);
    let mut sum = 0.0;
    for m in moves {
        for p in m.partners {
            if p.vm == m.vm {
                continue;
            }
            let before = topo.path_cost(m.from, p.host);
            sum += match moved_to(p.vm) {
                Some(to) => p.rate * (before - topo.path_cost(m.to, to)),
                None => 2.0 * p.rate * (before - topo.path_cost(m.to, p.host)),
            };
        }
    }
    sum
}

/// A VM's partners' rates summed per host and per switch subtree, so that its own cost on any host
/// (and so Eq. 3.2 towards many destinations) is O(depth · log k) instead of O(k).
///
/// For a destination y with path s_1 … s_d (top to rack), let A_c be the rate of partners whose
/// path shares at least c switches with y's (A_0 = all, A_c = the subtree of s_c). Partners sharing
/// exactly c < d switches meet y at level d − c + 1; those in y's rack but not on y at level 1:
/// `cost(y) = Σ_{c<d} (A_c − A_{c+1})·P(d − c + 1) + (A_d − on_y)·P(1)`, P the path costs. Equal to
/// [`vm_cost`] up to rounding (a property test checks it).
#[derive(Clone, Debug, Default)]
pub struct PartnerRates {
    hosts: Vec<(HostId, f64)>,
    switches: Vec<(SwitchId, f64)>,
    total: f64,
}

impl PartnerRates {
    /// Indexes `partners`, reusing this value's memory.
    pub fn build(&mut self, topo: &Topology, partners: &[PartnerTraffic]) {
        self.hosts.clear();
        self.switches.clear();
        self.total = 0.0;
        for p in partners {
            self.total += p.rate;
            self.hosts.push((p.host, p.rate));
            for &s in &topo.host(p.host).path {
                self.switches.push((s, p.rate));
            }
        }
        merge(&mut self.hosts);
        merge(&mut self.switches);
    }

    fn rate<K: Ord + Copy>(list: &[(K, f64)], key: K) -> f64 {
        list.binary_search_by_key(&key, |e| e.0)
            .map_or(0.0, |i| list[i].1)
    }

    /// `vm_cost(topo, at, partners)` for the indexed partners.
    pub fn vm_cost(&self, topo: &Topology, at: HostId) -> f64 {
        let path = &topo.host(at).path;
        let d = path.len();
        let w = topo.weights();
        let mut cost = 0.0;
        let mut shared = self.total;
        for (c, &s) in path.iter().enumerate() {
            let deeper = Self::rate(&self.switches, s);
            cost += (shared - deeper) * w.path_cost((d - c + 1) as Level);
            shared = deeper;
        }
        cost + (shared - Self::rate(&self.hosts, at)) * w.path_cost(1)
    }

    /// Eq. 3.2's benefit of moving from `from` to `to`, from the index.
    pub fn benefit(&self, topo: &Topology, from: HostId, to: HostId) -> f64 {
        if from == to {
            return 0.0;
        }
        2.0 * (self.vm_cost(topo, from) - self.vm_cost(topo, to))
    }
}

/// Sorts by key and sums the rates of equal keys.
fn merge<K: Ord + Copy>(list: &mut Vec<(K, f64)>) {
    list.sort_unstable_by_key(|e| e.0);
    list.dedup_by(|later, first| {
        if later.0 == first.0 {
            first.1 += later.1;
            true
        } else {
            false
        }
    });
}

/// A migration's own cost in Eq. 3.1's units: S-CORE's constant `c_m` made per move. The
/// bytes a migration sends cross the same links as traffic between its source and destination,
/// so they cost `bytes · Σ_{i ≤ ℓ} c_i` as a flow would; Eq. 3.2's benefit is a rate (bytes/s ×
/// link weight), so that one-off cost is spread over `horizon_s`, the time the new placement is
/// expected to hold; `disruption` is the operator's charge for the move itself (the guest's
/// stop, the risk), in cost units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoveCharge {
    /// Bytes the migration is predicted to send (`crate::forecast`).
    pub bytes: f64,
    /// Seconds over which the migration's traffic is set against the rate it saves.
    pub horizon_s: f64,
    /// Added to every move, cost units.
    pub disruption: f64,
}

impl MoveCharge {
    /// `c_m` of moving from `from` to `to`.
    pub fn cost(&self, topo: &Topology, from: HostId, to: HostId) -> f64 {
        self.bytes.max(0.0) * topo.path_cost(from, to) / self.horizon_s.max(1.0)
            + self.disruption.max(0.0)
    }
}

/// `c_m` of one move from `from` to `to`: the constant `c_m` (already raised to its share of the
/// VM's cost, [`migration_cost`]), or the move's own charge when that is larger.
pub fn move_cost(
    topo: &Topology,
    constant: f64,
    per_move: Option<&MoveCharge>,
    from: HostId,
    to: HostId,
) -> f64 {
    match per_move {
        None => constant,
        Some(m) => constant.max(m.cost(topo, from, to)),
    }
}

/// Eq. 3.2 itself: move when the benefit exceeds the migration cost `c_m`.
pub fn should_migrate(benefit: f64, migration_cost: f64) -> bool {
    benefit > migration_cost
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::path::Path;

    fn testbed() -> Topology {
        Topology::parse(
            Path::new("topology/testbed.toml"),
            include_str!("../topology/testbed.toml"),
        )
        .unwrap()
    }

    fn fat_tree() -> Topology {
        Topology::parse(
            Path::new("topology/fat-tree-k4.toml"),
            include_str!("../topology/fat-tree-k4.toml"),
        )
        .unwrap()
    }

    /// The hand-computed example on the thesis testbed (topology/testbed.toml):
    /// hv1, hv2 share rack tor1; hv3 is in tor2 under the same aggregation switch agg1;
    /// hv4 is in tor3 under agg2. Weights e^0, e^1, e^3.
    ///
    /// VMs: a on hv1, b on hv4, c on hv3. λ(a,b) = 100 B/s, λ(a,c) = 10 B/s, λ(b,c) = 1 B/s.
    ///   path costs: level 1 = 1, level 2 = 1 + e = 3.718281828, level 3 = 1 + e + e^3 = 23.803818751
    ///   C_A = 2·(100·23.803818751 + 10·3.718281828 + 1·23.803818751)
    ///       = 2·(2380.3818751 + 37.18281828 + 23.803818751) = 4882.7370244
    ///   Moving a to hv4 (next to b): a–b becomes level 0, a–c becomes level 3:
    ///   benefit = 2·(100·(23.803818751 − 0) + 10·(3.718281828 − 23.803818751))
    ///           = 2·(2380.3818751 − 200.85536923) = 4359.0530118
    #[test]
    fn hand_example_on_thesis_testbed() {
        let t = testbed();
        let h = |n: &str| t.host_by_name(n).unwrap().id;
        let (a, b, c) = (VmId(1), VmId(2), VmId(3));
        let mut place: HashMap<VmId, HostId> = HashMap::new();
        place.insert(a, h("hv1"));
        place.insert(b, h("hv4"));
        place.insert(c, h("hv3"));
        let pairs = [(a, b, 100.0), (a, c, 10.0), (b, c, 1.0)];
        let c_a = total_cost(&t, pairs, &place);
        assert!((c_a - 4882.7370244).abs() < 1e-6, "{c_a}");

        let partners = [
            PartnerTraffic {
                host: h("hv4"),
                rate: 100.0,
            },
            PartnerTraffic {
                host: h("hv3"),
                rate: 10.0,
            },
        ];
        let gain = benefit(&t, h("hv1"), h("hv4"), &partners);
        assert!((gain - 4359.0530118).abs() < 1e-6, "{gain}");
        assert!(should_migrate(gain, 0.0));
        assert!(!should_migrate(gain, 5000.0));

        place.insert(a, h("hv4"));
        let after = total_cost(&t, pairs, &place);
        assert!((c_a - after - gain).abs() < 1e-6);

        let by_level = total_cost_by_level(&t, pairs, &place);
        assert!((by_level.iter().sum::<f64>() - after).abs() < 1e-6);
        assert_eq!(by_level[0], 0.0);
    }

    /// (host of each VM, random (a, b, λ) pairs, the VM that moves, its target host).
    type Scenario = (Vec<u32>, Vec<(usize, usize, f64)>, usize, u32);

    fn arb_scenario() -> impl Strategy<Value = Scenario> {
        // 2..12 VMs placed on the 16 fat-tree hosts; random pairs; the VM to move and its target.
        (2usize..12).prop_flat_map(|n| {
            (
                prop::collection::vec(0u32..16, n),
                prop::collection::vec((0..n, 0..n, 0.0f64..1e6), 0..30),
                0..n,
                0u32..16,
            )
        })
    }

    /// VM i (id 100 + i) on host `hosts[i]`; the drawn pairs merged per unordered pair (λ is per
    /// pair), by index and by id.
    #[allow(clippy::type_complexity)]
    fn small_world(
        hosts: &[u32],
        raw_pairs: Vec<(usize, usize, f64)>,
    ) -> (
        HashMap<VmId, HostId>,
        HashMap<(usize, usize), f64>,
        Vec<(VmId, VmId, f64)>,
    ) {
        let vm = |i: usize| VmId(i as u32 + 100);
        let place = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (vm(i), HostId(*h)))
            .collect();
        let mut lam: HashMap<(usize, usize), f64> = HashMap::new();
        for (a, b, r) in raw_pairs {
            if a != b {
                *lam.entry((a.min(b), a.max(b))).or_default() += r;
            }
        }
        let pairs = lam.iter().map(|(&(a, b), &r)| (vm(a), vm(b), r)).collect();
        (place, lam, pairs)
    }

    proptest! {
        #[test]
        fn level_is_symmetric_zero_on_same_host_and_cost_monotone(x in 0u32..16, y in 0u32..16, z in 0u32..16) {
            let t = fat_tree();
            let (x, y, z) = (HostId(x), HostId(y), HostId(z));
            prop_assert_eq!(t.level(x, y), t.level(y, x));
            prop_assert_eq!(t.level(x, x), 0);
            prop_assert_eq!(t.path_cost(x, x), 0.0);
            prop_assert!((x == y) == (t.level(x, y) == 0));
            // Ultrametric: the tree's levels obey ℓ(x,z) ≤ max(ℓ(x,y), ℓ(y,z)).
            prop_assert!(t.level(x, z) <= t.level(x, y).max(t.level(y, z)));
            // Cost is monotone in level.
            if t.level(x, y) < t.level(x, z) {
                prop_assert!(t.path_cost(x, y) < t.path_cost(x, z));
            }
        }

        #[test]
        fn partner_rates_agree_with_vm_cost(
            partners in prop::collection::vec((0u32..16, 0.0f64..1e6), 0..40),
            at in 0u32..16,
            to in 0u32..16,
        ) {
            let t = fat_tree();
            let ps: Vec<PartnerTraffic> = partners
                .iter()
                .map(|&(h, rate)| PartnerTraffic { host: HostId(h), rate })
                .collect();
            let mut idx = PartnerRates::default();
            idx.build(&t, &ps);
            let direct = vm_cost(&t, HostId(at), &ps);
            let fast = idx.vm_cost(&t, HostId(at));
            let scale = ps.iter().map(|p| p.rate).sum::<f64>().max(1.0) * t.weights().path_cost(3);
            prop_assert!((direct - fast).abs() <= 1e-12 * scale, "{} vs {}", direct, fast);
            let b = benefit(&t, HostId(at), HostId(to), &ps);
            prop_assert!((b - idx.benefit(&t, HostId(at), HostId(to))).abs() <= 1e-12 * scale);
        }

        #[test]
        fn benefit_equals_drop_in_total_cost((hosts, raw_pairs, mover, target) in arb_scenario()) {
            let t = fat_tree();
            let vm = |i: usize| VmId(i as u32 + 100);
            let (mut place, lam, pairs) = small_world(&hosts, raw_pairs);
            let partners: Vec<PartnerTraffic> = lam
                .iter()
                .filter_map(|(&(a, b), &r)| {
                    let other = if a == mover { b } else if b == mover { a } else { return None };
                    Some(PartnerTraffic { host: place[&vm(other)], rate: r })
                })
                .collect();
            let from = place[&vm(mover)];
            let to = HostId(target);
            let before = total_cost(&t, pairs.iter().copied(), &place);
            let gain = benefit(&t, from, to, &partners);
            place.insert(vm(mover), to);
            let after = total_cost(&t, pairs.iter().copied(), &place);
            let scale = before.abs().max(1.0);
            prop_assert!(((before - after) - gain).abs() <= 1e-9 * scale,
                "before {} after {} gain {}", before, after, gain);
            prop_assert!(before >= 0.0 && after >= 0.0);
            // The VM's own cost difference is half the benefit.
            let own = vm_cost(&t, from, &partners) - vm_cost(&t, to, &partners);
            prop_assert!((2.0 * own - gain).abs() <= 1e-9 * scale);
        }

        #[test]
        fn set_benefit_equals_drop_in_total_cost(
            (hosts, raw_pairs, _, _) in arb_scenario(),
            targets in prop::collection::vec((0usize..12, 0u32..16), 0..6),
        ) {
            let t = fat_tree();
            let vm = |i: usize| VmId(i as u32 + 100);
            let (mut place, lam, pairs) = small_world(&hosts, raw_pairs);
            // Each VM named once, the last target wins.
            let mut to: HashMap<usize, HostId> = HashMap::new();
            for (i, h) in targets {
                if i < hosts.len() {
                    to.insert(i, HostId(h));
                }
            }
            let links: HashMap<usize, Vec<Link>> = to
                .keys()
                .map(|&i| {
                    let ps = lam
                        .iter()
                        .filter_map(|(&(a, b), &r)| {
                            let other = if a == i { b } else if b == i { a } else { return None };
                            Some(Link { vm: vm(other), host: place[&vm(other)], rate: r })
                        })
                        .collect();
                    (i, ps)
                })
                .collect();
            let moves: Vec<SetMove<'_>> = to
                .iter()
                .map(|(&i, &h)| SetMove { vm: vm(i), from: place[&vm(i)], to: h, partners: &links[&i] })
                .collect();
            let before = total_cost(&t, pairs.iter().copied(), &place);
            let gain = set_benefit(&t, &moves);
            for m in &moves {
                place.insert(m.vm, m.to);
            }
            let after = total_cost(&t, pairs.iter().copied(), &place);
            let scale = before.abs().max(1.0);
            prop_assert!(((before - after) - gain).abs() <= 1e-9 * scale,
                "before {} after {} gain {}", before, after, gain);
            if let [one] = moves.as_slice() {
                let single: Vec<PartnerTraffic> =
                    one.partners.iter().map(|l| PartnerTraffic { host: l.host, rate: l.rate }).collect();
                prop_assert!((benefit(&t, one.from, one.to, &single) - gain).abs() <= 1e-9 * scale);
            }
        }
    }
}
