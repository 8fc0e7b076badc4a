//! Version 2 of the location protocol (`/scored/location/2`): the asker may ask the answering
//! host for its own inventory along with the answer.
//!
//! A host that has just started knows few inventories, so a lookup of an address no known
//! inventory names asks the hosts whose inventory it does not know. With v1 their answer ("I do
//! not run it") taught the asker nothing more, and the next lookup asked them again. With v2 the
//! asker sets [`LocationQuery::inventory`] for those hosts, and each answers with the list of
//! VMs it runs, exactly as its gossiped inventory would list them: one answer and the host is
//! known.
//!
//! - [`LocationQuery`]: the v1 request's VM ids plus the flag.
//! - [`LocationAnswer`]: the v1 answer (`here`, `moved`) plus the inventory, when asked for.
//!
//! The v1 messages are untouched (their golden vectors stay); the transport converts for a peer
//! that speaks only `/scored/location/1` (the flag is dropped, the answer has no inventory).
//! Frames of these messages carry version byte 2. Like every message here: plain data, bounded
//! before anything is allocated, checked on decode and before encode, never a panic on a peer's
//! bytes.

use crate::VmId;
use crate::codec::{DecodeError, EncodeError, WireMessage, done, put, take};
use crate::message::{
    ANNOUNCE_FRAME, LOCATION_REQUEST_FRAME, LOCATION_RESPONSE_FRAME, Located, LocationRequest,
    LocationResponse, MAX_HOST_VMS, Moved, Validate, put_vm_batch, read_vm_batch,
};

/// The location protocol whose request may ask for the answering host's inventory (v1:
/// `/scored/location/1`).
pub const LOCATION_PROTOCOL_V2: &str = "/scored/location/2";
/// The version byte of [`LocationQuery`] and [`LocationAnswer`].
pub const LOCATION_VERSION: u8 = 2;

/// Bytes one [`Located`] takes at most: a `u32` and two `u64` varints.
const MAX_LOCATED_BYTES: usize = 5 + 10 + 10;
/// Room for the inventory's option tag and length varint.
const INVENTORY_HEADER: usize = 1 + 10;

// The largest inventory fits the room an inventory announcement has, which the answer adds to
// the v1 answer's frame.
const _: () = assert!(MAX_HOST_VMS * MAX_LOCATED_BYTES + INVENTORY_HEADER < ANNOUNCE_FRAME);

/// "Which of these VMs do you run? And (`inventory`) which VMs do you run at all?"
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocationQuery {
    /// Sorted and unique after decoding; any order when encoding. At most
    /// [`crate::message::MAX_LOCATION_BATCH`].
    pub vms: Vec<VmId>,
    /// Answer with this host's inventory too: set for hosts whose inventory the asker does not
    /// know.
    pub inventory: bool,
}

impl LocationQuery {
    /// A question about `vms` alone, as v1 asked it.
    pub fn vms(vms: Vec<VmId>) -> Self {
        LocationQuery {
            vms,
            inventory: false,
        }
    }
}

impl From<LocationRequest> for LocationQuery {
    fn from(r: LocationRequest) -> Self {
        LocationQuery::vms(r.vms)
    }
}

impl From<LocationQuery> for LocationRequest {
    /// What a v1 peer is asked: the flag is dropped.
    fn from(q: LocationQuery) -> Self {
        LocationRequest { vms: q.vms }
    }
}

/// The answer to a [`LocationQuery`]: as v1's [`LocationResponse`] (a VM in neither list is not
/// known to the host), and the host's inventory when it was asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocationAnswer {
    pub here: Vec<Located>,
    pub moved: Vec<Moved>,
    /// Every VM the answering host runs, sorted by id, as its inventory announcement lists
    /// them; at most [`MAX_HOST_VMS`]. `None`: not asked for, or the host cannot say (a v1
    /// peer, an inventory too long for the wire, which gossip would not carry either).
    pub inventory: Option<Vec<Located>>,
}

impl From<LocationResponse> for LocationAnswer {
    /// A v1 peer's answer: no inventory.
    fn from(r: LocationResponse) -> Self {
        LocationAnswer {
            here: r.here,
            moved: r.moved,
            inventory: None,
        }
    }
}

impl From<LocationAnswer> for LocationResponse {
    /// What a v1 peer reads: the inventory is dropped (it did not ask for one).
    fn from(a: LocationAnswer) -> Self {
        LocationResponse {
            here: a.here,
            moved: a.moved,
        }
    }
}

impl Validate for LocationAnswer {
    fn validate(&self) -> Result<(), String> {
        for m in &self.moved {
            crate::message::check_name("moved.to", &m.to)?;
        }
        if let Some(inv) = &self.inventory
            && inv.len() > MAX_HOST_VMS
        {
            return Err(inventory_too_long(inv.len() as u64));
        }
        Ok(())
    }
}

fn inventory_too_long(n: u64) -> String {
    format!("inventory of {n} VMs exceeds the limit of {MAX_HOST_VMS}")
}

/// `inventory:bool | n:varint | idruns` (the v1 request's id set after the flag).
impl WireMessage for LocationQuery {
    const NAME: &'static str = "location request";
    const MAX_FRAME: usize = LOCATION_REQUEST_FRAME;
    const VERSION: u8 = LOCATION_VERSION;

    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        // The batch is checked before anything is written.
        let mut ids = Vec::new();
        put_vm_batch(Self::NAME, &self.vms, &mut ids)?;
        put(Self::NAME, &self.inventory, out)?;
        out.extend_from_slice(&ids);
        Ok(())
    }

    fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let (inventory, rest): (bool, _) = take(Self::NAME, body)?;
        let vms = read_vm_batch(Self::NAME, rest)?;
        Ok(LocationQuery { vms, inventory })
    }
}

/// `here:[Located] | moved:[Moved] | inventory:Option<[Located]>`, postcard throughout. The
/// inventory's length is checked against [`MAX_HOST_VMS`] (and against the bytes left) before
/// its vector is allocated.
impl WireMessage for LocationAnswer {
    const NAME: &'static str = "location response";
    const MAX_FRAME: usize = LOCATION_RESPONSE_FRAME + ANNOUNCE_FRAME;
    const VERSION: u8 = LOCATION_VERSION;

    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.validate().map_err(|reason| EncodeError::Invalid {
            message: Self::NAME,
            reason,
        })?;
        put(Self::NAME, &self.here, out)?;
        put(Self::NAME, &self.moved, out)?;
        put(Self::NAME, &self.inventory, out)
    }

    fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let (here, rest): (Vec<Located>, _) = take(Self::NAME, body)?;
        let (moved, rest): (Vec<Moved>, _) = take(Self::NAME, rest)?;
        let (tag, mut rest): (u8, _) = take(Self::NAME, rest)?;
        let inventory = match tag {
            0 => None,
            1 => {
                let (n, after): (u64, _) = take(Self::NAME, rest)?;
                if n > MAX_HOST_VMS as u64 {
                    return Err(DecodeError::malformed(Self::NAME, inventory_too_long(n)));
                }
                // Each entry takes at least 3 bytes: a count the bytes cannot hold is refused
                // before the vector is allocated.
                if n > (after.len() / 3) as u64 {
                    return Err(DecodeError::malformed(
                        Self::NAME,
                        format!(
                            "inventory of {n} VMs in {} bytes: input ends in the middle",
                            after.len()
                        ),
                    ));
                }
                rest = after;
                let mut vms = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let (l, after): (Located, _) = take(Self::NAME, rest)?;
                    vms.push(l);
                    rest = after;
                }
                Some(vms)
            }
            t => {
                return Err(DecodeError::malformed(
                    Self::NAME,
                    format!("bad option tag {t} for the inventory"),
                ));
            }
        };
        done(Self::NAME, rest)?;
        let a = LocationAnswer {
            here,
            moved,
            inventory,
        };
        a.validate()
            .map_err(|reason| DecodeError::malformed(Self::NAME, reason))?;
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use crate::{Request, Response, Stamp};

    fn widest(i: usize) -> Located {
        Located {
            vm: VmId(u32::MAX - i as u32),
            since: Stamp::new(u64::MAX, u64::MAX),
        }
    }

    #[test]
    fn the_largest_inventory_fits_the_answer_and_one_more_vm_is_refused() {
        let mut a = LocationAnswer {
            here: vec![widest(0)],
            moved: Vec::new(),
            inventory: Some((0..MAX_HOST_VMS).map(widest).collect()),
        };
        let bytes = encode(&Response::Ok(a.clone())).unwrap();
        assert!(bytes.len() <= <Response<LocationAnswer> as WireMessage>::MAX_FRAME);
        assert_eq!(
            decode::<Response<LocationAnswer>>(&bytes).unwrap(),
            Response::Ok(a.clone())
        );
        if let Some(inv) = a.inventory.as_mut() {
            inv.push(widest(0));
        }
        let e = encode(&a).unwrap_err();
        assert!(e.to_string().contains("limit of 65536"), "{e}");
    }

    #[test]
    fn an_inventory_count_over_the_limit_is_refused_before_its_entries_are_read() {
        // An answer with no entry at all behind a count of MAX_HOST_VMS + 1: refused for the
        // count, not for running out of bytes.
        let mut frame = encode(&LocationAnswer::default()).unwrap();
        frame.pop(); // the `None` tag
        frame.push(1);
        crate::compact::put_varint(&mut frame, MAX_HOST_VMS as u64 + 1);
        let len = (frame.len() - crate::codec::LENGTH_PREFIX) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let e = decode::<LocationAnswer>(&frame).unwrap_err();
        assert!(e.to_string().contains("limit of 65536"), "{e}");
        // A count within the limit that the bytes left cannot hold: refused before allocating.
        let mut frame = encode(&LocationAnswer::default()).unwrap();
        frame.pop();
        frame.push(1);
        crate::compact::put_varint(&mut frame, 60_000);
        frame.extend_from_slice(&[0; 5]);
        let len = (frame.len() - crate::codec::LENGTH_PREFIX) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let e = decode::<LocationAnswer>(&frame).unwrap_err();
        assert!(e.to_string().contains("in 5 bytes"), "{e}");
        // A bad option tag.
        let mut frame = encode(&LocationAnswer::default()).unwrap();
        *frame.last_mut().unwrap() = 2;
        let e = decode::<LocationAnswer>(&frame).unwrap_err();
        assert!(e.to_string().contains("option tag 2"), "{e}");
    }

    #[test]
    fn the_query_is_the_v1_id_set_behind_the_flag() {
        let q = LocationQuery {
            vms: vec![VmId(9), VmId(1), VmId(9)],
            inventory: true,
        };
        let bytes = encode(&Request {
            topology: 3,
            body: q.clone(),
        })
        .unwrap();
        let back = decode::<Request<LocationQuery>>(&bytes).unwrap().body;
        assert_eq!(back.vms, vec![VmId(1), VmId(9)]);
        assert!(back.inventory);
        // A v1 reader refuses the frame by its version byte, and a v2 reader a v1 frame.
        let e = decode::<Request<LocationRequest>>(&bytes).unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        let v1 = encode(&Request {
            topology: 3,
            body: LocationRequest::from(q.clone()),
        })
        .unwrap();
        let e = decode::<Request<LocationQuery>>(&v1).unwrap_err();
        assert!(e.to_string().contains("version 1"), "{e}");
        let too_many = LocationQuery {
            vms: (0..=crate::message::MAX_LOCATION_BATCH as u32)
                .map(VmId)
                .collect(),
            inventory: false,
        };
        assert!(encode(&too_many).is_err());
    }
}
