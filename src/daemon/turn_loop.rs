//! Drives the turn machine (`token::walk`): takes a token from a peer (fence, dedupe, acknowledge),
//! then carries out the machine's actions (locate, decide, hand to a host, gather statistics,
//! pace the round, re-mint) with the token's heartbeat beating beside it until the token is
//! handed on or dropped. The walk's logic is the machine's; this file only does what it says.
//!
//! It never decides for a VM itself (that is `vm_turn`) and holds no state of its own.

use super::host::{Daemon, heartbeat_interval, unix_ms};
use super::inventory::Read;
use super::ring::{self, Arrival, EpochRejected};
use crate::p2p::{LocateOptions, PeerError, Peers, Responder};
use crate::token::walk::{Action, DropReason, Handoff, Input, TurnMachine};
use crate::topology::HostId;
use futures::FutureExt;
use scored_proto::{Announcement, Stamp, StatsRequest, Token, TokenAck, VmId};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Attempts to hand the token to one host before skipping it.
const HANDOFF_ATTEMPTS: u32 = 3;
/// Head of the global policy's round order shown in the log (the whole order of a large data
/// centre would not fit a log line).
const SCHEDULE_LOGGED: usize = 32;

impl<P: Peers> Daemon<P> {
    /// A peer hands us the token: check its epoch, fence, dedupe, refuse it while working on
    /// another, acknowledge, and start working on it.
    pub fn on_token(self: &Arc<Self>, from: HostId, token: Token, reply: Responder<TokenAck>) {
        let now = Instant::now();
        let mut watch = self.token_watch();
        match watch.ring().classify(token.epoch, token.seq) {
            Arrival::Rejected(why) => {
                drop(watch);
                self.epoch_rejected(from, "token", why);
                reply.send(TokenAck::Declined {
                    reason: why.to_string(),
                });
            }
            Arrival::Stale => {
                let current = Stamp {
                    epoch: watch.ring().highest_epoch(),
                    seq: watch.ring().last_seq(),
                };
                drop(watch);
                self.metrics.token.fenced.inc();
                tracing::warn!(from = %self.host_name(from), epoch = token.epoch, "stale token fenced off");
                reply.send(TokenAck::Fenced { current });
            }
            Arrival::Duplicate => {
                drop(watch);
                reply.send(TokenAck::Accepted);
            }
            Arrival::Fresh => {
                if let Some(held) = watch.holding() {
                    // One acting holder: this host works on a token already. Learning the other's
                    // epoch fences ours if it is newer (our turn ends at its next step) without
                    // starting a second turn beside it; the sender skips us and goes on.
                    let _ = watch.ring_mut().on_activity(token.epoch, token.seq, now);
                    let gives_way =
                        watch
                            .ring()
                            .rival_copy(token.epoch, token.seq, from.0, self.me.0);
                    if gives_way {
                        watch.give_way(held.epoch);
                    }
                    drop(watch);
                    tracing::warn!(
                        from = %self.host_name(from), epoch = token.epoch, seq = token.seq,
                        held_epoch = held.epoch, held_seq = held.seq, gives_way,
                        "second token refused: this host is working on one"
                    );
                    reply.send(TokenAck::Declined {
                        reason: format!("{} is working on token {held}", self.name()),
                    });
                    return;
                }
                watch.on_token(token.epoch, token.seq, now);
                watch.hold(token.stamp());
                drop(watch);
                reply.send(TokenAck::Accepted);
                self.metrics
                    .token
                    .epoch
                    .set(ring::epoch_generation(token.epoch) as i64);
                self.start_turn(token);
            }
        }
    }

    /// A peer's heartbeat: the token is alive (if its epoch passes the check), and if it shows
    /// a second copy of the epoch this host works on, the copy that must give way does.
    pub(super) fn on_token_seen(&self, from: HostId, at: Stamp, round: u32, now: Instant) {
        let mut watch = self.token_watch();
        if let Err(why) = watch.ring_mut().on_activity(at.epoch, at.seq, now) {
            drop(watch);
            self.epoch_rejected(from, "token heartbeat", why);
            return;
        }
        watch.round_heard(round, now);
        watch.heard_holding(from, at);
        let Some(held) = watch.holding() else { return };
        if held.epoch == at.epoch && watch.ring().rival_copy(at.epoch, at.seq, from.0, self.me.0) {
            watch.give_way(held.epoch);
            drop(watch);
            tracing::warn!(
                peer = %self.host_name(from), epoch = at.epoch, seq = at.seq,
                "a second copy of the token's epoch walks at a lower host: this copy gives way"
            );
        }
    }

    /// An epoch a peer sent failed the check (`ring::Ring::admit`): counted by reason, logged
    /// once per peer and reason, never recorded.
    pub(super) fn epoch_rejected(&self, from: HostId, via: &'static str, why: EpochRejected) {
        self.metrics
            .peers
            .rejected
            .get_or_create(&vec![("reason".to_string(), why.reason().to_string())])
            .inc();
        if self.token_watch().first_rejection(from, why.reason()) {
            let host = self.topo.host(from);
            tracing::warn!(
                peer = %host.name, peer_id = ?host.peer_id.map(|p| p.to_string()), via,
                reason = why.reason(), error = %why,
                "epoch from a peer rejected (further ones from it are only counted)"
            );
        }
    }

    /// Starts the turn for `token` as the task the task owner keeps (this host holds it).
    pub(super) fn start_turn(self: &Arc<Self>, token: Token) {
        let daemon = self.clone();
        self.tasks.start_turn(daemon.turn(token));
    }

    /// Tells every host the token is alive here (and resets our own loss detector).
    async fn heartbeat(&self, at: Stamp, round: u32) {
        {
            let mut watch = self.token_watch();
            let now = Instant::now();
            watch.ring_mut().touch(now);
            watch.round_heard(round, now);
        }
        let a = Announcement::TokenSeen {
            host: self.name().to_string(),
            at,
            round,
        };
        if let Err(e) = self.peers.publish(a).await {
            tracing::debug!(error = %e, "token heartbeat not published");
        }
    }

    /// Works on the token until it is handed to another host, fenced, or this host stops. The
    /// token's heartbeat is published beside the walk the whole time, whatever the walk waits on
    /// (capacity answers, a long migration).
    async fn turn(self: Arc<Self>, token: Token) {
        self.metrics.token.held.set(1);
        let stamp = |t: &Token| (t.stamp(), t.round);
        let (beat_tx, mut beat_rx) = tokio::sync::watch::channel(stamp(&token));
        let beat = heartbeat_interval(&self.config());
        // The heartbeat runs beside the walk, within this task: it ends when the walk does.
        let beating = async {
            loop {
                let (at, round) = *beat_rx.borrow_and_update();
                self.heartbeat(at, round).await;
                tokio::select! {
                    _ = tokio::time::sleep(beat) => {}
                    changed = beat_rx.changed() => if changed.is_err() { break },
                }
            }
        };
        let walking = async {
            // A panic inside the walk (a bug) must not leave this host claiming the token: it
            // would stop regeneration everywhere. The stamp last beaten names what was held.
            let r = std::panic::AssertUnwindSafe(self.work(token, &beat_tx))
                .catch_unwind()
                .await;
            let last = beat_tx.borrow().0;
            drop(beat_tx);
            r.map_err(|panic| (last, panic))
        };
        let (walked, ()) = tokio::join!(walking, beating);
        self.metrics.token.held.set(0);
        match walked {
            Ok((token, result)) => {
                // A newer token may have arrived meanwhile; only clear what is ours.
                self.token_watch().release(token.epoch);
                if let Err(why) = result {
                    tracing::warn!(
                        epoch = token.epoch,
                        "token dropped: {}",
                        why.describe(&self.topo)
                    );
                }
            }
            Err((last, panic)) => {
                self.token_watch().release(last.epoch);
                self.metrics.token.turn_panics.inc();
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_string());
                tracing::error!(
                    epoch = last.epoch, seq = last.seq, panic = %what,
                    "the turn panicked: token let go (peers or this host regenerate it)"
                );
            }
        }
    }

    /// Carries out the turn machine's actions until the token is handed on or dropped.
    async fn work(
        &self,
        token: Token,
        beat: &tokio::sync::watch::Sender<(Stamp, u32)>,
    ) -> (Token, Result<(), DropReason>) {
        let config = self.config();
        let handoff = config.token.handoff_timeout();
        let pause = heartbeat_interval(&config);
        // Decide on what the hypervisor says runs here now, not on the last periodic read: a VM
        // that migrated in just before the token came would otherwise still be cached at its
        // old host, and its partners here would chase it there (a ping-pong across the rack that
        // round-robin's order, deciding for neighbouring ids turn after turn, ran into).
        if let Err(e) = self.read_inventory(Read::Arrival).await {
            tracing::warn!(error = %e, "inventory at token arrival; deciding on the last one read");
        }
        let (mut machine, mut action) =
            match TurnMachine::start(self.me, token.clone(), &self.known_vms()) {
                Ok(started) => started,
                Err(why) => return (token, Err(why)),
            };
        loop {
            if action.starts_step() {
                if self.fenced(machine.token()) {
                    return (machine.token().clone(), Err(DropReason::NewerEpoch));
                }
                beat.send_replace(machine.stamp());
            }
            let input = match action {
                Action::Done => return (machine.token().clone(), Ok(())),
                Action::Drop(why) => return (machine.token().clone(), Err(why)),
                Action::PaceRound(round) => {
                    self.pace_round(machine.token(), round).await;
                    Input::Paced {
                        known: self.known_vms(),
                    }
                }
                Action::Wait => {
                    tokio::time::sleep(pause).await;
                    Input::Waited {
                        known: self.known_vms(),
                    }
                }
                Action::GatherStatistics => {
                    let g = self.gather_statistics(machine.token(), handoff).await;
                    let vms = g.expected.len();
                    action = machine.on(Input::Statistics(g.expected));
                    // Logged once the round is ordered: the head of its schedule shows the order.
                    let token = machine.token();
                    let head: Vec<String> = token
                        .schedule
                        .iter()
                        .take(SCHEDULE_LOGGED)
                        .map(|v| v.to_string())
                        .collect();
                    tracing::info!(
                        epoch = token.epoch, round = token.round, hosts_asked = g.asked,
                        hosts_answered = g.answered, vms,
                        elapsed_ms = g.elapsed.as_secs_f64() * 1e3, schedule = %head.join(","),
                        "global policy: statistics gathered"
                    );
                    continue;
                }
                Action::Locate(vm) => {
                    let host = self.locate_one(vm, handoff).await;
                    // The slot's level and load: the keys the distributed and load-aware orders use.
                    let token = machine.token();
                    let slot = token.slot(vm).copied();
                    tracing::debug!(
                        vm = %vm, host = ?host.map(|h| self.host_name(h)), epoch = token.epoch,
                        seq = token.seq, round = token.round, slot_level = slot.map(|s| s.level),
                        slot_load = slot.map(|s| s.load), "token: next holder"
                    );
                    Input::Located {
                        host,
                        stopping: self.stopping(),
                    }
                }
                Action::Decide(vm) => {
                    let neighbours = self.take_turn(vm, machine.token()).await;
                    tracing::debug!(vm = %vm, neighbours = neighbours.as_ref().map(|n| n.len()), "token: turn taken");
                    Input::Decided(neighbours.unwrap_or_default())
                }
                Action::HandTo(h) => {
                    let r = self.hand_to(h, machine.token(), handoff).await;
                    if matches!(r, Handoff::Skip { .. }) {
                        self.metrics.token.skipped_hosts.inc();
                    }
                    Input::Handed(r)
                }
                Action::Remint { host } => {
                    // The host may have taken it after all: fence that copy off.
                    let mut watch = self.token_watch();
                    let Some(epoch) = watch.ring().mint(self.me.0) else {
                        drop(watch);
                        return (machine.token().clone(), Err(DropReason::EpochsExhausted));
                    };
                    watch.on_token(epoch, 0, Instant::now());
                    watch.hold(Stamp { epoch, seq: 0 });
                    drop(watch);
                    beat.send_replace((Stamp { epoch, seq: 0 }, machine.token().round));
                    tracing::warn!(
                        host = %self.host_name(host), epoch,
                        unix_ms = unix_ms(),
                        "ambiguous hand-off: token re-minted under a higher epoch"
                    );
                    Input::Reminted { epoch }
                }
            };
            action = machine.on(input);
        }
    }

    /// Waits at a pass boundary until the round took at least `min_round`, heartbeating.
    async fn pace_round(&self, token: &Token, round: u32) {
        let config = self.config();
        let min_round = config.token.min_round();
        let started = {
            let mut watch = self.token_watch();
            let s = watch.round_began(round.saturating_sub(1));
            watch.round_heard(round, Instant::now());
            s
        };
        let Some(started) = started else { return };
        let until = started + min_round;
        let beat = heartbeat_interval(&config);
        while Instant::now() < until {
            if self.fenced(token) {
                return;
            }
            tokio::time::sleep(beat.min(until.saturating_duration_since(Instant::now()))).await;
        }
        // The new round starts now, for everyone's pacing.
        self.token_watch().round_starts(round, Instant::now());
    }

    /// Global policy, at a round start: asks every other host for its VMs' expected benefits
    /// (one statistics request per host, in parallel) and orders the round by them. A host that
    /// does not answer in time leaves its VMs at the end of the round, by id: a slow peer must
    /// not stall the token.
    async fn gather_statistics(&self, token: &Token, timeout: Duration) -> Gathered {
        let started = Instant::now();
        let req = StatsRequest {
            epoch: token.epoch,
            round: token.round,
        };
        let mut expected = self.local_benefits();
        let answers = self.peers.query_all_stats(req, timeout).await;
        let asked = answers.len();
        let mut answered = 0usize;
        for (host, r) in answers {
            match r {
                Ok(s) => {
                    answered += 1;
                    expected.extend(s.benefits.into_iter().map(|b| (b.vm, b.benefit)));
                }
                Err(e) => {
                    tracing::info!(host = %self.host_name(host), error = %e, "global policy: no statistics")
                }
            }
        }
        let elapsed = started.elapsed();
        self.metrics
            .token
            .statistics_gather
            .observe(elapsed.as_secs_f64());
        Gathered {
            expected,
            asked,
            answered,
            elapsed,
        }
    }

    async fn locate_one(&self, vm: VmId, timeout: Duration) -> Option<HostId> {
        if self.inventory.contains(vm) {
            return Some(self.me);
        }
        let options = LocateOptions {
            timeout,
            ..LocateOptions::default()
        };
        self.peers
            .locate(&[vm], options)
            .await
            .found
            .get(&vm)
            .copied()
    }

    /// Hands `token` to `host` ([`Self::try_hand_to`]); meanwhile this host still holds the
    /// token but no longer acts on it (`TokenWatch::acting`).
    async fn hand_to(&self, host: HostId, token: &Token, timeout: Duration) -> Handoff {
        self.token_watch().handing_on(token.epoch, true);
        let r = self.try_hand_to(host, token, timeout).await;
        if !matches!(r, Handoff::Done) {
            self.token_watch().handing_on(token.epoch, false);
        }
        r
    }

    async fn try_hand_to(&self, host: HostId, token: &Token, timeout: Duration) -> Handoff {
        let mut ambiguous = false;
        for attempt in 1..=HANDOFF_ATTEMPTS {
            let started = Instant::now();
            match self.peers.send_token(host, token.clone(), timeout).await {
                Ok(TokenAck::Accepted) => {
                    self.metrics
                        .token
                        .handoff_latency
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.token.passes.inc();
                    self.token_watch().release(token.epoch);
                    return Handoff::Done;
                }
                Ok(TokenAck::Fenced { current }) => {
                    let learned = self.token_watch().ring_mut().on_activity(
                        current.epoch,
                        current.seq,
                        Instant::now(),
                    );
                    if let Err(why) = learned {
                        // The host claims an epoch no host could have minted from what we know:
                        // it did not take the token, and its claim fences nothing here.
                        self.epoch_rejected(host, "fenced answer", why);
                        return Handoff::Skip { ambiguous };
                    }
                    self.metrics.token.fenced.inc();
                    return Handoff::Fenced;
                }
                Ok(TokenAck::Declined { reason }) => {
                    tracing::warn!(host = %self.host_name(host), %reason, "token declined; skipping host");
                    // An earlier attempt that got no answer may still have delivered it.
                    return Handoff::Skip { ambiguous };
                }
                Err(e) => {
                    ambiguous |= may_have_arrived(&e);
                    tracing::warn!(host = %self.host_name(host), attempt, error = %e, ambiguous, "token hand-off failed");
                    if !ambiguous && attempt == HANDOFF_ATTEMPTS {
                        return Handoff::Skip { ambiguous: false };
                    }
                    tokio::time::sleep(timeout / 10).await;
                }
            }
        }
        tracing::warn!(host = %self.host_name(host), "host skipped: the token could not be handed to it");
        Handoff::Skip { ambiguous }
    }
}

/// Whether a hand-off that failed with `e` may have reached the receiver's daemon anyway (so the
/// receiver may hold the token now): see [`PeerError::may_have_been_delivered`].
fn may_have_arrived(e: &PeerError) -> bool {
    e.may_have_been_delivered()
}

/// The statistics of a global round's start, and how the asking went.
struct Gathered {
    expected: Vec<(VmId, f64)>,
    asked: usize,
    answered: usize,
    elapsed: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2p::RequestFailure;
    use std::sync::Arc;

    fn protocol(cause: RequestFailure) -> PeerError {
        PeerError::Protocol {
            host: "h2".into(),
            what: "token",
            cause,
        }
    }

    #[test]
    fn a_hand_off_lost_after_its_request_went_out_is_ambiguous() {
        let timeout = PeerError::Timeout {
            host: "h2".into(),
            what: "token",
            after: Duration::from_secs(1),
        };
        assert!(may_have_arrived(&timeout));
        assert!(may_have_arrived(&protocol(
            RequestFailure::ConnectionClosed
        )));
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        assert!(may_have_arrived(&protocol(RequestFailure::Stream(
            Arc::new(io)
        ))));
        // Never sent, or refused: the receiver does not hold it.
        assert!(!may_have_arrived(&protocol(RequestFailure::DialFailed)));
        assert!(!may_have_arrived(&protocol(RequestFailure::Unsupported)));
        assert!(!may_have_arrived(&PeerError::Unreachable {
            host: "h2".into(),
            reason: crate::p2p::DIAL_FAILED,
        }));
    }
}
