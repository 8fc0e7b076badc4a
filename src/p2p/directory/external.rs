//! Addresses found to be no VM of this data centre while some host's inventory was unknown (a
//! gateway, a client): remembered for a while, so repeated lookups ask nobody again. Once every
//! inventory is known, the claims alone say so and nothing needs remembering.
//!
//! Keeps entries and their bound; whether a VM is external is the directory's to decide.

use scored_proto::VmId;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Addresses remembered (oldest forgotten first).
pub const MAX_EXTERNAL: usize = 4096;

#[derive(Default)]
pub(super) struct External {
    since: HashMap<VmId, Instant>,
    order: VecDeque<VmId>,
}

impl External {
    /// `vm` was asked of every host that might run it, and none does (as of `now`).
    pub(super) fn insert(&mut self, vm: VmId, now: Instant) {
        if self.since.insert(vm, now).is_none() {
            self.order.push_back(vm);
        }
        while self.order.len() > MAX_EXTERNAL {
            if let Some(old) = self.order.pop_front() {
                self.since.remove(&old);
            }
        }
    }

    /// Whether `vm` is known to be external: for as long as a claim stays fresh (`fresh_for`:
    /// a host that was not heard of then, and said "not here", has announced its inventory
    /// since).
    pub(super) fn contains(&self, vm: VmId, now: Instant, fresh_for: Duration) -> bool {
        self.since
            .get(&vm)
            .is_some_and(|at| now.saturating_duration_since(*at) <= fresh_for)
    }

    /// Something named `vm` as running on a host.
    pub(super) fn remove(&mut self, vm: VmId) {
        if self.since.remove(&vm).is_some() {
            self.order.retain(|v| *v != vm);
        }
    }
}
