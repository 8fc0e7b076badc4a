//! The location directory: which VMs run on this host (authoritative), where VMs that left went
//! (forwarding hints), and where other VMs were last seen (a cache).
//!
//! Facts are ordered by [`Stamp`], the token position under which a VM arrived where it is: a
//! cache entry is replaced only by a fact at least as new, so a late answer or announcement
//! never undoes a newer one. Lookups ([`locate`]) answer from the directory, verify or fill
//! gaps with batched queries to the hosts concerned, follow "moved to" hints, and fall back to
//! asking every host. This module does no I/O itself: queries go through [`Peers`].

use super::zombies::Zombies;
use super::{PeerError, Peers};
use crate::topology::{HostId, Topology};
use scored_proto::{
    Announcement, Located, LocationResponse, MAX_LOCATION_BATCH, Moved, Stamp, VmId,
};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Departures remembered to answer "moved to" (oldest forgotten first).
pub const MAX_DEPARTED: usize = 4096;
/// Cache entries kept; far above the 40,960 VMs of the dc-2560 simulation.
pub const MAX_CACHED: usize = 1 << 20;

#[derive(Default)]
struct State {
    local: HashMap<VmId, Stamp>,
    departed: HashMap<VmId, (HostId, Stamp)>,
    departed_order: VecDeque<VmId>,
    cache: HashMap<VmId, (HostId, Stamp)>,
}

/// Why an announcement is not applied: a host may only speak for itself, about hosts the
/// topology lists.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnnouncementRejected {
    #[error("names host `{name}`, which is not in the topology")]
    UnknownHost { name: String },
    #[error("{author} announced a migration of VM {vm} between {from} and {to}")]
    NotItsMigration {
        author: String,
        vm: VmId,
        from: String,
        to: String,
    },
    #[error("{author} announced the inventory of {host}")]
    NotItsInventory { author: String, host: String },
    #[error("{author} announced the token at {host}")]
    NotItsToken { author: String, host: String },
}

/// One host's location directory. Shared (behind an `Arc`) by the daemon, which tells it what
/// runs here, and the transport, which answers peers from it.
pub struct Directory {
    topology: Arc<Topology>,
    me: HostId,
    state: Mutex<State>,
    /// Hosts' own claims of what they run, for zombie detection (`zombies`).
    zombies: Zombies,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Directory")
            .field("me", &self.me)
            .field("local", &s.local.len())
            .field("cached", &s.cache.len())
            .finish()
    }
}

impl Directory {
    pub fn new(topology: Arc<Topology>, me: HostId) -> Self {
        Directory {
            zombies: Zombies::new(topology.clone(), me),
            topology,
            me,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain maps behind, still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn me(&self) -> HostId {
        self.me
    }

    /// What peers claim to run, for zombie detection.
    pub fn zombies(&self) -> &Zombies {
        &self.zombies
    }

    /// Replaces the list of VMs running here (e.g. from the hypervisor at start).
    pub fn set_local(&self, vms: impl IntoIterator<Item = (VmId, Stamp)>) {
        let mut s = self.lock();
        s.local = vms.into_iter().collect();
        let State {
            local,
            departed,
            cache,
            ..
        } = &mut *s;
        for vm in local.keys() {
            departed.remove(vm);
            cache.remove(vm);
        }
    }

    /// `vm` now runs here, since token `at`.
    pub fn arrived(&self, vm: VmId, at: Stamp) {
        let mut s = self.lock();
        s.local.insert(vm, at);
        s.departed.remove(&vm);
        s.cache.remove(&vm);
    }

    /// `vm` left this host for `to` under token `at`.
    pub fn departed(&self, vm: VmId, to: HostId, at: Stamp) {
        let mut s = self.lock();
        s.local.remove(&vm);
        if s.departed.insert(vm, (to, at)).is_none() {
            s.departed_order.push_back(vm);
        }
        while s.departed_order.len() > MAX_DEPARTED {
            if let Some(old) = s.departed_order.pop_front() {
                s.departed.remove(&old);
            }
        }
        Self::learn_locked(&mut s, self.me, vm, to, at);
    }

    pub fn is_local(&self, vm: VmId) -> bool {
        self.lock().local.contains_key(&vm)
    }

    /// The VMs running here, sorted.
    pub fn local_vms(&self) -> Vec<Located> {
        let s = self.lock();
        let mut v: Vec<Located> = s
            .local
            .iter()
            .map(|(&vm, &since)| Located { vm, since })
            .collect();
        v.sort_unstable_by_key(|l| l.vm);
        v
    }

    /// The announcement of this host's inventory.
    pub fn inventory(&self) -> Announcement {
        Announcement::Inventory {
            host: self.topology.host(self.me).name.clone(),
            vms: self.local_vms(),
        }
    }

    /// VMs believed to run on other hosts (learned from inventories, announcements and answers),
    /// sorted. A regenerated token starts from these and the local ones.
    pub fn known_vms(&self) -> Vec<VmId> {
        let s = self.lock();
        let mut v: Vec<VmId> = s.cache.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Where `vm` is believed to be: here, or the cached host.
    pub fn lookup(&self, vm: VmId) -> Option<HostId> {
        let s = self.lock();
        if s.local.contains_key(&vm) {
            return Some(self.me);
        }
        s.cache.get(&vm).map(|(h, _)| *h)
    }

    pub fn cached_len(&self) -> usize {
        self.lock().cache.len()
    }

    /// Records that `vm` runs on `host` since `at`, unless a newer fact is known. Claims about
    /// this host are ignored: for its own VMs the directory knows better than any peer.
    pub fn learn(&self, vm: VmId, host: HostId, at: Stamp) -> bool {
        let mut s = self.lock();
        Self::learn_locked(&mut s, self.me, vm, host, at)
    }

    fn learn_locked(s: &mut State, me: HostId, vm: VmId, host: HostId, at: Stamp) -> bool {
        if host == me || s.local.contains_key(&vm) {
            return false;
        }
        match s.cache.get(&vm) {
            Some((_, known)) if *known > at => false,
            _ => {
                if s.cache.len() >= MAX_CACHED && !s.cache.contains_key(&vm) {
                    // Rare (a million VMs): start over rather than track recency on every hit.
                    s.cache.clear();
                }
                s.cache.insert(vm, (host, at));
                true
            }
        }
    }

    /// Drops every cached location (not this host's own VMs or departures), e.g. to measure
    /// cold lookups or after peers were restarted with other VMs.
    pub fn forget_cached(&self) {
        self.lock().cache.clear();
    }

    /// `host` says it does not run `vm`: drop a cache entry that points there.
    pub fn forget(&self, vm: VmId, host: HostId) {
        let mut s = self.lock();
        if s.cache.get(&vm).is_some_and(|(h, _)| *h == host) {
            s.cache.remove(&vm);
        }
    }

    /// This host's answer to a location request.
    pub fn answer(&self, vms: &[VmId]) -> LocationResponse {
        let s = self.lock();
        let mut out = LocationResponse::default();
        for &vm in vms {
            if let Some(&since) = s.local.get(&vm) {
                out.here.push(Located { vm, since });
            } else if let Some(&(to, at)) = s.departed.get(&vm) {
                out.moved.push(Moved {
                    vm,
                    to: self.topology.host(to).name.clone(),
                    at,
                });
            }
        }
        out
    }

    /// Applies a peer's announcement. `author` is the authenticated host that published it; a
    /// host may only speak for itself (its inventory, or a migration from or to it).
    pub fn apply(&self, author: HostId, a: &Announcement) -> Result<(), AnnouncementRejected> {
        // Before any check of the directory's own: a zombie shows as a claim it would refuse.
        self.zombies.observe(author, a, std::time::Instant::now());
        let host = |name: &str| {
            self.topology
                .host_by_name(name)
                .map(|h| h.id)
                .ok_or_else(|| AnnouncementRejected::UnknownHost { name: name.into() })
        };
        let author_name = || self.topology.host(author).name.clone();
        match a {
            Announcement::Migration(m) => {
                let from = host(&m.from)?;
                let to = host(&m.to)?;
                if author != from && author != to {
                    return Err(AnnouncementRejected::NotItsMigration {
                        author: author_name(),
                        vm: m.vm,
                        from: m.from.clone(),
                        to: m.to.clone(),
                    });
                }
                self.learn(m.vm, to, m.at);
                Ok(())
            }
            Announcement::Inventory { host: name, vms } => {
                let h = host(name)?;
                if h != author {
                    return Err(AnnouncementRejected::NotItsInventory {
                        author: author_name(),
                        host: name.clone(),
                    });
                }
                for l in vms {
                    self.learn(l.vm, h, l.since);
                }
                Ok(())
            }
            Announcement::TokenSeen { host: name, .. } => {
                if host(name)? != author {
                    return Err(AnnouncementRejected::NotItsToken {
                        author: author_name(),
                        host: name.clone(),
                    });
                }
                Ok(())
            }
        }
    }

    /// Applies one host's answer to a batch it was asked about.
    fn absorb(&self, asked: HostId, batch: &[VmId], answer: &LocationResponse) -> Absorbed {
        let in_batch: BTreeSet<VmId> = batch.iter().copied().collect();
        let mut answered = BTreeSet::new();
        let mut out = Absorbed::default();
        for l in &answer.here {
            if in_batch.contains(&l.vm) && answered.insert(l.vm) {
                self.learn(l.vm, asked, l.since);
                out.here.push(l.vm);
            }
        }
        for m in &answer.moved {
            if !in_batch.contains(&m.vm) || answered.contains(&m.vm) {
                continue;
            }
            if let Some(to) = self.topology.host_by_name(&m.to) {
                // The asked host no longer has it, whatever we believed.
                self.forget(m.vm, asked);
                self.learn(m.vm, to.id, m.at);
                out.moved.push((m.vm, to.id));
                answered.insert(m.vm);
            }
        }
        out.unknown = batch
            .iter()
            .copied()
            .filter(|v| !answered.contains(v))
            .collect();
        out
    }
}

/// One answer, sorted out.
#[derive(Default)]
struct Absorbed {
    here: Vec<VmId>,
    /// VMs the host says went elsewhere, and where.
    moved: Vec<(VmId, HostId)>,
    /// VMs the host knows nothing of.
    unknown: Vec<VmId>,
}

/// How [`locate`] trusts the directory.
#[derive(Clone, Copy, Debug)]
pub struct LocateOptions {
    /// Each query gives up after this long.
    pub timeout: Duration,
    /// Ask the cached host even on a cache hit (one batched query per host), rather than
    /// trusting the cache. Use before acting on a location that matters, e.g. a migration.
    pub verify: bool,
    /// "Moved to" hints followed in a row before asking everyone.
    pub max_hops: usize,
}

impl Default for LocateOptions {
    fn default() -> Self {
        LocateOptions {
            timeout: Duration::from_secs(2),
            verify: false,
            max_hops: 3,
        }
    }
}

/// The outcome of a lookup.
#[derive(Debug, Default)]
pub struct Locations {
    pub found: HashMap<VmId, HostId>,
    /// VMs no host admitted to running (stopped, or their host unreachable).
    pub missing: Vec<VmId>,
    /// Queries that failed (the lookup carries on without them).
    pub failures: Vec<PeerError>,
    /// Queries sent.
    pub queries: usize,
}

/// Finds the host of each of `vms` (see the module doc for the order of sources).
pub async fn locate<P: Peers>(peers: &P, vms: &[VmId], options: LocateOptions) -> Locations {
    let dir = peers.directory();
    let me = peers.me();
    let mut out = Locations::default();
    let mut targeted: HashMap<HostId, Vec<VmId>> = HashMap::new();
    let mut unknown: BTreeSet<VmId> = BTreeSet::new();
    let unique: BTreeSet<VmId> = vms.iter().copied().collect();
    for vm in unique {
        match dir.lookup(vm) {
            Some(h) if h == me => {
                out.found.insert(vm, me);
            }
            Some(h) if !options.verify => {
                out.found.insert(vm, h);
            }
            Some(h) => targeted.entry(h).or_default().push(vm),
            None => {
                unknown.insert(vm);
            }
        }
    }

    // Ask the hosts we have reason to believe in, following "moved to" hints.
    let mut hops = 0;
    while !targeted.is_empty() {
        let batch: Vec<(HostId, Vec<VmId>)> = targeted.drain().collect();
        let mut next: HashMap<HostId, Vec<VmId>> = HashMap::new();
        for (host, ids, result) in query_batches(peers, batch, options.timeout, &mut out).await {
            match result {
                Ok(answer) => {
                    let a = dir.absorb(host, &ids, &answer);
                    for vm in &a.unknown {
                        dir.forget(*vm, host);
                    }
                    for vm in a.here {
                        out.found.insert(vm, dir.lookup(vm).unwrap_or(host));
                    }
                    unknown.extend(a.unknown);
                    for (vm, to) in a.moved {
                        if to == me {
                            // We were told it came here, yet the directory does not have it.
                            unknown.insert(vm);
                        } else if hops + 1 < options.max_hops {
                            next.entry(to).or_default().push(vm);
                        } else {
                            unknown.insert(vm);
                        }
                    }
                }
                Err(e) => {
                    unknown.extend(ids);
                    out.failures.push(e);
                }
            }
        }
        targeted = next;
        hops += 1;
    }

    // Nobody we know of has them: ask every host, then follow any hints once more.
    if !unknown.is_empty() {
        let ids: Vec<VmId> = unknown.iter().copied().collect();
        let everyone: Vec<(HostId, Vec<VmId>)> = peers
            .others()
            .into_iter()
            .map(|h| (h, ids.clone()))
            .collect();
        let mut hints: HashMap<VmId, HostId> = HashMap::new();
        for (host, ids, result) in query_batches(peers, everyone, options.timeout, &mut out).await {
            match result {
                Ok(answer) => {
                    let a = dir.absorb(host, &ids, &answer);
                    for vm in a.here {
                        if unknown.remove(&vm) {
                            out.found.insert(vm, dir.lookup(vm).unwrap_or(host));
                        }
                    }
                    hints.extend(a.moved);
                }
                Err(e) => out.failures.push(e),
            }
        }
        // A VM that moved while we asked: its old host points at the new one.
        let mut follow: HashMap<HostId, Vec<VmId>> = HashMap::new();
        for vm in &unknown {
            if let Some(&to) = hints.get(vm)
                && to != me
            {
                follow.entry(to).or_default().push(*vm);
            }
        }
        let follow: Vec<(HostId, Vec<VmId>)> = follow.into_iter().collect();
        for (host, ids, result) in query_batches(peers, follow, options.timeout, &mut out).await {
            match result {
                Ok(answer) => {
                    for vm in dir.absorb(host, &ids, &answer).here {
                        if unknown.remove(&vm) {
                            out.found.insert(vm, dir.lookup(vm).unwrap_or(host));
                        }
                    }
                }
                Err(e) => out.failures.push(e),
            }
        }
        out.missing = unknown.into_iter().collect();
    }
    out
}

/// Sends each host its batch (split at the protocol's batch limit), concurrently.
async fn query_batches<P: Peers>(
    peers: &P,
    batches: Vec<(HostId, Vec<VmId>)>,
    timeout: Duration,
    out: &mut Locations,
) -> Vec<(HostId, Vec<VmId>, Result<LocationResponse, PeerError>)> {
    let jobs: Vec<(HostId, Vec<VmId>)> = batches
        .into_iter()
        .flat_map(|(h, ids)| {
            ids.chunks(MAX_LOCATION_BATCH)
                .map(|c| (h, c.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    out.queries += jobs.len();
    let hosts: Vec<HostId> = (0..jobs.len() as u32).map(HostId).collect();
    // fan_out runs over indices into `jobs`, so one host can have several chunks.
    let jobs = &jobs;
    let results = super::fan_out(&hosts, |i| {
        let (h, ids) = &jobs[i.index()];
        peers.query_locations(*h, ids.clone(), timeout)
    })
    .await;
    results
        .into_iter()
        .map(|(i, r)| {
            let (h, ids) = &jobs[i.index()];
            (*h, ids.clone(), r)
        })
        .collect()
}
