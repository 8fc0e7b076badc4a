//! Reading libvirt domains: the XML scored understands (identity, memory, interfaces, the pin,
//! placement groups), the addresses libvirt learned, and a domain's state (running, migrating in,
//! its job).
//!
//! Only reads: nothing here changes a domain or decides anything about it.

use crate::hypervisor::{GroupTag, Interface, Vm};
use crate::rules::GroupKind;
use scored_proto::VmId;
use std::net::{IpAddr, Ipv4Addr};
use virt::domain::Domain;
use virt::sys;

/// XML namespace of scored's domain metadata:
/// `<scored:vm xmlns:scored='…' ip='10.0.0.7' pinned='yes'/>` inside `<metadata>`, with a
/// `<scored:group name='db-main' kind='anti-affinity' scope='host'/>` child per placement group.
pub const METADATA_NS: &str = "https://example.invalid/scored/xmlns/vm/1";

/// Whether `dom` is the destination side of a live migration in progress, whoever started it.
///
/// libvirt 9.0 creates an incoming guest paused with reason `starting up`, a moment later
/// `migration` (running with reason `postcopy` once a post-copy switch-over happened), and
/// refuses job statistics for it ("available only on the source host"). A source guest is also
/// paused for migration during the final stop-and-copy, but it does report its (outgoing) job,
/// and a guest started here has no migration job while it starts up: that tells them apart.
/// (The testbed measured the `starting up` phase at 0.7 s; read as a guest of this host then,
/// the destination announced it while the source still ran it.)
pub(super) fn incoming_migration(dom: &Domain) -> bool {
    domain_state(dom).is_some_and(|state| incoming_in(dom, state))
}

/// A domain's state and its reason (`virDomainGetState`: one call), `None` when it is gone.
pub(super) fn domain_state(dom: &Domain) -> Option<DomainState> {
    let mut state: std::os::raw::c_int = -1;
    let mut reason: std::os::raw::c_int = -1;
    // SAFETY: valid domain handle and two out-parameters that live across the call.
    let rc = unsafe { sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) };
    (rc >= 0).then_some(DomainState {
        state: state as u32,
        reason: reason as u32,
    })
}

/// [`incoming_migration`] for a domain whose state is already read: asks for its job only in
/// the two ambiguous states (paused for migration, paused starting up).
pub(super) fn incoming_in(dom: &Domain, s: DomainState) -> bool {
    if s.state == sys::VIR_DOMAIN_RUNNING && s.reason == sys::VIR_DOMAIN_RUNNING_POSTCOPY {
        return true;
    }
    let paused_for = |reason| s.state == sys::VIR_DOMAIN_PAUSED && s.reason == reason;
    let (migration, starting) = (
        paused_for(sys::VIR_DOMAIN_PAUSED_MIGRATION),
        paused_for(sys::VIR_DOMAIN_PAUSED_STARTING_UP),
    );
    if !migration && !starting {
        return false;
    }
    match job_figures(dom, 0) {
        Ok(f) => migration && f.kind == sys::VIR_DOMAIN_JOB_NONE as i32,
        Err(_) => true,
    }
}

/// A domain's state as libvirt reports it (`virDomainState` and its reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DomainState {
    pub state: u32,
    pub reason: u32,
}

/// One running domain as a listing shows it, without its XML: enough to tell whether it is
/// the domain an earlier read described, and what libvirt measured of it.
pub(super) struct Listed {
    pub dom: Domain,
    pub uuid: [u8; 16],
    /// libvirt's id of the running domain: a new one each time the domain starts.
    pub id: u32,
    pub state: DomainState,
    /// The guest's resident memory on the host, KiB (`balloon.rss`).
    pub rss_kib: Option<u64>,
    /// The guest's memory as its balloon leaves it, KiB (`balloon.current`).
    pub balloon_kib: Option<u64>,
    /// Memory the guest reports unused, KiB (`balloon.unused`: the balloon driver's statistics;
    /// absent without them).
    pub unused_kib: Option<u64>,
    /// CPU time the guest used since it started, ns (`cpu.time`).
    pub cpu_time_ns: Option<u64>,
    /// The last dirty-rate calculation: its status (`VIR_DOMAIN_DIRTYRATE_*`) and, once
    /// measured, MiB dirtied per second.
    pub dirty: Option<(u32, Option<i64>)>,
}

/// Statistics groups the token's arrival read asks for: the state alone.
pub(super) const STATE: u32 = sys::VIR_DOMAIN_STATS_STATE;
/// ...and what the periodic read measures besides, for forecasting migrations.
pub(super) const MEASURED: u32 = sys::VIR_DOMAIN_STATS_STATE
    | sys::VIR_DOMAIN_STATS_BALLOON
    | sys::VIR_DOMAIN_STATS_CPU_TOTAL
    | sys::VIR_DOMAIN_STATS_DIRTYRATE;

/// Every active domain with its identity, state and the statistics `groups` name, in one call
/// (`virConnectGetAllDomainStats`; `NOWAIT` so a domain busy with a job is not waited for:
/// what needs its monitor is then left out). `Err` carries libvirt's error: a driver without
/// the call answers `VIR_ERR_NO_SUPPORT`, and the caller reads the slow way.
pub(super) fn list_domains(
    conn: &virt::connect::Connect,
    groups: u32,
) -> std::result::Result<Vec<Listed>, virt::error::Error> {
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: valid connection; libvirt allocates the NULL-terminated record list.
    let n = unsafe {
        sys::virConnectGetAllDomainStats(
            conn.as_ptr(),
            groups,
            &mut records,
            sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
                | sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT,
        )
    };
    if n < 0 {
        return Err(virt::error::Error::last_error());
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // SAFETY: libvirt returned `n` valid record pointers.
        let rec = unsafe { &**records.add(i) };
        let params = TypedParams {
            params: rec.params,
            n: rec.nparams,
        };
        let (Some(state), Some(reason)) = (params.int(c"state.state"), params.int(c"state.reason"))
        else {
            continue;
        };
        // The list frees its own reference to each domain: take one of ours for the handle.
        // SAFETY: valid domain handle; the reference is released when `dom` drops.
        let dom = unsafe {
            sys::virDomainRef(rec.dom);
            Domain::from_ptr(rec.dom)
        };
        // Both are read from the handle, without a call to libvirtd.
        let (Ok(uuid), Some(id)) = (dom.uuid(), dom.id()) else {
            continue;
        };
        out.push(Listed {
            dom,
            uuid: *uuid.as_bytes(),
            id,
            state: DomainState {
                state: state as u32,
                reason: reason as u32,
            },
            rss_kib: params.ullong(c"balloon.rss"),
            balloon_kib: params.ullong(c"balloon.current"),
            unused_kib: params.ullong(c"balloon.unused"),
            cpu_time_ns: params.ullong(c"cpu.time"),
            dirty: params
                .int(c"dirtyrate.calc_status")
                .map(|s| (s as u32, params.llong(c"dirtyrate.megabytes_per_second"))),
        });
    }
    // SAFETY: the list libvirt allocated above, freed once.
    unsafe { sys::virDomainStatsRecordListFree(records) };
    Ok(out)
}

/// Starts libvirt's dirty-rate calculation on `dom` over `seconds` (page sampling: QEMU hashes
/// a sample of pages at the start and end; the guest is not paused). The result shows in the
/// domain's `dirtyrate.*` statistics once done.
pub(super) fn start_dirty_rate(
    dom: &Domain,
    seconds: u32,
) -> std::result::Result<(), virt::error::Error> {
    // SAFETY: valid domain handle.
    let rc = unsafe {
        sys::virDomainStartDirtyRateCalc(
            dom.as_ptr(),
            seconds as std::os::raw::c_int,
            sys::VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING,
        )
    };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok(())
}

/// A record's typed parameters, read by name.
struct TypedParams {
    params: sys::virTypedParameterPtr,
    n: std::os::raw::c_int,
}

impl TypedParams {
    fn int(&self, name: &std::ffi::CStr) -> Option<i32> {
        let mut v: std::os::raw::c_int = 0;
        // SAFETY: the record's `n` parameters; `name` is NUL-terminated.
        let found =
            unsafe { sys::virTypedParamsGetInt(self.params, self.n, name.as_ptr(), &mut v) };
        (found == 1).then_some(v)
    }

    fn llong(&self, name: &std::ffi::CStr) -> Option<i64> {
        let mut v: std::os::raw::c_longlong = 0;
        // SAFETY: as for `int`.
        let found =
            unsafe { sys::virTypedParamsGetLLong(self.params, self.n, name.as_ptr(), &mut v) };
        (found == 1).then_some(v)
    }

    fn ullong(&self, name: &std::ffi::CStr) -> Option<u64> {
        let mut v: std::os::raw::c_ulonglong = 0;
        // SAFETY: as for `int`.
        let found =
            unsafe { sys::virTypedParamsGetULLong(self.params, self.n, name.as_ptr(), &mut v) };
        (found == 1).then_some(v)
    }
}

pub(super) fn uuid_string(b: &[u8; 16]) -> String {
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

/// Addresses libvirt learned for the domain's MACs: DHCP leases (libvirt networks), then the
/// host's ARP table. Best effort: other interface types simply report nothing.
pub(super) fn learned_addresses(dom: &Domain) -> Vec<([u8; 6], IpAddr)> {
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

/// Why a domain's XML was not understood: which domain, which element or attribute.
#[derive(Debug, thiserror::Error)]
pub enum DomainXmlError {
    #[error("not XML: {0}")]
    NotXml(#[source] xmltree::ParseError),
    #[error("root element is <{0}>, not <domain>")]
    NotDomain(String),
    #[error("no <name>")]
    NoName,
    #[error("{domain}: {problem}")]
    Invalid { domain: String, problem: String },
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
    /// `<scored:group name=… kind=… scope=…/>` children of `<scored:vm>`, in document order.
    pub groups: Vec<GroupTag>,
}

impl DomainDescription {
    /// Parses libvirt's domain XML. Errors say which element or attribute is wrong.
    pub fn parse(xml: &str) -> Result<Self, DomainXmlError> {
        use xmltree::Element;
        let root = Element::parse(xml.as_bytes()).map_err(DomainXmlError::NotXml)?;
        if root.name != "domain" {
            return Err(DomainXmlError::NotDomain(root.name));
        }
        let text = |e: &Element, child: &str| -> Option<String> {
            e.get_child(child)
                .and_then(|c| c.get_text())
                .map(|t| t.trim().to_string())
        };
        let name = text(&root, "name").ok_or(DomainXmlError::NoName)?;
        let invalid = |problem: String| DomainXmlError::Invalid {
            domain: name.clone(),
            problem,
        };
        let uuid_text = text(&root, "uuid").ok_or_else(|| invalid("no <uuid>".into()))?;
        let uuid = parse_uuid(&uuid_text)
            .ok_or_else(|| invalid(format!("<uuid> `{uuid_text}` is not a UUID")))?;
        let memory_mib = root
            .get_child("currentMemory")
            .or_else(|| root.get_child("memory"))
            .map(|m| {
                let v: u64 = m
                    .get_text()
                    .and_then(|t| t.trim().parse().ok())
                    .ok_or_else(|| invalid("memory is not a number".into()))?;
                let unit = m
                    .attributes
                    .get("unit")
                    .map(String::as_str)
                    .unwrap_or("KiB");
                to_mib(v, unit).ok_or_else(|| invalid(format!("unknown memory unit `{unit}`")))
            })
            .transpose()?
            .ok_or_else(|| invalid("no <memory>".into()))?;
        let vcpus = match root.get_child("vcpu") {
            Some(v) => v
                .attributes
                .get("current")
                .cloned()
                .or_else(|| v.get_text().map(|t| t.trim().to_string()))
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| invalid("<vcpu> is not a number".into()))?,
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
                    .ok_or_else(|| invalid(format!("interface MAC `{mac}` is not a MAC")))?;
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
        let mut groups = Vec::new();
        if let Some(meta) = root.get_child("metadata")
            && let Some(vm) = meta
                .children
                .iter()
                .filter_map(|c| c.as_element())
                .find(|e| e.name == "vm" && e.namespace.as_deref() == Some(METADATA_NS))
        {
            if let Some(ip) = vm.attributes.get("ip") {
                declared_ip = Some(ip.parse::<Ipv4Addr>().map_err(|_| {
                    invalid(format!("scored metadata ip `{ip}` is not an IPv4 address"))
                })?);
            }
            if let Some(mac) = vm.attributes.get("mac") {
                declared_mac =
                    Some(parse_mac(mac).ok_or_else(|| {
                        invalid(format!("scored metadata mac `{mac}` is not a MAC"))
                    })?);
            }
            pinned = match vm.attributes.get("pinned").map(String::as_str) {
                None | Some("no") | Some("false") => false,
                Some("yes") | Some("true") => true,
                Some(other) => {
                    return Err(invalid(format!(
                        "scored metadata pinned=`{other}`: use yes or no"
                    )));
                }
            };
            groups = parse_groups(vm).map_err(invalid)?;
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
            groups,
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
            groups: self.groups,
        })
    }
}

/// The `<group name=… kind=… scope=…/>` children of a `<scored:vm>` element.
///
/// libvirt puts the children `virsh metadata --set` is given in scored's namespace; a child
/// hand-edited without a prefix means the same, one of another namespace is someone else's.
/// Whether the scope names a level of the topology, and whether the rules file agrees with the
/// kind, is the rules' question: this only reads what the domain says.
fn parse_groups(vm: &xmltree::Element) -> Result<Vec<GroupTag>, String> {
    let mut groups: Vec<GroupTag> = Vec::new();
    for e in vm
        .children
        .iter()
        .filter_map(|c| c.as_element())
        .filter(|e| e.name == "group" && e.namespace.as_deref().is_none_or(|ns| ns == METADATA_NS))
    {
        let name = e.attributes.get("name").map(|n| n.trim()).unwrap_or("");
        if name.is_empty() {
            return Err("scored metadata <group> without a name: add name='…'".into());
        }
        let kind = match e.attributes.get("kind").map(String::as_str) {
            None => None,
            Some(k) => Some(GroupKind::from_name(k.trim()).ok_or_else(|| {
                format!("scored metadata group `{name}` kind=`{k}`: use anti-affinity or affinity")
            })?),
        };
        let scope = match e.attributes.get("scope") {
            None => None,
            Some(s) if s.trim().is_empty() => {
                return Err(format!(
                    "scored metadata group `{name}` scope=`{s}`: use host, rack or a level name of the topology"
                ));
            }
            Some(s) => Some(s.trim().to_string()),
        };
        let tag = GroupTag {
            name: name.to_string(),
            kind,
            scope,
        };
        match groups.iter().find(|g| g.name == tag.name) {
            Some(g) if *g == tag => {}
            Some(_) => {
                return Err(format!(
                    "scored metadata names group `{name}` twice, with different kind or scope"
                ));
            }
            None => groups.push(tag),
        }
    }
    Ok(groups)
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

/// The figures scored reads from a job's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct JobFigures {
    /// `VIR_DOMAIN_JOB_NONE` when no job runs.
    pub(super) kind: i32,
    pub(super) elapsed_ms: Option<u64>,
    pub(super) downtime_ms: Option<u64>,
    pub(super) downtime_net_ms: Option<u64>,
    pub(super) processed: Option<u64>,
    pub(super) remaining: Option<u64>,
    /// Memory passes begun (`memory_iteration`, QEMU's dirty-sync count: 1 during the first
    /// full pass, 2 once it was sent).
    pub(super) iteration: Option<u64>,
    /// Guest memory the job covered, bytes (`memory_total`).
    pub(super) memory_total: Option<u64>,
    /// Pages the job found to hold only zeroes (`memory_constant`), and the page size.
    pub(super) zero_pages: Option<u64>,
    pub(super) page_size: Option<u64>,
}

impl JobFigures {
    /// Guest memory that held data when the job ran, bytes: its memory less its zero pages.
    pub(super) fn nonzero_bytes(&self) -> Option<u64> {
        let zero = self.zero_pages?.checked_mul(self.page_size?)?;
        Some(self.memory_total?.saturating_sub(zero))
    }
}

/// `virDomainGetJobStats` through `virt::sys`: virt 0.5's wrapper builds a `Vec` from the null
/// pointer libvirt returns when a job has no figures (undefined behaviour), so scored reads the
/// few parameters it needs with libvirt's own accessors and frees them with libvirt's free.
pub(super) fn job_figures(
    dom: &Domain,
    flags: u32,
) -> std::result::Result<JobFigures, virt::error::Error> {
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
        iteration: get(sys::VIR_DOMAIN_JOB_MEMORY_ITERATION),
        memory_total: get(sys::VIR_DOMAIN_JOB_MEMORY_TOTAL),
        zero_pages: get(sys::VIR_DOMAIN_JOB_MEMORY_CONSTANT),
        page_size: get(sys::VIR_DOMAIN_JOB_MEMORY_PAGE_SIZE),
    };
    if !params.is_null() {
        // SAFETY: frees what libvirt allocated above, once.
        unsafe { sys::virTypedParamsFree(params, n) };
    }
    Ok(figures)
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
        let e = DomainDescription::parse(&xml).unwrap_err().to_string();
        assert!(e.contains("vm1") && e.contains("10.77.1"), "{e}");
        let xml = XML.replace("pinned=\"yes\"", "pinned=\"maybe\"");
        assert!(
            DomainDescription::parse(&xml)
                .unwrap_err()
                .to_string()
                .contains("maybe")
        );
        assert!(DomainDescription::parse("<network/>").is_err());
        assert!(DomainDescription::parse("not xml").is_err());
    }

    /// As libvirt 9.0 shows it after `virsh metadata DOMAIN --uri … --key scored --set '<vm
    /// ip="10.77.1.21"><group name="db-main" kind="anti-affinity" scope="host"/>…</vm>'`: the
    /// children get the `scored` prefix too. A hand-edited child without a prefix (`virsh edit`)
    /// means the same; another namespace's element is someone else's.
    const GROUPED: &str = r#"<domain type='qemu' id='1'>
  <name>db-main-1</name>
  <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
  <metadata>
    <scored:vm xmlns:scored="https://example.invalid/scored/xmlns/vm/1" ip="10.77.1.21" pinned="no">
      <scored:group name="db-main" kind="anti-affinity" scope="host"/>
      <scored:group name="web-tier" kind="affinity" scope="rack"/>
      <group name="backup"/>
      <other:group xmlns:other="urn:x" name="not-ours"/>
    </scored:vm>
  </metadata>
  <memory unit='MiB'>128</memory>
  <devices>
    <interface type='bridge'><mac address='52:54:0a:4d:01:15'/></interface>
  </devices>
</domain>"#;

    fn tag(name: &str, kind: Option<GroupKind>, scope: Option<&str>) -> GroupTag {
        GroupTag {
            name: name.to_string(),
            kind,
            scope: scope.map(str::to_string),
        }
    }

    #[test]
    fn reads_the_placement_groups_a_domain_names() {
        let d = DomainDescription::parse(GROUPED).unwrap();
        let expected = vec![
            tag("db-main", Some(GroupKind::AntiAffinity), Some("host")),
            tag("web-tier", Some(GroupKind::Affinity), Some("rack")),
            tag("backup", None, None),
        ];
        assert_eq!(d.groups, expected);
        // The groups reach the VM scored decides for.
        let vm = d.into_vm(&[]).unwrap();
        assert_eq!(vm.groups, expected);
        // A domain without them is in no group.
        assert!(DomainDescription::parse(XML).unwrap().groups.is_empty());
    }

    #[test]
    fn bad_group_metadata_names_the_domain_and_the_attribute() {
        let bad = |from: &str, to: &str| {
            assert!(GROUPED.contains(from), "{from}");
            DomainDescription::parse(&GROUPED.replace(from, to))
                .unwrap_err()
                .to_string()
        };
        let e = bad(r#"kind="anti-affinity""#, r#"kind="anti-afinity""#);
        assert!(
            e.contains("db-main-1") && e.contains("kind") && e.contains("anti-afinity"),
            "{e}"
        );
        let e = bad(r#"name="db-main" "#, " ");
        assert!(e.contains("db-main-1") && e.contains("name"), "{e}");
        let e = bad(r#"name="backup""#, r#"name="""#);
        assert!(e.contains("db-main-1") && e.contains("name"), "{e}");
        let e = bad(r#"scope="rack""#, r#"scope=" ""#);
        assert!(
            e.contains("db-main-1") && e.contains("scope") && e.contains("web-tier"),
            "{e}"
        );
        // One group named twice with different rules: which one would scored follow?
        let e = bad(r#"name="web-tier""#, r#"name="db-main""#);
        assert!(
            e.contains("db-main-1") && e.contains("db-main") && e.contains("twice"),
            "{e}"
        );
    }

    #[test]
    fn a_group_named_twice_alike_counts_once() {
        let twice = GROUPED.replace(
            r#"<group name="backup"/>"#,
            r#"<group name="backup"/><group name="backup"/>"#,
        );
        let d = DomainDescription::parse(&twice).unwrap();
        assert_eq!(
            d.groups.iter().filter(|g| g.name == "backup").count(),
            1,
            "{:?}",
            d.groups
        );
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
}
