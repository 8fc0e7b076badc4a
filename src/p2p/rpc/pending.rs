//! Requests this host sent that await an answer: one map for every kind, settled by the driver
//! when libp2p reports a response or a failure. It only routes outcomes back to the caller that
//! waits on them; turning them into [`PeerError`](crate::p2p::PeerError)s is the service's job.

use super::{Kind, RpcResponse};
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
    /// so that a future codec bug is an error, not a panic).
    #[error("answer of the {got} protocol")]
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

/// Outbound requests by id. libp2p numbers requests per request-response behaviour, and there
/// is one behaviour per protocol id (see `lanes`), so the kind is part of the key.
#[derive(Default)]
pub(crate) struct Pending(HashMap<(Kind, OutboundRequestId), Reply>);

impl Pending {
    pub(crate) fn insert(&mut self, kind: Kind, id: OutboundRequestId, reply: Reply) {
        self.0.insert((kind, id), reply);
    }

    /// Hands the outcome to whoever waits for it; a caller that gave up is not an error.
    pub(crate) fn settle(
        &mut self,
        kind: Kind,
        id: OutboundRequestId,
        outcome: Result<RpcResponse, RequestFailure>,
    ) {
        if let Some(tx) = self.0.remove(&(kind, id)) {
            let _ = tx.send(outcome);
        }
    }
}
