//! The token's policies: after a VM's turn, update the token's slots (Algorithm 1) and name the
//! VM that holds the token next, under round-robin, global, distributed or load-aware order.
//!
//! Pure functions over [`Token`]: no I/O, no clock, no randomness. The daemon calls them when the
//! token arrives over the network and the simulator calls them in a loop; both pass only what a
//! holder knows locally (its VM's partners, their levels and rates) plus, for the global policy,
//! the statistics gathered at round start. This module never decides whether a VM migrates.

pub mod walk;

use scored_proto::{Level, PolicyKind, Slot, Token, VmId, load_class};
use std::cmp::Reverse;
use std::collections::BTreeSet;

/// One partner of the holder's VM as the holder sees it after its decision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbour {
    pub vm: VmId,
    /// ℓ(u, v) with u where it runs now.
    pub level: Level,
    /// λ(u, v), bytes/s, both directions.
    pub rate: f64,
}

/// What the holder reports about its own VM when its turn ends.
#[derive(Clone, Copy, Debug)]
pub struct Turn<'a> {
    pub vm: VmId,
    /// The VM's partners (those not in the token, e.g. outside the data centre, are ignored).
    pub neighbours: &'a [Neighbour],
}

/// Who holds the token next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Holder(VmId),
    /// Global policy: the round's schedule is exhausted (or was never set). Gather fresh
    /// statistics and call [`Queue::start_round`].
    NeedsStatistics,
    /// The token has no slots.
    Empty,
}

/// Why a token could not be handed on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("VM {0} has no slot in the token (slots hold {1} VMs)")]
    UnknownHolder(VmId, usize),
    #[error("the token's slots are not sorted by VM id or not unique at slot {0}")]
    Unsorted(usize),
}

/// Order key of a waiting slot: highest level first, then (load-aware) highest load, then id.
type Key = (Reverse<Level>, Reverse<u8>, u32);

/// The order in which VMs that have not yet had their turn in this pass wait for the token.
///
/// Derived entirely from the token (build it with [`Queue::new`] when a token arrives; the
/// simulator keeps one alive across steps), so it never has to travel. All slot changes go through
/// [`Queue::hand_off`] and [`Queue::start_round`], which keep it in step with the token; picking the
/// next holder is then O(log n) instead of a scan of every slot.
#[derive(Clone, Debug)]
pub struct Queue {
    policy: PolicyKind,
    /// Unvisited slots (distributed, load-aware).
    waiting: BTreeSet<Key>,
    /// Global policy: position in `token.schedule` of the current holder.
    cursor: usize,
}

impl Queue {
    /// Indexes a token. O(n log n); checks that slots are sorted and unique.
    pub fn new(token: &Token) -> Result<Queue, TokenError> {
        for (i, w) in token.slots.windows(2).enumerate() {
            if w[0].vm >= w[1].vm {
                return Err(TokenError::Unsorted(i + 1));
            }
        }
        let mut q = Queue {
            policy: token.policy,
            waiting: BTreeSet::new(),
            cursor: 0,
        };
        q.rebuild(token);
        if token.policy == PolicyKind::Global
            && let Some(h) = token.holder
        {
            q.cursor = token.schedule.iter().position(|&v| v == h).unwrap_or(0);
        }
        Ok(q)
    }

    fn key(&self, i: usize, s: &Slot) -> Key {
        let load = if self.policy == PolicyKind::LoadAware {
            s.load
        } else {
            0
        };
        (Reverse(s.level), Reverse(load), i as u32)
    }

    fn rebuild(&mut self, token: &Token) {
        self.waiting.clear();
        if matches!(self.policy, PolicyKind::Distributed | PolicyKind::LoadAware) {
            let keys: Vec<Key> = token
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.visited)
                .map(|(i, s)| self.key(i, s))
                .collect();
            self.waiting.extend(keys);
        }
    }

    /// Who starts a fresh token (no holder yet): round-robin the lowest id; distributed and
    /// load-aware the first VM in their order (all levels start at 0, so the lowest id unless
    /// slots were seeded); global the head of the schedule, or a request for statistics. Like
    /// every call that names a holder, records it in `token.holder` and increments `token.seq`.
    pub fn first(&mut self, token: &mut Token) -> Next {
        if token.slots.is_empty() {
            return Next::Empty;
        }
        let next = match self.policy {
            PolicyKind::RoundRobin => Next::Holder(token.slots[0].vm),
            PolicyKind::Global => match token.schedule.get(self.cursor) {
                Some(&v) => Next::Holder(v),
                None => Next::NeedsStatistics,
            },
            PolicyKind::Distributed | PolicyKind::LoadAware => self
                .waiting
                .first()
                .map(|k| Next::Holder(token.slots[k.2 as usize].vm))
                .unwrap_or(Next::Empty),
        };
        if let Next::Holder(v) = next {
            token.holder = Some(v);
            token.seq += 1;
        }
        next
    }

    /// Ends `turn.vm`'s turn and names the next holder.
    ///
    /// Slot update (Algorithm 1): the holder sets its own level to `l_u` (the highest level its
    /// traffic crosses now) and its load class (sum of its rates), marks itself visited, and raises
    /// `l_v` of each neighbour v with `ℓ(u, v) > l_v`. Neighbours without a slot (outside the data
    /// centre) and zero rates count for nothing. It also raises v's load class to at least that of
    /// λ(u, v): the only part of v's load u can see, a lower bound until v reports its own.
    ///
    /// Next holder:
    /// - round-robin: the next slot by id; after the last, a new round from the lowest id.
    /// - distributed (Algorithm 1): with `c1` = the holder's level *before* its update, the next
    ///   unvisited VM at level `c1` after u in ring (id) order; when level `c1` is exhausted, the
    ///   lowest-id unvisited VM at the highest level that still has unvisited VMs. A VM whose level
    ///   was raised above the level being swept goes next (the printed algorithm would leave it
    ///   for the next pass; "highest level first" is its stated intent). When every VM has had its
    ///   turn, the pass ends: visited flags clear, `round` increments and the lowest-id VM at the
    ///   highest level starts.
    /// - load-aware: as distributed, but within a level the highest load class goes first (ties
    ///   by lowest id); no ring continuation.
    /// - global: the next VM in this round's schedule; after the last, [`Next::NeedsStatistics`].
    ///
    /// Also sets `token.holder` to the next VM and increments `token.seq`.
    pub fn hand_off(&mut self, token: &mut Token, turn: &Turn<'_>) -> Result<Next, TokenError> {
        let u = token
            .slot_index(turn.vm)
            .ok_or(TokenError::UnknownHolder(turn.vm, token.slots.len()))?;
        let c1 = token.slots[u].level;
        let mut own_level = 0;
        let mut own_load = 0.0;
        for n in turn.neighbours {
            if n.vm == turn.vm || n.rate.is_nan() || n.rate <= 0.0 {
                continue;
            }
            let Some(v) = token.slot_index(n.vm) else {
                continue;
            };
            own_level = own_level.max(n.level);
            own_load += n.rate;
            let s = token.slots[v];
            let lc = load_class(n.rate);
            if n.level > s.level || lc > s.load {
                self.update_slot(token, v, |s| {
                    s.level = s.level.max(n.level);
                    s.load = s.load.max(lc);
                });
            }
        }
        let own_load = load_class(own_load);
        self.update_slot(token, u, |s| {
            s.level = own_level;
            s.load = own_load;
            s.visited = true;
        });
        Ok(self.advance(token, u, c1))
    }

    /// Passes the token over `vm` without a turn (its host could not be reached): it counts as
    /// visited for this pass, its slot and its neighbours' slots are left as they were.
    pub fn skip(&mut self, token: &mut Token, vm: VmId) -> Result<Next, TokenError> {
        let u = token
            .slot_index(vm)
            .ok_or(TokenError::UnknownHolder(vm, token.slots.len()))?;
        let c1 = token.slots[u].level;
        self.update_slot(token, u, |s| s.visited = true);
        Ok(self.advance(token, u, c1))
    }

    /// Global policy: starts a round whose order is the greatest expected benefit first (ties by
    /// lowest id). `expected` gives, per VM, the best benefit it expects from a move (gathered from
    /// every host at round start); VMs it does not name come last, by id. Every VM appears once,
    /// so a round is one turn per VM for every policy. Sets `token.schedule` and returns the first.
    pub fn start_round(&mut self, token: &mut Token, expected: &[(VmId, f64)]) -> Next {
        let mut gain = vec![f64::NEG_INFINITY; token.slots.len()];
        for &(vm, b) in expected {
            if let Some(i) = token.slot_index(vm)
                && !b.is_nan()
            {
                gain[i] = b;
            }
        }
        let mut order: Vec<usize> = (0..token.slots.len()).collect();
        order.sort_by(|&a, &b| gain[b].total_cmp(&gain[a]).then(a.cmp(&b)));
        token.schedule = order.into_iter().map(|i| token.slots[i].vm).collect();
        self.cursor = 0;
        match token.schedule.first() {
            Some(&v) => {
                token.holder = Some(v);
                token.seq += 1;
                Next::Holder(v)
            }
            None => Next::Empty,
        }
    }

    fn update_slot(&mut self, token: &mut Token, i: usize, f: impl FnOnce(&mut Slot)) {
        let before = token.slots[i];
        if !before.visited {
            self.waiting.remove(&self.key(i, &before));
        }
        f(&mut token.slots[i]);
        let after = token.slots[i];
        if !after.visited && matches!(self.policy, PolicyKind::Distributed | PolicyKind::LoadAware)
        {
            self.waiting.insert(self.key(i, &after));
        }
    }

    fn end_pass(&mut self, token: &mut Token) {
        for s in &mut token.slots {
            s.visited = false;
        }
        token.round += 1;
        self.rebuild(token);
    }

    fn advance(&mut self, token: &mut Token, u: usize, c1: Level) -> Next {
        let next = match self.policy {
            PolicyKind::RoundRobin => {
                if u + 1 < token.slots.len() {
                    Some(u + 1)
                } else {
                    self.end_pass(token);
                    Some(0)
                }
            }
            PolicyKind::Global => {
                let vm = token.slots[u].vm;
                let mut p = if token.schedule.get(self.cursor) == Some(&vm) {
                    self.cursor + 1
                } else {
                    token
                        .schedule
                        .iter()
                        .position(|&v| v == vm)
                        .map_or(self.cursor, |p| p + 1)
                };
                // Skip VMs that already had their turn (a skip out of order) or left the token.
                while p < token.schedule.len()
                    && token.slot(token.schedule[p]).is_none_or(|s| s.visited)
                {
                    p += 1;
                }
                if p >= token.schedule.len() {
                    self.end_pass(token);
                    token.schedule.clear();
                    self.cursor = 0;
                    return Next::NeedsStatistics;
                }
                self.cursor = p;
                token.slot_index(token.schedule[p])
            }
            PolicyKind::LoadAware => {
                if self.waiting.is_empty() {
                    self.end_pass(token);
                }
                self.waiting.first().map(|k| k.2 as usize)
            }
            PolicyKind::Distributed => {
                if self.waiting.is_empty() {
                    self.end_pass(token);
                    self.waiting.first().map(|k| k.2 as usize)
                } else {
                    let top = self.waiting.first().map(|k| k.0.0);
                    if top == Some(c1) {
                        // Continue the sweep of level c1 in ring order after u.
                        let after = (Reverse(c1), Reverse(0), u as u32 + 1);
                        self.waiting
                            .range(after..)
                            .next()
                            .filter(|k| k.0.0 == c1)
                            .or_else(|| self.waiting.first())
                            .map(|k| k.2 as usize)
                    } else {
                        self.waiting.first().map(|k| k.2 as usize)
                    }
                }
            }
        };
        match next {
            Some(i) => {
                let v = token.slots[i].vm;
                token.holder = Some(v);
                token.seq += 1;
                Next::Holder(v)
            }
            None => Next::Empty,
        }
    }
}

#[cfg(test)]
mod tests;
