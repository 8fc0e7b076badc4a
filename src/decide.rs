//! One S-CORE decision for one VM u (thesis §4.2.5): rank candidate hosts, ask them for room,
//! apply Eq. 3.2 with the migration cost `c_m` and the operator's safety gates, and say why.
//!
//! Pure: no I/O, no clock, no randomness. Partner locations, rates and capacity answers come in
//! as arguments, so the daemon can ask its peers over the network (one query at a time through
//! [`Search`], or all at once and answer from a cache) while the simulator answers from memory.
//! This module never migrates anything and never touches the token.

use crate::cost::{self, MoveCharge, PartnerRates, PartnerTraffic};
use crate::hypervisor::Capacity;
use crate::rules::{NO_RULES, Refusal, RuleCheck};
use crate::topology::{Host, HostId, Topology};
use scored_proto::VmId;

/// Why a host is a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// One or more of u's partners run there.
    PartnerHost,
    /// Same rack as a partner's host that had no room (or could not be used).
    PartnerRack { of: HostId },
    /// Another rack under the switch above a partner's rack, when a placement rule refuses
    /// that whole rack (replicas kept in separate racks still want to be close).
    PartnerPod { of: HostId },
}

/// A host u could move to, with the Eq. 3.2 benefit of moving there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub host: HostId,
    /// `Σ λ(u, z) · Σ_{i ≤ ℓ(x, σ(z))} c_i` over partners z on this host: their share of u's
    /// current cost. The thesis asks hosts in this order.
    pub contribution: f64,
    /// Eq. 3.2 left side: the drop in C_A if u moves here.
    pub benefit: f64,
    pub via: Via,
}

/// The VM a decision is for, with everything its host knows about it.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub vm: VmId,
    /// Where u runs now.
    pub host: HostId,
    /// Memory a destination must have free for u.
    pub memory_mib: u64,
    /// CPU u used recently, in cores (0: not measured): what a destination must have free
    /// under `Gates::max_cpu_load`.
    pub cpu_cores: f64,
    /// u's partners with their (resolved) hosts and rates λ(u, z).
    pub partners: &'a [PartnerTraffic],
}

/// The operator's safety gates, as plain inputs.
#[derive(Clone, Copy, Debug)]
pub struct Gates<'a> {
    /// Pinned VMs never move.
    pub pinned: bool,
    /// `c_m` of Eq. 3.2, in the benefit's unit: a move must save more than this. With
    /// `per_move`, the floor under the move's own charge.
    pub migration_cost: f64,
    /// The migration's own cost per destination (its predicted traffic on the path it takes):
    /// `c_m` of a move is the larger of this and `migration_cost`. `None`: the constant alone,
    /// as in the thesis.
    pub per_move: Option<MoveCharge>,
    /// Hosts in maintenance: never a destination.
    pub maintenance: &'a [HostId],
    /// Hosts u ran on before (most recent first).
    pub previous_hosts: &'a [HostId],
    /// A return to a previous host must also remove at least this fraction of u's current cost
    /// (its benefit ≥ `return_margin · 2 · current_cost`, the most a move can save), so a VM
    /// does not bounce back for a tiny gain. 0 disables the gate.
    pub return_margin: f64,
    /// How many other hosts of a partner host's rack to try when that host cannot take u.
    pub rack_alternates: usize,
    /// A destination whose load per CPU would exceed this with u's recent CPU use added is
    /// not taken (as a full host); 0 disables the gate. A host that does not report its CPUs
    /// is not judged.
    pub max_cpu_load: f64,
    /// The placement rules that bear on u (anti-affinity, affinity, exclusions): a candidate
    /// they refuse is never asked.
    pub rules: &'a RuleCheck<'a>,
}

impl Gates<'_> {
    /// `c_m` of moving from `from` to `to`.
    pub fn migration_cost_to(&self, topo: &Topology, from: HostId, to: HostId) -> f64 {
        cost::move_cost(topo, self.migration_cost, self.per_move.as_ref(), from, to)
    }

    /// What moving to `c` gains, by which candidates are ranked: its benefit, less its own
    /// `c_m` when that differs by destination (with a constant `c_m` the order is the
    /// benefit's).
    fn gain(&self, topo: &Topology, from: HostId, c: &Candidate) -> f64 {
        match self.per_move {
            None => c.benefit,
            Some(_) => c.benefit - self.migration_cost_to(topo, from, c.host),
        }
    }

    /// The thesis's rule alone: no pinning, no maintenance, no return memory.
    pub fn thesis(migration_cost: f64) -> Gates<'static> {
        Gates {
            pinned: false,
            migration_cost,
            per_move: None,
            maintenance: &[],
            previous_hosts: &[],
            return_margin: 0.0,
            rack_alternates: 3,
            max_cpu_load: 0.0,
            rules: &NO_RULES,
        }
    }
}

/// How a decision ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Eq. 3.2 holds for `to` and it has room: migrate.
    Migrate { to: HostId, benefit: f64, via: Via },
    /// The VM is pinned.
    Pinned,
    /// The VM has no traffic with VMs whose location is known.
    NoTraffic,
    /// No candidate saves more than `c_m`.
    NoBenefit,
    /// Candidates beyond `c_m` exist but every one was in maintenance, refused by a placement
    /// rule, or a recent host whose gain is too small to return to.
    Excluded,
    /// Candidates beyond `c_m` exist but none had room (or answered).
    NoCapacity,
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Migrate { .. } => "migrate",
            Outcome::Pinned => "pinned",
            Outcome::NoTraffic => "no-traffic",
            Outcome::NoBenefit => "no-benefit",
            Outcome::Excluded => "excluded",
            Outcome::NoCapacity => "no-capacity",
        }
    }
}

/// One decision with the numbers that justify it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub vm: VmId,
    pub from: HostId,
    /// u's own share of C_A where it runs: `Σ_z λ(u, z) · Σ_{i ≤ ℓ} c_i`.
    pub current_cost: f64,
    /// `c_m` of the destination (of the best candidate when there is none; the constant when
    /// there is no candidate).
    pub migration_cost: f64,
    /// The highest-benefit candidate before capacity and gates (what u could gain at best).
    pub best: Option<Candidate>,
    pub outcome: Outcome,
    /// Capacity queries answered: full / not answered.
    pub queries: u32,
    pub full: u32,
    pub unreachable: u32,
    /// Of the `full`: hosts with room for u's memory but not for its CPU use.
    pub cpu_full: u32,
    /// Candidates above `c_m` skipped: in maintenance / a recent host with too small a gain /
    /// refused by a placement rule.
    pub in_maintenance: u32,
    pub returning: u32,
    pub by_rule: u32,
    /// The rule that refused the best candidate a rule refused (the one `plan` and the
    /// decision log name).
    pub refusal: Option<Refusal>,
    /// The first (best) candidate that refused u by a rule of its own: it re-checks with what
    /// it knows better (its own VMs, the room it holds for VMs on their way). Counted in
    /// `by_rule` too; its sentence came with its answer, and the caller keeps it.
    pub destination_refusal: Option<HostId>,
}

impl Decision {
    pub fn migrates_to(&self) -> Option<HostId> {
        match self.outcome {
            Outcome::Migrate { to, .. } => Some(to),
            _ => None,
        }
    }
}

/// How one VM's turn ended, for the log, `scored status` and the `outcome` label of
/// `scored_decisions_total` (metrics only label it: the names are part of the alerts and
/// dashboards). Wider than [`Outcome`]: a turn can end before or after the decision (the VM
/// rests, its hypervisor does not answer, the migration failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TurnOutcome {
    /// Eq. 3.2 held and the VM moved.
    Migrated,
    /// No candidate host gains more than `c_m`.
    NoBenefit,
    /// A host would gain, but none had room.
    NoCapacity,
    /// The VM moved recently and rests.
    Cooldown,
    /// The operator pinned the VM.
    Pinned,
    /// Eq. 3.2 held, but scored runs recommend-only.
    DryRun,
    /// No traffic observed for the VM: it cannot gain.
    NoTraffic,
    /// The move would send the VM back to a recent host for too small a gain.
    Bounce,
    /// Not decided now: a migration of this VM is not settled, a job of it already runs, a
    /// partner could not be located, or the dirty rate its migration forecast needs is being
    /// measured.
    Busy,
    /// The migration was tried and failed or was aborted.
    Failed,
    /// Not decided: this host's hypervisor does not answer.
    HypervisorDown,
    /// Not decided: the VM runs on more than one host at once (a zombie).
    Zombie,
    /// Every candidate that gains was refused by a placement rule (anti-affinity, affinity, an
    /// exclusion).
    Rule,
    /// A move was chosen, but this host or the destination is outside its migration windows:
    /// nothing moves until one opens.
    OutsideWindow,
    /// A move was chosen, but the VM's or a host's migration budget is spent.
    OverBudget,
    /// A move was chosen, but the migration forecast (`crate::forecast`, from what the
    /// hypervisor measured of the guest) says no mode the operator allows would converge: the
    /// VM stays rather than resend its memory until the job is aborted.
    WouldNotConverge,
}

impl TurnOutcome {
    /// Turns that end in a decision: the VM was judged (it moved, there was no gain, or no
    /// room), as opposed to put off or held by a gate.
    pub const DECIDED: [TurnOutcome; 3] = [
        TurnOutcome::Migrated,
        TurnOutcome::NoBenefit,
        TurnOutcome::NoCapacity,
    ];

    pub const ALL: [TurnOutcome; 16] = [
        TurnOutcome::Migrated,
        TurnOutcome::NoBenefit,
        TurnOutcome::NoCapacity,
        TurnOutcome::Cooldown,
        TurnOutcome::Pinned,
        TurnOutcome::DryRun,
        TurnOutcome::NoTraffic,
        TurnOutcome::Bounce,
        TurnOutcome::Busy,
        TurnOutcome::Failed,
        TurnOutcome::HypervisorDown,
        TurnOutcome::Zombie,
        TurnOutcome::Rule,
        TurnOutcome::OutsideWindow,
        TurnOutcome::OverBudget,
        TurnOutcome::WouldNotConverge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TurnOutcome::Migrated => "migrated",
            TurnOutcome::NoBenefit => "no_benefit",
            TurnOutcome::NoCapacity => "no_capacity",
            TurnOutcome::Cooldown => "cooldown",
            TurnOutcome::Pinned => "pinned",
            TurnOutcome::DryRun => "dry_run",
            TurnOutcome::NoTraffic => "no_traffic",
            TurnOutcome::Bounce => "bounce",
            TurnOutcome::Busy => "busy",
            TurnOutcome::Failed => "failed",
            TurnOutcome::HypervisorDown => "hypervisor_down",
            TurnOutcome::Zombie => "zombie",
            TurnOutcome::Rule => "rule",
            TurnOutcome::OutsideWindow => "outside_window",
            TurnOutcome::OverBudget => "over_budget",
            TurnOutcome::WouldNotConverge => "would_not_converge",
        }
    }
}

impl TurnOutcome {
    /// What a finished decision means for the turn: in dry-run a move is only recommended.
    pub fn of(decision: &Outcome, dry_run: bool) -> TurnOutcome {
        match decision {
            Outcome::Migrate { .. } if dry_run => TurnOutcome::DryRun,
            Outcome::Migrate { .. } => TurnOutcome::Migrated,
            Outcome::Pinned => TurnOutcome::Pinned,
            Outcome::NoTraffic => TurnOutcome::NoTraffic,
            Outcome::NoBenefit => TurnOutcome::NoBenefit,
            Outcome::Excluded => TurnOutcome::Bounce,
            Outcome::NoCapacity => TurnOutcome::NoCapacity,
        }
    }
}

/// Whether a host whose answer is `capacity` has CPU for a VM using `cores` under a load per
/// CPU of at most `max_load` (0: no limit). Unknown CPUs or use: not judged.
pub fn cpu_room(capacity: &Capacity, cores: f64, max_load: f64) -> bool {
    if max_load <= 0.0 || capacity.cpus == 0 || cores <= 0.0 {
        return true;
    }
    capacity.cpu_load as f64 + cores / capacity.cpus as f64 <= max_load
}

/// Whether a host with this capacity answer can take a VM of `memory_mib`, keeping the host's
/// VM limit and memory reserve from the topology.
pub fn room_for(host: &Host, capacity: &Capacity, memory_mib: u64) -> bool {
    Room::of(host, capacity).fits(memory_mib)
}

/// A host's free VM slots and memory as its capacity answer and the topology give them (its VM
/// limit, its memory reserve); negative when it holds more than they allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room {
    pub vms: i64,
    pub mib: i64,
}

impl Room {
    /// Nothing free.
    pub const NONE: Room = Room { vms: 0, mib: 0 };

    pub fn of(host: &Host, capacity: &Capacity) -> Room {
        Room {
            // A migration on its way in already holds a slot there.
            vms: host.max_vms as i64
                - capacity.running_vms as i64
                - capacity.incoming_migrations as i64,
            mib: capacity.free_memory_mib as i64 - host.reserve_memory_mib as i64,
        }
    }

    /// Room for one more VM of `memory_mib`.
    pub fn fits(&self, memory_mib: u64) -> bool {
        self.vms >= 1 && self.mib >= memory_mib.min(i64::MAX as u64) as i64
    }
}

/// Ranks candidates and runs searches; holds the rack index and scratch space so that deciding
/// allocates nothing once warm.
#[derive(Clone, Debug)]
pub struct Decider<'t> {
    topo: &'t Topology,
    /// Rack number of each host, and the hosts of each rack.
    rack_of: Vec<u32>,
    rack_hosts: Vec<Vec<HostId>>,
    /// The other racks under each rack's parent switch (empty for a rack at the top).
    sibling_racks: Vec<Vec<u32>>,
    candidates: Vec<Candidate>,
    /// Candidates above `c_m` in benefit order, consumed by a search.
    queue: Vec<Candidate>,
    /// Hosts already in the queue or tried, so alternates are not proposed twice.
    seen: Vec<HostId>,
    alternates: Vec<Candidate>,
    /// Partners' rates per host and subtree, for VMs with many partners.
    rates: PartnerRates,
    /// `rates` holds the partners of the current search.
    indexed: bool,
}

/// From this many partners on, benefits come from [`PartnerRates`] (O(depth · log k) each)
/// instead of a pass over the partners (O(k) each).
const INDEX_FROM: usize = 48;

impl<'t> Decider<'t> {
    pub fn new(topo: &'t Topology) -> Self {
        let racks = topo.racks();
        let mut number = vec![u32::MAX; topo.switches().len()];
        for (i, r) in racks.iter().enumerate() {
            number[r.0 as usize] = i as u32;
        }
        let mut rack_hosts = vec![Vec::new(); racks.len()];
        let mut rack_of = Vec::with_capacity(topo.hosts().len());
        for h in topo.hosts() {
            let r = number[h.rack().0 as usize];
            rack_of.push(r);
            rack_hosts[r as usize].push(h.id);
        }
        // Racks grouped by their parent switch, O(racks).
        let mut under: std::collections::HashMap<crate::topology::SwitchId, Vec<u32>> =
            std::collections::HashMap::new();
        for (i, r) in racks.iter().enumerate() {
            if let Some(p) = topo.switch(*r).parent {
                under.entry(p).or_default().push(i as u32);
            }
        }
        let mut sibling_racks = vec![Vec::new(); racks.len()];
        for group in under.values() {
            for &r in group {
                sibling_racks[r as usize] = group.iter().copied().filter(|&o| o != r).collect();
            }
        }
        Decider {
            topo,
            rack_of,
            rack_hosts,
            sibling_racks,
            candidates: Vec::new(),
            queue: Vec::new(),
            seen: Vec::new(),
            alternates: Vec::new(),
            rates: PartnerRates::default(),
            indexed: false,
        }
    }

    pub fn topology(&self) -> &'t Topology {
        self.topo
    }

    /// The other hosts in `host`'s rack.
    pub fn rack_of(&self, host: HostId) -> &[HostId] {
        &self.rack_hosts[self.rack_of[host.index()] as usize]
    }

    /// The best Eq. 3.2 benefit among the candidates, capacity aside (0 when none gains): what a
    /// host reports of its VMs for the global policy's round order.
    pub fn best_benefit(&mut self, current: HostId, partners: &[PartnerTraffic]) -> f64 {
        self.candidates(current, partners)
            .iter()
            .map(|c| c.benefit)
            .fold(0.0f64, f64::max)
    }

    /// The partners' hosts as candidates, in order of their contribution to u's current cost
    /// (highest first, ties by host id), each with its Eq. 3.2 benefit. u's own host is not a
    /// candidate. O(k log k + h·k) for k partners on h distinct hosts; from 48 partners on,
    /// O(k log k + h·depth·log k) through [`PartnerRates`] (same values up to rounding).
    pub fn candidates(&mut self, current: HostId, partners: &[PartnerTraffic]) -> &[Candidate] {
        let topo = self.topo;
        self.candidates.clear();
        for p in partners {
            if p.host != current && p.rate > 0.0 {
                self.candidates.push(Candidate {
                    host: p.host,
                    contribution: p.rate * topo.path_cost(current, p.host),
                    benefit: 0.0,
                    via: Via::PartnerHost,
                });
            }
        }
        // Merge partners that share a host.
        self.candidates.sort_unstable_by_key(|c| c.host);
        self.candidates.dedup_by(|later, first| {
            if later.host == first.host {
                first.contribution += later.contribution;
                true
            } else {
                false
            }
        });
        self.indexed = partners.len() >= INDEX_FROM;
        if self.indexed {
            self.rates.build(topo, partners);
        }
        let mut cands = std::mem::take(&mut self.candidates);
        for c in &mut cands {
            c.benefit = self.benefit(current, c.host, partners);
        }
        self.candidates = cands;
        self.candidates.sort_by(|a, b| {
            b.contribution
                .total_cmp(&a.contribution)
                .then(a.host.cmp(&b.host))
        });
        &self.candidates
    }

    fn benefit(&self, from: HostId, to: HostId, partners: &[PartnerTraffic]) -> f64 {
        if self.indexed {
            self.rates.benefit(self.topo, from, to)
        } else {
            cost::benefit(self.topo, from, to, partners)
        }
    }

    /// Starts a decision for `subject`: computes its candidates and applies the gates that need
    /// no capacity answer. Drive it with [`Search::next_query`] / [`Search::answer`], then
    /// [`Search::finish`].
    pub fn search<'a>(
        &'a mut self,
        subject: &'a Subject<'a>,
        gates: &'a Gates<'a>,
    ) -> Search<'a, 't> {
        let current_cost = cost::vm_cost(self.topo, subject.host, subject.partners);
        let mut decision = Decision {
            vm: subject.vm,
            from: subject.host,
            current_cost,
            migration_cost: gates.migration_cost,
            best: None,
            outcome: Outcome::NoBenefit,
            queries: 0,
            full: 0,
            unreachable: 0,
            cpu_full: 0,
            in_maintenance: 0,
            returning: 0,
            by_rule: 0,
            refusal: None,
            destination_refusal: None,
        };
        self.queue.clear();
        self.seen.clear();
        let mut done = false;
        if gates.pinned {
            decision.outcome = Outcome::Pinned;
            done = true;
        } else if !subject.partners.iter().any(|p| p.rate > 0.0) {
            decision.outcome = Outcome::NoTraffic;
            done = true;
        } else {
            self.candidates(subject.host, subject.partners);
            decision.best = self
                .candidates
                .iter()
                .copied()
                .max_by(|a, b| a.benefit.total_cmp(&b.benefit).then(b.host.cmp(&a.host)));
            if let Some(b) = decision.best {
                decision.migration_cost = gates.migration_cost_to(self.topo, subject.host, b.host);
            }
            let cands = std::mem::take(&mut self.candidates);
            let mut ruled_out = Vec::new();
            for c in &cands {
                self.seen.push(c.host);
                let by_rule = decision.by_rule;
                if Self::admit(&mut decision, gates, self.topo, subject.host, c) {
                    self.queue.push(*c);
                } else if decision.by_rule > by_rule {
                    ruled_out.push(c.host);
                }
            }
            self.candidates = cands;
            // Highest gain first: the first candidate with room is the best one with room.
            let (topo, from) = (self.topo, subject.host);
            self.queue.sort_by(|a, b| {
                gates
                    .gain(topo, from, b)
                    .total_cmp(&gates.gain(topo, from, a))
                    .then(b.contribution.total_cmp(&a.contribution))
                    .then(a.host.cmp(&b.host))
            });
            if gates.rack_alternates > 0 && !ruled_out.is_empty() {
                // A partner's host a rule refuses (a replica runs there, say) is as good a
                // reason to try its rack-mates as a full one: the rule then judges each of them.
                let mut search = Search {
                    decider: self,
                    subject,
                    gates,
                    next: 0,
                    decision,
                    done,
                };
                for h in ruled_out {
                    if search.add_alternates(h) == 0 {
                        // The rule refuses the whole rack: try the racks next to it.
                        search.add_pod_alternates(h);
                    }
                }
                return search;
            }
        }
        Search {
            decider: self,
            subject,
            gates,
            next: 0,
            decision,
            done,
        }
    }

    /// Eq. 3.2 and the gates that need no capacity answer; counts what it turns away.
    fn admit(
        decision: &mut Decision,
        gates: &Gates<'_>,
        topo: &Topology,
        from: HostId,
        c: &Candidate,
    ) -> bool {
        if !cost::should_migrate(c.benefit, gates.migration_cost_to(topo, from, c.host)) {
            return false;
        }
        if gates.maintenance.contains(&c.host) {
            decision.in_maintenance += 1;
            return false;
        }
        if let Err(r) = gates.rules.allows(from, c.host) {
            decision.by_rule += 1;
            // Candidates come in contribution order, alternates later: keep the refusal of the
            // highest benefit.
            let better = match (decision.refusal, decision.best) {
                (None, _) => true,
                _ => decision.best.is_some_and(|b| b.host == c.host),
            };
            if better {
                decision.refusal = Some(r);
            }
            return false;
        }
        if gates.return_margin > 0.0
            && gates.previous_hosts.contains(&c.host)
            && c.benefit < gates.return_margin * 2.0 * decision.current_cost
        {
            decision.returning += 1;
            return false;
        }
        true
    }

    /// The decision in one call, asking `capacity_of` for each host in turn (`None`: no answer).
    pub fn decide(
        &mut self,
        subject: &Subject<'_>,
        gates: &Gates<'_>,
        mut capacity_of: impl FnMut(HostId) -> Option<Capacity>,
    ) -> Decision {
        let mut search = self.search(subject, gates);
        while let Some(h) = search.next_query() {
            let answer = capacity_of(h);
            search.answer(h, answer.as_ref());
        }
        search.finish()
    }
}

/// A decision in progress, waiting for capacity answers one host at a time.
///
/// Hosts are asked in order of benefit, highest first, so the first host with room is the best
/// destination among those with room; the thesis asks in order of cost contribution and takes the
/// first fit, which is never better. When a partner's host cannot take u, up to
/// `gates.rack_alternates` other hosts of that rack join the queue: every host of a rack is at the
/// same level from that partner, so they differ only in where u's other partners run; they are
/// ranked by their exact benefit (ties by host id) and only those above `c_m` are kept.
pub struct Search<'a, 't> {
    decider: &'a mut Decider<'t>,
    subject: &'a Subject<'a>,
    gates: &'a Gates<'a>,
    next: usize,
    decision: Decision,
    done: bool,
}

impl Search<'_, '_> {
    /// The candidates this search will ask, best first (grows when alternates join).
    pub fn queue(&self) -> &[Candidate] {
        &self.decider.queue
    }

    /// The host whose capacity the search needs next, or `None` when it is decided.
    pub fn next_query(&self) -> Option<HostId> {
        if self.done {
            return None;
        }
        self.decider.queue.get(self.next).map(|c| c.host)
    }

    /// The candidate an answer from `host` is for, counted as asked; `None` when the search
    /// is decided or waits for another host.
    fn take_answer(&mut self, host: HostId) -> Option<Candidate> {
        let c = self.decider.queue.get(self.next).copied()?;
        if self.done || c.host != host {
            return None;
        }
        self.next += 1;
        self.decision.queries += 1;
        Some(c)
    }

    /// The capacity answer for `host` (`None`: it did not answer in time).
    pub fn answer(&mut self, host: HostId, capacity: Option<&Capacity>) {
        let Some(c) = self.take_answer(host) else {
            return;
        };
        let topo = self.decider.topo;
        let cpu = |cap: &Capacity| cpu_room(cap, self.subject.cpu_cores, self.gates.max_cpu_load);
        match capacity {
            Some(cap) if room_for(topo.host(host), cap, self.subject.memory_mib) && cpu(cap) => {
                self.decision.migration_cost =
                    self.gates.migration_cost_to(topo, self.subject.host, host);
                self.decision.outcome = Outcome::Migrate {
                    to: host,
                    benefit: c.benefit,
                    via: c.via,
                };
                self.done = true;
                return;
            }
            Some(cap) => {
                self.decision.full += 1;
                if room_for(topo.host(host), cap, self.subject.memory_mib) {
                    self.decision.cpu_full += 1;
                }
            }
            None => self.decision.unreachable += 1,
        }
        if c.via == Via::PartnerHost && self.gates.rack_alternates > 0 {
            self.add_alternates(host);
        }
    }

    /// `host`'s answer was that a placement rule refuses u there: the destination's re-check
    /// (docs/protocol.md, "Capacity"). Counted with the rules' refusals, not as a full host, and
    /// the search goes on as after a full host (a partner's host brings in its rack-mates, each
    /// judged again).
    pub fn refused_by_rule(&mut self, host: HostId) {
        let Some(c) = self.take_answer(host) else {
            return;
        };
        self.decision.by_rule += 1;
        // Asked best first: the first refusal is the best candidate's.
        if self.decision.destination_refusal.is_none() {
            self.decision.destination_refusal = Some(host);
        }
        if c.via == Via::PartnerHost
            && self.gates.rack_alternates > 0
            && self.add_alternates(host) == 0
        {
            // The rule may refuse the whole rack: try the racks next to it.
            self.add_pod_alternates(host);
        }
    }

    /// Adds up to `rack_alternates` hosts of `full`'s rack; how many were admitted.
    fn add_alternates(&mut self, full: HostId) -> usize {
        let d = &mut *self.decider;
        let rack = d.rack_of[full.index()] as usize;
        let hosts = std::mem::take(&mut d.rack_hosts[rack]);
        let kept = self.add_from(&hosts, Via::PartnerRack { of: full });
        self.decider.rack_hosts[rack] = hosts;
        kept
    }

    /// Adds up to `rack_alternates` hosts of the racks beside `refused`'s (under the same
    /// parent switch), best benefit first; how many were admitted.
    fn add_pod_alternates(&mut self, refused: HostId) -> usize {
        let d = &*self.decider;
        let rack = d.rack_of[refused.index()] as usize;
        let hosts: Vec<HostId> = d.sibling_racks[rack]
            .iter()
            .flat_map(|&r| d.rack_hosts[r as usize].iter().copied())
            .collect();
        self.add_from(&hosts, Via::PartnerPod { of: refused })
    }

    fn add_from(&mut self, hosts: &[HostId], via: Via) -> usize {
        let d = &mut *self.decider;
        let current = self.subject.host;
        let mut found = std::mem::take(&mut d.alternates);
        found.clear();
        for &h in hosts {
            if h == current || d.seen.contains(&h) {
                continue;
            }
            found.push(Candidate {
                host: h,
                contribution: 0.0,
                benefit: d.benefit(current, h, self.subject.partners),
                via,
            });
        }
        let gates = self.gates;
        found.sort_by(|a, b| {
            gates
                .gain(d.topo, current, b)
                .total_cmp(&gates.gain(d.topo, current, a))
                .then(a.host.cmp(&b.host))
        });
        let mut kept = 0;
        for &c in &found {
            if kept == self.gates.rack_alternates {
                break;
            }
            d.seen.push(c.host);
            if Decider::admit(&mut self.decision, self.gates, d.topo, current, &c) {
                // Keep the unasked part of the queue in order of gain.
                let tail = &d.queue[self.next..];
                let gain = |q: &Candidate| self.gates.gain(d.topo, current, q);
                let at = self.next + tail.partition_point(|q| gain(q) >= gain(&c));
                d.queue.insert(at, c);
                kept += 1;
            }
        }
        d.alternates = found;
        kept
    }

    /// The decision, as far as the answers went.
    pub fn finish(self) -> Decision {
        let mut d = self.decision;
        if !self.done {
            // Hosts never asked count as not answering.
            d.unreachable += self.decider.queue.len().saturating_sub(self.next) as u32;
            d.outcome = if d.full + d.unreachable > 0 {
                Outcome::NoCapacity
            } else if d.in_maintenance + d.returning + d.by_rule > 0 {
                Outcome::Excluded
            } else {
                Outcome::NoBenefit
            };
        }
        d
    }
}

pub mod group;

#[cfg(test)]
mod tests;
