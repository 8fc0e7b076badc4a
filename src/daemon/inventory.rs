//! The local VMs as the hypervisor lists them, and the one task that keeps them fresh: every two
//! seconds (or at once when a VM migrated in) it reads the VMs and the capacity, brings the flow
//! capture, the directory and the gauges in step, and asks again about migrations not settled.
//!
//! Owns the VM list; it never decides for a VM and never touches the token.

use super::host::{Daemon, lock};
use crate::hypervisor::{Capacity, HypervisorError, Measured, Vm};
use crate::metrics::{self, MigrationDirection};
use crate::p2p::Peers;
use crate::p2p::directory::Arrival;
use scored_proto::{Announcement, MigrationAnnounce, VmId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often the inventory task reads the hypervisor.
const REFRESH_EVERY: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(super) struct Inventory {
    vms: Mutex<Vec<Vm>>,
    /// What the hypervisor measured of each local VM at the last periodic read.
    measured: Mutex<HashMap<VmId, Measured>>,
    /// The host's room and CPU load at the last periodic read.
    capacity: Mutex<Option<Capacity>>,
    /// Wakes the inventory task before its next tick.
    refresh_now: Notify,
}

impl Inventory {
    pub(super) fn vms(&self) -> Vec<Vm> {
        lock(&self.vms).clone()
    }

    pub(super) fn measured(&self, vm: VmId) -> Option<Measured> {
        lock(&self.measured).get(&vm).copied()
    }

    pub(super) fn capacity(&self) -> Option<Capacity> {
        *lock(&self.capacity)
    }

    pub(super) fn ids(&self) -> Vec<VmId> {
        lock(&self.vms).iter().map(|v| v.id).collect()
    }

    pub(super) fn get(&self, vm: VmId) -> Option<Vm> {
        lock(&self.vms).iter().find(|v| v.id == vm).cloned()
    }

    pub(super) fn contains(&self, vm: VmId) -> bool {
        lock(&self.vms).iter().any(|v| v.id == vm)
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.vms).len()
    }

    /// The VM named `name_or_id` (its id or its domain name).
    pub(super) fn find(&self, name_or_id: &str) -> Option<VmId> {
        lock(&self.vms)
            .iter()
            .find(|v| v.id.to_string() == name_or_id || v.name == name_or_id)
            .map(|v| v.id)
    }

    fn set(&self, vms: Vec<Vm>) {
        *lock(&self.vms) = vms;
    }
}

/// How much of the hypervisor an inventory read asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Read {
    /// Every VM described afresh, the capacity, and what the hypervisor measures of the VMs
    /// (`Hypervisor::measure`): the periodic refresh, and after a migration.
    Full,
    /// The token's arrival: which VMs run here now, re-describing only what changed
    /// ([`Hypervisor::vms_incremental`](crate::hypervisor::Hypervisor::vms_incremental)). On
    /// the token's path, so it costs every turn's round time.
    Arrival,
}

impl<P: Peers> Daemon<P> {
    /// Reads the local VMs from the hypervisor and brings flows, directory and metrics in step
    /// (the incoming-migration gauge too, from the capacity); then asks again about migrations
    /// a previous run left unsettled.
    pub async fn refresh_inventory(self: &Arc<Self>) -> Result<(), HypervisorError> {
        self.read_inventory(Read::Full).await?;
        self.watch_violations();
        if self.ledger().has_unsettled() {
            self.settle_unsettled().await;
        }
        Ok(())
    }

    /// Reads the VMs (and, for a [`Read::Full`], the capacity), without settling anything.
    pub(super) async fn read_inventory(&self, read: Read) -> Result<(), HypervisorError> {
        let within = self.config().hypervisor.call_timeout();
        let (vms, cap, measured) = self
            .hv
            .call("inventory", within, move |hv| match read {
                Read::Full => {
                    let vms = hv.vms()?;
                    let cap = hv.capacity()?;
                    // Measuring is best effort: a failure must not cost the inventory.
                    let measured = hv.measure().unwrap_or_else(|e| {
                        tracing::debug!(error = %e, "VMs not measured");
                        Vec::new()
                    });
                    Ok((vms, Some(cap), Some(measured)))
                }
                Read::Arrival => Ok((hv.vms_incremental()?, None, None)),
            })
            .await?;
        if let Some(m) = measured {
            *lock(&self.inventory.measured) = m.into_iter().map(|m| (m.vm, m)).collect();
        }
        let arrivals = self.set_inventory(vms);
        self.announce_arrivals(arrivals).await;
        if let Some(cap) = cap {
            *lock(&self.inventory.capacity) = Some(cap);
            self.metrics
                .migrations
                .in_flight
                .get_or_create(&metrics::DirectionLabels {
                    direction: MigrationDirection::Incoming,
                })
                .set(i64::from(cap.incoming_migrations));
        }
        Ok(())
    }

    /// Brings flows, directory and gauges in step with `vms`; returns the VMs that arrived
    /// from a known host, which this host must announce.
    fn set_inventory(&self, vms: Vec<Vm>) -> Vec<Arrival> {
        if let Err(e) = self.traffic().source_mut().follow(&vms) {
            tracing::warn!(error = %e, "flow capture does not follow every VM");
        }
        self.metrics.vms.set(vms.len() as i64);
        self.follow_metadata_groups(&vms);
        self.sync_token_clock();
        let arrivals = self
            .peers
            .directory()
            .refresh_local(vms.iter().map(|v| v.id));
        self.publish_local_groups();
        self.inventory.set(vms);
        arrivals
    }

    /// Tells every host that each of `arrivals` runs here now. Only the host running a VM may
    /// claim it (docs/protocol.md, "Location directory"): its former host's announcement is a
    /// hint, this one the fact peers cache and count in the VM's cooldown. The move is in this
    /// host's history too: it will decide for the VM from now on.
    async fn announce_arrivals(&self, arrivals: Vec<Arrival>) {
        for a in arrivals {
            self.ledger()
                .moved(a.vm, a.from, self.me, Duration::ZERO, Instant::now());
            let announcement = Announcement::Migration(MigrationAnnounce {
                vm: a.vm,
                from: self.topo.host(a.from).name.clone(),
                to: self.name().to_string(),
                at: a.at,
            });
            match self.peers.publish(announcement).await {
                Ok(()) => {
                    tracing::debug!(vm = %a.vm, from = %self.host_name(a.from), at = %a.at, "arrival announced")
                }
                Err(e) => {
                    tracing::warn!(vm = %a.vm, from = %self.host_name(a.from), error = %e, "arrival not announced")
                }
            }
        }
    }

    /// Every VM this host knows of: its own and those the directory learned from other hosts'
    /// inventories (the token gets a slot for each).
    pub(super) fn known_vms(&self) -> Vec<VmId> {
        let mut vms = self.inventory.ids();
        vms.extend(self.peers.directory().known_vms());
        vms
    }

    /// Asks the inventory task to read the hypervisor now (a VM migrated in).
    pub(super) fn refresh_soon(&self) {
        self.inventory.refresh_now.notify_one();
    }

    /// The inventory task: runs until the daemon stops.
    pub(super) async fn keep_inventory(self: Arc<Self>) {
        let mut every = tokio::time::interval(REFRESH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.tasks.stopped() => return,
                _ = every.tick() => {}
                _ = self.inventory.refresh_now.notified() => {}
            }
            match self.refresh_inventory().await {
                // The outage is logged once, when it begins: not every refresh.
                Err(e) if e.is_unavailable() => tracing::debug!(error = %e, "inventory refresh"),
                Err(e) => tracing::warn!(error = %e, "inventory refresh"),
                Ok(()) => {}
            }
            self.watch_zombies().await;
        }
    }
}
