//! A listed peer gone bad, in a few lines: a libp2p swarm with a host's key that writes raw bytes
//! on the token protocol, so that a test can send what an honest encoder refuses (garbage,
//! truncated or oversized frames, frames never finished). For the transport tests; the
//! cluster-level rogue is `rogue`.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self as rr, ProtocolSupport};
use libp2p::{StreamProtocol, Swarm, noise, tcp, yamux};
use scored_proto::TOKEN_PROTOCOL;
use std::io;
use std::time::Duration;

/// Writes a request's bytes as they are and reads whatever comes back; an empty answer is an
/// error (the other side closed the stream without answering). With `stall`, the request is
/// never finished: after its bytes, one byte every 100 ms for a minute, until the other side
/// gives up on the stream (a listed peer that holds what it is let hold).
#[derive(Clone, Copy, Default)]
pub struct RawCodec {
    pub stall: bool,
}

impl RawCodec {
    pub const STALLING: RawCodec = RawCodec { stall: true };
}

async fn read_all<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    io.read_to_end(&mut v).await?;
    Ok(v)
}

impl rr::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_all(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let v = read_all(io).await?;
        if v.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(v)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await?;
        io.flush().await?;
        if self.stall {
            for _ in 0..600 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                io.write_all(&[0]).await?;
                io.flush().await?;
            }
        }
        Ok(())
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&res).await?;
        io.flush().await
    }
}

pub type RawSwarm = Swarm<rr::Behaviour<RawCodec>>;

/// A swarm with `key` that speaks `codec` on the token protocol, gives up on a request after
/// `request_timeout`, opens as many streams as it likes and never closes an idle connection
/// itself: any close is the other side's doing.
pub fn raw_swarm(key: &Keypair, codec: RawCodec, request_timeout: Duration) -> RawSwarm {
    raw_swarm_on(key, codec, request_timeout, TOKEN_PROTOCOL)
}

/// As [`raw_swarm`], on `protocol` alone (e.g. a peer of an older release that speaks only
/// `/scored/capacity/1`).
pub fn raw_swarm_on(
    key: &Keypair,
    codec: RawCodec,
    request_timeout: Duration,
    protocol: &'static str,
) -> RawSwarm {
    libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, || {
            let mut y = yamux::Config::default();
            y.set_max_num_streams(1024);
            y
        })
        .unwrap()
        .with_behaviour(|_| {
            rr::Behaviour::with_codec(
                codec,
                [(StreamProtocol::new(protocol), ProtocolSupport::Full)],
                rr::Config::default()
                    .with_request_timeout(request_timeout)
                    .with_max_concurrent_streams(10_000),
            )
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Makes `swarm` listen on 127.0.0.1 at `port` (a listed host's `p2p_port`), so that it answers
/// in that host's place.
pub fn listen_as(swarm: &mut RawSwarm, port: u16) {
    swarm
        .listen_on(format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap())
        .unwrap();
}

/// Drives `swarm` (a peer of the previous release, say) until it has both answered one request
/// it received, with `answer` made from the request's bytes, and received the answer to the
/// request it sent itself; returns that answer's bytes. Fails the test after 15 s.
pub async fn answer_one_and_hear_back(
    swarm: &mut RawSwarm,
    mut answer: impl FnMut(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    let (mut answered, mut asked) = (None, false);
    tokio::time::timeout(Duration::from_secs(15), async {
        while answered.is_none() || !asked {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(rr::Event::Message {
                    message: rr::Message::Response { response, .. },
                    ..
                }) => answered = Some(response),
                SwarmEvent::Behaviour(rr::Event::Message {
                    message:
                        rr::Message::Request {
                            request, channel, ..
                        },
                    ..
                }) => {
                    let bytes = answer(&request);
                    swarm.behaviour_mut().send_response(channel, bytes).unwrap();
                    asked = true;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the peer was not asked or not answered");
    answered.unwrap()
}
