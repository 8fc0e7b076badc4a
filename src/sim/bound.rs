//! A lower bound on Eq. 3.1: no allocation that respects the hosts' capacity can cost less under
//! a round's traffic. The centralised plans are heuristics, a ceiling on the optimum; this is its
//! floor, so "how far from optimal" is bracketed. Pure: no I/O, no clock, no randomness.
//!
//! Eq. 3.1 splits by tier. A pair at level ℓ costs `2λ·(c_1 + … + c_ℓ)`, and it is at level ≥ i
//! exactly when its VMs sit in different nodes of tier i − 1 (tier 0 the hosts, tier 1 the racks,
//! …). So `C_A = Σ_i c_i · 2·cut_{i−1}`, where `cut_t` is the traffic between VMs in different
//! tier-t nodes. Each `cut_t` is bounded from below on its own, knowing only that no tier-t node
//! holds more than `K_t` VMs (the largest such node's slots). Take any rate θ and the pairs of
//! rate ≥ θ; they join the VMs into components. Inside a component of `s` VMs, at least as many
//! of those pairs are cut as each of:
//!
//! - by connection: the component spreads over at least ⌈s/K_t⌉ nodes, and joining them takes
//!   at least ⌈s/K_t⌉ − 1 of its pairs;
//! - by degree: a VM shares its node with at most `K_t − 1` others, so of its `k` pairs at least
//!   `k − (K_t − 1)` are cut; summed over the component's VMs this counts each cut pair from both
//!   ends, hence half (rounded up: pairs are whole).
//!
//! The cut traffic is the integral over θ of the number of cut pairs of rate ≥ θ, so it is at
//! least the integral of the sum over components of the larger floor. Going through the pairs
//! heaviest first, joining components as Kruskal's algorithm does, that integral is the sum of
//! each pair's rate times the change its arrival makes to the summed floors.
//!
//! Every allocation obeys both floors at every θ, so the bound holds for all of them; placement
//! rules only remove allocations, so it holds with them too. It ignores that the tiers nest and
//! that VMs sharing a node share it for all their pairs, so it is loose: never above the optimum,
//! possibly far below it.

use super::traffic::Rates;
use crate::topology::Topology;

/// Eq. 3.1's floor under `rates` on `topo` whose hosts hold `slots` VMs each.
pub fn lower_bound(topo: &Topology, slots: &[u32], rates: &Rates) -> f64 {
    lower_bound_by_level(topo, slots, rates).iter().sum()
}

/// The floor's terms: `out[i]` is `c_i · 2 · (floor on cut_{i−1})`, what any allocation pays at
/// least on the links of level i (`out[0]` = 0, as in `cost::total_cost_by_level`). Not the
/// floor of what the allocation's pairs *meeting* at level i pay, which also counts c_1 … c_{i−1}.
pub fn lower_bound_by_level(topo: &Topology, slots: &[u32], rates: &Rates) -> Vec<f64> {
    let n = rates.vms() as u64;
    let levels = topo.levels() as usize;
    let weights = topo.weights();
    let mut out = vec![0.0; levels + 1];
    for (i, term) in out.iter_mut().enumerate().skip(1) {
        let room = largest_node(topo, slots, i - 1).min(n).max(1);
        let c_i = weights.path_cost(i as _) - weights.path_cost((i - 1) as _);
        *term = c_i * 2.0 * cut_floor(rates, room);
    }
    out
}

/// The most VMs one node of `tier` holds (tier 0: a host; tier t: the switch t levels above the
/// hosts; above the top switches, the whole data centre).
fn largest_node(topo: &Topology, slots: &[u32], tier: usize) -> u64 {
    let d = topo.depth();
    if tier == 0 {
        return slots.iter().copied().max().unwrap_or(0) as u64;
    }
    if tier > d {
        return slots.iter().map(|&s| s as u64).sum();
    }
    let mut per_switch = vec![0u64; topo.switches().len()];
    for (h, host) in topo.hosts().iter().enumerate() {
        per_switch[host.path[d - tier].0 as usize] += slots[h] as u64;
    }
    per_switch.into_iter().max().unwrap_or(0)
}

/// The least traffic cut between nodes of `room` VMs: Kruskal over the pairs, heaviest first,
/// keeping for each component of the pairs joined so far its VMs and its VMs' partners beyond
/// `room − 1`; the floor on the pairs cut inside a component is the larger of the two counts
/// (see the module's comment), and as the threshold falls past a pair's rate, the change of the
/// sum over components counts at that rate.
fn cut_floor(rates: &Rates, room: u64) -> f64 {
    let mut pairs: Vec<(u32, u32, f64)> = rates.pairs().to_vec();
    pairs.sort_unstable_by(|a, b| b.2.total_cmp(&a.2));
    let n = rates.vms();
    let mut parent: Vec<u32> = (0..n as u32).collect();
    // Per component root: VMs, and partners beyond `room − 1` summed over its VMs.
    let mut size = vec![1u64; n];
    let mut beyond = vec![0u64; n];
    let mut degree = vec![0u64; n];
    let find = |parent: &mut Vec<u32>, mut x: u32| {
        while parent[x as usize] != x {
            let p = parent[x as usize];
            parent[x as usize] = parent[p as usize];
            x = p;
        }
        x
    };
    // Pairs that must be cut inside a component of `s` VMs with `e` partners beyond room.
    let floor = |s: u64, e: u64| (s.div_ceil(room) - 1).max(e.div_ceil(2)) as f64;
    let mut cut = 0.0;
    for (a, b, rate) in pairs {
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        let before = if ra == rb {
            floor(size[ra as usize], beyond[ra as usize])
        } else {
            floor(size[ra as usize], beyond[ra as usize])
                + floor(size[rb as usize], beyond[rb as usize])
        };
        for (v, r) in [(a, ra), (b, rb)] {
            degree[v as usize] += 1;
            if degree[v as usize] >= room {
                beyond[r as usize] += 1;
            }
        }
        let root = if ra == rb {
            ra
        } else {
            let (big, small) = if size[ra as usize] >= size[rb as usize] {
                (ra, rb)
            } else {
                (rb, ra)
            };
            parent[small as usize] = big;
            size[big as usize] += size[small as usize];
            beyond[big as usize] += beyond[small as usize];
            big
        };
        cut += rate * (floor(size[root as usize], beyond[root as usize]) - before);
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::traffic::Flow;
    use crate::topology::HostId;
    use scored_proto::VmId;
    use std::path::Path;

    /// Two hosts of 2 slots in one rack, one in another; a triangle of traffic cannot fit one
    /// host. Here the bound meets the optimum.
    #[test]
    fn a_triangle_on_hosts_of_two_is_bounded_at_its_optimum() {
        let topo = Topology::parse(
            Path::new("t.toml"),
            r#"
            [levels]
            weights = [1, 10]
            [defaults]
            max_vms = 2
            [[host]]
            name = "a"
            path = ["tor1"]
            [[host]]
            name = "b"
            path = ["tor1"]
            [[host]]
            name = "c"
            path = ["tor2"]
            "#,
        )
        .unwrap();
        let flows: Vec<Flow> = [(0u32, 1u32, 300.0), (1, 2, 200.0), (0, 2, 100.0)]
            .iter()
            .map(|&(a, b, bytes)| Flow { a, b, bytes })
            .collect();
        let rates = Rates::from_flows(3, &flows, 1.0);
        let b = lower_bound(&topo, &[2, 2, 2], &rates);
        // Hosts hold 2. For θ in (200, 300], {0, 1} fits one host: no pair cut. For θ in
        // (100, 200], {0, 1, 2} needs two hosts: 1 pair. For θ ≤ 100 each VM has one partner
        // beyond room, three halves: 2 pairs. cut_0 ≥ 100·1 + 100·2 = 300, at c_1 = 1, doubled:
        // 600. The racks hold 4 VMs: nothing is cut above the hosts.
        assert!((b - 600.0).abs() < 1e-9, "{b}");
        // The best allocation: 0 and 1 together, 2 beside them in the rack: 2·(200 + 100) = 600.
        let loc = [HostId(0), HostId(0), HostId(1)];
        let pairs = rates.pairs().iter().map(|&(a, b, r)| (VmId(a), VmId(b), r));
        let best = crate::cost::total_cost(&topo, pairs, &|v: VmId| Some(loc[v.0 as usize]));
        assert!((best - 600.0).abs() < 1e-9, "{best}");
        assert!(b <= best);
    }
}
