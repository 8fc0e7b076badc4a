//! Token regeneration asks before it mints: a host whose loss detector fires (typically one that
//! just restarted and has heard nothing yet) first asks every peer what it knows of the token. It
//! stands down while a peer holds a token or heard of one recently, and otherwise mints an epoch
//! above every epoch any peer reports, so its token is never fenced off on its first hand-off.
//!
//! Four real `Daemon`s with their event loops (`drive`) over the in-process transport, in-memory
//! hypervisors. Host h1 is the one whose detector fires (short hand-off timeout); the others never
//! regenerate by themselves, and their token state is set by hand as a live or a dead token would
//! leave it, without heartbeats, exactly as a fresh host sees a cluster before gossip reaches it.
//!
//! And over libp2p on 127.0.0.1: a lower host whose transport is up but whose daemon never
//! answers does not hold regeneration back.

mod support;

use scored::config::Config;
use scored::daemon::Daemon;
use scored::daemon::event_loop::drive;
use scored::daemon::ring::{epoch_generation, epoch_minter, next_epoch};
use scored::hypervisor::memory::{MemoryCluster, synthetic_vm};
use scored::p2p::{DirectNetwork, DirectPeers, Directory};
use scored::topology::HostId;
use scored::topology::Topology;
use scored_proto::{Stamp, VmId};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::four_hosts::{FourHosts, four_hosts};
use support::inprocess;
use support::loopback::loopback;
use support::time::wait;

struct Cluster {
    nodes: Vec<Arc<Daemon<DirectPeers>>>,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn cluster() -> Cluster {
    let FourHosts { topo, net, sim } = four_hosts("regeneration.toml");
    cluster_of(&topo, &net, &sim, 0, |_, _| {})
}

/// A daemon on every host of `topo`, each with its event loop. Only `firing`'s loss detector
/// fires (short hand-off timeout); its loop starts 300 ms after the others', once `prepare` has
/// set every other host's token state.
fn cluster_of(
    topo: &Arc<Topology>,
    net: &DirectNetwork,
    sim: &MemoryCluster,
    firing: u32,
    prepare: impl Fn(u32, &Daemon<DirectPeers>),
) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let rt = inprocess::runtime();
    let mut nodes = Vec::new();
    for h in 0..topo.hosts().len() as u32 {
        let me = HostId(h);
        let mut config = Config::default();
        config.token.handoff_timeout_ms = 400;
        if h != firing {
            config.token.regeneration_timeout_ms = Some(24 * 3600 * 1000);
        }
        let directory = Arc::new(Directory::new(topo.clone(), me));
        let (peers, inbound) = net.join(me, directory);
        let hv = Arc::new(sim.host(me));
        let node = inprocess::node(topo, me, peers, hv, Vec::new(), config, dir.path());
        rt.block_on(node.refresh_inventory()).unwrap();
        if h != firing {
            prepare(h, &node);
            rt.spawn(drive(node.clone(), inbound, std::future::pending()));
        } else {
            let n = node.clone();
            rt.spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                drive(n, inbound, std::future::pending()).await
            });
        }
        nodes.push(node);
    }
    Cluster {
        nodes,
        _dir: dir,
        _rt: rt,
    }
}

#[test]
fn a_fresh_host_stands_down_while_a_peer_holds_the_token_then_mints_above_it() {
    let c = cluster();
    let h1 = &c.nodes[0];
    // h3 holds a token minted by h4 two generations ago; nobody else has heard of it.
    let live = next_epoch(next_epoch(0, 3).unwrap(), 3).unwrap();
    {
        let mut watch = c.nodes[2].token_watch();
        watch.on_token(live, 7, Instant::now());
        watch.hold(Stamp::new(live, 7));
    }
    // h1's detector fires after ~1 s (2 × the hand-off timeout): it must learn the live epoch
    // from h3's answer, and not mint.
    assert!(
        wait(Duration::from_secs(30), || h1.highest_epoch() == live),
        "h1 never asked its peers about the token"
    );
    // Several more periods: h1 keeps standing down as long as h3 says it holds the token.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(h1.metrics().token.regenerations.get(), 0);
    assert!(h1.holding().is_none());
    assert_eq!(h1.highest_epoch(), live);

    // The holder's token dies (h3 stops holding it and heard nothing for 10 s): h1 mints the next
    // generation above it, with its own index, and works on it.
    {
        let mut watch = c.nodes[2].token_watch();
        watch.release(live);
        watch.on_token(live, 8, Instant::now() - Duration::from_secs(10));
    }
    assert!(
        wait(Duration::from_secs(30), || h1
            .metrics()
            .token
            .regenerations
            .get()
            == 1),
        "h1 did not regenerate a dead token"
    );
    let epoch = h1.highest_epoch();
    assert_eq!(epoch_generation(epoch), epoch_generation(live) + 1);
    assert_eq!(epoch_minter(epoch), 0);
    // The new token is not fenced anywhere: every host ends up knowing its epoch, nobody a
    // higher one, and only one token was ever minted.
    assert!(
        wait(Duration::from_secs(30), || c
            .nodes
            .iter()
            .all(|n| n.highest_epoch() == epoch)),
        "the regenerated token did not reach every host"
    );
    let minted: u64 = c
        .nodes
        .iter()
        .map(|n| n.metrics().token.regenerations.get())
        .sum();
    assert_eq!(minted, 1);
}

#[test]
fn a_lower_host_whose_daemon_never_answers_does_not_hold_regeneration_back() {
    let l = loopback(2);
    let rt = inprocess::runtime();
    let dir = tempfile::tempdir().unwrap();
    let sim = MemoryCluster::new(&l.topology);
    sim.add_vm(HostId(1), synthetic_vm(VmId(0x0a00_0102), 512))
        .unwrap();
    // h0, first in the topology, is a bare transport with its real key: connections, pings and
    // location answers (the transport's own) work, but nothing reads its daemon's queue.
    let (_stuck, _never_read) = rt.block_on(async {
        let me = HostId(0);
        let directory = Arc::new(Directory::new(l.topology.clone(), me));
        let config = scored::p2p::P2pConfig::new(l.keys[0].clone(), l.topology.clone(), me);
        scored::p2p::Libp2pPeers::start(config, directory)
            .await
            .unwrap()
    });
    let me = HostId(1);
    let (peers, inbound) = rt.block_on(async {
        let directory = Arc::new(Directory::new(l.topology.clone(), me));
        let config = scored::p2p::P2pConfig::new(l.keys[1].clone(), l.topology.clone(), me);
        scored::p2p::Libp2pPeers::start(config, directory)
            .await
            .unwrap()
    });
    let mut config = Config::default();
    config.token.handoff_timeout_ms = 400;
    let hv = Arc::new(sim.host(me));
    let h1 = inprocess::node(&l.topology, me, peers, hv, Vec::new(), config, dir.path());
    rt.block_on(h1.refresh_inventory()).unwrap();
    rt.spawn(drive(h1.clone(), inbound, std::future::pending()));
    // h1 must see through h0: a daemon that does not answer is no reason to wait.
    assert!(
        wait(Duration::from_secs(40), || h1
            .metrics()
            .token
            .regenerations
            .get()
            >= 1),
        "h1 kept deferring to h0, whose daemon never answers"
    );
    assert!(
        wait(Duration::from_secs(20), || !h1
            .recent_decisions()
            .is_empty()),
        "h1 regenerated the token but took no turn"
    );
}

/// The cold-start storm, in-process: 48 daemons start together with no token, and no statistics
/// request reaches its host within the hand-off timeout (as when 128 daemons on one machine all
/// survey each other at once). Host 1 mints first; hosts whose detector fired a little later must
/// not mint beside it once they hear its heartbeat, even though their survey heard no one.
#[test]
fn a_cold_start_with_unanswered_surveys_mints_one_token() {
    const HOSTS: u32 = 48;
    let topo = racks_of_eight(HOSTS, "storm.toml");
    let net = scored::p2p::DirectNetwork::new(topo.clone());
    let sim = MemoryCluster::new(&topo);
    let dir = tempfile::tempdir().unwrap();
    let rt = inprocess::runtime();
    let handoff = Duration::from_millis(1000);
    // Every survey times out: each host hears no peer's answer, so only heartbeats can stop it.
    net.set_stats_delay(handoff * 3);
    let mut nodes = Vec::new();
    let mut inbounds = Vec::new();
    for h in 0..HOSTS {
        let me = HostId(h);
        sim.add_vm(me, synthetic_vm(VmId(0x0a00_0101 + h), 512))
            .unwrap();
        let mut config = Config::default();
        config.token.handoff_timeout_ms = handoff.as_millis() as u64;
        let directory = Arc::new(Directory::new(topo.clone(), me));
        let (peers, inbound) = net.join(me, directory);
        let hv = Arc::new(sim.host(me));
        let node = inprocess::node(&topo, me, peers, hv, Vec::new(), config, dir.path());
        rt.block_on(node.refresh_inventory()).unwrap();
        nodes.push(node);
        inbounds.push(inbound);
    }
    // All at once: a cold start.
    for (node, inbound) in nodes.iter().zip(inbounds) {
        rt.spawn(drive(node.clone(), inbound, std::future::pending()));
    }
    let minted = || -> u64 {
        nodes
            .iter()
            .map(|n| n.metrics().token.regenerations.get())
            .sum()
    };
    assert!(
        wait(Duration::from_secs(30), || minted() >= 1),
        "no host regenerated the token"
    );
    // Two loss periods (loss = 2 s): every host whose detector fired has decided.
    std::thread::sleep(Duration::from_secs(4));
    let minters: Vec<String> = nodes
        .iter()
        .filter(|n| n.metrics().token.regenerations.get() > 0)
        .map(|n| format!("h{}", n.me().0 + 1))
        .collect();
    assert_eq!(
        minted(),
        1,
        "tokens minted at a cold start, by {}",
        minters.join(", ")
    );
    let epoch = nodes[0].highest_epoch();
    assert_eq!(epoch_minter(epoch), 0, "host 1 goes first");
    assert!(
        wait(Duration::from_secs(20), || nodes
            .iter()
            .all(|n| n.highest_epoch() == epoch)),
        "the one token did not reach every host"
    );
}

/// `hosts` hosts h1, h2, … eight to a rack, without addresses (the in-process transport).
fn racks_of_eight(hosts: u32, file: &str) -> Arc<scored::topology::Topology> {
    let mut text = String::from(
        "[levels]\nnames = [\"rack\", \"core\"]\nweights = [1.0, 2.0]\n\
         [defaults]\nmax_vms = 8\nmemory_mib = 16384\n",
    );
    for h in 0..hosts {
        text.push_str(&format!(
            "[[host]]\nname = \"h{}\"\npath = [\"tor{}\"]\n",
            h + 1,
            h / 8
        ));
    }
    Arc::new(scored::topology::Topology::parse(std::path::Path::new(file), &text).unwrap())
}

/// A host whose detector fires while the token lives (it just started and has heard nothing)
/// asks a few peers, not every host: at 1,000 hosts a survey of everyone is a connection to every
/// host, and a data centre starting up has hundreds of such hosts. Only a host about to mint asks
/// everyone. 48 daemons over the in-process transport; h2's detector fires, the others' never.
#[test]
fn a_host_that_stands_down_asks_a_few_peers_and_one_that_mints_asks_every_host() {
    const HOSTS: u32 = 48;
    const HOLDER: usize = 30;
    let topo = racks_of_eight(HOSTS, "probe.toml");
    let net = DirectNetwork::new(topo.clone());
    let sim = MemoryCluster::new(&topo);
    for h in 0..HOSTS {
        sim.add_vm(HostId(h), synthetic_vm(VmId(0x0a00_0101 + h), 512))
            .unwrap();
    }
    let live = next_epoch(next_epoch(0, 7).unwrap(), 7).unwrap();
    // Everyone but h2 has heard of the live token; HOLDER holds it.
    let c = cluster_of(&topo, &net, &sim, 1, |h, node| {
        let mut watch = node.token_watch();
        watch.on_token(live, 7, Instant::now());
        if h as usize == HOLDER {
            watch.hold(Stamp::new(live, 7));
        }
    });
    let nodes = &c.nodes;
    let h2 = nodes[1].clone();
    let stats_sent = || h2.peers().metrics().sent_by_protocol()[3];

    // h2's detector fires after ~1 s: it learns the live epoch from the first peers it asks
    // (h1, before it, answers; so may the holder) and stands down, having asked a dozen at most.
    assert!(
        wait(Duration::from_secs(30), || h2.highest_epoch() == live),
        "h2 never asked its peers about the token"
    );
    let first = stats_sent();
    assert!(
        (1..=12).contains(&first),
        "h2 asked {first} of its {} peers before standing down",
        HOSTS - 1
    );
    assert_eq!(h2.metrics().token.regenerations.get(), 0);

    // The token dies: the holder lets go and nobody has heard of it for 10 s. h2 defers to h1
    // (which answers) for a few periods, then mints; before minting it asks every host.
    for (i, node) in nodes.iter().enumerate() {
        if i == 1 {
            continue;
        }
        let mut watch = node.token_watch();
        if i == HOLDER {
            watch.release(live);
        }
        watch.on_token(live, 8, Instant::now() - Duration::from_secs(10));
    }
    assert!(
        wait(Duration::from_secs(30), || h2
            .metrics()
            .token
            .regenerations
            .get()
            == 1),
        "h2 did not regenerate a dead token"
    );
    let asked = stats_sent();
    assert!(
        asked >= first + u64::from(HOSTS) - 1,
        "h2 minted having sent {asked} statistics requests, fewer than a survey of every host"
    );
    let epoch = h2.highest_epoch();
    assert_eq!(epoch_generation(epoch), epoch_generation(live) + 1);
    assert_eq!(epoch_minter(epoch), 1);
}
