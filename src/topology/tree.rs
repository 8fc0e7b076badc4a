//! The validated topology: switches, hosts with their place in the tree, and the one question
//! the cost model asks of it, the communication level `ℓ(x, y)` between two servers.
//!
//! Built only by `file.rs` from a checked file; answers questions, never reads or changes one.

use super::networks::VmNetwork;
use super::weights::LinkWeights;
use scored_proto::{Level, VmId};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Index of a hypervisor in the topology file (order of appearance). Every daemon reads the same
/// file, so ids agree across the cluster; the wire protocol still names hosts by PeerId.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub u32);

impl HostId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Index of a switch in the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SwitchId(pub u32);

#[derive(Clone, Debug)]
pub struct Switch {
    pub name: String,
    /// 0 for the top-most named switches; the rack (ToR) switches are at `depth - 1`.
    pub depth: usize,
    pub parent: Option<SwitchId>,
}

/// One hypervisor as the operator described it.
#[derive(Clone, Debug)]
pub struct Host {
    pub id: HostId,
    pub name: String,
    /// Switches from the top of the tree down to this host's rack switch.
    pub path: Vec<SwitchId>,
    /// Address of the host on the data-centre network (p2p and migration traffic).
    pub address: Option<IpAddr>,
    pub p2p_port: u16,
    /// libp2p identity, as printed by `scored keygen`.
    pub peer_id: Option<libp2p::PeerId>,
    /// libvirt connection URI other hosts use to migrate a VM here.
    pub libvirt_uri: Option<String>,
    /// Migration data URI (e.g. `tcp://10.0.0.2`).
    pub migration_uri: Option<String>,
    /// At most this many VMs may run here.
    pub max_vms: u32,
    /// Memory for guests in MiB (used by the simulator; the daemon asks the hypervisor).
    pub memory_mib: u64,
    /// Memory to keep free on this host, MiB.
    pub reserve_memory_mib: u64,
}

impl Host {
    /// The rack (ToR) switch of this host.
    pub fn rack(&self) -> SwitchId {
        *self.path.last().expect("validated: paths are never empty")
    }

    /// The libp2p multiaddress this host listens on, when it has an address.
    pub fn p2p_multiaddr(&self) -> Option<libp2p::Multiaddr> {
        let addr = self.address?;
        let proto = match addr {
            IpAddr::V4(a) => libp2p::multiaddr::Protocol::Ip4(a),
            IpAddr::V6(a) => libp2p::multiaddr::Protocol::Ip6(a),
        };
        Some(
            libp2p::Multiaddr::empty()
                .with(proto)
                .with(libp2p::multiaddr::Protocol::Tcp(self.p2p_port)),
        )
    }
}

/// A validated topology.
#[derive(Clone, Debug)]
pub struct Topology {
    pub(super) source: PathBuf,
    pub(super) level_names: Vec<String>,
    pub(super) weights: LinkWeights,
    pub(super) switches: Vec<Switch>,
    pub(super) hosts: Vec<Host>,
    /// Host paths flattened with stride `depth`, for cache-friendly level lookups.
    pub(super) paths: Vec<u32>,
    pub(super) depth: usize,
    pub(super) by_name: HashMap<String, HostId>,
    pub(super) by_peer: HashMap<libp2p::PeerId, HostId>,
    /// The VMs' address ranges; empty: any address may be a VM.
    pub(super) vm_networks: Vec<VmNetwork>,
}

impl Topology {
    /// The file this topology came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn weights(&self) -> &LinkWeights {
        &self.weights
    }

    /// Number of communication levels above "same server": 1 = rack, 2 = next switch up, …
    pub fn levels(&self) -> Level {
        self.weights.levels()
    }

    /// Human names of levels 1..=levels(), e.g. `["rack", "aggregation", "core"]`.
    pub fn level_names(&self) -> &[String] {
        &self.level_names
    }

    /// The address ranges the data centre's VMs use, as the file declares them (`vm_networks`).
    pub fn vm_networks(&self) -> &[VmNetwork] {
        &self.vm_networks
    }

    /// Whether `vm` may be a VM of this data centre: inside `vm_networks`, or any address when
    /// the file declares none.
    pub fn may_be_vm(&self, vm: VmId) -> bool {
        self.vm_networks.is_empty() || self.vm_networks.iter().any(|n| n.contains(vm))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn host(&self, id: HostId) -> &Host {
        &self.hosts[id.index()]
    }

    pub fn host_by_name(&self, name: &str) -> Option<&Host> {
        self.by_name.get(name).map(|id| self.host(*id))
    }

    pub fn host_by_peer(&self, peer: &libp2p::PeerId) -> Option<&Host> {
        self.by_peer.get(peer).map(|id| self.host(*id))
    }

    pub fn switches(&self) -> &[Switch] {
        &self.switches
    }

    pub fn switch(&self, id: SwitchId) -> &Switch {
        &self.switches[id.0 as usize]
    }

    /// Switches at the rack level (the last element of host paths), in order of first appearance.
    pub fn racks(&self) -> Vec<SwitchId> {
        let mut seen = vec![false; self.switches.len()];
        let mut out = Vec::new();
        for h in &self.hosts {
            let r = h.rack();
            if !seen[r.0 as usize] {
                seen[r.0 as usize] = true;
                out.push(r);
            }
        }
        out
    }

    /// Depth of every host path (number of named switch tiers).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// `ℓ(x, y)`: the highest link level traffic between two servers crosses — the level of their
    /// lowest common ancestor. 0 on the same server, 1 in the same rack, …; hosts whose paths share
    /// no switch meet at the implicit top of the tree, level `depth + 1`. O(depth).
    pub fn level(&self, x: HostId, y: HostId) -> Level {
        if x == y {
            return 0;
        }
        let d = self.depth;
        let px = &self.paths[x.index() * d..x.index() * d + d];
        let py = &self.paths[y.index() * d..y.index() * d + d];
        let common = px.iter().zip(py).take_while(|(a, b)| a == b).count();
        (d - common + 1) as Level
    }

    /// `Σ_{i=1..ℓ(x,y)} c_i`: the weight of one byte/s of traffic between two servers. O(depth).
    pub fn path_cost(&self, x: HostId, y: HostId) -> f64 {
        self.weights.path_cost(self.level(x, y))
    }

    /// Hosts that lack what a running daemon needs (address, peer id): fine for `scored sim`.
    pub fn hosts_without_identity(&self) -> impl Iterator<Item = &Host> {
        self.hosts
            .iter()
            .filter(|h| h.address.is_none() || h.peer_id.is_none())
    }
}
