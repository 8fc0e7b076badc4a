//! Loopback clusters for the p2p tests and bench: keys, free ports on 127.0.0.1, a topology
//! listing them. Builds values only: starting peers is the test's job.

use super::host::free_ports;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use scored::p2p::P2pConfig;
use scored::topology::{HostId, Topology};
use scored_proto::VmId;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct HostSpec {
    pub name: String,
    pub rack: usize,
    pub port: u16,
    pub peer: PeerId,
}

/// A two-tier tree (racks under one aggregation switch), every host on 127.0.0.1.
pub fn topology_text(hosts: &[HostSpec], weights: &str) -> String {
    let mut text = format!("[levels]\nweights = {weights}\n[defaults]\nmax_vms = 16\n");
    for h in hosts {
        text.push_str(&format!(
            "[[host]]\nname = \"{}\"\npath = [\"agg\", \"tor{}\"]\naddress = \"127.0.0.1\"\np2p_port = {}\npeer_id = \"{}\"\n",
            h.name, h.rack, h.port, h.peer
        ));
    }
    text
}

pub struct Loopback {
    pub keys: Vec<Keypair>,
    pub specs: Vec<HostSpec>,
    pub topology: Arc<Topology>,
}

impl Loopback {
    /// Host `i`'s transport configuration, with timers short enough for a test: gossip
    /// heartbeats every 150 ms, pings every 2 s, redials every second.
    pub fn config(&self, i: usize) -> P2pConfig {
        let mut c = P2pConfig::new(
            self.keys[i].clone(),
            self.topology.clone(),
            HostId(i as u32),
        );
        c.gossip_heartbeat = Duration::from_millis(150);
        c.ping_interval = Duration::from_secs(2);
        c.redial_interval = Duration::from_secs(1);
        c
    }
}

/// `n` hosts named h0…, two per rack.
pub fn loopback(n: usize) -> Loopback {
    let keys: Vec<Keypair> = (0..n).map(|_| Keypair::generate_ed25519()).collect();
    let ports = free_ports(n);
    let specs: Vec<HostSpec> = (0..n)
        .map(|i| HostSpec {
            name: format!("h{i}"),
            rack: i / 2,
            port: ports[i],
            peer: keys[i].public().to_peer_id(),
        })
        .collect();
    let text = topology_text(&specs, "[1, 3]");
    let topology = Arc::new(Topology::parse(Path::new("loopback.toml"), &text).unwrap());
    Loopback {
        keys,
        specs,
        topology,
    }
}

pub fn parse(text: &str) -> Arc<Topology> {
    Arc::new(Topology::parse(Path::new("test.toml"), text).unwrap())
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// VM k of host i: 10.0.i.k.
pub fn vm(host: usize, k: u8) -> VmId {
    VmId::from_ipv4(std::net::Ipv4Addr::new(10, 0, host as u8, k))
}
