//! What this host knows of the token: the ring's fencing and loss state, the stamp of the token
//! it works on (set by the turn when the token arrives or is minted, cleared when the turn hands
//! it on or ends), whether that token gave way to another copy of its epoch, and when each round
//! began (for pacing and `scored status`).
//!
//! Plain state with methods: no sending, no sleeping, no clock of its own.

use super::ring::{Arrival, Ring};
use crate::topology::HostId;
use scored_proto::{Stamp, TokenView};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// Rounds remembered for pacing.
const ROUNDS_KEPT: usize = 8;

pub struct TokenWatch {
    ring: Ring,
    holding: Option<Stamp>,
    /// The token held here gave way to another copy of its epoch: it must not act any more.
    /// Cleared with the holding, so a later visit of that epoch's (single) token acts again.
    gave_way: bool,
    /// When this host first heard of each token round.
    rounds_seen: BTreeMap<u32, Instant>,
    /// (peer, reason) pairs already logged for an epoch rejected: one line each. Bounded by the
    /// topology's hosts times the reasons.
    rejections_logged: HashSet<(HostId, &'static str)>,
    /// The newest token a peer announced holding (`TokenSeen`), and who: what a peer's request
    /// to carry out a move of its group move is checked against.
    heard_held: Option<(HostId, Stamp)>,
}

impl TokenWatch {
    /// `hosts`: the topology's hosts, the only minters an epoch may name.
    pub(super) fn new(loss: Duration, stagger: Duration, hosts: u32) -> Self {
        TokenWatch {
            ring: Ring::new(Instant::now(), loss, stagger, hosts),
            holding: None,
            gave_way: false,
            rounds_seen: BTreeMap::new(),
            rejections_logged: HashSet::new(),
            heard_held: None,
        }
    }

    /// `from` announced holding the token at `at` (an announcement the ring admitted).
    pub(super) fn heard_holding(&mut self, from: HostId, at: Stamp) {
        if self.heard_held.is_none_or(|(_, seen)| at >= seen) {
            self.heard_held = Some((from, at));
        }
    }

    /// Whether `from` holds the token at `at` as far as this host heard: it announced that very
    /// stamp last, and no newer epoch is known.
    pub fn holds(&self, from: HostId, at: Stamp) -> bool {
        self.heard_held == Some((from, at)) && !self.superseded(at.epoch)
    }

    /// Whether the token of `epoch` must not act any more: a newer epoch is known, or this
    /// host's copy of it gave way to another copy ([`Ring::rival_copy`]).
    pub fn superseded(&self, epoch: u64) -> bool {
        self.ring.highest_epoch() > epoch
            || (self.gave_way && self.holding.is_some_and(|h| h.epoch == epoch))
    }

    /// The copy of `epoch` held here, if that is the one held, gives way to another copy.
    pub(super) fn give_way(&mut self, epoch: u64) {
        if self.holding.is_some_and(|h| h.epoch == epoch) {
            self.gave_way = true;
        }
    }

    /// Whether a rejection of `reason` from `peer` is the first one (to be logged).
    pub(super) fn first_rejection(&mut self, peer: HostId, reason: &'static str) -> bool {
        self.rejections_logged.insert((peer, reason))
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// A token arrived (or was minted) here: as [`Ring::on_token`].
    pub fn on_token(&mut self, epoch: u64, seq: u64, now: Instant) -> Arrival {
        self.ring.on_token(epoch, seq, now)
    }

    pub(super) fn ring_mut(&mut self) -> &mut Ring {
        &mut self.ring
    }

    /// The stamp of the token this host works on, if any.
    pub fn holding(&self) -> Option<Stamp> {
        self.holding
    }

    /// This host works on the token stamped `at` from now on.
    pub fn hold(&mut self, at: Stamp) {
        self.holding = Some(at);
        self.gave_way = false;
    }

    /// The token of `epoch` left this host (handed on, dropped); a newer one that arrived
    /// meanwhile stays held.
    pub fn release(&mut self, epoch: u64) {
        if self.holding.is_some_and(|h| h.epoch == epoch) {
            self.holding = None;
            self.gave_way = false;
        }
    }

    /// The latest round this host has heard of.
    pub fn latest_round(&self) -> u32 {
        self.rounds_seen.keys().next_back().copied().unwrap_or(0)
    }

    /// Round `round` was heard of at `now` (the first time counts).
    pub(super) fn round_heard(&mut self, round: u32, now: Instant) {
        self.rounds_seen.entry(round).or_insert(now);
        while self.rounds_seen.len() > ROUNDS_KEPT {
            self.rounds_seen.pop_first();
        }
    }

    /// When `round` began, if heard of.
    pub(super) fn round_began(&self, round: u32) -> Option<Instant> {
        self.rounds_seen.get(&round).copied()
    }

    /// Round `round` starts now, for everyone's pacing.
    pub(super) fn round_starts(&mut self, round: u32, now: Instant) {
        self.rounds_seen.insert(round, now);
    }

    /// What this host knows of the token, for peers about to regenerate it.
    pub(super) fn view(&self, now: Instant) -> TokenView {
        let held = self.holding.is_some();
        let idle = if held {
            Some(Duration::ZERO)
        } else {
            self.ring.idle(now)
        };
        TokenView {
            at: Stamp {
                epoch: self.ring.highest_epoch(),
                seq: self.ring.last_seq(),
            },
            idle_ms: idle.map(|d| d.as_millis().min(u32::MAX as u128) as u32),
            held,
        }
    }
}
