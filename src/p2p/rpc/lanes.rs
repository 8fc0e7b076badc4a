//! The request-response behaviour: one [`Rpc`] that sends any [`RpcRequest`] and reports every
//! request and answer as one kind of event.
//!
//! Inside it is one libp2p request-response lane per protocol id, all sharing the codec and the
//! message types. One lane cannot serve the five: libp2p 0.57's request-response offers every
//! outbound protocol it was built with on each request, and the remote takes the first it
//! supports, so a capacity request would travel on `/scored/token/1`. A lane per id keeps each
//! message on its own protocol, byte for byte as before. This module routes; it never answers.

use super::codec::{FrameWatch, RpcCodec};
use super::{Kind, RpcRequest, RpcResponse};
use libp2p::PeerId;
use libp2p::StreamProtocol;
use libp2p::request_response::{self as rr, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::NetworkBehaviour;
use std::time::Duration;

type Lane = rr::Behaviour<RpcCodec>;

/// Its events are the derived [`RpcEvent`], one variant per lane; [`RpcEvent::split`] tags them
/// with their kind.
#[derive(NetworkBehaviour)]
pub(crate) struct Rpc {
    token: Lane,
    location: Lane,
    capacity: Lane,
    stats: Lane,
    group: Lane,
}

impl Rpc {
    /// `request_timeout` bounds every request inside the swarm, sent or answered (callers
    /// usually give up sooner), except on the group lane, which `move_timeout` bounds when it is
    /// longer: one move of a group move is answered only when its migration ended, minutes later.
    /// `max_requests_per_peer` is what the codec's budget lets one peer have in flight; each
    /// lane allows twice that per connection, so that the budget, which counts and names what
    /// it refuses, is what refuses (libp2p drops a stream over its own bound silently).
    pub(crate) fn new(
        watch: &FrameWatch,
        request_timeout: Duration,
        move_timeout: Duration,
        max_requests_per_peer: usize,
    ) -> Self {
        // A lane offers its versions newest first; the peer takes the first it speaks.
        let lane = |kind: Kind| {
            let timeout = match kind {
                Kind::Group => move_timeout.max(request_timeout),
                _ => request_timeout,
            };
            Lane::with_codec(
                RpcCodec::new(watch.clone()),
                kind.protocols()
                    .iter()
                    .map(|p| (StreamProtocol::new(p), ProtocolSupport::Full)),
                rr::Config::default()
                    .with_request_timeout(timeout)
                    .with_max_concurrent_streams(2 * max_requests_per_peer),
            )
        };
        Rpc {
            token: lane(Kind::Token),
            location: lane(Kind::Location),
            capacity: lane(Kind::Capacity),
            stats: lane(Kind::Stats),
            group: lane(Kind::Group),
        }
    }

    fn lane(&mut self, kind: Kind) -> &mut Lane {
        match kind {
            Kind::Token => &mut self.token,
            Kind::Location => &mut self.location,
            Kind::Capacity => &mut self.capacity,
            Kind::Stats => &mut self.stats,
            Kind::Group => &mut self.group,
        }
    }

    /// Sends `request` on its protocol; the id is unique together with the kind.
    pub(crate) fn send_request(
        &mut self,
        peer: &PeerId,
        request: RpcRequest,
    ) -> (Kind, OutboundRequestId) {
        let kind = request.kind();
        (kind, self.lane(kind).send_request(peer, request))
    }

    /// Answers an inbound request; a peer gone has nothing to read it.
    pub(crate) fn send_response(
        &mut self,
        channel: ResponseChannel<RpcResponse>,
        response: RpcResponse,
    ) {
        let _ = self.lane(response.kind()).send_response(channel, response);
    }
}

impl RpcEvent {
    /// The event and the protocol it happened on.
    pub(crate) fn split(self) -> (Kind, rr::Event<RpcRequest, RpcResponse>) {
        match self {
            RpcEvent::Token(e) => (Kind::Token, e),
            RpcEvent::Location(e) => (Kind::Location, e),
            RpcEvent::Capacity(e) => (Kind::Capacity, e),
            RpcEvent::Stats(e) => (Kind::Stats, e),
            RpcEvent::Group(e) => (Kind::Group, e),
        }
    }
}
