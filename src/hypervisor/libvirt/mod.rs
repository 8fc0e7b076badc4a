//! The libvirt backend: this host's domains as scored's VMs, its node as capacity, and live
//! migration through `virDomainMigrate3` with a watchdog that aborts hopeless jobs.
//!
//! This file holds the connection and the [`Hypervisor`] implementation; the jobs live apart:
//! `domains` reads domains (listing XML, identity, state), `migration` runs one live
//! migration and confirms it at the destination, `watchdog` is the thread that stops a
//! migration that stalls or overruns, `tls` checks the certificates of encrypted migration.
//!
//! Every method blocks (libvirt RPCs; a migration takes seconds): call them from
//! `spawn_blocking`. It reports and executes; it never decides whether a VM should move.
//!
//! **Identity.** A VM's [`VmId`] is its primary IPv4 address: the `ip` attribute of the domain's
//! `<scored:vm>` metadata element (namespace [`METADATA_NS`]) when the operator set one, else the
//! first IPv4 address libvirt knows for its interfaces (DHCP leases of libvirt networks, then the
//! host's ARP table). A running domain with neither is not reported (logged once per poll).
//! The same element's `pinned='yes'` pins the VM: scored never migrates it, and its
//! `<scored:group name=… kind=… scope=…/>` children put the VM in placement groups
//! ([`Vm::groups`]). A domain whose scored metadata is not understood is not reported (logged
//! with the domain and the attribute): scored leaves alone a VM whose rules it cannot read.
//!
//! **Migration** is managed (the client drives libvirt's Begin/Prepare/Perform/Finish/Confirm
//! phases) rather than peer-to-peer: scored needs a connection to the destination anyway, to read
//! the destination's completed job statistics and to check the VM runs there, and in managed mode
//! a scored that dies mid-job makes the source libvirtd cancel the job, so the VM stays where the
//! journal says it was. Flags are always LIVE | PERSIST_DEST | UNDEFINE_SOURCE: the VM is defined
//! on exactly one host before and after; TLS (QEMU's, on the data stream) unless configured off. Disks: the guests scored moves are diskless or on shared
//! storage; a domain with a local disk image fails in libvirt's Prepare phase on the destination
//! (the image path does not exist there) and keeps running at the source. scored never asks for
//! storage migration (`VIR_MIGRATE_NON_SHARED_DISK`), which would copy whole disks.

mod domains;
mod migration;
pub mod tls;
mod watchdog;

pub use domains::{DomainDescription, DomainXmlError, METADATA_NS, parse_mac};
pub use migration::{MigrationTrace, migrate_parameters};

use super::{
    Capacity, Cause, Destination, Hypervisor, HypervisorError, Measured, MigrationParams,
    MigrationReport, Result, Vm, VmState,
};
use domains::{
    DomainState, Listed, domain_state, incoming_in, incoming_migration, job_figures,
    learned_addresses, list_domains, start_dirty_rate, uuid_string,
};
use scored_proto::VmId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

/// How to reach this host's libvirt and how to read its capacity.
#[derive(Clone, Debug)]
pub struct LibvirtConfig {
    /// Connection URI, e.g. `qemu:///system`.
    pub uri: String,
    /// Memory the operator gives guests on this host (the topology's `memory_mib`). When set,
    /// free memory is this minus the running domains' memory (never more than the node's free
    /// memory): hosts sharing one machine (the testbed) then each see their own share.
    pub memory_mib: Option<u64>,
    /// How often the migration watchdog reads the job's statistics.
    pub poll_interval: Duration,
}

impl LibvirtConfig {
    pub fn new(uri: &str) -> Self {
        LibvirtConfig {
            uri: uri.to_string(),
            memory_mib: None,
            poll_interval: Duration::from_millis(100),
        }
    }
}

pub struct LibvirtHypervisor {
    cfg: LibvirtConfig,
    /// `None` until libvirtd first answers (see [`LibvirtHypervisor::connect_later`]).
    conn: Mutex<Option<Connect>>,
    /// Each VM's domain UUID as the last full listing saw it: lets [`Self::find`] look one
    /// domain up instead of describing them all (a hint, always checked against the domain).
    known: Mutex<HashMap<VmId, [u8; 16]>>,
    /// What the last read made of each running domain, by UUID: lets
    /// [`Hypervisor::vms_incremental`] describe only the domains that appeared or changed.
    seen: Mutex<HashMap<[u8; 16], Seen>>,
    /// The last measurement of each running domain, by UUID: CPU use is a difference of two.
    samples: Mutex<HashMap<[u8; 16], Sample>>,
    /// Domain XML descriptions read so far: what a read cost, for benches and tests.
    descriptions: std::sync::atomic::AtomicU64,
}

/// One running domain as the last read left it: the listing's key (libvirt's id of the running
/// domain, its state) and the VM its XML described (`None`: still migrating in, or not a VM
/// scored manages).
struct Seen {
    id: u32,
    state: DomainState,
    vm: Option<Vm>,
}

/// One domain's last measurement.
struct Sample {
    /// libvirt's id of the running domain: a restarted domain starts its CPU time again.
    id: u32,
    cpu_time_ns: Option<u64>,
    at: Instant,
    /// When scored last started a dirty-rate calculation on it.
    dirty_rate_started: Option<Instant>,
    /// Whether that calculation was accepted (a refused one never reports).
    dirty_rate_accepted: bool,
    /// The last dirty rate measured, MiB/s: reported while the next calculation runs.
    dirty_mib_s: Option<f64>,
    /// The non-zero memory the migration that brought this run of the domain here sent, MiB;
    /// read once per run (`None`: not read yet; `Some(None)`: it started here, or libvirt kept
    /// no figures).
    arrived_nonzero_mib: Option<Option<u64>>,
}

const MIB: u64 = 1024 * 1024;

/// A dirty-rate calculation runs over this long (page sampling; the guest keeps running)...
const DIRTY_RATE_SECONDS: u32 = super::DIRTY_RATE_WINDOW.as_secs() as u32;
/// ...and is started again on a domain at most this often: the rate a forecast uses is at most
/// this old, and QEMU's sampling costs the guest next to nothing this rarely.
const DIRTY_RATE_EVERY: Duration = Duration::from_secs(60);
/// A first calculation that has not reported this long after it started is not waited for.
const DIRTY_RATE_PENDING_FOR: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn silence_libvirt_stderr() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // libvirt's default handler prints every error to stderr; ours carry them instead.
    ONCE.call_once(virt::error::clear_error_callback);
}

impl LibvirtHypervisor {
    /// Opens the connection (fails now, with the URI, rather than at the first poll).
    pub fn connect(cfg: LibvirtConfig) -> Result<Self> {
        silence_libvirt_stderr();
        let conn = open(&cfg.uri)?;
        Ok(LibvirtHypervisor {
            cfg,
            conn: Mutex::new(Some(conn)),
            known: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            samples: Mutex::new(HashMap::new()),
            descriptions: Default::default(),
        })
    }

    /// As [`Self::connect`], but without connecting yet: the first call opens the connection,
    /// so a libvirtd that does not answer at start is an outage the calls report (the daemon
    /// starts, its hypervisor counted as down), not a failed start.
    pub fn connect_later(cfg: LibvirtConfig) -> Self {
        silence_libvirt_stderr();
        LibvirtHypervisor {
            cfg,
            conn: Mutex::new(None),
            known: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            samples: Mutex::new(HashMap::new()),
            descriptions: Default::default(),
        }
    }

    pub fn uri(&self) -> &str {
        &self.cfg.uri
    }

    /// Domain XML descriptions this handle has read so far (what reads cost, for benches and
    /// tests: the token's arrival read describes only domains that changed).
    pub fn descriptions(&self) -> u64 {
        self.descriptions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The connection, reopened if libvirtd restarted since the last call.
    fn conn(&self) -> Result<Connect> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(c) if c.is_alive().unwrap_or(false) => Ok(c.clone()),
            _ => {
                let c = open(&self.cfg.uri)?;
                *guard = Some(c.clone());
                Ok(c)
            }
        }
    }

    /// Every running domain with the VM it describes (domains without an identity are left out).
    fn described(&self) -> Result<Vec<(Domain, Vm)>> {
        let conn = self.conn()?;
        let doms = conn
            .list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            .map_err(|e| call(None, "virConnectListAllDomains", e))?;
        let mut out: Vec<(Domain, Vm)> = Vec::with_capacity(doms.len());
        let mut seen = HashMap::with_capacity(doms.len());
        for dom in doms {
            // Gone since the listing: skip it.
            let Some(state) = domain_state(&dom) else {
                continue;
            };
            // A guest still migrating in runs here only once its job completes: until then it
            // is the source's (and counts as incoming in the capacity).
            let vm = if incoming_in(&dom, state) {
                None
            } else {
                self.describe(&dom)
            };
            if let (Ok(uuid), Some(id)) = (dom.uuid(), dom.id()) {
                let remembered = Seen {
                    id,
                    state,
                    vm: vm.clone(),
                };
                seen.insert(*uuid.as_bytes(), remembered);
            }
            if let Some(vm) = vm
                && unique(out.iter().map(|(_, v)| v), &vm)
            {
                out.push((dom, vm));
            }
        }
        *lock(&self.known) = out.iter().map(|(_, v)| (v.id, v.uuid)).collect();
        *lock(&self.seen) = seen;
        Ok(out)
    }

    /// The VM one domain describes, or `None` (gone meanwhile, XML not understood, no identity).
    fn describe(&self, dom: &Domain) -> Option<Vm> {
        // A domain can vanish between the list and the query (it migrated away): skip it.
        self.descriptions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let xml = dom.xml_desc(0).ok()?;
        let desc = match DomainDescription::parse(&xml) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(uri = %self.cfg.uri, "domain XML not understood: {e}");
                return None;
            }
        };
        // Only a domain without declared identity costs the extra lookups (and libvirt's
        // ARP source logs an error per call on some kernels).
        let learned = if desc.declared_ip.is_none() {
            learned_addresses(dom)
        } else {
            Vec::new()
        };
        let vm = desc.into_vm(&learned);
        if vm.is_none() {
            tracing::warn!(
                uri = %self.cfg.uri,
                "domain without an IPv4 identity (set <scored:vm ip=…/> metadata); not managed"
            );
        }
        vm
    }

    /// The running domain of `vm`: first the domain the last listing saw it in, looked up
    /// alone (a few calls, whatever the number of guests), checked to be active, not a guest
    /// still migrating in, and still describing `vm`; else a full listing.
    fn find(&self, vm: VmId) -> Result<Option<(Domain, Vm)>> {
        let hint = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&vm)
            .copied();
        if let Some(uuid) = hint
            && let Ok(dom) = self
                .conn()?
                .lookup_domain_by_uuid_string(&uuid_string(&uuid))
            && dom.is_active().unwrap_or(false)
            && !incoming_migration(&dom)
            && let Some(v) = self.describe(&dom)
            && v.id == vm
        {
            return Ok(Some((dom, v)));
        }
        Ok(self.described()?.into_iter().find(|(_, v)| v.id == vm))
    }

    /// Starts a dirty-rate calculation on `l` when the driver reports dirty rates, none is
    /// running and the last started [`DIRTY_RATE_EVERY`] ago or more; returns when the last one
    /// started and whether libvirt accepted it.
    fn dirty_rate_due(
        &self,
        vm: VmId,
        l: &Listed,
        prev: Option<&Sample>,
        now: Instant,
    ) -> (Option<Instant>, bool) {
        let last = prev.and_then(|p| p.dirty_rate_started);
        let accepted = prev.is_some_and(|p| p.dirty_rate_accepted);
        let running = matches!(l.dirty, Some((s, _)) if s == sys::VIR_DOMAIN_DIRTYRATE_MEASURING);
        let due = last.is_none_or(|t| now.saturating_duration_since(t) >= DIRTY_RATE_EVERY);
        if l.dirty.is_none() || running || !due {
            return (last, accepted);
        }
        match start_dirty_rate(&l.dom, DIRTY_RATE_SECONDS) {
            Ok(()) => (Some(now), true),
            Err(e) => {
                tracing::debug!(%vm, uri = %self.cfg.uri, error = %e, "virDomainStartDirtyRateCalc");
                // Not again before the period is over: a guest that refuses keeps refusing.
                (Some(now), false)
            }
        }
    }

    /// `vm`'s domain through a new connection of its own, which lives as long as the handle.
    fn on_own_connection(&self, vm: &Vm) -> Result<Domain> {
        open(&self.cfg.uri)?
            .lookup_domain_by_uuid_string(&uuid_string(&vm.uuid))
            .map_err(|e| call(Some(vm.id), "virDomainLookupByUUIDString", e))
    }
}

impl Hypervisor for LibvirtHypervisor {
    fn vms(&self) -> Result<Vec<Vm>> {
        Ok(self.described()?.into_iter().map(|(_, vm)| vm).collect())
    }

    /// One `virConnectGetAllDomainStats` call for every domain's identity and state; the XML
    /// (and, for a domain paused for migration, the job) is read only for domains that are new
    /// or whose libvirt id or state changed since the last read. Metadata edited on a running
    /// domain (`virsh metadata --live`) changes neither: the next [`Hypervisor::vms`] (the
    /// periodic refresh) sees it.
    fn vms_incremental(&self) -> Result<Vec<Vm>> {
        let conn = self.conn()?;
        let listed = match list_domains(&conn, domains::STATE) {
            Ok(l) => l,
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_SUPPORT => return self.vms(),
            Err(e) => return Err(call(None, "virConnectGetAllDomainStats", e)),
        };
        let mut before = std::mem::take(&mut *lock(&self.seen));
        let mut seen = HashMap::with_capacity(listed.len());
        let mut out: Vec<Vm> = Vec::with_capacity(listed.len());
        for l in listed {
            let vm = match before.remove(&l.uuid) {
                Some(s) if s.id == l.id && s.state == l.state => s.vm,
                _ if incoming_in(&l.dom, l.state) => None,
                _ => self.describe(&l.dom),
            };
            if let Some(vm) = &vm
                && unique(out.iter(), vm)
            {
                out.push(vm.clone());
            }
            let (id, state) = (l.id, l.state);
            seen.insert(l.uuid, Seen { id, state, vm });
        }
        *lock(&self.known) = out.iter().map(|v| (v.id, v.uuid)).collect();
        *lock(&self.seen) = seen;
        Ok(out)
    }

    /// One `virConnectGetAllDomainStats` call (balloon, CPU and dirty-rate groups) for every
    /// VM the last read described; starts a dirty-rate calculation on each domain that had none
    /// for [`DIRTY_RATE_EVERY`] (its result shows at a later call).
    fn measure(&self) -> Result<Vec<Measured>> {
        let conn = self.conn()?;
        let listed = match list_domains(&conn, domains::MEASURED) {
            Ok(l) => l,
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_SUPPORT => return Ok(Vec::new()),
            Err(e) => return Err(call(None, "virConnectGetAllDomainStats", e)),
        };
        let now = Instant::now();
        let ids: HashMap<[u8; 16], VmId> = lock(&self.seen)
            .iter()
            .filter_map(|(uuid, s)| s.vm.as_ref().map(|v| (*uuid, v.id)))
            .collect();
        let mut before = std::mem::take(&mut *lock(&self.samples));
        let mut samples = HashMap::with_capacity(listed.len());
        let mut out = Vec::with_capacity(listed.len());
        for l in listed {
            let Some(&vm) = ids.get(&l.uuid) else {
                continue;
            };
            let prev = before.remove(&l.uuid).filter(|p| p.id == l.id);
            let (started, accepted) = self.dirty_rate_due(vm, &l, prev.as_ref(), now);
            let arrived = match prev.as_ref().and_then(|p| p.arrived_nonzero_mib) {
                Some(read) => read,
                None => arrived_nonzero_mib(vm, &l.dom),
            };
            let mut m = measured(vm, &l, prev.as_ref(), now);
            m.arrived_nonzero_mib = arrived;
            // While the next calculation runs, the last rate stands.
            m.dirty_mib_s = m.dirty_mib_s.or(prev.as_ref().and_then(|p| p.dirty_mib_s));
            m.dirty_rate_pending = m.dirty_mib_s.is_none()
                && accepted
                && started
                    .is_some_and(|t| now.saturating_duration_since(t) < DIRTY_RATE_PENDING_FOR);
            out.push(m);
            let sample = Sample {
                id: l.id,
                cpu_time_ns: l.cpu_time_ns,
                at: now,
                dirty_rate_started: started,
                dirty_rate_accepted: accepted,
                dirty_mib_s: m.dirty_mib_s,
                arrived_nonzero_mib: Some(arrived),
            };
            samples.insert(l.uuid, sample);
        }
        *lock(&self.samples) = samples;
        Ok(out)
    }

    fn capacity(&self) -> Result<Capacity> {
        let conn = self.conn()?;
        let node = conn
            .node_info()
            .map_err(|e| call(None, "virNodeGetInfo", e))?;
        let free_bytes = conn
            .free_memory()
            .map_err(|e| call(None, "virNodeGetFreeMemory", e))?;
        let doms = conn
            .list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            .map_err(|e| call(None, "virConnectListAllDomains", e))?;
        let node_total = node.memory / 1024;
        let node_free = free_bytes / (1024 * 1024);
        // An incoming guest's QEMU already runs here and holds its memory: it is counted in
        // the memory used, and apart from the running VMs.
        let (total, free) = match self.cfg.memory_mib {
            Some(limit) => {
                let used: u64 = doms
                    .iter()
                    .filter_map(|d| d.info().ok())
                    .map(|i| i.memory / 1024)
                    .sum();
                (limit, limit.saturating_sub(used).min(node_free))
            }
            None => (node_total, node_free),
        };
        let incoming = doms.iter().filter(|d| incoming_migration(d)).count() as u32;
        Ok(Capacity {
            running_vms: doms.len() as u32 - incoming,
            incoming_migrations: incoming,
            free_memory_mib: free,
            total_memory_mib: total,
            cpu_load: if is_local(&self.cfg.uri) {
                load_per_cpu(node.cpus)
            } else {
                0.0
            },
            cpus: node.cpus,
        })
    }

    fn migrate(
        &self,
        vm: VmId,
        dest: &Destination,
        params: &MigrationParams,
    ) -> Result<MigrationReport> {
        let (report, trace) = self.migrate_traced(vm, dest, params)?;
        tracing::info!(
            %vm, dest = %dest.host,
            elapsed_ms = report.elapsed.as_millis() as u64,
            downtime_ms = report.downtime.as_millis() as u64,
            bytes = report.bytes,
            job_started_after_ms = trace.job_started_after.map(|d| d.as_millis() as u64),
            wall_ms = trace.wall.as_millis() as u64,
            "migrated"
        );
        Ok(report)
    }

    fn state(&self, vm: VmId) -> Result<VmState> {
        let Some((dom, _)) = self.find(vm)? else {
            return Ok(VmState::Absent);
        };
        match job_figures(&dom, 0) {
            Ok(s) if s.kind != sys::VIR_DOMAIN_JOB_NONE as i32 => Ok(VmState::Migrating),
            Ok(_) => Ok(VmState::Running),
            // A driver that cannot report jobs (libvirt's test driver) cannot migrate either.
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_SUPPORT => Ok(VmState::Running),
            // It left between the lookup and the query.
            Err(_) if !dom.is_active().unwrap_or(false) => Ok(VmState::Absent),
            Err(e) => Err(call(Some(vm), "virDomainGetJobStats", e)),
        }
    }
}

/// What one listing says of `vm`, the CPU use against the previous sample of the same running
/// domain.
fn measured(vm: VmId, l: &Listed, prev: Option<&Sample>, now: Instant) -> Measured {
    let cpu_cores = match (prev, l.cpu_time_ns) {
        (Some(p), Some(ns)) => p.cpu_time_ns.and_then(|before| {
            let secs = now.saturating_duration_since(p.at).as_secs_f64();
            (ns >= before && secs > 0.0).then(|| (ns - before) as f64 / 1e9 / secs)
        }),
        _ => None,
    };
    let dirty_mib_s = match l.dirty {
        Some((status, Some(mib_s))) if status == sys::VIR_DOMAIN_DIRTYRATE_MEASURED => {
            Some(mib_s.max(0) as f64)
        }
        _ => None,
    };
    // The guest's own account: its memory (as the balloon leaves it) less what it has free.
    let guest_used_mib = match (l.balloon_kib, l.unused_kib) {
        (Some(current), Some(unused)) => Some(current.saturating_sub(unused) / 1024),
        _ => None,
    };
    Measured {
        vm,
        resident_mib: l.rss_kib.map(|k| k / 1024),
        guest_used_mib,
        arrived_nonzero_mib: None,
        dirty_mib_s,
        dirty_rate_pending: false,
        cpu_cores,
    }
}

/// The non-zero memory the migration that brought `dom` to this host sent, MiB, from the
/// completed job's statistics (kept by the migration's own read at the destination); `None` for a
/// domain that started here, or when libvirt kept no figures.
fn arrived_nonzero_mib(vm: VmId, dom: &Domain) -> Option<u64> {
    let flags = sys::VIR_DOMAIN_JOB_STATS_COMPLETED | sys::VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED;
    match job_figures(dom, flags) {
        Ok(f) if f.kind != sys::VIR_DOMAIN_JOB_NONE as i32 => f.nonzero_bytes().map(|b| b / MIB),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(%vm, error = %e, "virDomainGetJobStats(COMPLETED)");
            None
        }
    }
}

/// Whether `vm` claims an address none of `kept` claims; logs the clash when not.
fn unique<'a>(mut kept: impl Iterator<Item = &'a Vm>, vm: &Vm) -> bool {
    match kept.find(|v| v.id == vm.id) {
        None => true,
        Some(other) => {
            tracing::warn!(
                vm = %vm.id,
                "domains {} and {} claim the same address; ignoring {}",
                other.name, vm.name, vm.name
            );
            false
        }
    }
}

fn open(uri: &str) -> Result<Connect> {
    Connect::open(Some(uri)).map_err(|e| HypervisorError::Connection {
        target: uri.to_string(),
        source: Cause::Libvirt(e),
    })
}

fn call(vm: Option<VmId>, call: &'static str, e: virt::error::Error) -> HypervisorError {
    HypervisorError::Call {
        vm,
        call,
        source: Cause::Libvirt(e),
    }
}

fn is_local(uri: &str) -> bool {
    uri.starts_with("qemu:///") || uri.starts_with("qemu+unix://") || uri.starts_with("test:///")
}

/// This machine's 1-minute load average per CPU (0 when the system does not say).
fn load_per_cpu(cpus: u32) -> f32 {
    sysinfo::System::load_average().one as f32 / cpus.max(1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// The token's arrival read describes only domains that appeared or changed, and lists the
    /// same VMs as a full read; a full read refreshes what it remembers.
    #[test]
    fn the_arrival_read_describes_only_what_changed() {
        silence_libvirt_stderr();
        let conn = Connect::open(Some("test:///default")).unwrap();
        let xml = |n: u8, pinned: bool| {
            format!(
                r#"<domain type='test'>
  <name>scored-incremental-{n}</name>
  <metadata><scored:vm xmlns:scored="{METADATA_NS}" ip="10.98.0.{n}" pinned="{}"/></metadata>
  <memory unit='MiB'>128</memory>
  <os><type>hvm</type></os>
</domain>"#,
                if pinned { "yes" } else { "no" }
            )
        };
        let start = |n: u8| {
            let d = conn.define_domain_xml(&xml(n, false)).unwrap();
            d.create().unwrap();
            d
        };
        let ours = |vms: Vec<Vm>| -> Vec<(String, bool)> {
            let mut v: Vec<(String, bool)> = vms
                .into_iter()
                .filter(|v| v.name.starts_with("scored-incremental-"))
                .map(|v| (v.name, v.pinned))
                .collect();
            v.sort();
            v
        };
        let (a, b) = (start(1), start(2));
        let hv = LibvirtHypervisor::connect(LibvirtConfig::new("test:///default")).unwrap();
        let full = ours(hv.vms().unwrap());
        assert_eq!(full.len(), 2);
        let read = hv.descriptions();
        assert_eq!(ours(hv.vms_incremental().unwrap()), full);
        assert_eq!(
            hv.descriptions(),
            read,
            "nothing changed: nothing described"
        );

        // A domain that starts is described, alone; one that stops is simply gone.
        let c = start(3);
        let listed = ours(hv.vms_incremental().unwrap());
        assert_eq!(listed.len(), 3);
        assert_eq!(hv.descriptions(), read + 1);
        a.destroy().unwrap();
        let listed = ours(hv.vms_incremental().unwrap());
        assert_eq!(listed.len(), 2);
        assert!(!listed.iter().any(|(n, _)| n == "scored-incremental-1"));
        assert_eq!(hv.descriptions(), read + 1);
        assert_eq!(ours(hv.vms().unwrap()), listed, "same VMs as a full read");

        // Started again, it is a new running domain (a new id): described again.
        let before = hv.descriptions();
        a.create().unwrap();
        assert_eq!(ours(hv.vms_incremental().unwrap()).len(), 3);
        assert_eq!(hv.descriptions(), before + 1);

        // Metadata edited on the running domain waits for the full read, which the arrival
        // read then follows.
        b.set_metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(r#"<vm ip="10.98.0.2" pinned="yes"/>"#),
            Some("scored"),
            Some(METADATA_NS),
            sys::VIR_DOMAIN_AFFECT_LIVE,
        )
        .unwrap();
        let pinned = |vms: Vec<(String, bool)>| {
            vms.into_iter()
                .find(|(n, _)| n == "scored-incremental-2")
                .unwrap()
                .1
        };
        assert!(pinned(ours(hv.vms().unwrap())));
        assert!(pinned(ours(hv.vms_incremental().unwrap())));

        for d in [&a, &b, &c] {
            let _ = d.destroy();
            d.undefine().unwrap();
        }
        assert!(ours(hv.vms_incremental().unwrap()).is_empty());
    }

    /// libvirt's in-process test driver: listing and description without a daemon.
    #[test]
    fn lists_domains_of_the_test_driver() {
        silence_libvirt_stderr();
        let conn = Connect::open(Some("test:///default")).unwrap();
        let xml = r#"<domain type='test'>
  <name>scored-unit-vm</name>
  <metadata><scored:vm xmlns:scored="https://example.invalid/scored/xmlns/vm/1" ip="10.99.0.7"/></metadata>
  <memory unit='MiB'>256</memory>
  <vcpu>2</vcpu>
  <os><type>hvm</type></os>
  <devices><interface type='network'><mac address='52:54:00:12:34:56'/><source network='default'/></interface></devices>
</domain>"#;
        let dom = conn.define_domain_xml(xml).unwrap();
        dom.create().unwrap();
        let hv = LibvirtHypervisor::connect(LibvirtConfig::new("test:///default")).unwrap();
        let vms = hv.vms().unwrap();
        let id = VmId::from_ipv4(Ipv4Addr::new(10, 99, 0, 7));
        let vm = vms.iter().find(|v| v.id == id).expect("our domain listed");
        assert_eq!(vm.name, "scored-unit-vm");
        assert_eq!(vm.memory_mib, 256);
        assert_eq!(vm.vcpus, 2);
        assert_eq!(vm.interfaces[0].mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(hv.state(id).unwrap(), VmState::Running);
        let cap = hv.capacity().unwrap();
        assert!(cap.running_vms >= 1);
        assert!(cap.total_memory_mib > 0);
        // The test driver cannot migrate: the error names the VM, the destination and the call.
        let err = hv
            .migrate(
                id,
                &Destination {
                    host: "nowhere".into(),
                    libvirt_uri: Some("test:///default".into()),
                    migration_uri: None,
                },
                &MigrationParams::default(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10.99.0.7") && err.contains("nowhere"),
            "{err}"
        );
        assert!(err.contains("virDomain"), "{err}");
        // A pinned VM is refused before libvirt is asked anything.
        let pinned = conn
            .define_domain_xml(
                &xml.replace("scored-unit-vm", "scored-unit-pinned")
                    .replace("10.99.0.7\"", "10.99.0.8\" pinned=\"yes\"")
                    .replace("52:54:00:12:34:56", "52:54:00:12:34:57"),
            )
            .unwrap();
        pinned.create().unwrap();
        let pinned_id = VmId::from_ipv4(Ipv4Addr::new(10, 99, 0, 8));
        assert!(
            hv.vms()
                .unwrap()
                .iter()
                .any(|v| v.id == pinned_id && v.pinned)
        );
        let err = hv
            .migrate(
                pinned_id,
                &Destination {
                    host: "hv9".into(),
                    libvirt_uri: Some("test:///default".into()),
                    migration_uri: None,
                },
                &MigrationParams::default(),
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                HypervisorError::Migration {
                    call: "pinned check",
                    ..
                }
            ),
            "{err}"
        );
        for d in [&dom, &pinned] {
            d.destroy().unwrap();
            d.undefine().unwrap();
        }
        assert_eq!(hv.state(id).unwrap(), VmState::Absent);
        assert!(matches!(
            hv.migrate(
                id,
                &Destination {
                    host: "x".into(),
                    libvirt_uri: None,
                    migration_uri: None
                },
                &MigrationParams::default()
            ),
            Err(HypervisorError::NoSuchVm { .. })
        ));
    }
}
