//! `/scored/location/1` on a stream the codec otherwise reads and writes as version 2: what peers
//! of the previous release send and read. The driver and the directory only ever see
//! [`LocationQuery`] and [`LocationAnswer`]; this module turns them into the v1 messages and
//! back. A v1 request cannot ask for an inventory, so it reads as a question about its VMs alone
//! (and the answer to it carries none); a v1 answer reads as one without an inventory. Nothing
//! is ever added.

use super::{RpcRequest, RpcResponse};
use libp2p::StreamProtocol;
use scored_proto::{
    LOCATION_PROTOCOL, LocationAnswer, LocationQuery, LocationRequest, LocationResponse, Request,
    Response,
};

/// Whether a location stream was negotiated for version 1: a peer not upgraded yet.
pub(super) fn location_v1(p: &StreamProtocol) -> bool {
    p.as_ref() == LOCATION_PROTOCOL
}

pub(super) fn request_to_v1(r: Request<LocationQuery>) -> Request<LocationRequest> {
    Request {
        topology: r.topology,
        body: r.body.into(),
    }
}

pub(super) fn request_from_v1(r: Request<LocationRequest>) -> RpcRequest {
    RpcRequest::Location(Request {
        topology: r.topology,
        body: r.body.into(),
    })
}

pub(super) fn response_to_v1(r: Response<LocationAnswer>) -> Response<LocationResponse> {
    r.map(Into::into)
}

pub(super) fn response_from_v1(r: Response<LocationResponse>) -> RpcResponse {
    RpcResponse::Location(r.map(Into::into))
}

#[cfg(test)]
mod tests {
    use super::super::budget::InboundBudget;
    use super::super::codec::{FrameWatch, RpcCodec, is_malformed};
    use super::*;
    use crate::p2p::metrics::P2pMetrics;
    use futures::executor::block_on;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;
    use scored_proto::{
        LOCATION_PROTOCOL_V2, Located, MAX_HOST_VMS, Moved, Stamp, VmId, WireMessage, encode,
    };

    fn codec() -> RpcCodec {
        let (watch, _reports) = FrameWatch::new(
            4,
            InboundBudget::new(8, 1 << 20, 1 << 20),
            usize::MAX,
            P2pMetrics::default(),
        );
        RpcCodec::new(watch)
    }

    fn answer() -> LocationAnswer {
        LocationAnswer {
            here: vec![Located {
                vm: VmId(7),
                since: Stamp::new(1, 2),
            }],
            moved: vec![Moved {
                vm: VmId(9),
                to: "h2".into(),
                at: Stamp::new(1, 3),
            }],
            inventory: Some(vec![
                Located {
                    vm: VmId(7),
                    since: Stamp::new(1, 2),
                },
                Located {
                    vm: VmId(8),
                    since: Stamp::ZERO,
                },
            ]),
        }
    }

    fn write_request(codec: &mut RpcCodec, p: &StreamProtocol, body: LocationQuery) -> Vec<u8> {
        let mut wire = Cursor::new(Vec::new());
        let r = RpcRequest::Location(Request { topology: 7, body });
        block_on(codec.write_request(p, &mut wire, r)).unwrap();
        wire.into_inner()
    }

    fn write_answer(codec: &mut RpcCodec, p: &StreamProtocol, a: LocationAnswer) -> Vec<u8> {
        let mut wire = Cursor::new(Vec::new());
        let r = RpcResponse::Location(Response::Ok(a));
        block_on(codec.write_response(p, &mut wire, r)).unwrap();
        wire.into_inner()
    }

    fn read_answer(codec: &mut RpcCodec, p: &StreamProtocol, bytes: Vec<u8>) -> LocationAnswer {
        match block_on(codec.read_response(p, &mut Cursor::new(bytes))).unwrap() {
            RpcResponse::Location(Response::Ok(a)) => a,
            other => panic!("read as {other:?}"),
        }
    }

    #[test]
    fn a_v1_peer_is_asked_and_answered_in_v1_without_an_inventory() {
        let mut codec = codec();
        let v1 = StreamProtocol::new(LOCATION_PROTOCOL);
        let v2 = StreamProtocol::new(LOCATION_PROTOCOL_V2);
        let query = LocationQuery {
            vms: vec![VmId(7), VmId(9)],
            inventory: true,
        };
        // An old peer gets the bytes it always got: the flag is dropped.
        let old = write_request(&mut codec, &v1, query.clone());
        let v1_frame = encode(&Request {
            topology: 7,
            body: LocationRequest {
                vms: vec![VmId(7), VmId(9)],
            },
        })
        .unwrap();
        assert_eq!(old, v1_frame);
        // An old peer's request reads as a question about its VMs alone.
        match block_on(codec.read_request(&v1, &mut Cursor::new(old))).unwrap() {
            RpcRequest::Location(r) => assert_eq!(r.body, LocationQuery::vms(query.vms.clone())),
            other => panic!("read as {other:?}"),
        }
        // A new peer reads the flag.
        let new = write_request(&mut codec, &v2, query.clone());
        match block_on(codec.read_request(&v2, &mut Cursor::new(new))).unwrap() {
            RpcRequest::Location(r) => assert_eq!(r.body, query),
            other => panic!("read as {other:?}"),
        }
        // The answer to an old peer is the v1 answer, byte for byte; a new peer's keeps the
        // inventory.
        let bytes = write_answer(&mut codec, &v1, answer());
        let v1_answer = encode(&Response::Ok(LocationResponse::from(answer()))).unwrap();
        assert_eq!(bytes, v1_answer);
        let read = read_answer(&mut codec, &v1, bytes);
        assert_eq!(
            read,
            LocationAnswer {
                inventory: None,
                ..answer()
            }
        );
        let bytes = write_answer(&mut codec, &v2, answer());
        assert_eq!(read_answer(&mut codec, &v2, bytes), answer());
    }

    #[test]
    fn an_oversized_v2_answer_is_refused_before_its_body_is_read() {
        let mut codec = codec();
        let v2 = StreamProtocol::new(LOCATION_PROTOCOL_V2);
        let v1 = StreamProtocol::new(LOCATION_PROTOCOL);
        // A prefix one byte over the v2 answer's limit, and no body: refused from the prefix.
        let over = <Response<LocationAnswer> as WireMessage>::MAX_FRAME - 3;
        let prefix = (over as u32).to_be_bytes().to_vec();
        let e = block_on(codec.read_response(&v2, &mut Cursor::new(prefix.clone()))).unwrap_err();
        assert!(is_malformed(&e) && e.to_string().contains("limit"), "{e}");
        // The v2 limit does not stretch the v1 one: v1 answers carry no inventory.
        let v1_over = <Response<LocationResponse> as WireMessage>::MAX_FRAME - 3;
        let prefix = (v1_over as u32).to_be_bytes().to_vec();
        let e = block_on(codec.read_response(&v1, &mut Cursor::new(prefix))).unwrap_err();
        assert!(is_malformed(&e) && e.to_string().contains("limit"), "{e}");
        // An inventory count over the limit, whatever follows: refused, never allocated.
        let mut frame = encode(&Response::Ok(LocationAnswer {
            inventory: Some(Vec::new()),
            ..LocationAnswer::default()
        }))
        .unwrap();
        frame.pop();
        frame.extend_from_slice(&[0x81, 0x80, 0x04]); // 65,537 = MAX_HOST_VMS + 1
        assert_eq!(MAX_HOST_VMS + 1, 65_537);
        frame.extend(std::iter::repeat_n(0u8, 16));
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let e = block_on(codec.read_response(&v2, &mut Cursor::new(frame))).unwrap_err();
        assert!(is_malformed(&e) && e.to_string().contains("65537"), "{e}");
        // This host never writes one either.
        let mut too_long = answer();
        too_long.inventory = Some(
            (0..=MAX_HOST_VMS as u32)
                .map(|i| Located {
                    vm: VmId(i),
                    since: Stamp::ZERO,
                })
                .collect(),
        );
        let mut wire = Cursor::new(Vec::new());
        let r = RpcResponse::Location(Response::Ok(too_long));
        let e = block_on(codec.write_response(&v2, &mut wire, r)).unwrap_err();
        assert!(!is_malformed(&e), "{e}");
    }
}
