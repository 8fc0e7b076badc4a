//! Two hosts in one rack: a real `Daemon` on h1 deciding for a subject VM whose one partner
//! runs on h2, so moving to h2 is the one move with a benefit. h2's side is played by hand over
//! the in-process transport (its location answers come from its directory; its capacity answers
//! from [`answer_capacity`], each after the delay the test gives), so a test can hold an answer
//! back or look at what the decision asked.

use super::inprocess;
use scored::config::Config;
use scored::daemon::{Assessment, Daemon};
use scored::flows::synthetic::Demand;
use scored::hypervisor::Measured;
use scored::hypervisor::memory::{MemoryCluster, synthetic_vm};
use scored::p2p::{DirectNetwork, DirectPeers, Directory, Inbound, InboundEvent};
use scored::proto::{CapacityResponse, PlacementResponse, Stamp, VmId};
use scored::topology::{HostId, Topology};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SUBJECT: VmId = VmId(0x0a00_0001);
pub const PARTNER: VmId = VmId(0x0a00_0002);

pub fn topology() -> Arc<Topology> {
    let t = "[levels]\nnames = [\"rack\"]\nweights = [1.0]\n\n\
             [defaults]\nmax_vms = 4\nmemory_mib = 4096\nreserve_memory_mib = 256\n\n\
             [[host]]\nname = \"h1\"\npath = [\"tor1\"]\n\n\
             [[host]]\nname = \"h2\"\npath = [\"tor1\"]\n";
    Arc::new(Topology::parse(Path::new("two-hosts.toml"), t).unwrap_or_else(|e| panic!("{e}")))
}

/// Plays h2: answers each capacity request with room after the delay `delays` gives for it
/// (`None`: never; past the list: at once), for `listen`. Returns how many it saw.
pub async fn answer_capacity(
    inbound: Inbound,
    delays: Vec<Option<Duration>>,
    listen: Duration,
) -> usize {
    answer_capacity_loaded(inbound, delays, listen, (0.1, 0)).await
}

/// [`answer_capacity`], h2 reporting a load per CPU and its CPUs (0: unknown).
pub async fn answer_capacity_loaded(
    mut inbound: Inbound,
    delays: Vec<Option<Duration>>,
    listen: Duration,
    (cpu_load, cpus): (f32, u32),
) -> usize {
    let mut seen = 0;
    let mut held = Vec::new();
    let until = Instant::now() + listen;
    while let Ok(Some(ev)) = tokio::time::timeout_at(until.into(), inbound.recv()).await {
        if let InboundEvent::Capacity { reply, .. } = ev {
            let delay = delays.get(seen).copied().unwrap_or(Some(Duration::ZERO));
            seen += 1;
            let answer = PlacementResponse {
                capacity: CapacityResponse {
                    free_slots: 3,
                    free_memory_mib: 3000,
                    cpu_load,
                    maintenance: false,
                    incoming_migrations: 0,
                    accepts: true,
                },
                refused_by_rule: None,
                cpus,
            };
            match delay {
                Some(d) => {
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        reply.send(answer);
                    });
                }
                // Keep the responder alive: the asker must time out, not see a refusal.
                None => held.push(reply),
            }
        }
    }
    seen
}

/// The two hosts, with the subject (`memory_mib`) on h1 sending 1,000 B/s to its partner on
/// h2.
pub struct TwoHosts {
    pub sim: MemoryCluster,
    pub node: Arc<Daemon<DirectPeers>>,
    /// h2's inbound requests: hand them to [`answer_capacity`].
    pub h2_inbound: Option<Inbound>,
    _h2_peers: DirectPeers,
    _h1_inbound: Inbound,
    _dir: tempfile::TempDir,
}

pub fn two_hosts(config: Config, memory_mib: u64) -> TwoHosts {
    let topo = topology();
    let dir = tempfile::tempdir().unwrap();
    let sim = MemoryCluster::new(&topo);
    sim.add_vm(HostId(0), synthetic_vm(SUBJECT, memory_mib))
        .unwrap();
    sim.add_vm(HostId(1), synthetic_vm(PARTNER, 512)).unwrap();
    let net = DirectNetwork::new(topo.clone());
    let h2_dir = Arc::new(Directory::new(topo.clone(), HostId(1)));
    h2_dir.set_local([(PARTNER, Stamp::default())]);
    let (h2_peers, h2_inbound) = net.join(HostId(1), h2_dir);
    let (peers, h1_inbound) =
        net.join(HostId(0), Arc::new(Directory::new(topo.clone(), HostId(0))));
    let demands = vec![Demand {
        vm: SUBJECT,
        partner: PARTNER,
        bytes_per_sec: 1000.0,
    }];
    let hv = Arc::new(sim.host(HostId(0)));
    let node = inprocess::node(&topo, HostId(0), peers, hv, demands, config, dir.path());
    TwoHosts {
        sim,
        node,
        h2_inbound: Some(h2_inbound),
        _h2_peers: h2_peers,
        _h1_inbound: h1_inbound,
        _dir: dir,
    }
}

/// h1's assessment of its 512 MiB subject, measured as `measured`, under `config`, while h2
/// answers every capacity request at once with `load` per CPU over its CPUs (0: unknown).
pub async fn assess_subject(
    config: Config,
    measured: Option<Measured>,
    load: (f32, u32),
) -> Assessment {
    let mut t = two_hosts(config, 512);
    if let Some(m) = measured {
        t.sim.set_measured(m);
    }
    let h2 = tokio::spawn(answer_capacity_loaded(
        t.h2_inbound.take().unwrap(),
        vec![],
        Duration::from_secs(2),
        load,
    ));
    let node = &t.node;
    node.refresh_inventory().await.unwrap();
    node.traffic().tick(Instant::now());
    let vm = node.inventory()[0].clone();
    let a = node.assess(&vm).await;
    h2.await.unwrap();
    a
}

/// The subject as its hypervisor measures it: 300 MiB resident, 200 MiB used by its own
/// account, dirtying `dirty` MiB/s, using `cpu_cores`.
pub fn measured_subject(dirty: f64, cpu_cores: Option<f64>) -> Measured {
    Measured {
        vm: SUBJECT,
        resident_mib: Some(300),
        guest_used_mib: Some(200),
        arrived_nonzero_mib: None,
        dirty_mib_s: Some(dirty),
        dirty_rate_pending: false,
        cpu_cores,
    }
}
