//! Flow monitoring: λ(u, v), the traffic rate between each local VM u and each partner VM v,
//! measured from packets on the VMs' taps (thesis §4.2.2) and read by the decision on token
//! arrival.
//!
//! - [`table`]: the flow table (pure; time passed in).
//! - [`frame`], [`attribute`]: header parsing and attribution of a frame to (VM, partner,
//!   direction) (pure).
//! - [`answered`]: traffic a guest controls: λ from capture counts what the partner answers.
//! - [`capture`]: the real source, AF_PACKET capture on each tap through `pnet`, on its own
//!   threads.
//! - [`synthetic`]: a source fed from a list of rates and a given clock (simulator, tests).
//! - [`report`]: the `scored flows` debug command.
//!
//! This module reports traffic; it decides nothing and never calls the hypervisor (it is told
//! which VMs and taps are local through [`FlowSource::follow`]).

pub mod answered;
pub mod attribute;
pub mod capture;
pub mod frame;
pub mod report;
pub mod synthetic;
pub mod table;

pub use attribute::{FrameCounters, Ipv6Aliases, Skip};
pub use frame::{Mac, Malformed};
pub use table::{
    Direction, FlowTable, PartnerRate, Steady, TableConfig, TableError, TableStats, Update,
};

use crate::hypervisor::Vm;
use scored_proto::VmId;
use std::time::Duration;

/// Errors from a flow source, naming the tap and VM concerned.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("tap {tap}{}: {call}: {message}", vm.map(|v| format!(" (VM {v})")).unwrap_or_default())]
    Tap {
        tap: String,
        vm: Option<VmId>,
        call: &'static str,
        message: String,
    },
    #[error(
        "VM {vm}: interface {} has no host-side tap device to capture on",
        format_mac(mac)
    )]
    NoTap { vm: VmId, mac: Mac },
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Several(Vec<FlowError>),
}

pub type Result<T> = std::result::Result<T, FlowError>;

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut m = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in &mut m {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

/// What a source has seen and how much it cost, for metrics and the debug command.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceStats {
    pub frames: FrameCounters,
    pub table: TableStats,
    /// Frames the kernel dropped because a capture thread fell behind.
    pub kernel_drops: u64,
    /// CPU time of the capture threads.
    pub cpu: Duration,
    pub taps: Vec<TapStatus>,
}

/// One watched tap.
#[derive(Clone, Debug, PartialEq)]
pub struct TapStatus {
    pub name: String,
    /// The VM behind the tap (learned from its traffic when it was not given).
    pub vm: Option<VmId>,
    pub frames: u64,
    pub kernel_drops: u64,
    pub running: bool,
    /// How frames are read: "tpacket-v3 ring" or "recvmmsg".
    pub reader: &'static str,
    /// Why capture stopped, if it failed.
    pub error: Option<String>,
}

/// Where the daemon gets λ from: real capture on the taps, or a synthetic feed. Reads are cheap
/// and never wait on capture (at most on a short lock).
pub trait FlowSource: Send {
    /// The VMs now running on this host (after migrations in or out): watch the new ones, stop
    /// watching and forget the traffic of those that left. A failure on one VM's tap is
    /// reported and does not stop the others.
    fn follow(&mut self, vms: &[Vm]) -> Result<()>;

    /// λ(u, ·) now: each partner of local VM `vm` with its rate in bytes/s, both directions
    /// summed. Unordered.
    fn partners(&self, vm: VmId) -> Vec<(VmId, f64)>;

    /// The same with directions and packets apart.
    fn partner_rates(&self, vm: VmId) -> Vec<PartnerRate>;

    /// Aggregate (in + out) rate of `vm`, bytes/s (the load-aware policy's input).
    fn vm_load(&self, vm: VmId) -> f64 {
        self.partners(vm).iter().map(|(_, r)| r).sum()
    }

    fn stats(&self) -> SourceStats;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_rejects() {
        let m = parse_mac("52:54:00:ab:CD:0f").unwrap();
        assert_eq!(m, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(format_mac(&m), "52:54:00:ab:cd:0f");
        assert_eq!(parse_mac("52-54-00-ab-cd-0f"), Some(m));
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "52:54:00:ab:cd:xg",
            "525:4:00:ab:cd:0f",
            "52::00:ab:cd:0f",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn errors_name_the_tap_and_vm() {
        let e = FlowError::Tap {
            tap: "vnet3".into(),
            vm: Some(VmId(0x0a00_0005)),
            call: "bind AF_PACKET socket",
            message: "No such device".into(),
        };
        assert_eq!(
            e.to_string(),
            "tap vnet3 (VM 10.0.0.5): bind AF_PACKET socket: No such device"
        );
        let n = FlowError::NoTap {
            vm: VmId(0x0a00_0005),
            mac: [0x52, 0x54, 0, 1, 2, 3],
        };
        assert_eq!(
            n.to_string(),
            "VM 10.0.0.5: interface 52:54:00:01:02:03 has no host-side tap device to capture on"
        );
    }
}
