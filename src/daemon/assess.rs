//! Assessment of one local VM now: its partners with their rates and hosts, the daemon's own
//! gates (cooldown, a migration not settled, a zombie, pinning), the shared S-CORE decision with capacity
//! queries to the candidate hosts, and what the result means for the turn. Also the draining
//! target and this host's cost by level.
//!
//! Moves nothing and writes nothing but logs: migration is `migration`, the record `records`.

use super::group_plan::GroupOutcome;
use super::history::CooldownPolicy;
use super::host::Daemon;
use super::journal::Figures;
use crate::config::{Config, GroupMoves, VmRef};
use crate::cost::{self, PartnerTraffic};
use crate::decide::group::GroupPlan;
use crate::decide::{self, Decider, Gates, Subject, TurnOutcome};
use crate::hypervisor::{Capacity, Vm};
use crate::p2p::{LocateOptions, PeerError, Peers};
use crate::rules::Refusal;
use crate::topology::HostId;
use scored_proto::{CapacityResponse, PlacementRequest, PlacementResponse, VmId};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Flow windows (`flows.window_s`, the rate average's time constant) a VM's traffic must have
/// been measured at its host, since it moved there, before it may move in a group move: a new
/// stream reads 63% of its rate after one window, 95% after three. Read sooner, a VM that just
/// arrived looks cold, and a plan sends it off to make room away from the partners it came
/// for (the 8-daemon cluster with group moves and no cooldown ended at a 7–9% reduction in two
/// runs of nine, against the simulator's 86%). The production cooldown (15 min) outlasts it.
pub(super) const MEASURED_WINDOWS: u32 = 3;

/// The result of assessing one VM now.
pub struct Assessment {
    pub outcome: TurnOutcome,
    pub decision: Option<decide::Decision>,
    /// Where the VM goes (or would go: dry-run, a closed window, a spent budget): the
    /// decision's destination, or a repair's.
    pub to: Option<HostId>,
    pub partners: Vec<(VmId, HostId, f64)>,
    pub detail: String,
    /// The migration forecast of the move (chosen, recommended, or held back by it).
    pub predicted: Option<Figures>,
    /// What the hypervisor reported of the migration, once one went through.
    pub actual: Option<Figures>,
    /// A group move planned at this turn that beats S-CORE's own move (`decision.group_moves`:
    /// recommended, or carried out by the turn with `act`).
    pub group: Option<GroupPlan>,
    /// Distinct hosts asked for capacity (`/scored/capacity/*`) by the search of this turn.
    pub candidates_asked: usize,
}

impl<P: Peers> Daemon<P> {
    /// Partners of `vm` with their hosts as the directory has them now, without asking any peer
    /// (statistics, metrics, `scored status`: observers must not send the cluster queries).
    pub fn cached_partners(&self, vm: VmId) -> Vec<(VmId, HostId, f64)> {
        let dir = self.peers.directory();
        self.traffic()
            .source()
            .partners(vm)
            .into_iter()
            .filter(|(p, r)| *p != vm && *r > 0.0)
            .filter_map(|(p, rate)| dir.lookup(p).map(|host| (p, host, rate)))
            .collect()
    }

    /// Partners of `vm` with their hosts and rates (those whose host is unknown are left out).
    pub async fn partners(&self, vm: VmId, verify: bool) -> Vec<(VmId, HostId, f64)> {
        self.locate_partners(vm, verify).await.0
    }

    /// Partners with their hosts, and why some could not be placed: how many may run on a host
    /// that did not answer, naming the hosts (as opposed to no host running them: a partner
    /// outside the data centre, left out).
    async fn locate_partners(
        &self,
        vm: VmId,
        verify: bool,
    ) -> (Vec<(VmId, HostId, f64)>, Option<String>) {
        let rates: Vec<(VmId, f64)> = self
            .traffic()
            .source()
            .partners(vm)
            .into_iter()
            .filter(|(p, r)| *p != vm && *r > 0.0)
            .collect();
        if rates.is_empty() {
            return (Vec::new(), None);
        }
        let ids: Vec<VmId> = rates.iter().map(|(p, _)| *p).collect();
        let options = LocateOptions {
            timeout: self.config().token.handoff_timeout(),
            verify,
            ..LocateOptions::default()
        };
        let located = self.peers.locate(&ids, options).await;
        let unplaced = located.why_uncertain("partner");
        let found = located.found;
        (
            rates
                .into_iter()
                .filter_map(|(p, r)| found.get(&p).map(|h| (p, *h, r)))
                .collect(),
            unplaced,
        )
    }

    pub(super) fn pinned(&self, vm: &Vm, config: &Config) -> bool {
        vm.pinned
            || self.operator().pinned(vm.id)
            || config.placement.pinned.iter().any(|r| match r {
                VmRef::Id(id) => *id == vm.id,
                VmRef::Name(n) => *n == vm.name,
            })
    }

    /// What the ledger says of `vm` now: until when it cools down, the hosts it recently left
    /// (the return gate), and whether a migration of it is not settled.
    pub(super) fn rest(
        &self,
        vm: VmId,
        config: &Config,
        now: Instant,
    ) -> (Option<Instant>, Vec<HostId>, bool) {
        let cooldown = CooldownPolicy::of(&config.decision);
        let history_policy = CooldownPolicy {
            window: Duration::from_secs(config.decision.history_s),
            ..cooldown
        };
        let ledger = self.ledger();
        let (until, prev) = ledger.rest(
            vm,
            &cooldown,
            &history_policy,
            config.decision.history_hosts as usize,
            now,
        );
        (until, prev, ledger.busy(vm))
    }

    /// Whether this daemon's own gates let `vm` move now as part of a group move: not pinned,
    /// not cooling down, no migration of it unsettled, not running twice (a zombie), its
    /// traffic here measured long enough to be its own ([`MEASURED_WINDOWS`]). The host's
    /// window and maintenance are the caller's to add.
    pub(super) fn may_move(&self, vm: &Vm, config: &Config, now: Instant) -> bool {
        self.gate(vm, config, now).is_ok()
    }

    /// [`Self::may_move`], saying which gate holds the VM.
    pub(super) fn gate(&self, vm: &Vm, config: &Config, now: Instant) -> Result<(), String> {
        if self.pinned(vm, config) {
            return Err("it is pinned".into());
        }
        let (cooling, _, unsettled) = self.rest(vm.id, config, now);
        if unsettled {
            return Err("a migration of it is not settled".into());
        }
        if let Some(until) = cooling {
            let left = until.saturating_duration_since(now).as_secs();
            return Err(format!("it cools down for {left} s more"));
        }
        if self.zombie_hosts(vm.id).is_some() {
            return Err("it runs on two hosts at once (zombie)".into());
        }
        let measuring = Duration::from_secs(config.flows.window_s) * MEASURED_WINDOWS;
        if let Some(at) = self.ledger().last_move(vm.id)
            && now.saturating_duration_since(at) < measuring
        {
            return Err(format!(
                "its traffic here is still being measured ({:.1} s since it moved, {} s needed)",
                now.saturating_duration_since(at).as_secs_f64(),
                measuring.as_secs()
            ));
        }
        Ok(())
    }

    /// Decides for one local VM now: the full S-CORE decision with capacity queries, and the
    /// daemon's own gates (cooldown, unsettled migration). Moves nothing.
    pub async fn assess(&self, vm: &Vm) -> Assessment {
        let config = self.config();
        let now = Instant::now();
        let (cooling, previous, unsettled) = self.rest(vm.id, &config, now);
        // Cached locations (kept right by migration announcements, refreshed on a miss): a
        // stale one costs a suboptimal move at worst, while a verified lookup under load
        // drops exactly the partners whose hosts answer slowly.
        let (partners, unplaced) = self.locate_partners(vm.id, false).await;
        let pt: Vec<PartnerTraffic> = partners
            .iter()
            .map(|&(_, host, rate)| PartnerTraffic { host, rate })
            .collect();
        let current = cost::vm_cost(&self.topo, self.me, &pt);
        let early = |outcome, detail: String| Assessment {
            outcome,
            decision: None,
            to: None,
            partners: partners.clone(),
            detail,
            predicted: None,
            actual: None,
            group: None,
            candidates_asked: 0,
        };
        if unsettled {
            return early(
                TurnOutcome::Busy,
                "a migration of this VM is not settled".into(),
            );
        }
        if let Some(hosts) = self.zombie_hosts(vm.id) {
            // Two copies: whichever moves, the other stays, and any decision rests on a
            // location that is half wrong. The operator removes one (`scored status`).
            let names: Vec<String> = hosts.iter().map(|h| self.host_name(*h)).collect();
            return early(
                TurnOutcome::Zombie,
                format!(
                    "runs on {} at once (zombie); no decision until one copy is gone",
                    names.join(" and ")
                ),
            );
        }
        if let Some(why) = unplaced {
            // Deciding without a partner's location could move the VM away from it.
            return early(TurnOutcome::Busy, format!("{why}; deferred"));
        }
        if let Some(until) = cooling {
            let left = until.saturating_duration_since(now).as_secs();
            return early(
                TurnOutcome::Cooldown,
                format!("cooling down for {left} s more"),
            );
        }
        let placement = self.rule_inputs(vm.id).await;
        if let Some(why) = &placement.unplaced {
            // Deciding without a group member's location could put two replicas together.
            return early(TurnOutcome::Busy, format!("{why}; deferred"));
        }
        let check = placement.check(&self.topo, vm.id);
        let gates = Gates {
            pinned: self.pinned(vm, &config),
            migration_cost: config.decision.effective_migration_cost(current),
            per_move: self.move_charge(vm, &config),
            maintenance: &[],
            previous_hosts: &previous,
            return_margin: config.decision.return_margin_fraction,
            rack_alternates: if config.decision.rack_fallback { 3 } else { 0 },
            max_cpu_load: config.decision.max_destination_cpu_load,
            rules: &check,
        };
        let subject = Subject {
            vm: vm.id,
            host: self.me,
            memory_mib: vm.memory_mib,
            cpu_cores: self.cpu_cores(vm.id),
            partners: &pt,
        };
        let mut decider = Decider::new(&self.topo);
        let mut search = decider.search(&subject, &gates);
        // The request names the VM, so each destination judges it by the rules with what it
        // knows better and holds room for it; a recommendation moves nothing and holds none.
        let req = PlacementRequest {
            memory_mib: vm.memory_mib,
            moving: (!config.decision.dry_run).then(|| self.moving_vm(vm)),
        };
        let timeout = config.token.handoff_timeout();
        let max = config.decision.max_candidates as usize;
        // Ask the first candidates all at once: the search consumes the answers in its own
        // order, so the result is the same as asking one by one, in one round trip instead of
        // several. Hosts that join later (rack alternates) are asked when the search needs them.
        let first: Vec<HostId> = search.queue().iter().take(max).map(|c| c.host).collect();
        let mut candidates_asked: HashSet<HostId> = first.iter().copied().collect();
        let mut answers = self
            .peers
            .query_capacities(&first, req.clone(), timeout)
            .await;
        // Hosts whose answer timed out are asked once more, together, as a hand-off is retried:
        // on a loaded machine one request can go unanswered for the whole timeout and the next
        // pass at once, and a missed best move costs a round or more. At most one more timeout;
        // refusals and unreachable hosts are final.
        let timed_out: Vec<HostId> = answers
            .iter()
            .filter(|(_, r)| matches!(r, Err(PeerError::Timeout { .. })))
            .map(|(h, _)| *h)
            .collect();
        if !timed_out.is_empty() {
            tracing::debug!(
                hosts = timed_out.len(),
                "capacity requests timed out; asking once more"
            );
            answers.retain(|(_, r)| !matches!(r, Err(PeerError::Timeout { .. })));
            answers.extend(
                self.peers
                    .query_capacities(&timed_out, req.clone(), timeout)
                    .await,
            );
        }
        let mut known: HashMap<HostId, Result<Option<Capacity>, String>> = answers
            .into_iter()
            .map(|(h, r)| (h, self.capacity_answer(h, r)))
            .collect();
        // The sentence of each destination that refused the VM by a rule of its own.
        let mut refusals: HashMap<HostId, String> = HashMap::new();
        let mut asked = 0;
        while let Some(h) = search.next_query() {
            if asked >= max {
                break;
            }
            asked += 1;
            let cap = match known.remove(&h) {
                Some(c) => c,
                None => {
                    candidates_asked.insert(h);
                    let r = self.peers.query_capacity(h, req.clone(), timeout).await;
                    self.capacity_answer(h, r)
                }
            };
            match cap {
                Ok(cap) => search.answer(h, cap.as_ref()),
                Err(rule) => {
                    search.refused_by_rule(h);
                    refusals.insert(h, rule);
                }
            }
        }
        let d = search.finish();
        let mut outcome = TurnOutcome::of(&d.outcome, config.decision.dry_run);
        let mut detail = format!(
            "asked {} host(s): {} full, {} no answer; {} excluded as a recent host",
            d.queries, d.full, d.unreachable, d.returning
        );
        if d.cpu_full > 0 {
            detail = format!(
                "{detail}; {} of the full without CPU for its {:.2} core(s) under load {}",
                d.cpu_full, subject.cpu_cores, config.decision.max_destination_cpu_load
            );
        }
        if let Some(r) = &d.refusal {
            detail = format!(
                "{detail}; {} refused by a rule: {}",
                d.by_rule,
                self.explain(&placement.rules, r)
            );
        }
        if let Some(rule) = d.destination_refusal.and_then(|h| refusals.get(&h)) {
            let h = d
                .destination_refusal
                .map(|h| self.host_name(h))
                .unwrap_or_default();
            detail.push_str(&format!("; {h} refused: {rule}"));
        }
        if d.by_rule > 0
            && d.outcome == decide::Outcome::Excluded
            && d.returning == 0
            && d.in_maintenance == 0
        {
            outcome = TurnOutcome::Rule;
        }
        let mut to = d.migrates_to();
        if to.is_none() && placement.rules.repair && !gates.pinned {
            // An anti-affinity rule broken here: move away even without a gain.
            let broken = check
                .violations(self.me)
                .into_iter()
                .find(|r| matches!(r, Refusal::AntiAffinity { .. }));
            if let Some(r) = broken {
                let why = self.explain(&placement.rules, &r);
                match self.repair_target(vm, &check, &pt).await {
                    Some(h) => {
                        to = Some(h);
                        outcome = if config.decision.dry_run {
                            TurnOutcome::DryRun
                        } else {
                            TurnOutcome::Migrated
                        };
                        detail = format!("repair: {why}; {} ends it", self.host_name(h));
                    }
                    None => detail = format!("{detail}; repair: {why}; no allowed host with room"),
                }
            }
        }
        if outcome == TurnOutcome::Migrated
            && let Some(h) = to
            && let Some((o, why)) = self.held_back(&placement.rules, vm.id, h)
        {
            outcome = o;
            detail = format!("{detail}; {why}");
        }
        if matches!(outcome, TurnOutcome::Migrated | TurnOutcome::DryRun)
            && let Some(f) = self.forecast_summary(vm.id)
        {
            detail = format!("{detail}; {f}");
        }
        let mut group = None;
        if config.decision.group_moves != GroupMoves::Off && !gates.pinned {
            // What S-CORE's own move gains after its c_m: a group move must beat it.
            let single = match d.outcome {
                decide::Outcome::Migrate { benefit, .. }
                    if matches!(outcome, TurnOutcome::Migrated | TurnOutcome::DryRun) =>
                {
                    benefit - d.migration_cost
                }
                _ => 0.0,
            };
            let at = self.holding().unwrap_or_default();
            let g = self.plan_group(vm.id, single.max(0.0), at).await;
            match g.plan.clone().filter(|p| p.worth_it() && p.net() > single) {
                Some(p) => {
                    self.metrics.group_plans.inc();
                    detail = format!("{detail}; {}", self.describe_group(&p, single, &g));
                    tracing::info!(vm = %vm.id, moves = p.moves.len(), benefit = p.benefit, migration_cost = p.migration_cost, "group move planned");
                    group = Some(p);
                }
                None if g.incomplete => {
                    detail = format!(
                        "{detail}; group move: not planned, hosts still lacking after {} surveys",
                        g.surveyed
                    );
                }
                None => {}
            }
        }
        Assessment {
            outcome,
            to,
            decision: Some(d),
            partners,
            detail,
            predicted: to.and_then(|_| self.predicted(vm.id)),
            actual: None,
            group,
            candidates_asked: candidates_asked.len(),
        }
    }

    /// Whether this host carries its group moves out (`act`, not in dry-run).
    pub(super) fn acts_on_groups(&self) -> bool {
        let c = self.config();
        c.decision.group_moves == GroupMoves::Act && !c.decision.dry_run
    }

    /// One sentence for a recommended group move: what moves where, what it gains, what the
    /// surveys cost.
    fn describe_group(&self, p: &GroupPlan, single: f64, g: &GroupOutcome) -> String {
        let mut to: Vec<(String, usize)> = Vec::new();
        for m in p.moves.iter().filter(|m| !m.evicted) {
            let name = self.host_name(m.to);
            match to.iter_mut().find(|(n, _)| *n == name) {
                Some((_, k)) => *k += 1,
                None => to.push((name, 1)),
            }
        }
        let to: Vec<String> = to.iter().map(|(n, k)| format!("{n} ×{k}")).collect();
        let evicted = p.moves.iter().filter(|m| m.evicted).count();
        format!(
            "group move {}: {} of a group of {} to {}{}; Eq. 3.1 drops {:.1} for c_m {:.1} \
             (its own move: {:.1}); {} host(s) surveyed, {} did not answer",
            if self.acts_on_groups() {
                "chosen"
            } else {
                "recommended"
            },
            p.moves.len() - evicted,
            p.group,
            to.join(", "),
            if evicted > 0 {
                format!(", {evicted} sent back to make room")
            } else {
                String::new()
            },
            p.benefit,
            p.migration_cost,
            single,
            g.surveyed,
            g.unanswered,
        )
    }

    /// A capacity answer as the search takes it: the room (`None`: no answer), or the rule the
    /// destination refused the VM by.
    fn capacity_answer(
        &self,
        h: HostId,
        r: Result<PlacementResponse, PeerError>,
    ) -> Result<Option<Capacity>, String> {
        match r {
            Ok(PlacementResponse {
                refused_by_rule: Some(rule),
                ..
            }) => Err(rule),
            Ok(r) => Ok(Some(capacity_of(self.topo.host(h), &r.capacity, r.cpus))),
            Err(e) => {
                tracing::debug!(host = %self.host_name(h), error = %e, "no capacity answer");
                Ok(None)
            }
        }
    }

    /// Draining: the best-connected host that accepts the VM, whatever Eq. 3.2 says. `partners`
    /// are the ones its assessment just located (no second lookup).
    pub(super) async fn drain_target(
        &self,
        vm: &Vm,
        partners: &[(VmId, HostId, f64)],
    ) -> Option<HostId> {
        let pt: Vec<PartnerTraffic> = partners
            .iter()
            .map(|&(_, host, rate)| PartnerTraffic { host, rate })
            .collect();
        // A drain keeps the placement rules: no host they refuse.
        let placement = self.rule_inputs(vm.id).await;
        let check = placement.check(&self.topo, vm.id);
        // Each host's cost computed once, not once per comparison.
        let mut hosts: Vec<(f64, u8, HostId)> = self
            .peers
            .others()
            .into_iter()
            .filter(|h| check.allows(self.me, *h).is_ok())
            .map(|h| {
                (
                    cost::vm_cost(&self.topo, h, &pt),
                    self.topo.level(self.me, h),
                    h,
                )
            })
            .collect();
        hosts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        // Named, so a destination the rules refuse says no: draining never breaks a rule.
        let req = PlacementRequest {
            memory_mib: vm.memory_mib,
            moving: Some(self.moving_vm(vm)),
        };
        let config = self.config();
        let hosts: Vec<HostId> = hosts.into_iter().map(|(_, _, h)| h).collect();
        // Asked as the decision asks its candidates, `max_candidates` at once in cost order: a
        // drain of a host whose neighbours do not answer costs one hand-off timeout per batch,
        // not one per host (the token waits meanwhile).
        self.peers
            .first_accepting(
                &hosts,
                req,
                config.token.handoff_timeout(),
                config.decision.max_candidates as usize,
                |r| r.capacity.accepts,
            )
            .await
    }

    /// This host's share of Eq. 3.1 by level, from current rates and cached locations.
    pub fn cost_by_level(&self) -> (Vec<f64>, Vec<f64>) {
        let levels = self.topo.levels() as usize;
        let mut cost = vec![0.0; levels];
        let mut traffic = vec![0.0; levels];
        let vms = self.inventory.ids();
        for vm in vms {
            for (_, h, rate) in self.cached_partners(vm) {
                let l = self.topo.level(self.me, h) as usize;
                if l > 0 {
                    cost[l - 1] += rate * self.topo.weights().path_cost(l as u8);
                    traffic[l - 1] += rate;
                }
            }
        }
        (cost, traffic)
    }
}

/// A capacity answer as the decision reads it: a host that does not accept (maintenance,
/// or too little room) reads as full.
pub(super) fn capacity_of(
    host: &crate::topology::Host,
    r: &CapacityResponse,
    cpus: u32,
) -> Capacity {
    let running = if r.accepts {
        host.max_vms
            .saturating_sub(r.free_slots)
            .saturating_sub(r.incoming_migrations)
    } else {
        host.max_vms
    };
    Capacity {
        running_vms: running,
        incoming_migrations: r.incoming_migrations,
        free_memory_mib: r.free_memory_mib.saturating_add(host.reserve_memory_mib),
        total_memory_mib: host.memory_mib,
        cpu_load: r.cpu_load,
        cpus,
    }
}
