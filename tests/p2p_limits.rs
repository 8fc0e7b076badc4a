//! The transport's limits on 127.0.0.1 with real libp2p: outsiders holding half-open
//! handshakes, and a listed peer (its own key, in the topology) flooding streams, bytes and
//! connections, each cut at its limit while an honest peer still hands the token off; a token
//! frame larger than the topology allows refused from its length prefix.

mod support;

use futures::StreamExt;
use libp2p::request_response as rr;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};
use scored::p2p::{Directory, InboundEvent, Libp2pPeers, P2pConfig, Peers};
use scored::topology::HostId;
use scored_proto::{PolicyKind, Request, Token, TokenAck, VmId};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use support::loopback::{Loopback, loopback};
use support::raw_peer::{RawCodec, RawSwarm, raw_swarm};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(10);

/// Starts host `i` with `c`; a stand-in daemon accepts every token and reports it on the
/// returned channel.
async fn start(
    l: &Loopback,
    i: usize,
    c: P2pConfig,
) -> (Libp2pPeers, mpsc::UnboundedReceiver<Token>) {
    let dir = Arc::new(Directory::new(l.topology.clone(), HostId(i as u32)));
    let (peers, mut inbound) = Libp2pPeers::start(c, dir).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = inbound.recv().await {
            if let InboundEvent::Token { token, reply, .. } = e {
                reply.send(TokenAck::Accepted);
                let _ = tx.send(token);
            }
        }
    });
    (peers, rx)
}

fn token(seq: u64) -> Token {
    let mut t = Token::new(
        1,
        PolicyKind::RoundRobin,
        vec![VmId::from_ipv4([10, 0, 0, 1].into())],
    );
    t.seq = seq;
    t
}

/// An honest peer hands `victim` a token and the victim's daemon takes it.
async fn hand_off(
    honest: &Libp2pPeers,
    to: HostId,
    seq: u64,
    taken: &mut mpsc::UnboundedReceiver<Token>,
) {
    let ack = honest.send_token(to, token(seq), T).await;
    assert_eq!(ack.unwrap(), TokenAck::Accepted);
    loop {
        let t = tokio::time::timeout(T, taken.recv())
            .await
            .expect("the victim's daemon got no token")
            .expect("victim stopped");
        if t.seq == seq {
            return;
        }
    }
}

/// Whether the far end closed `s` (the victim dropped a connection it was holding). What the
/// victim may have written first (its multistream-select header) is read and ignored.
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
    false
}

async fn still_held(conns: &mut [TcpStream]) -> usize {
    let mut held = 0;
    for s in conns.iter_mut() {
        if !closed(s).await {
            held += 1;
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_from_outsiders_cannot_lock_a_listed_peer_out() {
    let l = loopback(2);
    let mut c = l.config(0);
    c.limits.max_pending_incoming = 32;
    c.limits.max_pending_incoming_per_ip = 4;
    c.limits.handshake_timeout = Duration::from_secs(15);
    let (victim, mut taken) = start(&l, 0, c).await;
    let (honest, _) = start(&l, 1, l.config(1)).await;
    let target = SocketAddr::from(([127, 0, 0, 1], l.specs[0].port));

    // 20 addresses the topology does not list, 8 raw TCP connections each, never a byte sent.
    let mut conns = Vec::new();
    for a in 2..22u8 {
        for _ in 0..8 {
            let s = TcpSocket::new_v4().unwrap();
            s.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, a), 0)))
                .unwrap();
            conns.push(s.connect(target).await.unwrap());
        }
    }
    // The victim holds no more of them than its limit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut held = still_held(&mut conns).await;
    while held > 32 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        held = still_held(&mut conns).await;
    }
    assert!(held <= 32, "the victim holds {held} half-open connections");
    assert!(victim.metrics().rejected_count("pending_incoming") >= 160 - 32);
    // While the outsider holds what it was let hold, a listed peer connects and hands off.
    hand_off(&honest, HostId(0), 1, &mut taken).await;
    // And what it holds goes at the handshake timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while still_held(&mut conns).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "half-open connections outlive the handshake timeout"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Host h1 gone bad: it speaks `codec` on the token protocol.
fn rogue(l: &Loopback, codec: RawCodec) -> RawSwarm {
    raw_swarm(&l.keys[1], codec, Duration::from_secs(60))
}

/// Sends `n` stalling requests and drives the rogue until at least `failures` of them failed
/// (the victim dropped their streams) or 20 s passed; returns how many failed.
async fn flood(
    rogue: &mut RawSwarm,
    victim: PeerId,
    addr: Multiaddr,
    requests: Vec<Vec<u8>>,
    failures: usize,
) -> usize {
    for r in requests {
        rogue
            .behaviour_mut()
            .send_request_with_addresses(&victim, r, vec![addr.clone()]);
    }
    let mut failed = 0;
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while failed < failures {
            if let SwarmEvent::Behaviour(rr::Event::OutboundFailure { .. }) =
                rogue.select_next_some().await
            {
                failed += 1;
            }
        }
    })
    .await;
    failed
}

/// Keeps the rogue's connections and streams alive while the honest peer works.
fn keep_driving(mut rogue: RawSwarm) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                rogue.select_next_some().await;
            }
        })
        .await;
    })
}

/// A token frame's first bytes, announcing `len` bytes after the prefix, and `body` more.
fn partial_frame(len: u32, body: usize) -> Vec<u8> {
    let mut v = len.to_be_bytes().to_vec();
    v.push(scored_proto::WIRE_VERSION);
    v.resize(4 + body, 0);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_peer_opening_many_streams_is_cut_at_its_request_limit() {
    let l = loopback(3);
    let mut c = l.config(0);
    c.limits.max_requests_per_peer = 8;
    let (victim, mut taken) = start(&l, 0, c).await;
    let (honest, _) = start(&l, 2, l.config(2)).await;
    let mut r = rogue(&l, RawCodec::STALLING);
    // 40 token hand-offs that never finish, on one connection.
    let requests = (0..40).map(|_| partial_frame(1000, 10)).collect();
    let addr = victim.listen_addrs()[0].clone();
    let failed = flood(&mut r, victim.peer_id(), addr, requests, 40 - 8).await;
    assert!(
        failed >= 40 - 8,
        "the victim let {} stalled requests in",
        40 - failed
    );
    assert!(victim.metrics().rejected_count("requests_in_flight") >= 40 - 8);
    let rogue_task = keep_driving(r);
    hand_off(&honest, HostId(0), 1, &mut taken).await;
    rogue_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_peer_sending_large_frames_is_cut_at_its_byte_budget() {
    let l = loopback(3);
    let mut c = l.config(0);
    c.limits.max_inflight_bytes_per_peer = 1 << 20;
    let (victim, mut taken) = start(&l, 0, c).await;
    let (honest, _) = start(&l, 2, l.config(2)).await;
    let mut r = rogue(&l, RawCodec::STALLING);
    // 16 token frames announcing 1 MiB, 256 KiB of each sent: 4 MiB held if let in.
    let requests = (0..16).map(|_| partial_frame(1 << 20, 256 << 10)).collect();
    let addr = victim.listen_addrs()[0].clone();
    let failed = flood(&mut r, victim.peer_id(), addr, requests, 16 - 4).await;
    assert!(
        failed >= 16 - 4,
        "the victim took {} partial frames of 256 KiB",
        16 - failed
    );
    assert!(victim.metrics().rejected_count("inflight_bytes") >= 1);
    let rogue_task = keep_driving(r);
    hand_off(&honest, HostId(0), 1, &mut taken).await;
    rogue_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_peer_opening_many_connections_is_cut_at_the_per_peer_limit() {
    let l = loopback(3);
    let mut c = l.config(0);
    c.limits.max_established_per_peer = 3;
    let (victim, mut taken) = start(&l, 0, c).await;
    let (honest, _) = start(&l, 2, l.config(2)).await;
    let mut r = rogue(&l, RawCodec::STALLING);
    let addr = victim.listen_addrs()[0].clone();
    const DIALS: usize = 10;
    for _ in 0..DIALS {
        r.dial(
            DialOpts::peer_id(victim.peer_id())
                .condition(PeerCondition::Always)
                .addresses(vec![addr.clone()])
                .build(),
        )
        .unwrap();
    }
    // Every dial settles (established, and maybe closed again by the victim, or failed), and
    // what stays open is within the limit.
    let (mut open, mut settled) = (0usize, 0usize);
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while settled < DIALS || open > 3 {
            match r.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => {
                    open += 1;
                    settled += 1;
                }
                SwarmEvent::ConnectionClosed { .. } => open -= 1,
                SwarmEvent::OutgoingConnectionError { .. } => settled += 1,
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(settled, DIALS);
    assert!(open <= 3, "the victim keeps {open} connections to one peer");
    assert!(victim.metrics().rejected_count("connection_limit") >= 1);
    let rogue_task = keep_driving(r);
    hand_off(&honest, HostId(0), 1, &mut taken).await;
    rogue_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_larger_than_the_topology_allows_is_refused_from_its_prefix() {
    let l = loopback(2);
    let (victim, mut taken) = start(&l, 0, l.config(0)).await;
    // Two hosts report at most 2 × 65,536 VMs; this token lists 1.5 million. It is a valid
    // frame under the wire's own 24 MiB limit.
    let vms: Vec<VmId> = (0..1_500_000u32)
        .map(|i| VmId::from_ipv4(Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    let frame = scored_proto::encode(&Request {
        topology: victim.fingerprint(),
        body: Token::new(1, PolicyKind::RoundRobin, vms),
    })
    .unwrap();
    let mut r = rogue(&l, RawCodec::default());
    let addr = victim.listen_addrs()[0].clone();
    r.behaviour_mut()
        .send_request_with_addresses(&victim.peer_id(), frame, vec![addr]);
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match r.select_next_some().await {
                SwarmEvent::Behaviour(rr::Event::OutboundFailure { .. }) => return None,
                SwarmEvent::Behaviour(rr::Event::Message { message, .. }) => return Some(message),
                _ => {}
            }
        }
    })
    .await
    .expect("the victim neither answered nor refused");
    assert!(outcome.is_none(), "the victim answered an oversized token");
    // The victim refuses the stream first and counts in its driver a moment later.
    let counted = tokio::time::timeout(Duration::from_secs(5), async {
        while victim.metrics().malformed_frames.get() < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        counted.is_ok(),
        "the oversized token was not counted as malformed"
    );
    assert!(
        taken.try_recv().is_err(),
        "the oversized token reached the daemon"
    );
}
