//! The request-response codec: scored-proto frames over a libp2p stream, for whichever of the
//! five protocols the stream was negotiated for. The protocol picks the message type, so each
//! message keeps its own size limit, and the length prefix is checked against that limit before
//! any body byte is read; the body buffer grows only as bytes arrive, so a peer announcing a
//! large frame and sending nothing costs nothing. A token hand-off is held to what the topology
//! can need (at most [`MAX_HOST_VMS`] slots per host), tighter than the wire's own limit in any
//! cluster of fewer than 32 hosts. Each inbound request holds a permit of the shared
//! [`InboundBudget`] from its first byte until its answer is written, and the bytes of its frame
//! as they arrive: over either, the stream is dropped and reported.
//!
//! libp2p's request-response drops a stream whose request fails to decode without telling the
//! behaviour who sent it, so the codec reports malformed frames itself, naming the peer: each
//! connection's codec is cloned when the connection is established, right after the allowlist
//! (the first behaviour) has recorded which peer it is for. This module never answers a request.

use super::budget::{BytesPermit, InboundBudget, OverBudget, RequestPermit};
use super::capacity_old::{
    capacity_v1, capacity_v2, request_from_v1, request_to_v1, response_from_v1, response_from_v2,
    response_to_v1, response_to_v2,
};
use super::location_old::{self, location_v1};
use super::{Exchange, Kind, RpcRequest, RpcResponse};
use crate::p2p::metrics::P2pMetrics;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::PeerId;
use libp2p::StreamProtocol;
use scored_proto::codec::{LENGTH_PREFIX, decode_payload, frame_len};
use scored_proto::{
    CapacityRequest, CapacityResponse, DecodeError, GroupRequest, LocationQuery, LocationRequest,
    LocationResponse, MAX_HOST_VMS, MAX_TOKEN_FRAME, PlacementRequest, PlacementResponseV2,
    Request, Response, StatsRequest, Token, WireMessage, encode,
};
use std::io;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A request stream a peer opened that this host dropped.
#[derive(Debug)]
pub(crate) struct RefusedFrame {
    pub peer: Option<PeerId>,
    pub protocol: &'static str,
    pub why: Refused,
}

#[derive(Debug)]
pub(crate) enum Refused {
    /// The frame did not decode (or announced more than its limit): the peer misbehaves.
    Malformed(io::Error),
    /// The request would exceed a budget; the peer may be honest but unlucky.
    OverBudget(OverBudget),
}

/// Bytes one token slot may take on the wire at most (sparse id, flags, load, schedule entry),
/// as the wire's own limit assumes: 24 MiB for 2^21 slots.
const TOKEN_SLOT_BYTES: usize = MAX_TOKEN_FRAME >> 21;
/// Room for the token's plain fields and the frame's envelope.
const TOKEN_HEADER_BYTES: usize = 4 << 10;

/// The largest token frame a cluster of `hosts` can need: every host runs at most
/// [`MAX_HOST_VMS`] VMs (it could not report more), so no token lists more slots than that.
pub(crate) fn token_frame_limit(hosts: usize) -> usize {
    hosts
        .saturating_mul(MAX_HOST_VMS)
        .saturating_mul(TOKEN_SLOT_BYTES)
        .saturating_add(TOKEN_HEADER_BYTES)
        .min(<Request<Token> as WireMessage>::MAX_FRAME)
}

/// What codecs share with the swarm: the peer whose connection is being set up, where to
/// report refused streams, the budget of requests in flight, the token frame limit, and the
/// counters of what the budget refuses.
#[derive(Clone)]
pub(crate) struct FrameWatch {
    pub connecting: Arc<Mutex<Option<PeerId>>>,
    pub reports: mpsc::Sender<RefusedFrame>,
    pub budget: Arc<InboundBudget>,
    pub token_frame: usize,
    pub metrics: P2pMetrics,
}

impl FrameWatch {
    pub(crate) fn new(
        capacity: usize,
        budget: Arc<InboundBudget>,
        token_frame: usize,
        metrics: P2pMetrics,
    ) -> (Self, mpsc::Receiver<RefusedFrame>) {
        let (reports, rx) = mpsc::channel(capacity);
        (
            FrameWatch {
                connecting: Arc::new(Mutex::new(None)),
                reports,
                budget,
                token_frame,
                metrics,
            },
            rx,
        )
    }

    pub(crate) fn set_connecting(&self, peer: Option<PeerId>) {
        *self.connecting.lock().unwrap_or_else(|p| p.into_inner()) = peer;
    }
}

/// The codec of every scored request-response protocol. libp2p clones it for each stream and
/// keeps the clone until the stream ends, so an inbound request's permit lives in it.
pub(crate) struct RpcCodec {
    peer: Option<PeerId>,
    watch: FrameWatch,
    permit: Option<RequestPermit>,
}

impl RpcCodec {
    pub(crate) fn new(watch: FrameWatch) -> Self {
        RpcCodec {
            peer: None,
            watch,
            permit: None,
        }
    }

    fn report<T>(&self, kind: Kind, r: io::Result<T>) -> io::Result<T> {
        let (why, error) = match r {
            Err(e) if is_malformed(&e) => {
                // The error goes to the swarm; the stream gets one of the same kind and text.
                let copy = io::Error::new(e.kind(), e.to_string());
                (Refused::Malformed(e), copy)
            }
            Err(e) => match over_budget(&e) {
                Some(over) => {
                    // Counted here, so that a flood larger than the report queue is counted
                    // whole; the swarm only logs it.
                    self.watch.metrics.reject(over.reason());
                    (Refused::OverBudget(over), e)
                }
                None => return Err(e),
            },
            ok => return ok,
        };
        // A full queue means the swarm is already dealing with a flood of refused streams.
        let _ = self.watch.reports.try_send(RefusedFrame {
            peer: self.peer,
            protocol: kind.protocol(),
            why,
        });
        Err(error)
    }

    /// The largest frame of `kind` this host reads.
    fn limit<M: WireMessage>(&self, kind: Kind) -> usize {
        match kind {
            Kind::Token => self.watch.token_frame.min(M::MAX_FRAME),
            _ => M::MAX_FRAME,
        }
    }
}

fn over_budget(e: &io::Error) -> Option<OverBudget> {
    e.get_ref()?.downcast_ref::<OverBudget>().copied()
}

impl Clone for RpcCodec {
    /// The behaviour's codec has no peer; the clone made for a new connection takes the peer
    /// being connected, and clones made per stream keep it.
    fn clone(&self) -> Self {
        let peer = self.peer.or_else(|| {
            *self
                .watch
                .connecting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        });
        RpcCodec {
            peer,
            watch: self.watch.clone(),
            permit: None,
        }
    }
}

/// The kind a stream was negotiated for. Only the five scored protocols are ever registered,
/// so anything else is a bug on this side, not the peer's.
fn kind_of(protocol: &StreamProtocol) -> io::Result<Kind> {
    Kind::from_protocol(protocol.as_ref()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{protocol} is not a scored request-response protocol"),
        )
    })
}

/// Decode failures travel as `InvalidData` so the swarm can tell a misbehaving peer from a
/// broken connection.
fn invalid(e: DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Whether an error from this codec means the peer sent bytes that are not a valid frame.
pub(crate) fn is_malformed(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData
}

/// Bytes read (and held from the budget) at a time while a frame arrives.
const CHUNK: usize = 64 << 10;

/// Reads one frame of at most `limit` bytes (prefix included), holding its bytes from
/// `budget` as they arrive when one is given.
pub(crate) async fn read_frame<M, T>(
    io: &mut T,
    limit: usize,
    mut budget: Option<&mut BytesPermit>,
) -> io::Result<M>
where
    M: WireMessage,
    T: AsyncRead + Unpin + Send,
{
    let mut prefix = [0u8; LENGTH_PREFIX];
    let mut got = 0;
    while got < LENGTH_PREFIX {
        let n = io.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: stream closed before a frame", M::NAME),
                ));
            }
            return Err(invalid(DecodeError::Truncated {
                message: M::NAME,
                expected: LENGTH_PREFIX,
                got,
            }));
        }
        got += n;
    }
    let len = frame_len::<M>(prefix).map_err(invalid)?;
    let max = limit.saturating_sub(LENGTH_PREFIX);
    if len > max {
        return Err(invalid(DecodeError::TooLarge {
            message: M::NAME,
            len: len as u64,
            max,
        }));
    }
    let mut payload = Vec::new();
    while payload.len() < len {
        let start = payload.len();
        let want = (len - start).min(CHUNK);
        if let Some(b) = budget.as_deref_mut() {
            b.hold(start + want).map_err(io::Error::other)?;
        }
        payload.resize(start + want, 0);
        let n = io.read(&mut payload[start..]).await?;
        payload.truncate(start + n);
        if n == 0 {
            return Err(invalid(DecodeError::Truncated {
                message: M::NAME,
                expected: len,
                got: start,
            }));
        }
    }
    // One frame per stream: the sender closes its side after it. Anything more is not ours.
    let mut extra = [0u8; 64];
    let n = io.read(&mut extra).await?;
    if n > 0 {
        return Err(invalid(DecodeError::TrailingBytes {
            message: M::NAME,
            extra: n,
        }));
    }
    decode_payload::<M>(&payload).map_err(invalid)
}

pub(crate) async fn write_frame<M, T>(io: &mut T, m: M) -> io::Result<()>
where
    M: WireMessage,
    T: AsyncWrite + Unpin + Send,
{
    let frame = encode(&m).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    drop(m);
    io.write_all(&frame).await?;
    io.flush().await
}

async fn read_request_of<E: Exchange, T>(
    io: &mut T,
    limit: usize,
    budget: &mut BytesPermit,
) -> io::Result<RpcRequest>
where
    T: AsyncRead + Unpin + Send,
{
    Ok(E::request(
        read_frame::<Request<E>, T>(io, limit, Some(budget)).await?,
    ))
}

/// Answers are read without the budget: each answers a request this host chose to send.
async fn read_response_of<E: Exchange, T>(
    io: &mut T,
    wrap: fn(Response<E::Answer>) -> RpcResponse,
) -> io::Result<RpcResponse>
where
    T: AsyncRead + Unpin + Send,
{
    let limit = <Response<E::Answer> as WireMessage>::MAX_FRAME;
    Ok(wrap(
        read_frame::<Response<E::Answer>, T>(io, limit, None).await?,
    ))
}

/// A message handed to the codec for a stream of another protocol: a bug on this side.
fn wrong_stream(kind: Kind, protocol: &StreamProtocol) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("a {} message on a {protocol} stream", kind.protocol()),
    )
}

impl libp2p::request_response::Codec for RpcCodec {
    type Protocol = StreamProtocol;
    type Request = RpcRequest;
    type Response = RpcResponse;

    async fn read_request<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<RpcRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let kind = kind_of(p)?;
        // Held until this codec (the stream's) is dropped, after the answer is written.
        match self.watch.budget.request(self.peer) {
            Ok(permit) => self.permit = Some(permit),
            Err(over) => return self.report(kind, Err(io::Error::other(over))),
        }
        let mut bytes = self.watch.budget.bytes(self.peer);
        let r = match kind {
            Kind::Token => {
                let limit = self.limit::<Request<Token>>(kind);
                read_request_of::<Token, T>(io, limit, &mut bytes).await
            }
            Kind::Location if location_v1(p) => {
                let limit = self.limit::<Request<LocationRequest>>(kind);
                read_frame::<Request<LocationRequest>, T>(io, limit, Some(&mut bytes))
                    .await
                    .map(location_old::request_from_v1)
            }
            Kind::Location => {
                let limit = self.limit::<Request<LocationQuery>>(kind);
                read_request_of::<LocationQuery, T>(io, limit, &mut bytes).await
            }
            Kind::Capacity if capacity_v1(p) => {
                let limit = self.limit::<Request<CapacityRequest>>(kind);
                read_frame::<Request<CapacityRequest>, T>(io, limit, Some(&mut bytes))
                    .await
                    .map(request_from_v1)
            }
            Kind::Capacity => {
                let limit = self.limit::<Request<PlacementRequest>>(kind);
                read_request_of::<PlacementRequest, T>(io, limit, &mut bytes).await
            }
            Kind::Stats => {
                let limit = self.limit::<Request<StatsRequest>>(kind);
                read_request_of::<StatsRequest, T>(io, limit, &mut bytes).await
            }
            Kind::Group => {
                let limit = self.limit::<Request<GroupRequest>>(kind);
                read_request_of::<GroupRequest, T>(io, limit, &mut bytes).await
            }
        };
        self.report(kind, r)
    }

    async fn read_response<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<RpcResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let kind = kind_of(p)?;
        let r = match kind {
            Kind::Token => read_response_of::<Token, T>(io, RpcResponse::Token).await,
            Kind::Location if location_v1(p) => {
                let limit = <Response<LocationResponse> as WireMessage>::MAX_FRAME;
                read_frame::<Response<LocationResponse>, T>(io, limit, None)
                    .await
                    .map(location_old::response_from_v1)
            }
            Kind::Location => read_response_of::<LocationQuery, T>(io, RpcResponse::Location).await,
            Kind::Capacity if capacity_v1(p) => {
                let limit = <Response<CapacityResponse> as WireMessage>::MAX_FRAME;
                read_frame::<Response<CapacityResponse>, T>(io, limit, None)
                    .await
                    .map(response_from_v1)
            }
            Kind::Capacity if capacity_v2(p) => {
                let limit = <Response<PlacementResponseV2> as WireMessage>::MAX_FRAME;
                read_frame::<Response<PlacementResponseV2>, T>(io, limit, None)
                    .await
                    .map(response_from_v2)
            }
            Kind::Capacity => {
                read_response_of::<PlacementRequest, T>(io, RpcResponse::Capacity).await
            }
            Kind::Stats => read_response_of::<StatsRequest, T>(io, RpcResponse::Stats).await,
            Kind::Group => read_response_of::<GroupRequest, T>(io, RpcResponse::Group).await,
        };
        self.report(kind, r)
    }

    async fn write_request<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        req: RpcRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        if kind_of(p)? != req.kind() {
            return Err(wrong_stream(req.kind(), p));
        }
        match req {
            RpcRequest::Token(r) => write_frame(io, r).await,
            RpcRequest::Location(r) if location_v1(p) => {
                write_frame(io, location_old::request_to_v1(r)).await
            }
            RpcRequest::Location(r) => write_frame(io, r).await,
            RpcRequest::Capacity(r) if capacity_v1(p) => write_frame(io, request_to_v1(r)).await,
            RpcRequest::Capacity(r) => write_frame(io, r).await,
            RpcRequest::Stats(r) => write_frame(io, r).await,
            RpcRequest::Group(r) => write_frame(io, r).await,
        }
    }

    async fn write_response<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        res: RpcResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        if kind_of(p)? != res.kind() {
            return Err(wrong_stream(res.kind(), p));
        }
        match res {
            RpcResponse::Token(r) => write_frame(io, r).await,
            RpcResponse::Location(r) if location_v1(p) => {
                write_frame(io, location_old::response_to_v1(r)).await
            }
            RpcResponse::Location(r) => write_frame(io, r).await,
            RpcResponse::Capacity(r) if capacity_v1(p) => write_frame(io, response_to_v1(r)).await,
            RpcResponse::Capacity(r) if capacity_v2(p) => write_frame(io, response_to_v2(r)).await,
            RpcResponse::Capacity(r) => write_frame(io, r).await,
            RpcResponse::Stats(r) => write_frame(io, r).await,
            RpcResponse::Group(r) => write_frame(io, r).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;

    fn read<M: WireMessage>(bytes: &[u8]) -> io::Result<M> {
        let mut cursor = futures::io::Cursor::new(bytes.to_vec());
        futures::executor::block_on(read_frame::<M, _>(&mut cursor, M::MAX_FRAME, None))
    }

    #[test]
    fn stream_reads_refuse_bad_frames_cleanly() {
        let good = encode(&Request {
            topology: 7,
            body: CapacityRequest { memory_mib: 512 },
        })
        .unwrap();
        assert_eq!(
            read::<Request<CapacityRequest>>(&good)
                .unwrap()
                .body
                .memory_mib,
            512
        );
        // Empty stream: a closed stream, not a malformed frame.
        let e = read::<Request<CapacityRequest>>(&[]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        for bad in [
            &good[..2],                // inside the prefix
            &good[..good.len() - 1],   // inside the body
            &[0xff, 0xff, 0xff, 0xff], // 4 GiB announced
            &[0, 0, 0, 0],             // no version byte
        ] {
            let e = read::<Request<CapacityRequest>>(bad).unwrap_err();
            assert!(is_malformed(&e), "{e}");
        }
        let mut v9 = good.clone();
        v9[LENGTH_PREFIX] = 9;
        let e = read::<Request<CapacityRequest>>(&v9).unwrap_err();
        assert!(
            is_malformed(&e) && e.to_string().contains("version 9"),
            "{e}"
        );
        let mut longer = good.clone();
        longer.push(0);
        let e = read::<Request<CapacityRequest>>(&longer).unwrap_err();
        assert!(
            is_malformed(&e) && e.to_string().contains("unexpected bytes"),
            "{e}"
        );
        // A frame of the wrong protocol is refused, not misread.
        let e = read::<Request<Token>>(&good).unwrap_err();
        assert!(is_malformed(&e), "{e}");
    }

    #[test]
    fn the_token_limit_follows_the_topology_up_to_the_wire_limit() {
        let wire = <Request<Token> as WireMessage>::MAX_FRAME;
        let two = token_frame_limit(2);
        assert!(two < wire / 8, "{two}");
        assert_eq!(token_frame_limit(10_000), wire);
        // Refused from the prefix alone: no body byte is there to read.
        let prefix = (two as u32).to_be_bytes();
        let mut cursor = futures::io::Cursor::new(prefix.to_vec());
        let e =
            futures::executor::block_on(read_frame::<Request<Token>, _>(&mut cursor, two, None))
                .unwrap_err();
        assert!(is_malformed(&e) && e.to_string().contains("limit"), "{e}");
    }

    #[test]
    fn the_stream_protocol_picks_the_message_and_its_limit() {
        let (watch, mut reports) = FrameWatch::new(
            4,
            InboundBudget::new(8, 1 << 20, 1 << 20),
            usize::MAX,
            P2pMetrics::default(),
        );
        let mut codec = RpcCodec::new(watch);
        let capacity = StreamProtocol::new(scored_proto::CAPACITY_PROTOCOL);
        let token = StreamProtocol::new(scored_proto::TOKEN_PROTOCOL);
        let request = RpcRequest::Capacity(Request {
            topology: 7,
            body: PlacementRequest::room(512),
        });
        let mut wire = futures::io::Cursor::new(Vec::new());
        futures::executor::block_on(codec.write_request(&capacity, &mut wire, request)).unwrap();
        let bytes = wire.into_inner();
        // Byte for byte what the proto crate frames: the kind adds nothing on the wire.
        let alone = encode(&Request {
            topology: 7,
            body: CapacityRequest { memory_mib: 512 },
        })
        .unwrap();
        assert_eq!(bytes, alone);
        let mut cursor = futures::io::Cursor::new(bytes.clone());
        match futures::executor::block_on(codec.read_request(&capacity, &mut cursor)).unwrap() {
            RpcRequest::Capacity(r) => assert_eq!(r.body, PlacementRequest::room(512)),
            other => panic!("read as {other:?}"),
        }
        // The same bytes on the token stream are a malformed token, reported with the protocol.
        let mut cursor = futures::io::Cursor::new(bytes);
        let e = futures::executor::block_on(codec.read_request(&token, &mut cursor)).unwrap_err();
        assert!(is_malformed(&e), "{e}");
        let report = reports.try_recv().unwrap();
        assert_eq!(report.protocol, scored_proto::TOKEN_PROTOCOL);
        // A capacity request written on the token stream is this side's bug, not the peer's.
        let mut wire = futures::io::Cursor::new(Vec::new());
        let misrouted = RpcRequest::Capacity(Request {
            topology: 7,
            body: PlacementRequest::room(1),
        });
        let e = futures::executor::block_on(codec.write_request(&token, &mut wire, misrouted))
            .unwrap_err();
        assert!(!is_malformed(&e) && wire.into_inner().is_empty(), "{e}");
        // A token frame longer than a capacity request may be is refused from its prefix alone.
        let oversized = (CapacityRequest::MAX_FRAME as u32 + 100).to_be_bytes();
        let mut cursor = futures::io::Cursor::new(oversized.to_vec());
        let e =
            futures::executor::block_on(codec.read_request(&capacity, &mut cursor)).unwrap_err();
        assert!(is_malformed(&e) && e.to_string().contains("limit"), "{e}");
    }
}
