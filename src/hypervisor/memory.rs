//! The in-memory hypervisor: a whole cluster of hosts held in one shared structure, and one handle
//! per host that implements [`Hypervisor`]. The simulator and the loopback daemon tests use it in
//! place of libvirt.
//!
//! In [`MemoryCluster`] a migration moves the VM between hosts atomically under one lock, so every
//! VM is on exactly one host at every moment, and it refuses a destination that is full (VM limit
//! or memory), or one a placement rule forbids when it was given rules ([`MemoryCluster::set_rules`]:
//! the destination's re-check, as the simulator's independent witness that no decision broke a
//! rule). Its report is modelled from the thesis's measurements, not timed: nothing there
//! sleeps or reads a clock. It decides nothing.
//!
//! The same cluster kept in a file for daemons in separate processes is [`super::file`]'s: it
//! shares `Cluster`, the rules of placement and moves, with this in-process form.

use super::{
    AbortReason, Capacity, Cause, Destination, Hypervisor, HypervisorError, Interface, Measured,
    MigrationParams, MigrationReport, Result, Vm, VmState,
};
use crate::rules::Rules;
use crate::topology::{HostId, Topology};
use scored_proto::VmId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long a modelled migration takes and what it sends.
///
/// The defaults are the thesis's testbed figures on an idle network (s-core.md §5): 196 MB guests
/// sent 127 MB on average (65%) in 2.94 s (≈ 43 MB/s), with 16.38 ms of downtime.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationModel {
    /// Fraction of the guest's memory a migration sends.
    pub sent_fraction: f64,
    /// Effective transfer rate, bytes/s.
    pub throughput_bytes_per_s: f64,
    pub downtime: Duration,
}

impl Default for MigrationModel {
    fn default() -> Self {
        MigrationModel {
            sent_fraction: 127.0 / 196.0,
            throughput_bytes_per_s: 127e6 / 2.94,
            downtime: Duration::from_micros(16_380),
        }
    }
}

impl MigrationModel {
    /// The report of migrating a guest of `memory_mib` with `params`.
    pub fn report(&self, memory_mib: u64, params: &MigrationParams) -> MigrationReport {
        let bytes = (memory_mib as f64 * 1024.0 * 1024.0 * self.sent_fraction).round();
        let mut rate = self.throughput_bytes_per_s;
        if params.bandwidth_mib_s > 0 {
            rate = rate.min(params.bandwidth_mib_s as f64 * 1024.0 * 1024.0);
        }
        MigrationReport {
            elapsed: Duration::from_secs_f64(bytes / rate) + self.downtime,
            downtime: self.downtime,
            bytes: bytes as u64,
            post_copy: params.post_copy && params.post_copy_after_first_pass,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct HostState {
    pub(super) name: String,
    pub(super) max_vms: u32,
    pub(super) memory_mib: u64,
    pub(super) used_memory_mib: u64,
    pub(super) vms: Vec<Vm>,
}

/// A migration job in progress in a shared-file cluster: the VM still runs at `from`, and `to`
/// holds a slot and the VM's memory for it until the job completes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub vm: VmId,
    pub from: String,
    pub to: String,
    pub memory_mib: u64,
    /// Wall clock, milliseconds since the Unix epoch: processes share no other clock.
    pub started_unix_ms: u64,
    pub completes_unix_ms: u64,
}

/// The hosts and their VMs, and the rules every move follows, whichever form holds them (a
/// [`MemoryCluster`] in one process, a [`super::file::SharedFile`] across processes).
#[derive(Clone, Debug)]
pub(super) struct Cluster {
    pub(super) hosts: Vec<HostState>,
    pub(super) by_name: HashMap<String, HostId>,
    pub(super) location: HashMap<VmId, HostId>,
    pub(super) model: MigrationModel,
    pub(super) migrations: u64,
    /// Always empty in a [`MemoryCluster`], whose moves are instantaneous.
    pub(super) in_flight: Vec<InFlight>,
    /// Rules every move is re-checked against (members as the rules name them, located here).
    pub(super) rules: Option<(Arc<Rules>, Arc<Topology>)>,
}

/// A cluster of in-memory hosts shaped like a topology (names, VM limits, guest memory).
/// Cloning shares the cluster.
#[derive(Clone, Debug)]
pub struct MemoryCluster {
    inner: Arc<Mutex<Cluster>>,
    /// What the hosts report measuring of each VM (set by the test or simulation driving the
    /// cluster); a VM's figures follow it when it moves.
    measured: Arc<Mutex<HashMap<VmId, Measured>>>,
}

/// One host of a [`MemoryCluster`], seen through the [`Hypervisor`] trait.
#[derive(Clone, Debug)]
pub struct MemoryHost {
    cluster: MemoryCluster,
    host: HostId,
}

/// A VM for simulations and tests: named after its id, one interface whose address is the id.
pub fn synthetic_vm(id: VmId, memory_mib: u64) -> Vm {
    let b = id.0.to_be_bytes();
    let mut uuid = [0u8; 16];
    uuid[12..].copy_from_slice(&b);
    Vm {
        id,
        name: format!("vm-{id}"),
        uuid,
        memory_mib,
        vcpus: 1,
        interfaces: vec![Interface {
            // Locally administered unicast MAC carrying the address.
            mac: [0x02, 0x5c, b[0], b[1], b[2], b[3]],
            tap: None,
            addresses: vec![std::net::IpAddr::V4(id.to_ipv4())],
        }],
        pinned: false,
        groups: Vec::new(),
    }
}

impl MemoryCluster {
    /// Empty hosts, one per host of the topology, with its `max_vms` and `memory_mib`.
    pub fn new(topo: &Topology) -> Self {
        let hosts: Vec<HostState> = topo
            .hosts()
            .iter()
            .map(|h| HostState {
                name: h.name.clone(),
                max_vms: h.max_vms,
                memory_mib: h.memory_mib,
                used_memory_mib: 0,
                vms: Vec::new(),
            })
            .collect();
        let by_name = topo
            .hosts()
            .iter()
            .map(|h| (h.name.clone(), h.id))
            .collect();
        MemoryCluster {
            inner: Arc::new(Mutex::new(Cluster {
                hosts,
                by_name,
                location: HashMap::new(),
                model: MigrationModel::default(),
                migrations: 0,
                in_flight: Vec::new(),
                rules: None,
            })),
            measured: Arc::default(),
        }
    }

    /// From now on, the host running `vm` reports `m` as what it measures of it
    /// ([`Hypervisor::measure`]), wherever the VM runs.
    pub fn set_measured(&self, m: Measured) {
        self.measured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(m.vm, m);
    }

    /// From now on, refuses every move `rules` forbid, judged against where the members of the
    /// moving VM's groups run in this cluster (a destination's re-check). `None`: no rules.
    pub fn set_rules(&self, rules: Option<(Arc<Rules>, Arc<Topology>)>) {
        self.lock().rules = rules;
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Cluster> {
        // A panic while holding the lock cannot leave a half-moved VM (moves are two Vec
        // operations with no panic in between), so the state is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_model(&self, model: MigrationModel) {
        self.lock().model = model;
    }

    /// Starts `vm` on `host`. Refused when the id is already running somewhere or the host is full.
    pub fn add_vm(&self, host: HostId, vm: Vm) -> Result<()> {
        self.lock().add_vm(host, vm)
    }

    /// Pins or unpins a VM (as the operator's domain metadata flag would).
    pub fn set_pinned(&self, vm: VmId, pinned: bool) -> Result<()> {
        self.edit_vm(vm, |v| v.pinned = pinned)
    }

    /// Changes what the hypervisor says of a running VM (its domain metadata).
    fn edit_vm(&self, vm: VmId, edit: impl FnOnce(&mut Vm)) -> Result<()> {
        let mut c = self.lock();
        let host = *c
            .location
            .get(&vm)
            .ok_or(HypervisorError::NoSuchVm { vm })?;
        if let Some(v) = c.hosts[host.index()].vms.iter_mut().find(|v| v.id == vm) {
            edit(v);
        }
        Ok(())
    }

    /// Replaces a VM's placement groups, as an operator's `virsh metadata --live` would on a
    /// running domain. The groups then travel with the VM when it migrates.
    pub fn set_groups(&self, vm: VmId, groups: Vec<super::GroupTag>) -> Result<()> {
        self.edit_vm(vm, |v| v.groups = groups)
    }

    /// The handle through which host `host` is driven.
    pub fn host(&self, host: HostId) -> MemoryHost {
        MemoryHost {
            cluster: self.clone(),
            host,
        }
    }

    /// Where a VM runs now.
    pub fn host_of(&self, vm: VmId) -> Option<HostId> {
        self.lock().location.get(&vm).copied()
    }

    /// Where every VM runs now, read at once (one lock): the lab's loss/duplicate check and cost.
    /// A VM listed on two hosts appears twice.
    pub fn placement(&self) -> Vec<(VmId, HostId)> {
        let c = self.lock();
        c.hosts
            .iter()
            .enumerate()
            .flat_map(|(i, h)| h.vms.iter().map(move |v| (v.id, HostId(i as u32))))
            .collect()
    }

    /// Number of VMs on each host, by host id.
    pub fn vm_counts(&self) -> Vec<u32> {
        self.lock()
            .hosts
            .iter()
            .map(|h| h.vms.len() as u32)
            .collect()
    }

    /// Migrations completed so far.
    pub fn migrations(&self) -> u64 {
        self.lock().migrations
    }

    /// Checks the cluster's invariants: every VM on exactly one host (and where the location
    /// index says), no host over its VM limit or memory. Describes the first violation.
    pub fn check(&self) -> std::result::Result<(), String> {
        self.lock().check()
    }
}

impl Cluster {
    fn add_vm(&mut self, host: HostId, vm: Vm) -> Result<()> {
        if let Some(at) = self.location.get(&vm.id) {
            let name = self.hosts[at.index()].name.clone();
            return Err(HypervisorError::Call {
                vm: Some(vm.id),
                call: "add_vm",
                source: Cause::Refused(format!("already running on {name}")),
            });
        }
        if host.index() >= self.hosts.len() {
            return Err(HypervisorError::Call {
                vm: Some(vm.id),
                call: "add_vm",
                source: Cause::Refused(format!("no host {} in this cluster", host.0)),
            });
        }
        if let Some(why) = self.full(host, vm.memory_mib) {
            return Err(HypervisorError::Call {
                vm: Some(vm.id),
                call: "add_vm",
                source: Cause::Refused(format!("{} is full: {why}", self.hosts[host.index()].name)),
            });
        }
        let h = &mut self.hosts[host.index()];
        h.used_memory_mib += vm.memory_mib;
        let id = vm.id;
        h.vms.push(vm);
        self.location.insert(id, host);
        Ok(())
    }

    pub(super) fn check(&self) -> std::result::Result<(), String> {
        let c = self;
        let mut seen: HashMap<VmId, usize> = HashMap::new();
        for (i, h) in c.hosts.iter().enumerate() {
            let (incoming, reserved) = c.incoming(HostId(i as u32));
            if h.vms.len() + incoming as usize > h.max_vms as usize {
                return Err(format!(
                    "{} runs {} VMs and takes {incoming} more, limit {}",
                    h.name,
                    h.vms.len(),
                    h.max_vms
                ));
            }
            let used: u64 = h.vms.iter().map(|v| v.memory_mib).sum();
            if used != h.used_memory_mib || used + reserved > h.memory_mib {
                return Err(format!(
                    "{} uses {used} MiB (accounted {}) and holds {reserved} MiB for incoming VMs, has {}",
                    h.name, h.used_memory_mib, h.memory_mib
                ));
            }
            for v in &h.vms {
                if let Some(j) = seen.insert(v.id, i) {
                    return Err(format!(
                        "VM {} runs on both {} and {}",
                        v.id, c.hosts[j].name, h.name
                    ));
                }
                if c.location.get(&v.id) != Some(&HostId(i as u32)) {
                    return Err(format!("VM {} on {} is indexed elsewhere", v.id, h.name));
                }
            }
        }
        if seen.len() != c.location.len() {
            return Err(format!(
                "{} VMs indexed, {} running",
                c.location.len(),
                seen.len()
            ));
        }
        for (i, m) in c.in_flight.iter().enumerate() {
            let from = c.by_name.get(&m.from).copied();
            if from.is_none() || c.location.get(&m.vm).copied() != from {
                return Err(format!(
                    "VM {} migrates from {}, where it does not run",
                    m.vm, m.from
                ));
            }
            if !c.by_name.contains_key(&m.to) || m.to == m.from {
                return Err(format!("VM {} migrates to `{}`", m.vm, m.to));
            }
            if c.in_flight[..i].iter().any(|o| o.vm == m.vm) {
                return Err(format!("VM {} has two migrations in flight", m.vm));
            }
        }
        Ok(())
    }

    /// Migrations in flight towards `host`: how many, and the memory they hold there.
    fn incoming(&self, host: HostId) -> (u32, u64) {
        let name = &self.hosts[host.index()].name;
        self.in_flight
            .iter()
            .filter(|m| &m.to == name)
            .fold((0, 0), |(n, mem), m| (n + 1, mem + m.memory_mib))
    }

    /// Why `host` cannot take a VM of `memory_mib` now (slots and memory held by incoming
    /// migrations count as taken), or `None` when it can.
    fn full(&self, host: HostId, memory_mib: u64) -> Option<String> {
        let h = &self.hosts[host.index()];
        let (incoming, reserved) = self.incoming(host);
        if h.vms.len() + incoming as usize >= h.max_vms as usize {
            return Some(if incoming > 0 {
                format!(
                    "{} of {} VMs and {incoming} migrating in",
                    h.vms.len(),
                    h.max_vms
                )
            } else {
                format!("{} of {} VMs", h.vms.len(), h.max_vms)
            });
        }
        let free = h.memory_mib.saturating_sub(h.used_memory_mib + reserved);
        if memory_mib > free {
            return Some(format!("{free} MiB free, {memory_mib} MiB needed"));
        }
        None
    }

    /// Commits every migration whose job completed by `now_unix_ms`; returns how many.
    pub(super) fn settle(&mut self, now_unix_ms: u64) -> usize {
        let (due, pending): (Vec<InFlight>, Vec<InFlight>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|m| m.completes_unix_ms <= now_unix_ms);
        self.in_flight = pending;
        for m in &due {
            let (Some(&from), Some(&to)) = (self.by_name.get(&m.from), self.by_name.get(&m.to))
            else {
                continue;
            };
            // The job reserved its destination when it started: nothing can refuse it now.
            if let Err(e) = self.commit_move(from, to, m.vm) {
                tracing::warn!(vm = %m.vm, from = %m.from, to = %m.to, error = %e, "simulated migration could not complete");
            }
        }
        due.len()
    }

    pub(super) fn capacity(&self, host: HostId) -> Capacity {
        let h = &self.hosts[host.index()];
        let (incoming, reserved) = self.incoming(host);
        Capacity {
            running_vms: h.vms.len() as u32,
            incoming_migrations: incoming,
            free_memory_mib: h.memory_mib.saturating_sub(h.used_memory_mib + reserved),
            total_memory_mib: h.memory_mib,
            // The simulated data centre models no CPU.
            cpu_load: 0.0,
            cpus: 0,
        }
    }

    pub(super) fn state(&self, host: HostId, vm: VmId) -> VmState {
        if self.location.get(&vm) != Some(&host) {
            VmState::Absent
        } else if self.in_flight.iter().any(|m| m.vm == vm) {
            VmState::Migrating
        } else {
            VmState::Running
        }
    }

    /// Checks that `vm` can move from `from` to `dest` and returns the destination and the
    /// modelled report; changes nothing.
    pub(super) fn plan_move(
        &self,
        from: HostId,
        vm: VmId,
        dest: &Destination,
        params: &MigrationParams,
    ) -> Result<(HostId, MigrationReport)> {
        let fail = |call: &'static str, why: String| HypervisorError::Migration {
            vm,
            dest: dest.host.clone(),
            call,
            source: Cause::Refused(why),
        };
        let to = *self
            .by_name
            .get(&dest.host)
            .ok_or_else(|| fail("lookup", "no such host in this cluster".into()))?;
        let pos = self.hosts[from.index()]
            .vms
            .iter()
            .position(|v| v.id == vm)
            .ok_or(HypervisorError::NoSuchVm { vm })?;
        if to == from {
            return Err(fail("migrate", "the VM already runs there".into()));
        }
        if let Some(m) = self.in_flight.iter().find(|m| m.vm == vm) {
            return Err(fail(
                "migrate",
                format!("a migration of this VM to {} is already in progress", m.to),
            ));
        }
        let memory = self.hosts[from.index()].vms[pos].memory_mib;
        if let Some(why) = self.full(to, memory) {
            return Err(fail("prepare", format!("destination is full: {why}")));
        }
        if let Some(on) = &self.rules {
            let (rules, topo) = (&*on.0, &*on.1);
            let check = rules.check_located(topo, vm, |m| self.location.get(&m).copied());
            if let Err(r) = check.allows(from, to) {
                return Err(fail("prepare", r.describe(rules, topo)));
            }
        }
        let report = self.model.report(memory, params);
        if report.elapsed > params.timeout {
            return Err(HypervisorError::Aborted {
                vm,
                dest: dest.host.clone(),
                reason: AbortReason::Timeout,
            });
        }
        Ok((to, report))
    }

    /// Moves `vm` from `from` to `to` in one step (after [`Cluster::plan_move`] said it can).
    pub(super) fn commit_move(&mut self, from: HostId, to: HostId, vm: VmId) -> Result<()> {
        let pos = self.hosts[from.index()]
            .vms
            .iter()
            .position(|v| v.id == vm)
            .ok_or(HypervisorError::NoSuchVm { vm })?;
        let moved = self.hosts[from.index()].vms.swap_remove(pos);
        let memory = moved.memory_mib;
        self.hosts[from.index()].used_memory_mib -= memory;
        self.hosts[to.index()].used_memory_mib += memory;
        self.hosts[to.index()].vms.push(moved);
        self.location.insert(vm, to);
        self.migrations += 1;
        Ok(())
    }
}

impl MemoryHost {
    pub fn id(&self) -> HostId {
        self.host
    }
}

impl Hypervisor for MemoryHost {
    fn vms(&self) -> Result<Vec<Vm>> {
        Ok(self.cluster.lock().hosts[self.host.index()].vms.clone())
    }

    fn capacity(&self) -> Result<Capacity> {
        Ok(self.cluster.lock().capacity(self.host))
    }

    fn measure(&self) -> Result<Vec<Measured>> {
        let vms = self.vms()?;
        let measured = self
            .cluster
            .measured
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Ok(vms
            .iter()
            .filter_map(|v| measured.get(&v.id).copied())
            .collect())
    }

    fn migrate(
        &self,
        vm: VmId,
        dest: &Destination,
        params: &MigrationParams,
    ) -> Result<MigrationReport> {
        let mut c = self.cluster.lock();
        let (to, report) = c.plan_move(self.host, vm, dest, params)?;
        c.commit_move(self.host, to, vm)?;
        Ok(report)
    }

    fn state(&self, vm: VmId) -> Result<VmState> {
        Ok(self.cluster.lock().state(self.host, vm))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    pub(crate) fn cluster() -> (Topology, MemoryCluster) {
        let t = Topology::parse(
            Path::new("topology/fat-tree-k4.toml"),
            include_str!("../../topology/fat-tree-k4.toml"),
        )
        .unwrap();
        let c = MemoryCluster::new(&t);
        (t, c)
    }

    pub(crate) fn to(t: &Topology, h: u32) -> Destination {
        Destination {
            host: t.host(HostId(h)).name.clone(),
            libvirt_uri: None,
            migration_uri: None,
        }
    }

    #[test]
    fn capacity_follows_the_topology_and_the_vms() {
        let (t, c) = cluster();
        let h = c.host(HostId(3));
        let cap = h.capacity().unwrap();
        assert_eq!(cap.running_vms, 0);
        assert_eq!(cap.total_memory_mib, t.host(HostId(3)).memory_mib);
        for i in 0..16 {
            c.add_vm(HostId(3), synthetic_vm(VmId(100 + i), 1024))
                .unwrap();
        }
        let cap = h.capacity().unwrap();
        assert_eq!(cap.running_vms, 16);
        assert_eq!(cap.free_memory_mib, 17408 - 16 * 1024);
        let err = c
            .add_vm(HostId(3), synthetic_vm(VmId(1), 1024))
            .unwrap_err()
            .to_string();
        assert!(err.contains("r002h02 is full: 16 of 16 VMs"), "{err}");
        let err = c
            .add_vm(HostId(4), synthetic_vm(VmId(100), 1024))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already running on r002h02"), "{err}");
        assert_eq!(h.vms().unwrap().len(), 16);
        c.check().unwrap();
    }

    #[test]
    fn migration_moves_the_vm_and_reports_the_model() {
        let (t, c) = cluster();
        c.add_vm(HostId(0), synthetic_vm(VmId(7), 196)).unwrap();
        let src = c.host(HostId(0));
        let report = src
            .migrate(VmId(7), &to(&t, 5), &MigrationParams::default())
            .unwrap();
        assert_eq!(c.host_of(VmId(7)), Some(HostId(5)));
        assert_eq!(src.state(VmId(7)).unwrap(), VmState::Absent);
        assert_eq!(c.host(HostId(5)).state(VmId(7)).unwrap(), VmState::Running);
        // 196 MiB · 127/196 sent at the thesis's 43 MB/s.
        assert_eq!(report.bytes, 127 * 1024 * 1024);
        let secs = report.elapsed.as_secs_f64();
        assert!((secs - (127.0 * 1048576.0 / (127e6 / 2.94) + 0.01638)).abs() < 1e-6);
        assert_eq!(c.migrations(), 1);
        // Moving it again from the old host fails: it is not there.
        let err = src
            .migrate(VmId(7), &to(&t, 6), &MigrationParams::default())
            .unwrap_err();
        assert!(matches!(err, HypervisorError::NoSuchVm { .. }));
        c.check().unwrap();
    }

    pub(crate) fn db_main() -> Vec<super::super::GroupTag> {
        vec![super::super::GroupTag {
            name: "db-main".into(),
            kind: Some(crate::rules::GroupKind::AntiAffinity),
            scope: Some("host".into()),
        }]
    }

    #[test]
    fn a_vm_s_groups_are_reported_and_travel_with_it() {
        let (t, c) = cluster();
        c.add_vm(HostId(0), synthetic_vm(VmId(7), 196)).unwrap();
        let mut watch = crate::hypervisor::watch::VmWatch::new();
        watch.poll(&c.host(HostId(0))).unwrap();
        c.set_groups(VmId(7), db_main()).unwrap();
        // The host reports the change like any other change of the VM.
        let changes = watch.poll(&c.host(HostId(0))).unwrap();
        assert!(
            matches!(&changes[..], [crate::hypervisor::watch::VmChange::Changed(v)] if v.groups == db_main()),
            "{changes:?}"
        );
        c.host(HostId(0))
            .migrate(VmId(7), &to(&t, 5), &MigrationParams::default())
            .unwrap();
        let there = c.host(HostId(5)).vms().unwrap();
        assert_eq!(there[0].groups, db_main(), "{there:?}");
        assert!(c.set_groups(VmId(8), Vec::new()).is_err());
    }

    #[test]
    fn a_move_a_placement_rule_forbids_is_refused_with_the_rule() {
        use crate::rules::GroupKind;
        let (t, c) = cluster();
        let mut rules = Rules::none();
        let g = rules
            .add_group("db-main", GroupKind::AntiAffinity, 0)
            .unwrap();
        rules.add_member(g, VmId(7));
        rules.add_member(g, VmId(8));
        c.add_vm(HostId(0), synthetic_vm(VmId(7), 1024)).unwrap();
        c.add_vm(HostId(5), synthetic_vm(VmId(8), 1024)).unwrap();
        // Without rules the replicas may meet.
        c.host(HostId(0))
            .migrate(VmId(7), &to(&t, 5), &MigrationParams::default())
            .unwrap();
        c.host(HostId(5))
            .migrate(VmId(7), &to(&t, 0), &MigrationParams::default())
            .unwrap();
        c.set_rules(Some((Arc::new(rules), Arc::new(t.clone()))));
        let err = c
            .host(HostId(0))
            .migrate(VmId(7), &to(&t, 5), &MigrationParams::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("anti-affinity group db-main, scope host: r003h02 runs 0.0.0.8"),
            "{err}"
        );
        assert_eq!(c.host_of(VmId(7)), Some(HostId(0)));
        // Anywhere else is still fine.
        c.host(HostId(0))
            .migrate(VmId(7), &to(&t, 4), &MigrationParams::default())
            .unwrap();
    }

    #[test]
    fn a_full_destination_or_a_timeout_leaves_the_vm_where_it_was() {
        let (t, c) = cluster();
        for i in 0..16 {
            c.add_vm(HostId(1), synthetic_vm(VmId(100 + i), 1024))
                .unwrap();
        }
        c.add_vm(HostId(0), synthetic_vm(VmId(7), 1024)).unwrap();
        let err = c
            .host(HostId(0))
            .migrate(VmId(7), &to(&t, 1), &MigrationParams::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("destination is full"), "{err}");
        let params = MigrationParams {
            timeout: Duration::from_secs(1),
            ..MigrationParams::default()
        };
        let err = c
            .host(HostId(0))
            .migrate(VmId(7), &to(&t, 2), &params)
            .unwrap_err();
        assert!(matches!(
            err,
            HypervisorError::Aborted {
                reason: AbortReason::Timeout,
                ..
            }
        ));
        let err = c
            .host(HostId(0))
            .migrate(
                VmId(7),
                &Destination {
                    host: "nowhere".into(),
                    libvirt_uri: None,
                    migration_uri: None,
                },
                &MigrationParams::default(),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("nowhere"), "{err}");
        assert_eq!(c.host_of(VmId(7)), Some(HostId(0)));
        c.check().unwrap();
    }
}
