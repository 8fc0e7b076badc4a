//! Where other hosts' VMs were last seen: one entry per VM, each counted against the slots of
//! the host it points at, so what peers tell can never hold more entries than the topology
//! has room for VMs (`max_vms` summed over the hosts).
//!
//! Keeps entries and their counts consistent; it judges no stamp and no author (that is the
//! directory's), and it never asks a peer.

use crate::topology::{HostId, Topology};
use scored_proto::{Stamp, VmId};
use std::collections::HashMap;

/// How an entry was learned, weakest first: at one place and stamp, a stronger source replaces
/// a weaker one and never the reverse (a repeated arrival must not count as a new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Source {
    /// A third host said so: a VM's former host naming its new one.
    Hint,
    /// The host said so itself: its inventory, or its answer "here".
    Claim,
    /// The host announced that the VM migrated to it.
    Arrival,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub host: HostId,
    pub at: Stamp,
    pub source: Source,
}

pub(super) struct Cache {
    entries: HashMap<VmId, Entry>,
    /// Entries pointing at each host, by host index.
    per_host: Vec<u32>,
    /// Most entries pointing at each host: the VMs it has room for.
    limit: Vec<u32>,
}

impl Cache {
    pub(super) fn new(topology: &Topology) -> Self {
        Cache {
            entries: HashMap::new(),
            per_host: vec![0; topology.hosts().len()],
            limit: topology.hosts().iter().map(|h| h.max_vms).collect(),
        }
    }

    pub(super) fn get(&self, vm: VmId) -> Option<Entry> {
        self.entries.get(&vm).copied()
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn vms(&self) -> impl Iterator<Item = VmId> + '_ {
        self.entries.keys().copied()
    }

    /// Sets `vm`'s entry. A host already pointed at by as many entries as it has slots cannot
    /// run one more: its entries were stale or made up, and are dropped (they are only hints,
    /// which a lookup refills by asking).
    pub(super) fn put(&mut self, vm: VmId, entry: Entry) {
        let h = entry.host.index();
        let moves_here = self.entries.get(&vm).is_none_or(|e| e.host != entry.host);
        if moves_here && self.per_host[h] >= self.limit[h] {
            self.drop_host(entry.host);
        }
        if let Some(old) = self.entries.insert(vm, entry) {
            self.per_host[old.host.index()] -= 1;
        }
        self.per_host[h] += 1;
    }

    pub(super) fn remove(&mut self, vm: VmId) -> Option<Entry> {
        let old = self.entries.remove(&vm)?;
        self.per_host[old.host.index()] -= 1;
        Some(old)
    }

    /// Keeps only the entries `keep` says yes to.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        let per_host = &mut self.per_host;
        self.entries.retain(|_, e| {
            let k = keep(e);
            if !k {
                per_host[e.host.index()] -= 1;
            }
            k
        });
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.per_host.fill(0);
    }

    fn drop_host(&mut self, host: HostId) {
        tracing::debug!(
            host = host.0,
            entries = self.per_host[host.index()],
            "more VMs located on one host than it has slots: forgetting its cached entries"
        );
        self.retain(|e| e.host != host);
    }
}
