//! Lookups: where VMs run, from the directory when it knows, verified or completed with batched
//! queries to the hosts concerned, following "moved to" hints, then asking every host. A host's
//! own answer "here" is the strongest fact there is: it replaces whatever the cache believed.
//!
//! Sends queries only through [`Peers`]; it decides nothing with what it finds.

use super::Directory;
use crate::p2p::{PeerError, Peers};
use crate::topology::HostId;
use scored_proto::{LocationResponse, MAX_LOCATION_BATCH, VmId};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

impl Directory {
    /// Applies one host's answer to a batch it was asked about. Stamps from the future are
    /// ignored (the VM counts as not answered).
    fn absorb(&self, asked: HostId, batch: &[VmId], answer: &LocationResponse) -> Absorbed {
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
                            out.found.insert(vm, host);
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
                            out.found.insert(vm, host);
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
    let results = crate::p2p::fan_out(&hosts, |i| {
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
