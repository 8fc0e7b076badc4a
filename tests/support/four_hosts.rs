//! Four hosts for the in-process token tests: h1 and h2 under tor1, h3 and h4 under tor2, each
//! running one VM (10.0.0.1 … 10.0.0.4) in an in-memory hypervisor, joined by the in-process
//! transport. Builds the parts; wiring daemons and their transports is the test's job.

use scored::hypervisor::memory::{MemoryCluster, synthetic_vm};
use scored::p2p::DirectNetwork;
use scored::topology::{HostId, Topology};
use scored_proto::VmId;
use std::path::Path;
use std::sync::Arc;

pub const TOPOLOGY: &str = r#"
[levels]
names = ["rack", "core"]
weights = [1.0, 2.718281828459045]

[defaults]
max_vms = 8
memory_mib = 16384

[[host]]
name = "h1"
path = ["tor1"]

[[host]]
name = "h2"
path = ["tor1"]

[[host]]
name = "h3"
path = ["tor2"]

[[host]]
name = "h4"
path = ["tor2"]
"#;

pub struct FourHosts {
    pub topo: Arc<Topology>,
    pub net: DirectNetwork,
    pub sim: MemoryCluster,
}

/// The four hosts, the topology read as if from `file` (its name shows in messages).
pub fn four_hosts(file: &str) -> FourHosts {
    let topo = Arc::new(Topology::parse(Path::new(file), TOPOLOGY).unwrap());
    let net = DirectNetwork::new(topo.clone());
    let sim = MemoryCluster::new(&topo);
    for h in 0..4 {
        sim.add_vm(HostId(h), synthetic_vm(VmId(0x0a00_0001 + h), 512))
            .unwrap();
    }
    FourHosts { topo, net, sim }
}
