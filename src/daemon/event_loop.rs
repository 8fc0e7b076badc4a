//! The event loop: answers peers, takes tokens, answers control commands, watches for token
//! loss, moves the flow table's clock and the gauges, until `stop` completes or the transport
//! shuts down. Every task it starts goes through the task owner (`tasks`); [`shutdown`] stops
//! them all. [`drive`] is shared by `scored run` and the in-process tests.
//!
//! The loop itself never waits on the network or the hypervisor: what takes time runs in a task.

use super::commands::Command;
use super::host::Daemon;
use crate::flows::Skip;
use crate::p2p::{Inbound, InboundEvent, Peers};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Runs the daemon's event loop (and starts its inventory task) until `stop` completes.
pub async fn drive<P: Peers>(
    daemon: Arc<Daemon<P>>,
    mut inbound: Inbound,
    stop: impl Future<Output = ()>,
) {
    let mut commands = daemon.take_command_queue();
    daemon.tasks.spawn(daemon.clone().keep_inventory());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut gauges = tokio::time::interval(Duration::from_secs(5));
    // The flow table's own granularity is one second: advancing it more often is wasted work.
    let mut flows = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = inbound.recv() => {
                let Some(ev) = ev else { break };
                daemon.on_inbound(ev);
            }
            cmd = next_command(&mut commands) => daemon.on_command(cmd),
            _ = flows.tick() => daemon.traffic().tick(Instant::now()),
            _ = tick.tick() => daemon.check_token_loss(Instant::now()),
            _ = gauges.tick() => daemon.update_gauges(),
        }
    }
}

/// The next control command; never, for a loop that does not own the queue (a second `drive`).
async fn next_command(queue: &mut Option<mpsc::Receiver<Command>>) -> Command {
    match queue {
        Some(q) => match q.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Stops cleanly: no new decision, the token handed on, an in-flight migration finished (or its
/// journal entry left for the next start to reconcile), every task ended or left behind bounded.
pub async fn shutdown<P: Peers>(daemon: &Arc<Daemon<P>>) {
    let config = daemon.config();
    let limit = config.migration.params().timeout + config.token.handoff_timeout() * 4;
    let turns_ended = daemon
        .tasks
        .shut_down(limit, config.hypervisor.call_timeout())
        .await;
    if !turns_ended || daemon.holding().is_some() {
        tracing::warn!("stopping while holding the token: peers will regenerate it");
    }
}

/// Stops at once without handing the token on or finishing a migration, as a host that loses
/// power would (the lab's downed hosts). The caller also ends `drive` and the transport.
pub fn crash<P: Peers>(daemon: &Arc<Daemon<P>>) {
    daemon.tasks.abort();
}

impl<P: Peers> Daemon<P> {
    fn on_inbound(self: &Arc<Self>, ev: InboundEvent) {
        match ev {
            InboundEvent::Token { from, token, reply } => self.on_token(from, token, reply),
            InboundEvent::Capacity {
                from,
                request,
                reply,
            } => {
                self.tasks
                    .spawn(self.clone().answer_capacity(from, request, reply));
            }
            InboundEvent::Stats { request, reply, .. } => {
                self.tasks.spawn(self.clone().answer_stats(request, reply));
            }
            InboundEvent::Survey {
                from,
                request,
                reply,
            } => {
                self.tasks
                    .spawn(self.clone().answer_survey(from, request, reply));
            }
            InboundEvent::GroupMove {
                from,
                request,
                reply,
            } => {
                self.tasks
                    .spawn(self.clone().answer_move(from, request, reply));
            }
            InboundEvent::Announcement { from, announcement } => {
                self.on_announcement(from, announcement)
            }
            InboundEvent::PeerUp(_) => {
                // No announcement here: gossip delivers to every host, not to the one that just
                // connected, so one per connection was N² deliveries for a fan-out to N hosts
                // after the idle close. The inventory task announces at its next read (≤ 2 s)
                // until one announcement has reached a peer (the one at start reaches nobody
                // while gossip has no peer), then on change and every ~30 s: a peer that
                // (re)joined learns this host's VMs within one republish period.
                self.count_connected();
            }
            InboundEvent::PeerDown(_) => self.count_connected(),
        }
    }

    /// `scored_peers_connected`, from the transport: an event dropped from a full queue is
    /// made good here, at the next peer event or gauge update.
    fn count_connected(&self) {
        let n = self.peers.connected().len();
        self.metrics.peers.connected.set(n as i64);
    }

    fn update_gauges(&self) {
        self.count_connected();
        let (cost, traffic) = self.cost_by_level();
        self.metrics
            .set_levels(self.topo.level_names(), &cost, &traffic);
        let stats = self.traffic().source().stats();
        let sampling = u64::from(self.config().flows.sampling.max(1));
        let f = &self.metrics.flows;
        f.entries.set(stats.table.entries as i64);
        // The source keeps totals since it started; the counters move by the difference (they
        // are fed here only, so what they hold is what was fed before).
        let frames = &stats.frames;
        advance(&f.evictions, stats.table.evictions);
        advance(&f.packets, frames.frames);
        advance(&f.bytes, frames.bytes.saturating_mul(sampling));
        advance(&f.drops, stats.kernel_drops);
        advance(
            &f.unattributed,
            frames.frames.saturating_sub(frames.attributed_frames),
        );
        advance(
            &f.spoofed,
            frames.skipped(Skip::Spoofed) + frames.skipped(Skip::Misaddressed),
        );
        self.metrics
            .maintenance
            .set(self.operator().maintenance() as i64);
    }
}

/// Brings a counter up to a source's running total.
fn advance(counter: &prometheus_client::metrics::counter::Counter, total: u64) {
    let fed = counter.get();
    if total > fed {
        counter.inc_by(total - fed);
    }
}
