//! Migration history per VM: the cooldown that keeps a VM from moving again too soon, and the
//! memory of where it was, so it does not bounce back for a small gain (ping-pong).
//!
//! Every daemon keeps the history of every VM it hears a migration announcement for, so the history
//! follows a VM to its new host. The cooldown follows the rule operators know from KubeVirt:
//! `max(base, last migration's duration)`, doubled for each further move inside the window, capped.
//! Pure: instants come in as arguments.

use crate::config::DecisionConfig;
use crate::topology::HostId;
use scored_proto::VmId;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// VMs whose moves are remembered: above the 40,960 VMs of the dc-2560 simulation. Moves come
/// from peers' announcements, so the map needs a bound of its own; past it, the VMs whose last
/// move is oldest are forgotten first (their cooldown is the likeliest to be over).
pub const MAX_VMS: usize = 1 << 16;
/// Moves remembered per VM: the cooldown stops doubling at 20 moves in the window, so older
/// ones change nothing.
pub const MAX_MOVES_PER_VM: usize = 24;

/// Operator settings for the cooldown.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CooldownPolicy {
    /// Shortest cooldown after any move (default 15 min).
    pub base: Duration,
    /// Longest cooldown (default 6 h).
    pub cap: Duration,
    /// Moves older than this are forgotten (default 24 h).
    pub window: Duration,
}

impl CooldownPolicy {
    /// The cooldown of `[decision]` (`cooldown_base_s`, `cooldown_max_s`, `cooldown_window_s`).
    pub fn of(decision: &DecisionConfig) -> Self {
        CooldownPolicy {
            base: Duration::from_secs(decision.cooldown_base_s),
            cap: Duration::from_secs(decision.cooldown_max_s),
            window: Duration::from_secs(decision.cooldown_window_s),
        }
    }
}

impl Default for CooldownPolicy {
    fn default() -> Self {
        CooldownPolicy {
            base: Duration::from_secs(15 * 60),
            cap: Duration::from_secs(6 * 3600),
            window: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Move {
    at: Instant,
    from: HostId,
    took: Duration,
}

/// The recent moves of every VM this host has heard of.
#[derive(Clone, Debug, Default)]
pub struct History {
    moves: HashMap<VmId, VecDeque<Move>>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `vm` left `from` at `at`, the migration taking `took`.
    pub fn record(&mut self, vm: VmId, from: HostId, took: Duration, at: Instant) {
        let q = self.moves.entry(vm).or_default();
        q.push_back(Move { at, from, took });
        if q.len() > MAX_MOVES_PER_VM {
            q.pop_front();
        }
        if self.moves.len() > MAX_VMS {
            self.forget_oldest();
        }
    }

    /// When `vm` last moved, as far as this host heard (an arrival here: when this host saw it).
    pub fn last_move(&self, vm: VmId) -> Option<Instant> {
        self.moves.get(&vm).and_then(|q| q.back()).map(|m| m.at)
    }

    /// Forgets the eighth of the VMs whose last move is oldest: O(n) once per n/8 new VMs.
    fn forget_oldest(&mut self) {
        let mut last: Vec<Instant> = self
            .moves
            .values()
            .filter_map(|q| q.back().map(|m| m.at))
            .collect();
        let excess = last.len() / 8;
        let (_, cutoff, _) = last.select_nth_unstable(excess);
        let cutoff = *cutoff;
        let mut dropped = 0;
        self.moves.retain(|_, q| {
            let keep = dropped >= excess || q.back().is_some_and(|m| m.at > cutoff);
            if !keep {
                dropped += 1;
            }
            keep
        });
    }

    /// Drops moves older than the window (call now and then; bounded work per VM).
    pub fn forget_old(&mut self, policy: &CooldownPolicy, now: Instant) {
        self.moves.retain(|_, q| {
            while q
                .front()
                .is_some_and(|m| now.saturating_duration_since(m.at) > policy.window)
            {
                q.pop_front();
            }
            !q.is_empty()
        });
    }

    fn recent<'a>(
        &'a self,
        vm: VmId,
        policy: &'a CooldownPolicy,
        now: Instant,
    ) -> impl Iterator<Item = &'a Move> + 'a {
        self.moves
            .get(&vm)
            .into_iter()
            .flatten()
            .filter(move |m| now.saturating_duration_since(m.at) <= policy.window)
    }

    /// Until when `vm` may not move, if it is cooling down now.
    pub fn cooldown_until(
        &self,
        vm: VmId,
        policy: &CooldownPolicy,
        now: Instant,
    ) -> Option<Instant> {
        let recent: Vec<&Move> = self.recent(vm, policy, now).collect();
        let last = recent.last()?;
        let doublings = (recent.len() - 1).min(20) as u32;
        let length = policy
            .base
            .max(last.took)
            .saturating_mul(1 << doublings)
            .min(policy.cap);
        let until = last.at + length;
        (until > now).then_some(until)
    }

    /// Hosts `vm` left inside the window: moving back to one of them needs a larger gain.
    pub fn left_recently(&self, vm: VmId, policy: &CooldownPolicy, now: Instant) -> Vec<HostId> {
        let mut hosts: Vec<HostId> = self.recent(vm, policy, now).map(|m| m.from).collect();
        hosts.sort_unstable();
        hosts.dedup();
        hosts
    }

    /// Number of moves of `vm` inside the window.
    pub fn moves_in_window(&self, vm: VmId, policy: &CooldownPolicy, now: Instant) -> usize {
        self.recent(vm, policy, now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn cooldown_grows_doubles_and_caps() {
        let p = CooldownPolicy::default();
        let t0 = Instant::now();
        let vm = VmId(7);
        let mut h = History::new();
        assert_eq!(h.cooldown_until(vm, &p, t0), None);

        h.record(vm, HostId(1), Duration::from_secs(3), t0);
        assert_eq!(h.cooldown_until(vm, &p, t0), Some(t0 + 15 * MIN));
        assert_eq!(h.cooldown_until(vm, &p, t0 + 15 * MIN), None);

        // A long migration sets the base.
        let t1 = t0 + 20 * MIN;
        h.record(vm, HostId(2), 40 * MIN, t1);
        // Second move in the window: max(15 min, 40 min) × 2.
        assert_eq!(h.cooldown_until(vm, &p, t1), Some(t1 + 80 * MIN));

        for i in 0..10 {
            h.record(vm, HostId(3), MIN, t1 + Duration::from_secs(i));
        }
        let last = t1 + Duration::from_secs(9);
        assert_eq!(h.cooldown_until(vm, &p, last), Some(last + p.cap));
        assert_eq!(h.moves_in_window(vm, &p, last), 12);
        assert_eq!(
            h.left_recently(vm, &p, last),
            vec![HostId(1), HostId(2), HostId(3)]
        );
    }

    #[test]
    fn old_moves_are_forgotten() {
        let p = CooldownPolicy::default();
        let t0 = Instant::now();
        let mut h = History::new();
        h.record(VmId(1), HostId(0), MIN, t0);
        let later = t0 + p.window + MIN;
        assert_eq!(h.moves_in_window(VmId(1), &p, later), 0);
        assert!(h.left_recently(VmId(1), &p, later).is_empty());
        h.forget_old(&p, later);
        assert!(h.moves.is_empty());
    }

    #[test]
    fn a_flood_of_moves_keeps_the_history_bounded() {
        let p = CooldownPolicy::default();
        let t0 = Instant::now();
        let mut h = History::new();
        // A peer announcing arrivals of VMs without end, and one VM moving without end.
        for i in 0..200_000u32 {
            h.record(VmId(i), HostId(1), MIN, t0);
        }
        for _ in 0..10_000 {
            h.record(VmId(7), HostId(2), MIN, t0);
        }
        assert!(h.moves.len() <= MAX_VMS, "{} VMs", h.moves.len());
        assert!(h.moves.values().all(|q| q.len() <= MAX_MOVES_PER_VM));
        // A fresh move after the flood still counts in full.
        let v = VmId(u32::MAX);
        let t1 = t0 + MIN;
        h.record(v, HostId(3), MIN, t1);
        assert_eq!(h.cooldown_until(v, &p, t1), Some(t1 + 15 * MIN));
        assert_eq!(h.left_recently(v, &p, t1), vec![HostId(3)]);
        // VM 7 moved far more than the cap: its cooldown is at the cap.
        assert_eq!(h.cooldown_until(VmId(7), &p, t0), Some(t0 + p.cap));
    }
}
