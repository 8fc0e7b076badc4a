//! Group moves carried out (`decision.group_moves = "act"`): the holder runs its plan's moves
//! in order — its own VMs through `migration`, the others by asking each VM's host
//! (`/scored/group/1`, a move) — and when one fails, undoes the moves made, newest first. The
//! plan is one entry of the holder's group record (`group_log`); each migration is journalled by
//! the host that runs it.
//!
//! A host asked to move one of its VMs checks that the asker holds the token at the stamp it
//! names (the newest `TokenSeen` this host heard is the asker's, at that stamp, and no newer
//! epoch is known), that it is itself set to `act`, that its own gates let the VM go (pinned,
//! cooling down, unsettled, zombie, window, maintenance, budgets), and that the destination
//! takes the VM by its re-check (the named capacity request every move makes, which holds room);
//! then it migrates and answers how it ran. A VM that arrived here under that very stamp is
//! being put back by the plan that moved it: the cooldown and budgets do not hold it.

use super::group_log::LoggedMove;
use super::host::{Daemon, unix_ms};
use crate::config::GroupMoves;
use crate::decide::group::{GroupPlan, PlannedMove};
use crate::hypervisor::Vm;
use crate::p2p::{Peers, Responder};
use crate::topology::HostId;
use scored_proto::{MoveRequest, MoveResponse, PlacementRequest, Stamp};
use std::sync::Arc;
use std::time::Instant;

/// How a plan carried out ended.
#[derive(Debug, PartialEq)]
pub enum Carried {
    /// Every move went through.
    Done,
    /// Move `failed` could not be made (`why`); the moves before it were undone (`undone`:
    /// how many of them; fewer means some VMs stay where the plan had taken them).
    Undone {
        failed: usize,
        why: String,
        undone: usize,
    },
    /// Nothing started: the group record could not be written.
    NotStarted(String),
}

impl<P: Peers> Daemon<P> {
    /// A peer holding the token asks this host to migrate one of its VMs.
    pub async fn answer_move(
        self: Arc<Self>,
        from: HostId,
        req: MoveRequest,
        reply: Responder<MoveResponse>,
    ) {
        match self.move_for_holder(from, &req).await {
            Ok(r) => reply.send(r),
            Err(why) => {
                tracing::info!(vm = %req.vm, from = %self.host_name(from), to = %req.to, reason = %why, "group move refused");
                reply.refuse(why)
            }
        }
    }

    async fn move_for_holder(
        &self,
        from: HostId,
        req: &MoveRequest,
    ) -> Result<MoveResponse, String> {
        let config = self.config();
        if config.decision.group_moves != GroupMoves::Act {
            return Err("this host does not carry out group moves (decision.group_moves)".into());
        }
        if config.decision.dry_run {
            return Err("this host is in dry-run".into());
        }
        if !self.token_watch().holds(from, req.at) {
            return Err(format!(
                "{} does not hold the token at epoch {} seq {} as far as this host heard",
                self.host_name(from),
                req.at.epoch,
                req.at.seq
            ));
        }
        let to = self
            .topo
            .host_by_name(&req.to)
            .map(|h| h.id)
            .filter(|h| *h != self.me)
            .ok_or_else(|| format!("no other host named {:?} in the topology", req.to))?;
        let vm = self
            .inventory
            .get(req.vm)
            .ok_or_else(|| format!("VM {} does not run here", req.vm))?;
        let now = Instant::now();
        // Put back by the plan that brought it: not a new move of it.
        let undo = self.peers.directory().local_since(vm.id) == Some(req.at);
        if undo {
            if self.pinned(&vm, &config) {
                return Err("it is pinned".into());
            }
        } else {
            self.gate(&vm, &config, now)?;
        }
        if !undo && let Some((_, why)) = self.held_back(&self.rules(), vm.id, to) {
            return Err(why);
        }
        self.destination_takes(&vm, to).await?;
        let ran = self
            .migrate(&vm, to, req.at, now)
            .await
            .map_err(|e| format!("migration to {} failed: {e}", req.to))?;
        Ok(MoveResponse {
            bytes: ran.actual.bytes,
            time_ms: ran.actual.time_ms,
            downtime_ms: ran.actual.downtime_ms,
        })
    }

    /// The destination's re-check of a move, as every move has it: a capacity request naming the
    /// VM (its rules, its room; an accepted one holds the room).
    async fn destination_takes(&self, vm: &Vm, to: HostId) -> Result<(), String> {
        let name = self.host_name(to);
        let answer = self
            .peers
            .query_capacity(
                to,
                PlacementRequest {
                    memory_mib: vm.memory_mib,
                    moving: Some(self.moving_vm(vm)),
                },
                self.config().token.handoff_timeout(),
            )
            .await
            .map_err(|e| format!("{name} did not answer its capacity request: {e}"))?;
        if let Some(rule) = answer.refused_by_rule {
            return Err(format!("{name} refused it: {rule}"));
        }
        if !answer.capacity.accepts {
            return Err(format!("{name} has no room for it now"));
        }
        Ok(())
    }

    /// Carries `plan` out under token stamp `at` (this host holds it): every move in order,
    /// and when one fails, the completed ones undone newest first. Public for the tests that
    /// drive a holder by hand.
    pub async fn carry_out_group(&self, plan: &GroupPlan, at: Stamp) -> Carried {
        let logged: Vec<LoggedMove> = plan
            .moves
            .iter()
            .map(|m| LoggedMove {
                vm: m.vm,
                from: self.host_name(m.from),
                to: self.host_name(m.to),
            })
            .collect();
        let id = {
            let mut ledger = self.ledger();
            let Some(log) = ledger.groups() else {
                return Carried::NotStarted("the group move record cannot be written".into());
            };
            match log.begin(at, logged, plan.benefit, plan.migration_cost, unix_ms()) {
                Ok(id) => id,
                Err(e) => {
                    return Carried::NotStarted(format!("the group move record: {e}"));
                }
            }
        };
        tracing::info!(
            plan = id,
            moves = plan.moves.len(),
            benefit = plan.benefit,
            migration_cost = plan.migration_cost,
            "group move starting"
        );
        let mut failed = None;
        for (i, m) in plan.moves.iter().enumerate() {
            if self.token_watch().superseded(at.epoch) {
                failed = Some((i, "the token moved on (a newer epoch)".to_string()));
                break;
            }
            match self.one_move(m, at, false).await {
                Ok(()) => self.record_step(id, i, false),
                Err(why) => {
                    failed = Some((i, why));
                    break;
                }
            }
        }
        let Some((failed, why)) = failed else {
            self.record_end(id, "done");
            tracing::info!(plan = id, "group move done");
            return Carried::Done;
        };
        tracing::warn!(plan = id, failed_move = failed, reason = %why, "group move failed: undoing the moves made");
        let mut undone = 0;
        for (i, m) in plan.moves[..failed].iter().enumerate().rev() {
            let back = PlannedMove {
                vm: m.vm,
                from: m.to,
                to: m.from,
                evicted: m.evicted,
            };
            match self.one_move(&back, at, true).await {
                Ok(()) => {
                    self.record_step(id, i, true);
                    undone += 1;
                }
                Err(e) => {
                    tracing::error!(plan = id, vm = %m.vm, at = %self.host_name(m.to), error = %e, "a move of a failed group move could not be undone: the VM stays there");
                }
            }
        }
        self.record_end(id, &format!("undone after move {failed} failed: {why}"));
        Carried::Undone {
            failed,
            why,
            undone,
        }
    }

    /// One move of a plan (`undo`: putting a VM back): this host's VM migrated here, with the
    /// window and budgets a move of its own meets; another's asked of its host, which applies
    /// its own.
    async fn one_move(&self, m: &PlannedMove, at: Stamp, undo: bool) -> Result<(), String> {
        let name = |h: HostId| self.host_name(h);
        if m.from == self.me {
            let vm = self
                .inventory
                .get(m.vm)
                .ok_or_else(|| format!("VM {} no longer runs here", m.vm))?;
            if !undo && let Some((_, why)) = self.held_back(&self.rules(), vm.id, m.to) {
                return Err(format!("{} → {}: {why}", m.vm, name(m.to)));
            }
            self.destination_takes(&vm, m.to)
                .await
                .map_err(|e| format!("{} → {}: {e}", m.vm, name(m.to)))?;
            return self
                .migrate(&vm, m.to, at, Instant::now())
                .await
                .map(|_| ())
                .map_err(|e| format!("{} → {}: {e}", m.vm, name(m.to)));
        }
        // The answer comes when the migration ended.
        let timeout = self.config().group_move_timeout();
        let req = MoveRequest {
            vm: m.vm,
            to: name(m.to),
            at,
        };
        self.peers
            .group_move(m.from, req, timeout)
            .await
            .map(|_| ())
            .map_err(|e| format!("{} on {} → {}: {e}", m.vm, name(m.from), name(m.to)))
    }

    fn record_step(&self, id: u64, index: usize, undo: bool) {
        if let Some(log) = self.ledger().groups()
            && let Err(e) = log.step(id, index, undo)
        {
            tracing::warn!(plan = id, error = %e, "group move record: step not written");
        }
    }

    fn record_end(&self, id: u64, outcome: &str) {
        if let Some(log) = self.ledger().groups()
            && let Err(e) = log.end(id, outcome)
        {
            tracing::warn!(plan = id, error = %e, "group move record: end not written");
        }
    }
}
