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
use crate::p2p::Peers;
use crate::topology::HostId;
use scored_proto::{Stamp, StatsRequest, Token, TokenView};
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

    /// Asks every peer's daemon what it knows of the token and which VMs it runs; unless one of
    /// them heard of a live token recently, or a host before this one answered, mints an epoch
    /// above every one admitted, builds a fresh token from every host's inventory and works on
    /// it.
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
        let req = StatsRequest {
            epoch: self.highest_epoch(),
            round: 0,
        };
        let mut vms = self.known_vms();
        let asked_at = Instant::now();
        let answers = self
            .peers
            .query_all_stats(req, config.token.handoff_timeout())
            .await;
        let now = Instant::now();
        let mut answered = 0;
        let mut rejected: Vec<(HostId, EpochRejected)> = Vec::new();
        let (verdict, rebased) = {
            let mut watch = self.token_watch();
            let reports: Vec<u64> = answers
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok().map(|s| s.token.at.epoch))
                .collect();
            // A token heard of first-hand while the survey ran (a lower host minted, its
            // heartbeat came in): that token is live, whatever the answers say. Checked before
            // the answers move the detector, whose reports are claims, not news.
            let heard_meanwhile = watch.ring().heard_since(asked_at);
            let rebased = watch.ring_mut().rebase(&reports);
            let mut live: Option<(HostId, TokenView)> = None;
            let mut lower: Option<HostId> = None;
            for (host, r) in &answers {
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
            (verdict, rebased)
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
}
