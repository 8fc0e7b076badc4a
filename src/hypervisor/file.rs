//! A simulated cluster in one JSON file, shared by daemons in separate processes (the
//! multi-process loopback tests and the no-root demo), and [`FileHost`], one host of it seen
//! through the [`Hypervisor`] trait.
//!
//! Every access takes an exclusive `flock`, so a move is atomic across processes as it is under
//! [`MemoryCluster`]'s mutex; the placement rules are `Cluster`'s, shared with it. A migration
//! is modelled as libvirt runs one: a job of the hypervisor, not of the daemon that asked for it.
//! The job is written into the file with its modelled completion time and holds a slot and memory
//! at the destination meanwhile; whoever touches the file after that time commits the move. A
//! source daemon killed mid-way therefore does not stop its migration, as libvirtd's jobs outlive
//! the client. It decides nothing.

use super::memory::{Cluster, HostState, InFlight, MemoryCluster, MigrationModel};
use super::{
    Capacity, Cause, Destination, Hypervisor, HypervisorError, MigrationParams, MigrationReport,
    Result, Vm, VmState,
};
use crate::topology::HostId;
use scored_proto::VmId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The cluster as one JSON file, so daemons in separate processes share one simulated data
/// centre.
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

/// The file at `path` could not be used: `what` names the step.
fn file_err(path: &Path, what: &str, source: impl Into<Cause>) -> HypervisorError {
    HypervisorError::Connection {
        target: format!("{}: {what}", path.display()),
        source: source.into(),
    }
}

fn write_shared(path: &Path, file: &SharedFile) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec(file).map_err(|e| file_err(path, "encode", e))?;
    std::fs::write(&tmp, text).map_err(|e| file_err(&tmp, "write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, "rename", e))
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
            .map_err(|e| file_err(&lock, "open lock", e))?;
        // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(file_err(&lock, "flock", std::io::Error::last_os_error()));
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
    let text = std::fs::read(path).map_err(|e| file_err(path, "read", e))?;
    serde_json::from_slice(&text).map_err(|e| file_err(path, "decode", e))
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
                file_err(
                    &self.path,
                    "open",
                    Cause::Refused(format!("no host `{}` in the cluster file", self.name)),
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
                    source: Cause::Refused("the job ended and the VM is still here".into()),
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

impl MemoryCluster {
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
            // Daemons re-check rules themselves; the shared file only moves VMs.
            rules: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::memory::synthetic_vm;
    use crate::hypervisor::memory::tests::{cluster, db_main, to};
    use crate::topology::Topology;

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

    #[test]
    fn a_vm_s_groups_are_kept_in_the_file_and_travel_with_it() {
        let (t, c) = cluster();
        c.set_model(MigrationModel {
            sent_fraction: 0.5,
            throughput_bytes_per_s: 1e12,
            downtime: Duration::from_millis(1),
        });
        c.add_vm(HostId(0), synthetic_vm(VmId(7), 196)).unwrap();
        c.set_groups(VmId(7), db_main()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        c.save_shared(&path, &[]).unwrap();
        let h0 = FileHost::open(&path, &t.host(HostId(0)).name).unwrap();
        assert_eq!(h0.vms().unwrap()[0].groups, db_main());
        h0.migrate(VmId(7), &to(&t, 5), &MigrationParams::default())
            .unwrap();
        let h5 = FileHost::open(&path, &t.host(HostId(5)).name).unwrap();
        assert_eq!(h5.vms().unwrap()[0].groups, db_main());
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
