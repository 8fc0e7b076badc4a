//! One policy's run: the token goes round the VMs for a number of rounds; each holder decides
//! with the shared decision code, migrates through the in-memory hypervisor, and the token walks
//! on through the daemon's own turn machine (`token::walk`), every VM at one simulated holder,
//! so a hand-off is a direct call. Records the cost after every token step.
//!
//! With the scenario's rules on, each decision's `RuleCheck` is built from the simulated
//! placement, the in-memory hypervisor re-checks every move as a destination would (a refusal
//! there means the decision's filter missed something, and is counted), and a move happens only
//! inside a migration window of its source host and within the budgets, counted in simulated
//! time. Outside a window the decision is still made, as the daemon does.

use super::Scenario;
use super::messages::{self, Counts, Wire};
use crate::cost::{self, Link, MoveCharge, PartnerTraffic};
use crate::daemon::history::{CooldownPolicy, History};
use crate::decide::group::{GroupOptions, GroupPlan, GroupView, PlannedMove};
use crate::decide::{Decider, Gates, Outcome, Subject};
use crate::hypervisor::memory::{MemoryCluster, MemoryHost, synthetic_vm};
use crate::hypervisor::{Capacity, Destination, Hypervisor, MigrationParams};
use crate::rules::{self, Budget, Rules};
use crate::token::Neighbour;
use crate::token::walk::{Action, Input, TurnMachine};
use crate::topology::HostId;
use scored_proto::{PolicyKind, Token, VmId};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one policy's run produced.
#[derive(Clone, Debug)]
pub struct PolicyRun {
    pub policy: PolicyKind,
    /// `c_m` used, absolute (benefit units).
    pub migration_cost: f64,
    /// Eq. 3.1 after each token step (one step = one VM's turn).
    pub costs: Vec<f64>,
    /// Where each VM ended.
    pub placement: Vec<HostId>,
    pub migrations: u64,
    /// Bytes the migrations sent (each VM's forecast, `Scenario::migration_bytes`).
    pub migrated_bytes: f64,
    /// VMs that migrated at least once.
    pub vms_moved: u64,
    /// VMs that at some point migrated back to a host they had left.
    pub moved_back: u64,
    /// Migrations whose benefit was not positive or (with `verify_moves`) that did not lower the
    /// recomputed cost: must stay 0.
    pub bad_moves: u64,
    /// Decisions by outcome: migrate, no-benefit, no-capacity, no-traffic, excluded (by the
    /// maintenance, return or placement-rule gates, or the destination's re-check), outside a
    /// migration window, over a budget, cooling down (no decision: the turn is sat out).
    pub outcomes: [u64; 8],
    /// Moves the in-memory hypervisor's rule re-check refused: must stay 0 (the decision's
    /// filter already applies every rule).
    pub refused_by_rule: u64,
    /// Pairs of group members whose final placement breaks their rule (the scenario's rules,
    /// judged even when the run ignored them).
    pub violations: u64,
    /// Capacity queries the decisions sent.
    pub capacity_queries: u64,
    /// Largest relative gap seen between the step-by-step cost and a full recomputation.
    pub drift: f64,
    /// What the daemons' protocol would have sent for these token steps.
    pub messages: Counts,
    /// Group moves made (with `RunOptions::group`).
    pub group: GroupStats,
}

/// What the group moves did in a run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GroupStats {
    /// Decisions carried out as a group move (each counted once in `outcomes`' migrate slot).
    pub decisions: u64,
    /// Their moves: the group's members and the VMs they sent out of full hosts.
    pub moves: u64,
    pub evictions: u64,
    /// Group plans built (a destination rack surveyed), and the hosts other than the holder's
    /// the group decisions asked for partner lists, residents or room.
    pub plans: u64,
    pub hosts_asked: u64,
}

impl PolicyRun {
    pub fn final_cost(&self) -> f64 {
        self.costs.last().copied().unwrap_or(0.0)
    }
}

/// Options of a run that are not the scenario.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    pub policy: PolicyKind,
    /// The constant `c_m` (with `per_move`, the floor under each move's own).
    pub migration_cost: f64,
    /// `c_m` as this fraction of the deciding VM's current cost when that is larger than the
    /// constant (`[decision] migration_cost_fraction`, the daemon's rule; 0: the constant).
    pub migration_cost_fraction: f64,
    /// Charge each move its own migration traffic on its path (`cost::MoveCharge`), spread
    /// over this many seconds, plus a disruption charge; `None`: the constant alone.
    pub per_move: Option<PerMove>,
    pub rack_alternates: usize,
    pub return_margin: f64,
    /// Keep the per-step cost series (off for c_m sweeps).
    pub record_steps: bool,
    /// Recompute Eq. 3.1 in full after every migration and count any that did not lower it
    /// (tests; O(pairs) per migration).
    pub verify_moves: bool,
    /// Apply the scenario's placement rules (groups, windows, budgets); off: the same scenario
    /// as if no rule existed, to measure what the rules cost.
    pub rules: bool,
    /// The daemon's cooldown (`decision.cooldown_*`, `daemon::history`) on the scenario's clock:
    /// a VM that moved sits its turns out until the cooldown is over, as in the daemon. `None`:
    /// a VM may move at every turn (S-CORE's rule, and the simulator's figures).
    pub cooldown: Option<CooldownPolicy>,
    /// Group moves (`decide::group`) beside S-CORE's single moves: at each turn the better of
    /// the two by benefit less migration costs is carried out. `None`: S-CORE's rule alone.
    pub group: Option<GroupOptions>,
}

/// `[decision] migration_cost_model = "forecast"` in the simulator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerMove {
    pub horizon_s: f64,
    pub disruption: f64,
}

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// Migrations in simulated time, for the budgets: each VM's in the last day, each host's (out
/// or in) in the last hour.
struct Spent {
    vm: Vec<VecDeque<i64>>,
    host: Vec<VecDeque<i64>>,
}

impl Spent {
    fn count(times: &mut VecDeque<i64>, since: i64) -> u32 {
        while times.front().is_some_and(|&t| t <= since) {
            times.pop_front();
        }
        times.len() as u32
    }

    /// Whether the budget allows moving VM `vm` from `from` to `to` at `now`, after `before`:
    /// the moves of the same decision that come first (not recorded yet).
    fn allows(
        &mut self,
        budget: &Budget,
        (vm, from, to): (usize, HostId, HostId),
        now: i64,
        before: &[PlannedMove],
    ) -> bool {
        let touching =
            |h: HostId| before.iter().filter(|m| m.from == h || m.to == h).count() as u32;
        let v = Self::count(&mut self.vm[vm], now - DAY_MS);
        let f = Self::count(&mut self.host[from.index()], now - HOUR_MS) + touching(from);
        let t = Self::count(&mut self.host[to.index()], now - HOUR_MS) + touching(to);
        budget.allows(v, (from, f), Some((to, t))).is_ok()
    }

    fn record(&mut self, vm: usize, from: HostId, to: HostId, now: i64) {
        self.vm[vm].push_back(now);
        self.host[from.index()].push_back(now);
        self.host[to.index()].push_back(now);
    }
}

/// Where the VMs are and what their moves left behind: every migration of a run, single or part
/// of a group, goes through [`Books::moved`].
struct Books {
    loc: Vec<HostId>,
    per_host: Vec<u32>,
    /// VMs on each host by dense index (kept with group moves, which ask for residents).
    residents: Vec<Vec<u32>>,
    previous: Vec<Vec<HostId>>,
    moved: Vec<bool>,
    came_back: Vec<bool>,
    history: History,
    spent: Spent,
    /// Windows or budgets apply (`spent` is kept).
    gated: bool,
    /// The daemon's cooldown applies (`history` is kept).
    cooldown: bool,
    first_id: u32,
}

/// How a group move was carried out.
enum Carried {
    /// Every move done.
    Done,
    /// A destination's rule re-check refused a move: the moves before it were undone, but for
    /// those in the list (a move back refused too), which stand.
    Refused(Vec<PlannedMove>),
    /// A move would exceed a migration budget: nothing was done.
    Budget,
}

impl Books {
    fn new(sc: &Scenario, gated: bool, group: bool, cooldown: bool) -> Books {
        let n = sc.vms();
        let hosts = sc.topology.hosts().len();
        let mut residents = vec![Vec::new(); if group { hosts } else { 0 }];
        if group {
            for (i, h) in sc.initial.iter().enumerate() {
                residents[h.index()].push(i as u32);
            }
        }
        Books {
            loc: sc.initial.clone(),
            per_host: messages::vms_per_host(&sc.topology, &sc.initial),
            residents,
            previous: vec![Vec::new(); n],
            moved: vec![false; n],
            came_back: vec![false; n],
            history: History::new(),
            spent: Spent {
                vm: vec![VecDeque::new(); if gated { n } else { 0 }],
                host: vec![VecDeque::new(); if gated { hosts } else { 0 }],
            },
            gated,
            cooldown,
            first_id: sc.ids[0].0,
        }
    }

    fn index(&self, vm: VmId) -> Option<usize> {
        let i = vm.0.checked_sub(self.first_id)? as usize;
        (i < self.loc.len()).then_some(i)
    }

    /// Where a VM of the scenario runs.
    fn host_of(&self, vm: VmId) -> Option<HostId> {
        self.index(vm).map(|i| self.loc[i])
    }

    /// Records migration `m`, done at `at`.
    fn moved(
        &mut self,
        sc: &Scenario,
        run: &mut PolicyRun,
        counts: &mut Counts,
        wire: &Wire,
        m: &PlannedMove,
        at: (i64, Instant),
    ) {
        let Some(i) = self.index(m.vm) else { return };
        let (from, to) = (m.from, m.to);
        self.per_host[from.index()] -= 1;
        self.per_host[to.index()] += 1;
        counts.migration(
            wire,
            m.vm,
            self.per_host[from.index()] as usize,
            self.per_host[to.index()] as usize,
        );
        if self.gated {
            self.spent.record(i, from, to, at.0);
        }
        if self.cooldown {
            // The simulated migration takes no time: the cooldown is its base.
            self.history.record(m.vm, from, Duration::ZERO, at.1);
        }
        self.loc[i] = to;
        if !self.residents.is_empty() {
            self.residents[from.index()].retain(|&v| v as usize != i);
            self.residents[to.index()].push(i as u32);
        }
        run.migrations += 1;
        run.migrated_bytes += sc.migration_bytes[i];
        if !self.moved[i] {
            self.moved[i] = true;
            run.vms_moved += 1;
        }
        let prev = &mut self.previous[i];
        if prev.contains(&to) && !self.came_back[i] {
            self.came_back[i] = true;
            run.moved_back += 1;
        }
        prev.retain(|&h| h != from && h != to);
        prev.insert(0, from);
        prev.truncate(MEMORY);
    }

    /// The step-by-step cost after moves that gained `benefit` (checked against Eq. 3.1
    /// recomputed with `verify_moves`).
    fn verified(
        &self,
        sc: &Scenario,
        round: usize,
        cost: f64,
        benefit: f64,
        verify: bool,
        run: &mut PolicyRun,
    ) -> f64 {
        if benefit <= 0.0 {
            run.bad_moves += 1;
        }
        if !verify {
            return cost - benefit;
        }
        let exact = sc.cost(round, &self.loc);
        if exact >= cost || ((cost - exact) - benefit).abs() > 1e-9 * cost {
            run.bad_moves += 1;
        }
        exact
    }

    /// Carries out `plan` on the in-memory hypervisor in its order, as a whole: within the
    /// migration budgets or not at all, undone if a destination refuses a move.
    fn carry_out(
        &mut self,
        plan: &GroupPlan,
        budget: Option<&Budget>,
        now: i64,
        hosts: &[MemoryHost],
        dests: &[Destination],
        params: &MigrationParams,
    ) -> Carried {
        if let Some(b) = budget {
            for (k, m) in plan.moves.iter().enumerate() {
                let Some(i) = self.index(m.vm) else { continue };
                if !self
                    .spent
                    .allows(b, (i, m.from, m.to), now, &plan.moves[..k])
                {
                    return Carried::Budget;
                }
            }
        }
        for (k, m) in plan.moves.iter().enumerate() {
            if hosts[m.from.index()]
                .migrate(m.vm, &dests[m.to.index()], params)
                .is_err()
            {
                let stuck = plan.moves[..k]
                    .iter()
                    .rev()
                    .filter(|d| {
                        hosts[d.to.index()]
                            .migrate(d.vm, &dests[d.from.index()], params)
                            .is_err()
                    })
                    .copied()
                    .collect();
                return Carried::Refused(stuck);
            }
        }
        Carried::Done
    }
}

/// A group decision's view of the simulated data centre: what the daemon would ask its peers,
/// answered from the run's books, with the hosts it would have asked counted.
struct SimView<'a> {
    sc: &'a Scenario,
    opt: &'a RunOptions,
    rules: Option<&'a Rules>,
    books: &'a Books,
    hosts: &'a [MemoryHost],
    /// The deciding VM's host: what it knows needs no message.
    holder: HostId,
    /// The round whose traffic the decision sees.
    round: usize,
    now: i64,
    instant: Instant,
    asked: Vec<HostId>,
}

impl SimView<'_> {
    fn ask(&mut self, host: HostId) {
        if host != self.holder && !self.asked.contains(&host) {
            self.asked.push(host);
        }
    }
}

impl GroupView for SimView<'_> {
    fn host_of(&self, vm: VmId) -> Option<HostId> {
        self.books.host_of(vm)
    }

    fn partners(&mut self, vm: VmId, out: &mut Vec<Link>) {
        let Some(i) = self.books.index(vm) else {
            return;
        };
        self.ask(self.books.loc[i]);
        out.extend(
            self.sc.rates[self.round]
                .of(i)
                .iter()
                .map(|&(j, rate)| Link {
                    vm: self.sc.ids[j as usize],
                    host: self.books.loc[j as usize],
                    rate,
                }),
        );
    }

    fn residents(&mut self, host: HostId, out: &mut Vec<VmId>) {
        self.ask(host);
        out.extend(
            self.books.residents[host.index()]
                .iter()
                .map(|&i| self.sc.ids[i as usize]),
        );
    }

    fn capacity(&mut self, host: HostId) -> Option<Capacity> {
        self.ask(host);
        self.hosts[host.index()].capacity().ok()
    }

    fn memory_mib(&self, _vm: VmId) -> u64 {
        self.sc.vm_memory_mib
    }

    fn movable(&mut self, vm: VmId) -> bool {
        let Some(i) = self.books.index(vm) else {
            return false;
        };
        let cooling = self.opt.cooldown.is_some_and(|c| {
            self.books
                .history
                .cooldown_until(vm, &c, self.instant)
                .is_some()
        });
        let window = self
            .rules
            .is_none_or(|r| r.window(self.books.loc[i], self.now).allows());
        !cooling && window
    }

    fn admits(
        &mut self,
        vm: VmId,
        from: HostId,
        to: HostId,
        placed: &dyn Fn(VmId) -> Option<HostId>,
    ) -> bool {
        let Some(i) = self.books.index(vm) else {
            return false;
        };
        if self.opt.return_margin > 0.0 && self.books.previous[i].contains(&to) {
            return false;
        }
        let Some(r) = self.rules else { return true };
        let books = self.books;
        let check = r.check_located(&self.sc.topology, vm, |m| {
            placed(m).or_else(|| books.host_of(m))
        });
        check.allows(from, to).is_ok()
    }

    fn migration_cost(&mut self, vm: VmId, from: HostId, to: HostId, partners: &[Link]) -> f64 {
        let Some(i) = self.books.index(vm) else {
            return f64::INFINITY;
        };
        let topo = &self.sc.topology;
        let own = cost::cost_at(topo, from, partners.iter().map(|l| (l.host, l.rate)));
        let constant = cost::migration_cost(
            self.opt.migration_cost,
            self.opt.migration_cost_fraction,
            own,
        );
        let charge = self.opt.per_move.map(|m| MoveCharge {
            bytes: self.sc.migration_bytes[i],
            horizon_s: m.horizon_s,
            disruption: m.disruption,
        });
        cost::move_cost(topo, constant, charge.as_ref(), from, to)
    }
}

/// The one holder every VM's turn happens at: the engine plays all hosts at once.
const HOLDER: HostId = HostId(0);

/// `PolicyRun::outcomes`' slot of the turns sat out cooling down.
pub const COOLING: usize = 7;

/// How many hosts a VM remembers having left.
const MEMORY: usize = 4;

pub fn run(sc: &Scenario, opt: &RunOptions, mut progress: impl FnMut(u64)) -> PolicyRun {
    let topo = &sc.topology;
    let n = sc.ids.len();
    let cluster = MemoryCluster::new(topo);
    for (i, &h) in sc.initial.iter().enumerate() {
        cluster
            .add_vm(h, synthetic_vm(sc.ids[i], sc.vm_memory_mib))
            .expect("the scenario's placement respects capacity");
    }
    let hosts: Vec<MemoryHost> = topo.hosts().iter().map(|h| cluster.host(h.id)).collect();
    let dests: Vec<Destination> = topo
        .hosts()
        .iter()
        .map(|h| Destination {
            host: h.name.clone(),
            libvirt_uri: None,
            migration_uri: None,
        })
        .collect();
    let params = MigrationParams::default();
    let rules = opt.rules.then_some(&*sc.rules);
    if opt.rules && !sc.rules.is_empty() {
        cluster.set_rules(Some((sc.rules.clone(), Arc::new(topo.clone()))));
    }
    let gated = rules.filter(|r| !r.windows.is_empty() || r.budget != Budget::default());
    let token = Token::new(0, opt.policy, sc.ids.clone());
    let mut decider = Decider::new(topo);
    let wire = Wire::new(topo, sc.ids[n - 1], sc.vm_memory_mib);
    let mut counts = Counts::new(topo, &wire, &sc.initial);
    let mut books = Books::new(
        sc,
        gated.is_some(),
        opt.group.is_some(),
        opt.cooldown.is_some(),
    );
    let max_candidates = messages::max_candidates();
    let mut batch: Vec<HostId> = Vec::with_capacity(max_candidates);
    let mut partner_hosts: Vec<(HostId, VmId)> = Vec::new();
    let mut located: Vec<VmId> = Vec::new();
    // Where the token really is: the host of the last VM whose turn it was (the engine plays
    // every host, so the walk itself never leaves `HOLDER`).
    let mut at: Option<HostId> = None;
    let mut token_round = u32::MAX;
    let mut partners: Vec<PartnerTraffic> = Vec::new();
    let origin = Instant::now();
    let turn_ms = sc.params.clock.turn_ms.max(0) as u64;

    let mut run = PolicyRun {
        policy: opt.policy,
        migration_cost: opt.migration_cost,
        costs: Vec::with_capacity(if opt.record_steps { sc.rounds() * n } else { 0 }),
        placement: Vec::new(),
        migrations: 0,
        migrated_bytes: 0.0,
        vms_moved: 0,
        moved_back: 0,
        bad_moves: 0,
        outcomes: [0; 8],
        refused_by_rule: 0,
        violations: 0,
        capacity_queries: 0,
        drift: 0.0,
        messages: Counts::default(),
        group: GroupStats::default(),
    };

    let mut round = 0usize;
    let mut cost = sc.cost(0, &books.loc);
    let (mut machine, mut action) =
        TurnMachine::start(HOLDER, token, &[]).expect("ids are sorted and unique");
    let total = (sc.rounds() * n).min(sc.params.max_turns.unwrap_or(usize::MAX));
    for step in 0..total {
        // Between two decisions: every VM runs at the one simulated holder; a new round's
        // statistics are gathered from the simulated placement.
        loop {
            match &action {
                &Action::Locate(vm) => {
                    // A step: the holder beats its heartbeat. A VM on another host than the
                    // holder's is a hand-off; the receiver beats on arrival and at its own
                    // first step.
                    counts.heartbeats.add(1, wire.heartbeat());
                    let host = books
                        .host_of(vm)
                        .expect("the token names the scenario's VMs");
                    if at.is_some_and(|h| h != host) {
                        if machine.token().round != token_round {
                            token_round = machine.token().round;
                            counts.token_frame = wire.token(machine.token());
                        }
                        counts.handoffs.add(2, counts.token_frame + wire.token_ack);
                        counts.heartbeats.add(2, 2 * wire.heartbeat());
                    }
                    at = Some(host);
                    action = machine.on(Input::Located {
                        host: Some(HOLDER),
                        stopping: false,
                    })
                }
                // No statistics for a round past the last: the run is over.
                Action::GatherStatistics if (machine.token().round as usize) < sc.rounds() => {
                    counts.heartbeats.add(1, wire.heartbeat());
                    counts.statistics(&wire, &books.per_host, at.unwrap_or(sc.initial[0]));
                    let stats =
                        expected_benefits(sc, round, &books.loc, &mut decider, &mut partners);
                    action = machine.on(Input::Statistics(stats));
                }
                _ => break,
            }
        }
        let Action::Decide(vm) = action else { break };
        let i = books.index(vm).expect("the token names the scenario's VMs");
        let rates = &sc.rates[round];
        let now = sc.params.clock.at(step);
        // The daemon's instants for the cooldown: the scenario's clock from an arbitrary origin.
        let instant = origin + Duration::from_millis((step as u64).saturating_mul(turn_ms));
        let cooling = opt
            .cooldown
            .is_some_and(|c| books.history.cooldown_until(vm, &c, instant).is_some());
        if cooling {
            run.outcomes[COOLING] += 1;
        } else {
            partners.clear();
            partners.extend(rates.of(i).iter().map(|&(j, rate)| PartnerTraffic {
                host: books.loc[j as usize],
                rate,
            }));
            let subject = Subject {
                vm,
                host: books.loc[i],
                memory_mib: sc.vm_memory_mib,
                // The simulated data centre models no CPU.
                cpu_cores: 0.0,
                partners: &partners,
            };
            let check = rules.map(|r| r.check_located(topo, vm, |m| books.host_of(m)));
            let gates = Gates {
                pinned: false,
                migration_cost: cost::migration_cost(
                    opt.migration_cost,
                    opt.migration_cost_fraction,
                    cost::vm_cost(topo, books.loc[i], &partners),
                ),
                per_move: opt.per_move.map(|m| MoveCharge {
                    bytes: sc.migration_bytes[i],
                    horizon_s: m.horizon_s,
                    disruption: m.disruption,
                }),
                maintenance: &[],
                previous_hosts: &books.previous[i],
                return_margin: opt.return_margin,
                rack_alternates: opt.rack_alternates,
                max_cpu_load: 0.0,
                rules: check.as_ref().unwrap_or(&rules::NO_RULES),
            };
            // As `daemon::assess` asks: the first `max_candidates` together, then each further
            // host the search needs, at most `max_candidates` consumed.
            let mut search = decider.search(&subject, &gates);
            batch.clear();
            batch.extend(search.queue().iter().take(max_candidates).map(|c| c.host));
            let mut sent = batch.len();
            let mut asked = 0;
            while let Some(h) = search.next_query() {
                if asked < max_candidates && !batch.contains(&h) {
                    sent += 1;
                }
                asked += 1;
                let answer = hosts[h.index()].capacity().ok();
                search.answer(h, answer.as_ref());
            }
            let decision = search.finish();
            counts.capacity_search(&wire, sent);
            counts.decisions += 1;
            partner_hosts.clear();
            partner_hosts.extend(
                rates
                    .of(i)
                    .iter()
                    .map(|&(j, _)| (books.loc[j as usize], sc.ids[j as usize]))
                    .filter(|&(h, _)| h != books.loc[i]),
            );
            partner_hosts.sort_unstable();
            for group in partner_hosts.chunk_by(|a, b| a.0 == b.0) {
                located.clear();
                located.extend(group.iter().map(|&(_, vm)| vm));
                counts.lookups_if_verified.add(2, wire.lookup(&located));
            }
            run.capacity_queries += decision.queries as u64;
            let mut slot = match decision.outcome {
                Outcome::Migrate { .. } => 0,
                Outcome::NoBenefit => 1,
                Outcome::NoCapacity => 2,
                Outcome::NoTraffic | Outcome::Pinned => 3,
                Outcome::Excluded => 4,
            };
            if let (Outcome::Migrate { to, .. }, Some(r)) = (decision.outcome, gated) {
                if !r.window(books.loc[i], now).allows() {
                    slot = 5;
                } else if !books
                    .spent
                    .allows(&r.budget, (i, books.loc[i], to), now, &[])
                {
                    slot = 6;
                }
            }
            let single = match decision.outcome {
                Outcome::Migrate { benefit, .. } if slot == 0 => benefit - decision.migration_cost,
                _ => 0.0,
            };
            let plan = match opt.group {
                Some(g) => {
                    let mut view = SimView {
                        sc,
                        opt,
                        rules,
                        books: &books,
                        hosts: &hosts,
                        holder: books.loc[i],
                        round,
                        now,
                        instant,
                        asked: Vec::new(),
                    };
                    let plan = decider.plan_group(&mut view, vm, &g, single.max(0.0));
                    run.group.plans += plan.is_some() as u64;
                    run.group.hosts_asked += view.asked.len() as u64;
                    plan.filter(|p| p.worth_it() && p.net() > single)
                }
                None => None,
            };
            let at = (now, instant);
            if let Some(plan) = plan {
                match books.carry_out(
                    &plan,
                    gated.map(|r| &r.budget),
                    now,
                    &hosts,
                    &dests,
                    &params,
                ) {
                    Carried::Done => {
                        slot = 0;
                        run.group.decisions += 1;
                        for m in &plan.moves {
                            books.moved(sc, &mut run, &mut counts, &wire, m, at);
                            run.group.moves += 1;
                            run.group.evictions += m.evicted as u64;
                        }
                        cost = books.verified(
                            sc,
                            round,
                            cost,
                            plan.benefit,
                            opt.verify_moves,
                            &mut run,
                        );
                    }
                    Carried::Refused(stuck) => {
                        // The plan admits every move against the rules the destinations
                        // re-check, in its order: a refusal is a bug, and so are moves that
                        // could not be undone.
                        run.refused_by_rule += 1;
                        slot = 4;
                        if !stuck.is_empty() {
                            run.bad_moves += 1;
                            for m in &stuck {
                                books.moved(sc, &mut run, &mut counts, &wire, m, at);
                            }
                            cost = sc.cost(round, &books.loc);
                        }
                    }
                    Carried::Budget => slot = 6,
                }
            } else if let (0, Outcome::Migrate { to, benefit, .. }) = (slot, decision.outcome) {
                let from = books.loc[i];
                let done = hosts[from.index()].migrate(vm, &dests[to.index()], &params);
                if done.is_err() && rules.is_some() {
                    // Only the rule re-check can refuse: the decision asked for room first.
                    run.refused_by_rule += 1;
                    slot = 4;
                }
                if done.is_ok() {
                    let m = PlannedMove {
                        vm,
                        from,
                        to,
                        evicted: false,
                    };
                    books.moved(sc, &mut run, &mut counts, &wire, &m, at);
                    cost = books.verified(sc, round, cost, benefit, opt.verify_moves, &mut run);
                }
            }
            run.outcomes[slot] += 1;
        }
        let neighbours: Vec<Neighbour> = rates
            .of(i)
            .iter()
            .map(|&(j, rate)| Neighbour {
                vm: sc.ids[j as usize],
                level: topo.level(books.loc[i], books.loc[j as usize]),
                rate,
            })
            .collect();
        action = machine.on(Input::Decided(neighbours));
        if let Action::PaceRound(r) = action {
            counts.heartbeats.add(1, wire.heartbeat());
            // A simulated round needs no pacing: only the cost is brought to the new round's
            // traffic.
            if (r as usize) < sc.rounds() {
                let exact = sc.cost(round, &books.loc);
                run.drift = run.drift.max(((cost - exact) / exact.max(1e-300)).abs());
                round = r as usize;
                cost = sc.cost(round, &books.loc);
            }
            action = machine.on(Input::Paced { known: Vec::new() });
        }
        if opt.record_steps {
            run.costs.push(cost);
        }
        if step % 4096 == 4095 {
            progress(4096);
        }
    }
    progress((total % 4096) as u64);
    let exact = sc.cost(round, &books.loc);
    run.drift = run.drift.max(((cost - exact) / exact.max(1e-300)).abs());
    if let Some(last) = run.costs.last_mut() {
        *last = exact;
    } else {
        run.costs.push(exact);
    }
    debug_assert!(cluster.check().is_ok(), "{:?}", cluster.check());
    for (i, &h) in books.loc.iter().enumerate() {
        debug_assert_eq!(cluster.host_of(sc.ids[i]), Some(h));
    }
    if counts.token_frame == 0 {
        counts.token_frame = wire.token(machine.token());
    }
    run.messages = counts;
    run.violations = sc.rule_violations(&books.loc);
    run.placement = books.loc;
    run
}

/// The global policy's statistics at round start: each VM's best Eq. 3.2 benefit over its
/// candidates, capacity aside (what every host would report when asked).
fn expected_benefits(
    sc: &Scenario,
    round: usize,
    loc: &[HostId],
    decider: &mut Decider<'_>,
    partners: &mut Vec<PartnerTraffic>,
) -> Vec<(VmId, f64)> {
    let rates = &sc.rates[round];
    (0..sc.ids.len())
        .map(|i| {
            partners.clear();
            partners.extend(rates.of(i).iter().map(|&(j, rate)| PartnerTraffic {
                host: loc[j as usize],
                rate,
            }));
            let best = decider.best_benefit(loc[i], partners);
            (sc.ids[i], best)
        })
        .collect()
}
