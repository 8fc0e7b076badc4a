//! The libvirt backend: this host's domains as scored's VMs, its node as capacity, and live
//! migration through `virDomainMigrate3` with a watchdog that aborts hopeless jobs.
//!
//! Every method blocks (libvirt RPCs; a migration takes seconds): call them from
//! `spawn_blocking`. It reports and executes; it never decides whether a VM should move.
//!
//! **Identity.** A VM's [`VmId`] is its primary IPv4 address: the `ip` attribute of the domain's
//! `<scored:vm>` metadata element (namespace [`METADATA_NS`]) when the operator set one, else the
//! first IPv4 address libvirt knows for its interfaces (DHCP leases of libvirt networks, then the
//! host's ARP table). A running domain with neither is not reported (logged once per poll).
//! The same element's `pinned='yes'` pins the VM: scored never migrates it.
//!
//! **Migration** is managed (the client drives libvirt's Begin/Prepare/Perform/Finish/Confirm
//! phases) rather than peer-to-peer: scored needs a connection to the destination anyway, to read
//! the destination's completed job statistics and to check the VM runs there, and in managed mode
//! a scored that dies mid-job makes the source libvirtd cancel the job, so the VM stays where the
//! journal says it was. Flags are always LIVE | PERSIST_DEST | UNDEFINE_SOURCE: the VM is defined
//! on exactly one host before and after. Disks: the guests scored moves are diskless or on shared
//! storage; a domain with a local disk image fails in libvirt's Prepare phase on the destination
//! (the image path does not exist there) and keeps running at the source. scored never asks for
//! storage migration (`VIR_MIGRATE_NON_SHARED_DISK`), which would copy whole disks.

use super::progress::{ProgressWatch, Verdict};
use super::{
    AbortReason, Capacity, Compression, Destination, Hypervisor, HypervisorError, Interface,
    MigrationParams, MigrationReport, Result, Vm, VmState,
};
use scored_proto::VmId;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use virt::connect::Connect;
use virt::domain::{Domain, MigrateParameters};
use virt::sys;

/// XML namespace of scored's domain metadata:
/// `<scored:vm xmlns:scored='…' ip='10.0.0.7' pinned='yes'/>` inside `<metadata>`.
pub const METADATA_NS: &str = "https://example.invalid/scored/xmlns/vm/1";

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

/// What one migration looked like from the source, beside the destination's [`MigrationReport`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MigrationTrace {
    /// From the call to the first job statistics showing a running migration job.
    pub job_started_after: Option<Duration>,
    /// Wall time of the whole call, as scored saw it.
    pub wall: Duration,
    /// Watchdog samples taken.
    pub samples: u32,
    /// Lowest remaining byte count the watchdog saw.
    pub lowest_remaining: Option<u64>,
    pub post_copy: bool,
    /// The destination's downtime without libvirt's hand-over from source to destination.
    pub downtime_net: Option<Duration>,
}

pub struct LibvirtHypervisor {
    cfg: LibvirtConfig,
    /// `None` until libvirtd first answers (see [`LibvirtHypervisor::connect_later`]).
    conn: Mutex<Option<Connect>>,
    /// Each VM's domain UUID as the last full listing saw it: lets [`Self::find`] look one
    /// domain up instead of describing them all (a hint, always checked against the domain).
    known: Mutex<HashMap<VmId, [u8; 16]>>,
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
        }
    }

    pub fn uri(&self) -> &str {
        &self.cfg.uri
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
        for dom in doms {
            // A guest still migrating in runs here only once its job completes: until then it
            // is the source's (and counts as incoming in the capacity).
            if incoming_migration(&dom) {
                continue;
            }
            let Some(vm) = self.describe(&dom) else {
                continue;
            };
            if let Some((_, other)) = out.iter().find(|(_, v)| v.id == vm.id) {
                tracing::warn!(
                    vm = %vm.id,
                    "domains {} and {} claim the same address; ignoring {}",
                    other.name, vm.name, vm.name
                );
                continue;
            }
            out.push((dom, vm));
        }
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) =
            out.iter().map(|(_, v)| (v.id, v.uuid)).collect();
        Ok(out)
    }

    /// The VM one domain describes, or `None` (gone meanwhile, XML not understood, no identity).
    fn describe(&self, dom: &Domain) -> Option<Vm> {
        // A domain can vanish between the list and the query (it migrated away): skip it.
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

    /// `vm`'s domain through a new connection of its own, which lives as long as the handle.
    fn on_own_connection(&self, vm: &Vm) -> Result<Domain> {
        open(&self.cfg.uri)?
            .lookup_domain_by_uuid_string(&uuid_string(&vm.uuid))
            .map_err(|e| call(Some(vm.id), "virDomainLookupByUUIDString", e))
    }

    /// [`Hypervisor::migrate`] with what the source saw of the job.
    pub fn migrate_traced(
        &self,
        vm: VmId,
        dest: &Destination,
        params: &MigrationParams,
    ) -> Result<(MigrationReport, MigrationTrace)> {
        let started = Instant::now();
        let dest_name = dest.host.clone();
        let fail = |call: &'static str, message: String| HypervisorError::Migration {
            vm,
            dest: dest_name.clone(),
            call,
            message,
        };
        let (dom, desc) = self.find(vm)?.ok_or(HypervisorError::NoSuchVm { vm })?;
        if desc.pinned {
            return Err(fail(
                "pinned check",
                format!("domain {} is pinned by its scored metadata", desc.name),
            ));
        }
        let dest_uri = dest.libvirt_uri.as_deref().ok_or_else(|| {
            fail(
                "destination",
                "no libvirt URI for the destination host".into(),
            )
        })?;
        let dconn = Connect::open(Some(dest_uri))
            .map_err(|e| fail("virConnectOpen", format!("{dest_uri}: {}", e.message())))?;
        let downtime_ms = params.max_downtime.as_millis().max(1) as u64;
        dom.migrate_set_max_downtime(downtime_ms, 0)
            .map_err(|e| fail("virDomainMigrateSetMaxDowntime", e.message().to_string()))?;
        let (mp, flags) = migrate_parameters(params, dest);

        // The migration call and the watchdog get a connection each, apart from the shared one:
        // libvirt 9.0's client sometimes never sends a call queued behind another thread's long
        // call on the same connection (seen here as a virDomainAbortJob that waited forever
        // behind virDomainMigrate3). So the daemon's inventory and state reads, on the shared
        // connection, never wait for a migration to end.
        let migrating = self
            .on_own_connection(&desc)
            .map_err(|e| fail("migration connection", e.to_string()))?;
        let watched = self
            .on_own_connection(&desc)
            .map_err(|e| fail("watchdog connection", e.to_string()))?;
        let watchdog = Watchdog::start(watched, params, self.cfg.poll_interval, started)
            .map_err(|e| fail("watchdog thread", e.to_string()))?;
        let result = migrating.migrate3(&dconn, mp, flags);
        let seen = watchdog.stop();
        let mut trace = MigrationTrace {
            job_started_after: seen.job_started_after,
            wall: started.elapsed(),
            samples: seen.samples,
            lowest_remaining: seen.lowest_remaining,
            post_copy: seen.post_copy,
            downtime_net: None,
        };

        match result {
            Ok(moved) => {
                if let Some(reason) = seen.aborted {
                    tracing::info!(%vm, dest = %dest.host, "migration completed although the watchdog asked to abort it ({reason})");
                }
                let (report, net) = confirm_at_destination(&moved, vm, &dest.host, trace.wall)?;
                trace.downtime_net = net;
                if let Ok(conn) = self.conn()
                    && let Ok(still) = conn.lookup_domain_by_uuid_string(&uuid_string(&desc.uuid))
                    && still.is_active().unwrap_or(false)
                {
                    return Err(fail(
                        "virDomainMigrate3",
                        "libvirt reported success but the domain is still active at the source"
                            .into(),
                    ));
                }
                trace.wall = started.elapsed();
                Ok((report, trace))
            }
            Err(e) => {
                let at_source = dom.is_active().unwrap_or(false);
                if !at_source {
                    // The job failed late (say, in Confirm) after the VM moved: if it runs at the
                    // destination, the migration did happen.
                    if let Ok(there) = dconn.lookup_domain_by_uuid_string(&uuid_string(&desc.uuid))
                        && there.is_active().unwrap_or(false)
                    {
                        tracing::warn!(%vm, dest = %dest.host, "virDomainMigrate3 failed ({}) but the VM runs at the destination", e.message());
                        let (report, net) =
                            confirm_at_destination(&there, vm, &dest.host, trace.wall)?;
                        trace.downtime_net = net;
                        return Ok((report, trace));
                    }
                    return Err(fail(
                        "virDomainMigrate3",
                        format!(
                            "{}; the VM is running neither here nor at the destination",
                            e.message()
                        ),
                    ));
                }
                if let Some(reason) = seen.aborted {
                    return Err(HypervisorError::Aborted {
                        vm,
                        dest: dest.host.clone(),
                        reason,
                    });
                }
                let mut message = e.message().to_string();
                if let Some(a) = seen.abort_error {
                    message.push_str(&format!(" (watchdog: {a})"));
                }
                Err(fail("virDomainMigrate3", message))
            }
        }
    }
}

impl Hypervisor for LibvirtHypervisor {
    fn vms(&self) -> Result<Vec<Vm>> {
        Ok(self.described()?.into_iter().map(|(_, vm)| vm).collect())
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

/// Whether `dom` is the destination side of a live migration in progress, whoever started it.
///
/// libvirt 9.0 starts an incoming guest paused with reason `migration` (running with reason
/// `postcopy` once a post-copy switch-over happened), and refuses job statistics for it
/// ("available only on the source host"). A source guest is also paused for migration during
/// the final stop-and-copy, but it does report its (outgoing) job: that tells the two apart.
fn incoming_migration(dom: &Domain) -> bool {
    let mut state: std::os::raw::c_int = -1;
    let mut reason: std::os::raw::c_int = -1;
    // SAFETY: valid domain handle and two out-parameters that live across the call.
    let rc = unsafe { sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) };
    if rc < 0 {
        return false;
    }
    let (state, reason) = (state as u32, reason as u32);
    if state == sys::VIR_DOMAIN_RUNNING && reason == sys::VIR_DOMAIN_RUNNING_POSTCOPY {
        return true;
    }
    if state != sys::VIR_DOMAIN_PAUSED || reason != sys::VIR_DOMAIN_PAUSED_MIGRATION {
        return false;
    }
    match job_figures(dom, 0) {
        Ok(f) => f.kind == sys::VIR_DOMAIN_JOB_NONE as i32,
        Err(_) => true,
    }
}

fn open(uri: &str) -> Result<Connect> {
    Connect::open(Some(uri))
        .map_err(|e| HypervisorError::Connection(format!("{uri}: {}", e.message())))
}

fn call(vm: Option<VmId>, call: &'static str, e: virt::error::Error) -> HypervisorError {
    HypervisorError::Call {
        vm,
        call,
        message: e.message().to_string(),
    }
}

fn uuid_string(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn is_local(uri: &str) -> bool {
    uri.starts_with("qemu:///") || uri.starts_with("qemu+unix://") || uri.starts_with("test:///")
}

fn load_per_cpu(cpus: u32) -> f32 {
    let one_minute = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f32>().ok())
        .unwrap_or(0.0);
    one_minute / cpus.max(1) as f32
}

/// Addresses libvirt learned for the domain's MACs: DHCP leases (libvirt networks), then the
/// host's ARP table. Best effort: other interface types simply report nothing.
fn learned_addresses(dom: &Domain) -> Vec<([u8; 6], IpAddr)> {
    let mut out = Vec::new();
    for source in [
        sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
        sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
    ] {
        let Ok(ifaces) = dom.interface_addresses(source, 0) else {
            continue;
        };
        for i in ifaces {
            let Some(mac) = i.hwaddr.as_deref().and_then(parse_mac) else {
                continue;
            };
            for a in i.addrs {
                if let Ok(ip) = a.addr.parse::<IpAddr>()
                    && !out.contains(&(mac, ip))
                {
                    out.push((mac, ip));
                }
            }
        }
    }
    out
}

/// What scored reads from a domain's XML.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainDescription {
    pub name: String,
    pub uuid: [u8; 16],
    pub memory_mib: u64,
    pub vcpus: u32,
    /// MAC and host-side device of each `<interface>`.
    pub interfaces: Vec<([u8; 6], Option<String>)>,
    /// `<scored:vm ip=…>`.
    pub declared_ip: Option<Ipv4Addr>,
    /// `<scored:vm mac=…>`: which interface carries `declared_ip` (default: the first).
    pub declared_mac: Option<[u8; 6]>,
    pub pinned: bool,
}

impl DomainDescription {
    /// Parses libvirt's domain XML. Errors say which element or attribute is wrong.
    pub fn parse(xml: &str) -> std::result::Result<Self, String> {
        use xmltree::Element;
        let root = Element::parse(xml.as_bytes()).map_err(|e| format!("not XML: {e}"))?;
        if root.name != "domain" {
            return Err(format!("root element is <{}>, not <domain>", root.name));
        }
        let text = |e: &Element, child: &str| -> Option<String> {
            e.get_child(child)
                .and_then(|c| c.get_text())
                .map(|t| t.trim().to_string())
        };
        let name = text(&root, "name").ok_or("no <name>")?;
        let uuid_text = text(&root, "uuid").ok_or_else(|| format!("{name}: no <uuid>"))?;
        let uuid = parse_uuid(&uuid_text)
            .ok_or_else(|| format!("{name}: <uuid> `{uuid_text}` is not a UUID"))?;
        let memory_mib = root
            .get_child("currentMemory")
            .or_else(|| root.get_child("memory"))
            .map(|m| {
                let v: u64 = m
                    .get_text()
                    .and_then(|t| t.trim().parse().ok())
                    .ok_or_else(|| format!("{name}: memory is not a number"))?;
                let unit = m
                    .attributes
                    .get("unit")
                    .map(String::as_str)
                    .unwrap_or("KiB");
                to_mib(v, unit).ok_or_else(|| format!("{name}: unknown memory unit `{unit}`"))
            })
            .transpose()?
            .ok_or_else(|| format!("{name}: no <memory>"))?;
        let vcpus = match root.get_child("vcpu") {
            Some(v) => v
                .attributes
                .get("current")
                .cloned()
                .or_else(|| v.get_text().map(|t| t.trim().to_string()))
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| format!("{name}: <vcpu> is not a number"))?,
            None => 1,
        };
        let mut interfaces = Vec::new();
        if let Some(devices) = root.get_child("devices") {
            for iface in devices
                .children
                .iter()
                .filter_map(|c| c.as_element())
                .filter(|e| e.name == "interface")
            {
                let Some(mac) = iface
                    .get_child("mac")
                    .and_then(|m| m.attributes.get("address"))
                else {
                    continue;
                };
                let mac = parse_mac(mac)
                    .ok_or_else(|| format!("{name}: interface MAC `{mac}` is not a MAC"))?;
                let tap = iface
                    .get_child("target")
                    .and_then(|t| t.attributes.get("dev"))
                    .cloned();
                interfaces.push((mac, tap));
            }
        }
        let mut declared_ip = None;
        let mut declared_mac = None;
        let mut pinned = false;
        if let Some(meta) = root.get_child("metadata")
            && let Some(vm) = meta
                .children
                .iter()
                .filter_map(|c| c.as_element())
                .find(|e| e.name == "vm" && e.namespace.as_deref() == Some(METADATA_NS))
        {
            if let Some(ip) = vm.attributes.get("ip") {
                declared_ip = Some(ip.parse::<Ipv4Addr>().map_err(|_| {
                    format!("{name}: scored metadata ip `{ip}` is not an IPv4 address")
                })?);
            }
            if let Some(mac) = vm.attributes.get("mac") {
                declared_mac =
                    Some(parse_mac(mac).ok_or_else(|| {
                        format!("{name}: scored metadata mac `{mac}` is not a MAC")
                    })?);
            }
            pinned = match vm.attributes.get("pinned").map(String::as_str) {
                None | Some("no") | Some("false") => false,
                Some("yes") | Some("true") => true,
                Some(other) => {
                    return Err(format!(
                        "{name}: scored metadata pinned=`{other}`: use yes or no"
                    ));
                }
            };
        }
        Ok(DomainDescription {
            name,
            uuid,
            memory_mib,
            vcpus,
            interfaces,
            declared_ip,
            declared_mac,
            pinned,
        })
    }

    /// The VM, given the addresses libvirt learned per MAC; `None` without any IPv4 identity.
    pub fn into_vm(self, learned: &[([u8; 6], IpAddr)]) -> Option<Vm> {
        let carrier = self
            .declared_mac
            .or_else(|| self.interfaces.first().map(|(m, _)| *m));
        let interfaces: Vec<Interface> = self
            .interfaces
            .iter()
            .map(|(mac, tap)| {
                let mut addresses: Vec<IpAddr> = Vec::new();
                if let Some(ip) = self.declared_ip
                    && carrier == Some(*mac)
                {
                    addresses.push(IpAddr::V4(ip));
                }
                for (m, a) in learned {
                    if m == mac && !addresses.contains(a) {
                        addresses.push(*a);
                    }
                }
                Interface {
                    mac: *mac,
                    tap: tap.clone(),
                    addresses,
                }
            })
            .collect();
        let id = self.declared_ip.or_else(|| {
            interfaces
                .iter()
                .flat_map(|i| &i.addresses)
                .find_map(|a| match a {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
        })?;
        Some(Vm {
            id: VmId::from_ipv4(id),
            name: self.name,
            uuid: self.uuid,
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            interfaces,
            pinned: self.pinned,
        })
    }
}

fn to_mib(v: u64, unit: &str) -> Option<u64> {
    let bytes = match unit {
        "b" | "bytes" => v,
        "KB" => v * 1000,
        "k" | "KiB" => v << 10,
        "MB" => v * 1_000_000,
        "M" | "MiB" => v << 20,
        "GB" => v * 1_000_000_000,
        "G" | "GiB" => v << 30,
        _ => return None,
    };
    Some(bytes >> 20)
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The typed parameters and flags of one migration. Always live, persistent at the destination
/// and undefined at the source.
pub fn migrate_parameters(p: &MigrationParams, dest: &Destination) -> (MigrateParameters, u32) {
    let mut flags =
        sys::VIR_MIGRATE_LIVE | sys::VIR_MIGRATE_PERSIST_DEST | sys::VIR_MIGRATE_UNDEFINE_SOURCE;
    let mut mp = MigrateParameters {
        uri: dest.migration_uri.clone(),
        ..Default::default()
    };
    if p.bandwidth_mib_s > 0 {
        mp.bandwidth = Some(p.bandwidth_mib_s);
    }
    if p.auto_converge {
        flags |= sys::VIR_MIGRATE_AUTO_CONVERGE;
    }
    match p.compression {
        Compression::None => {}
        Compression::Xbzrle => {
            flags |= sys::VIR_MIGRATE_COMPRESSED;
            mp.compression = Some("xbzrle".into());
        }
        Compression::MultifdZstd => {
            // Needs a libvirt that knows multifd zstd (newer than Debian 12's 9.0, which
            // rejects it in virDomainMigrate3 before anything moves).
            flags |= sys::VIR_MIGRATE_COMPRESSED | sys::VIR_MIGRATE_PARALLEL;
            mp.compression = Some("zstd".into());
            mp.parallel_connections = Some(2);
        }
    }
    if p.post_copy {
        flags |= sys::VIR_MIGRATE_POSTCOPY;
    }
    (mp, flags)
}

/// Reads the destination's completed-job statistics: the migration's own account of itself.
fn confirm_at_destination(
    moved: &Domain,
    vm: VmId,
    dest: &str,
    wall: Duration,
) -> Result<(MigrationReport, Option<Duration>)> {
    let fail = |call: &'static str, message: String| HypervisorError::Migration {
        vm,
        dest: dest.to_string(),
        call,
        message,
    };
    if !moved.is_active().unwrap_or(false) {
        return Err(fail(
            "virDomainIsActive",
            "the migrated domain is not running at the destination".into(),
        ));
    }
    if !moved.is_persistent().unwrap_or(false) {
        tracing::warn!(%vm, dest, "migrated domain is not persistent at the destination");
    }
    match job_figures(moved, sys::VIR_DOMAIN_JOB_STATS_COMPLETED) {
        Ok(s) if s.elapsed_ms.is_some() => Ok((
            MigrationReport {
                elapsed: Duration::from_millis(s.elapsed_ms.unwrap_or(0)),
                downtime: Duration::from_millis(s.downtime_ms.unwrap_or(0)),
                bytes: s.processed.unwrap_or(0),
            },
            s.downtime_net_ms.map(Duration::from_millis),
        )),
        other => {
            // The VM moved; failing now would make the caller believe it had not. Report what
            // the source saw and say why the destination's figures are missing.
            let why = match other {
                Ok(_) => "no completed job statistics".to_string(),
                Err(e) => e.message().to_string(),
            };
            tracing::warn!(%vm, dest, "virDomainGetJobStats(COMPLETED) at the destination: {why}");
            Ok((
                MigrationReport {
                    elapsed: wall,
                    downtime: Duration::ZERO,
                    bytes: 0,
                },
                None,
            ))
        }
    }
}

/// The figures scored reads from a job's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct JobFigures {
    /// `VIR_DOMAIN_JOB_NONE` when no job runs.
    kind: i32,
    elapsed_ms: Option<u64>,
    downtime_ms: Option<u64>,
    downtime_net_ms: Option<u64>,
    processed: Option<u64>,
    remaining: Option<u64>,
}

/// `virDomainGetJobStats` through `virt::sys`: virt 0.5's wrapper builds a `Vec` from the null
/// pointer libvirt returns when a job has no figures (undefined behaviour), so scored reads the
/// few parameters it needs with libvirt's own accessors and frees them with libvirt's free.
fn job_figures(dom: &Domain, flags: u32) -> std::result::Result<JobFigures, virt::error::Error> {
    let mut kind: std::os::raw::c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut n: std::os::raw::c_int = 0;
    // SAFETY: valid domain handle; libvirt allocates `params` (or leaves it null when n = 0).
    let rc =
        unsafe { sys::virDomainGetJobStats(dom.as_ptr(), &mut kind, &mut params, &mut n, flags) };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    let get = |name: &std::ffi::CStr| -> Option<u64> {
        if params.is_null() {
            return None;
        }
        let mut v: std::os::raw::c_ulonglong = 0;
        // SAFETY: `params` holds `n` parameters from libvirt; `name` is NUL-terminated.
        let found = unsafe { sys::virTypedParamsGetULLong(params, n, name.as_ptr(), &mut v) };
        (found == 1).then_some(v)
    };
    let figures = JobFigures {
        kind,
        elapsed_ms: get(sys::VIR_DOMAIN_JOB_TIME_ELAPSED),
        downtime_ms: get(sys::VIR_DOMAIN_JOB_DOWNTIME),
        downtime_net_ms: get(sys::VIR_DOMAIN_JOB_DOWNTIME_NET),
        processed: get(sys::VIR_DOMAIN_JOB_DATA_PROCESSED)
            .or(get(sys::VIR_DOMAIN_JOB_MEMORY_PROCESSED)),
        remaining: get(sys::VIR_DOMAIN_JOB_DATA_REMAINING)
            .or(get(sys::VIR_DOMAIN_JOB_MEMORY_REMAINING)),
    };
    if !params.is_null() {
        // SAFETY: frees what libvirt allocated above, once.
        unsafe { sys::virTypedParamsFree(params, n) };
    }
    Ok(figures)
}

/// What the watchdog saw and did.
#[derive(Clone, Debug, Default)]
struct Seen {
    aborted: Option<AbortReason>,
    abort_error: Option<String>,
    job_started_after: Option<Duration>,
    samples: u32,
    lowest_remaining: Option<u64>,
    post_copy: bool,
}

/// A thread that polls the source's job statistics while `virDomainMigrate3` blocks, and aborts
/// the job (or switches it to post-copy, when allowed) when the [`ProgressWatch`] says so.
struct Watchdog {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Seen>,
}

impl Watchdog {
    fn start(
        dom: Domain,
        p: &MigrationParams,
        every: Duration,
        started: Instant,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mut watch = ProgressWatch::new(p.timeout, p.stall_timeout);
        let post_copy_allowed = p.post_copy;
        let handle = std::thread::Builder::new()
            .name("scored-migration-watchdog".into())
            .spawn(move || {
                let mut seen = Seen::default();
                while !flag.load(Ordering::Acquire) {
                    let at = started.elapsed();
                    let remaining = match job_figures(&dom, 0) {
                        Ok(s) if s.kind != sys::VIR_DOMAIN_JOB_NONE as i32 => {
                            seen.job_started_after.get_or_insert(at);
                            s.remaining
                        }
                        _ => None,
                    };
                    seen.samples += 1;
                    // Before the job reports figures, only the clock can condemn it.
                    let verdict = watch.observe(at, remaining);
                    if let Verdict::Abort(reason) = verdict {
                        if reason == AbortReason::Stalled && post_copy_allowed && !seen.post_copy {
                            // SAFETY: a valid domain handle owned by this thread.
                            let rc = unsafe { sys::virDomainMigrateStartPostCopy(dom.as_ptr(), 0) };
                            if rc == 0 {
                                seen.post_copy = true;
                                watch.entered_post_copy();
                                continue;
                            }
                            seen.abort_error = Some(format!(
                                "virDomainMigrateStartPostCopy: {}",
                                virt::error::Error::last_error().message()
                            ));
                        }
                        seen.aborted.get_or_insert(reason);
                        // SAFETY: as above. Fails harmlessly if the job just ended.
                        let rc = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
                        if rc == 0 {
                            break;
                        }
                        seen.abort_error = Some(format!(
                            "virDomainAbortJob: {}",
                            virt::error::Error::last_error().message()
                        ));
                    }
                    seen.lowest_remaining = watch.low();
                    // Finely until the job shows up (that delay is a measured figure), then
                    // at the configured pace.
                    let pause = if seen.job_started_after.is_none() {
                        every.min(Duration::from_millis(10))
                    } else {
                        every
                    };
                    std::thread::sleep(pause);
                }
                seen.lowest_remaining = watch.low();
                seen
            })?;
        Ok(Watchdog { stop, handle })
    }

    fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Release);
        self.handle.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='qemu' id='3'>
  <name>vm1</name>
  <uuid>4dcb9ef2-a3c4-4a6b-8c1e-2b1f7d0e9a11</uuid>
  <metadata>
    <scored:vm xmlns:scored="https://example.invalid/scored/xmlns/vm/1" ip="10.77.1.10" pinned="yes"/>
    <other:thing xmlns:other="urn:x" ip="1.2.3.4"/>
  </metadata>
  <memory unit='KiB'>262144</memory>
  <currentMemory unit='KiB'>131072</currentMemory>
  <vcpu placement='static' current='1'>2</vcpu>
  <devices>
    <interface type='bridge'>
      <mac address='52:54:0a:4d:01:0a'/>
      <source bridge='br0'/>
      <target dev='sct010a'/>
      <model type='virtio'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:00:00:02'/>
    </interface>
  </devices>
</domain>"#;

    #[test]
    fn reads_identity_memory_taps_and_pin() {
        let d = DomainDescription::parse(XML).unwrap();
        assert_eq!(d.name, "vm1");
        assert_eq!(d.uuid[0], 0x4d);
        assert_eq!(d.uuid[15], 0x11);
        assert_eq!(d.memory_mib, 128);
        assert_eq!(d.vcpus, 1);
        assert_eq!(d.declared_ip, Some(Ipv4Addr::new(10, 77, 1, 10)));
        assert!(d.pinned);
        assert_eq!(d.interfaces.len(), 2);
        assert_eq!(d.interfaces[0].1.as_deref(), Some("sct010a"));
        assert_eq!(d.interfaces[1].1, None);
        let learned = [(
            [0x52, 0x54, 0, 0, 0, 2],
            IpAddr::V4(Ipv4Addr::new(192, 168, 1, 5)),
        )];
        let vm = d.into_vm(&learned).unwrap();
        assert_eq!(vm.id, VmId::from_ipv4(Ipv4Addr::new(10, 77, 1, 10)));
        assert_eq!(
            vm.interfaces[0].addresses,
            vec![IpAddr::V4(Ipv4Addr::new(10, 77, 1, 10))]
        );
        assert_eq!(
            vm.interfaces[1].addresses,
            vec![IpAddr::V4(Ipv4Addr::new(192, 168, 1, 5))]
        );
    }

    #[test]
    fn without_metadata_the_first_learned_ipv4_is_the_identity() {
        let xml = XML.replace("https://example.invalid/scored/xmlns/vm/1", "urn:not-ours");
        let d = DomainDescription::parse(&xml).unwrap();
        assert_eq!(d.declared_ip, None);
        assert!(!d.pinned);
        assert!(d.clone().into_vm(&[]).is_none());
        let learned = [
            (
                [0x52, 0x54, 0, 0, 0, 2],
                "fe80::1".parse::<IpAddr>().unwrap(),
            ),
            (
                [0x52, 0x54, 0, 0, 0, 2],
                IpAddr::V4(Ipv4Addr::new(192, 168, 1, 5)),
            ),
        ];
        let vm = d.into_vm(&learned).unwrap();
        assert_eq!(vm.id, VmId::from_ipv4(Ipv4Addr::new(192, 168, 1, 5)));
    }

    #[test]
    fn bad_metadata_is_named() {
        let xml = XML.replace("ip=\"10.77.1.10\"", "ip=\"10.77.1\"");
        let e = DomainDescription::parse(&xml).unwrap_err();
        assert!(e.contains("vm1") && e.contains("10.77.1"), "{e}");
        let xml = XML.replace("pinned=\"yes\"", "pinned=\"maybe\"");
        assert!(
            DomainDescription::parse(&xml)
                .unwrap_err()
                .contains("maybe")
        );
        assert!(DomainDescription::parse("<network/>").is_err());
        assert!(DomainDescription::parse("not xml").is_err());
    }

    #[test]
    fn units_and_macs() {
        assert_eq!(to_mib(2, "GiB"), Some(2048));
        assert_eq!(to_mib(256, "MiB"), Some(256));
        assert_eq!(to_mib(1, "parsec"), None);
        assert_eq!(
            parse_mac("52:54:00:AB:cd:01"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 1])
        );
        assert_eq!(parse_mac("52:54:00:ab:cd"), None);
        assert_eq!(parse_mac("52:54:00:ab:cd:01:02"), None);
        assert_eq!(parse_uuid("zz"), None);
    }

    #[test]
    fn every_migration_is_live_persistent_and_undefines_the_source() {
        let dest = Destination {
            host: "hv2".into(),
            libvirt_uri: Some("qemu+tcp://10.77.0.2/system".into()),
            migration_uri: Some("tcp://10.77.0.2".into()),
        };
        let base = sys::VIR_MIGRATE_LIVE
            | sys::VIR_MIGRATE_PERSIST_DEST
            | sys::VIR_MIGRATE_UNDEFINE_SOURCE;
        let p = MigrationParams {
            auto_converge: false,
            ..Default::default()
        };
        let (mp, flags) = migrate_parameters(&p, &dest);
        assert_eq!(flags, base);
        assert_eq!(mp.uri.as_deref(), Some("tcp://10.77.0.2"));
        assert_eq!(mp.bandwidth, None);
        let p = MigrationParams {
            bandwidth_mib_s: 8,
            auto_converge: true,
            compression: Compression::Xbzrle,
            post_copy: true,
            ..Default::default()
        };
        let (mp, flags) = migrate_parameters(&p, &dest);
        assert_eq!(
            flags,
            base | sys::VIR_MIGRATE_AUTO_CONVERGE
                | sys::VIR_MIGRATE_COMPRESSED
                | sys::VIR_MIGRATE_POSTCOPY
        );
        assert_eq!(mp.bandwidth, Some(8));
        assert_eq!(mp.compression.as_deref(), Some("xbzrle"));
        let p = MigrationParams {
            compression: Compression::MultifdZstd,
            auto_converge: false,
            ..Default::default()
        };
        let (mp, flags) = migrate_parameters(&p, &dest);
        assert_eq!(flags & sys::VIR_MIGRATE_PARALLEL, sys::VIR_MIGRATE_PARALLEL);
        assert_eq!(mp.parallel_connections, Some(2));
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
