//! What the daemon does about zombies (one VM running on more than one host, as the hosts' own
//! inventories say: `p2p::zombies`). It keeps this host's inventory announced (at once when its
//! VMs change, at the first inventory read that finds a peer to tell, and every
//! `republish_every` ± 20 % anyway) so every peer can see a second copy; the assessment asks
//! [`Daemon::zombie_hosts`] so no decision is taken for such a VM until one copy is gone, from
//! the first moment two hosts claim it; and once two hosts have claimed it for
//! [`REPORT_AFTER`] it says so (`scored_zombie_vms`, one warning naming the hosts and this
//! host's journal entry for the VM, one line when it is gone, `scored status`). Every live
//! migration has two hosts claim its VM for a moment: the destination runs the guest and
//! announces it before the source's word that it left arrives (about 2 s on the testbed); a
//! warning and an alert at every migration would teach operators to ignore the real ones.
//!
//! It never stops, kills or migrates a copy: which one is the real VM is the operator's call.

use super::host::{Daemon, lock};
use super::journal::{self, Ending};
use crate::p2p::Peers;
use crate::p2p::zombies::Zombie;
use crate::topology::HostId;
use scored_proto::VmId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;
use std::time::Instant;

/// How long more than one host must claim a VM before it is reported as a zombie: well past a
/// migration's hand-over (seconds), well inside what an operator waits for an alert.
pub const REPORT_AFTER: Duration = Duration::from_secs(15);

/// What this host last announced and last reported.
#[derive(Default)]
pub(super) struct ZombieWatch {
    /// The local VMs of the last inventory announcement that reached a peer, and when the next
    /// one is due even if they do not change.
    published: Option<(Vec<VmId>, Instant)>,
    /// VMs more than one host claimed at every read since when.
    claimed_since: HashMap<VmId, Instant>,
    /// Zombies reported, with their hosts (reported again when the hosts change).
    reported: HashMap<VmId, Vec<HostId>>,
}

impl ZombieWatch {
    /// Takes in the VMs more than one host claims `now`; returns the zombies to report (claimed
    /// for [`REPORT_AFTER`], and new or with other hosts than reported) and the reported ones
    /// no longer claimed twice.
    fn update(&mut self, seen: &[Zombie], now: Instant) -> (Vec<Zombie>, Vec<VmId>) {
        self.claimed_since = seen
            .iter()
            .map(|z| (z.vm, self.claimed_since.get(&z.vm).copied().unwrap_or(now)))
            .collect();
        let lasting: Vec<&Zombie> = seen
            .iter()
            .filter(|z| now.saturating_duration_since(self.claimed_since[&z.vm]) >= REPORT_AFTER)
            .collect();
        let appeared = lasting
            .iter()
            .filter(|z| self.reported.get(&z.vm) != Some(&z.hosts))
            .map(|z| (*z).clone())
            .collect();
        let gone = self
            .reported
            .keys()
            .filter(|vm| !lasting.iter().any(|z| z.vm == **vm))
            .copied()
            .collect();
        self.reported = lasting.iter().map(|z| (z.vm, z.hosts.clone())).collect();
        (appeared, gone)
    }
}

/// How long until the inventory is announced again if nothing changes, `jitter` in [0, 1):
/// `period` ± 20 %. Hosts started together (a cold start, a fleet upgrade) would otherwise
/// republish in lockstep, a thousand announcements in the same second every period; drawn anew
/// each time, the phases spread within a few periods. The longest wait, twice over, stays
/// inside the three periods a peer's inventory counts (`claims_fresh_for`).
fn republish_after(period: Duration, jitter: f64) -> Duration {
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    period.mul_f64(0.8 + 0.4 * jitter)
}

/// One zombie as `scored status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZombieStatus {
    pub vm: String,
    /// Every host running it, this one included when it does.
    pub hosts: Vec<String>,
    /// This host's last journal entry for the VM, if it has one.
    pub journal: Option<String>,
}

impl<P: Peers> Daemon<P> {
    /// Every VM more than one host runs now, as far as this host can tell.
    pub fn zombies(&self) -> Vec<Zombie> {
        let local = self.inventory.ids();
        self.peers
            .directory()
            .zombies()
            .seen(&local, Instant::now())
    }

    /// The hosts running `vm` when more than one does (the decision gate), else `None`.
    pub(super) fn zombie_hosts(&self, vm: VmId) -> Option<Vec<HostId>> {
        self.zombies()
            .into_iter()
            .find(|z| z.vm == vm)
            .map(|z| z.hosts)
    }

    /// After each inventory read: announce the inventory if it changed or is due, then report
    /// zombies that appeared or went.
    pub(super) async fn watch_zombies(&self) {
        let now = Instant::now();
        let mut local = self.inventory.ids();
        local.sort_unstable();
        let due = match &lock(&self.zombie_watch).published {
            Some((vms, next)) => *vms != local || now >= *next,
            None => true,
        };
        if due {
            match self.peers.announce_inventory().await {
                Ok(()) => {
                    // Set at start from the hosts and `p2p.inventory_republish_per_s`.
                    let period = self.peers.directory().zombies().republish_period();
                    let next = now + republish_after(period, rand::random::<f64>());
                    lock(&self.zombie_watch).published = Some((local, next));
                }
                // Retried at the next read: no peer to tell is no news to lose.
                Err(e) => tracing::debug!(error = %e, "inventory not announced"),
            }
        }

        let seen = self.zombies();
        let (appeared, gone) = {
            let mut w = lock(&self.zombie_watch);
            let news = w.update(&seen, now);
            self.metrics.zombie_vms.set(w.reported.len() as i64);
            news
        };
        for z in appeared {
            let hosts = self.host_names(&z.hosts);
            let journal = self.journal_entry_of(z.vm);
            tracing::warn!(
                vm = %z.vm,
                hosts = %hosts.join(", "),
                journal = %journal.as_deref().unwrap_or("no migration of this VM in this host's journal"),
                "zombie: VM runs on more than one host; no decision for it until one copy is gone"
            );
        }
        for vm in gone {
            tracing::info!(%vm, "zombie gone: VM runs on one host again");
        }
    }

    /// `scored status`'s list of zombies: those reported (claimed twice for [`REPORT_AFTER`]).
    pub(super) fn zombie_status(&self) -> Vec<ZombieStatus> {
        let reported: Vec<VmId> = lock(&self.zombie_watch).reported.keys().copied().collect();
        self.zombies()
            .into_iter()
            .filter(|z| reported.contains(&z.vm))
            .map(|z| ZombieStatus {
                vm: z.vm.to_string(),
                hosts: self.host_names(&z.hosts),
                journal: self.journal_entry_of(z.vm),
            })
            .collect()
    }

    fn host_names(&self, hosts: &[HostId]) -> Vec<String> {
        hosts.iter().map(|h| self.host_name(*h)).collect()
    }

    /// This host's last journal entry for `vm`, for a log line (the migration that may have left
    /// the second copy behind).
    fn journal_entry_of(&self, vm: VmId) -> Option<String> {
        let path = self.ledger().journal_path();
        match journal::last_of(&path, vm) {
            Ok(Some((e, how))) => {
                let how = match how {
                    None => "still open".to_string(),
                    Some(Ending::Succeeded) => "succeeded".to_string(),
                    Some(Ending::Failed { reason }) => format!("failed: {reason}"),
                    Some(Ending::Aborted { reason }) => format!("aborted: {reason}"),
                    Some(Ending::ReconciledCompleted) => {
                        "completed (settled after a restart)".into()
                    }
                    Some(Ending::ReconciledFailed) => "failed (settled after a restart)".into(),
                };
                Some(format!(
                    "entry {} in {}: {} -> {}, epoch {} seq {}, started {} ms after the Unix epoch, {how}",
                    e.id,
                    path.display(),
                    e.from,
                    e.to,
                    e.epoch,
                    e.seq,
                    e.started_unix_ms
                ))
            }
            Ok(None) => None,
            Err(e) => Some(format!("journal unreadable: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2p::zombies::{
        CLAIM_FRESH_FOR, INVENTORIES_PER_S, claims_fresh_for, republish_every,
    };

    fn zombie(vm: u8, hosts: &[u32]) -> Zombie {
        Zombie {
            vm: VmId::from_ipv4(std::net::Ipv4Addr::new(10, 0, 0, vm)),
            hosts: hosts.iter().map(|h| HostId(*h)).collect(),
        }
    }

    #[test]
    fn a_migrations_hand_over_is_not_reported_a_lasting_double_claim_is() {
        let mut w = ZombieWatch::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let (a, b) = (zombie(1, &[0, 1]), zombie(2, &[2, 3]));
        // a: a hand-over, two hosts for 4 s; b: two copies that stay.
        assert_eq!(w.update(&[a.clone(), b.clone()], at(0)), (vec![], vec![]));
        assert_eq!(w.update(&[a.clone(), b.clone()], at(4)), (vec![], vec![]));
        assert_eq!(w.update(std::slice::from_ref(&b), at(6)), (vec![], vec![]));
        assert_eq!(w.update(std::slice::from_ref(&b), at(14)), (vec![], vec![]));
        assert_eq!(
            w.update(std::slice::from_ref(&b), at(15)),
            (vec![b.clone()], vec![])
        );
        assert_eq!(w.reported.len(), 1);
        // Reported once; again when its hosts change, without a new wait.
        assert_eq!(w.update(std::slice::from_ref(&b), at(17)), (vec![], vec![]));
        let b3 = zombie(2, &[2, 3, 4]);
        assert_eq!(
            w.update(std::slice::from_ref(&b3), at(19)),
            (vec![b3.clone()], vec![])
        );
        // Gone when no longer claimed twice; a later double claim waits afresh.
        assert_eq!(w.update(&[], at(21)), (vec![], vec![b3.vm]));
        assert_eq!(w.update(std::slice::from_ref(&a), at(22)), (vec![], vec![]));
        assert_eq!(w.update(std::slice::from_ref(&a), at(36)), (vec![], vec![]));
        assert_eq!(
            w.update(std::slice::from_ref(&a), at(37)),
            (vec![a.clone()], vec![])
        );
    }

    #[test]
    fn republishing_is_spread_and_stays_fresh() {
        let every = republish_every(64, INVENTORIES_PER_S);
        assert_eq!(every, Duration::from_secs(30));
        assert_eq!(republish_after(every, 0.0), Duration::from_secs(24));
        assert_eq!(republish_after(every, 0.5), every);
        assert!(republish_after(every, 0.999) < Duration::from_secs(36));
        // Two missed republishes at the longest wait still leave a claim counting.
        assert!(republish_after(every, 1.0) * 2 < CLAIM_FRESH_FOR);
        // Out-of-range input is clamped, never a panic or a zero period.
        assert_eq!(republish_after(every, -1.0), republish_after(every, 0.0));
        assert_eq!(
            republish_after(every, f64::NAN),
            republish_after(every, 0.0)
        );
    }

    #[test]
    fn the_data_centre_republishes_at_a_bounded_rate_whatever_its_size() {
        for hosts in [2usize, 300, 1_000, 10_000, 50_000] {
            let every = republish_every(hosts, INVENTORIES_PER_S);
            assert!(every >= Duration::from_secs(30));
            let per_s = hosts as f64 / every.as_secs_f64();
            assert!(
                per_s <= f64::from(INVENTORIES_PER_S) + 1e-9,
                "{hosts}: {per_s}/s"
            );
            assert!(republish_after(every, 1.0) * 2 < claims_fresh_for(every));
        }
        assert_eq!(republish_every(1_000, 10), Duration::from_secs(100));
        assert_eq!(republish_every(1_000, 0), Duration::from_secs(1_000));
    }
}
