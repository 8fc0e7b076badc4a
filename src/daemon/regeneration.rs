//! Token loss: when no sign of the token was heard for the loss timeout (staggered by this
//! host's place in the topology), ask every peer's daemon what it knows of the token and which
//! VMs it runs; compare notes (an epoch no majority vouches for is dropped); stand down while a
//! peer holds a live token, a lower host's daemon answers, or a heartbeat came in while the
//! peers were asked; only then mint an epoch above every
//! one admitted and start a turn with a token built from every host's VMs (docs/protocol.md,
//! "Token loss").
//!
//! The fencing arithmetic and the epoch check are `ring`'s; this room only asks and mints. It
//! never decides for a VM.

use super::host::{Daemon, loss_timing, unix_ms};
use super::ring::{self, EpochRejected, Rebase};
use crate::p2p::{PeerError, Peers};
use crate::topology::HostId;
use rand::{Rng, SeedableRng};
use scored_proto::{Stamp, StatsRequest, StatsResponse, Token, TokenView, VmId};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Periods a host defers to a lower host that answers, without hearing of a token itself, before
/// it regenerates anyway: the lower host goes first at its own (earlier) deadline, so if it has
/// not minted after this many periods it will not (its loss check is stuck, or it lies by
/// omission). Minting still happens only when no peer reports a live token.
const MAX_DEFERRALS: u32 = 3;

/// What asking every peer's daemon before minting led to.
enum Verdict {
    /// A peer holds a live token, or heard of one recently.
    Live(HostId, TokenView),
    /// A host before this one in the topology has a daemon that answers: it goes first.
    LowerAnswered(HostId),
    /// This host heard a live token itself (a heartbeat) while it waited for the answers.
    HeardMeanwhile,
    /// This host holds a token, or is stopping.
    Busy,
    /// The generations are used up: nothing can be minted above the highest epoch known.
    Exhausted,
    Minted(u64),
}

impl<P: Peers> Daemon<P> {
    /// Called on every tick while no token is held here: when the loss timeout (staggered by this
    /// host's place in the topology) has run out, asks the peers and maybe mints a new token (in
    /// a task of its own, one at a time).
    pub(super) fn check_token_loss(self: &Arc<Self>, now: Instant) {
        if self.stopping() || self.tasks.loss_check_running() {
            return;
        }
        {
            let watch = self.token_watch();
            if watch.holding().is_some() || !watch.ring().should_regenerate(self.timing_rank(), now)
            {
                return;
            }
        }
        let daemon = self.clone();
        self.tasks.start_loss_check(daemon.regenerate());
    }

    /// Place in the regeneration order: hosts earlier in the topology file go first.
    fn timing_rank(&self) -> usize {
        ring::regeneration_slot(self.me.index())
    }

    /// Asks the peers' daemons what they know of the token and which VMs they run; unless one of
    /// them heard of a live token recently, or a host before this one answered, mints an epoch
    /// above every one admitted, builds a fresh token from every host's inventory and works on
    /// it.
    ///
    /// A few peers are asked first ([`probe_set`]): the gossip neighbours (connected already),
    /// the nearest hosts before this one and a few drawn at random. When one of them reports a
    /// live token, or a host before this one answers, this host stands down without asking the
    /// rest: a host that fires because it has not heard from the cluster yet (one that just
    /// started, or a whole data centre starting) costs a dozen requests, not one connection to
    /// every host. Only a host about to mint asks everyone: the token is built from every host's
    /// VMs, and the epoch checked against what a majority reports.
    ///
    /// A statistics request is answered by the peer's event loop, not by its transport: a host
    /// whose daemon is stuck (its connections and pings still up) does not answer, so it neither
    /// holds regeneration back as "alive" nor vouches for an epoch.
    ///
    /// Asking first matters most for a host that just (re)started: it has heard nothing yet, so
    /// its own loss detector fires although a token is alive, and the epoch it knows is 0.
    async fn regenerate(self: Arc<Self>) {
        let config = self.config();
        let (loss, _) = loss_timing(&config);
        let timeout = config.token.handoff_timeout();
        let req = StatsRequest {
            epoch: self.highest_epoch(),
            round: 0,
        };
        let asked_at = Instant::now();
        let others = self.peers.others();
        let first = probe_set(&others, self.me, &self.peers.neighbours(), rand::random());
        let mut answers = self.peers.query_stats_of(&first, req, timeout).await;
        let mut judged = self.judge(&answers, asked_at, loss, first.len() == others.len());
        if judged.is_none() {
            let rest: Vec<HostId> = others
                .iter()
                .copied()
                .filter(|h| !first.contains(h))
                .collect();
            answers.extend(self.peers.query_stats_of(&rest, req, timeout).await);
            judged = self.judge(&answers, asked_at, loss, true);
        }
        let Some(Judged {
            verdict,
            rebased,
            answered,
            rejected,
            vms,
        }) = judged
        else {
            return;
        };
        for (host, why) in rejected {
            self.epoch_rejected(host, "statistics answer", why);
        }
        match rebased {
            Rebase::Unchanged => {}
            Rebase::Lowered { from, to } => tracing::warn!(
                from,
                to,
                hosts_answered = answered,
                "this host knew an epoch no majority of its peers vouches for: fell back to theirs"
            ),
            Rebase::Raised { from, to } => tracing::info!(
                from,
                to,
                hosts_answered = answered,
                "caught up with the epoch a majority of the peers knows"
            ),
        }
        let epoch = match verdict {
            Verdict::Minted(epoch) => epoch,
            Verdict::Live(host, view) => {
                self.metrics
                    .token
                    .epoch
                    .set(ring::epoch_generation(view.at.epoch) as i64);
                tracing::info!(
                    peer = %self.host_name(host),
                    epoch = view.at.epoch,
                    seq = view.at.seq,
                    idle_ms = view.idle_ms,
                    held = view.held,
                    "token not regenerated: a peer heard of a live token recently"
                );
                return;
            }
            Verdict::LowerAnswered(host) => {
                tracing::debug!(
                    peer = %self.host_name(host),
                    "token not regenerated: a host before this one answers and goes first"
                );
                return;
            }
            Verdict::HeardMeanwhile => {
                tracing::info!(
                    epoch = self.highest_epoch(),
                    "token not regenerated: a live token was heard of while the peers were asked"
                );
                return;
            }
            Verdict::Busy => return,
            Verdict::Exhausted => {
                tracing::error!(
                    epoch = self.highest_epoch(),
                    "token not regenerated: no epoch left above the highest known"
                );
                return;
            }
        };
        let token = Token::new(epoch, config.token.policy, vms);
        self.metrics.token.regenerations.inc();
        self.metrics
            .token
            .epoch
            .set(ring::epoch_generation(epoch) as i64);
        tracing::warn!(
            epoch,
            generation = ring::epoch_generation(epoch),
            slots = token.slots.len(),
            hosts_answered = answered,
            unix_ms = unix_ms(),
            policy = %token.policy,
            "token regenerated"
        );
        self.start_turn(token);
    }

    /// The verdict of the answers gathered so far, and its effects on the token state (epochs
    /// admitted, a deferral). `complete` says every peer was asked; when not, `None` stands for
    /// "ask the rest": this host would mint, and minting needs every host's answer.
    fn judge(
        &self,
        answers: &[(HostId, Result<StatsResponse, PeerError>)],
        asked_at: Instant,
        loss: Duration,
        complete: bool,
    ) -> Option<Judged> {
        let now = Instant::now();
        let mut vms = self.known_vms();
        let mut answered = 0;
        let mut rejected: Vec<(HostId, EpochRejected)> = Vec::new();
        let mut watch = self.token_watch();
        let reports: Vec<u64> = answers
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok().map(|s| s.token.at.epoch))
            .collect();
        // A token heard of first-hand while the survey ran (a lower host minted, its
        // heartbeat came in): that token is live, whatever the answers say. Checked before
        // the answers move the detector, whose reports are claims, not news.
        let heard_meanwhile = watch.ring().heard_since(asked_at);
        // A majority of the answers, from part of the hosts, is no majority of the hosts.
        let rebased = if complete {
            watch.ring_mut().rebase(&reports)
        } else {
            Rebase::Unchanged
        };
        let mut live: Option<(HostId, TokenView)> = None;
        let mut lower: Option<HostId> = None;
        for (host, r) in answers {
            let Ok(s) = r else { continue };
            answered += 1;
            if *host < self.me && lower.is_none() {
                lower = Some(*host);
            }
            vms.extend(s.benefits.iter().map(|b| b.vm));
            let view = s.token;
            if view.at.epoch == 0 {
                continue;
            }
            let idle = Duration::from_millis(view.idle_ms.unwrap_or(u32::MAX).into());
            if let Err(why) =
                watch
                    .ring_mut()
                    .on_report(view.at.epoch, view.at.seq, now.checked_sub(idle))
            {
                rejected.push((*host, why));
                continue;
            }
            // Heard of within half the loss timeout: that token is alive, or was minted by a
            // peer a moment ago. Either way it is not ours to replace.
            if (view.held || idle < loss / 2) && view.at.epoch >= watch.ring().highest_epoch() {
                live = Some((*host, view));
            }
        }
        let verdict = if watch.holding().is_some() || self.stopping() {
            Verdict::Busy
        } else if let Some((host, view)) = live {
            Verdict::Live(host, view)
        } else if heard_meanwhile {
            Verdict::HeardMeanwhile
        } else if let Some(host) = lower
            && watch.ring().deferrals() < MAX_DEFERRALS
        {
            // Someone before us will (or did) regenerate: wait another period.
            watch.ring_mut().defer(now);
            Verdict::LowerAnswered(host)
        } else if !complete {
            return None;
        } else if let Some(epoch) = watch.ring().mint(self.me.0) {
            if let Some(host) = lower {
                tracing::warn!(
                    peer = %self.host_name(host), deferrals = watch.ring().deferrals(),
                    "a host before this one answers but has not regenerated the token: minting"
                );
            }
            watch.on_token(epoch, 0, now);
            watch.hold(Stamp { epoch, seq: 0 });
            Verdict::Minted(epoch)
        } else {
            Verdict::Exhausted
        };
        Some(Judged {
            verdict,
            rebased,
            answered,
            rejected,
            vms,
        })
    }
}

/// What the answers of a survey led to.
struct Judged {
    verdict: Verdict,
    rebased: Rebase,
    answered: usize,
    rejected: Vec<(HostId, EpochRejected)>,
    vms: Vec<VmId>,
}

/// Nearest hosts before this one asked first: they regenerate before it, so one that answers
/// makes this host stand down.
const PROBE_LOWER: usize = 4;
/// Hosts drawn at random asked first, beyond the neighbours and the nearest lower hosts: a
/// different few on every attempt, so a silent neighbourhood does not hide a live token.
const PROBE_DRAWN: usize = 4;

/// The peers asked first when the loss detector fires, among `others` (in topology order):
/// `neighbours` (connections kept anyway), the [`PROBE_LOWER`] nearest hosts before `me`, and
/// [`PROBE_DRAWN`] more drawn from `salt`. At most a dozen or so, whatever the data centre's
/// size; every host of a small one.
pub fn probe_set(others: &[HostId], me: HostId, neighbours: &[HostId], salt: u64) -> Vec<HostId> {
    if others.len() <= neighbours.len() + PROBE_LOWER + PROBE_DRAWN {
        return others.to_vec();
    }
    let mut out: Vec<HostId> = neighbours
        .iter()
        .copied()
        .filter(|h| *h != me && others.contains(h))
        .collect();
    let below = others.partition_point(|h| *h < me);
    for h in others[..below].iter().rev().take(PROBE_LOWER) {
        if !out.contains(h) {
            out.push(*h);
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(salt);
    let mut drawn = 0;
    // A bounded number of draws: in a small data centre most land on hosts already taken.
    for _ in 0..PROBE_DRAWN * 4 {
        if drawn == PROBE_DRAWN || out.len() == others.len() {
            break;
        }
        let h = others[rng.random_range(0..others.len())];
        if !out.contains(&h) {
            out.push(h);
            drawn += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: u32) -> Vec<HostId> {
        (0..n).map(HostId).collect()
    }

    #[test]
    fn the_first_peers_asked_are_a_dozen_whatever_the_size_and_everyone_in_a_small_cluster() {
        for n in [1_000u32, 50_000] {
            let me = HostId(n / 2);
            let others: Vec<HostId> = hosts(n).into_iter().filter(|h| *h != me).collect();
            let neighbours = [
                HostId(3),
                HostId(n - 1),
                HostId(n / 2 + 1),
                HostId(n / 2 - 1),
            ];
            for salt in 0..50 {
                let first = probe_set(&others, me, &neighbours, salt);
                assert!(
                    first.len() <= 12,
                    "{} peers asked first at {n} hosts",
                    first.len()
                );
                assert!(!first.contains(&me));
                let mut unique = first.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(unique.len(), first.len(), "a peer asked twice");
                // The connected neighbours and the nearest hosts before this one are always in.
                for h in neighbours
                    .iter()
                    .chain(&others[(n / 2 - 4) as usize..(n / 2) as usize])
                {
                    assert!(first.contains(h), "{h:?} missing at {n} hosts");
                }
            }
            // The drawn ones change from one attempt to the next.
            assert_ne!(
                probe_set(&others, me, &neighbours, 1),
                probe_set(&others, me, &neighbours, 2)
            );
        }
        // A handful of hosts: everyone is asked in the first go (the survey is then complete).
        let others = hosts(6)[1..].to_vec();
        let mut first = probe_set(&others, HostId(0), &[], 7);
        first.sort();
        assert_eq!(first, others);
        // The first host has nobody before it.
        let others = hosts(100)[1..].to_vec();
        assert_eq!(probe_set(&others, HostId(0), &[], 7).len(), PROBE_DRAWN);
    }
}
