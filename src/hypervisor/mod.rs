//! The hypervisor seen by scored: which VMs run on this host, how much room it has, and live
//! migration of one VM to another host.
//!
//! One trait, several backends side by side (libvirt for real hosts, in-memory for the simulator
//! and the loopback tests); callers never name a backend. Methods block (libvirt calls can take
//! seconds): the daemon calls them from `spawn_blocking`, never from its event loop. Nothing here
//! decides anything; it reports and executes.

pub mod libvirt;
pub mod memory;
pub mod progress;
pub mod watch;

use scored_proto::VmId;
use std::time::Duration;

/// Errors from a hypervisor backend, saying which VM and which call failed.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("VM {vm} is not on this host")]
    NoSuchVm { vm: VmId },
    #[error("{call} failed{}: {message}", vm.map(|v| format!(" for VM {v}")).unwrap_or_default())]
    Call {
        vm: Option<VmId>,
        call: &'static str,
        message: String,
    },
    #[error("VM {vm}: migration to {dest} failed in {call}: {message}")]
    Migration {
        vm: VmId,
        dest: String,
        call: &'static str,
        message: String,
    },
    #[error("VM {vm}: migration to {dest} aborted: {reason}")]
    Aborted {
        vm: VmId,
        dest: String,
        reason: AbortReason,
    },
    #[error("hypervisor connection: {0}")]
    Connection(String),
    /// The call did not return in time. It may still be running (a thread stays blocked in it),
    /// so whatever it was doing must be asked about again, never assumed to have failed.
    #[error("no answer to {call} within {} s (the call may still be running)", after.as_secs())]
    NoAnswer { call: &'static str, after: Duration },
}

impl HypervisorError {
    /// Whether the hypervisor itself did not answer (connection lost, a host-wide call failing),
    /// as opposed to answering about one VM or one migration. The daemon stops deciding for
    /// its VMs while this holds.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            HypervisorError::Connection(_)
                | HypervisorError::Call { vm: None, .. }
                | HypervisorError::NoAnswer { .. }
        )
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
    /// Abort when the whole job exceeds this.
    pub timeout: Duration,
    /// Abort when the remaining data has not shrunk for this long.
    pub stall_timeout: Duration,
}

impl Default for MigrationParams {
    fn default() -> Self {
        MigrationParams {
            bandwidth_mib_s: 0,
            max_downtime: Duration::from_millis(300),
            auto_converge: true,
            compression: Compression::None,
            post_copy: false,
            timeout: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(30),
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
    /// The VMs running on this host.
    fn vms(&self) -> Result<Vec<Vm>>;

    /// Room left on this host.
    fn capacity(&self) -> Result<Capacity>;

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
