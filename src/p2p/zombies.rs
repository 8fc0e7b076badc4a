//! Zombies: one VM running on two hosts at once (a migration that failed after the destination
//! started its copy, an operator or an HA tool starting a guest again). Each host speaks only
//! for itself, in its inventory announcements; this keeps the latest inventory of every peer
//! and says which VMs more than one host claims, this host included.
//!
//! It only records and answers: what to do about a zombie (stop deciding for it, say so) is the
//! daemon's. It must not change the directory's locations: a zombie is reported, never resolved
//! by believing one host over the other.

use crate::topology::{HostId, Topology};
use scored_proto::{Announcement, VmId};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A peer's inventory counts for this long after it arrived: hosts republish theirs every
/// [`REPUBLISH_EVERY`] (and at once when their VMs change), so a host that died or was cut off
/// stops counting after a few missed ones instead of marking its last VMs as zombies forever.
pub const CLAIM_FRESH_FOR: Duration = Duration::from_secs(90);
/// How often a daemon republishes its inventory even when nothing changed.
pub const REPUBLISH_EVERY: Duration = Duration::from_secs(30);
/// VMs kept from one peer's inventory (the rest is ignored): bounds what a listed peer can make
/// this host remember to hosts × this.
pub const MAX_CLAIMS_PER_HOST: usize = 1024;

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
}

/// The latest inventory of every peer, as far as it concerns zombies.
pub struct Zombies {
    topology: Arc<Topology>,
    me: HostId,
    claims: Mutex<HashMap<HostId, Claim>>,
}

impl Zombies {
    pub fn new(topology: Arc<Topology>, me: HostId) -> Self {
        Zombies {
            topology,
            me,
            claims: Mutex::new(HashMap::new()),
        }
    }

    /// Takes note of an announcement `author` made (authenticated by the transport). Only what
    /// a host says of itself counts: its own inventory, its own VM leaving.
    pub fn observe(&self, author: HostId, a: &Announcement, now: Instant) {
        if author == self.me {
            return;
        }
        let author_name = &self.topology.host(author).name;
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        match a {
            Announcement::Inventory { host, vms } if host == author_name => {
                let vms: HashSet<VmId> =
                    vms.iter().map(|l| l.vm).take(MAX_CLAIMS_PER_HOST).collect();
                claims.insert(author, Claim { vms, at: now });
            }
            // The source says the VM left it: its earlier inventory no longer holds.
            Announcement::Migration(m) if &m.from == author_name => {
                if let Some(c) = claims.get_mut(&author) {
                    c.vms.remove(&m.vm);
                }
            }
            _ => {}
        }
    }

    /// The VMs more than one host runs now: `local` are this host's (from its hypervisor),
    /// peers' claims count while fresh.
    pub fn seen(&self, local: &[VmId], now: Instant) -> Vec<Zombie> {
        let claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        let mut hosts: HashMap<VmId, BTreeSet<HostId>> = HashMap::new();
        for &vm in local {
            hosts.entry(vm).or_default().insert(self.me);
        }
        for (&h, c) in claims.iter() {
            if now.saturating_duration_since(c.at) > CLAIM_FRESH_FOR {
                continue;
            }
            for &vm in &c.vms {
                hosts.entry(vm).or_default().insert(h);
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
        let z = Zombies::new(topology(), HostId(0));
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
        let z = Zombies::new(topology(), HostId(0));
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
