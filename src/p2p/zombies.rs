//! What each peer says it runs, from its own signed inventory: the one record of hosts' claims.
//! Two readers: zombies (one VM running on two hosts at once: a migration that failed after the
//! destination started its copy, an operator or an HA tool starting a guest again), and the
//! directory's lookups, which need to know which VM ids exist in the data centre and which hosts
//! may run one ([`Zombies::claimants`], [`Zombies::unheard`]) so that an address no host runs
//! (a gateway, a client) costs no query and a host that is down holds back only what it claimed.
//!
//! It only records and answers: what to do about a zombie (stop deciding for it, say so) is the
//! daemon's. It must not change the directory's locations: a zombie is reported, never resolved
//! by believing one host over the other.

use crate::topology::{HostId, Topology};
use scored_proto::{Announcement, VmId};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A peer's inventory counts for this long after it arrived in a data centre of up to
/// `30 s × INVENTORIES_PER_S` hosts ([`claims_fresh_for`] for any size): hosts republish theirs
/// every [`republish_every`] (and at once when their VMs change), so a host that died or was
/// cut off stops counting after a few missed ones instead of marking its last VMs as zombies
/// forever.
pub const CLAIM_FRESH_FOR: Duration = Duration::from_secs(90);
/// How often a daemon republishes its inventory even when nothing changed, at least.
pub const REPUBLISH_EVERY: Duration = Duration::from_secs(30);
/// Inventories the whole data centre republishes per second, by default
/// (`p2p.inventory_republish_per_s`). Every inventory reaches every host, so the work each host
/// does for the republications is this rate, whatever the size: 300 hosts republish every 30 s,
/// 1,000 every 100 s, 10,000 every 1,000 s. A fixed 30 s would make it grow with the hosts
/// (333 inventories a second reaching each of 10,000 hosts).
pub const INVENTORIES_PER_S: u32 = 10;

/// How often each of `hosts` republishes its unchanged inventory so that the data centre
/// republishes about `per_s` a second: max([`REPUBLISH_EVERY`], hosts / per_s).
pub fn republish_every(hosts: usize, per_s: u32) -> Duration {
    REPUBLISH_EVERY.max(Duration::from_secs_f64(
        hosts as f64 / f64::from(per_s.max(1)),
    ))
}

/// How long a peer's inventory counts, republished every `period`: three periods (a host may
/// miss two).
pub fn claims_fresh_for(period: Duration) -> Duration {
    period * 3
}
/// VMs kept from one peer's inventory (the rest is ignored): bounds what a listed peer can make
/// this host remember to hosts × this.
pub const MAX_CLAIMS_PER_HOST: usize = 1024;
/// How long after start a host never heard of is still thought to be starting (and is asked
/// about VMs no inventory names); after it, such a host counts as down with no VMs. Every live
/// daemon announces its inventory at start and every [`REPUBLISH_EVERY`].
pub const INVENTORY_GRACE: Duration = CLAIM_FRESH_FOR;

/// One VM that more than one host says it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zombie {
    pub vm: VmId,
    /// Every host running it, sorted (this host too, when it does).
    pub hosts: Vec<HostId>,
}

struct Claim {
    vms: HashSet<VmId>,
    at: Instant,
    /// Whether `vms` is the whole inventory (not cut at [`MAX_CLAIMS_PER_HOST`]).
    complete: bool,
}

/// Every peer's latest claim, and the same read by VM.
struct Claims {
    by_host: HashMap<HostId, Claim>,
    /// The hosts whose claim names each VM (usually one): O(1) "who may run it".
    by_vm: HashMap<VmId, Vec<HostId>>,
    started: Instant,
    grace: Duration,
    /// How often hosts republish their inventories ([`republish_every`]).
    period: Duration,
    /// How long a claim counts ([`claims_fresh_for`] the period).
    fresh_for: Duration,
}

impl Claims {
    fn unindex(&mut self, host: HostId, vm: VmId) {
        if let Some(hosts) = self.by_vm.get_mut(&vm) {
            hosts.retain(|h| *h != host);
            if hosts.is_empty() {
                self.by_vm.remove(&vm);
            }
        }
    }

    fn replace(&mut self, host: HostId, claim: Claim) {
        for &vm in &claim.vms {
            let hosts = self.by_vm.entry(vm).or_default();
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        if let Some(old) = self.by_host.insert(host, claim) {
            let now = &self.by_host[&host].vms;
            let gone: Vec<VmId> = old.vms.into_iter().filter(|v| !now.contains(v)).collect();
            for vm in gone {
                self.unindex(host, vm);
            }
        }
    }

    fn drop_vm(&mut self, host: HostId, vm: VmId) {
        if let Some(c) = self.by_host.get_mut(&host)
            && c.vms.remove(&vm)
        {
            self.unindex(host, vm);
        }
    }

    fn fresh(&self, host: HostId, now: Instant) -> bool {
        self.by_host
            .get(&host)
            .is_some_and(|c| now.saturating_duration_since(c.at) <= self.fresh_for)
    }
}

/// The latest inventory of every peer.
pub struct Zombies {
    topology: Arc<Topology>,
    me: HostId,
    claims: Mutex<Claims>,
}

impl Zombies {
    /// `started`: when this host began listening to announcements (the grace of hosts never
    /// heard of counts from it).
    pub fn new(topology: Arc<Topology>, me: HostId, started: Instant) -> Self {
        Zombies {
            topology,
            me,
            claims: Mutex::new(Claims {
                by_host: HashMap::new(),
                by_vm: HashMap::new(),
                started,
                grace: INVENTORY_GRACE,
                period: REPUBLISH_EVERY,
                fresh_for: CLAIM_FRESH_FOR,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Claims> {
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hosts republish every `period` (the daemon's [`republish_every`]): claims count for
    /// [`claims_fresh_for`] it, and a host never heard of is thought to be starting as long.
    pub fn set_republish_period(&self, period: Duration) {
        let mut c = self.lock();
        c.period = period;
        c.fresh_for = claims_fresh_for(period);
        c.grace = c.fresh_for;
    }

    /// How often this host republishes its unchanged inventory, as every host does.
    pub fn republish_period(&self) -> Duration {
        self.lock().period
    }

    /// How long a peer's inventory counts after it arrived.
    pub fn fresh_for(&self) -> Duration {
        self.lock().fresh_for
    }

    /// How long after start a host never heard of is still asked (default [`INVENTORY_GRACE`]).
    pub fn set_grace(&self, grace: Duration) {
        self.lock().grace = grace;
    }

    /// Takes note of an announcement `author` made (authenticated by the transport). Only what
    /// a host says of itself counts: its own inventory, its own VM leaving.
    pub fn observe(&self, author: HostId, a: &Announcement, now: Instant) {
        if author == self.me {
            return;
        }
        let author_name = &self.topology.host(author).name;
        let mut claims = self.lock();
        match a {
            Announcement::Inventory { host, vms } if host == author_name => {
                let claim = Claim {
                    vms: vms.iter().map(|l| l.vm).take(MAX_CLAIMS_PER_HOST).collect(),
                    at: now,
                    complete: vms.len() <= MAX_CLAIMS_PER_HOST,
                };
                claims.replace(author, claim);
            }
            // The source says the VM left it: its earlier inventory no longer holds.
            Announcement::Migration(m) if &m.from == author_name => claims.drop_vm(author, m.vm),
            _ => {}
        }
    }

    /// `host` answered that it does not run `vm` (now, or any more): its own word, newer than
    /// its inventory.
    pub fn disclaim(&self, host: HostId, vm: VmId) {
        self.lock().drop_vm(host, vm);
    }

    /// The hosts whose last inventory names `vm`, however old: a host that went silent can run
    /// no other VMs than those it last claimed (and those announced as moving to it, which the
    /// directory's cache holds).
    pub fn claimants(&self, vm: VmId) -> Vec<HostId> {
        self.lock().by_vm.get(&vm).cloned().unwrap_or_default()
    }

    /// Of `hosts`, those whose inventory this host does not know, so that a VM no claim names
    /// may run there: hosts whose inventory was too long to keep whole, and hosts never heard
    /// of while they may still be starting ([`INVENTORY_GRACE`] after this host started). After
    /// it, a host never heard of counts as down with no VMs.
    pub fn unheard(&self, hosts: &[HostId], now: Instant) -> Vec<HostId> {
        let c = self.lock();
        let starting = now.saturating_duration_since(c.started) < c.grace;
        hosts
            .iter()
            .copied()
            .filter(|h| match c.by_host.get(h) {
                Some(claim) => !claim.complete,
                None => starting,
            })
            .collect()
    }

    /// The VMs more than one host runs now: `local` are this host's (from its hypervisor),
    /// peers' claims count while fresh.
    pub fn seen(&self, local: &[VmId], now: Instant) -> Vec<Zombie> {
        let claims = self.lock();
        let fresh_claimants = |vm: &VmId| -> BTreeSet<HostId> {
            claims.by_vm.get(vm).map_or_else(BTreeSet::new, |hs| {
                hs.iter()
                    .copied()
                    .filter(|h| claims.fresh(*h, now))
                    .collect()
            })
        };
        let mut hosts: HashMap<VmId, BTreeSet<HostId>> = HashMap::new();
        for &vm in local {
            let mut h = fresh_claimants(&vm);
            h.insert(self.me);
            hosts.insert(vm, h);
        }
        for (vm, hs) in &claims.by_vm {
            if hs.len() > 1 && !hosts.contains_key(vm) {
                hosts.insert(*vm, fresh_claimants(vm));
            }
        }
        let mut out: Vec<Zombie> = hosts
            .into_iter()
            .filter(|(_, h)| h.len() > 1)
            .map(|(vm, h)| Zombie {
                vm,
                hosts: h.into_iter().collect(),
            })
            .collect();
        out.sort_unstable_by_key(|z| z.vm);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scored_proto::{Located, MigrationAnnounce, Stamp};
    use std::path::Path;

    fn topology() -> Arc<Topology> {
        let text = "[levels]\nnames = [\"rack\"]\nweights = [1.0]\n\n\
                    [[host]]\nname = \"hv1\"\npath = [\"t\"]\n\n\
                    [[host]]\nname = \"hv2\"\npath = [\"t\"]\n\n\
                    [[host]]\nname = \"hv3\"\npath = [\"t\"]\n";
        Arc::new(Topology::parse(Path::new("t.toml"), text).unwrap())
    }

    fn inventory(host: &str, vms: &[u32]) -> Announcement {
        Announcement::Inventory {
            host: host.into(),
            vms: vms
                .iter()
                .map(|&v| Located {
                    vm: VmId(v),
                    since: Stamp::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_vm_two_hosts_claim_is_a_zombie_until_one_lets_go() {
        let t0 = Instant::now();
        let z = Zombies::new(topology(), HostId(0), Instant::now());
        z.observe(HostId(1), &inventory("hv2", &[7, 8]), t0);
        assert_eq!(z.seen(&[1, 2].map(VmId), t0), vec![]);
        // hv3 also runs 8; and this host runs 7.
        z.observe(HostId(2), &inventory("hv3", &[8]), t0);
        let seen = z.seen(&[VmId(7)], t0);
        assert_eq!(
            seen,
            vec![
                Zombie {
                    vm: VmId(7),
                    hosts: vec![HostId(0), HostId(1)]
                },
                Zombie {
                    vm: VmId(8),
                    hosts: vec![HostId(1), HostId(2)]
                },
            ]
        );
        // hv3's copy of 8 is gone (its next inventory), hv2 announces that 7 left it.
        z.observe(HostId(2), &inventory("hv3", &[]), t0);
        z.observe(
            HostId(1),
            &Announcement::Migration(MigrationAnnounce {
                vm: VmId(7),
                from: "hv2".into(),
                to: "hv1".into(),
                at: Stamp::default(),
            }),
            t0,
        );
        assert_eq!(z.seen(&[VmId(7)], t0), vec![]);
    }

    #[test]
    fn a_host_speaks_only_for_itself_and_only_while_it_keeps_speaking() {
        let t0 = Instant::now();
        let z = Zombies::new(topology(), HostId(0), Instant::now());
        // hv2 publishing hv3's inventory, or a migration away from hv3: ignored.
        z.observe(HostId(1), &inventory("hv3", &[5]), t0);
        z.observe(HostId(2), &inventory("hv3", &[5]), t0);
        z.observe(
            HostId(1),
            &Announcement::Migration(MigrationAnnounce {
                vm: VmId(5),
                from: "hv3".into(),
                to: "hv2".into(),
                at: Stamp::default(),
            }),
            t0,
        );
        assert_eq!(z.seen(&[VmId(5)], t0).len(), 1);
        // hv3 went quiet: its claim expires.
        assert_eq!(z.seen(&[VmId(5)], t0 + CLAIM_FRESH_FOR * 2), vec![]);
        // A huge inventory is kept only up to the bound.
        let many: Vec<u32> = (0..(MAX_CLAIMS_PER_HOST as u32 + 10)).collect();
        z.observe(HostId(1), &inventory("hv2", &many), t0);
        let all: Vec<VmId> = many.iter().map(|&v| VmId(v)).collect();
        assert_eq!(
            z.seen(&all, t0)
                .iter()
                .filter(|s| s.hosts.contains(&HostId(1)))
                .count(),
            MAX_CLAIMS_PER_HOST
        );
    }
}
