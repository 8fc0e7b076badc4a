//! The request-response codec: scored-proto frames over a libp2p stream. The length prefix is
//! checked against the message's limit before any body byte is read, and the body buffer grows
//! only as bytes arrive, so a peer announcing a large frame and sending nothing costs nothing.
//!
//! libp2p's request-response drops a stream whose request fails to decode without telling the
//! behaviour who sent it, so the codec reports malformed frames itself, naming the peer: each
//! connection's codec is cloned when the connection is established, right after the allowlist
//! (the first behaviour) has recorded which peer it is for.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::PeerId;
use libp2p::StreamProtocol;
use scored_proto::codec::{LENGTH_PREFIX, decode_payload, frame_len};
use scored_proto::{DecodeError, Protocol, WireMessage, encode};
use std::io;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A frame a peer sent that did not decode.
#[derive(Debug)]
pub(crate) struct MalformedFrame {
    pub peer: Option<PeerId>,
    pub protocol: &'static str,
    pub error: String,
}

/// What codecs share with the swarm: the peer whose connection is being set up, and where to
/// report malformed frames.
#[derive(Clone)]
pub(crate) struct FrameWatch {
    pub connecting: Arc<Mutex<Option<PeerId>>>,
    pub reports: mpsc::Sender<MalformedFrame>,
}

impl FrameWatch {
    pub(crate) fn new(capacity: usize) -> (Self, mpsc::Receiver<MalformedFrame>) {
        let (reports, rx) = mpsc::channel(capacity);
        (
            FrameWatch {
                connecting: Arc::new(Mutex::new(None)),
                reports,
            },
            rx,
        )
    }

    pub(crate) fn set_connecting(&self, peer: Option<PeerId>) {
        *self.connecting.lock().unwrap_or_else(|p| p.into_inner()) = peer;
    }
}

/// Codec for one scored protocol.
pub(crate) struct FrameCodec<P> {
    peer: Option<PeerId>,
    watch: FrameWatch,
    protocol: PhantomData<fn() -> P>,
}

impl<P> FrameCodec<P> {
    pub(crate) fn new(watch: FrameWatch) -> Self {
        FrameCodec {
            peer: None,
            watch,
            protocol: PhantomData,
        }
    }
}

impl<P: Protocol> FrameCodec<P> {
    fn report<T>(&self, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r
            && is_malformed(e)
        {
            // A full queue means the swarm is already disconnecting a flood of bad frames.
            let _ = self.watch.reports.try_send(MalformedFrame {
                peer: self.peer,
                protocol: P::ID,
                error: e.to_string(),
            });
        }
        r
    }
}

impl<P> Clone for FrameCodec<P> {
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
        FrameCodec {
            peer,
            watch: self.watch.clone(),
            protocol: PhantomData,
        }
    }
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

pub(crate) async fn read_frame<M, T>(io: &mut T) -> io::Result<M>
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
    let mut payload = Vec::with_capacity(len.min(64 << 10));
    (&mut *io)
        .take(len as u64)
        .read_to_end(&mut payload)
        .await?;
    if payload.len() < len {
        return Err(invalid(DecodeError::Truncated {
            message: M::NAME,
            expected: len,
            got: payload.len(),
        }));
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

impl<P> libp2p::request_response::Codec for FrameCodec<P>
where
    P: Protocol + Send + 'static,
    P::Request: Send,
    P::Response: Send,
{
    type Protocol = StreamProtocol;
    type Request = P::Request;
    type Response = P::Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<P::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.report(read_frame(io).await)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<P::Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.report(read_frame(io).await)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: P::Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: P::Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scored_proto::{CapacityRequest, Request, TokenProtocol};

    fn read<M: WireMessage>(bytes: &[u8]) -> io::Result<M> {
        let mut cursor = futures::io::Cursor::new(bytes.to_vec());
        futures::executor::block_on(read_frame::<M, _>(&mut cursor))
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
        let e = read::<<TokenProtocol as Protocol>::Request>(&good).unwrap_err();
        assert!(is_malformed(&e), "{e}");
    }
}
