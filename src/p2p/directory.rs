//! The location directory: which VMs run on this host (authoritative), where VMs that left went
//! (forwarding hints), and where other VMs were last seen (a cache).
//!
//! Facts are ordered by [`Stamp`], the token position under which a VM arrived where it is: a
//! cache entry is replaced only by a fact at least as new, so a late answer or announcement
//! never undoes a newer one. Who may say what (docs/protocol.md, "Location directory"): only
//! the host that runs a VM claims it (its inventory, its arrival, its answer "here"); the host
//! a VM left may only say where it went about an entry that pointed at itself; no stamp may run
//! further ahead of this host's view of the token than the skew; no host is believed to run
//! more VMs than its slots. Lookups ([`locate`]) answer from the directory, verify or fill
//! gaps with batched queries to the hosts concerned, follow "moved to" hints, and ask about a
//! VM no host is known to run only the hosts that may run it: those whose inventory names it,
//! and those whose inventory this host does not know (`zombies`, the record of hosts' claims).
//! An address no inventory names is no VM of this data centre (external). This module does no
//! I/O itself: queries go through [`Peers`].
//!
//! [`Peers`]: super::Peers

mod cache;
mod clock;
mod external;
mod groups;
mod locate;

use super::zombies::Zombies;
use crate::topology::{HostId, Topology};
use cache::{Cache, Entry, Source};
pub use clock::DEFAULT_STAMP_SKEW;
use clock::TokenClock;
use external::External;
pub use external::MAX_EXTERNAL;
pub use groups::{GroupMember, Known, Reservation};
pub use locate::{LocateOptions, Locations, MAX_UNHEARD_ASKED, locate};
use scored_proto::{
    Announcement, Located, LocationAnswer, LocationQuery, MAX_HOST_VMS, Moved, Stamp, VmId,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// Departures remembered to answer "moved to" (oldest forgotten first).
pub const MAX_DEPARTED: usize = 4096;

struct State {
    local: HashMap<VmId, Stamp>,
    departed: HashMap<VmId, (HostId, Stamp)>,
    departed_order: VecDeque<VmId>,
    cache: Cache,
    /// Addresses no host runs, learned by asking the hosts whose inventory was unknown.
    external: External,
    /// VMs whose former host said they come here, not listed by the hypervisor yet: where
    /// from and under which stamp, so this host can announce their arrival itself. At most
    /// this host's slots.
    expected: HashMap<VmId, (HostId, Stamp)>,
    clock: TokenClock,
    /// Metadata groups: this host's, its peers', and the room it holds for VMs on their way.
    groups: groups::Groups,
    /// (host, reason) of inventories refused from location answers and already logged: counted
    /// every time, logged once each, as gossip does. Bounded by the topology's hosts × reasons.
    refusals_logged: HashSet<(HostId, &'static str)>,
}

/// `vm` runs here again: its departure is forgotten, and its place in the order with it (a
/// stale place would later evict the VM's next departure before its time).
fn forget_departure(
    departed: &mut HashMap<VmId, (HostId, Stamp)>,
    order: &mut VecDeque<VmId>,
    vm: VmId,
) {
    if departed.remove(&vm).is_some() {
        // Rare (a VM that comes back), and at most MAX_DEPARTED places to look through.
        order.retain(|v| *v != vm);
    }
}

/// The VMs running here, sorted by id: this host's inventory, gossiped and answered alike.
fn sorted_local(s: &State) -> Vec<Located> {
    let mut v: Vec<Located> = s
        .local
        .iter()
        .map(|(&vm, &since)| Located { vm, since })
        .collect();
    v.sort_unstable_by_key(|l| l.vm);
    v
}

/// A VM that appeared on this host after its former host said it would: this host announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub vm: VmId,
    pub from: HostId,
    pub at: Stamp,
}

/// What an applied announcement was to this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// News (or not about locations): the daemon hears of it.
    News,
    /// A migration this host already knew of: applying it again changed nothing, and the
    /// daemon does not hear of it (a repeated announcement must not count as another move).
    Repeat,
}

/// Why an announcement is not applied: a host may only speak for itself, about hosts the
/// topology lists, with stamps no further ahead than the skew and no more VMs than its slots.
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
    #[error(
        "{author} stamped VM {vm} at {at}, too far ahead of the token this host saw at {clock}"
    )]
    FromTheFuture {
        author: String,
        vm: VmId,
        at: Stamp,
        clock: Stamp,
    },
    #[error("{author} announced {vms} VMs, more than its {slots} slots")]
    InventoryTooLarge {
        author: String,
        vms: usize,
        slots: u32,
    },
}

impl AnnouncementRejected {
    /// Every value [`reason`](Self::reason) takes (each series exists from the start).
    pub const REASONS: [&'static str; 6] = [
        "unknown_host",
        "not_its_migration",
        "not_its_inventory",
        "not_its_token",
        "future_stamp",
        "inventory_too_large",
    ];

    /// The `reason` label of `scored_p2p_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AnnouncementRejected::UnknownHost { .. } => "unknown_host",
            AnnouncementRejected::NotItsMigration { .. } => "not_its_migration",
            AnnouncementRejected::NotItsInventory { .. } => "not_its_inventory",
            AnnouncementRejected::NotItsToken { .. } => "not_its_token",
            AnnouncementRejected::FromTheFuture { .. } => "future_stamp",
            AnnouncementRejected::InventoryTooLarge { .. } => "inventory_too_large",
        }
    }
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
        let state = State {
            local: HashMap::new(),
            departed: HashMap::new(),
            departed_order: VecDeque::new(),
            cache: Cache::new(&topology),
            external: External::default(),
            expected: HashMap::new(),
            clock: TokenClock::new(DEFAULT_STAMP_SKEW),
            groups: groups::Groups::default(),
            refusals_logged: HashSet::new(),
        };
        Directory {
            // The directory starts listening to announcements now: the grace of hosts never
            // heard of counts from here.
            zombies: Zombies::new(topology.clone(), me, std::time::Instant::now()),
            topology,
            me,
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain maps behind, still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn me(&self) -> HostId {
        self.me
    }

    /// Token steps a peer's stamp may run ahead of this host's view of the token.
    pub fn set_stamp_skew(&self, steps: u64) {
        self.lock().clock.set_skew(steps);
    }

    /// This host saw the token at `at` (a token it received, a heartbeat its ring accepted).
    /// The first time, cached entries stamped too far ahead of it (learned before any stamp
    /// could be judged) are dropped.
    pub fn observe_token(&self, at: Stamp) {
        let mut s = self.lock();
        if s.clock.observe(at) {
            let clock = s.clock;
            s.cache.retain(|e| clock.admits(e.at));
        }
    }

    /// This host's view of the token, if it has heard of one.
    pub fn token_clock(&self) -> Option<Stamp> {
        self.lock().clock.now()
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
            departed_order,
            cache,
            expected,
            groups,
            ..
        } = &mut *s;
        for vm in local.keys() {
            forget_departure(departed, departed_order, *vm);
            cache.remove(*vm);
            expected.remove(vm);
            // Arrived: its groups are now this host's own, read from the hypervisor.
            groups.release(*vm);
        }
    }

    /// Brings the VMs running here in step with the hypervisor's list, keeping the stamps of
    /// those already here. A VM new here takes the stamp its former host announced, else this
    /// host's view of the token (it runs here now, at the latest). Returns the new VMs whose
    /// former host announced them coming here: this host announces their arrival.
    pub fn refresh_local(&self, vms: impl IntoIterator<Item = VmId>) -> Vec<Arrival> {
        let mut s = self.lock();
        let now = s.clock.now().unwrap_or_default();
        let mut arrivals = Vec::new();
        let mut local = HashMap::new();
        for vm in vms {
            let since = match s.local.get(&vm) {
                Some(&since) => since,
                None => {
                    // A VM listed without its former host's word (an incoming migration not
                    // finished yet, an operator's move) is claimed by the inventory alone.
                    match s.expected.remove(&vm) {
                        Some((from, at)) => {
                            arrivals.push(Arrival { vm, from, at });
                            at
                        }
                        None => now,
                    }
                }
            };
            local.insert(vm, since);
        }
        drop(s);
        self.set_local(local);
        arrivals
    }

    /// `vm` now runs here, since token `at`.
    pub fn arrived(&self, vm: VmId, at: Stamp) {
        let mut s = self.lock();
        s.clock.observe(at);
        s.local.insert(vm, at);
        let State {
            departed,
            departed_order,
            ..
        } = &mut *s;
        forget_departure(departed, departed_order, vm);
        s.cache.remove(vm);
        s.expected.remove(&vm);
        s.groups.release(vm);
    }

    /// `vm` left this host for `to` under token `at`.
    pub fn departed(&self, vm: VmId, to: HostId, at: Stamp) {
        let mut s = self.lock();
        s.clock.observe(at);
        s.local.remove(&vm);
        if s.departed.insert(vm, (to, at)).is_none() {
            s.departed_order.push_back(vm);
        }
        while s.departed_order.len() > MAX_DEPARTED {
            if let Some(old) = s.departed_order.pop_front() {
                s.departed.remove(&old);
            }
        }
        self.put(&mut s, vm, to, at, Source::Hint);
    }

    pub fn is_local(&self, vm: VmId) -> bool {
        self.lock().local.contains_key(&vm)
    }

    /// The VMs running here, sorted: this host's inventory.
    pub fn local_vms(&self) -> Vec<Located> {
        sorted_local(&self.lock())
    }

    /// The announcement of this host's inventory (gossiped; the same list answers a location
    /// request that asks for it, [`Self::answer_query`]).
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
        let mut v: Vec<VmId> = s.cache.vms().collect();
        v.sort_unstable();
        v
    }

    /// The token stamp under which `vm` arrived here (`None`: it does not run here).
    pub fn local_since(&self, vm: VmId) -> Option<Stamp> {
        self.lock().local.get(&vm).copied()
    }

    /// Where `vm` is believed to be: here, or the cached host.
    pub fn lookup(&self, vm: VmId) -> Option<HostId> {
        let s = self.lock();
        if s.local.contains_key(&vm) {
            return Some(self.me);
        }
        s.cache.get(vm).map(|e| e.host)
    }

    pub fn cached_len(&self) -> usize {
        self.lock().cache.len()
    }

    /// Records that `host` says it runs `vm` since `at`, unless a newer fact is known. Claims
    /// about this host are ignored: for its own VMs the directory knows better than any peer.
    pub fn learn(&self, vm: VmId, host: HostId, at: Stamp) -> bool {
        let mut s = self.lock();
        self.put(&mut s, vm, host, at, Source::Claim)
    }

    /// Sets `vm`'s entry unless a newer fact is known; whether the entry changed.
    fn put(&self, s: &mut State, vm: VmId, host: HostId, at: Stamp, source: Source) -> bool {
        // Named as running somewhere: whatever this host concluded before, it is a VM here.
        s.external.remove(vm);
        if host == self.me || s.local.contains_key(&vm) {
            return false;
        }
        match s.cache.get(vm) {
            Some(known) if known.at > at => false,
            // The same place and stamp, told by no stronger source: nothing to change.
            Some(known) if known.host == host && known.at == at && known.source >= source => false,
            _ => {
                s.cache.put(vm, Entry { host, at, source });
                true
            }
        }
    }

    /// `author`, which `vm` left, says it went to `to`: believed about an entry that pointed at
    /// the author (or none), never over what another host said.
    fn hint(&self, s: &mut State, vm: VmId, author: HostId, to: HostId, at: Stamp) -> bool {
        s.external.remove(vm);
        if s.cache.get(vm).is_some_and(|e| e.host != author) {
            return false;
        }
        if s.cache.get(vm).is_some() && to == self.me {
            s.cache.remove(vm);
            return true;
        }
        self.put(s, vm, to, at, Source::Hint)
    }

    /// `host` answered that it runs `vm` since `since`: it wins over any cache entry. The
    /// stamp kept is the newer of the two, so a late older fact does not undo the answer.
    fn claimed_here(&self, s: &mut State, vm: VmId, host: HostId, since: Stamp) {
        s.external.remove(vm);
        if host == self.me || s.local.contains_key(&vm) {
            return;
        }
        let at = s.cache.get(vm).map_or(since, |e| e.at.max(since));
        s.cache.put(
            vm,
            Entry {
                host,
                at,
                source: Source::Claim,
            },
        );
    }

    /// Drops every cached location (not this host's own VMs or departures), e.g. to measure
    /// cold lookups or after peers were restarted with other VMs.
    pub fn forget_cached(&self) {
        self.lock().cache.clear();
    }

    /// `host` says it does not run `vm`: drop a cache entry that points there.
    pub fn forget(&self, vm: VmId, host: HostId) {
        let mut s = self.lock();
        if s.cache.get(vm).is_some_and(|e| e.host == host) {
            s.cache.remove(vm);
        }
    }

    /// This host's answer to a location request (`/scored/location/2`; a v1 request reads as
    /// one that does not ask for the inventory): which of the VMs asked about run here or left,
    /// and, when asked for, every VM that runs here, as the inventory announcement lists them
    /// ([`Self::inventory`]), read under the same lock as the answer so the two agree. An
    /// inventory longer than the wire carries is left out, as gossip would not carry it either.
    pub fn answer_query(&self, query: &LocationQuery) -> LocationAnswer {
        let s = self.lock();
        let mut out = LocationAnswer::default();
        for &vm in &query.vms {
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
        out.inventory = query
            .inventory
            .then(|| sorted_local(&s))
            .filter(|vms| vms.len() <= MAX_HOST_VMS);
        out
    }

    /// Applies a peer's announcement. `author` is the authenticated host that published it; a
    /// host may only speak for itself. The one place where peers' inventories and migrations
    /// enter this host.
    pub fn apply(&self, author: HostId, a: &Announcement) -> Result<Applied, AnnouncementRejected> {
        // Before any check of the directory's own: a zombie shows as a claim it would refuse.
        self.zombies.observe(author, a, std::time::Instant::now());
        let host = |name: &str| {
            self.topology
                .host_by_name(name)
                .map(|h| h.id)
                .ok_or_else(|| AnnouncementRejected::UnknownHost { name: name.into() })
        };
        let author_name = || self.topology.host(author).name.clone();
        let mut s = self.lock();
        let future = |s: &State, vm: VmId, at: Stamp| {
            (!s.clock.admits(at)).then(|| AnnouncementRejected::FromTheFuture {
                author: author_name(),
                vm,
                at,
                clock: s.clock.now().unwrap_or_default(),
            })
        };
        match a {
            Announcement::Migration(m) => {
                let from = host(&m.from)?;
                let to = host(&m.to)?;
                if let Some(e) = future(&s, m.vm, m.at) {
                    return Err(e);
                }
                if to != self.me {
                    // It went elsewhere: the room held for it here is free again.
                    s.groups.release(m.vm);
                }
                if author == to {
                    // The one attributable claim: the host now running the VM says so.
                    let news = self.put(&mut s, m.vm, to, m.at, Source::Arrival);
                    Ok(if news { Applied::News } else { Applied::Repeat })
                } else if author == from {
                    // Its former host only tells where the VM went.
                    self.hint(&mut s, m.vm, from, to, m.at);
                    if to == self.me {
                        self.expect(&mut s, m.vm, from, m.at);
                    }
                    Ok(Applied::News)
                } else {
                    Err(AnnouncementRejected::NotItsMigration {
                        author: author_name(),
                        vm: m.vm,
                        from: m.from.clone(),
                        to: m.to.clone(),
                    })
                }
            }
            Announcement::Inventory { host: name, vms } => {
                let h = host(name)?;
                if h != author {
                    return Err(AnnouncementRejected::NotItsInventory {
                        author: author_name(),
                        host: name.clone(),
                    });
                }
                let slots = self.topology.host(h).max_vms;
                if vms.len() > slots as usize {
                    return Err(AnnouncementRejected::InventoryTooLarge {
                        author: author_name(),
                        vms: vms.len(),
                        slots,
                    });
                }
                if let Some(e) = vms.iter().find_map(|l| future(&s, l.vm, l.since)) {
                    return Err(e);
                }
                for l in vms {
                    self.put(&mut s, l.vm, h, l.since, Source::Claim);
                }
                Ok(Applied::News)
            }
            Announcement::TokenSeen { host: name, .. } => {
                if host(name)? != author {
                    return Err(AnnouncementRejected::NotItsToken {
                        author: author_name(),
                        host: name.clone(),
                    });
                }
                Ok(Applied::News)
            }
        }
    }

    /// `from` says `vm` comes here: remembered until the hypervisor lists it, within this
    /// host's slots (a former host cannot make this host remember more).
    fn expect(&self, s: &mut State, vm: VmId, from: HostId, at: Stamp) {
        if s.local.contains_key(&vm) {
            return;
        }
        let slots = self.topology.host(self.me).max_vms as usize;
        if s.expected.len() >= slots && !s.expected.contains_key(&vm) {
            // Arrivals come one migration at a time: a full table is stale or made up.
            s.expected.clear();
        }
        s.expected.insert(vm, (from, at));
    }
}

#[cfg(test)]
mod locate_tests;
#[cfg(test)]
mod tests;
