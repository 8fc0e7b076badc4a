//! What this host knows of the token: the ring's fencing and loss state, the stamp of the token
//! it works on (set by the turn when the token arrives or is minted, cleared when the turn hands
//! it on or ends), whether it is on its way to the next host, whether that token gave way to
//! another copy of its epoch, and when each round began (for pacing and `scored status`).
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
    /// The token held here is on its way to the next host (its hand-off request is out, no
    /// answer yet): the turn is over, it does not act any more. Cleared with the holding, or
    /// when the hand-off fails and the token stays here.
    handing_on: bool,
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
            handing_on: false,
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
        self.handing_on = false;
    }

    /// The token of `epoch` left this host (handed on, dropped); a newer one that arrived
    /// meanwhile stays held.
    pub fn release(&mut self, epoch: u64) {
        if self.holding.is_some_and(|h| h.epoch == epoch) {
            self.holding = None;
            self.gave_way = false;
            self.handing_on = false;
        }
    }

    /// The token of `epoch` held here is being handed on (`on`), or its hand-off failed and it
    /// stays here (`!on`).
    pub(super) fn handing_on(&mut self, epoch: u64, on: bool) {
        if self.holding.is_some_and(|h| h.epoch == epoch) {
            self.handing_on = on;
        }
    }

    /// The stamp of the token this host may act on: held, not on its way to the next host, not
    /// given way to another copy of its epoch, not fenced by a newer one. What "one token in
    /// the data centre" means for safety: a host holding a token it is handing on still holds
    /// it until the next host's answer arrives, but moves nothing for it.
    pub fn acting(&self) -> Option<Stamp> {
        self.holding
            .filter(|h| !self.handing_on && !self.superseded(h.epoch))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that holds a token acts on it until it hands it on; while the hand-off is out it
    /// still holds it (the next host has not answered) but acts no more; a failed hand-off
    /// gives it back; a copy that gave way or a fenced epoch never acts.
    #[test]
    fn a_token_on_its_way_to_the_next_host_is_held_but_not_acted_on() {
        let mut w = TokenWatch::new(Duration::from_secs(10), Duration::from_secs(1), 4);
        let at = Stamp { epoch: 1, seq: 3 };
        assert_eq!(w.acting(), None);
        w.hold(at);
        assert_eq!((w.holding(), w.acting()), (Some(at), Some(at)));
        w.handing_on(1, true);
        assert_eq!((w.holding(), w.acting()), (Some(at), None));
        // The hand-off failed: the token stays here and acts again.
        w.handing_on(1, false);
        assert_eq!(w.acting(), Some(at));
        // Another epoch's hand-off says nothing of this one.
        w.handing_on(2, true);
        assert_eq!(w.acting(), Some(at));
        w.handing_on(1, true);
        w.release(1);
        assert_eq!((w.holding(), w.acting()), (None, None));
        // A new visit acts, whatever the last hand-off was.
        w.hold(Stamp { epoch: 1, seq: 9 });
        assert!(w.acting().is_some());
        w.give_way(1);
        assert_eq!(w.acting(), None, "a copy that gave way does not act");
    }
}
