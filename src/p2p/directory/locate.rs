//! Lookups: where VMs run, from the directory when it knows, verified or completed with batched
//! queries to the hosts concerned, following "moved to" hints, then asking the hosts that may
//! run what is still unknown: those whose inventory names it, those whose inventory is unknown.
//! Never every host: an address no inventory names (a gateway, a client) is external, and a host
//! that does not answer leaves uncertain only the VMs it may run. A host's own answer "here" is
//! the strongest fact there is: it replaces whatever the cache believed.
//!
//!
//! A host whose inventory is unknown is asked for it along with its answer
//! (`/scored/location/2`), so that one lookup is enough to hear from every host it asked: the
//! next lookup asks only the hosts still unheard, and once every host is heard, an address no
//! inventory names costs no query at all. A host that speaks only `/scored/location/1` answers
//! without it and stays unheard until its gossiped inventory arrives.
//!
//! Sends queries only through [`Peers`]; it decides nothing with what it finds.

use super::{AnnouncementRejected, Applied, Directory};
use crate::p2p::{PeerError, Peers};
use crate::topology::HostId;
use rand::seq::SliceRandom;
use scored_proto::{
    Announcement, Located, LocationAnswer, LocationQuery, MAX_LOCATION_BATCH, VmId,
};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

impl Directory {
    /// Applies the inventory `asked` sent with its answer, exactly as the same inventory
    /// gossiped by that host: the same checks (its size against the host's slots, stamps from
    /// the future, never over a newer fact) and the same record of what the host claims, which
    /// makes it heard. It may speak for itself without a gossip signature: the answer came on a
    /// connection whose Noise handshake proved the peer id the topology lists for `asked`, and
    /// the inventory speaks for no other host (the name is the asked host's, set here, never
    /// read from the answer).
    fn heard_from(
        &self,
        asked: HostId,
        vms: Vec<Located>,
    ) -> Result<Applied, AnnouncementRejected> {
        let inventory = Announcement::Inventory {
            host: self.topology.host(asked).name.clone(),
            vms,
        };
        self.apply(asked, &inventory)
    }

    /// Whether a refusal of `host`'s answered inventory for `reason` is the first: a host that
    /// stays unheard because its inventory is refused is asked again at every lookup, and its
    /// refusals would otherwise fill the log.
    fn first_refusal(&self, host: HostId, reason: &'static str) -> bool {
        self.lock().refusals_logged.insert((host, reason))
    }

    /// Applies one host's answer to a batch it was asked about. Stamps from the future are
    /// ignored (the VM counts as not answered).
    fn absorb(&self, asked: HostId, batch: &[VmId], answer: &LocationAnswer) -> Absorbed {
        let in_batch: BTreeSet<VmId> = batch.iter().copied().collect();
        let mut answered = BTreeSet::new();
        let mut out = Absorbed::default();
        let mut s = self.lock();
        for l in &answer.here {
            if in_batch.contains(&l.vm) && s.clock.admits(l.since) && answered.insert(l.vm) {
                self.claimed_here(&mut s, l.vm, asked, l.since);
                out.here.push(l.vm);
            }
        }
        for m in &answer.moved {
            if !in_batch.contains(&m.vm) || answered.contains(&m.vm) || !s.clock.admits(m.at) {
                continue;
            }
            if let Some(to) = self.topology.host_by_name(&m.to) {
                // The asked host no longer has it, whatever we believed; where it went is its
                // word about another host: a hint.
                self.hint(&mut s, m.vm, asked, to.id, m.at);
                out.moved.push((m.vm, to.id));
                answered.insert(m.vm);
            }
        }
        out.unknown = batch
            .iter()
            .copied()
            .filter(|v| !answered.contains(v))
            .collect();
        drop(s);
        // Whatever its inventory said, the host does not run these now.
        for vm in out.moved.iter().map(|(vm, _)| vm).chain(&out.unknown) {
            self.zombies.disclaim(asked, *vm);
        }
        out
    }

    /// Whom to ask about `vms`, which no host is known to run: each VM's claimants (hosts whose
    /// last inventory names it, though the cache no longer does) and the hosts of `reachable`
    /// whose inventory is unknown, less the hosts `asked` already. A VM with nobody to ask,
    /// found external a short while ago, or outside the topology's `vm_networks` is left out.
    ///
    /// At most `max_unheard` hosts whose inventory is unknown are asked, drawn at random: a host
    /// that has just started knows no inventory, and one lookup must not open a connection to
    /// every host of the data centre. The plan names the hosts drawn (they are asked for their
    /// inventory too) and counts those left out: a VM none of the asked hosts runs may run on
    /// one of them, so it is uncertain, not missing.
    fn whom_to_ask(
        &self,
        vms: &BTreeSet<VmId>,
        asked: &HashMap<VmId, Vec<HostId>>,
        reachable: &[HostId],
        max_unheard: usize,
        now: Instant,
    ) -> Plan {
        let mut unheard = self.zombies.unheard(reachable, now);
        let left_out = unheard.len().saturating_sub(max_unheard);
        if left_out > 0 {
            let (drawn, _) = unheard.partial_shuffle(&mut rand::rng(), max_unheard);
            unheard = drawn.to_vec();
        }
        let fresh_for = self.zombies.fresh_for();
        let mut plan: HashMap<HostId, Vec<VmId>> = HashMap::new();
        for &vm in vms {
            if !self.topology.may_be_vm(vm) {
                // Outside the networks the topology declares for VMs: never asked about.
                continue;
            }
            let mut hosts = self.zombies.claimants(vm);
            hosts.retain(|h| *h != self.me);
            if hosts.is_empty() && self.lock().external.contains(vm, now, fresh_for) {
                continue;
            }
            hosts.extend(unheard.iter().copied());
            hosts.sort_unstable();
            hosts.dedup();
            let done = asked.get(&vm);
            for h in hosts {
                if !done.is_some_and(|d| d.contains(&h)) {
                    plan.entry(h).or_default().push(vm);
                }
            }
        }
        Plan {
            batches: plan,
            unheard: unheard.into_iter().collect(),
            left_out,
        }
    }

    /// Every host that might run `vms` was asked and none does.
    fn remember_external(&self, vms: impl IntoIterator<Item = VmId>, now: Instant) {
        let mut s = self.lock();
        for vm in vms {
            s.external.insert(vm, now);
        }
    }
}

/// Whom a lookup asks about the VMs no host is known to run.
struct Plan {
    batches: HashMap<HostId, Vec<VmId>>,
    /// The hosts whose inventory is unknown drawn for this lookup: asked for it.
    unheard: BTreeSet<HostId>,
    /// Hosts whose inventory is unknown not drawn.
    left_out: usize,
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

/// Hosts whose inventory is unknown that one lookup asks by default: one wave of concurrent
/// queries ([`crate::p2p::MAX_CONCURRENT_QUERIES`]).
pub const MAX_UNHEARD_ASKED: usize = 64;

/// Hosts not answering that [`Locations::why_uncertain`] names before it only counts the rest.
pub const NAMED_SILENT_HOSTS: usize = 6;

/// How [`locate`] trusts the directory.
#[derive(Clone, Copy, Debug)]
pub struct LocateOptions {
    /// Each query gives up after this long.
    pub timeout: Duration,
    /// Ask the cached host even on a cache hit (one batched query per host), rather than
    /// trusting the cache. Use before acting on a location that matters, e.g. a migration.
    pub verify: bool,
    /// "Moved to" hints followed in a row before asking the hosts that may run the VM.
    pub max_hops: usize,
    /// Hosts whose inventory is unknown asked in one lookup, at most (drawn at random); a VM
    /// that may run on one of the others is uncertain.
    pub max_unheard: usize,
}

impl Default for LocateOptions {
    fn default() -> Self {
        LocateOptions {
            timeout: Duration::from_secs(2),
            verify: false,
            max_hops: 3,
            max_unheard: MAX_UNHEARD_ASKED,
        }
    }
}

/// The outcome of a lookup. Every VM asked for is in exactly one of `found`, `missing` and
/// `uncertain`.
#[derive(Debug, Default)]
pub struct Locations {
    pub found: HashMap<VmId, HostId>,
    /// VMs no host runs, as far as every host that may run them says: no VM of this data
    /// centre (a gateway, a client), or one that stopped. Their traffic does not depend on where
    /// the VM asking is placed, so a decision leaves them out.
    pub missing: Vec<VmId>,
    /// VMs that may run on a host that did not answer (its inventory names them, the cache
    /// points there, or its inventory is unknown): a decision waits for them.
    pub uncertain: Vec<VmId>,
    /// Queries that failed (the lookup carries on without them).
    pub failures: Vec<PeerError>,
    /// Hosts whose inventory is unknown that this lookup did not ask (beyond
    /// [`LocateOptions::max_unheard`]): the uncertain VMs may run there.
    pub unheard_not_asked: usize,
    /// Queries sent: one batch per host asked, per round (never one per host of the data
    /// centre, however many VMs no host is known to run).
    pub queries: usize,
    /// Inventories that came with an answer and were refused, as the same inventory gossiped
    /// would have been (more VMs than the host's slots, stamps from the future): the host that
    /// sent each, and why.
    pub rejected_inventories: Vec<(HostId, AnnouncementRejected)>,
}

impl Locations {
    /// The hosts that did not answer, by name, sorted (for people to read why VMs are uncertain).
    pub fn not_answering(&self) -> Vec<&str> {
        let names: BTreeSet<&str> = self.failures.iter().filter_map(|e| e.host()).collect();
        names.into_iter().collect()
    }

    /// Why VMs are uncertain, for a turn's record and the log: `N partner(s) could not be
    /// located (may run on hv3, hv9, not answering; may run on one of 40 hosts whose inventory
    /// is not known yet, not asked)`. At most [`NAMED_SILENT_HOSTS`] hosts are named (a saturated
    /// data centre can leave dozens silent), then counted. `None` when every VM was settled.
    pub fn why_uncertain(&self, what: &str) -> Option<String> {
        if self.uncertain.is_empty() {
            return None;
        }
        let silent = self.not_answering();
        let mut why = Vec::new();
        if !silent.is_empty() {
            why.push(format!(
                "may run on {}, not answering",
                crate::diagnostics::first_of(&silent, NAMED_SILENT_HOSTS)
            ));
        }
        if self.unheard_not_asked > 0 {
            why.push(format!(
                "may run on one of {} hosts whose inventory is not known yet, not asked",
                self.unheard_not_asked
            ));
        }
        Some(format!(
            "{} {what}(s) could not be located ({})",
            self.uncertain.len(),
            why.join("; ")
        ))
    }
}

/// Finds the host of each of `vms` (see the module doc for the order of sources).
pub async fn locate<P: Peers>(peers: &P, vms: &[VmId], options: LocateOptions) -> Locations {
    let now = Instant::now();
    let dir = peers.directory();
    let me = peers.me();
    let mut out = Locations::default();
    let mut targeted: HashMap<HostId, Vec<VmId>> = HashMap::new();
    let mut unknown: BTreeSet<VmId> = BTreeSet::new();
    // Hosts already asked about each VM, and the VMs a host that may run them did not answer for.
    let mut asked: HashMap<VmId, Vec<HostId>> = HashMap::new();
    let mut silent: BTreeSet<VmId> = BTreeSet::new();
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
        let results =
            query_batches(peers, batch, &BTreeSet::new(), options.timeout, &mut out).await;
        for (host, ids, result) in results {
            for vm in &ids {
                asked.entry(*vm).or_default().push(host);
            }
            match result {
                Ok(answer) => {
                    let a = dir.absorb(host, &ids, &answer);
                    for vm in &a.unknown {
                        dir.forget(*vm, host);
                    }
                    for vm in a.here {
                        out.found.insert(vm, host);
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
                    // It may still run there: unless another host has it, it stays uncertain.
                    silent.extend(ids.iter().copied());
                    unknown.extend(ids);
                    out.failures.push(e);
                }
            }
        }
        targeted = next;
        hops += 1;
    }

    // Nobody we know of has them: ask the hosts that may, then follow any hints once more.
    if !unknown.is_empty() {
        let plan = dir.whom_to_ask(&unknown, &asked, &peers.others(), options.max_unheard, now);
        let searched: BTreeSet<VmId> = plan.batches.values().flatten().copied().collect();
        out.unheard_not_asked = plan.left_out;
        if plan.left_out > 0 {
            // Hosts whose inventory is unknown were left out: any VM searched for may run there.
            silent.extend(searched.iter().copied());
        }
        let mut hints: HashMap<VmId, HostId> = HashMap::new();
        let batches: Vec<(HostId, Vec<VmId>)> = plan.batches.into_iter().collect();
        let results = query_batches(peers, batches, &plan.unheard, options.timeout, &mut out).await;
        for (host, ids, result) in results {
            match result {
                Ok(answer) => {
                    let a = dir.absorb(host, &ids, &answer);
                    for vm in a.here {
                        if unknown.remove(&vm) {
                            out.found.insert(vm, host);
                        }
                    }
                    hints.extend(a.moved);
                }
                Err(e) => {
                    silent.extend(ids);
                    out.failures.push(e);
                }
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
        let results =
            query_batches(peers, follow, &BTreeSet::new(), options.timeout, &mut out).await;
        for (host, ids, result) in results {
            match result {
                Ok(answer) => {
                    for vm in dir.absorb(host, &ids, &answer).here {
                        if unknown.remove(&vm) {
                            out.found.insert(vm, host);
                        }
                    }
                }
                Err(e) => {
                    silent.extend(ids);
                    out.failures.push(e);
                }
            }
        }
        let (uncertain, missing): (Vec<VmId>, Vec<VmId>) =
            unknown.into_iter().partition(|vm| silent.contains(vm));
        dir.remember_external(
            missing.iter().copied().filter(|vm| searched.contains(vm)),
            now,
        );
        out.missing = missing;
        out.uncertain = uncertain;
    }
    out
}

/// Sends each host its batch (split at the protocol's batch limit), concurrently, asking the
/// hosts of `inventory_from` for their inventory (once each, with their first chunk). An
/// inventory that comes back is applied before the answers are returned, so the caller sorts
/// out the answers against a directory that already knows it.
async fn query_batches<P: Peers>(
    peers: &P,
    batches: Vec<(HostId, Vec<VmId>)>,
    inventory_from: &BTreeSet<HostId>,
    timeout: Duration,
    out: &mut Locations,
) -> Vec<(HostId, Vec<VmId>, Result<LocationAnswer, PeerError>)> {
    let jobs: Vec<(HostId, LocationQuery)> = batches
        .into_iter()
        .flat_map(|(h, ids)| {
            ids.chunks(MAX_LOCATION_BATCH)
                .enumerate()
                .map(|(k, c)| {
                    let query = LocationQuery {
                        vms: c.to_vec(),
                        inventory: k == 0 && inventory_from.contains(&h),
                    };
                    (h, query)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    out.queries += jobs.len();
    let hosts: Vec<HostId> = (0..jobs.len() as u32).map(HostId).collect();
    // fan_out runs over indices into `jobs`, so one host can have several chunks.
    let jobs = &jobs;
    let results = crate::p2p::fan_out(&hosts, |i| {
        let (h, query) = &jobs[i.index()];
        peers.query_locations(*h, query.clone(), timeout)
    })
    .await;
    let dir = peers.directory();
    results
        .into_iter()
        .map(|(i, mut r)| {
            let (h, query) = &jobs[i.index()];
            if let Ok(answer) = &mut r
                && let Some(vms) = answer.inventory.take()
                && let Err(e) = dir.heard_from(*h, vms)
            {
                if dir.first_refusal(*h, e.reason()) {
                    tracing::warn!(
                        host = %peers.topology().host(*h).name,
                        error = %e,
                        "inventory sent with a location answer refused, as its gossip would be (logged once per host and reason; counted in scored_p2p_rejected_total)"
                    );
                }
                if let Some(m) = peers.counters() {
                    m.reject(e.reason());
                }
                out.rejected_inventories.push((*h, e));
            }
            (*h, query.vms.clone(), r)
        })
        .collect()
}
