//! Token loss: when no sign of the token was heard for the loss timeout (staggered by this
//! host's place in the topology), check that no lower host is alive to regenerate it, ask every
//! peer what it knows of the token, and only then mint an epoch above every one reported and
//! start a turn with a token built from every host's VMs (docs/protocol.md, "Token loss").
//!
//! The fencing arithmetic is `ring`'s; this room only asks and mints. It never decides for a VM.

use super::host::{Daemon, loss_timing, unix_ms};
use super::ring;
use crate::p2p::Peers;
use crate::topology::HostId;
use futures::StreamExt;
use scored_proto::{Stamp, StatsRequest, Token, TokenView};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl<P: Peers> Daemon<P> {
    /// Called on every tick while no token is held here: when the loss timeout (staggered by this
    /// host's place in the topology) has run out, checks that no lower host is alive to do it,
    /// then mints a new token (in a task of its own, one at a time).
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
        self.tasks.start_loss_check(async move {
            if daemon.lower_host_alive().await {
                // Someone before us will (or did) regenerate: wait another period.
                daemon.token_watch().ring_mut().defer(Instant::now());
                return;
            }
            daemon.regenerate().await;
        });
    }

    /// Place in the regeneration order: hosts earlier in the topology file go first.
    fn timing_rank(&self) -> usize {
        self.me.index().min(32)
    }

    /// Whether any host before this one in the topology answers a (cheap, empty) location query.
    async fn lower_host_alive(&self) -> bool {
        let timeout = self.config().token.handoff_timeout() / 2;
        let lower: Vec<HostId> = (0..self.me.0).map(HostId).collect();
        let peers = self.peers.clone();
        let answers = futures::stream::iter(lower.into_iter().map(|h| {
            let peers = peers.clone();
            async move { peers.query_locations(h, Vec::new(), timeout).await.is_ok() }
        }))
        .buffer_unordered(crate::p2p::MAX_CONCURRENT_QUERIES);
        futures::pin_mut!(answers);
        while let Some(alive) = answers.next().await {
            if alive {
                return true;
            }
        }
        false
    }

    /// Asks every peer what it knows of the token and which VMs it runs; unless one of them heard
    /// of a live token recently, mints an epoch above every one reported, builds a fresh token from
    /// every host's inventory and works on it.
    ///
    /// Asking first matters most for a host that just (re)started: it has heard nothing yet, so
    /// its own loss detector fires although a token is alive, and the epoch it knows is 0.
    async fn regenerate(self: Arc<Self>) {
        let config = self.config();
        let (loss, _) = loss_timing(&config);
        let known = self.highest_epoch();
        let req = StatsRequest {
            epoch: known,
            round: 0,
        };
        let mut vms = self.known_vms();
        let answers = self
            .peers
            .query_all_stats(req, config.token.handoff_timeout())
            .await;
        let now = Instant::now();
        let mut answered = 0;
        let mut live: Option<(HostId, TokenView)> = None;
        let epoch = {
            let mut watch = self.token_watch();
            for (host, r) in &answers {
                let Ok(s) = r else { continue };
                answered += 1;
                vms.extend(s.benefits.iter().map(|b| b.vm));
                let view = s.token;
                if view.at.epoch == 0 {
                    continue;
                }
                let idle = Duration::from_millis(view.idle_ms.unwrap_or(u32::MAX).into());
                watch
                    .ring_mut()
                    .on_report(view.at.epoch, view.at.seq, now.checked_sub(idle));
                // Heard of within half the loss timeout: that token is alive, or was minted by a
                // peer a moment ago. Either way it is not ours to replace.
                if (view.held || idle < loss / 2) && view.at.epoch >= watch.ring().highest_epoch() {
                    live = Some((*host, view));
                }
            }
            if live.is_some() || watch.holding().is_some() || self.stopping() {
                None
            } else {
                let epoch = watch.ring().mint(self.me.0);
                watch.on_token(epoch, 0, now);
                watch.hold(Stamp { epoch, seq: 0 });
                Some(epoch)
            }
        };
        let Some(epoch) = epoch else {
            if let Some((host, view)) = live {
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
            }
            return;
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
