//! What the daemon does about zombies (one VM running on more than one host, as the hosts' own
//! inventories say: `p2p::zombies`). It keeps this host's inventory announced (at once when its
//! VMs change, at the first inventory read that finds a peer to tell, and every
//! `republish_every` ± 20 % anyway) so every peer can see a second copy; it says so
//! (`scored_zombie_vms`, one warning when a zombie appears naming the hosts and this host's
//! journal entry for the VM, one line when it is gone, `scored status`); and the assessment asks
//! [`Daemon::zombie_hosts`] so no decision is taken for such a VM until one copy is gone.
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

/// What this host last announced and last reported.
#[derive(Default)]
pub(super) struct ZombieWatch {
    /// The local VMs of the last inventory announcement that reached a peer, and when the next
    /// one is due even if they do not change.
    published: Option<(Vec<VmId>, Instant)>,
    /// Zombies already logged, with their hosts (logged again when the hosts change).
    reported: HashMap<VmId, Vec<HostId>>,
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
        self.metrics.zombie_vms.set(seen.len() as i64);
        let (appeared, gone) = {
            let mut w = lock(&self.zombie_watch);
            let appeared: Vec<Zombie> = seen
                .iter()
                .filter(|z| w.reported.get(&z.vm) != Some(&z.hosts))
                .cloned()
                .collect();
            let gone: Vec<VmId> = w
                .reported
                .keys()
                .filter(|vm| !seen.iter().any(|z| z.vm == **vm))
                .copied()
                .collect();
            w.reported = seen.iter().map(|z| (z.vm, z.hosts.clone())).collect();
            (appeared, gone)
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

    /// `scored status`'s list of zombies.
    pub(super) fn zombie_status(&self) -> Vec<ZombieStatus> {
        self.zombies()
            .into_iter()
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
