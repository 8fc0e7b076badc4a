//! The holder's turn as a pure state machine: which VM is next, whether this host decides for
//! it, hands the token to the host that runs it, skips it, gathers statistics, paces the round,
//! waits for VMs, re-mints the token, or is done with it.
//!
//! Pure: no clock, no I/O, no logging. What the network and the hypervisor said comes in as
//! [`Input`]s, what to do next goes out as [`Action`]s; the daemon's `turn_loop` carries them
//! out over the network, the simulator's engine (`sim::engine`) in memory. This module never
//! decides for a VM (that is `assess`) and never talks to a peer.

use super::{Neighbour, Next, Queue, TokenError, Turn};
use crate::topology::{HostId, Topology};
use scored_proto::{Slot, Stamp, Token, VmId};
use std::collections::HashSet;

/// What the driver must do next. Each action but [`Action::Done`] and [`Action::Drop`] is
/// answered by the input named on it.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Find the host that runs `vm` ([`Input::Located`]).
    Locate(VmId),
    /// Take the turn of local VM `vm`: decide, maybe migrate ([`Input::Decided`]).
    Decide(VmId),
    /// Hand the token to `host` ([`Input::Handed`]).
    HandTo(HostId),
    /// The global policy starts a round: ask every host for its VMs' benefits
    /// ([`Input::Statistics`]).
    GatherStatistics,
    /// A pass ended here: wait until round `round` may start ([`Input::Paced`]).
    PaceRound(u32),
    /// Nothing to schedule yet: keep the token and look again shortly ([`Input::Waited`]).
    Wait,
    /// A hand-off to `host` may have gone through after all: mint a higher epoch to fence that
    /// copy off ([`Input::Reminted`]).
    Remint { host: HostId },
    /// The token is with another host now.
    Done,
    /// This host lets the token go without handing it on.
    Drop(DropReason),
}

impl Action {
    /// Whether the action starts a new step of the walk (the old loop's top): the driver checks
    /// for a newer epoch and beats the heartbeat there.
    pub fn starts_step(&self) -> bool {
        matches!(
            self,
            Action::Locate(_) | Action::GatherStatistics | Action::PaceRound(_) | Action::Wait
        )
    }
}

/// What the driver learned carrying out the last action.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Where the VM of the last [`Action::Locate`] runs (`None`: no host admits to it), and
    /// whether this host is shutting down.
    Located {
        host: Option<HostId>,
        stopping: bool,
    },
    /// The decided VM's partners as seen from where it runs now (empty when its turn did not
    /// happen: the VM left by other means).
    Decided(Vec<Neighbour>),
    /// How the hand-off of the last [`Action::HandTo`] went.
    Handed(Handoff),
    /// Every VM's expected benefit, from the statistics gathered.
    Statistics(Vec<(VmId, f64)>),
    /// The round may start; the VMs this host knows of now.
    Paced { known: Vec<VmId> },
    /// The wait is over; the VMs this host knows of now.
    Waited { known: Vec<VmId> },
    /// The new epoch minted (sequence 0).
    Reminted { epoch: u64 },
}

impl Input {
    fn name(&self) -> &'static str {
        match self {
            Input::Located { .. } => "a location",
            Input::Decided(_) => "a decision",
            Input::Handed(_) => "a hand-off result",
            Input::Statistics(_) => "statistics",
            Input::Paced { .. } => "the end of pacing",
            Input::Waited { .. } => "the end of a wait",
            Input::Reminted { .. } => "a new epoch",
        }
    }
}

/// How handing the token to a host went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    Done,
    /// The host holds a newer token.
    Fenced,
    /// The host could not take it; `ambiguous` when it may have taken it after all (the request
    /// went out and no answer came back: a timeout, a connection closed or a stream broken).
    Skip {
        ambiguous: bool,
    },
}

/// Why this host let the token go without handing it on.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum DropReason {
    #[error("a newer epoch exists")]
    NewerEpoch,
    #[error("host #{} holds a newer token", .0.0)]
    FencedBy(HostId),
    #[error("stopping, and no other host runs a VM to pass the token to")]
    NoOtherHost,
    /// A re-mint was due and the epochs' generations are used up (only a peer pushing them to
    /// the top of the range gets here): better no token than one that wraps below every fence.
    #[error("no epoch left to mint above the highest known")]
    EpochsExhausted,
    #[error("token: {0}")]
    Token(#[from] TokenError),
    /// The driver answered an action with the wrong input (a bug): better drop the token than
    /// walk it wrong.
    #[error("the turn got {got} while waiting for the answer to {waiting}")]
    OutOfStep {
        got: &'static str,
        waiting: &'static str,
    },
}

impl DropReason {
    /// The reason as the log says it, with host names.
    pub fn describe(&self, topo: &Topology) -> String {
        match self {
            DropReason::FencedBy(h) => format!("{} holds a newer token", topo.host(*h).name),
            other => other.to_string(),
        }
    }
}

/// What the machine waits for: the answer to the action it gave last.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Awaiting {
    Located(VmId),
    Decided(VmId),
    Handed(VmId, HostId),
    Statistics,
    Paced,
    Waited,
    Reminted(VmId),
    Nothing,
}

impl Awaiting {
    fn name(self) -> &'static str {
        match self {
            Awaiting::Located(_) => "locate",
            Awaiting::Decided(_) => "decide",
            Awaiting::Handed(..) => "hand to",
            Awaiting::Statistics => "gather statistics",
            Awaiting::Paced => "pace round",
            Awaiting::Waited => "wait",
            Awaiting::Reminted(_) => "re-mint",
            Awaiting::Nothing => "nothing (the turn is over)",
        }
    }
}

/// One host's walk with the token, from arrival to hand-off.
pub struct TurnMachine {
    me: HostId,
    token: Token,
    queue: Queue,
    next: Next,
    /// The round this host last saw start (a change means a pass ended here).
    round: u32,
    /// Hosts the token could not be handed to this round.
    unreachable: HashSet<HostId>,
    /// VMs no host admits to: their slots go at the pass's end.
    missing: Vec<VmId>,
    /// Local VMs passed over while stopping.
    local_skips: usize,
    awaiting: Awaiting,
}

impl TurnMachine {
    /// Takes the token with every VM this host knows of (local ones and those the directory
    /// learned from other hosts); returns the machine and its first action.
    pub fn start(
        me: HostId,
        mut token: Token,
        known: &[VmId],
    ) -> Result<(TurnMachine, Action), DropReason> {
        add_slots(&mut token, known);
        let mut queue = Queue::new(&token)?;
        let next = match token.holder {
            Some(v) if token.slot(v).is_some() => Next::Holder(v),
            _ => queue.first(&mut token),
        };
        let mut m = TurnMachine {
            me,
            round: token.round,
            token,
            queue,
            next,
            unreachable: HashSet::new(),
            missing: Vec::new(),
            local_skips: 0,
            awaiting: Awaiting::Nothing,
        };
        let first = m.step();
        Ok((m, first))
    }

    /// The token as it stands.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The token's stamp and round, for the heartbeat.
    pub fn stamp(&self) -> (Stamp, u32) {
        (self.token.stamp(), self.token.round)
    }

    /// Takes the answer to the last action and gives the next one. An input that does not
    /// answer the last action is a driver bug: the token is dropped rather than mis-walked.
    pub fn on(&mut self, input: Input) -> Action {
        let awaiting = std::mem::replace(&mut self.awaiting, Awaiting::Nothing);
        let next = match (awaiting, input) {
            (Awaiting::Paced, Input::Paced { known }) => {
                if !self.missing.is_empty() {
                    let missing = std::mem::take(&mut self.missing);
                    self.token.slots.retain(|s| !missing.contains(&s.vm));
                }
                add_slots(&mut self.token, &known);
                match Queue::new(&self.token) {
                    Ok(q) => self.queue = q,
                    Err(e) => return Action::Drop(e.into()),
                }
                self.unreachable.clear();
                // The pass boundary is behind: go on with what `next` already names.
                return self.dispatch();
            }
            (Awaiting::Waited, Input::Waited { known }) => {
                add_slots(&mut self.token, &known);
                match Queue::new(&self.token) {
                    Ok(q) => self.queue = q,
                    Err(e) => return Action::Drop(e.into()),
                }
                Ok(self.queue.first(&mut self.token))
            }
            (Awaiting::Statistics, Input::Statistics(expected)) => {
                Ok(self.queue.start_round(&mut self.token, &expected))
            }
            (Awaiting::Located(vm), Input::Located { host, stopping }) => match host {
                Some(h) if h == self.me && stopping => {
                    // Shutting down: no new decision here; pass over local VMs to a peer.
                    self.local_skips += 1;
                    if self.local_skips > self.token.slots.len() {
                        return Action::Drop(DropReason::NoOtherHost);
                    }
                    self.queue.skip(&mut self.token, vm)
                }
                Some(h) if h == self.me => {
                    self.awaiting = Awaiting::Decided(vm);
                    return Action::Decide(vm);
                }
                Some(h) if self.unreachable.contains(&h) => self.queue.skip(&mut self.token, vm),
                Some(h) => {
                    self.awaiting = Awaiting::Handed(vm, h);
                    return Action::HandTo(h);
                }
                None => {
                    // No host admits to running it: stopped or deleted. Drop its slot at pass end.
                    self.missing.push(vm);
                    self.queue.skip(&mut self.token, vm)
                }
            },
            (Awaiting::Decided(vm), Input::Decided(neighbours)) => self.queue.hand_off(
                &mut self.token,
                &Turn {
                    vm,
                    neighbours: &neighbours,
                },
            ),
            (Awaiting::Handed(vm, host), Input::Handed(h)) => match h {
                Handoff::Done => return Action::Done,
                Handoff::Fenced => return Action::Drop(DropReason::FencedBy(host)),
                Handoff::Skip { ambiguous } => {
                    self.unreachable.insert(host);
                    if ambiguous {
                        self.awaiting = Awaiting::Reminted(vm);
                        return Action::Remint { host };
                    }
                    self.queue.skip(&mut self.token, vm)
                }
            },
            (Awaiting::Reminted(vm), Input::Reminted { epoch }) => {
                self.token.epoch = epoch;
                self.token.seq = 0;
                self.queue.skip(&mut self.token, vm)
            }
            (awaiting, input) => {
                return Action::Drop(DropReason::OutOfStep {
                    got: input.name(),
                    waiting: awaiting.name(),
                });
            }
        };
        match next {
            Ok(n) => {
                self.next = n;
                self.step()
            }
            Err(e) => Action::Drop(e.into()),
        }
    }

    /// The top of a step: a new round first paces, then the next VM is looked at.
    fn step(&mut self) -> Action {
        if self.token.round != self.round {
            self.round = self.token.round;
            self.awaiting = Awaiting::Paced;
            return Action::PaceRound(self.round);
        }
        self.dispatch()
    }

    fn dispatch(&mut self) -> Action {
        match self.next {
            Next::Holder(vm) => {
                self.awaiting = Awaiting::Located(vm);
                Action::Locate(vm)
            }
            Next::Empty => {
                self.awaiting = Awaiting::Waited;
                Action::Wait
            }
            Next::NeedsStatistics => {
                self.awaiting = Awaiting::Statistics;
                Action::GatherStatistics
            }
        }
    }
}

/// Adds a slot for every VM the token does not know yet: new or migrated-in local VMs, and VMs
/// the directory learned of from other hosts' inventories. The slots stay sorted by VM.
fn add_slots(token: &mut Token, known: &[VmId]) {
    for &vm in known {
        if let Err(i) = token.slots.binary_search_by_key(&vm, |s| s.vm) {
            token.slots.insert(
                i,
                Slot {
                    vm,
                    level: 0,
                    visited: false,
                    load: 0,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests;
