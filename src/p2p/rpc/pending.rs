//! Requests this host sent that await an answer: one map for every kind, settled by the driver
//! when libp2p reports a response or a failure. It only routes outcomes back to the caller that
//! waits on them; turning them into [`PeerError`](crate::p2p::PeerError)s is the service's job.

use super::{Kind, RpcRequest, RpcResponse};
use libp2p::PeerId;
use libp2p::request_response::{OutboundFailure, OutboundRequestId};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Why an outbound request got no response.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RequestFailure {
    #[error("dial failed")]
    DialFailed,
    #[error("connection closed before the answer")]
    ConnectionClosed,
    #[error("no answer within the swarm's request timeout")]
    Timeout,
    #[error("peer does not speak this protocol")]
    Unsupported,
    #[error("stream failed: {0}")]
    Stream(#[source] Arc<std::io::Error>),
    /// The peer answered with a message of another protocol (cannot happen with this codec; kept
    /// so that a future codec bug is an error, not a panic), or answered one of
    /// `/scored/group/1`'s questions with the other's answer (a bug of the peer's): `got` names
    /// the protocol, or the answer it sent.
    #[error("answered with another kind of message: {got}")]
    WrongKind { got: &'static str },
}

impl From<OutboundFailure> for RequestFailure {
    fn from(f: OutboundFailure) -> Self {
        match f {
            OutboundFailure::DialFailure => RequestFailure::DialFailed,
            OutboundFailure::Timeout => RequestFailure::Timeout,
            OutboundFailure::ConnectionClosed => RequestFailure::ConnectionClosed,
            OutboundFailure::UnsupportedProtocols => RequestFailure::Unsupported,
            OutboundFailure::Io(e) => RequestFailure::Stream(Arc::new(e)),
        }
    }
}

/// Where the outcome of one request goes.
pub(crate) type Reply = oneshot::Sender<Result<RpcResponse, RequestFailure>>;

/// A request to send again once, with a dial of its own, if the dial it waited for fails: it
/// was queued while an older dial to its peer was under way, and libp2p fails every request
/// waiting on a peer with that dial, whatever the peer's state now (a node's first finger dials
/// start before its peers listen).
pub(crate) type Retry = (PeerId, RpcRequest);

/// Outbound requests by id. libp2p numbers requests per request-response behaviour, and there
/// is one behaviour per protocol id (see `lanes`), so the kind is part of the key.
#[derive(Default)]
pub(crate) struct Pending(HashMap<(Kind, OutboundRequestId), (Reply, Option<Retry>)>);

impl Pending {
    pub(crate) fn insert(
        &mut self,
        kind: Kind,
        id: OutboundRequestId,
        reply: Reply,
        retry: Option<Retry>,
    ) {
        self.0.insert((kind, id), (reply, retry));
    }

    /// Hands the outcome to whoever waits for it; a caller that gave up is not an error. A
    /// failed dial of a request that may be retried hands the request back instead.
    pub(crate) fn settle(
        &mut self,
        kind: Kind,
        id: OutboundRequestId,
        outcome: Result<RpcResponse, RequestFailure>,
    ) -> Option<(PeerId, RpcRequest, Reply)> {
        let (tx, retry) = self.0.remove(&(kind, id))?;
        match (outcome, retry) {
            (Err(RequestFailure::DialFailed), Some((peer, request))) if !tx.is_closed() => {
                Some((peer, request, tx))
            }
            (outcome, _) => {
                let _ = tx.send(outcome);
                None
            }
        }
    }
}
