//! The request-response half of the transport: one [`RpcRequest`]/[`RpcResponse`] pair over the
//! five request-response protocols (token, location, capacity, statistics, group moves), the
//! codec that frames them, the map of requests awaiting an answer, the per-peer limit on what a
//! peer may ask, and the budget of requests and bytes in flight.
//!
//! The protocol ids stay on the wire (`/scored/token/1`, …): the [`Kind`] of a message says which
//! one it travels on, and the codec reads and writes the message of the protocol it is given.
//! Capacity speaks three versions: `/scored/capacity/3` answers with the host's CPU count,
//! `/scored/capacity/2` carries the moving VM and its groups, and `/scored/capacity/1` is still
//! offered and answered, the codec converting, for peers that have not been upgraded yet.
//! Location speaks two: `/scored/location/2` may ask for the answering host's inventory, and
//! `/scored/location/1` is still offered and answered the same way.
//! Nothing here decides how to answer: the driver does, from the directory or through the daemon.

mod budget;
mod capacity_old;
mod codec;
mod lanes;
mod location_old;
mod pending;
mod rate_limit;

pub(crate) use budget::InboundBudget;
pub(crate) use codec::{FrameWatch, Refused, RefusedFrame, token_frame_limit};
pub(crate) use lanes::{Rpc, RpcEvent};
pub use pending::RequestFailure;
pub(crate) use pending::{Pending, Reply};
pub(crate) use rate_limit::{Limited, RateLimiter};
pub use rate_limit::{Quota, RateLimits};

use scored_proto::{
    CAPACITY_PROTOCOL, CAPACITY_PROTOCOL_V2, CAPACITY_PROTOCOL_V3, GROUP_PROTOCOL, GroupRequest,
    GroupResponse, LOCATION_PROTOCOL, LOCATION_PROTOCOL_V2, LocationAnswer, LocationQuery,
    MoveResponse, PlacementRequest, PlacementResponse, Refusal, Request, Response, STATS_PROTOCOL,
    StatsRequest, StatsResponse, SurveyResponse, TOKEN_PROTOCOL, Token, TokenAck,
    TopologyFingerprint, WireMessage,
};

/// Which request-response protocol a message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Token,
    Location,
    Capacity,
    Stats,
    /// Group moves (`/scored/group/1`): a survey, or one move of a group move.
    Group,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Token,
        Kind::Location,
        Kind::Capacity,
        Kind::Stats,
        Kind::Group,
    ];

    /// The name of this kind in metric labels, logs and refusals: its first protocol id,
    /// whichever version a stream was negotiated for, so series and alerts keep their names.
    pub fn protocol(self) -> &'static str {
        match self {
            Kind::Token => TOKEN_PROTOCOL,
            Kind::Location => LOCATION_PROTOCOL,
            Kind::Capacity => CAPACITY_PROTOCOL,
            Kind::Stats => STATS_PROTOCOL,
            Kind::Group => GROUP_PROTOCOL,
        }
    }

    /// Every protocol id of this kind this build speaks, newest first: the order a request
    /// offers them in, so a peer that speaks the newest takes it and an older one the one it
    /// knows.
    pub fn protocols(self) -> &'static [&'static str] {
        match self {
            Kind::Token => &[TOKEN_PROTOCOL],
            Kind::Location => &[LOCATION_PROTOCOL_V2, LOCATION_PROTOCOL],
            Kind::Capacity => &[
                CAPACITY_PROTOCOL_V3,
                CAPACITY_PROTOCOL_V2,
                CAPACITY_PROTOCOL,
            ],
            Kind::Stats => &[STATS_PROTOCOL],
            Kind::Group => &[GROUP_PROTOCOL],
        }
    }

    pub fn from_protocol(id: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.protocols().contains(&id))
    }
}

/// A request to a peer, of any of the five kinds.
#[derive(Clone, Debug)]
pub(crate) enum RpcRequest {
    Token(Request<Token>),
    Location(Request<LocationQuery>),
    Capacity(Request<PlacementRequest>),
    Stats(Request<StatsRequest>),
    Group(Request<GroupRequest>),
}

/// A peer's answer; always of the kind of the request it answers (the codec reads it with the
/// request's protocol).
#[derive(Debug)]
pub(crate) enum RpcResponse {
    Token(Response<TokenAck>),
    Location(Response<LocationAnswer>),
    Capacity(Response<PlacementResponse>),
    Stats(Response<StatsResponse>),
    Group(Response<GroupResponse>),
}

impl RpcRequest {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            RpcRequest::Token(_) => Kind::Token,
            RpcRequest::Location(_) => Kind::Location,
            RpcRequest::Capacity(_) => Kind::Capacity,
            RpcRequest::Stats(_) => Kind::Stats,
            RpcRequest::Group(_) => Kind::Group,
        }
    }

    /// The fingerprint of the topology the sender runs with.
    pub(crate) fn topology(&self) -> TopologyFingerprint {
        match self {
            RpcRequest::Token(r) => r.topology,
            RpcRequest::Location(r) => r.topology,
            RpcRequest::Capacity(r) => r.topology,
            RpcRequest::Stats(r) => r.topology,
            RpcRequest::Group(r) => r.topology,
        }
    }
}

impl RpcResponse {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            RpcResponse::Token(_) => Kind::Token,
            RpcResponse::Location(_) => Kind::Location,
            RpcResponse::Capacity(_) => Kind::Capacity,
            RpcResponse::Stats(_) => Kind::Stats,
            RpcResponse::Group(_) => Kind::Group,
        }
    }

    /// The refusal of a request of `kind`.
    pub(crate) fn refused(kind: Kind, refusal: Refusal) -> Self {
        match kind {
            Kind::Token => RpcResponse::Token(Response::Refused(refusal)),
            Kind::Location => RpcResponse::Location(Response::Refused(refusal)),
            Kind::Capacity => RpcResponse::Capacity(Response::Refused(refusal)),
            Kind::Stats => RpcResponse::Stats(Response::Refused(refusal)),
            Kind::Group => RpcResponse::Group(Response::Refused(refusal)),
        }
    }

    /// The daemon's answer to a group survey, as it goes back on `/scored/group/1`.
    pub(crate) fn survey(r: Response<SurveyResponse>) -> Self {
        RpcResponse::Group(in_group(r, GroupResponse::Survey))
    }

    /// The daemon's answer to one move of a group move, as it goes back on `/scored/group/1`.
    pub(crate) fn moved(r: Response<MoveResponse>) -> Self {
        RpcResponse::Group(in_group(r, GroupResponse::Moved))
    }
}

/// An answer to one of the group protocol's questions as the [`GroupResponse`] variant `as_`;
/// a refusal stays a refusal.
fn in_group<T>(r: Response<T>, as_: fn(T) -> GroupResponse) -> Response<GroupResponse> {
    match r {
        Response::Ok(v) => Response::Ok(as_(v)),
        Response::Refused(refusal) => Response::Refused(refusal),
    }
}

/// What a `/scored/group/1` answer answers, for the error about one that answers the other
/// question.
pub(crate) fn group_answer_name(r: &GroupResponse) -> &'static str {
    match r {
        GroupResponse::Survey(_) => SurveyResponse::NAME,
        GroupResponse::Moved(_) => MOVE_RESPONSE,
    }
}

/// What a move request is called in errors: it travels inside a [`GroupRequest`], so it has no
/// [`WireMessage::NAME`] of its own.
pub(crate) const MOVE_REQUEST: &str = "move request";
/// What a move's answer is called in errors, as [`MOVE_REQUEST`].
const MOVE_RESPONSE: &str = "move response";

/// A request body and the answer it gets: how a typed call becomes an [`RpcRequest`] and how
/// its [`RpcResponse`] becomes the typed answer again.
pub(crate) trait Exchange: WireMessage + Send + 'static {
    type Answer: WireMessage + Send + 'static;
    fn request(r: Request<Self>) -> RpcRequest;
    /// The typed answer; `Err` gives back a response of another kind.
    fn answer(r: RpcResponse) -> Result<Response<Self::Answer>, RpcResponse>;
}

macro_rules! exchange {
    ($body:ty, $answer:ty, $kind:ident) => {
        impl Exchange for $body {
            type Answer = $answer;
            fn request(r: Request<Self>) -> RpcRequest {
                RpcRequest::$kind(r)
            }
            fn answer(r: RpcResponse) -> Result<Response<$answer>, RpcResponse> {
                match r {
                    RpcResponse::$kind(a) => Ok(a),
                    other => Err(other),
                }
            }
        }
    };
}

exchange!(Token, TokenAck, Token);
exchange!(LocationQuery, LocationAnswer, Location);
exchange!(PlacementRequest, PlacementResponse, Capacity);
exchange!(StatsRequest, StatsResponse, Stats);
exchange!(GroupRequest, GroupResponse, Group);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_their_protocols_both_ways() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_protocol(k.protocol()), Some(k));
        }
        assert_eq!(Kind::from_protocol("/scored/token/2"), None);
        assert_eq!(Kind::from_protocol(GROUP_PROTOCOL), Some(Kind::Group));
        // A capacity request of any version is a capacity request; the newest is offered first.
        for id in [
            CAPACITY_PROTOCOL,
            CAPACITY_PROTOCOL_V2,
            CAPACITY_PROTOCOL_V3,
        ] {
            assert_eq!(Kind::from_protocol(id), Some(Kind::Capacity));
        }
        assert_eq!(
            Kind::Capacity.protocols(),
            [
                CAPACITY_PROTOCOL_V3,
                CAPACITY_PROTOCOL_V2,
                CAPACITY_PROTOCOL
            ]
        );
        assert_eq!(Kind::Capacity.protocol(), CAPACITY_PROTOCOL);
        // Location: v2 offered first, v1 still spoken; the metrics' name stays v1's.
        assert_eq!(
            Kind::Location.protocols(),
            [LOCATION_PROTOCOL_V2, LOCATION_PROTOCOL]
        );
        assert_eq!(
            Kind::from_protocol(LOCATION_PROTOCOL_V2),
            Some(Kind::Location)
        );
        assert_eq!(Kind::Location.protocol(), LOCATION_PROTOCOL);
        assert_eq!(
            RpcResponse::refused(Kind::Stats, Refusal::Unavailable { reason: "x".into() }).kind(),
            Kind::Stats
        );
    }

    #[test]
    fn the_daemons_group_answers_go_back_as_their_variant() {
        let moved = MoveResponse {
            bytes: 1,
            time_ms: 2,
            downtime_ms: 3,
        };
        assert!(matches!(
            RpcResponse::moved(Response::Ok(moved)),
            RpcResponse::Group(Response::Ok(GroupResponse::Moved(m))) if m == moved
        ));
        let refusal = Refusal::Unavailable {
            reason: "pinned".into(),
        };
        assert!(matches!(
            RpcResponse::survey(Response::Refused(refusal.clone())),
            RpcResponse::Group(Response::Refused(r)) if r == refusal
        ));
        let answer = GroupResponse::Moved(moved);
        assert_eq!(group_answer_name(&answer), "move response");
    }
}
