//! Token safety: fencing, duplicate detection, loss detection, deterministic regeneration, and
//! the check every epoch learned from a peer passes before it counts.
//!
//! Pure state machine: time comes in as `Instant` arguments, nothing here sends or sleeps. The
//! daemon feeds it every token it receives and every sign of token activity it hears (hand-off
//! notices, statistics answers), and asks it when to regenerate.
//!
//! The rules (docs/protocol.md, "Token loss"):
//! - An epoch is `(generation << 16) | host index`: unique to the host that minted it, ordered by
//!   generation first. A token whose epoch is below the highest this host has seen is stale: it is
//!   dropped and never acts. Within an epoch, a sequence number at or below the last one is a
//!   duplicate of a token this host already received (a retried hand-off whose ack was lost):
//!   acknowledged, not processed again. Heartbeats never count as received.
//! - An epoch from a peer is admitted only if its minter is a host of the topology and its
//!   generation is at most [`MAX_GENERATION_STEP`] above the one known here ([`Ring::admit`]); a
//!   value that fails is never recorded, so it cannot fence anything nor spread.
//! - The holder publishes a heartbeat for as long as it holds the token (deciding, migrating);
//!   the token is declared lost when no activity was heard for `loss_timeout`.
//! - Hosts earlier in the topology regenerate first: slot r waits `r × stagger` more (and the
//!   daemon first checks that no lower host answers), so a dead first host is replaced without a
//!   vote.

use std::time::{Duration, Instant};

/// Hosts that can mint an epoch: the host index fills the epoch's low 16 bits.
pub const MAX_MINTING_HOSTS: u32 = 1 << 16;

/// The highest generation an epoch can carry (48 bits above the minter's index).
pub const MAX_GENERATION: u64 = (1 << 48) - 1;

/// How far above the generation a host knows a peer's epoch may be. Every legitimate mint is
/// one generation above what its minter knew, and each one follows a hand-off timeout (an
/// ambiguous hand-off) or a loss timeout of silence; a partition's sides mint apart from each
/// other, so on reunion one side may be many generations ahead. 2^16 mints on one side without
/// contact (more than 18 hours at one per second) is beyond any partition the cluster survives
/// unnoticed, while a peer that lies needs 2^32 messages to climb the 48-bit range.
pub const MAX_GENERATION_STEP: u64 = 1 << 16;

/// Ranks below this get a regeneration slot each; above it, slots widen with the rank's logarithm.
const LINEAR_RANKS: usize = 32;

/// The regeneration slot of the host at `index` in the topology: it waits `slot × stagger` after
/// the loss timeout. The first [`LINEAR_RANKS`] hosts get one slot each; beyond them a doubling
/// of the index adds [`LINEAR_RANKS`] slots, so hosts keep firing apart in a cluster of thousands
/// (about 2^k hosts share a slot between index 32·2^k and 32·2^(k+1): ~22 at index 1,000) while the last
/// of 50,000 hosts still waits only ~370 slots. A flat cap at 32 gave every host from the 33rd
/// on one deadline: when no lower host's heartbeat reached them (a cold start of 128 daemons on
/// one machine) they all surveyed everyone at once, none was answered in time, and each minted.
pub fn regeneration_slot(index: usize) -> usize {
    if index < LINEAR_RANKS {
        return index;
    }
    let doublings = (index as f64 / LINEAR_RANKS as f64).log2();
    LINEAR_RANKS + (doublings * LINEAR_RANKS as f64) as usize
}

/// Builds the epoch a host mints after having seen `highest`; `None` at the top of the range
/// (the generation never wraps back below the epochs it must fence).
pub fn next_epoch(highest: u64, host_index: u32) -> Option<u64> {
    debug_assert!(host_index < MAX_MINTING_HOSTS);
    let generation = epoch_generation(highest) + 1;
    (generation <= MAX_GENERATION).then(|| (generation << 16) | u64::from(host_index & 0xffff))
}

/// The host index that minted `epoch`.
pub fn epoch_minter(epoch: u64) -> u32 {
    (epoch & 0xffff) as u32
}

/// Generation number of an epoch (for display and metrics).
pub fn epoch_generation(epoch: u64) -> u64 {
    epoch >> 16
}

/// Why an epoch a peer sent was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EpochRejected {
    #[error("epoch {epoch:#x} names minter #{minter}, and the topology has {hosts} hosts")]
    UnknownMinter { epoch: u64, minter: u32, hosts: u32 },
    #[error(
        "epoch {epoch:#x} is generation {generation}, more than {MAX_GENERATION_STEP} above generation {known} known here"
    )]
    TooFarAhead {
        epoch: u64,
        generation: u64,
        known: u64,
    },
}

impl EpochRejected {
    /// Every value [`reason`](Self::reason) takes (each series exists from the start).
    pub const REASONS: [&'static str; 2] = ["epoch_unknown_minter", "epoch_too_far_ahead"];

    /// The `reason` label of `scored_p2p_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            EpochRejected::UnknownMinter { .. } => "epoch_unknown_minter",
            EpochRejected::TooFarAhead { .. } => "epoch_too_far_ahead",
        }
    }
}

/// What comparing notes with peers ([`Ring::rebase`]) changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rebase {
    Unchanged,
    /// This host knew an epoch no majority of its peers can admit: it fell back to theirs.
    Lowered {
        from: u64,
        to: u64,
    },
    /// This host knew far less than a majority of its peers (it just started): it caught up.
    Raised {
        from: u64,
        to: u64,
    },
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
    /// An epoch no host of the topology could have minted from what this host knows: never
    /// recorded, never acted on.
    Rejected(EpochRejected),
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
    /// Hosts in the topology: an epoch's minter must be one of them.
    hosts: u32,
    /// Periods this host deferred to a lower host since it last heard of a token first-hand.
    deferrals: u32,
}

impl Ring {
    pub fn new(now: Instant, loss_timeout: Duration, stagger: Duration, hosts: u32) -> Self {
        Ring {
            hosts,
            deferrals: 0,
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
            self.deferrals = 0;
        }
        arrival
    }

    /// Whether an epoch from a peer may count here: minted by a host of the topology, at most
    /// [`MAX_GENERATION_STEP`] generations above the highest known. Epoch 0 ("none") passes.
    pub fn admit(&self, epoch: u64) -> Result<(), EpochRejected> {
        if epoch == 0 {
            return Ok(());
        }
        let minter = epoch_minter(epoch);
        if minter >= self.hosts {
            return Err(EpochRejected::UnknownMinter {
                epoch,
                minter,
                hosts: self.hosts,
            });
        }
        let known = epoch_generation(self.highest_epoch);
        let generation = epoch_generation(epoch);
        if generation > known.saturating_add(MAX_GENERATION_STEP) {
            return Err(EpochRejected::TooFarAhead {
                epoch,
                generation,
                known,
            });
        }
        Ok(())
    }

    /// Classifies without recording (e.g. before deciding whether to ack).
    pub fn classify(&self, epoch: u64, seq: u64) -> Arrival {
        if let Err(why) = self.admit(epoch) {
            Arrival::Rejected(why)
        } else if epoch < self.highest_epoch {
            Arrival::Stale
        } else if epoch != 0 && (epoch, seq) <= self.received {
            Arrival::Duplicate
        } else {
            Arrival::Fresh
        }
    }

    /// Another host reported token activity (a hand-off notice). Activity from a stale epoch does
    /// not count: a fenced token must not keep the cluster from regenerating. An epoch that fails
    /// [`Ring::admit`] counts for nothing.
    pub fn on_activity(&mut self, epoch: u64, seq: u64, now: Instant) -> Result<(), EpochRejected> {
        self.admit(epoch)?;
        if epoch > self.highest_epoch || (epoch == self.highest_epoch && seq >= self.last_seq) {
            self.highest_epoch = epoch;
            self.last_seq = seq;
            self.heard = Some(now);
            self.deferrals = 0;
        }
        Ok(())
    }

    /// Whether a heartbeat `(epoch, seq)` from host `from` shows a second copy of the token this
    /// host received, `me` being this host: the same epoch, walked past the point where this
    /// host got its copy (a holder's own last heartbeat before the hand-off carries the handed
    /// sequence, never more). Of two copies, the one at the higher host index gives way, so
    /// exactly one goes on whatever order the heartbeats arrive in.
    pub fn rival_copy(&self, epoch: u64, seq: u64, from: u32, me: u32) -> bool {
        epoch != 0 && epoch == self.received.0 && seq > self.received.1 && from < me
    }

    /// A peer reports (in a statistics answer) that it heard of token `(epoch, seq)` at `when`.
    /// Like [`Ring::on_activity`], but the activity is dated: a report of old news moves the
    /// detector only as far as the news goes. A stale epoch counts for nothing.
    /// `when` is `None` when the news is older than this clock can tell: the epoch still counts.
    pub fn on_report(
        &mut self,
        epoch: u64,
        seq: u64,
        when: Option<Instant>,
    ) -> Result<(), EpochRejected> {
        self.admit(epoch)?;
        if epoch < self.highest_epoch {
            return Ok(());
        }
        if epoch > self.highest_epoch || seq > self.last_seq {
            self.last_seq = seq;
        }
        self.highest_epoch = epoch;
        if let Some(when) = when {
            self.heard = Some(self.heard.map_or(when, |h| h.max(when)));
        }
        Ok(())
    }

    /// Compares notes with the epochs `reports` that answering peers know (one per peer, 0 for
    /// "none"), when they come from a majority of the other hosts. A host whose epoch is more
    /// than [`MAX_GENERATION_STEP`] generations above what a majority of the reports says (pushed
    /// there step by step by a lying peer, or carried from a build that did not check) falls
    /// back to the highest epoch that majority agrees on: no peer would admit what it holds, and
    /// it would fence every live token. A host as far below a majority (just started, after a
    /// long life of the cluster) catches up to the lowest epoch that majority agrees on. A
    /// minority of liars moves neither: the value taken is one a majority vouches for.
    pub fn rebase(&mut self, reports: &[u64]) -> Rebase {
        // A peer that knows no epoch vouches for none (it may have just started).
        let mut sorted: Vec<u64> = reports.iter().copied().filter(|&e| e != 0).collect();
        let n = sorted.len();
        let others = self.hosts.saturating_sub(1) as usize;
        if n == 0 || n * 2 <= others {
            return Rebase::Unchanged;
        }
        sorted.sort_unstable();
        let majority = n / 2 + 1;
        // At or below `low`: a majority of the reports; at or above `high`: a majority too.
        let low = sorted[majority - 1];
        let high = sorted[n - majority];
        let mine = epoch_generation(self.highest_epoch);
        let from = self.highest_epoch;
        if mine > epoch_generation(low).saturating_add(MAX_GENERATION_STEP) {
            self.highest_epoch = low;
            self.last_seq = 0;
            if self.received.0 > low {
                self.received = (0, 0);
            }
            Rebase::Lowered { from, to: low }
        } else if epoch_generation(high) > mine.saturating_add(MAX_GENERATION_STEP)
            && epoch_minter(high) < self.hosts
        {
            self.highest_epoch = high;
            self.last_seq = 0;
            Rebase::Raised { from, to: high }
        } else {
            Rebase::Unchanged
        }
    }

    /// How long since this host last heard of a live token; `None` if it never heard of one.
    pub fn idle(&self, now: Instant) -> Option<Duration> {
        self.heard.map(|h| now.saturating_duration_since(h))
    }

    /// Whether this host heard of a live token itself (a token, a heartbeat, its own turn) at or
    /// after `t`: news that came in while it surveyed its peers.
    pub fn heard_since(&self, t: Instant) -> bool {
        self.heard.is_some_and(|h| h >= t)
    }

    /// This host holds the token and works on it: keep the detector quiet.
    pub fn touch(&mut self, now: Instant) {
        self.heard = Some(now);
        self.deferrals = 0;
    }

    /// This host leaves regeneration to another (a lower host answered): wait a full period
    /// again, without claiming to have heard anything.
    pub fn defer(&mut self, now: Instant) {
        self.armed = now;
        self.deferrals += 1;
    }

    /// Periods deferred to a lower host since this host last heard of a token itself (a token,
    /// a heartbeat, its own turn; a peer's report is a claim, not news heard here).
    pub fn deferrals(&self) -> u32 {
        self.deferrals
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
    /// token and records it with [`Ring::on_token`]. `None` once the generations are used up.
    pub fn mint(&self, host_index: u32) -> Option<u64> {
        next_epoch(self.highest_epoch, host_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const HOSTS: u32 = 8;

    #[test]
    fn epochs_are_unique_per_minter_and_ordered_by_generation() {
        let a = next_epoch(0, 3).unwrap();
        let b = next_epoch(0, 1).unwrap();
        assert_ne!(a, b);
        assert_eq!(epoch_generation(a), 1);
        assert_eq!(epoch_minter(a), 3);
        // Whoever mints after seeing `a` is above both.
        let c = next_epoch(a.max(b), 0).unwrap();
        assert!(c > a && c > b);
        assert_eq!(epoch_generation(c), 2);
    }

    #[test]
    fn fencing_and_duplicates() {
        let t0 = Instant::now();
        let mut r = Ring::new(t0, 10 * S, S, HOSTS);
        let e1 = next_epoch(0, 2).unwrap();
        assert_eq!(r.on_token(e1, 1, t0), Arrival::Fresh);
        assert_eq!(r.on_token(e1, 1, t0), Arrival::Duplicate);
        assert_eq!(r.on_token(e1, 0, t0), Arrival::Duplicate);
        assert_eq!(r.on_token(e1, 2, t0), Arrival::Fresh);
        let e2 = next_epoch(e1, 0).unwrap();
        assert_eq!(r.on_token(e2, 0, t0), Arrival::Fresh);
        // The old epoch is fenced off for good, whatever its sequence.
        assert_eq!(r.on_token(e1, 99, t0), Arrival::Stale);
        assert_eq!(r.highest_epoch(), e2);
    }

    #[test]
    fn activity_notices_never_make_a_real_hand_off_look_duplicate() {
        // The holder announces (e, 2) just before handing the token (e, 2) to us.
        let t0 = Instant::now();
        let mut r = Ring::new(t0, 10 * S, S, HOSTS);
        let e = next_epoch(0, 1).unwrap();
        r.on_activity(e, 1, t0).unwrap();
        r.on_activity(e, 2, t0).unwrap();
        assert_eq!(r.on_token(e, 2, t0), Arrival::Fresh);
        assert_eq!(r.on_token(e, 2, t0), Arrival::Duplicate);
        // Activity of a newer epoch still fences an older token.
        r.on_activity(next_epoch(e, 0).unwrap(), 0, t0).unwrap();
        assert_eq!(r.on_token(e, 3, t0), Arrival::Stale);
    }

    #[test]
    fn loss_detection_staggers_by_rank_and_ignores_stale_activity() {
        let t0 = Instant::now();
        let mut r = Ring::new(t0, 10 * S, 2 * S, HOSTS);
        let e = next_epoch(0, 0).unwrap();
        r.on_token(e, 5, t0);
        assert!(!r.should_regenerate(0, t0 + 9 * S));
        assert!(r.should_regenerate(0, t0 + 10 * S));
        assert!(!r.should_regenerate(1, t0 + 11 * S));
        assert!(r.should_regenerate(1, t0 + 12 * S));
        // Fresh activity resets the clock; activity of a fenced epoch does not.
        r.on_activity(e, 6, t0 + 9 * S).unwrap();
        assert!(!r.should_regenerate(0, t0 + 18 * S));
        let newer = next_epoch(e, 1).unwrap();
        r.on_activity(newer, 0, t0 + 9 * S).unwrap();
        r.on_activity(e, 100, t0 + 30 * S).unwrap();
        assert!(r.should_regenerate(0, t0 + 30 * S));
        assert!(r.mint(3).unwrap() > newer);
    }

    #[test]
    fn regeneration_slots_keep_hosts_apart_beyond_the_first_32() {
        // The first hosts one slot each, as before.
        for i in 0..32 {
            assert_eq!(regeneration_slot(i), i);
        }
        // Beyond them, later hosts still fire later: a flat cap gave hosts 33 to 1,000 one
        // deadline.
        assert!(regeneration_slot(32) < regeneration_slot(40));
        assert!(regeneration_slot(40) < regeneration_slot(100));
        assert!(regeneration_slot(100) < regeneration_slot(999));
        for i in 1..50_000 {
            assert!(regeneration_slot(i) >= regeneration_slot(i - 1));
        }
        // At most ~22 of 1,000 hosts share a slot, and the 50,000th host waits < 400 slots.
        let mut shared = std::collections::HashMap::new();
        for i in 0..1000 {
            *shared.entry(regeneration_slot(i)).or_insert(0) += 1;
        }
        assert!(shared.values().all(|&n| n <= 22), "{shared:?}");
        assert!(regeneration_slot(49_999) < 400);
    }

    #[test]
    fn news_heard_during_a_survey_is_told_apart_from_reports() {
        let t0 = Instant::now();
        let mut r = Ring::new(t0, 10 * S, S, HOSTS);
        assert!(!r.heard_since(t0));
        // A peer's report of a token heard before the survey began is no news heard meanwhile.
        let e = next_epoch(0, 1).unwrap();
        r.on_report(e, 0, Some(t0)).unwrap();
        assert!(!r.heard_since(t0 + S));
        // A heartbeat that came in while the survey ran is.
        r.on_activity(e, 1, t0 + 2 * S).unwrap();
        assert!(r.heard_since(t0 + S));
    }

    #[test]
    fn a_fresh_host_learns_the_epoch_and_the_age_of_the_news_from_reports() {
        let t0 = Instant::now();
        let mut r = Ring::new(t0, 10 * S, S, HOSTS);
        assert_eq!(r.idle(t0 + 20 * S), None);
        // Deferring re-arms the detector but is no news to pass on.
        r.defer(t0 + 5 * S);
        assert_eq!(r.idle(t0 + 20 * S), None);
        assert!(!r.should_regenerate(0, t0 + 14 * S));
        assert!(r.should_regenerate(0, t0 + 15 * S));
        assert_eq!(r.deferrals(), 1);
        let live = next_epoch(next_epoch(0, 4).unwrap(), 2).unwrap();
        // Heard 3 s before the report arrived, at t0 + 12 s: the detector counts from t0 + 9 s.
        r.on_report(live, 17, Some(t0 + 9 * S)).unwrap();
        assert_eq!(r.highest_epoch(), live);
        assert_eq!(r.idle(t0 + 12 * S), Some(3 * S));
        assert!(!r.should_regenerate(0, t0 + 18 * S));
        assert!(r.should_regenerate(0, t0 + 19 * S));
        // Older news never moves the clock back, a stale epoch never counts.
        r.on_report(live, 12, Some(t0 + 2 * S)).unwrap();
        r.on_report(live, 13, None).unwrap();
        assert_eq!(r.idle(t0 + 12 * S), Some(3 * S));
        r.on_report(next_epoch(0, 7).unwrap(), 99, Some(t0 + 11 * S))
            .unwrap();
        assert_eq!(r.idle(t0 + 12 * S), Some(3 * S));
        assert_eq!(r.last_seq(), 17);
        // Reports are claims, not news heard here: they do not end a run of deferrals.
        assert_eq!(r.deferrals(), 1);
        r.on_activity(live, 18, t0 + 13 * S).unwrap();
        assert_eq!(r.deferrals(), 0);
        // Whatever this host mints now is above the live epoch it learned of.
        assert!(r.mint(0).unwrap() > live);
        assert_eq!(r.on_token(live, 16, t0 + 12 * S), Arrival::Fresh);
    }

    /// An epoch of generation `g` minted by host `m`.
    fn epoch(g: u64, m: u32) -> u64 {
        (g << 16) | u64::from(m)
    }

    #[test]
    fn the_largest_epoch_a_peer_can_send_fences_nothing_and_minting_never_wraps() {
        let t0 = Instant::now();
        let mut r = Ring::new(t0, 10 * S, S, HOSTS);
        let live = next_epoch(0, 2).unwrap();
        assert_eq!(r.on_token(live, 1, t0), Arrival::Fresh);
        // u64::MAX names minter 0xffff, no host of eight: neither a token nor a heartbeat of it
        // is recorded, so the live token is not fenced and the next mint stays above it.
        assert!(matches!(
            r.on_token(u64::MAX, 0, t0),
            Arrival::Rejected(EpochRejected::UnknownMinter { minter: 0xffff, .. })
        ));
        assert!(r.on_activity(u64::MAX, 0, t0).is_err());
        assert!(r.on_report(u64::MAX, 0, Some(t0)).is_err());
        assert_eq!(r.highest_epoch(), live);
        assert_eq!(r.classify(live, 2), Arrival::Fresh);
        let mint = r.mint(3).unwrap();
        assert!(mint > live);
        assert_eq!(r.classify(mint, 0), Arrival::Fresh);
        // At the top of the range there is no next epoch, rather than one that wraps to the
        // bottom (the old arithmetic gave the bare host index, stale everywhere).
        assert_eq!(next_epoch(epoch(MAX_GENERATION, 1), 3), None);
        assert_eq!(
            next_epoch(epoch(MAX_GENERATION - 1, 1), 3),
            Some(epoch(MAX_GENERATION, 3))
        );
    }

    #[test]
    fn a_generation_advances_by_a_bounded_step_over_what_is_known() {
        let t0 = Instant::now();
        let mut r = Ring::new(t0, 10 * S, S, HOSTS);
        let live = epoch(5, 1);
        r.on_token(live, 1, t0);
        // Many regenerations on the other side of a partition: still admitted.
        let far = epoch(5 + MAX_GENERATION_STEP, 4);
        assert_eq!(r.admit(far), Ok(()));
        // One more is a value no legitimate minter could have reached from here.
        let too_far = epoch(6 + MAX_GENERATION_STEP, 4);
        assert!(matches!(
            r.on_activity(too_far, 0, t0),
            Err(EpochRejected::TooFarAhead { known: 5, .. })
        ));
        assert_eq!(r.highest_epoch(), live);
        // A minter outside the topology is refused whatever its generation.
        assert!(matches!(
            r.admit(epoch(6, HOSTS)),
            Err(EpochRejected::UnknownMinter { .. })
        ));
        assert_eq!(r.admit(0), Ok(()));
    }

    #[test]
    fn a_host_pushed_far_ahead_falls_back_to_what_a_majority_of_its_peers_knows() {
        let t0 = Instant::now();
        let mut r = Ring::new(t0, 10 * S, S, 4);
        // A lying peer pushes this host up in admissible steps.
        let live = epoch(3, 0);
        r.on_token(live, 2, t0);
        let mut pushed = live;
        for _ in 0..3 {
            pushed = epoch(epoch_generation(pushed) + MAX_GENERATION_STEP, 3);
            r.on_activity(pushed, 0, t0).unwrap();
        }
        assert_eq!(r.highest_epoch(), pushed);
        // Too few answers to judge: nothing changes.
        assert_eq!(r.rebase(&[live]), Rebase::Unchanged);
        // The liar alone, among three peers, does not keep it up.
        assert_eq!(
            r.rebase(&[live, pushed, epoch(2, 1)]),
            Rebase::Lowered {
                from: pushed,
                to: live
            }
        );
        assert_eq!(r.highest_epoch(), live);
        // The live token (seq 2 was this host's) counts again; so does its heartbeat.
        assert_eq!(r.classify(live, 3), Arrival::Fresh);
        assert_eq!(r.on_report(live, 5, Some(t0)), Ok(()));
    }

    #[test]
    fn a_fresh_host_catches_up_with_a_majority_but_not_with_one_liar() {
        let t0 = Instant::now();
        let mut r = Ring::new(t0, 10 * S, S, 4);
        let old = epoch(3 * MAX_GENERATION_STEP, 2);
        // One liar reports a far value; the other two know nothing yet.
        assert_eq!(r.rebase(&[old, 0, 0]), Rebase::Unchanged);
        // Hosts that know nothing vouch for nothing: they never pull a host down either.
        let mut high = Ring::new(t0, 10 * S, S, 4);
        for g in 1..=3 {
            high.on_activity(epoch(g * MAX_GENERATION_STEP, 2), 0, t0)
                .unwrap();
        }
        assert_eq!(high.rebase(&[0, 0, epoch(1, 1)]), Rebase::Unchanged);
        assert_eq!(high.highest_epoch(), old);
        assert_eq!(r.highest_epoch(), 0);
        // A majority reports the cluster's long-lived epoch: caught up, and it is admitted.
        assert_eq!(
            r.rebase(&[old, old, 0]),
            Rebase::Raised { from: 0, to: old }
        );
        assert_eq!(r.admit(old), Ok(()));
        assert_eq!(r.classify(old, 9), Arrival::Fresh);
    }

    #[test]
    fn a_second_copy_of_an_epoch_is_recognised_and_the_higher_host_gives_way() {
        let t0 = Instant::now();
        let mut r = Ring::new(t0, 10 * S, S, HOSTS);
        let e = epoch(4, 0);
        // Host 2 received (e, 5) from host 1.
        r.on_token(e, 5, t0);
        // The sender's own last heartbeat carries the handed sequence: not a copy.
        assert!(!r.rival_copy(e, 5, 1, 2));
        // Host 1 heartbeats e past 5: it kept a copy. Host 2, the higher, gives way...
        assert!(r.rival_copy(e, 7, 1, 2));
        // ...while host 1, hearing host 2's copy, keeps its own.
        let mut r1 = Ring::new(t0, 10 * S, S, HOSTS);
        r1.on_token(e, 3, t0);
        assert!(!r1.rival_copy(e, 9, 2, 1));
        // Another epoch is a matter for fencing, not for this rule.
        assert!(!r.rival_copy(epoch(5, 0), 9, 1, 2));
    }
}
