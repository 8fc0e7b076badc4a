//! One local VM's turn while this host holds the token: the hypervisor's word on the VM's state
//! first, then the assessment, a draining target if the host drains, the migration, and the
//! record (log line, `scored status`, metrics). Also `scored plan`: the same assessment for every
//! local VM, moving nothing.
//!
//! It never walks the token (that is `token::walk` and `turn_loop`).

use super::assess::Assessment;
use super::group_moves::Carried;
use super::host::{Daemon, unix_ms};
use super::inventory::Read;
use super::records::{DecisionRecord, GroupMoveRecord, GroupRecord};
use crate::decide::TurnOutcome;
use crate::decide::group::GroupPlan;
use crate::hypervisor::{HypervisorError, VmState};
use crate::p2p::Peers;
use crate::token::Neighbour;
use crate::topology::HostId;
use scored_proto::{Stamp, Token, VmId};
use std::collections::HashSet;
use std::time::Instant;

impl<P: Peers> Daemon<P> {
    /// Whether a newer epoch than `token`'s is known here, or this host's copy of its epoch gave
    /// way to another copy: the token must not act.
    pub(super) fn fenced(&self, token: &Token) -> bool {
        self.token_watch().superseded(token.epoch)
    }

    /// The record of an assessment, as logged, kept for `scored status` and shown by `plan`.
    fn decision_record(
        &self,
        vm: VmId,
        a: &Assessment,
        to: Option<HostId>,
        at: Stamp,
        started_unix_ms: u64,
    ) -> DecisionRecord {
        let d = a.decision.as_ref();
        DecisionRecord {
            started_unix_ms,
            unix_ms: unix_ms(),
            vm: vm.to_string(),
            outcome: a.outcome.name().to_string(),
            current_cost: d.map(|d| d.current_cost).unwrap_or(0.0),
            migration_cost: d.map(|d| d.migration_cost).unwrap_or(0.0),
            best_host: d.and_then(|d| d.best).map(|c| self.host_name(c.host)),
            best_benefit: d.and_then(|d| d.best).map(|c| c.benefit),
            to: to.map(|h| self.host_name(h)),
            partners: a.partners.len(),
            detail: a.detail.clone(),
            predicted: a.predicted.clone(),
            actual: a.actual.clone(),
            epoch: at.epoch,
            seq: at.seq,
            group: a.group.as_ref().map(|p| self.group_record(p)),
        }
    }

    fn group_record(&self, p: &GroupPlan) -> GroupRecord {
        GroupRecord {
            moves: p
                .moves
                .iter()
                .map(|m| GroupMoveRecord {
                    vm: m.vm.to_string(),
                    from: self.host_name(m.from),
                    to: self.host_name(m.to),
                    evicted: m.evicted,
                })
                .collect(),
            benefit: p.benefit,
            migration_cost: p.migration_cost,
        }
    }

    fn record(
        &self,
        vm: VmId,
        a: &Assessment,
        to: Option<HostId>,
        token: &Token,
        started_unix_ms: u64,
    ) {
        let rec = self.decision_record(vm, a, to, token.stamp(), started_unix_ms);
        tracing::info!(
            vm = %rec.vm, outcome = %rec.outcome, started_unix_ms = rec.started_unix_ms,
            unix_ms = rec.unix_ms, epoch = rec.epoch, seq = rec.seq, round = token.round,
            current_cost = rec.current_cost,
            c_m = rec.migration_cost, best_host = ?rec.best_host, benefit = ?rec.best_benefit,
            to = ?rec.to, partners = rec.partners, detail = %rec.detail, "decision"
        );
        self.decisions().push(rec);
    }

    /// The holder's turn for local VM `vm`: decide, maybe migrate, and report the neighbours the
    /// token's levels are updated from.
    pub(super) async fn take_turn(&self, vm: VmId, token: &Token) -> Option<Vec<Neighbour>> {
        let v = self.inventory.get(vm)?;
        let started = Instant::now();
        let started_unix_ms = unix_ms();
        // The hypervisor has the last word on whether this VM can be decided for now: a cached
        // inventory must not drive a decision (or a migration) it cannot carry out.
        let within = self.config().hypervisor.call_timeout();
        let early = match self
            .hv
            .call("VM state", within, move |hv| hv.state(vm))
            .await
        {
            Ok(VmState::Running) => None,
            Ok(VmState::Migrating) => Some((
                TurnOutcome::Busy,
                "the hypervisor runs a migration job of this VM; not deciding for it".to_string(),
            )),
            Ok(VmState::Absent) | Err(HypervisorError::NoSuchVm { .. }) => {
                // It left by other means (an operator's migration): no turn for it here.
                let _ = self.read_inventory(Read::Full).await;
                return None;
            }
            Err(e) if e.is_unavailable() => Some((
                TurnOutcome::HypervisorDown,
                format!("hypervisor not answering: {e}"),
            )),
            Err(e) => Some((
                TurnOutcome::Busy,
                format!("the VM's state cannot be read: {e}"),
            )),
        };
        if let Some((outcome, detail)) = early {
            let a = Assessment {
                outcome,
                decision: None,
                to: None,
                partners: self.cached_partners(vm),
                detail,
                predicted: None,
                actual: None,
                group: None,
                candidates_asked: 0,
            };
            self.metrics.decided(a.outcome, started.elapsed());
            self.record(vm, &a, None, token, started_unix_ms);
            return Some(self.neighbours(self.me, &a.partners));
        }
        let draining = self.operator().draining();
        let mut a = self.assess(&v).await;
        let mut to = a.to;
        if draining
            && to.is_none()
            && a.outcome != TurnOutcome::Zombie
            && !self.pinned(&v, &self.config())
        {
            to = self.drain_target(&v, &a.partners).await;
            if let Some(dest) = to {
                a.outcome = TurnOutcome::Migrated;
                a.detail = format!("draining: {}", a.detail);
                // A drain keeps the windows and budgets as every move does.
                if let Some((o, why)) = self.held_back(&self.rules(), v.id, dest) {
                    a.outcome = o;
                    a.detail = format!("{}; {why}", a.detail);
                }
            }
        }
        let mut at = self.me;
        let plan = a
            .group
            .clone()
            .filter(|_| self.acts_on_groups() && !draining);
        let moves = plan.is_some() || (a.outcome == TurnOutcome::Migrated && to.is_some());
        // From here to the job starting is a target of its own (≤ 100 ms, docs/evaluation.md).
        let decided = Instant::now();
        if moves && self.fenced(token) {
            return None;
        }
        let stamp = token.stamp();
        if let Some(plan) = plan {
            (a.outcome, to) = match self.carry_out_group(&plan, stamp).await {
                Carried::Done => {
                    a.detail = format!("{}; carried out", a.detail);
                    // The partners the plan moved are where it took them.
                    for (p, host, _) in &mut a.partners {
                        if let Some(m) = plan.moves.iter().find(|m| m.vm == *p) {
                            *host = m.to;
                        }
                    }
                    let dest = plan.moves.iter().find(|m| m.vm == vm).map(|m| m.to);
                    at = dest.unwrap_or(self.me);
                    (TurnOutcome::Migrated, dest)
                }
                Carried::Undone {
                    failed,
                    why,
                    undone,
                } => {
                    a.detail = format!(
                        "{}; move {} of {} failed ({why}); {undone} of {failed} made undone",
                        a.detail,
                        failed + 1,
                        plan.moves.len()
                    );
                    at = self.peers.directory().lookup(vm).unwrap_or(self.me);
                    (TurnOutcome::Failed, None)
                }
                Carried::NotStarted(why) => {
                    a.detail = format!("{}; not carried out: {why}", a.detail);
                    (TurnOutcome::Failed, None)
                }
            };
        } else if a.outcome == TurnOutcome::Migrated
            && let Some(dest) = to
        {
            match self.migrate(&v, dest, stamp, decided).await {
                Ok(ran) => {
                    at = dest;
                    a.detail = format!(
                        "{}; migrated in {:.2} s, downtime {} ms, {} MiB ({})",
                        a.detail,
                        ran.actual.time_ms as f64 / 1000.0,
                        ran.actual.downtime_ms,
                        ran.actual.bytes / (1024 * 1024),
                        ran.actual.mode,
                    );
                    a.predicted = ran.predicted;
                    a.actual = Some(ran.actual);
                }
                Err(e) => {
                    a.outcome = if e.hung() {
                        TurnOutcome::HypervisorDown
                    } else {
                        TurnOutcome::Failed
                    };
                    a.detail = format!("{}; migration failed: {e}", a.detail);
                }
            }
        }
        self.metrics.decided(a.outcome, started.elapsed());
        let partner_hosts: HashSet<HostId> = a
            .partners
            .iter()
            .map(|p| p.1)
            .filter(|h| *h != self.me)
            .collect();
        self.metrics
            .reached(a.outcome, partner_hosts.len(), a.candidates_asked);
        self.record(vm, &a, to, token, started_unix_ms);
        Some(self.neighbours(at, &a.partners))
    }

    /// The token's view of a VM at `at` with these partners.
    fn neighbours(&self, at: HostId, partners: &[(VmId, HostId, f64)]) -> Vec<Neighbour> {
        partners
            .iter()
            .map(|&(p, h, rate)| Neighbour {
                vm: p,
                level: self.topo.level(at, h),
                rate,
            })
            .collect()
    }

    /// What this host would do for each local VM now (dry-run; `scored plan`).
    pub async fn plan(&self) -> Vec<DecisionRecord> {
        let vms = self.inventory.vms();
        let mut out = Vec::with_capacity(vms.len());
        let stamp = self.holding().unwrap_or_default();
        for v in vms {
            let started_unix_ms = unix_ms();
            let mut a = self.assess(&v).await;
            if a.outcome == TurnOutcome::Migrated {
                a.outcome = TurnOutcome::DryRun;
            }
            let to = a.to;
            out.push(self.decision_record(v.id, &a, to, stamp, started_unix_ms));
        }
        out
    }
}
