//! `scored sim`: a deterministic discrete simulation of S-CORE at data-centre scale, held against a
//! centralised baseline, reproducing the thesis's evaluation (§5.1, Figs. 5.1–5.4).
//!
//! It drives the same token policies (`token`), decision (`decide`) and cost (`cost`) code as the
//! daemon, with the in-memory hypervisor and direct calls in place of libvirt and libp2p. All
//! randomness comes from one seeded ChaCha stream, so a seed names a result. This module and its
//! children do no I/O except `output` (files) and `run_cli` (terminal).

pub mod baseline;
pub mod bound;
pub mod engine;
pub mod groups;
pub mod messages;
pub mod output;
#[cfg(feature = "plot")]
pub mod plot;
pub mod study;
pub mod traffic;
pub mod workload;

use crate::cost;
use crate::rules::{Budget, Rules, Window};
use crate::topology::{HostId, Topology};
use groups::GroupParams;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use scored_proto::{PolicyKind, VmId};
use std::sync::Arc;
use traffic::{Generator, Rates, Structure, TrafficParams};
use workload::WorkloadParams;

/// Why a scenario cannot be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SimError {
    #[error("{vms} VMs of {memory} MiB do not fit: the topology's hosts hold at most {slots}")]
    TooManyVms {
        vms: usize,
        memory: u64,
        slots: usize,
    },
    #[error("the scenario has no VMs (fill {fill}, {slots} slots)")]
    NoVms { fill: f64, slots: usize },
    #[error("--rounds must be at least 1")]
    NoRounds,
    #[error("{vms} VMs in {racks} racks make no traffic: there is nothing to optimise")]
    NoTraffic { vms: usize, racks: usize },
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct ScenarioParams {
    /// Number of VMs; `None`: `fill` of the hosts' slots.
    pub vms: Option<usize>,
    pub fill: f64,
    pub vm_memory_mib: u64,
    pub rounds: usize,
    pub seed: u64,
    pub traffic: TrafficParams,
    /// Replica and affinity groups (none by default: the thesis's scenario).
    pub groups: GroupParams,
    /// Each VM's memory and dirty rate, for what its migrations send.
    pub workload: WorkloadParams,
    /// Migration windows, in simulated time (none: migrate at any time).
    pub windows: Vec<Window>,
    pub budget: Budget,
    pub clock: Clock,
    /// Simulate at most this many token steps per run (`None`: every round in full). The
    /// message counts per decision need no full run at 50,000 hosts.
    pub max_turns: Option<usize>,
}

impl Default for ScenarioParams {
    fn default() -> Self {
        ScenarioParams {
            vms: None,
            fill: 0.8,
            vm_memory_mib: 1024,
            rounds: 5,
            seed: 1,
            traffic: TrafficParams::default(),
            groups: GroupParams::default(),
            workload: WorkloadParams::default(),
            windows: Vec::new(),
            budget: Budget::default(),
            clock: Clock::default(),
            max_turns: None,
        }
    }
}

/// Simulated time, in which windows open and close and budgets are counted: token step k (from
/// 0) happens at `start_unix_ms + k · turn_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub start_unix_ms: i64,
    pub turn_ms: i64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            // Monday 2026-01-05 00:00 UTC.
            start_unix_ms: 1_767_571_200_000,
            // One second a turn: a decision with its capacity queries and hand-off.
            turn_ms: 1_000,
        }
    }
}

impl Clock {
    /// When token step `step` happens, Unix milliseconds.
    pub fn at(&self, step: usize) -> i64 {
        self.start_unix_ms
            .saturating_add((step as i64).saturating_mul(self.turn_ms))
    }
}

/// A built scenario: topology, VMs and their initial hosts, traffic for every round. Shared
/// read-only by all runs, so every policy and the baseline face the same data.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub topology: Topology,
    pub params: ScenarioParams,
    /// VM ids, dense and sorted: VM `i` is `ids[i]` (10.0.0.1 + i).
    pub ids: Vec<VmId>,
    pub vm_memory_mib: u64,
    /// VMs each host can hold (VM limit and memory after the reserve).
    pub slots: Vec<u32>,
    pub initial: Vec<HostId>,
    /// Rates of each round (traffic changes between rounds).
    pub rates: Vec<Rates>,
    pub structure: Structure,
    /// Rack number (order of `Topology::racks`) of each host.
    pub rack_number: Vec<u32>,
    /// The placement rules: the drawn groups (members by id), the windows and the budget.
    pub rules: Arc<Rules>,
    /// Groups drawn: anti-affinity at host scope, at rack scope, affinity at rack scope.
    pub group_counts: [usize; 3],
    /// VMs in a group.
    pub grouped_vms: usize,
    /// Bytes a migration of each VM sends (`workload`), by dense index.
    pub migration_bytes: Vec<f64>,
}

impl Scenario {
    pub fn build(topology: Topology, params: ScenarioParams) -> Result<Scenario, SimError> {
        if params.rounds == 0 {
            return Err(SimError::NoRounds);
        }
        let mem = params.vm_memory_mib.max(1);
        let slots: Vec<u32> = topology
            .hosts()
            .iter()
            .map(|h| {
                let by_memory = h.memory_mib.saturating_sub(h.reserve_memory_mib) / mem;
                (h.max_vms as u64).min(by_memory) as u32
            })
            .collect();
        let total: usize = slots.iter().map(|&s| s as usize).sum();
        let n = params
            .vms
            .unwrap_or((params.fill * total as f64).floor() as usize);
        if n > total {
            return Err(SimError::TooManyVms {
                vms: n,
                memory: mem,
                slots: total,
            });
        }
        if n == 0 {
            return Err(SimError::NoVms {
                fill: params.fill,
                slots: total,
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        // Random placement, at most `slots` per host: shuffle every free slot, take the first n.
        let mut free: Vec<HostId> = slots
            .iter()
            .enumerate()
            .flat_map(|(h, &s)| std::iter::repeat_n(HostId(h as u32), s as usize))
            .collect();
        free.shuffle(&mut rng);
        free.truncate(n);
        let initial = free;

        let racks = topology.racks();
        let mut number = vec![0u32; topology.switches().len()];
        for (i, r) in racks.iter().enumerate() {
            number[r.0 as usize] = i as u32;
        }
        let rack_number: Vec<u32> = topology
            .hosts()
            .iter()
            .map(|h| number[h.rack().0 as usize])
            .collect();
        let home: Vec<u32> = initial.iter().map(|h| rack_number[h.index()]).collect();
        let ids: Vec<VmId> = (0..n as u32).map(|i| VmId(0x0a00_0001 + i)).collect();
        // Groups come from a stream of their own, so the placement and the traffic of a seed
        // are the same with or without them.
        let mut group_rng = ChaCha8Rng::seed_from_u64(params.seed);
        group_rng.set_stream(1);
        let drawn = groups::draw(&params.groups, &ids, &initial, &rack_number, &mut group_rng);
        // The workloads too: with them the placement, traffic and groups stay those of the seed.
        let mut workload_rng = ChaCha8Rng::seed_from_u64(params.seed);
        workload_rng.set_stream(2);
        let migration_bytes = params.workload.migration_bytes(n, mem, &mut workload_rng);
        let structure = Structure::new(&home, &params.traffic, &mut rng);
        let generator = Generator::new(&params.traffic, &structure);
        let mut flows = generator.initial(&mut rng);
        let with_replication = |flows: &[traffic::Flow]| -> Rates {
            if drawn.flows.is_empty() {
                return Rates::from_flows(n, flows, params.traffic.window_s);
            }
            let all: Vec<traffic::Flow> = flows.iter().chain(&drawn.flows).copied().collect();
            Rates::from_flows(n, &all, params.traffic.window_s)
        };
        let mut rates = vec![with_replication(&flows)];
        for _ in 1..params.rounds {
            flows = generator.churn(&flows, &mut rng);
            rates.push(with_replication(&flows));
        }
        if rates[0].pairs().is_empty() {
            return Err(SimError::NoTraffic {
                vms: n,
                racks: structure.groups.len(),
            });
        }
        let mut rules = drawn.rules;
        rules.windows = params.windows.clone();
        rules.budget = params.budget;
        Ok(Scenario {
            rules: Arc::new(rules),
            group_counts: drawn.counts,
            grouped_vms: drawn.members,
            migration_bytes,
            topology,
            vm_memory_mib: mem,
            params,
            ids,
            slots,
            initial,
            rates,
            structure,
            rack_number,
        })
    }

    pub fn rounds(&self) -> usize {
        self.rates.len()
    }

    pub fn vms(&self) -> usize {
        self.ids.len()
    }

    /// Eq. 3.1 of allocation `loc` under round `round`'s traffic (the shared cost code).
    pub fn cost(&self, round: usize, loc: &[HostId]) -> f64 {
        cost::total_cost(
            &self.topology,
            self.pairs(round),
            &Self::placement(&self.ids, loc),
        )
    }

    /// Eq. 3.1 of `loc` under round `round`, split by the level the traffic crosses.
    pub fn cost_by_level(&self, round: usize, loc: &[HostId]) -> Vec<f64> {
        cost::total_cost_by_level(
            &self.topology,
            self.pairs(round),
            &Self::placement(&self.ids, loc),
        )
    }

    /// Pairs of group members whose placement under `loc` breaks their group's rule (replicas
    /// within the scope of an anti-affinity group, affinity members apart), each pair once;
    /// judged by `crate::rules` as every decision is.
    pub fn rule_violations(&self, loc: &[HostId]) -> u64 {
        if self.rules.groups().is_empty() {
            return 0;
        }
        let locate = Self::placement(&self.ids, loc);
        let mut twice = 0u64;
        for (i, &at) in loc.iter().enumerate() {
            let vm = self.ids[i];
            if self.rules.groups_of(vm).is_empty() {
                continue;
            }
            let check = self.rules.check_located(&self.topology, vm, &locate);
            twice += check.violations(at).len() as u64;
        }
        twice / 2
    }

    /// Round `round`'s communicating pairs with their rates, as VM ids.
    fn pairs(&self, round: usize) -> impl Iterator<Item = (VmId, VmId, f64)> + '_ {
        self.rates[round]
            .pairs()
            .iter()
            .map(|&(a, b, r)| (self.ids[a as usize], self.ids[b as usize], r))
    }

    /// Where each VM runs under `loc` (indexed from the first id).
    fn placement<'a>(ids: &[VmId], loc: &'a [HostId]) -> impl Fn(VmId) -> Option<HostId> + 'a {
        let base = ids[0].0;
        move |v: VmId| loc.get((v.0 - base) as usize).copied()
    }

    /// Traffic between racks under round `round` with allocation `loc`: `m[i][j]`, bytes/s, both
    /// directions summed into both cells (symmetric); the diagonal is traffic inside a rack.
    pub fn rack_matrix(&self, round: usize, loc: &[HostId]) -> Vec<Vec<f64>> {
        let racks = self.topology.racks().len();
        let mut m = vec![vec![0.0; racks]; racks];
        for &(a, b, r) in self.rates[round].pairs() {
            let ra = self.rack_number[loc[a as usize].index()] as usize;
            let rb = self.rack_number[loc[b as usize].index()] as usize;
            m[ra][rb] += r;
            if ra != rb {
                m[rb][ra] += r;
            }
        }
        m
    }
}

/// Rack pairs (i < j) whose traffic is at least `share` of the largest rack-to-rack cell of the
/// initial allocation: the hot spots of Figs. 5.1/5.4, counted.
pub fn hot_rack_pairs(sc: &Scenario, round: usize, loc: &[HostId], share: f64) -> usize {
    let before = sc.rack_matrix(0, &sc.initial);
    let max = before
        .iter()
        .enumerate()
        .flat_map(|(i, row)| row.iter().skip(i + 1).copied())
        .fold(0.0f64, f64::max);
    if max <= 0.0 {
        return 0;
    }
    let m = sc.rack_matrix(round, loc);
    m.iter()
        .enumerate()
        .map(|(i, row)| {
            row.iter()
                .skip(i + 1)
                .filter(|&&v| v >= share * max)
                .count()
        })
        .sum()
}

pub use cli::{SimArgs, run_cli};

mod cli;

/// Mean share of the overall cost per VM at the start, `C_A / |V|`: the unit in which `--cm` and
/// the c_m sweep express the migration cost.
pub fn cost_per_vm(sc: &Scenario) -> f64 {
    sc.cost(0, &sc.initial) / sc.vms() as f64
}

/// Every policy, in the thesis's order.
pub fn all_policies() -> Vec<PolicyKind> {
    PolicyKind::ALL.to_vec()
}

#[cfg(test)]
mod tests;
