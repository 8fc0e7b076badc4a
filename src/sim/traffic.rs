//! The synthetic traffic of the thesis's simulation (§5.1): about 10 active flows per VM, 90% of
//! them small queries (< 10 KB) and 10% MapReduce-like chunks around 128 MB; 80% of flows stay in
//! their rack; 20% of racks are hot spots that exchange most of the leaving traffic with a few
//! partner racks. Flows are turned into rates and kept per VM pair, densely indexed.
//!
//! Deterministic: all randomness comes from the RNG passed in. No I/O.

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_distr::{Distribution, LogNormal};

/// Parameters of the generator; the defaults are the thesis's.
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficParams {
    /// Active flows a VM takes part in, on average (each flow has two ends).
    pub flows_per_vm: f64,
    /// Share of flows that are small queries; the rest are large chunks.
    pub query_fraction: f64,
    /// Query sizes are log-uniform in this range, bytes.
    pub query_bytes: (f64, f64),
    /// Mode of the chunk sizes (log-normal), bytes.
    pub chunk_mode_bytes: f64,
    /// Spread (σ of ln size) of chunk sizes.
    pub chunk_sigma: f64,
    /// Share of flows between two VMs of the same rack.
    pub intra_rack: f64,
    /// Share of racks that are hot spots.
    pub hot_racks: f64,
    /// Partner racks each hot rack talks to.
    pub hot_partners: usize,
    /// Share of rack-leaving flows that run between a hot rack and one of its partners.
    pub hot_share: f64,
    /// The measurement window over which a flow's bytes become a rate, seconds.
    pub window_s: f64,
    /// Share of flows that end at each round boundary, replaced by as many new ones.
    pub churn: f64,
}

impl Default for TrafficParams {
    fn default() -> Self {
        TrafficParams {
            flows_per_vm: 10.0,
            query_fraction: 0.9,
            query_bytes: (100.0, 10_000.0),
            chunk_mode_bytes: 128e6,
            chunk_sigma: 0.1,
            intra_rack: 0.8,
            hot_racks: 0.2,
            hot_partners: 3,
            hot_share: 0.8,
            window_s: 60.0,
            churn: 0.05,
        }
    }
}

/// One flow between two VMs (dense indices) and the bytes it moves in a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Flow {
    pub a: u32,
    pub b: u32,
    pub bytes: f64,
}

/// The application structure traffic follows: which VMs share a home rack (where they were first
/// placed) and which racks are hot, with their partners. Fixed for a run, so new flows follow the
/// same pattern as old ones even after VMs have moved.
#[derive(Clone, Debug)]
pub struct Structure {
    /// VMs of each home rack (racks without VMs are left out).
    pub groups: Vec<Vec<u32>>,
    /// Group of each VM.
    pub group_of: Vec<u32>,
    /// Hot groups and, for each, its partner groups.
    pub hot: Vec<(u32, Vec<u32>)>,
}

impl Structure {
    /// `rack_of[v]`: the rack (any dense number) VM v was first placed in.
    pub fn new(rack_of: &[u32], params: &TrafficParams, rng: &mut impl Rng) -> Structure {
        let racks = rack_of.iter().copied().max().map_or(0, |m| m as usize + 1);
        let mut by_rack: Vec<Vec<u32>> = vec![Vec::new(); racks];
        for (v, &r) in rack_of.iter().enumerate() {
            by_rack[r as usize].push(v as u32);
        }
        let groups: Vec<Vec<u32>> = by_rack.into_iter().filter(|g| !g.is_empty()).collect();
        let mut group_of = vec![0u32; rack_of.len()];
        for (g, vms) in groups.iter().enumerate() {
            for &v in vms {
                group_of[v as usize] = g as u32;
            }
        }
        let n = groups.len();
        let mut hot = Vec::new();
        if n > 1 {
            let count = ((params.hot_racks * n as f64).round() as usize).clamp(1, n);
            let mut ids: Vec<u32> = (0..n as u32).collect();
            ids.shuffle(rng);
            for &g in &ids[..count] {
                let mut others: Vec<u32> = (0..n as u32).filter(|&o| o != g).collect();
                others.shuffle(rng);
                others.truncate(params.hot_partners.max(1));
                hot.push((g, others));
            }
        }
        Structure {
            groups,
            group_of,
            hot,
        }
    }
}

/// Draws flows from the thesis's distributions.
pub struct Generator<'a> {
    params: &'a TrafficParams,
    structure: &'a Structure,
    chunks: LogNormal<f64>,
    vms: u32,
}

impl<'a> Generator<'a> {
    pub fn new(params: &'a TrafficParams, structure: &'a Structure) -> Self {
        // Mode of a log-normal is exp(μ − σ²).
        let sigma = params.chunk_sigma.max(1e-9);
        let mu = params.chunk_mode_bytes.ln() + sigma * sigma;
        Generator {
            params,
            structure,
            chunks: LogNormal::new(mu, sigma).expect("σ > 0"),
            vms: structure.group_of.len() as u32,
        }
    }

    /// One flow, or `None` when the structure has too few VMs for one.
    pub fn flow(&self, rng: &mut impl Rng) -> Option<Flow> {
        if self.vms < 2 {
            return None;
        }
        // A draw fails only when it lands on a rack with a single VM (or there is one rack).
        (0..64).find_map(|_| self.try_flow(rng))
    }

    fn try_flow(&self, rng: &mut impl Rng) -> Option<Flow> {
        let s = self.structure;
        let p = self.params;
        let (a, b) = if rng.random_bool(p.intra_rack.clamp(0.0, 1.0)) {
            let a = rng.random_range(0..self.vms);
            let g = &s.groups[s.group_of[a as usize] as usize];
            if g.len() < 2 {
                return None;
            }
            let mut b = a;
            while b == a {
                b = *g.choose(rng).expect("non-empty");
            }
            (a, b)
        } else if !s.hot.is_empty() && rng.random_bool(p.hot_share.clamp(0.0, 1.0)) {
            let (g, partners) = s.hot.choose(rng).expect("non-empty");
            let pg = partners.choose(rng).expect("hot racks have partners");
            let a = *s.groups[*g as usize].choose(rng).expect("non-empty");
            let b = *s.groups[*pg as usize].choose(rng).expect("non-empty");
            (a, b)
        } else if s.groups.len() > 1 {
            let a = rng.random_range(0..self.vms);
            let mut b = a;
            while s.group_of[b as usize] == s.group_of[a as usize] {
                b = rng.random_range(0..self.vms);
            }
            (a, b)
        } else {
            return None;
        };
        let bytes = if rng.random_bool(p.query_fraction.clamp(0.0, 1.0)) {
            let (lo, hi) = p.query_bytes;
            (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp()
        } else {
            self.chunks.sample(rng)
        };
        Some(Flow { a, b, bytes })
    }

    /// The flows active at the start: `flows_per_vm · n / 2` of them.
    pub fn initial(&self, rng: &mut impl Rng) -> Vec<Flow> {
        let count = (self.params.flows_per_vm * self.vms as f64 / 2.0).round() as usize;
        (0..count).filter_map(|_| self.flow(rng)).collect()
    }

    /// The next round's flows: a `churn` share of `flows` ends, as many new ones arrive.
    pub fn churn(&self, flows: &[Flow], rng: &mut impl Rng) -> Vec<Flow> {
        let mut out = Vec::with_capacity(flows.len());
        let mut ended = 0;
        for f in flows {
            if rng.random_bool(self.params.churn.clamp(0.0, 1.0)) {
                ended += 1;
            } else {
                out.push(*f);
            }
        }
        out.extend((0..ended).filter_map(|_| self.flow(rng)));
        out
    }
}

/// Rates between VM pairs, both directions summed, indexed by VM: λ(u, v) = bytes of all flows
/// between u and v in the window / window length. Each pair appears in both VMs' lists.
#[derive(Clone, Debug, Default)]
pub struct Rates {
    offsets: Vec<u32>,
    partners: Vec<(u32, f64)>,
    /// Each unordered pair once, u < v.
    pairs: Vec<(u32, u32, f64)>,
}

impl Rates {
    pub fn from_flows(vms: usize, flows: &[Flow], window_s: f64) -> Rates {
        let mut pairs: Vec<(u32, u32, f64)> = flows
            .iter()
            .filter(|f| f.a != f.b)
            .map(|f| (f.a.min(f.b), f.a.max(f.b), f.bytes / window_s))
            .collect();
        pairs.sort_unstable_by_key(|p| (p.0, p.1));
        pairs.dedup_by(|later, first| {
            if (later.0, later.1) == (first.0, first.1) {
                first.2 += later.2;
                true
            } else {
                false
            }
        });
        let mut degree = vec![0u32; vms + 1];
        for &(a, b, _) in &pairs {
            degree[a as usize + 1] += 1;
            degree[b as usize + 1] += 1;
        }
        for i in 0..vms {
            degree[i + 1] += degree[i];
        }
        let offsets = degree;
        let mut fill = offsets.clone();
        let mut partners = vec![(0u32, 0.0f64); offsets[vms] as usize];
        for &(a, b, r) in &pairs {
            partners[fill[a as usize] as usize] = (b, r);
            fill[a as usize] += 1;
            partners[fill[b as usize] as usize] = (a, r);
            fill[b as usize] += 1;
        }
        Rates {
            offsets,
            partners,
            pairs,
        }
    }

    /// VM `v`'s partners and λ(v, ·).
    #[inline]
    pub fn of(&self, v: usize) -> &[(u32, f64)] {
        &self.partners[self.offsets[v] as usize..self.offsets[v + 1] as usize]
    }

    /// Every communicating pair once.
    pub fn pairs(&self) -> &[(u32, u32, f64)] {
        &self.pairs
    }

    pub fn vms(&self) -> usize {
        self.offsets.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn structure(racks: u32, per_rack: u32, rng: &mut ChaCha8Rng) -> Structure {
        let rack_of: Vec<u32> = (0..racks * per_rack).map(|v| v / per_rack).collect();
        Structure::new(&rack_of, &TrafficParams::default(), rng)
    }

    #[test]
    fn flows_follow_the_thesis_mix() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let s = structure(50, 40, &mut rng);
        assert_eq!(s.hot.len(), 10);
        let params = TrafficParams::default();
        let g = Generator::new(&params, &s);
        let flows = g.initial(&mut rng);
        assert_eq!(flows.len(), 10_000);
        let n = flows.len() as f64;
        let intra = flows
            .iter()
            .filter(|f| s.group_of[f.a as usize] == s.group_of[f.b as usize])
            .count() as f64;
        assert!(
            (intra / n - 0.8).abs() < 0.02,
            "intra-rack share {}",
            intra / n
        );
        let small = flows.iter().filter(|f| f.bytes < 10_000.0).count() as f64;
        assert!((small / n - 0.9).abs() < 0.02, "query share {}", small / n);
        let big: Vec<f64> = flows.iter().map(|f| f.bytes).filter(|&b| b > 1e6).collect();
        let mean = big.iter().sum::<f64>() / big.len() as f64;
        assert!((mean / 128e6 - 1.0).abs() < 0.05, "chunk mean {mean}");
        // Leaving flows concentrate on hot racks and their partners.
        let hot_pairs = flows
            .iter()
            .filter(|f| {
                let (ga, gb) = (s.group_of[f.a as usize], s.group_of[f.b as usize]);
                s.hot
                    .iter()
                    .any(|(h, ps)| (*h == ga && ps.contains(&gb)) || (*h == gb && ps.contains(&ga)))
            })
            .count() as f64;
        let leaving = n - intra;
        assert!(hot_pairs / leaving > 0.75, "{}", hot_pairs / leaving);
        assert!(flows.iter().all(|f| f.a != f.b));
    }

    #[test]
    fn churn_replaces_a_share_of_flows() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let s = structure(10, 20, &mut rng);
        let params = TrafficParams::default();
        let g = Generator::new(&params, &s);
        let flows = g.initial(&mut rng);
        let next = g.churn(&flows, &mut rng);
        assert_eq!(next.len(), flows.len());
        let kept = next.iter().filter(|f| flows.contains(f)).count();
        let ended = flows.len() - kept;
        assert!(ended > 0 && ended < flows.len() / 10, "{ended}");
    }

    #[test]
    fn rates_merge_pairs_and_index_both_ends() {
        let flows = [
            Flow {
                a: 0,
                b: 2,
                bytes: 60.0,
            },
            Flow {
                a: 2,
                b: 0,
                bytes: 120.0,
            },
            Flow {
                a: 1,
                b: 2,
                bytes: 6.0,
            },
            Flow {
                a: 3,
                b: 3,
                bytes: 5.0,
            },
        ];
        let r = Rates::from_flows(4, &flows, 60.0);
        assert_eq!(r.pairs(), &[(0, 2, 3.0), (1, 2, 0.1)]);
        assert_eq!(r.of(0), &[(2, 3.0)]);
        assert_eq!(r.of(2), &[(0, 3.0), (1, 0.1)]);
        assert!(r.of(3).is_empty());
        assert_eq!(r.vms(), 4);
    }
}
