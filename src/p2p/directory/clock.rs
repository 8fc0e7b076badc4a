//! How far ahead of this host a peer's stamp may be. A [`Stamp`] is a token position, so the
//! host's clock is the newest token position it has seen itself (tokens, heartbeats the ring
//! accepted, its own migrations); a peer that heard of the token a little later or sooner is
//! honest, one whose stamp runs far ahead is not, since a fact stamped in the future would
//! outrank every true one until the cluster caught up with it.
//!
//! Pure: the daemon feeds it what it saw. It never learns from the stamps it judges (a peer
//! could otherwise walk it forward one skew at a time).

use scored_proto::Stamp;

/// An epoch's low bits name its minter, the rest is its generation (the layout minted by
/// `daemon::ring`).
const MINTER_BITS: u32 = 16;

/// Token steps a stamp may run ahead of this host's view of the token, by default: more than a
/// full round of the largest simulated data centre (40,960 VMs), which is far more than a host
/// that hears heartbeats can fall behind.
pub const DEFAULT_STAMP_SKEW: u64 = 1 << 16;

#[derive(Clone, Copy, Debug)]
pub(super) struct TokenClock {
    /// `None` until this host has heard of a token: stamps cannot be judged before.
    seen: Option<Stamp>,
    skew: u64,
}

impl TokenClock {
    pub(super) fn new(skew: u64) -> Self {
        TokenClock { seen: None, skew }
    }

    pub(super) fn set_skew(&mut self, skew: u64) {
        self.skew = skew;
    }

    pub(super) fn now(&self) -> Option<Stamp> {
        self.seen
    }

    /// This host saw the token at `at`. Returns whether the clock was unknown before.
    pub(super) fn observe(&mut self, at: Stamp) -> bool {
        if at == Stamp::ZERO {
            return false;
        }
        let first = self.seen.is_none();
        self.seen = Some(self.seen.map_or(at, |s| s.max(at)));
        first
    }

    /// Whether `at` is no further ahead than a peer can honestly be: at most one generation of
    /// epoch this host has not heard of, and at most `skew` token steps into an epoch.
    pub(super) fn admits(&self, at: Stamp) -> bool {
        let Some(now) = self.seen else {
            return true;
        };
        let generation = |epoch: u64| epoch >> MINTER_BITS;
        if generation(at.epoch) > generation(now.epoch).saturating_add(1) {
            false
        } else if at.epoch == now.epoch {
            at.seq <= now.seq.saturating_add(self.skew)
        } else if at.epoch > now.epoch {
            // An epoch minted since: it started at step 0.
            at.seq <= self.skew
        } else {
            true
        }
    }
}
