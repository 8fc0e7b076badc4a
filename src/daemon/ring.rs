//! Token safety: fencing, duplicate detection, loss detection and deterministic regeneration.
//!
//! Pure state machine: time comes in as `Instant` arguments, nothing here sends or sleeps. The
//! daemon feeds it every token it receives and every sign of token activity it hears (hand-off
//! notices), and asks it when to regenerate.
//!
//! The rules (docs/protocol.md, "Token loss"):
//! - An epoch is `(generation << 16) | host index`: unique to the host that minted it, ordered by
//!   generation first. A token whose epoch is below the highest this host has seen is stale: it is
//!   dropped and never acts. Within an epoch, a sequence number at or below the last one is a
//!   duplicate of a token this host already received (a retried hand-off whose ack was lost):
//!   acknowledged, not processed again. Heartbeats never count as received.
//! - The holder publishes a heartbeat for as long as it holds the token (deciding, migrating);
//!   the token is declared lost when no activity was heard for `loss_timeout`.
//! - Hosts earlier in the topology regenerate first: rank r waits `r × stagger` more (and the
//!   daemon first checks that no lower host answers), so a dead first host is replaced without a
//!   vote.

use std::time::{Duration, Instant};

/// Hosts that can mint an epoch: the host index fills the epoch's low 16 bits.
pub const MAX_MINTING_HOSTS: u32 = 1 << 16;

/// Builds the epoch a host mints after having seen `highest`.
pub fn next_epoch(highest: u64, host_index: u32) -> u64 {
    debug_assert!(host_index < MAX_MINTING_HOSTS);
    (((highest >> 16) + 1) << 16) | host_index as u64
}

/// The host index that minted `epoch`.
pub fn epoch_minter(epoch: u64) -> u32 {
    (epoch & 0xffff) as u32
}

/// Generation number of an epoch (for display and metrics).
pub fn epoch_generation(epoch: u64) -> u64 {
    epoch >> 16
}

/// What to do with a token that just arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Newer than anything seen: take it and act.
    Fresh,
    /// Already processed (same epoch, sequence not newer): acknowledge again, do nothing.
    Duplicate,
    /// From an older epoch: drop it, never act on it.
    Stale,
}

/// Per-host view of the token's liveness.
#[derive(Clone, Debug)]
pub struct Ring {
    highest_epoch: u64,
    last_seq: u64,
    /// The newest token this host itself received: duplicates are judged against it alone
    /// (activity notices run ahead of hand-offs and must not make a real hand-off look old).
    received: (u64, u64),
    /// When this host last heard of a live token (a token, a heartbeat, a peer's dated report,
    /// its own turn). What it tells peers; never set by waiting.
    heard: Option<Instant>,
    /// When the detector was last (re)armed: at start, and when this host deferred to a lower
    /// host. Kept apart from `heard` so that waiting is never passed on to peers as news.
    armed: Instant,
    loss_timeout: Duration,
    stagger: Duration,
}

impl Ring {
    pub fn new(now: Instant, loss_timeout: Duration, stagger: Duration) -> Self {
        Ring {
            highest_epoch: 0,
            last_seq: 0,
            received: (0, 0),
            heard: None,
            armed: now,
            loss_timeout,
            stagger,
        }
    }

    /// Classifies an arriving token and, when fresh, records it as the newest.
    pub fn on_token(&mut self, epoch: u64, seq: u64, now: Instant) -> Arrival {
        let arrival = self.classify(epoch, seq);
        if arrival == Arrival::Fresh {
            if epoch > self.highest_epoch || seq > self.last_seq {
                self.last_seq = seq;
            }
            self.highest_epoch = epoch;
            self.received = (epoch, seq);
            self.heard = Some(now);
        }
        arrival
    }

    /// Classifies without recording (e.g. before deciding whether to ack).
    pub fn classify(&self, epoch: u64, seq: u64) -> Arrival {
        if epoch < self.highest_epoch {
            Arrival::Stale
        } else if epoch != 0 && (epoch, seq) <= self.received {
            Arrival::Duplicate
        } else {
            Arrival::Fresh
        }
    }

    /// Another host reported token activity (a hand-off notice). Activity from a stale epoch does
    /// not count: a fenced token must not keep the cluster from regenerating.
    pub fn on_activity(&mut self, epoch: u64, seq: u64, now: Instant) {
        if epoch > self.highest_epoch || (epoch == self.highest_epoch && seq >= self.last_seq) {
            self.highest_epoch = epoch;
            self.last_seq = seq;
            self.heard = Some(now);
        }
    }

    /// A peer reports (in a statistics answer) that it heard of token `(epoch, seq)` at `when`.
    /// Like [`Ring::on_activity`], but the activity is dated: a report of old news moves the
    /// detector only as far as the news goes. A stale epoch counts for nothing.
    /// `when` is `None` when the news is older than this clock can tell: the epoch still counts.
    pub fn on_report(&mut self, epoch: u64, seq: u64, when: Option<Instant>) {
        if epoch < self.highest_epoch {
            return;
        }
        if epoch > self.highest_epoch || seq > self.last_seq {
            self.last_seq = seq;
        }
        self.highest_epoch = epoch;
        if let Some(when) = when {
            self.heard = Some(self.heard.map_or(when, |h| h.max(when)));
        }
    }

    /// How long since this host last heard of a live token; `None` if it never heard of one.
    pub fn idle(&self, now: Instant) -> Option<Duration> {
        self.heard.map(|h| now.saturating_duration_since(h))
    }

    /// This host holds the token and works on it: keep the detector quiet.
    pub fn touch(&mut self, now: Instant) {
        self.heard = Some(now);
    }

    /// This host leaves regeneration to another (a lower host answered): wait a full period
    /// again, without claiming to have heard anything.
    pub fn defer(&mut self, now: Instant) {
        self.armed = now;
    }

    pub fn highest_epoch(&self) -> u64 {
        self.highest_epoch
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// When this host should regenerate if nothing is heard, given its rank among the hosts it can
    /// reach (0 = lowest identity among them, itself included).
    pub fn regeneration_deadline(&self, rank: usize) -> Instant {
        let since = self.heard.map_or(self.armed, |h| h.max(self.armed));
        since + self.loss_timeout + self.stagger * rank as u32
    }

    /// Whether this host should mint a new token now.
    pub fn should_regenerate(&self, rank: usize, now: Instant) -> bool {
        now >= self.regeneration_deadline(rank)
    }

    /// Mints the next epoch (this host becomes the holder of a new token); the caller builds the
    /// token and records it with [`Ring::on_token`].
    pub fn mint(&self, host_index: u32) -> u64 {
        next_epoch(self.highest_epoch, host_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn epochs_are_unique_per_minter_and_ordered_by_generation() {
        let a = next_epoch(0, 3);
        let b = next_epoch(0, 1);
        assert_ne!(a, b);
        assert_eq!(epoch_generation(a), 1);
        assert_eq!(epoch_minter(a), 3);
        // Whoever mints after seeing `a` is above both.
        let c = next_epoch(a.max(b), 0);
        assert!(c > a && c > b);
        assert_eq!(epoch_generation(c), 2);
    }

    #[test]
    fn fencing_and_duplicates() {
        let t0 = Instant::now();
        let mut r = Ring::new(t0, 10 * S, S);
        let e1 = next_epoch(0, 2);
        assert_eq!(r.on_token(e1, 1, t0), Arrival::Fresh);
        assert_eq!(r.on_token(e1, 1, t0), Arrival::Duplicate);
        assert_eq!(r.on_token(e1, 0, t0), Arrival::Duplicate);
        assert_eq!(r.on_token(e1, 2, t0), Arrival::Fresh);
        let e2 = next_epoch(e1, 0);
        assert_eq!(r.on_token(e2, 0, t0), Arrival::Fresh);
        // The old epoch is fenced off for good, whatever its sequence.
        assert_eq!(r.on_token(e1, 99, t0), Arrival::Stale);
        assert_eq!(r.highest_epoch(), e2);
    }

    #[test]
    fn activity_notices_never_make_a_real_hand_off_look_duplicate() {
        // The holder announces (e, 2) just before handing the token (e, 2) to us.
        let t0 = Instant::now();
        let mut r = Ring::new(t0, 10 * S, S);
        let e = next_epoch(0, 1);
        r.on_activity(e, 1, t0);
        r.on_activity(e, 2, t0);
        assert_eq!(r.on_token(e, 2, t0), Arrival::Fresh);
        assert_eq!(r.on_token(e, 2, t0), Arrival::Duplicate);
        // Activity of a newer epoch still fences an older token.
        r.on_activity(next_epoch(e, 0), 0, t0);
        assert_eq!(r.on_token(e, 3, t0), Arrival::Stale);
    }

    #[test]
    fn loss_detection_staggers_by_rank_and_ignores_stale_activity() {
        let t0 = Instant::now();
        let mut r = Ring::new(t0, 10 * S, 2 * S);
        let e = next_epoch(0, 0);
        r.on_token(e, 5, t0);
        assert!(!r.should_regenerate(0, t0 + 9 * S));
        assert!(r.should_regenerate(0, t0 + 10 * S));
        assert!(!r.should_regenerate(1, t0 + 11 * S));
        assert!(r.should_regenerate(1, t0 + 12 * S));
        // Fresh activity resets the clock; activity of a fenced epoch does not.
        r.on_activity(e, 6, t0 + 9 * S);
        assert!(!r.should_regenerate(0, t0 + 18 * S));
        let newer = next_epoch(e, 1);
        r.on_activity(newer, 0, t0 + 9 * S);
        r.on_activity(e, 100, t0 + 30 * S);
        assert!(r.should_regenerate(0, t0 + 30 * S));
        assert!(r.mint(3) > newer);
    }

    #[test]
    fn a_fresh_host_learns_the_epoch_and_the_age_of_the_news_from_reports() {
        let t0 = Instant::now();
        let mut r = Ring::new(t0, 10 * S, S);
        assert_eq!(r.idle(t0 + 20 * S), None);
        // Deferring re-arms the detector but is no news to pass on.
        r.defer(t0 + 5 * S);
        assert_eq!(r.idle(t0 + 20 * S), None);
        assert!(!r.should_regenerate(0, t0 + 14 * S));
        assert!(r.should_regenerate(0, t0 + 15 * S));
        let live = next_epoch(next_epoch(0, 4), 2);
        // Heard 3 s before the report arrived, at t0 + 12 s: the detector counts from t0 + 9 s.
        r.on_report(live, 17, Some(t0 + 9 * S));
        assert_eq!(r.highest_epoch(), live);
        assert_eq!(r.idle(t0 + 12 * S), Some(3 * S));
        assert!(!r.should_regenerate(0, t0 + 18 * S));
        assert!(r.should_regenerate(0, t0 + 19 * S));
        // Older news never moves the clock back, a stale epoch never counts.
        r.on_report(live, 12, Some(t0 + 2 * S));
        r.on_report(live, 13, None);
        assert_eq!(r.idle(t0 + 12 * S), Some(3 * S));
        r.on_report(next_epoch(0, 7), 99, Some(t0 + 11 * S));
        assert_eq!(r.idle(t0 + 12 * S), Some(3 * S));
        assert_eq!(r.last_seq(), 17);
        // Whatever this host mints now is above the live epoch it learned of.
        assert!(r.mint(0) > live);
        assert_eq!(r.on_token(live, 16, t0 + 12 * S), Arrival::Fresh);
    }
}
