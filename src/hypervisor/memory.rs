//! The in-memory hypervisor: a whole cluster of hosts held in one shared structure, and one handle
//! per host that implements [`Hypervisor`]. The simulator and the loopback daemon tests use it in
//! place of libvirt.
//!
//! In [`MemoryCluster`] a migration moves the VM between hosts atomically under one lock, so every
//! VM is on exactly one host at every moment, and it refuses a destination that is full (VM limit
//! or memory). Its report is modelled from the thesis's measurements, not timed: nothing there
//! sleeps or reads a clock. It decides nothing.
//!
//! [`FileHost`] (daemons in separate processes) models a migration as libvirt runs one: a job of
//! the hypervisor, not of the daemon that asked for it. The job is written into the shared file
//! with its modelled completion time and holds a slot and memory at the destination meanwhile;
//! whoever touches the file after that time commits the move. A source daemon killed mid-way
//! therefore does not stop its migration, as libvirtd's jobs outlive the client.

use super::{
    AbortReason, Capacity, Destination, Hypervisor, HypervisorError, Interface, MigrationParams,
    MigrationReport, Result, Vm, VmState,
};
use crate::topology::{HostId, Topology};
use scored_proto::VmId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
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
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct HostState {
    name: String,
    max_vms: u32,
    memory_mib: u64,
    used_memory_mib: u64,
    vms: Vec<Vm>,
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

#[derive(Clone, Debug)]
struct Cluster {
    hosts: Vec<HostState>,
    by_name: HashMap<String, HostId>,
    location: HashMap<VmId, HostId>,
    model: MigrationModel,
    migrations: u64,
    /// Always empty in a [`MemoryCluster`], whose moves are instantaneous.
    in_flight: Vec<InFlight>,
}

/// A cluster of in-memory hosts shaped like a topology (names, VM limits, guest memory).
/// Cloning shares the cluster.
#[derive(Clone, Debug)]
pub struct MemoryCluster {
    inner: Arc<Mutex<Cluster>>,
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
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cluster> {
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
        let mut c = self.lock();
        let host = *c
            .location
            .get(&vm)
            .ok_or(HypervisorError::NoSuchVm { vm })?;
        if let Some(v) = c.hosts[host.index()].vms.iter_mut().find(|v| v.id == vm) {
            v.pinned = pinned;
        }
        Ok(())
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

    /// Writes the cluster to `path` for daemons in separate processes ([`FileHost`]), with the
    /// traffic they should see (`pairs`: each communicating pair once, with λ in bytes/s).
    pub fn save_shared(&self, path: &Path, pairs: &[(VmId, VmId, f64)]) -> Result<()> {
        let c = self.lock();
        let file = SharedFile {
            hosts: c.hosts.clone(),
            model: c.model,
            migrations: c.migrations,
            in_flight: c.in_flight.clone(),
            traffic: pairs.to_vec(),
        };
        write_shared(path, &file)
    }
}

impl Cluster {
    fn add_vm(&mut self, host: HostId, vm: Vm) -> Result<()> {
        if let Some(at) = self.location.get(&vm.id) {
            let name = self.hosts[at.index()].name.clone();
            return Err(HypervisorError::Call {
                vm: Some(vm.id),
                call: "add_vm",
                message: format!("already running on {name}"),
            });
        }
        if host.index() >= self.hosts.len() {
            return Err(HypervisorError::Call {
                vm: Some(vm.id),
                call: "add_vm",
                message: format!("no host {} in this cluster", host.0),
            });
        }
        if let Some(why) = self.full(host, vm.memory_mib) {
            return Err(HypervisorError::Call {
                vm: Some(vm.id),
                call: "add_vm",
                message: format!("{} is full: {why}", self.hosts[host.index()].name),
            });
        }
        let h = &mut self.hosts[host.index()];
        h.used_memory_mib += vm.memory_mib;
        let id = vm.id;
        h.vms.push(vm);
        self.location.insert(id, host);
        Ok(())
    }

    fn check(&self) -> std::result::Result<(), String> {
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
    fn settle(&mut self, now_unix_ms: u64) -> usize {
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

    fn capacity(&self, host: HostId) -> Capacity {
        let h = &self.hosts[host.index()];
        let (incoming, reserved) = self.incoming(host);
        Capacity {
            running_vms: h.vms.len() as u32,
            incoming_migrations: incoming,
            free_memory_mib: h.memory_mib.saturating_sub(h.used_memory_mib + reserved),
            total_memory_mib: h.memory_mib,
            cpu_load: 0.0,
        }
    }

    fn state(&self, host: HostId, vm: VmId) -> VmState {
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
    fn plan_move(
        &self,
        from: HostId,
        vm: VmId,
        dest: &Destination,
        params: &MigrationParams,
    ) -> Result<(HostId, MigrationReport)> {
        let fail = |call: &'static str, message: String| HypervisorError::Migration {
            vm,
            dest: dest.host.clone(),
            call,
            message,
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
    fn commit_move(&mut self, from: HostId, to: HostId, vm: VmId) -> Result<()> {
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

    fn from_shared(file: SharedFile) -> Cluster {
        let by_name = file
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name.clone(), HostId(i as u32)))
            .collect();
        let location = file
            .hosts
            .iter()
            .enumerate()
            .flat_map(|(i, h)| h.vms.iter().map(move |v| (v.id, HostId(i as u32))))
            .collect();
        Cluster {
            hosts: file.hosts,
            by_name,
            location,
            model: file.model,
            migrations: file.migrations,
            in_flight: file.in_flight,
        }
    }

    fn into_shared(self, traffic: Vec<(VmId, VmId, f64)>) -> SharedFile {
        SharedFile {
            hosts: self.hosts,
            model: self.model,
            migrations: self.migrations,
            in_flight: self.in_flight,
            traffic,
        }
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

/// The cluster as one JSON file, so daemons in separate processes share one simulated data
/// centre (the multi-process loopback tests and the no-root demo). Every access takes an
/// exclusive `flock` on the file, so a move is atomic across processes as it is under the mutex.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SharedFile {
    hosts: Vec<HostState>,
    model: MigrationModel,
    migrations: u64,
    /// Migration jobs not completed when the file was last written.
    #[serde(default)]
    in_flight: Vec<InFlight>,
    /// Each communicating pair once, λ in bytes/s: the traffic the daemons' synthetic flow
    /// sources replay.
    pub traffic: Vec<(VmId, VmId, f64)>,
}

impl SharedFile {
    /// Where each VM runs, by host name.
    pub fn placement(&self) -> HashMap<VmId, String> {
        self.hosts
            .iter()
            .flat_map(|h| h.vms.iter().map(move |v| (v.id, h.name.clone())))
            .collect()
    }

    pub fn migrations(&self) -> u64 {
        self.migrations
    }

    /// Migration jobs in progress (committed when next touched after their completion time).
    pub fn in_flight(&self) -> &[InFlight] {
        &self.in_flight
    }

    /// The invariants of [`MemoryCluster::check`], on the file's contents.
    pub fn check(&self) -> std::result::Result<(), String> {
        Cluster::from_shared(self.clone()).check()
    }
}

fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> HypervisorError {
    HypervisorError::Connection(format!("{}: {what}: {e}", path.display()))
}

fn write_shared(path: &Path, file: &SharedFile) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec(file).map_err(|e| io_err(path, "encode", e))?;
    std::fs::write(&tmp, text).map_err(|e| io_err(&tmp, "write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, "rename", e))
}

/// An exclusive lock on the shared file (on a sibling `.lock` file, so the data file can be
/// replaced atomically); released when dropped.
struct FileLock {
    /// Holding the descriptor holds the lock; closing it releases the lock.
    _file: std::fs::File,
}

impl FileLock {
    fn take(path: &Path) -> Result<FileLock> {
        use std::os::fd::AsRawFd;
        let lock = path.with_extension("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|e| io_err(&lock, "open lock", e))?;
        // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(&lock, "flock", std::io::Error::last_os_error()));
        }
        Ok(FileLock { _file: f })
    }
}

/// Reads the shared file under its lock (for tests and the demo's observers), committing the
/// migrations whose time has come, as any access does.
pub fn read_shared(path: &Path) -> Result<SharedFile> {
    update_shared(path, |c, traffic| {
        Ok((c.clone().into_shared(traffic.clone()), false))
    })
}

/// Replaces the traffic of a shared cluster file under its lock (tests whose traffic changes
/// over time; the daemons replay the new rates on their next inventory refresh).
pub fn set_shared_traffic(path: &Path, traffic: &[(VmId, VmId, f64)]) -> Result<()> {
    update_shared(path, |_, t| {
        *t = traffic.to_vec();
        Ok(((), true))
    })
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One access to the shared file under its lock: loads it, commits the migrations that are due,
/// runs `f` (which says whether it changed anything), and writes the file back if anything did.
fn update_shared<R>(
    path: &Path,
    f: impl FnOnce(&mut Cluster, &mut Vec<(VmId, VmId, f64)>) -> Result<(R, bool)>,
) -> Result<R> {
    let _lock = FileLock::take(path)?;
    let mut file = load_shared(path)?;
    let mut traffic = std::mem::take(&mut file.traffic);
    let mut c = Cluster::from_shared(file);
    let settled = c.settle(now_unix_ms());
    let (r, changed) = f(&mut c, &mut traffic)?;
    if settled > 0 || changed {
        write_shared(path, &c.into_shared(traffic))?;
    }
    Ok(r)
}

fn load_shared(path: &Path) -> Result<SharedFile> {
    let text = std::fs::read(path).map_err(|e| io_err(path, "read", e))?;
    serde_json::from_slice(&text).map_err(|e| io_err(path, "decode", e))
}

/// One host of a shared-file cluster, seen through the [`Hypervisor`] trait. A migration is a
/// job in the file (see the module's documentation): `migrate` records it, waits for its modelled
/// completion outside the lock (other hosts carry on), and returns once the move is committed,
/// by itself or by whoever touched the file first.
#[derive(Clone, Debug)]
pub struct FileHost {
    path: PathBuf,
    name: String,
}

impl FileHost {
    /// Opens host `name` of the cluster in `path`, which must be readable and list it.
    pub fn open(path: &Path, name: &str) -> Result<FileHost> {
        let host = FileHost::open_later(path, name);
        host.with(false, |_, _| Ok(()))?;
        Ok(host)
    }

    /// Host `name` of the cluster in `path`, read at its first call: like a libvirtd that is
    /// not up yet, a file that cannot be read makes the calls fail until it can.
    pub fn open_later(path: &Path, name: &str) -> FileHost {
        FileHost {
            path: path.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// The traffic this cluster's VMs exchange (each pair once).
    pub fn traffic(&self) -> Result<Vec<(VmId, VmId, f64)>> {
        Ok(read_shared(&self.path)?.traffic)
    }

    /// One access to the file, with this host's id in it.
    fn with<R>(
        &self,
        mutate: bool,
        f: impl FnOnce(&mut Cluster, HostId) -> Result<R>,
    ) -> Result<R> {
        update_shared(&self.path, |c, _| {
            let me = c.by_name.get(&self.name).copied().ok_or_else(|| {
                io_err(
                    &self.path,
                    "open",
                    format!("no host `{}` in the cluster file", self.name),
                )
            })?;
            Ok((f(c, me)?, mutate))
        })
    }

    /// The first half of [`Hypervisor::migrate`]: checks the move and records its job in the
    /// file. From here the job runs without this process.
    fn start_job(
        &self,
        vm: VmId,
        dest: &Destination,
        params: &MigrationParams,
    ) -> Result<(MigrationReport, InFlight)> {
        self.with(true, |c, me| {
            let (_, report) = c.plan_move(me, vm, dest, params)?;
            let started = now_unix_ms();
            let job = InFlight {
                vm,
                from: self.name.clone(),
                to: dest.host.clone(),
                memory_mib: c.hosts[me.index()]
                    .vms
                    .iter()
                    .find(|v| v.id == vm)
                    .map(|v| v.memory_mib)
                    .unwrap_or(0),
                started_unix_ms: started,
                completes_unix_ms: started + report.elapsed.as_millis() as u64,
            };
            c.in_flight.push(job.clone());
            Ok((report, job))
        })
    }

    /// The second half: waits for the job's completion time, then for its commit.
    fn await_job(&self, job: &InFlight) -> Result<()> {
        loop {
            let left = job.completes_unix_ms.saturating_sub(now_unix_ms());
            // Past the completion time, the first access commits it (ours or another host's).
            std::thread::sleep(Duration::from_millis(left.max(1)));
            let (pending, here) = self.with(false, |c, me| {
                Ok((
                    c.in_flight.contains(job),
                    c.location.get(&job.vm) == Some(&me),
                ))
            })?;
            if pending {
                continue;
            }
            if here {
                return Err(HypervisorError::Migration {
                    vm: job.vm,
                    dest: job.to.clone(),
                    call: "migration job",
                    message: "the job ended and the VM is still here".into(),
                });
            }
            return Ok(());
        }
    }
}

impl Hypervisor for FileHost {
    fn vms(&self) -> Result<Vec<Vm>> {
        self.with(false, |c, me| Ok(c.hosts[me.index()].vms.clone()))
    }

    fn capacity(&self) -> Result<Capacity> {
        self.with(false, |c, me| Ok(c.capacity(me)))
    }

    fn migrate(
        &self,
        vm: VmId,
        dest: &Destination,
        params: &MigrationParams,
    ) -> Result<MigrationReport> {
        let (report, job) = self.start_job(vm, dest, params)?;
        tracing::debug!(host = %self.name, vm = %vm, to = %dest.host, completes_unix_ms = job.completes_unix_ms, "simulated migration started");
        self.await_job(&job)?;
        tracing::debug!(host = %self.name, vm = %vm, to = %dest.host, "simulated migration done");
        Ok(report)
    }

    fn state(&self, vm: VmId) -> Result<VmState> {
        self.with(false, |c, me| Ok(c.state(me, vm)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cluster() -> (Topology, MemoryCluster) {
        let t = Topology::parse(
            Path::new("topology/fat-tree-k4.toml"),
            include_str!("../../topology/fat-tree-k4.toml"),
        )
        .unwrap();
        let c = MemoryCluster::new(&t);
        (t, c)
    }

    fn to(t: &Topology, h: u32) -> Destination {
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

    #[test]
    fn shared_file_hosts_see_one_cluster_and_move_atomically() {
        let (t, c) = cluster();
        c.set_model(MigrationModel {
            sent_fraction: 0.5,
            throughput_bytes_per_s: 1e12,
            downtime: Duration::from_millis(1),
        });
        for i in 0..8u32 {
            c.add_vm(HostId(i % 4), synthetic_vm(VmId(i), 1024))
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        c.save_shared(&path, &[(VmId(0), VmId(1), 5.0)]).unwrap();
        let h0 = FileHost::open(&path, &t.host(HostId(0)).name).unwrap();
        let h5 = FileHost::open(&path, &t.host(HostId(5)).name).unwrap();
        assert_eq!(h0.vms().unwrap().len(), 2);
        assert_eq!(h0.traffic().unwrap(), vec![(VmId(0), VmId(1), 5.0)]);
        // Traffic that changes over time: replaced in place, the VMs untouched.
        set_shared_traffic(&path, &[(VmId(0), VmId(2), 7.0)]).unwrap();
        assert_eq!(h0.traffic().unwrap(), vec![(VmId(0), VmId(2), 7.0)]);
        assert_eq!(h0.vms().unwrap().len(), 2);
        let r = h0
            .migrate(VmId(0), &to(&t, 5), &MigrationParams::default())
            .unwrap();
        assert_eq!(r.downtime, Duration::from_millis(1));
        assert_eq!(h0.state(VmId(0)).unwrap(), VmState::Absent);
        assert_eq!(h5.state(VmId(0)).unwrap(), VmState::Running);
        assert_eq!(h5.capacity().unwrap().running_vms, 1);
        let f = read_shared(&path).unwrap();
        f.check().unwrap();
        assert_eq!(f.migrations(), 1);
        assert_eq!(f.placement()[&VmId(0)], t.host(HostId(5)).name);
        assert!(FileHost::open(&path, "nowhere").is_err());
        // Concurrent movers in threads (processes behave the same through flock).
        let threads: Vec<_> = (0..4u32)
            .map(|k| {
                let (path, t) = (path.clone(), t.clone());
                std::thread::spawn(move || {
                    for step in 0..20u32 {
                        let vm = VmId((step + k) % 8);
                        let f = read_shared(&path).unwrap();
                        let from = &f.placement()[&vm];
                        let h = FileHost::open(&path, from).unwrap();
                        let _ = h.migrate(
                            vm,
                            &to(&t, (step * 3 + k) % 16),
                            &MigrationParams::default(),
                        );
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let f = read_shared(&path).unwrap();
        f.check().unwrap();
        assert_eq!(f.placement().len(), 8);
    }

    /// A shared-file cluster of the k=4 fat tree whose migrations take `ms` milliseconds for a
    /// 1024 MiB guest, with VM i on host i % 4 for i < `vms`.
    fn slow_file_cluster(ms: u64, vms: u32) -> (Topology, tempfile::TempDir, PathBuf) {
        let (t, c) = cluster();
        c.set_model(MigrationModel {
            sent_fraction: 1.0,
            throughput_bytes_per_s: 1024.0 * 1024.0 * 1024.0 * 1000.0 / ms as f64,
            downtime: Duration::ZERO,
        });
        for i in 0..vms {
            c.add_vm(HostId(i % 4), synthetic_vm(VmId(i), 1024))
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        c.save_shared(&path, &[]).unwrap();
        (t, dir, path)
    }

    #[test]
    fn a_file_migration_is_a_job_that_holds_its_destination() {
        let (t, _dir, path) = slow_file_cluster(600, 8);
        let h0 = FileHost::open(&path, &t.host(HostId(0)).name).unwrap();
        let h5 = FileHost::open(&path, &t.host(HostId(5)).name).unwrap();
        let free = h5.capacity().unwrap().free_memory_mib;
        let mover = {
            let (h0, dest) = (h0.clone(), to(&t, 5));
            std::thread::spawn(move || h0.migrate(VmId(0), &dest, &MigrationParams::default()))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while read_shared(&path).unwrap().in_flight().is_empty() {
            assert!(std::time::Instant::now() < deadline, "no job recorded");
            std::thread::sleep(Duration::from_millis(5));
        }
        // In flight: still at the source, with a job; the destination holds a slot and memory.
        assert_eq!(h0.state(VmId(0)).unwrap(), VmState::Migrating);
        assert_eq!(h5.state(VmId(0)).unwrap(), VmState::Absent);
        assert!(h0.vms().unwrap().iter().any(|v| v.id == VmId(0)));
        assert!(h5.vms().unwrap().is_empty());
        let cap = h5.capacity().unwrap();
        assert_eq!((cap.running_vms, cap.incoming_migrations), (0, 1));
        assert_eq!(cap.free_memory_mib, free - 1024);
        read_shared(&path).unwrap().check().unwrap();
        // A second job for the same VM is refused, as libvirt refuses a second job.
        let err = h0
            .migrate(VmId(0), &to(&t, 6), &MigrationParams::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("already in progress"), "{err}");
        mover.join().unwrap().unwrap();
        assert_eq!(h0.state(VmId(0)).unwrap(), VmState::Absent);
        assert_eq!(h5.state(VmId(0)).unwrap(), VmState::Running);
        let cap = h5.capacity().unwrap();
        assert_eq!((cap.running_vms, cap.incoming_migrations), (1, 0));
        assert_eq!(cap.free_memory_mib, free - 1024);
        let f = read_shared(&path).unwrap();
        assert!(f.in_flight().is_empty());
        assert_eq!(f.migrations(), 1);
        f.check().unwrap();
    }

    #[test]
    fn a_file_migration_completes_without_the_process_that_started_it() {
        let (t, _dir, path) = slow_file_cluster(300, 8);
        let h0 = FileHost::open(&path, &t.host(HostId(0)).name).unwrap();
        let h9 = FileHost::open(&path, &t.host(HostId(9)).name).unwrap();
        // Started and never waited for: the source daemon died right after.
        let (_, job) = h0
            .start_job(VmId(4), &to(&t, 5), &MigrationParams::default())
            .unwrap();
        drop(h0);
        let took = job.completes_unix_ms - job.started_unix_ms;
        assert!(took.abs_diff(300) <= 1, "{took} ms");
        // Before its time nobody commits it, however often the file is touched.
        assert!(h9.vms().unwrap().is_empty());
        assert_eq!(
            read_shared(&path).unwrap().in_flight(),
            std::slice::from_ref(&job)
        );
        std::thread::sleep(Duration::from_millis(
            job.completes_unix_ms.saturating_sub(now_unix_ms()) + 20,
        ));
        // Any host's access after it commits it: here an unrelated host's inventory.
        assert!(h9.vms().unwrap().is_empty());
        let f = read_shared(&path).unwrap();
        assert!(f.in_flight().is_empty());
        assert_eq!(f.placement()[&VmId(4)], t.host(HostId(5)).name);
        assert_eq!(f.migrations(), 1);
        f.check().unwrap();
    }

    #[test]
    fn incoming_migrations_take_their_slot_before_they_land() {
        // Host 5 with 15 VMs has one slot: a migration on its way in takes it.
        let (t, _dir, path) = slow_file_cluster(400, 2);
        let mut f = read_shared(&path).unwrap();
        for i in 0..15u32 {
            f.hosts[5].vms.push(synthetic_vm(VmId(100 + i), 512));
            f.hosts[5].used_memory_mib += 512;
        }
        write_shared(&path, &f).unwrap();
        let h0 = FileHost::open(&path, &t.host(HostId(0)).name).unwrap();
        let h1 = FileHost::open(&path, &t.host(HostId(1)).name).unwrap();
        h0.start_job(VmId(0), &to(&t, 5), &MigrationParams::default())
            .unwrap();
        let err = h1
            .migrate(VmId(1), &to(&t, 5), &MigrationParams::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("destination is full: 15 of 16 VMs and 1 migrating in"),
            "{err}"
        );
        read_shared(&path).unwrap().check().unwrap();
    }

    #[test]
    fn concurrent_migrations_keep_every_vm_on_one_host() {
        let (t, c) = cluster();
        let n = 200u32;
        for i in 0..n {
            c.add_vm(HostId(i % 16), synthetic_vm(VmId(i), 1024))
                .unwrap();
        }
        let threads: Vec<_> = (0..4u32)
            .map(|k| {
                let c = c.clone();
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut ok = 0;
                    for step in 0..500u32 {
                        let vm = VmId((step * 7 + k * 13) % n);
                        let Some(from) = c.host_of(vm) else { continue };
                        let dest = to(&t, (step + k) % 16);
                        if c.host(from)
                            .migrate(vm, &dest, &MigrationParams::default())
                            .is_ok()
                        {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        let moved: u64 = threads.into_iter().map(|h| h.join().unwrap()).sum();
        assert!(moved > 0);
        assert_eq!(c.migrations(), moved);
        assert_eq!(c.vm_counts().iter().sum::<u32>(), n);
        c.check().unwrap();
    }
}
