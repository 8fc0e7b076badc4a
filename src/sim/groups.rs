//! Placement groups of the synthetic scenario: replicas of one service (anti-affinity, most at
//! host scope, some at rack scope) with heavy replication traffic between every two members, and
//! affinity groups kept within one rack. The chattiest pairs of a real data centre are often such
//! replicas; they are what S-CORE would pull onto one host and the rules must keep apart.
//!
//! Membership is drawn among the random initial placement so that it obeys every group from the
//! start (replicas on distinct hosts of one rack, or in distinct racks; affinity members in one
//! rack): the initial allocation is the same with or without groups, and every violation a run
//! ends with is one it made. Deterministic from the RNG passed in; no I/O. It states groups as
//! [`Rules`]: the rule logic itself lives in `crate::rules`.

use super::traffic::Flow;
use crate::rules::{GroupKind, Rules};
use crate::topology::HostId;
use rand::Rng;
use rand::seq::SliceRandom;
use scored_proto::VmId;

/// Which VMs form groups, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupParams {
    /// Share of the VMs that are members of a group (0: no groups).
    pub share: f64,
    /// Members of a group, at least and at most.
    pub sizes: (usize, usize),
    /// Share of the groups that are anti-affinity groups at rack scope (a quorum spread over
    /// racks); the anti-affinity groups not drawn so are at host scope.
    pub rack_scope: f64,
    /// Share of the groups that are affinity groups at rack scope (a tier kept in one rack).
    pub affinity: f64,
    /// Bytes per traffic window between every two members of a group (replication), steady:
    /// never churned.
    pub replication_bytes: f64,
}

impl Default for GroupParams {
    fn default() -> Self {
        GroupParams {
            share: 0.0,
            sizes: (2, 5),
            rack_scope: 0.2,
            affinity: 0.2,
            // Two MapReduce chunks a window: heavier than any other pair but a rare few.
            replication_bytes: 2.0 * 128e6,
        }
    }
}

/// The groups drawn for a scenario.
#[derive(Clone, Debug, Default)]
pub struct Drawn {
    pub rules: Rules,
    /// Replication flows, one per pair of members (dense VM indices).
    pub flows: Vec<Flow>,
    /// Groups by kind and scope: anti-affinity at host scope, at rack scope, affinity.
    pub counts: [usize; 3],
    /// VMs in a group.
    pub members: usize,
}

/// Draws groups over `initial` (the host of each VM; `rack[h]`: rack number of host h), naming
/// VM i `ids[i]`.
pub fn draw(
    params: &GroupParams,
    ids: &[VmId],
    initial: &[HostId],
    rack: &[u32],
    rng: &mut impl Rng,
) -> Drawn {
    let mut out = Drawn::default();
    let n = initial.len();
    let target = (params.share.clamp(0.0, 1.0) * n as f64).round() as usize;
    let (lo, hi) = (
        params.sizes.0.max(2),
        params.sizes.1.max(params.sizes.0.max(2)),
    );
    if target < lo {
        return out;
    }
    let racks = rack.iter().copied().max().map_or(0, |m| m as usize + 1);
    // VMs not yet in a group, by rack, in random order.
    let mut free: Vec<Vec<u32>> = vec![Vec::new(); racks];
    for (v, h) in initial.iter().enumerate() {
        free[rack[h.index()] as usize].push(v as u32);
    }
    for f in &mut free {
        f.shuffle(rng);
    }
    let mut failures = 0;
    let mut members: Vec<u32> = Vec::with_capacity(hi);
    while out.members + lo <= target && failures < 64 {
        let size = rng.random_range(lo..=hi).min(target - out.members);
        let pick: f64 = rng.random();
        let (kind, scope, slot) = if pick < params.affinity {
            (GroupKind::Affinity, 1, 2)
        } else if pick < params.affinity + params.rack_scope {
            (GroupKind::AntiAffinity, 1, 1)
        } else {
            (GroupKind::AntiAffinity, 0, 0)
        };
        members.clear();
        match (kind, scope) {
            (GroupKind::AntiAffinity, 1) => {
                // One member in each of `size` distinct racks.
                let mut order: Vec<usize> = (0..racks).filter(|&r| !free[r].is_empty()).collect();
                order.shuffle(rng);
                for r in order.into_iter().take(size) {
                    members.push(free[r].pop().expect("non-empty"));
                }
            }
            _ => {
                // One rack; for host scope, members on distinct hosts of it.
                let r = rng.random_range(0..racks);
                let list = &mut free[r];
                let mut k = 0;
                while k < list.len() && members.len() < size {
                    let v = list[k];
                    let taken = scope == 0
                        && kind == GroupKind::AntiAffinity
                        && members
                            .iter()
                            .any(|&m| initial[m as usize] == initial[v as usize]);
                    if taken {
                        k += 1;
                    } else {
                        members.push(list.swap_remove(k));
                    }
                }
            }
        }
        if members.len() < 2 {
            // Give the VMs back (a lone member is no group) and try elsewhere.
            for &v in &members {
                free[rack[initial[v as usize].index()] as usize].push(v);
            }
            failures += 1;
            continue;
        }
        let name = match slot {
            0 => format!("replicas-{}", out.counts[0] + 1),
            1 => format!("quorum-{}", out.counts[1] + 1),
            _ => format!("tier-{}", out.counts[2] + 1),
        };
        out.counts[slot] += 1;
        let g = out
            .rules
            .add_group(&name, kind, scope)
            .expect("names are unique by construction");
        for (i, &a) in members.iter().enumerate() {
            out.rules.add_member(g, ids[a as usize]);
            for &b in &members[i + 1..] {
                out.flows.push(Flow {
                    a,
                    b,
                    bytes: params.replication_bytes,
                });
            }
        }
        out.members += members.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn groups_take_their_share_and_obey_their_rule_where_they_start() {
        // 40 racks of 10 hosts, 4 VMs a host.
        let hosts = 400u32;
        let rack: Vec<u32> = (0..hosts).map(|h| h / 10).collect();
        let initial: Vec<HostId> = (0..hosts * 4).map(|v| HostId(v % hosts)).collect();
        let ids: Vec<VmId> = (0..initial.len() as u32).map(VmId).collect();
        let params = GroupParams {
            share: 0.25,
            ..GroupParams::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let d = draw(&params, &ids, &initial, &rack, &mut rng);
        assert!(d.members.abs_diff(400) <= 1, "{} members", d.members);
        let groups = d.rules.groups();
        assert_eq!(groups.len(), d.counts.iter().sum::<usize>());
        for c in d.counts {
            assert!(c > 0, "{:?}", d.counts);
        }
        let mut pairs = 0;
        for g in groups {
            assert!((2..=5).contains(&g.members.len()), "{}", g.name);
            pairs += g.members.len() * (g.members.len() - 1) / 2;
            let at = |v: &VmId| initial[v.0 as usize];
            for (i, a) in g.members.iter().enumerate() {
                for b in &g.members[i + 1..] {
                    let same_rack = rack[at(a).index()] == rack[at(b).index()];
                    match (g.kind, g.scope) {
                        (GroupKind::AntiAffinity, 0) => {
                            assert!(same_rack && at(a) != at(b), "{}", g.name)
                        }
                        (GroupKind::AntiAffinity, _) => assert!(!same_rack, "{}", g.name),
                        (GroupKind::Affinity, _) => assert!(same_rack, "{}", g.name),
                    }
                }
            }
        }
        assert_eq!(d.flows.len(), pairs);
        assert!(d.flows.iter().all(|f| f.bytes == params.replication_bytes));
        // No VM is in two groups.
        let mut all: Vec<VmId> = groups.iter().flat_map(|g| g.members.clone()).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), d.members);
    }

    #[test]
    fn no_share_no_groups() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let initial = vec![HostId(0), HostId(1)];
        let d = draw(
            &GroupParams::default(),
            &[VmId(1), VmId(2)],
            &initial,
            &[0, 0],
            &mut rng,
        );
        assert!(d.rules.is_empty() && d.flows.is_empty());
    }
}
