//! `/scored/capacity/1` and `/scored/capacity/2` on a stream the codec reads and writes as
//! version 3: what peers of older releases send and read. The daemon only ever sees
//! [`PlacementRequest`] and [`PlacementResponse`]; this module turns them into the older
//! messages and back. It drops what an older version cannot carry (v1: the moving VM and a
//! rule's sentence; v2: the host's CPU count) and never adds anything.

use super::{RpcRequest, RpcResponse};
use libp2p::StreamProtocol;
use scored_proto::{
    CAPACITY_PROTOCOL, CAPACITY_PROTOCOL_V2, CapacityRequest, CapacityResponse, PlacementRequest,
    PlacementResponse, PlacementResponseV2, Request, Response,
};

/// Whether a capacity stream was negotiated for version 1: a peer not upgraded yet. Its request
/// names no VM (the rules are then the asker's alone) and its answer carries no rule's sentence
/// (a refusal reads as no room, which is what an old asker makes of it).
pub(super) fn capacity_v1(p: &StreamProtocol) -> bool {
    p.as_ref() == CAPACITY_PROTOCOL
}

/// Whether a capacity stream was negotiated for version 2: a peer that knows the placement
/// rules but does not report its CPUs (its answer reads as `cpus: 0`, unknown). The request is
/// the same in both versions.
pub(super) fn capacity_v2(p: &StreamProtocol) -> bool {
    p.as_ref() == CAPACITY_PROTOCOL_V2
}

pub(super) fn response_to_v2(r: Response<PlacementResponse>) -> Response<PlacementResponseV2> {
    r.map(Into::into)
}

pub(super) fn response_from_v2(r: Response<PlacementResponseV2>) -> RpcResponse {
    RpcResponse::Capacity(r.map(Into::into))
}

pub(super) fn request_to_v1(r: Request<PlacementRequest>) -> Request<CapacityRequest> {
    Request {
        topology: r.topology,
        body: CapacityRequest {
            memory_mib: r.body.memory_mib,
        },
    }
}

pub(super) fn request_from_v1(r: Request<CapacityRequest>) -> RpcRequest {
    RpcRequest::Capacity(Request {
        topology: r.topology,
        body: PlacementRequest::room(r.body.memory_mib),
    })
}

pub(super) fn response_to_v1(r: Response<PlacementResponse>) -> Response<CapacityResponse> {
    r.map(|p| p.capacity)
}

pub(super) fn response_from_v1(r: Response<CapacityResponse>) -> RpcResponse {
    RpcResponse::Capacity(r.map(|capacity| PlacementResponse {
        capacity,
        refused_by_rule: None,
        cpus: 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::budget::InboundBudget;
    use super::super::codec::{FrameWatch, RpcCodec};
    use super::*;
    use crate::p2p::metrics::P2pMetrics;
    use libp2p::request_response::Codec;
    use scored_proto::encode;

    #[test]
    fn older_capacity_streams_carry_their_own_messages() {
        let (watch, _reports) = FrameWatch::new(
            4,
            InboundBudget::new(8, 1 << 20, 1 << 20),
            usize::MAX,
            P2pMetrics::default(),
        );
        let mut codec = RpcCodec::new(watch);
        let v1 = StreamProtocol::new(scored_proto::CAPACITY_PROTOCOL);
        let v2 = StreamProtocol::new(scored_proto::CAPACITY_PROTOCOL_V2);
        let moving = PlacementRequest {
            memory_mib: 512,
            moving: Some(scored_proto::MovingVm {
                vm: scored_proto::VmId(7),
                groups: vec![scored_proto::GroupRef {
                    name: "db".into(),
                    kind: scored_proto::GroupKind::AntiAffinity,
                    scope: 0,
                }],
            }),
        };
        let write = |codec: &mut RpcCodec, p: &StreamProtocol, body: PlacementRequest| {
            let mut wire = futures::io::Cursor::new(Vec::new());
            let r = RpcRequest::Capacity(Request { topology: 7, body });
            futures::executor::block_on(codec.write_request(p, &mut wire, r)).unwrap();
            wire.into_inner()
        };
        // An old peer gets the bytes it always got: the VM is not named.
        let old = write(&mut codec, &v1, moving.clone());
        let v1_frame = encode(&Request {
            topology: 7,
            body: CapacityRequest { memory_mib: 512 },
        })
        .unwrap();
        assert_eq!(old, v1_frame);
        // A new peer reads the VM and its group.
        let new = write(&mut codec, &v2, moving.clone());
        let mut cursor = futures::io::Cursor::new(new);
        match futures::executor::block_on(codec.read_request(&v2, &mut cursor)).unwrap() {
            RpcRequest::Capacity(r) => assert_eq!(r.body, moving),
            other => panic!("read as {other:?}"),
        }
        // An old peer's request reads as a request for room alone.
        let mut cursor = futures::io::Cursor::new(old);
        match futures::executor::block_on(codec.read_request(&v1, &mut cursor)).unwrap() {
            RpcRequest::Capacity(r) => assert_eq!(r.body, PlacementRequest::room(512)),
            other => panic!("read as {other:?}"),
        }
        // A rule's refusal, answered to an old peer: no room, which is what it acts on.
        let refused = PlacementResponse {
            capacity: CapacityResponse {
                free_slots: 2,
                free_memory_mib: 4096,
                cpu_load: 0.1,
                maintenance: false,
                incoming_migrations: 0,
                accepts: false,
            },
            refused_by_rule: Some("anti-affinity group db, scope host: h2 runs 10.0.0.9".into()),
            cpus: 24,
        };
        let mut wire = futures::io::Cursor::new(Vec::new());
        let answer = RpcResponse::Capacity(Response::Ok(refused.clone()));
        futures::executor::block_on(codec.write_response(&v1, &mut wire, answer)).unwrap();
        let mut cursor = futures::io::Cursor::new(wire.into_inner());
        match futures::executor::block_on(codec.read_response(&v1, &mut cursor)).unwrap() {
            RpcResponse::Capacity(Response::Ok(r)) => {
                assert!(!r.capacity.accepts);
                assert_eq!(r.refused_by_rule, None);
            }
            other => panic!("read as {other:?}"),
        }
        let mut wire = futures::io::Cursor::new(Vec::new());
        let answer = RpcResponse::Capacity(Response::Ok(refused.clone()));
        futures::executor::block_on(codec.write_response(&v2, &mut wire, answer)).unwrap();
        let mut cursor = futures::io::Cursor::new(wire.into_inner());
        // v2 carries the rule's sentence but not the CPUs: they read as unknown.
        match futures::executor::block_on(codec.read_response(&v2, &mut cursor)).unwrap() {
            RpcResponse::Capacity(Response::Ok(r)) => assert_eq!(
                r,
                PlacementResponse {
                    cpus: 0,
                    ..refused.clone()
                }
            ),
            other => panic!("read as {other:?}"),
        }
        let v3 = StreamProtocol::new(scored_proto::CAPACITY_PROTOCOL_V3);
        let mut wire = futures::io::Cursor::new(Vec::new());
        let answer = RpcResponse::Capacity(Response::Ok(refused.clone()));
        futures::executor::block_on(codec.write_response(&v3, &mut wire, answer)).unwrap();
        let mut cursor = futures::io::Cursor::new(wire.into_inner());
        match futures::executor::block_on(codec.read_response(&v3, &mut cursor)).unwrap() {
            RpcResponse::Capacity(Response::Ok(r)) => assert_eq!(r, refused),
            other => panic!("read as {other:?}"),
        }
    }
}
