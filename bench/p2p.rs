//! Targets of issue 5, measured on loopback with the real transport (TCP + Noise + Yamux):
//! - token hand-off round trip between two daemons: p50 ≤ 1 ms, p99 ≤ 5 ms;
//! - encode + decode of a 500,000-slot token: ≤ 10 ms, wire ≤ 1.5 MB (original: 2.5 MB);
//! - location query for 1,000 VMs spread over 8 peers: ≤ 10 ms.
//!
//! `cargo bench --bench p2p`. Besides criterion's estimates, the hand-off percentiles and wire
//! sizes are printed as `p2p-figure:` lines for docs/evaluation.md.

#[path = "../tests/support/host.rs"]
#[allow(dead_code)]
mod host;
#[path = "../tests/support/loopback.rs"]
#[allow(dead_code)]
mod loopback;

use criterion::{Criterion, criterion_group, criterion_main};
use scored::p2p::{Directory, InboundEvent, Libp2pPeers, LocateOptions, P2pConfig, Peers, Quota};
use scored::topology::HostId;
use scored_proto::{PolicyKind, Request, Stamp, Token, TokenAck, VmId, decode, encode};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `n` slots with dense ids from 10.0.0.0/8 (each /24 without .0 and .255), varied fields.
fn dense_token(n: usize) -> Token {
    let mut ids = Vec::with_capacity(n);
    let mut a = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0));
    while ids.len() < n {
        if !matches!(a & 0xff, 0 | 255) {
            ids.push(VmId(a));
        }
        a += 1;
    }
    let mut t = Token::new(4, PolicyKind::LoadAware, ids);
    for (i, s) in t.slots.iter_mut().enumerate() {
        s.level = (i % 5) as u8;
        s.visited = i % 3 == 0;
        s.load = (i.wrapping_mul(2_654_435_761) >> 11) as u8;
    }
    t.seq = 77;
    t.holder = Some(t.slots[n / 3].vm);
    t
}

async fn node(
    l: &loopback::Loopback,
    i: usize,
    vms: impl IntoIterator<Item = VmId>,
) -> (Libp2pPeers, scored::p2p::Inbound) {
    let dir = Arc::new(Directory::new(l.topology.clone(), HostId(i as u32)));
    dir.set_local(vms.into_iter().map(|v| (v, Stamp::ZERO)));
    let mut c = P2pConfig::new(l.keys[i].clone(), l.topology.clone(), HostId(i as u32));
    // No gossip traffic during the measurements beyond the mesh's own heartbeats.
    c.inventory_interval = None;
    // Hand-offs to one peer back to back with an instant acknowledgement (≈ 4,000/s) are this
    // benchmark's load, not a cluster's: the token's default allowance is 2,000/s per peer.
    c.rate_limits.token = Quota {
        burst: 64,
        per_second: 1_000_000,
    };
    Libp2pPeers::start(c, dir).await.unwrap()
}

/// A daemon that acknowledges every token at once.
fn acker(mut inbound: scored::p2p::Inbound) {
    tokio::spawn(async move {
        while let Some(e) = inbound.recv().await {
            if let InboundEvent::Token { reply, .. } = e {
                reply.send(TokenAck::Accepted);
            }
        }
    });
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn handoff(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let l = loopback::loopback(2);
    let (a, _a_in) = rt.block_on(node(&l, 0, []));
    let (_b, b_in) = rt.block_on(node(&l, 1, []));
    rt.block_on(async { acker(b_in) });
    let timeout = Duration::from_secs(5);
    for (label, slots) in [("testbed, 64 slots", 64), ("dc-2560, 40,960 slots", 40_960)] {
        let token = dense_token(slots);
        // Connection set up (dial + Noise handshake) happens once, as between live daemons.
        rt.block_on(a.send_token(HostId(1), token.clone(), timeout))
            .unwrap();
        let mut samples: Vec<Duration> = (0..2000)
            .map(|_| {
                let t = token.clone();
                let start = Instant::now();
                rt.block_on(a.send_token(HostId(1), t, timeout)).unwrap();
                start.elapsed()
            })
            .collect();
        samples.sort();
        println!(
            "p2p-figure: token hand-off round trip ({label}): p50 {:?} p99 {:?} max {:?} over {} hand-offs",
            percentile(&samples, 0.5),
            percentile(&samples, 0.99),
            samples.last().unwrap(),
            samples.len()
        );
        c.bench_function(&format!("token hand-off round trip ({label})"), |b| {
            b.iter(|| {
                rt.block_on(a.send_token(HostId(1), token.clone(), timeout))
                    .unwrap()
            })
        });
    }
}

fn codec(c: &mut Criterion) {
    for (label, n) in [("40,960", 40_960usize), ("500,000", 500_000)] {
        let token = Request {
            topology: 1,
            body: dense_token(n),
        };
        let frame = encode(&token).unwrap();
        println!(
            "p2p-figure: {label}-slot token on the wire: {} bytes ({:.3} B/slot; original 5 B/slot = {} bytes)",
            frame.len(),
            frame.len() as f64 / n as f64,
            5 * n
        );
        c.bench_function(&format!("token encode+decode ({label} slots)"), |b| {
            b.iter(|| {
                let f = encode(&token).unwrap();
                let back: Request<Token> = decode(&f).unwrap();
                assert_eq!(back.body.slots.len(), n);
            })
        });
    }
}

fn locate(c: &mut Criterion) {
    const PEERS: usize = 8;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let l = loopback::loopback(PEERS + 1);
    // 125 VMs on each of hosts 1..=8.
    let vms = |h: usize| (1..=125u8).map(move |k| loopback::vm(h, k));
    let mut handles = Vec::new();
    for i in 0..=PEERS {
        let vs: Vec<VmId> = if i == 0 { vec![] } else { vms(i).collect() };
        handles.push(rt.block_on(node(&l, i, vs)));
    }
    let me = handles[0].0.clone();
    let all: Vec<VmId> = (1..=PEERS).flat_map(vms).collect();
    let options = LocateOptions::default();
    // Open every connection once.
    let warm = rt.block_on(me.locate(&all, options));
    assert_eq!(warm.found.len(), 1000);
    c.bench_function("locate 1000 VMs over 8 peers (cold cache)", |b| {
        b.iter(|| {
            me.directory().forget_cached();
            let got = rt.block_on(me.locate(&all, options));
            assert_eq!(got.found.len(), 1000);
        })
    });
    let verify = LocateOptions {
        verify: true,
        ..options
    };
    c.bench_function("locate 1000 VMs over 8 peers (cached, verified)", |b| {
        b.iter(|| {
            let got = rt.block_on(me.locate(&all, verify));
            assert_eq!(got.found.len(), 1000);
        })
    });
    c.bench_function("locate 1000 VMs over 8 peers (cached)", |b| {
        b.iter(|| {
            let got = rt.block_on(me.locate(&all, options));
            assert_eq!(got.queries, 0);
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = handoff, codec, locate
}
criterion_main!(benches);
