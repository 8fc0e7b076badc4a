//! The hypervisor seen by scored: which VMs run on this host, how much room it has, and live
//! migration of one VM to another host.
//!
//! One trait, several backends side by side (libvirt for real hosts, in-memory for the simulator
//! and the loopback tests, a shared cluster file for simulated hosts in separate processes);
//! callers never name a backend: [`open`] picks it from the configured URI. Methods block
//! (libvirt calls can take seconds): the daemon calls them from `spawn_blocking`, never from its
//! event loop. Nothing here decides anything; it reports and executes.

pub mod file;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod memory;
pub mod progress;
pub mod watch;

use file::FileHost;
use scored_proto::VmId;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Hypervisor URIs of this scheme run a simulated host from a shared cluster file (tests, the
/// no-root demo): `sim+file:///var/lib/scored/cluster.json`. Every other URI is libvirt's.
pub const SIM_SCHEME: &str = "sim+file://";

/// The backend a hypervisor URI names, for one host, not connected yet.
pub struct Backend {
    pub hypervisor: Arc<dyn Hypervisor>,
    /// The cluster file of a simulated host (`sim+file://`): the traffic its VMs exchange is
    /// read there too, in place of capture on taps. `None` for a real hypervisor.
    pub simulated: Option<FileHost>,
}

/// The backend for `uri`, serving host `host_name` (the topology's name for this host).
///
/// Nothing is opened yet: like a libvirtd that is not up, a cluster file that cannot be read
/// is an outage the first calls report, not a failed start. Fails only for a URI this build
/// cannot serve (a libvirt URI in a build without the `libvirt` feature).
pub fn open(uri: &str, host_name: &str) -> Result<Backend> {
    if let Some(path) = uri.strip_prefix(SIM_SCHEME) {
        let host = FileHost::open_later(Path::new(path), host_name);
        return Ok(Backend {
            hypervisor: Arc::new(host.clone()),
            simulated: Some(host),
        });
    }
    open_libvirt(uri)
}

#[cfg(feature = "libvirt")]
fn open_libvirt(uri: &str) -> Result<Backend> {
    let hv = libvirt::LibvirtHypervisor::connect_later(libvirt::LibvirtConfig::new(uri));
    Ok(Backend {
        hypervisor: Arc::new(hv),
        simulated: None,
    })
}

#[cfg(not(feature = "libvirt"))]
fn open_libvirt(uri: &str) -> Result<Backend> {
    Err(HypervisorError::Unsupported {
        uri: uri.to_string(),
        why: "this scored was built without the `libvirt` feature; only sim+file:// URIs work",
    })
}

/// Errors from a hypervisor backend, saying which VM and which call failed. The underlying
/// error is kept as the [`Cause`]; the text repeats it, because the daemon logs these errors
/// one line each.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("VM {vm} is not on this host")]
    NoSuchVm { vm: VmId },
    #[error("{call} failed{}: {source}", vm.map(|v| format!(" for VM {v}")).unwrap_or_default())]
    Call {
        vm: Option<VmId>,
        call: &'static str,
        #[source]
        source: Cause,
    },
    #[error("VM {vm}: migration to {dest} failed in {call}: {source}")]
    Migration {
        vm: VmId,
        dest: String,
        call: &'static str,
        #[source]
        source: Cause,
    },
    #[error("VM {vm}: migration to {dest} aborted: {reason}")]
    Aborted {
        vm: VmId,
        dest: String,
        reason: AbortReason,
    },
    /// The hypervisor could not be reached: `target` says what was being opened (a libvirt URI,
    /// a cluster file and the step that failed).
    #[error("hypervisor connection: {target}: {source}")]
    Connection {
        target: String,
        #[source]
        source: Cause,
    },
    /// The thread running a call ended without an answer (it panicked or was cancelled).
    #[error("hypervisor connection: {call} task: {source}")]
    Task {
        call: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// The call did not return in time. It may still be running (a thread stays blocked in it),
    /// so whatever it was doing must be asked about again, never assumed to have failed.
    #[error("no answer to {call} within {} s (the call may still be running)", after.as_secs())]
    NoAnswer { call: &'static str, after: Duration },
    /// A URI this build has no backend for.
    #[error("hypervisor URI {uri}: {why}")]
    Unsupported { uri: String, why: &'static str },
}

impl HypervisorError {
    /// Whether the hypervisor itself did not answer (connection lost, a host-wide call failing),
    /// as opposed to answering about one VM or one migration. The daemon stops deciding for
    /// its VMs while this holds.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            HypervisorError::Connection { .. }
                | HypervisorError::Task { .. }
                | HypervisorError::Call { vm: None, .. }
                | HypervisorError::NoAnswer { .. }
        )
    }
}

/// What made a hypervisor call fail, under the [`HypervisorError`] that says which call.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// libvirt's error; the text is its message (code and domain are in the value).
    #[cfg(feature = "libvirt")]
    #[error("{}", .0.message())]
    Libvirt(virt::error::Error),
    /// libvirt's error and what scored found after it (where the VM is, what the watchdog
    /// could not do); `note` starts with its own separator.
    #[cfg(feature = "libvirt")]
    #[error("{}{note}", .error.message())]
    LibvirtNoted {
        error: virt::error::Error,
        note: String,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A cluster file that is not what scored wrote.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A step that failed on an error of its own (a connection opened for one migration).
    #[error(transparent)]
    Hypervisor(Box<HypervisorError>),
    /// The backend refused, and this says why (the VM is pinned, the destination is full):
    /// a fact, with no error underneath.
    #[error("{0}")]
    Refused(String),
}

impl From<HypervisorError> for Cause {
    fn from(e: HypervisorError) -> Self {
        Cause::Hypervisor(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, HypervisorError>;

/// Why scored aborted a migration job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbortReason {
    /// The whole job took longer than the configured timeout.
    Timeout,
    /// No progress (remaining bytes did not fall) for the configured stall time.
    Stalled,
    /// The operator or a shutdown asked for it.
    Cancelled,
}

impl AbortReason {
    pub fn name(self) -> &'static str {
        match self {
            AbortReason::Timeout => "timeout",
            AbortReason::Stalled => "stalled",
            AbortReason::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One network interface of a VM.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Interface {
    pub mac: [u8; 6],
    /// Host-side device (tap) the VM's frames cross, when the backend knows it.
    pub tap: Option<String>,
    pub addresses: Vec<std::net::IpAddr>,
}

/// A VM running on this host, as the hypervisor reports it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Vm {
    pub id: VmId,
    pub name: String,
    pub uuid: [u8; 16],
    pub memory_mib: u64,
    pub vcpus: u32,
    pub interfaces: Vec<Interface>,
    /// The operator pinned this VM (domain metadata): scored never moves it.
    pub pinned: bool,
    /// Placement groups the VM's own metadata puts it in (`<scored:group …/>`); they travel
    /// with the domain when it migrates. The rules file may name more.
    #[serde(default)]
    pub groups: Vec<GroupTag>,
}

/// The window a dirty rate is measured over (libvirt's dirty-rate calculation, one second: the
/// shortest it takes).
pub const DIRTY_RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// What the hypervisor measured of one running VM. A figure is `None` until measured: the first
/// read after the VM appeared (CPU use needs two), a dirty-rate calculation still running, a
/// hypervisor that cannot say.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    pub vm: VmId,
    /// Memory the guest's QEMU process holds on the host (its resident set), MiB: the guest
    /// pages it touched and QEMU's own memory (device emulation, TCG's translation cache).
    pub resident_mib: Option<u64>,
    /// Memory the guest itself reports in use (virtio balloon statistics: its memory as the
    /// balloon leaves it, less what the guest reports unused), MiB. `None` without a balloon
    /// device with statistics (`<memballoon model='virtio'><stats period='…'/>`).
    #[serde(default)]
    pub guest_used_mib: Option<u64>,
    /// Non-zero memory the migration that brought the VM here sent (the completed job's
    /// memory sent less its zero pages, which QEMU sends as headers), MiB: what the first pass
    /// of its next migration will send again, give or take what the guest touched since.
    #[serde(default)]
    pub arrived_nonzero_mib: Option<u64>,
    /// Memory the guest dirtied per second in its last dirty-rate calculation, MiB/s.
    pub dirty_mib_s: Option<f64>,
    /// No dirty rate yet, and a calculation that will give one is running (started within the
    /// last few seconds): a forecast is due shortly.
    #[serde(default)]
    pub dirty_rate_pending: bool,
    /// CPU the guest used between the last two reads, in cores.
    pub cpu_cores: Option<f64>,
}

/// A group a VM's metadata names: `<scored:group name='db-main' kind='anti-affinity'
/// scope='host'/>`. Kind and scope may be left out when the rules file declares the group.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct GroupTag {
    pub name: String,
    pub kind: Option<crate::rules::GroupKind>,
    /// `host`, `rack` or a level name of the topology.
    pub scope: Option<String>,
}

/// How much room this host has, as its hypervisor reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Capacity {
    /// VMs running here, not counting those still migrating in.
    pub running_vms: u32,
    /// Migrations into this host in progress, whoever started them (scored, an operator's
    /// virsh, OpenStack): each will take a slot and already holds its memory.
    pub incoming_migrations: u32,
    /// Memory free for new guests, MiB (before any reserve the topology asks to keep), with the
    /// memory of incoming migrations already taken.
    pub free_memory_mib: u64,
    pub total_memory_mib: u64,
    /// 1-minute load average divided by the number of CPUs (0 when unknown).
    pub cpu_load: f32,
    /// CPUs of the host (0 when unknown).
    pub cpus: u32,
}

/// Where a migration goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// Host name in the topology.
    pub host: String,
    /// libvirt connection URI of the destination hypervisor.
    pub libvirt_uri: Option<String>,
    /// Migration data URI, e.g. `tcp://10.0.0.2`.
    pub migration_uri: Option<String>,
}

/// Tuning of one live migration. Every migration is live: scored never pauses a VM for a move.
#[derive(Clone, Debug, PartialEq)]
pub struct MigrationParams {
    /// Bandwidth cap in MiB/s (0 = unlimited).
    pub bandwidth_mib_s: u64,
    /// Largest acceptable downtime in the final stop-and-copy phase.
    pub max_downtime: Duration,
    pub auto_converge: bool,
    pub compression: Compression,
    /// Switch to post-copy when pre-copy does not converge (loses the VM if the destination dies
    /// mid-way; off by default).
    pub post_copy: bool,
    /// With `post_copy`: switch as soon as the first full pass has been sent, instead of when
    /// the stall rule fires. Not an operator's option: the daemon sets it for a VM whose
    /// forecast says pre-copy cannot converge (`crate::forecast`), which saves resending its
    /// memory for the whole stall timeout.
    pub post_copy_after_first_pass: bool,
    /// Abort when the whole job exceeds this.
    pub timeout: Duration,
    /// Abort when the remaining data has not shrunk for this long.
    pub stall_timeout: Duration,
    /// Encrypt the migration stream (libvirt's `VIR_MIGRATE_TLS`): QEMU on both hosts speaks
    /// TLS with the certificates of the qemu driver's `migrate_tls_x509_cert_dir`. Without it a
    /// guest's memory crosses the network readable by anyone on the path.
    pub tls: bool,
}

impl Default for MigrationParams {
    fn default() -> Self {
        MigrationParams {
            bandwidth_mib_s: 0,
            max_downtime: Duration::from_millis(300),
            auto_converge: true,
            compression: Compression::None,
            post_copy: false,
            post_copy_after_first_pass: false,
            timeout: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(30),
            tls: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    /// XBZRLE delta compression of re-sent pages.
    Xbzrle,
    /// Multiple parallel connections with zstd compression.
    MultifdZstd,
}

/// What a completed migration cost, read from the destination's job statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MigrationReport {
    pub elapsed: Duration,
    pub downtime: Duration,
    pub bytes: u64,
    /// The job switched to post-copy (the guest ran at the destination before all its memory
    /// had arrived).
    pub post_copy: bool,
}

/// Where a VM is, as far as this host's hypervisor can tell (journal reconciliation after a crash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Defined and running here, no migration job.
    Running,
    /// Running here with a migration job in progress.
    Migrating,
    /// Not on this host (migrated away, or never here).
    Absent,
}

/// A hypervisor backend. All methods block; call them off the event loop.
pub trait Hypervisor: Send + Sync {
    /// The VMs running on this host, every one described afresh.
    fn vms(&self) -> Result<Vec<Vm>>;

    /// The VMs running on this host, read for the token's arrival: as cheap as the backend can
    /// make it, re-describing only what changed since the last read. Which VMs run here, and
    /// whether one is still migrating in, is always current; a change the backend's cheap
    /// listing cannot see (libvirt: metadata edited on a running domain) waits for the next
    /// [`vms`](Self::vms). Backends without a cheaper way read everything.
    fn vms_incremental(&self) -> Result<Vec<Vm>> {
        self.vms()
    }

    /// Room left on this host.
    fn capacity(&self) -> Result<Capacity>;

    /// What the hypervisor measures of the running VMs, for forecasting their migrations
    /// (`crate::forecast`): resident memory, dirty rate, CPU use. Each figure is `None` until
    /// measured. Backends that measure nothing report nothing.
    fn measure(&self) -> Result<Vec<Measured>> {
        Ok(Vec::new())
    }

    /// Live-migrates `vm` to `dest`. Returns when the VM runs at the destination (with the
    /// destination's job statistics) or has been left running here (an error). Never leaves the VM
    /// undefined on both hosts.
    fn migrate(
        &self,
        vm: VmId,
        dest: &Destination,
        params: &MigrationParams,
    ) -> Result<MigrationReport>;

    /// Where `vm` stands on this host now.
    fn state(&self, vm: VmId) -> Result<VmState>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_sim_uri_opens_a_file_host_whose_missing_file_is_an_outage_with_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        let b = open(&format!("sim+file://{}", path.display()), "hv1").unwrap();
        assert!(b.simulated.is_some());
        let e = b.hypervisor.vms().unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("cluster.json") && text.contains("read"),
            "{text}"
        );
        let cause = e.source().and_then(|c| c.downcast_ref::<Cause>());
        assert!(
            matches!(cause, Some(Cause::Io(io)) if io.kind() == std::io::ErrorKind::NotFound),
            "{cause:?}"
        );
    }

    #[cfg(feature = "libvirt")]
    #[test]
    fn any_other_uri_is_libvirt_connected_at_the_first_call() {
        let b = open("test:///default", "hv1").unwrap();
        assert!(b.simulated.is_none());
        assert!(b.hypervisor.capacity().unwrap().total_memory_mib > 0);
        let e = open(
            "qemu+unix:///system?socket=/nonexistent/libvirt-sock",
            "hv1",
        )
        .unwrap()
        .hypervisor
        .vms()
        .unwrap_err();
        assert!(
            e.is_unavailable() && e.to_string().contains("/nonexistent/libvirt-sock"),
            "{e}"
        );
        let cause = e.source().and_then(|c| c.downcast_ref::<Cause>());
        assert!(matches!(cause, Some(Cause::Libvirt(_))), "{cause:?}");
    }

    #[cfg(not(feature = "libvirt"))]
    #[test]
    fn without_libvirt_a_libvirt_uri_is_refused_by_name() {
        let e = open("qemu:///system", "hv1").err().unwrap();
        assert!(matches!(e, HypervisorError::Unsupported { .. }));
        assert!(e.to_string().contains("qemu:///system"), "{e}");
    }
}
