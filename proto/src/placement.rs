//! Version 2 messages: what the placement rules need on the wire.
//!
//! - `/scored/capacity/2`: the capacity request names the VM that would move and its groups
//!   ([`PlacementRequest`]), so the destination judges the move by the same rules as the source,
//!   against what it knows better (its own VMs), and holds room for it; the answer
//!   ([`PlacementResponse`]) is the v1 capacity answer plus, when a rule refuses, its sentence.
//! - `/scored/announce/2` (gossip topic): [`GroupsAnnounce`], the groups the VMs of one host
//!   name in their own metadata, the companion of that host's v1 inventory.
//!
//! - `/scored/capacity/3`: the same request; the answer ([`PlacementResponse`], version byte 3)
//!   adds the answering host's CPU count, so the asker can tell from the v1 `cpu_load` whether
//!   the host has room for the VM's CPU use too. A v2 stream carries [`PlacementResponseV2`],
//!   the answer without it.
//!
//! The v1 messages are untouched (their golden vectors stay): a daemon speaks both versions, and
//! the transport converts between them for a peer that speaks only v1 (docs/protocol.md, "Mixed
//! versions"). Frames of these messages carry version byte 2. Like every message here: plain
//! data, checked on decode and before encode, never a panic on a peer's bytes.

use crate::codec::{DecodeError, EncodeError, WireMessage, done, put, take};
use crate::message::{
    CapacityResponse, MAX_HOST_VMS, MAX_REASON, Validate, check_name, check_reason,
    postcard_message,
};
use crate::{Level, VmId};
use serde::{Deserialize, Serialize};

/// The capacity protocol that carries the moving VM (v1: `/scored/capacity/1`).
pub const CAPACITY_PROTOCOL_V2: &str = "/scored/capacity/2";
/// The gossip topic of version 2 announcements ([`GroupsAnnounce`]).
pub const ANNOUNCE_TOPIC_V2: &str = "/scored/announce/2";
/// The capacity protocol whose answer carries the host's CPU count.
pub const CAPACITY_PROTOCOL_V3: &str = "/scored/capacity/3";
/// The version byte of the messages in this module (but [`PlacementResponse`]).
pub const PLACEMENT_VERSION: u8 = 2;
/// The version byte of [`PlacementResponse`].
pub const LOAD_VERSION: u8 = 3;
/// Most groups one VM may be announced or asked about in.
pub const MAX_VM_GROUPS: usize = 16;
/// Longest group name.
pub const MAX_GROUP_NAME: usize = 64;

const REQUEST_FRAME: usize = 4 << 10;
const RESPONSE_FRAME: usize = 1 << 10;
const GROUPS_FRAME: usize = 2 << 20;

/// What a group asks of its members (the rules' `GroupKind`, as the wire writes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GroupKind {
    AntiAffinity,
    Affinity,
}

/// A group as the moving VM's host resolved it: name, kind and scope (a topology level, 0 the
/// host; both sides run the same topology, which the request's fingerprint guarantees).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupRef {
    pub name: String,
    pub kind: GroupKind,
    pub scope: Level,
}

/// The VM a capacity request is about, with its groups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovingVm {
    pub vm: VmId,
    /// Unique names, at most [`MAX_VM_GROUPS`].
    pub groups: Vec<GroupRef>,
}

/// "Could you take this VM of `memory_mib`?": the v1 [`crate::CapacityRequest`] plus the VM.
/// `moving: None` asks for the room alone (a plan's survey, an old peer's request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRequest {
    pub memory_mib: u64,
    pub moving: Option<MovingVm>,
}

impl PlacementRequest {
    /// A request for room alone.
    pub fn room(memory_mib: u64) -> Self {
        PlacementRequest {
            memory_mib,
            moving: None,
        }
    }
}

/// The answer: the room, why a placement rule refuses the VM here (then `accepts` is false),
/// and how many CPUs the host has. The sentence names the rule, the host and the member
/// ("anti-affinity group db, scope host: hv7 runs 10.0.0.2"), at most [`MAX_REASON`] bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacementResponse {
    pub capacity: CapacityResponse,
    pub refused_by_rule: Option<String>,
    /// CPUs of the host (0: it cannot say): with `capacity.cpu_load`, what CPU it has free.
    pub cpus: u32,
}

/// The `/scored/capacity/2` answer: [`PlacementResponse`] without the CPU count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacementResponseV2 {
    pub capacity: CapacityResponse,
    pub refused_by_rule: Option<String>,
}

impl From<PlacementResponse> for PlacementResponseV2 {
    fn from(r: PlacementResponse) -> Self {
        PlacementResponseV2 {
            capacity: r.capacity,
            refused_by_rule: r.refused_by_rule,
        }
    }
}

impl From<PlacementResponseV2> for PlacementResponse {
    /// A v2 peer's answer: its CPUs unknown.
    fn from(r: PlacementResponseV2) -> Self {
        PlacementResponse {
            capacity: r.capacity,
            refused_by_rule: r.refused_by_rule,
            cpus: 0,
        }
    }
}

/// One VM and the groups its own metadata names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmGroups {
    pub vm: VmId,
    /// Unique names, at most [`MAX_VM_GROUPS`].
    pub groups: Vec<String>,
}

/// The metadata groups of `host`'s VMs (only VMs that name any), published with its inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupsAnnounce {
    pub host: String,
    pub vms: Vec<VmGroups>,
}

/// A group name: 1..=64 bytes, no control characters (it is logged and shown).
pub fn check_group_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_GROUP_NAME {
        return Err(format!(
            "group name of {} bytes (must be 1..={MAX_GROUP_NAME})",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("group name {name:?} holds control characters"));
    }
    Ok(())
}

fn check_names<'a>(vm: VmId, names: impl ExactSizeIterator<Item = &'a str>) -> Result<(), String> {
    if names.len() > MAX_VM_GROUPS {
        return Err(format!(
            "VM {vm} in {} groups, more than {MAX_VM_GROUPS}",
            names.len()
        ));
    }
    let mut seen: Vec<&str> = Vec::with_capacity(names.len());
    for n in names {
        check_group_name(n)?;
        if seen.contains(&n) {
            return Err(format!("VM {vm} names group {n:?} twice"));
        }
        seen.push(n);
    }
    Ok(())
}

impl Validate for PlacementRequest {
    fn validate(&self) -> Result<(), String> {
        match &self.moving {
            Some(m) => check_names(m.vm, m.groups.iter().map(|g| g.name.as_str())),
            None => Ok(()),
        }
    }
}

impl Validate for PlacementResponse {
    fn validate(&self) -> Result<(), String> {
        if self.cpus > MAX_CPUS {
            return Err(format!("{} CPUs exceed the limit of {MAX_CPUS}", self.cpus));
        }
        check_answer(&self.capacity, self.refused_by_rule.as_deref())
    }
}

/// Most CPUs a host may report.
pub const MAX_CPUS: u32 = 1 << 16;

impl Validate for PlacementResponseV2 {
    fn validate(&self) -> Result<(), String> {
        check_answer(&self.capacity, self.refused_by_rule.as_deref())
    }
}

/// The room and a rule's refusal, as both versions of the answer carry them.
fn check_answer(c: &CapacityResponse, refused_by_rule: Option<&str>) -> Result<(), String> {
    if !c.cpu_load.is_finite() || c.cpu_load < 0.0 {
        return Err(format!(
            "cpu_load {} is not a finite non-negative number",
            c.cpu_load
        ));
    }
    if let Some(r) = refused_by_rule {
        check_reason(r)?;
        if c.accepts {
            return Err("accepts a VM a rule refuses".into());
        }
    }
    Ok(())
}

impl Validate for GroupsAnnounce {
    fn validate(&self) -> Result<(), String> {
        check_name("host", &self.host)?;
        if self.vms.len() > MAX_HOST_VMS {
            return Err(format!(
                "{} VMs exceed the limit of {MAX_HOST_VMS}",
                self.vms.len()
            ));
        }
        for v in &self.vms {
            check_names(v.vm, v.groups.iter().map(String::as_str))?;
        }
        Ok(())
    }
}

postcard_message!(
    PlacementRequest,
    "capacity request",
    REQUEST_FRAME,
    version = PLACEMENT_VERSION
);
postcard_message!(
    PlacementResponseV2,
    "capacity response",
    RESPONSE_FRAME,
    version = PLACEMENT_VERSION
);
postcard_message!(
    PlacementResponse,
    "capacity response",
    RESPONSE_FRAME,
    version = LOAD_VERSION
);
postcard_message!(
    GroupsAnnounce,
    "groups announcement",
    GROUPS_FRAME,
    version = PLACEMENT_VERSION
);

// The largest request must fit its frame: 16 groups of 64-byte names.
const _: () = assert!(MAX_VM_GROUPS * (MAX_GROUP_NAME + 4) + 32 < REQUEST_FRAME);
const _: () = assert!(MAX_REASON + 64 < RESPONSE_FRAME);
