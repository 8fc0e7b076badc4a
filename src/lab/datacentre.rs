//! The lab's simulated data centre: the topology (a generated tree, or any topology file) given
//! a key, a loopback port and a PeerId per host; the VMs placed and their traffic drawn by the
//! simulator's scenario (the thesis's traffic), plus a share of traffic to addresses outside the
//! data centre; the in-memory hypervisor, whose migrations take simulated time. No daemon here.

use crate::flows::synthetic::Demand;
use crate::hypervisor::memory::{MemoryCluster, MemoryHost, MigrationModel, synthetic_vm};
use crate::hypervisor::{
    Capacity, Cause, Destination, Hypervisor, HypervisorError, MigrationParams, MigrationReport,
    Result as HvResult, Vm, VmState,
};
use crate::sim::{Scenario, ScenarioParams};
use crate::topology::generate::{TreeSpec, tree};
use crate::topology::{HostId, Topology};
use anyhow::{Context, anyhow};
use libp2p::identity::Keypair;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scored_proto::VmId;
use std::fmt::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Gateway and DNS addresses many VMs share (documentation range 192.0.2.0/24).
const GATEWAYS: u32 = 4;
/// Share of a VM's external traffic that goes to a gateway/DNS address; the rest goes to clients.
const GATEWAY_SHARE: f64 = 0.3;
/// Client addresses each VM talks to (drawn from a pool, so a few are shared).
const CLIENTS_PER_VM: usize = 3;

/// A regular tree of `hosts` hosts: racks of up to 16, grouped in up to 8 pods.
pub fn generated(hosts: usize, vms_per_host: u32) -> anyhow::Result<Topology> {
    if hosts < 2 {
        return Err(anyhow!("--hosts must be at least 2 (got {hosts})"));
    }
    let per_rack = [16, 10, 8, 5, 4, 2, 1]
        .into_iter()
        .find(|d| hosts.is_multiple_of(*d) && hosts / d >= 2)
        .unwrap_or(1);
    let racks = hosts / per_rack;
    let pods = [8, 4, 2]
        .into_iter()
        .find(|p| racks.is_multiple_of(*p) && racks / p >= 2)
        .unwrap_or(1);
    let (fanout, levels, names, tiers) = if pods > 1 {
        (
            vec![pods, racks / pods],
            3,
            vec!["rack", "pod", "core"],
            vec!["pod", "tor"],
        )
    } else {
        (vec![racks], 2, vec!["rack", "core"], vec!["tor"])
    };
    let spec = TreeSpec {
        fanout,
        hosts_per_rack: per_rack,
        weights: [0.0f64, 1.0, 3.0][..levels]
            .iter()
            .map(|e| e.exp())
            .collect(),
        level_names: names.into_iter().map(String::from).collect(),
        tier_names: tiers.into_iter().map(String::from).collect(),
        max_vms: vms_per_host,
        memory_mib: u64::from(vms_per_host) * 1024 + 1024,
        first_address: None,
        header: format!("scored lab: {hosts} hosts"),
    };
    Topology::parse(Path::new("lab-generated.toml"), &tree(&spec))
        .map_err(|e| anyhow!("generated topology: {e}"))
}

/// One host of the lab as the topology lists it.
pub struct Identity {
    pub key: Keypair,
    pub port: u16,
}

/// The topology again, every host on 127.0.0.1 with its own port and PeerId; with
/// `vm_networks`, the address ranges `topo` declares, or else the simulator's VM addresses
/// (10.0.0.0/8), so that the lab's external addresses are known to be no VM's.
pub fn on_loopback(
    topo: &Topology,
    ids: &[Identity],
    vm_networks: bool,
) -> anyhow::Result<Topology> {
    let mut out = String::new();
    if vm_networks {
        let declared: Vec<String> = if topo.vm_networks().is_empty() {
            vec!["\"10.0.0.0/8\"".into()]
        } else {
            topo.vm_networks()
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect()
        };
        let _ = writeln!(out, "vm_networks = [{}]", declared.join(", "));
    }
    out.push_str("[levels]\nnames = [");
    let names: Vec<String> = topo
        .level_names()
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect();
    out.push_str(&names.join(", "));
    out.push_str("]\nweights = [");
    let w: Vec<String> = (1..=topo.levels())
        .map(|l| format!("{:?}", topo.weights().weight(l)))
        .collect();
    out.push_str(&w.join(", "));
    out.push_str("]\n");
    for (h, id) in topo.hosts().iter().zip(ids) {
        let path: Vec<String> = h
            .path
            .iter()
            .map(|s| format!("\"{}\"", topo.switch(*s).name))
            .collect();
        let _ = write!(
            out,
            "\n[[host]]\nname = \"{}\"\npath = [{}]\naddress = \"127.0.0.1\"\np2p_port = {}\npeer_id = \"{}\"\nmax_vms = {}\nmemory_mib = {}\nreserve_memory_mib = {}\n",
            h.name,
            path.join(", "),
            id.port,
            id.key.public().to_peer_id(),
            h.max_vms,
            h.memory_mib,
            h.reserve_memory_mib,
        );
    }
    Topology::parse(&PathBuf::from("lab-loopback.toml"), &out)
        .map_err(|e| anyhow!("loopback topology: {e}"))
}

/// Keys and free loopback ports for `n` hosts. The ports are found by binding, then released
/// for the daemons (another process could take one in between: the daemon's start says so).
pub fn identities(n: usize) -> anyhow::Result<Vec<Identity>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("finding free loopback ports")?;
    let mut ids = Vec::with_capacity(n);
    for l in &listeners {
        ids.push(Identity {
            key: Keypair::generate_ed25519(),
            port: l.local_addr()?.port(),
        });
    }
    Ok(ids)
}

/// What the data centre's traffic is made of.
pub struct TrafficShape {
    /// Share of each VM's traffic to addresses outside the data centre.
    pub external: f64,
    pub seed: u64,
}

/// VMs, their placement and traffic, and the hypervisor they run on.
pub struct DataCentre {
    pub scenario: Scenario,
    pub cluster: MemoryCluster,
    /// Each VM's demands (both directions of its internal pairs, and its external ones), by
    /// round of the scenario.
    demands: Vec<Vec<Vec<Demand>>>,
    pub index: std::collections::HashMap<VmId, usize>,
    pub model: MigrationModel,
}

impl DataCentre {
    pub fn new(
        topo: &Topology,
        params: ScenarioParams,
        shape: &TrafficShape,
        model: MigrationModel,
    ) -> anyhow::Result<DataCentre> {
        let scenario = Scenario::build(topo.clone(), params).map_err(|e| anyhow!("{e}"))?;
        let cluster = MemoryCluster::new(topo);
        cluster.set_model(model);
        for (i, h) in scenario.initial.iter().enumerate() {
            cluster
                .add_vm(*h, synthetic_vm(scenario.ids[i], scenario.vm_memory_mib))
                .map_err(|e| anyhow!("placing VM {}: {e}", scenario.ids[i]))?;
        }
        let n = scenario.vms();
        let mut rng = ChaCha8Rng::seed_from_u64(shape.seed ^ 0x1ab);
        // Clients: a pool about as large as the VMs, so most are one VM's, some shared.
        let pool = (n as u32).max(16);
        let clients: Vec<Vec<VmId>> = (0..n)
            .map(|_| {
                (0..CLIENTS_PER_VM)
                    .map(|_| client(rng.random_range(0..pool)))
                    .collect()
            })
            .collect();
        let gateway: Vec<VmId> = (0..n)
            .map(|_| {
                VmId::from_ipv4(Ipv4Addr::new(
                    192,
                    0,
                    2,
                    1 + rng.random_range(0..GATEWAYS) as u8,
                ))
            })
            .collect();
        let ext = shape.external.clamp(0.0, 0.95);
        let demands = scenario
            .rates
            .iter()
            .map(|rates| {
                let mut by_vm: Vec<Vec<Demand>> = vec![Vec::new(); n];
                let mut total = vec![0.0f64; n];
                for &(a, b, r) in rates.pairs() {
                    let (a, b) = (a as usize, b as usize);
                    let (ia, ib) = (scenario.ids[a], scenario.ids[b]);
                    by_vm[a].push(Demand {
                        vm: ia,
                        partner: ib,
                        bytes_per_sec: r,
                    });
                    by_vm[b].push(Demand {
                        vm: ib,
                        partner: ia,
                        bytes_per_sec: r,
                    });
                    total[a] += r;
                    total[b] += r;
                }
                if ext > 0.0 {
                    for (v, d) in by_vm.iter_mut().enumerate() {
                        // External share of the VM's whole traffic: e / (1 - e) of its internal.
                        let out = total[v].max(1.0) * ext / (1.0 - ext);
                        let vm = scenario.ids[v];
                        d.push(Demand {
                            vm,
                            partner: gateway[v],
                            bytes_per_sec: out * GATEWAY_SHARE,
                        });
                        for &c in &clients[v] {
                            d.push(Demand {
                                vm,
                                partner: c,
                                bytes_per_sec: out * (1.0 - GATEWAY_SHARE) / CLIENTS_PER_VM as f64,
                            });
                        }
                    }
                }
                by_vm
            })
            .collect();
        let index = scenario
            .ids
            .iter()
            .enumerate()
            .map(|(i, v)| (*v, i))
            .collect();
        Ok(DataCentre {
            scenario,
            cluster,
            demands,
            index,
            model,
        })
    }

    /// The traffic `vms` see in scenario round `round` (the last one past the end).
    pub fn demands_of(&self, round: usize, vms: impl Iterator<Item = VmId>) -> Vec<Demand> {
        let r = round.min(self.demands.len() - 1);
        vms.filter_map(|v| self.index.get(&v))
            .flat_map(|&i| self.demands[r][i].iter().copied())
            .collect()
    }

    /// Where each VM runs, by scenario index; `Err` names a VM lost or running twice.
    pub fn locations(&self) -> Result<Vec<HostId>, String> {
        let mut loc: Vec<Option<HostId>> = vec![None; self.scenario.vms()];
        for (vm, h) in self.cluster.placement() {
            let Some(&i) = self.index.get(&vm) else {
                return Err(format!("VM {vm} appeared on host #{} from nowhere", h.0));
            };
            if let Some(other) = loc[i].replace(h) {
                return Err(format!(
                    "VM {vm} runs on two hosts: #{} and #{}",
                    other.0, h.0
                ));
            }
        }
        loc.iter()
            .enumerate()
            .map(|(i, h)| {
                h.ok_or_else(|| format!("VM {} is lost: on no host", self.scenario.ids[i]))
            })
            .collect()
    }
}

/// Client address `k` (carrier-grade NAT range 100.64.0.0/10, never a VM's).
fn client(k: u32) -> VmId {
    VmId::from_ipv4(Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + k))
}

/// One host's view of the in-memory cluster, as its daemon's hypervisor: migrations take the
/// model's time (the source's call blocks that long first), and the lab may make it stop
/// answering (every call hangs for `stall`, then fails as a lost connection would).
pub struct LabHypervisor {
    pub inner: MemoryHost,
    pub model: MigrationModel,
    pub stalled: Arc<AtomicBool>,
    pub stall: Duration,
}

impl LabHypervisor {
    fn answering(&self, call: &'static str) -> HvResult<()> {
        if !self.stalled.load(Ordering::Relaxed) {
            return Ok(());
        }
        std::thread::sleep(self.stall);
        Err(HypervisorError::Connection {
            target: format!("lab hypervisor ({call})"),
            source: Cause::Refused("the lab made this hypervisor stop answering".into()),
        })
    }
}

impl Hypervisor for LabHypervisor {
    fn vms(&self) -> HvResult<Vec<Vm>> {
        self.answering("vms")?;
        self.inner.vms()
    }

    fn capacity(&self) -> HvResult<Capacity> {
        self.answering("capacity")?;
        self.inner.capacity()
    }

    fn migrate(
        &self,
        vm: VmId,
        dest: &Destination,
        params: &MigrationParams,
    ) -> HvResult<MigrationReport> {
        self.answering("migrate")?;
        let memory = self
            .inner
            .vms()?
            .iter()
            .find(|v| v.id == vm)
            .map(|v| v.memory_mib)
            .ok_or(HypervisorError::NoSuchVm { vm })?;
        std::thread::sleep(self.model.report(memory, params).elapsed);
        self.inner.migrate(vm, dest, params)
    }

    fn state(&self, vm: VmId) -> HvResult<VmState> {
        self.answering("state")?;
        self.inner.state(vm)
    }
}
