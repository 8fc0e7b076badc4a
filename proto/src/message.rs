//! The messages daemons exchange, their protocol ids and their limits.
//!
//! Hosts are named on the wire by their topology host name: stable when the operator adds or
//! reorders hosts (unlike an index), readable in logs and captures, and short (≤ 64 bytes, and
//! it appears only where a message must name a third host). Who *sent* a message is never a
//! field: the transport knows it from the authenticated connection.
//!
//! Every request carries the sender's topology fingerprint; a daemon whose topology differs
//! refuses it with [`Refusal::TopologyMismatch`] rather than computing levels from a different
//! tree.

use crate::codec::{DecodeError, EncodeError, WireMessage, done, put, take};
use crate::compact::{self, Reader};
use crate::{PolicyKind, Token, VmId};
use serde::{Deserialize, Serialize};

pub const TOKEN_PROTOCOL: &str = "/scored/token/1";
pub const LOCATION_PROTOCOL: &str = "/scored/location/1";
pub const CAPACITY_PROTOCOL: &str = "/scored/capacity/1";
pub const STATS_PROTOCOL: &str = "/scored/stats/1";
/// The group-move survey: what a host runs, what each of its VMs is bound to, its room.
pub const GROUP_PROTOCOL: &str = "/scored/group/1";
/// The gossipsub topic migration and inventory announcements travel on.
pub const ANNOUNCE_TOPIC: &str = "/scored/announce/1";
/// The identify protocol version string scored daemons present.
pub const IDENTIFY_PROTOCOL: &str = "/scored/id/1";

/// A token carries at most this many slots (4× the 500,000-VM data centre the original sized
/// its token for).
pub const MAX_TOKEN_SLOTS: usize = 1 << 21;
/// Largest token frame: 2^21 slots of sparse ids (≤ 8 bytes each) plus a full schedule.
pub const MAX_TOKEN_FRAME: usize = 24 << 20;
/// Most VM ids one location request may ask about.
pub const MAX_LOCATION_BATCH: usize = 1 << 16;
/// Most VMs one host reports in an inventory announcement or a statistics response.
pub const MAX_HOST_VMS: usize = 1 << 16;
/// Longest host name (as the topology file allows).
pub const MAX_HOST_NAME: usize = 64;
/// Longest free-text reason in a refusal or a declined token.
pub const MAX_REASON: usize = 256;
/// Most VMs one survey answer describes (a hypervisor runs far fewer).
pub const MAX_SURVEY_VMS: usize = 512;
/// Most partners a survey answer gives one VM: its heaviest.
pub const MAX_SURVEY_PARTNERS: usize = 64;

const SMALL_FRAME: usize = 1 << 10;
pub(crate) const LOCATION_REQUEST_FRAME: usize = 512 << 10;
pub(crate) const LOCATION_RESPONSE_FRAME: usize = 8 << 20;
const STATS_RESPONSE_FRAME: usize = 2 << 20;
/// 512 VMs × (header + 64 partners × (id + rate)) with postcard's varints: ≤ 1 MiB.
const SURVEY_RESPONSE_FRAME: usize = 1 << 20;
pub(crate) const ANNOUNCE_FRAME: usize = 2 << 20;
/// Room for the fingerprint varint of a request envelope or the tag of a response.
const ENVELOPE: usize = 10;

/// Identifies a topology file's content; daemons refuse requests made with another one.
pub type TopologyFingerprint = u64;

/// When a VM arrived where it is: the token (epoch, seq) under which it migrated there, or
/// [`Stamp::ZERO`] if it has been there since before this daemon started. Only the token holder
/// migrates, so stamps order location facts cluster-wide: an older fact never overrides a newer.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Stamp {
    pub epoch: u64,
    pub seq: u64,
}

impl Stamp {
    pub const ZERO: Stamp = Stamp { epoch: 0, seq: 0 };

    pub fn new(epoch: u64, seq: u64) -> Self {
        Stamp { epoch, seq }
    }
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)
    }
}

/// A request with the sender's topology fingerprint.
#[derive(Clone, Debug, PartialEq)]
pub struct Request<T> {
    pub topology: TopologyFingerprint,
    pub body: T,
}

/// A response: the answer, or why the peer refused to give one.
#[derive(Clone, Debug, PartialEq)]
pub enum Response<T> {
    Ok(T),
    Refused(Refusal),
}

impl<T> Response<T> {
    /// The same response with its answer turned into another (another version's), a refusal
    /// kept as it is.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Response<U> {
        match self {
            Response::Ok(a) => Response::Ok(f(a)),
            Response::Refused(r) => Response::Refused(r),
        }
    }
}

/// Why a peer did not answer a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The peer was started with a different topology file (its fingerprint is `expected`).
    TopologyMismatch { expected: TopologyFingerprint },
    /// The peer cannot answer now (its daemon is not ready, busy, or gave no answer).
    Unavailable { reason: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TopologyMismatch { expected } => write!(
                f,
                "different topology file (peer's fingerprint {expected:016x})"
            ),
            Refusal::Unavailable { reason } => write!(f, "unavailable: {reason}"),
        }
    }
}

/// The token receiver's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenAck {
    /// The receiver holds the token now.
    Accepted,
    /// The receiver has seen a newer token (`current`); the one sent was dropped and must not act.
    Fenced { current: Stamp },
    /// The receiver would not take the token (e.g. shutting down); the sender still holds it.
    Declined { reason: String },
}

/// "Which of these VMs do you run?"
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocationRequest {
    /// Sorted and unique after decoding; any order when encoding.
    pub vms: Vec<VmId>,
}

/// A VM the answering host runs, and since when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Located {
    pub vm: VmId,
    pub since: Stamp,
}

/// A VM that left the answering host: "not here any more, it went to `to` at `at`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub vm: VmId,
    pub to: String,
    pub at: Stamp,
}

/// The answer to a [`LocationRequest`]. A VM in neither list is not known to the host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationResponse {
    pub here: Vec<Located>,
    pub moved: Vec<Moved>,
}

/// "Could you take a VM of `memory_mib`?" (0: just report).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityRequest {
    pub memory_mib: u64,
}

/// The original's `<avail_doms> <avail_mem>` and what the safety gates need besides.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapacityResponse {
    /// VMs this host may still take (its topology `max_vms` minus running and incoming).
    pub free_slots: u32,
    /// Memory free for guests after the host's reserve, MiB.
    pub free_memory_mib: u64,
    /// 1-minute load average per CPU.
    pub cpu_load: f32,
    /// The host is in maintenance: never a destination.
    pub maintenance: bool,
    /// Migrations into this host in flight now.
    pub incoming_migrations: u32,
    /// The host would take a VM of the requested memory now.
    pub accepts: bool,
}

/// The global policy's round-start question: "what could each of your VMs gain?"
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsRequest {
    pub epoch: u64,
    pub round: u32,
}

/// One VM's best expected cost reduction (Eq. 3.2 benefit of its best candidate).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmBenefit {
    pub vm: VmId,
    pub benefit: f64,
}

/// What the answering host knows of the token: the newest stamp it saw and how long ago it last
/// heard of it. A host about to regenerate the token reads these first: it mints above every
/// epoch anyone reports, and stands down when someone heard a live token recently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub at: Stamp,
    /// Milliseconds since the token was last heard of (saturating); `None`: never.
    pub idle_ms: Option<u32>,
    /// The answering host holds the token now.
    pub held: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsResponse {
    pub token: TokenView,
    pub benefits: Vec<VmBenefit>,
}

/// "What do you run, what is each VM bound to, and what room have you?" — asked by a token
/// holder planning a group move (`decide::group`) of the hosts of its own rack and of the racks
/// its group would go to. Nothing is held or changed by answering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurveyRequest {
    /// The asker's token (epoch, seq), for the answering host's log.
    pub at: Stamp,
}

/// One VM of a surveyed host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SurveyedVm {
    pub vm: VmId,
    pub memory_mib: u64,
    /// Its host's daemon would let it move now (not pinned, not cooling down, no migration of
    /// it unsettled, the host's window open and the host not in maintenance).
    pub movable: bool,
    /// Its partners and the rates to them (bytes/s), heaviest first, at most
    /// [`MAX_SURVEY_PARTNERS`].
    pub partners: Vec<(VmId, f64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SurveyResponse {
    pub vms: Vec<SurveyedVm>,
    /// The host's room now, as a capacity request naming no VM would hear it.
    pub capacity: CapacityResponse,
    pub cpus: u32,
}

/// "Migrate your VM `vm` to `to` now: one move of the group move I decided holding token
/// `at`." Sent by the token holder to the host of a VM its plan moves; that host checks that
/// the sender holds the token, applies its own gates and the destination's re-check, runs the
/// migration and answers when it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRequest {
    pub vm: VmId,
    /// The destination's host name.
    pub to: String,
    pub at: Stamp,
}

/// A move carried out: how the migration ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveResponse {
    pub bytes: u64,
    pub time_ms: u64,
    pub downtime_ms: u64,
}

/// What a `/scored/group/1` request asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupRequest {
    Survey(SurveyRequest),
    Move(MoveRequest),
}

/// The answer to a [`GroupRequest`], of the same variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GroupResponse {
    Survey(SurveyResponse),
    Moved(MoveResponse),
}

/// A completed migration: `vm` left `from` for `to` under token `at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationAnnounce {
    pub vm: VmId,
    pub from: String,
    pub to: String,
    pub at: Stamp,
}

/// What gossip carries. Receivers check that the author (the signed gossip source) is the host
/// the announcement speaks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Announcement {
    Migration(MigrationAnnounce),
    /// A host's VMs, published at start and now and then, so peers' location caches start warm.
    Inventory {
        host: String,
        vms: Vec<Located>,
    },
    /// The token is held at `host` under `at`: published by the holder when the token arrives
    /// and periodically while it holds it (a long migration). Every host resets its loss
    /// detector on it, and a host still holding an older epoch learns it has been fenced.
    TokenSeen {
        host: String,
        at: Stamp,
        /// The token's round (completed passes), so hosts can pace rounds.
        round: u32,
    },
}

pub(crate) fn check_name(field: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_HOST_NAME {
        return Err(format!(
            "{field}: host name of {} bytes (must be 1..={MAX_HOST_NAME})",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "{field}: host name {name:?} has characters a topology file cannot hold"
        ));
    }
    Ok(())
}

pub(crate) fn check_reason(reason: &str) -> Result<(), String> {
    if reason.len() > MAX_REASON {
        return Err(format!(
            "reason of {} bytes exceeds {MAX_REASON}",
            reason.len()
        ));
    }
    Ok(())
}

/// Checks that a decoded value makes sense beyond its encoding; also run before encoding so
/// that what we send would be accepted.
pub(crate) trait Validate {
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Validate for Refusal {
    fn validate(&self) -> Result<(), String> {
        match self {
            Refusal::TopologyMismatch { .. } => Ok(()),
            Refusal::Unavailable { reason } => check_reason(reason),
        }
    }
}

impl Validate for TokenAck {
    fn validate(&self) -> Result<(), String> {
        match self {
            TokenAck::Declined { reason } => check_reason(reason),
            _ => Ok(()),
        }
    }
}

impl Validate for LocationResponse {
    fn validate(&self) -> Result<(), String> {
        for m in &self.moved {
            check_name("moved.to", &m.to)?;
        }
        Ok(())
    }
}

impl Validate for CapacityRequest {}

impl Validate for CapacityResponse {
    fn validate(&self) -> Result<(), String> {
        if !self.cpu_load.is_finite() || self.cpu_load < 0.0 {
            return Err(format!(
                "cpu_load {} is not a finite non-negative number",
                self.cpu_load
            ));
        }
        Ok(())
    }
}

impl Validate for StatsRequest {}

impl Validate for StatsResponse {
    fn validate(&self) -> Result<(), String> {
        if self.benefits.len() > MAX_HOST_VMS {
            return Err(format!(
                "{} VMs exceed the limit of {MAX_HOST_VMS}",
                self.benefits.len()
            ));
        }
        if let Some(b) = self.benefits.iter().find(|b| !b.benefit.is_finite()) {
            return Err(format!("benefit of VM {} is {}", b.vm, b.benefit));
        }
        Ok(())
    }
}

impl Validate for SurveyRequest {}

impl Validate for MoveRequest {
    fn validate(&self) -> Result<(), String> {
        check_name("to", &self.to)
    }
}

impl Validate for GroupRequest {
    fn validate(&self) -> Result<(), String> {
        match self {
            GroupRequest::Survey(r) => r.validate(),
            GroupRequest::Move(r) => r.validate(),
        }
    }
}

impl Validate for GroupResponse {
    fn validate(&self) -> Result<(), String> {
        match self {
            GroupResponse::Survey(r) => r.validate(),
            GroupResponse::Moved(_) => Ok(()),
        }
    }
}

impl Validate for SurveyResponse {
    fn validate(&self) -> Result<(), String> {
        self.capacity.validate()?;
        if self.vms.len() > MAX_SURVEY_VMS {
            return Err(format!(
                "{} VMs exceed the survey limit of {MAX_SURVEY_VMS}",
                self.vms.len()
            ));
        }
        for v in &self.vms {
            if v.partners.len() > MAX_SURVEY_PARTNERS {
                return Err(format!(
                    "VM {}: {} partners exceed the survey limit of {MAX_SURVEY_PARTNERS}",
                    v.vm,
                    v.partners.len()
                ));
            }
            if let Some((p, r)) = v.partners.iter().find(|(_, r)| !r.is_finite() || *r < 0.0) {
                return Err(format!("VM {}: rate {r} to {p}", v.vm));
            }
        }
        Ok(())
    }
}

impl Validate for Announcement {
    fn validate(&self) -> Result<(), String> {
        match self {
            Announcement::Migration(m) => {
                check_name("from", &m.from)?;
                check_name("to", &m.to)?;
                if m.from == m.to {
                    return Err(format!("VM {} moves from {} to itself", m.vm, m.from));
                }
                Ok(())
            }
            Announcement::Inventory { host, vms } => {
                check_name("host", host)?;
                if vms.len() > MAX_HOST_VMS {
                    return Err(format!(
                        "{} VMs exceed the limit of {MAX_HOST_VMS}",
                        vms.len()
                    ));
                }
                Ok(())
            }
            Announcement::TokenSeen { host, .. } => check_name("host", host),
        }
    }
}

/// Messages whose body is plain postcard, checked by [`Validate`] both ways; `version = V` for a
/// message of a protocol's later version (its frames carry `V`).
macro_rules! postcard_message {
    ($t:ty, $name:expr, $max:expr) => {
        postcard_message!($t, $name, $max, version = $crate::codec::WIRE_VERSION);
    };
    ($t:ty, $name:expr, $max:expr, version = $v:expr) => {
        impl WireMessage for $t {
            const NAME: &'static str = $name;
            const MAX_FRAME: usize = $max;
            const VERSION: u8 = $v;

            fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
                self.validate().map_err(|reason| EncodeError::Invalid {
                    message: Self::NAME,
                    reason,
                })?;
                put(Self::NAME, self, out)
            }

            fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
                let (v, rest): ($t, _) = take(Self::NAME, body)?;
                done(Self::NAME, rest)?;
                v.validate()
                    .map_err(|reason| DecodeError::malformed(Self::NAME, reason))?;
                Ok(v)
            }
        }
    };
}
pub(crate) use postcard_message;

postcard_message!(TokenAck, "token ack", SMALL_FRAME);
postcard_message!(
    LocationResponse,
    "location response",
    LOCATION_RESPONSE_FRAME
);
postcard_message!(CapacityRequest, "capacity request", SMALL_FRAME);
postcard_message!(CapacityResponse, "capacity response", SMALL_FRAME);
postcard_message!(StatsRequest, "statistics request", SMALL_FRAME);
postcard_message!(StatsResponse, "statistics response", STATS_RESPONSE_FRAME);
postcard_message!(SurveyRequest, "survey request", SMALL_FRAME);
postcard_message!(SurveyResponse, "survey response", SURVEY_RESPONSE_FRAME);
postcard_message!(GroupRequest, "group request", SMALL_FRAME);
postcard_message!(
    GroupResponse,
    "group response",
    SURVEY_RESPONSE_FRAME + ENVELOPE
);
postcard_message!(Announcement, "announcement", ANNOUNCE_FRAME);

/// A location request's VM ids (both versions): at most [`MAX_LOCATION_BATCH`], as id runs.
pub(crate) fn put_vm_batch(
    message: &'static str,
    vms: &[VmId],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    if vms.len() > MAX_LOCATION_BATCH {
        return Err(EncodeError::Invalid {
            message,
            reason: format!(
                "{} VMs exceed the batch limit of {MAX_LOCATION_BATCH}",
                vms.len()
            ),
        });
    }
    compact::put_id_set(out, vms);
    Ok(())
}

/// Reads what [`put_vm_batch`] wrote, which must be the rest of the body.
pub(crate) fn read_vm_batch(message: &'static str, body: &[u8]) -> Result<Vec<VmId>, DecodeError> {
    let mut r = Reader::new(body);
    let vms = compact::read_id_set(&mut r, MAX_LOCATION_BATCH, "VM ids")
        .map_err(|m| DecodeError::from_compact(message, m))?;
    done(message, r.rest())?;
    Ok(vms)
}

impl WireMessage for LocationRequest {
    const NAME: &'static str = "location request";
    const MAX_FRAME: usize = LOCATION_REQUEST_FRAME;

    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        put_vm_batch(Self::NAME, &self.vms, out)
    }

    fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let vms = read_vm_batch(Self::NAME, body)?;
        Ok(LocationRequest { vms })
    }
}

/// The token's plain fields, in the order they travel.
type TokenHeader = (u64, u64, PolicyKind, u32, Option<VmId>);

/// The token hand-off body: the plain fields as postcard, then the packed slots and schedule
/// (see `compact`). A dense-id data centre costs about 2 bytes per VM.
impl WireMessage for Token {
    const NAME: &'static str = "token hand-off";
    const MAX_FRAME: usize = MAX_TOKEN_FRAME;

    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let invalid = |m: compact::Malformed| EncodeError::Invalid {
            message: Self::NAME,
            reason: m.0,
        };
        if self.slots.len() > MAX_TOKEN_SLOTS {
            return Err(EncodeError::Invalid {
                message: Self::NAME,
                reason: format!(
                    "{} slots exceed the limit of {MAX_TOKEN_SLOTS}",
                    self.slots.len()
                ),
            });
        }
        let header: TokenHeader = (self.epoch, self.seq, self.policy, self.round, self.holder);
        put(Self::NAME, &header, out)?;
        compact::put_slots(out, &self.slots).map_err(invalid)?;
        compact::put_schedule(out, &self.schedule, &self.slots).map_err(invalid)?;
        Ok(())
    }

    fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let bad = |m| DecodeError::from_compact(Self::NAME, m);
        let ((epoch, seq, policy, round, holder), rest): (TokenHeader, _) = take(Self::NAME, body)?;
        let mut r = Reader::new(rest);
        let slots = compact::read_slots(&mut r, MAX_TOKEN_SLOTS).map_err(bad)?;
        let schedule = compact::read_schedule(&mut r, &slots).map_err(bad)?;
        done(Self::NAME, r.rest())?;
        Ok(Token {
            epoch,
            seq,
            policy,
            round,
            holder,
            slots,
            schedule,
        })
    }
}

impl<T: WireMessage> WireMessage for Request<T> {
    const NAME: &'static str = T::NAME;
    const MAX_FRAME: usize = T::MAX_FRAME + ENVELOPE;
    const VERSION: u8 = T::VERSION;

    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        put(Self::NAME, &self.topology, out)?;
        self.body.encode_body(out)
    }

    fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let (topology, rest): (u64, _) = take(Self::NAME, body)?;
        Ok(Request {
            topology,
            body: T::decode_body(rest)?,
        })
    }
}

impl<T: WireMessage> WireMessage for Response<T> {
    const NAME: &'static str = T::NAME;
    const MAX_FRAME: usize = if T::MAX_FRAME > SMALL_FRAME {
        T::MAX_FRAME + ENVELOPE
    } else {
        SMALL_FRAME + ENVELOPE
    };
    const VERSION: u8 = T::VERSION;

    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Response::Ok(v) => {
                out.push(0);
                v.encode_body(out)
            }
            Response::Refused(r) => {
                r.validate().map_err(|reason| EncodeError::Invalid {
                    message: Self::NAME,
                    reason,
                })?;
                out.push(1);
                put(Self::NAME, r, out)
            }
        }
    }

    fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        match body.split_first() {
            Some((0, rest)) => Ok(Response::Ok(T::decode_body(rest)?)),
            Some((1, rest)) => {
                let (r, rest): (Refusal, _) = take(Self::NAME, rest)?;
                done(Self::NAME, rest)?;
                r.validate()
                    .map_err(|reason| DecodeError::malformed(Self::NAME, reason))?;
                Ok(Response::Refused(r))
            }
            Some((t, _)) => Err(DecodeError::malformed(
                Self::NAME,
                format!("unknown response tag {t}"),
            )),
            None => Err(DecodeError::malformed(Self::NAME, "empty response body")),
        }
    }
}

/// Request and response types of one request-response protocol.
pub trait Protocol {
    const ID: &'static str;
    type Request: WireMessage;
    type Response: WireMessage;
}

macro_rules! protocol {
    ($name:ident, $id:expr, $req:ty, $resp:ty) => {
        pub struct $name;
        impl Protocol for $name {
            const ID: &'static str = $id;
            type Request = Request<$req>;
            type Response = Response<$resp>;
        }
    };
}

protocol!(TokenProtocol, TOKEN_PROTOCOL, Token, TokenAck);
protocol!(
    LocationProtocol,
    LOCATION_PROTOCOL,
    LocationRequest,
    LocationResponse
);
protocol!(
    CapacityProtocol,
    CAPACITY_PROTOCOL,
    CapacityRequest,
    CapacityResponse
);
protocol!(StatsProtocol, STATS_PROTOCOL, StatsRequest, StatsResponse);
protocol!(GroupProtocol, GROUP_PROTOCOL, GroupRequest, GroupResponse);
protocol!(
    LocationProtocolV2,
    crate::LOCATION_PROTOCOL_V2,
    crate::LocationQuery,
    crate::LocationAnswer
);
