//! One daemon decision (`Daemon::assess`: partners' rates from the flow source, their locations,
//! capacity queries to the candidate hosts, Eq. 3.2, the daemon's gates) for a VM with 10, 100
//! and 1,000 partners. Sixteen real `Daemon`s, each driven by its own event loop, joined through
//! the in-process transport (`p2p::DirectNetwork`) with simulated hypervisors: the capacity
//! answers come from the peers' own code. "cached": partners' locations already in the
//! directory (the steady state); "cold": every location forgotten before each decision, so it is
//! looked up again from the peers. The same again with every host on its own libp2p swarm on
//! 127.0.0.1 ("libp2p_cold", "libp2p_cached"). Issue 6 targets (cached):
//! ≤ 0.1 / 0.5 / 5 ms; original 0.32 / 2.97 / 30.54 s.

#[path = "../tests/support/inprocess.rs"]
mod inprocess;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use scored::config::Config;
use scored::daemon::Daemon;
use scored::daemon::event_loop::drive;
use scored::flows::synthetic::Demand;
use scored::hypervisor::memory::{MemoryCluster, synthetic_vm};
use scored::p2p::{DirectNetwork, DirectPeers, Directory, Inbound, Libp2pPeers, P2pConfig, Peers};
use scored::topology::{HostId, Topology};
use scored_proto::VmId;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOSTS: u32 = 16;

/// Sixteen hosts; with `p2p`, each also gets a loopback endpoint and a key (files in `dir`).
fn topology(dir: &Path, p2p: bool) -> Topology {
    let mut t = String::from(
        "[levels]\nnames = [\"rack\", \"pod\", \"core\"]\nweights = [1.0, 2.718281828459045, 20.085536923187668]\n\n\
         [defaults]\nmax_vms = 200\nmemory_mib = 262144\nreserve_memory_mib = 1024\n",
    );
    for i in 0..HOSTS {
        t.push_str(&format!(
            "\n[[host]]\nname = \"h{}\"\npath = [\"pod{}\", \"tor{}\"]\n",
            i + 1,
            i / 8 + 1,
            i / 4 + 1
        ));
        if p2p {
            let key =
                scored::identity::generate(&dir.join(format!("h{}.key", i + 1)), false).unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            t.push_str(&format!(
                "address = \"127.0.0.1\"\np2p_port = {port}\npeer_id = \"{}\"\n",
                key.public().to_peer_id()
            ));
        }
    }
    Topology::parse(Path::new("bench-topology.toml"), &t).unwrap_or_else(|e| panic!("{e}"))
}

type Placed = Vec<(VmId, HostId)>;

/// The subject VM on h1 with `partners` partners spread over h2..h16, and sixteen running nodes
/// joined through the in-process transport.
fn cluster(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    partners: u32,
) -> (Arc<Daemon<DirectPeers>>, VmId, Placed) {
    let topo = Arc::new(topology(dir, false));
    let net = DirectNetwork::new(topo.clone());
    nodes(rt, dir, topo, partners, |me, directory| {
        net.join(me, directory)
    })
}

/// The same over libp2p on 127.0.0.1 (Noise, yamux), one swarm per host.
fn cluster_libp2p(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    partners: u32,
) -> (Arc<Daemon<Libp2pPeers>>, VmId, Placed) {
    let topo = Arc::new(topology(dir, true));
    let t = topo.clone();
    nodes(rt, dir, topo, partners, |me, directory| {
        let key = scored::identity::load(&dir.join(format!("h{}.key", me.0 + 1))).unwrap();
        rt.block_on(Libp2pPeers::start(
            P2pConfig::new(key, t.clone(), me),
            directory,
        ))
        .unwrap_or_else(|e| panic!("p2p: {e}"))
    })
}

fn nodes<P: Peers>(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    topo: Arc<Topology>,
    partners: u32,
    mut join: impl FnMut(HostId, Arc<Directory>) -> (P, Inbound),
) -> (Arc<Daemon<P>>, VmId, Placed) {
    let sim = MemoryCluster::new(&topo);
    let subject = VmId(0x0a00_0001);
    sim.add_vm(HostId(0), synthetic_vm(subject, 512)).unwrap();
    let mut placed = Vec::new();
    let mut demands = Vec::new();
    for p in 0..partners {
        let vm = VmId(0x0a01_0000 + p);
        let host = HostId(1 + p % (HOSTS - 1));
        sim.add_vm(host, synthetic_vm(vm, 256)).unwrap();
        placed.push((vm, host));
        demands.push(Demand {
            vm: subject,
            partner: vm,
            bytes_per_sec: 1000.0 + p as f64,
        });
    }
    let mut config = Config::default();
    // No token in this bench: only the decision is timed.
    config.token.regeneration_timeout_ms = Some(24 * 3600 * 1000);
    config.decision.cooldown_base_s = 0;
    let mut subject_node = None;
    for h in 0..HOSTS {
        let me = HostId(h);
        let directory = Arc::new(Directory::new(topo.clone(), me));
        let (peers, inbound) = join(me, directory);
        let mine = if h == 0 { demands.clone() } else { Vec::new() };
        let hv = Arc::new(sim.host(me));
        let node = inprocess::node(&topo, me, peers, hv, mine, config.clone(), dir);
        rt.block_on(node.refresh_inventory()).unwrap();
        node.traffic().tick(Instant::now());
        rt.spawn(drive(node.clone(), inbound, std::future::pending()));
        if h == 0 {
            subject_node = Some(node);
        }
    }
    (subject_node.unwrap(), subject, placed)
}

fn bench(c: &mut Criterion) {
    let rt = inprocess::runtime();
    let mut group = c.benchmark_group("daemon_decision");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for partners in [10u32, 100, 1000] {
        let dir = tempfile::tempdir().unwrap();
        let (node, subject, placed) = cluster(&rt, dir.path(), partners);
        let vm = node.inventory()[0].clone();
        assert_eq!(vm.id, subject);
        // Warm the location cache; the decision must see every partner.
        let first = rt.block_on(node.assess(&vm));
        assert_eq!(first.partners.len(), partners as usize, "{}", first.detail);
        group.bench_with_input(BenchmarkId::new("cached", partners), &vm, |b, vm| {
            b.iter(|| black_box(rt.block_on(node.assess(vm)).outcome))
        });
        let directory = node.peers().directory();
        group.bench_with_input(BenchmarkId::new("cold", partners), &vm, |b, vm| {
            b.iter(|| {
                for &(p, h) in &placed {
                    directory.forget(p, h);
                }
                black_box(rt.block_on(node.assess(vm)).outcome)
            })
        });
    }
    // Cold lookups over loopback libp2p: every partner's location asked of its host again.
    for partners in [10u32, 100, 1000] {
        let dir = tempfile::tempdir().unwrap();
        let (node, _, placed) = cluster_libp2p(&rt, dir.path(), partners);
        let vm = node.inventory()[0].clone();
        // The first decision dials the peers; it must see every partner.
        let first = rt.block_on(node.assess(&vm));
        assert_eq!(first.partners.len(), partners as usize, "{}", first.detail);
        let directory = node.peers().directory().clone();
        group.bench_with_input(BenchmarkId::new("libp2p_cold", partners), &vm, |b, vm| {
            b.iter(|| {
                for &(p, h) in &placed {
                    directory.forget(p, h);
                }
                black_box(rt.block_on(node.assess(vm)).outcome)
            })
        });
        group.bench_with_input(BenchmarkId::new("libp2p_cached", partners), &vm, |b, vm| {
            b.iter(|| black_box(rt.block_on(node.assess(vm)).outcome))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
