//! The destination's re-check, in process over the direct transport: two replicas of one
//! anti-affinity group (host scope) both talk most to a VM on h2. Their hosts decide at the same
//! time, each on knowledge that says the other replica stays where it is, so each alone would be
//! right to move to h2; together they would put both replicas on one host. h2 judges every
//! capacity request that names a VM by the same rules with what it knows (its own VMs, the room
//! it just promised), so it takes one replica and refuses the other, naming the rule. Also: what
//! hosts learn of other hosts' metadata groups from their announcements.

mod support;

use scored::config::Config;
use scored::daemon::Daemon;
use scored::daemon::event_loop::drive;
use scored::decide::Outcome;
use scored::flows::synthetic::Demand;
use scored::hypervisor::memory::{MemoryCluster, synthetic_vm};
use scored::hypervisor::{GroupTag, Vm};
use scored::p2p::{DirectNetwork, DirectPeers, Peers};
use scored::proto::VmId;
use scored::rules::{GroupKind, Member, Rules};
use scored::topology::{HostId, Topology};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{direct, inprocess, time};

/// Four hosts, two racks of two.
fn topology() -> Topology {
    let mut t = String::from(
        "[levels]\nweights = [1.0, 3.0]\n\n\
         [defaults]\nmax_vms = 4\nmemory_mib = 4096\nreserve_memory_mib = 256\n",
    );
    for i in 0..4 {
        t.push_str(&format!(
            "\n[[host]]\nname = \"h{}\"\npath = [\"tor{}\"]\n",
            i + 1,
            i / 2 + 1
        ));
    }
    Topology::parse(Path::new("recheck.toml"), &t).unwrap()
}

fn replica(id: VmId) -> Vm {
    let mut vm = synthetic_vm(id, 512);
    // As `<scored:group name='db' kind='anti-affinity' scope='host'/>` puts it.
    vm.groups = vec![GroupTag {
        name: "db".into(),
        kind: Some(GroupKind::AntiAffinity),
        scope: Some("host".into()),
    }];
    vm
}

/// Four daemons over the in-process transport, each on its host of `sim`, with no token (the
/// decisions are made by hand) and the traffic `demands` (host, VM, partner: 1 MB/s).
fn four_hosts(
    topo: &Arc<Topology>,
    sim: &MemoryCluster,
    demands: &[(HostId, VmId, VmId)],
) -> (
    tokio::runtime::Runtime,
    tempfile::TempDir,
    Vec<Arc<Daemon<DirectPeers>>>,
) {
    let rt = inprocess::runtime();
    let dir = tempfile::tempdir().unwrap();
    let net = DirectNetwork::new(topo.clone());
    let mut config = Config::default();
    config.token.regeneration_timeout_ms = Some(24 * 3600 * 1000);
    config.decision.cooldown_base_s = 0;
    config.decision.migration_cost_fraction = 0.0;
    let mut nodes: Vec<Arc<Daemon<DirectPeers>>> = Vec::new();
    for h in 0..4u32 {
        let me = HostId(h);
        let demands = demands
            .iter()
            .filter(|(at, _, _)| *at == me)
            .map(|&(_, vm, partner)| Demand {
                vm,
                partner,
                bytes_per_sec: 1e6,
            })
            .collect();
        let (node, inbound) =
            direct::joined(&net, topo, sim, me, demands, config.clone(), dir.path());
        rt.block_on(node.refresh_inventory()).unwrap();
        node.traffic().tick(Instant::now());
        rt.spawn(drive(node.clone(), inbound, std::future::pending()));
        nodes.push(node);
    }
    (rt, dir, nodes)
}

#[test]
fn two_decisions_on_stale_knowledge_cannot_both_place_a_replica_on_one_host() {
    let topo = Arc::new(topology());
    let (h1, h2, h3) = (HostId(0), HostId(1), HostId(2));
    let (r1, r2, app) = (VmId(0x0a00_0001), VmId(0x0a00_0002), VmId(0x0a00_0003));
    let sim = MemoryCluster::new(&topo);
    sim.add_vm(h1, replica(r1)).unwrap();
    sim.add_vm(h3, replica(r2)).unwrap();
    sim.add_vm(h2, synthetic_vm(app, 512)).unwrap();

    // Both replicas talk most to the application VM on h2.
    let (rt, _dir, nodes) = four_hosts(&topo, &sim, &[(h1, r1, app), (h3, r2, app)]);
    for node in &nodes {
        rt.block_on(node.peers().announce_inventory()).unwrap();
    }

    // What h1 knows of the group from h3's announcement: r2 runs on h3.
    let mut rules = Rules::none();
    let db = rules.group_named("db", GroupKind::AntiAffinity, 0).unwrap();
    let known = nodes[0].known_group_members(&rules, &[db]);
    assert!(
        known.contains(&Member {
            group: db,
            vm: r2,
            host: h3
        }),
        "h1 does not know where r2 runs: {known:?}"
    );

    let vm_of = |n: usize| nodes[n].inventory()[0].clone();
    let (vm1, vm2) = (vm_of(0), vm_of(2));
    assert_eq!((vm1.id, vm2.id), (r1, r2));
    let (a, b) = rt.block_on(async { tokio::join!(nodes[0].assess(&vm1), nodes[2].assess(&vm2)) });
    let to_h2: Vec<VmId> = [(r1, &a), (r2, &b)]
        .into_iter()
        .filter(|(_, d)| d.decision.as_ref().and_then(|d| d.migrates_to()) == Some(h2))
        .map(|(vm, _)| vm)
        .collect();
    assert_eq!(
        to_h2.len(),
        1,
        "replicas that would end on h2 together: {to_h2:?} ({} / {})",
        a.detail,
        b.detail
    );
    // The other stays, stopped by a rule, and its record says which host and which rule.
    let stopped = if to_h2[0] == r1 { &b } else { &a };
    let d = stopped.decision.as_ref().unwrap();
    assert_eq!(d.outcome, Outcome::Excluded, "{}", stopped.detail);
    assert_eq!(d.destination_refusal, Some(h2));
    assert!(
        stopped.detail.contains(&format!(
            "h2 refused: anti-affinity group db, scope host: h2 runs {}",
            to_h2[0]
        )),
        "{}",
        stopped.detail
    );
    // The room h2 holds is for the replica it accepted, and only that one.
    let held: Vec<VmId> = nodes[1]
        .peers()
        .directory()
        .reservations(Instant::now())
        .iter()
        .map(|r| r.vm)
        .collect();
    assert_eq!(held, to_h2);
}

#[test]
fn a_destination_refuses_a_replica_within_rack_scope_of_one_it_heard_of() {
    let topo = Arc::new(topology());
    let (h1, h2, h3) = (HostId(0), HostId(1), HostId(2));
    let (r1, r2, app) = (VmId(0x0a00_0001), VmId(0x0a00_0002), VmId(0x0a00_0003));
    let rack_replica = |id| {
        let mut vm = replica(id);
        vm.groups[0].scope = Some("rack".into());
        vm
    };
    // r1 on h1 (rack tor1), r2 on h3 (tor2), and r2's chatty partner on h2, r1's rack-mate.
    let sim = MemoryCluster::new(&topo);
    sim.add_vm(h1, rack_replica(r1)).unwrap();
    sim.add_vm(h3, rack_replica(r2)).unwrap();
    sim.add_vm(h2, synthetic_vm(app, 512)).unwrap();
    let (rt, _dir, nodes) = four_hosts(&topo, &sim, &[(h3, r2, app)]);
    // h1's inventory task announces its VMs and their groups at its first read that finds a
    // peer, then not again for ≥ 24 s: once it has, h1 announces to all three peers, and only
    // then is h3's view made stale: the last it heard from h1 is an announcement from before r1
    // was tagged (no grouped VMs). Made stale any earlier, the task could still refresh it.
    time::wait_until(
        "h1's inventory task announces",
        Duration::from_secs(30),
        || nodes[0].peers().metrics().announcements_published.get() >= 1,
    );
    rt.block_on(nodes[0].peers().announce_inventory()).unwrap();
    let before_the_tag = scored_proto::GroupsAnnounce {
        host: topo.host(h1).name.clone(),
        vms: Vec::new(),
    };
    nodes[2]
        .peers()
        .directory()
        .apply_groups(h1, &before_the_tag, Instant::now())
        .unwrap();
    let vm2 = nodes[2].inventory()[0].clone();
    let a = rt.block_on(nodes[2].assess(&vm2));
    let d = a.decision.as_ref().unwrap();
    // h2 knows r1 runs in its rack and says no; h2's rack-mate h1 runs r1 itself.
    assert_ne!(d.migrates_to(), Some(h2), "{}", a.detail);
    assert_eq!(d.destination_refusal, Some(h2), "{}", a.detail);
    assert!(
        a.detail.contains(&format!(
            "h2 refused: anti-affinity group db, scope rack: h1 runs {r1}"
        )),
        "{}",
        a.detail
    );
}
