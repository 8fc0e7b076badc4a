//! What this host knows of migrations: the journal (written before a migration starts, closed
//! when it ends), the VMs whose migration is left open and not settled yet, the history of moves
//! (cooldown, no bouncing back), the moves of the last day the budgets count (`moves`), and the
//! count of migrations out of here. Settlement lives here too: after a crash or a hung call, the hypervisor is asked how each open migration ended.
//!
//! It never starts a migration (that is `migration`) and never decides for a VM.

use super::group_log::{self, GroupLog};
use super::history::{CooldownPolicy, History};
use super::host::{Daemon, unix_ms};
use super::journal::{self, Journal, JournalError};
use super::moves::{self, MoveLog};
use crate::p2p::Peers;
use crate::topology::{HostId, Topology};
use scored_proto::{Stamp, VmId};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) struct Ledger {
    journal: Journal,
    /// VMs whose migration, left open by a crash or a hung call, may still run: never touched
    /// until settled. Asked about again on every inventory refresh.
    unsettled: HashSet<VmId>,
    history: History,
    /// Every move known in the last day, on disk beside the journal (the budgets).
    moves: MoveLog,
    topo: Arc<Topology>,
    migrations_done: u64,
    /// The group moves this host carries out as holder (`group_log`); `None` when the file
    /// cannot be opened: then no group move is carried out.
    groups: Option<GroupLog>,
}

impl Ledger {
    pub(super) fn new(journal: Journal, topo: Arc<Topology>) -> Self {
        let moves = MoveLog::open(&moves::path_beside(journal.path()), &topo, unix_ms());
        let groups_path = group_log::path_beside(journal.path());
        let groups = match GroupLog::open(&groups_path) {
            Ok((log, interrupted)) => {
                for p in interrupted {
                    // A step naming no move of its plan (a damaged file) is left out.
                    let done: Vec<String> = p
                        .done
                        .iter()
                        .filter_map(|&(i, undo)| {
                            let m = p.moves.get(i)?;
                            let undo = if undo { "undo " } else { "" };
                            Some(format!("{undo}{} {}→{}", m.vm, m.from, m.to))
                        })
                        .collect();
                    tracing::warn!(
                        plan = p.id, epoch = p.at.epoch, seq = p.at.seq, moves = p.moves.len(),
                        completed = %done.join(", "),
                        "a group move was interrupted by a restart; its completed moves stay (each VM's migration is settled from the journal)"
                    );
                }
                Some(log)
            }
            Err(e) => {
                tracing::error!(path = %groups_path.display(), error = %e, "group move record cannot be opened: no group move will be carried out");
                None
            }
        };
        Ledger {
            groups,
            journal,
            unsettled: HashSet::new(),
            history: History::new(),
            moves,
            topo,
            migrations_done: 0,
        }
    }

    /// What the budgets count for moving `vm` from `from` to `to` now: its moves in the last
    /// day, and each host's moves (out or in) in the last hour.
    pub(super) fn budget_counts(&self, vm: VmId, from: HostId, to: HostId) -> (u32, u32, u32) {
        let now = unix_ms();
        (
            self.moves.vm_moves(vm, now),
            self.moves.host_moves(from, now),
            self.moves.host_moves(to, now),
        )
    }

    pub(super) fn is_unsettled(&self, vm: VmId) -> bool {
        self.unsettled.contains(&vm)
    }

    pub(super) fn has_unsettled(&self) -> bool {
        !self.unsettled.is_empty()
    }

    /// The unsettled VMs, sorted (for `scored status`).
    pub(super) fn unsettled(&self) -> Vec<String> {
        let mut v: Vec<String> = self.unsettled.iter().map(|v| v.to_string()).collect();
        v.sort();
        v
    }

    pub(super) fn journal_is_open(&self, vm: VmId) -> bool {
        self.journal.is_open(vm)
    }

    /// Where the journal is on disk (read, not written, by the zombie report).
    pub(super) fn journal_path(&self) -> std::path::PathBuf {
        self.journal.path().to_path_buf()
    }

    /// The record of group moves, when it could be opened.
    pub(super) fn groups(&mut self) -> Option<&mut GroupLog> {
        self.groups.as_mut()
    }

    pub(super) fn migrations_done(&self) -> u64 {
        self.migrations_done
    }

    /// Whether `vm` must not be decided for: its migration is not settled.
    pub(super) fn busy(&self, vm: VmId) -> bool {
        self.unsettled.contains(&vm) || self.journal.is_open(vm)
    }

    /// Until when `vm` rests, and the hosts it left recently (most recent first, at most
    /// `hosts`).
    pub(super) fn rest(
        &self,
        vm: VmId,
        cooldown: &CooldownPolicy,
        history: &CooldownPolicy,
        hosts: usize,
        now: Instant,
    ) -> (Option<Instant>, Vec<HostId>) {
        let mut prev = self.history.left_recently(vm, history, now);
        prev.truncate(hosts);
        (self.history.cooldown_until(vm, cooldown, now), prev)
    }

    /// When `vm` last moved (see [`super::history::History::last_move`]).
    pub(super) fn last_move(&self, vm: VmId) -> Option<Instant> {
        self.history.last_move(vm)
    }

    /// A VM went from `from` to `to` (an arrival here or a peer's announcement).
    pub(super) fn moved(
        &mut self,
        vm: VmId,
        from: HostId,
        to: HostId,
        took: Duration,
        now: Instant,
    ) {
        self.history.record(vm, from, took, now);
        self.moves.record(&self.topo, vm, from, to, unix_ms());
    }

    /// A peer told of a move (whoever told it first): counted for the budgets only, once.
    pub(super) fn count_move(&mut self, vm: VmId, from: HostId, to: HostId) {
        self.moves.record(&self.topo, vm, from, to, unix_ms());
    }

    /// Records a migration about to start, with its forecast; nothing starts if this fails.
    pub(super) fn begin(
        &mut self,
        vm: VmId,
        (from, to): (&str, &str),
        at: Stamp,
        predicted: Option<journal::Figures>,
    ) -> Result<journal::Entry, JournalError> {
        self.journal
            .begin_predicted(vm, (from, to), (at.epoch, at.seq), unix_ms(), predicted)
    }

    /// A migration this host ran went through, with what the hypervisor reported of it.
    pub(super) fn succeeded(
        &mut self,
        entry: u64,
        vm: VmId,
        (from, to): (HostId, HostId),
        actual: journal::Figures,
    ) {
        let took = Duration::from_millis(actual.time_ms);
        let ended = self
            .journal
            .end_reported(entry, journal::Ending::Succeeded, Some(actual));
        if let Err(e) = ended {
            tracing::warn!(vm = %vm, journal = entry, error = %e, "journal: entry not closed");
        }
        self.history.record(vm, from, took, Instant::now());
        self.moves.record(&self.topo, vm, from, to, unix_ms());
        self.migrations_done += 1;
    }

    /// A migration this host ran did not go through.
    pub(super) fn ended(&mut self, entry: u64, vm: VmId, how: journal::Ending) {
        if let Err(e) = self.journal.end(entry, how) {
            tracing::warn!(vm = %vm, journal = entry, error = %e, "journal: entry not closed");
        }
    }

    /// The call of a migration hung: the VM stays untouched until the hypervisor says more.
    pub(super) fn hung(&mut self, vm: VmId) {
        self.unsettled.insert(vm);
    }

    fn open_unsettled(&self) -> Vec<journal::Entry> {
        self.journal
            .open_entries()
            .filter(|e| self.unsettled.contains(&e.vm))
            .cloned()
            .collect()
    }
}

impl<P: Peers> Daemon<P> {
    /// After a crash: settles every migration the journal left open with what the hypervisor
    /// says now. Those still running (or whose state cannot be read) leave their VMs unsettled:
    /// untouched, and asked about again on every inventory refresh until they end.
    pub async fn reconcile(self: &Arc<Self>, left: Vec<journal::Entry>) {
        let _pass = self.settling.lock().await;
        for e in left {
            self.settle_entry(e, true).await;
        }
    }

    /// Asks the hypervisor again about every unsettled VM's open journal entry. One pass at a
    /// time: a refresh that finds a pass under way leaves it to finish.
    pub(super) async fn settle_unsettled(self: &Arc<Self>) {
        let Ok(_pass) = self.settling.try_lock() else {
            return;
        };
        let entries = self.ledger().open_unsettled();
        for e in entries {
            self.settle_entry(e, false).await;
        }
    }

    /// Closes one journal entry if the hypervisor says how it ended; else marks its VM unsettled.
    async fn settle_entry(self: &Arc<Self>, e: journal::Entry, at_start: bool) {
        let vm = e.vm;
        let within = self.config().hypervisor.call_timeout();
        let state = match self
            .hv
            .call("journal reconciliation", within, move |hv| hv.state(vm))
            .await
        {
            Ok(s) => s,
            Err(err) => {
                if at_start {
                    tracing::warn!(vm = %vm, error = %err, "journal: cannot read the VM's state; it stays untouched");
                }
                self.ledger().unsettled.insert(vm);
                return;
            }
        };
        let verdict = journal::reconcile(state);
        if at_start {
            tracing::info!(vm = %vm, to = %e.to, journal = e.id, ?verdict, unix_ms = unix_ms(), "journal: migration left open by the last run");
        }
        let ending = match verdict {
            journal::Reconciled::StillRunning => {
                self.ledger().unsettled.insert(vm);
                tracing::debug!(vm = %vm, to = %e.to, journal = e.id, "journal: migration still running");
                return;
            }
            journal::Reconciled::Completed => journal::Ending::ReconciledCompleted,
            journal::Reconciled::Failed => journal::Ending::ReconciledFailed,
        };
        {
            let mut ledger = self.ledger();
            if let Err(err) = ledger.journal.end(e.id, ending) {
                tracing::warn!(vm = %vm, journal = e.id, error = %err, "journal: entry not closed");
            }
            ledger.unsettled.remove(&vm);
            if verdict == journal::Reconciled::Completed {
                // As for a migration seen through: the VM must not bounce straight back.
                ledger
                    .history
                    .record(vm, self.me, Duration::ZERO, Instant::now());
                if let Some(to) = self.topo.host_by_name(&e.to).map(|h| h.id) {
                    let topo = self.topo.clone();
                    ledger.moves.record(&topo, vm, self.me, to, unix_ms());
                }
            }
        }
        tracing::info!(vm = %vm, to = %e.to, journal = e.id, ?verdict, unix_ms = unix_ms(), "journal: migration settled");
        if verdict == journal::Reconciled::Completed
            && let Some(to) = self.topo.host_by_name(&e.to).map(|h| h.id)
        {
            let at = Stamp {
                epoch: e.epoch,
                seq: e.seq,
            };
            if let Err(err) = self.peers.announce_migration(vm, to, at).await {
                tracing::debug!(error = %err, "settled migration not announced");
            }
        }
    }
}
