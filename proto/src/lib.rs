//! `scored-proto`: the types that travel between scored daemons.
//!
//! This crate is the lowest layer of scored: it knows nothing of libp2p, libvirt or the
//! topology file. Everything here is plain data with serde derives; the wire codec (framing,
//! size limits, compact token slots) lives beside these types so that a format change is always
//! deliberate and visible in the golden vectors.

pub mod codec;
mod compact;
pub mod location;
pub mod message;
pub mod placement;

pub use codec::{DecodeError, EncodeError, WIRE_VERSION, WireMessage, decode, encode};
pub use compact::MAX_SLOT_LEVEL;
pub use location::*;
pub use message::*;
pub use placement::*;

use serde::{Deserialize, Serialize};
use std::fmt;

/// Cluster-wide identity of a virtual machine.
///
/// As in the original S-CORE implementation, a VM is named by a 32-bit number that is unique in
/// the data centre. scored uses the VM's primary IPv4 address, read as a big-endian `u32`: it is
/// unique, it is what packet capture sees for a partner, and addresses in one data centre are
/// dense, so sorted ids delta-encode into very few bytes in the token.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VmId(pub u32);

impl VmId {
    pub fn from_ipv4(addr: std::net::Ipv4Addr) -> Self {
        VmId(u32::from(addr))
    }

    pub fn to_ipv4(self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from(self.0)
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_ipv4())
    }
}

impl fmt::Debug for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VmId({})", self.to_ipv4())
    }
}

/// Communication level between two servers: 0 = same server, 1 = same rack, … up the tree.
pub type Level = u8;

/// The token policy that decides which VM holds the token next (S-CORE §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    /// Strict slot order by VM id.
    RoundRobin,
    /// Order by greatest expected cost reduction, from statistics gathered at round start.
    Global,
    /// Algorithm 1: highest communication level first, lowest id first within a level.
    Distributed,
    /// Like distributed, but within a level the highest aggregate load goes first.
    LoadAware,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::RoundRobin,
        PolicyKind::Global,
        PolicyKind::Distributed,
        PolicyKind::LoadAware,
    ];

    /// The name used in configuration files, CLI flags and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::Global => "global",
            PolicyKind::Distributed => "distributed",
            PolicyKind::LoadAware => "load-aware",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One VM's entry in the token.
///
/// The original token was (VM id: 32 bits, highest level: 8 bits) = 5 bytes per VM. scored adds
/// the two things its policies need and still fits the dc-2560 token in ≤ 3 bytes per VM on the
/// wire: a visited flag (the distributed policies sweep each level once per pass) and the VM's
/// aggregate load, log-quantised to one byte (the load-aware policy only compares loads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub vm: VmId,
    /// Highest communication level l_v seen for this VM's traffic (raised by neighbours).
    pub level: Level,
    /// This VM has already had its turn in the current pass.
    pub visited: bool,
    /// Aggregate (in + out) load class: see [`load_class`].
    pub load: u8,
}

/// Quantises an aggregate rate in bytes/s to one byte: `round(8 · log2(1 + rate))`, saturating.
///
/// Monotone, so comparing classes orders VMs as comparing rates would, to within ~9%.
pub fn load_class(bytes_per_sec: f64) -> u8 {
    if bytes_per_sec.is_nan() || bytes_per_sec <= 0.0 {
        return 0;
    }
    let c = (8.0 * (1.0 + bytes_per_sec).log2()).round();
    if c >= 255.0 { 255 } else { c as u8 }
}

/// The S-CORE token: a single instance circulates; only its holder's VM may decide and migrate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Generation of the token: raised on every regeneration; a token with an older epoch than one
    /// already seen is fenced off (dropped, never acts).
    pub epoch: u64,
    /// Hand-off counter within an epoch.
    pub seq: u64,
    pub policy: PolicyKind,
    /// Completed passes over all slots.
    pub round: u32,
    /// The VM that holds (or last held) the token.
    pub holder: Option<VmId>,
    /// One slot per VM, sorted by VM id, ids unique.
    pub slots: Vec<Slot>,
    /// Global policy only: the order of this round, computed from statistics gathered from all
    /// hosts at round start (greatest expected reduction first). Empty for the other policies.
    pub schedule: Vec<VmId>,
}

impl Token {
    /// Where the token is: its epoch and hand-off sequence.
    pub fn stamp(&self) -> Stamp {
        Stamp::new(self.epoch, self.seq)
    }

    pub fn new(epoch: u64, policy: PolicyKind, mut vms: Vec<VmId>) -> Self {
        vms.sort_unstable();
        vms.dedup();
        Token {
            epoch,
            seq: 0,
            policy,
            round: 0,
            holder: None,
            slots: vms
                .into_iter()
                .map(|vm| Slot {
                    vm,
                    level: 0,
                    visited: false,
                    load: 0,
                })
                .collect(),
            schedule: Vec::new(),
        }
    }

    /// Index of `vm`'s slot (slots are sorted by id).
    pub fn slot_index(&self, vm: VmId) -> Option<usize> {
        self.slots.binary_search_by_key(&vm, |s| s.vm).ok()
    }

    pub fn slot(&self, vm: VmId) -> Option<&Slot> {
        self.slot_index(vm).map(|i| &self.slots[i])
    }

    pub fn slot_mut(&mut self, vm: VmId) -> Option<&mut Slot> {
        self.slot_index(vm).map(move |i| &mut self.slots[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_inventory_fits_one_announcement() {
        // Every field at its widest varint: a host with the most VMs a host may report, under
        // the longest name, stamped by the highest epoch and sequence.
        let a = Announcement::Inventory {
            host: "h".repeat(MAX_HOST_NAME),
            vms: (0..MAX_HOST_VMS)
                .map(|i| Located {
                    vm: VmId(u32::MAX - i as u32),
                    since: Stamp::new(u64::MAX, u64::MAX),
                })
                .collect(),
        };
        let bytes = encode(&a).unwrap();
        assert!(bytes.len() <= <Announcement as WireMessage>::MAX_FRAME);
    }

    #[test]
    fn the_largest_survey_answer_fits_its_frame_and_one_more_vm_is_refused() {
        let widest = |i: usize| SurveyedVm {
            vm: VmId(u32::MAX - i as u32),
            memory_mib: u64::MAX,
            movable: true,
            partners: (0..MAX_SURVEY_PARTNERS)
                .map(|k| (VmId(u32::MAX - k as u32), f64::MAX))
                .collect(),
        };
        let mut r = SurveyResponse {
            vms: (0..MAX_SURVEY_VMS).map(widest).collect(),
            capacity: CapacityResponse {
                free_slots: u32::MAX,
                free_memory_mib: u64::MAX,
                cpu_load: f32::MAX,
                maintenance: true,
                incoming_migrations: u32::MAX,
                accepts: true,
            },
            cpus: u32::MAX,
        };
        let bytes = encode(&r).unwrap();
        assert!(bytes.len() <= <SurveyResponse as WireMessage>::MAX_FRAME);
        assert_eq!(decode::<SurveyResponse>(&bytes).unwrap(), r);
        r.vms.push(widest(0));
        assert!(encode(&r).is_err());
        r.vms.pop();
        r.vms[3].partners[0].1 = f64::NAN;
        assert!(encode(&r).is_err());
    }

    #[test]
    fn vm_id_is_the_ipv4_address() {
        let id = VmId::from_ipv4("10.1.2.3".parse().unwrap());
        assert_eq!(id.0, 0x0a01_0203);
        assert_eq!(id.to_string(), "10.1.2.3");
    }

    #[test]
    fn load_class_is_monotone_and_saturates() {
        assert_eq!(load_class(0.0), 0);
        assert_eq!(load_class(-5.0), 0);
        assert_eq!(load_class(f64::NAN), 0);
        let mut last = 0;
        for e in 0..40 {
            let c = load_class(2f64.powi(e));
            assert!(c >= last);
            last = c;
        }
        assert_eq!(load_class(1e300), 255);
    }

    #[test]
    fn token_slots_are_sorted_and_unique() {
        let t = Token::new(
            1,
            PolicyKind::Distributed,
            vec![VmId(5), VmId(1), VmId(5), VmId(3)],
        );
        let ids: Vec<u32> = t.slots.iter().map(|s| s.vm.0).collect();
        assert_eq!(ids, vec![1, 3, 5]);
        assert_eq!(t.slot_index(VmId(3)), Some(1));
        assert!(t.slot(VmId(4)).is_none());
    }
}
