//! A daemon on the in-process network ([`DirectNetwork`]), over the simulated cluster's
//! hypervisor: it joins with a directory of its own, as a daemon does at start, and is built by
//! [`super::inprocess::node`]. The caller starts `drive` with the inbound queue returned.

use super::inprocess;
use scored::config::Config;
use scored::daemon::Daemon;
use scored::flows::synthetic::Demand;
use scored::hypervisor::memory::MemoryCluster;
use scored::p2p::{DirectNetwork, DirectPeers, Directory, Inbound};
use scored::topology::{HostId, Topology};
use std::path::Path;
use std::sync::Arc;

pub fn joined(
    net: &DirectNetwork,
    topo: &Arc<Topology>,
    sim: &MemoryCluster,
    me: HostId,
    demands: Vec<Demand>,
    config: Config,
    dir: &Path,
) -> (Arc<Daemon<DirectPeers>>, Inbound) {
    let (peers, inbound) = net.join(me, Arc::new(Directory::new(topo.clone(), me)));
    let node = inprocess::node(
        topo,
        me,
        peers,
        Arc::new(sim.host(me)),
        demands,
        config,
        dir,
    );
    (node, inbound)
}
