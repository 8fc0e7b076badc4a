//! Zombies: one VM running on two hosts at once (a failed migration left a copy behind). Three
//! real `Daemon`s over the in-process transport, each with its own hypervisor: h1 and h2 each run
//! a copy of V, h3 runs V's partner, so moving V to h3 is a clear gain. While both copies run,
//! nobody decides for V, and every daemon says so (gauge, `scored status`, h1 naming the journal
//! entry of the failed migration); once one copy is gone, V is decided for again.

mod support;

use scored::config::Config;
use scored::daemon::Daemon;
use scored::daemon::control::{Reply, Request, render_status};
use scored::daemon::event_loop::drive;
use scored::daemon::journal::{Ending, Journal};
use scored::decide::TurnOutcome;
use scored::flows::synthetic::Demand;
use scored::hypervisor::memory::{MemoryCluster, synthetic_vm};
use scored::hypervisor::{Destination, Hypervisor, MigrationParams};
use scored::p2p::{DirectNetwork, DirectPeers, Directory, Peers};
use scored::proto::VmId;
use scored::topology::{HostId, Topology};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{direct, inprocess};

fn topology() -> Arc<Topology> {
    let t = "[levels]\nnames = [\"rack\"]\nweights = [1.0]\n\n\
             [defaults]\nmax_vms = 4\nmemory_mib = 4096\nreserve_memory_mib = 256\n\n\
             [[host]]\nname = \"h1\"\npath = [\"tor1\"]\n\n\
             [[host]]\nname = \"h2\"\npath = [\"tor1\"]\n\n\
             [[host]]\nname = \"h3\"\npath = [\"tor1\"]\n";
    Arc::new(Topology::parse(Path::new("zombie-topology.toml"), t).unwrap())
}

const V: VmId = VmId(0x0a00_0001);
const PARTNER: VmId = VmId(0x0a00_0002);

#[test]
fn a_vm_running_on_two_hosts_is_decided_by_nobody_and_reported_by_everyone() {
    let rt = inprocess::runtime();
    rt.block_on(async {
        let topo = topology();
        let dir = tempfile::tempdir().unwrap();
        // Two hypervisors that each run V: h1's and h3's world, and h2's.
        let main = MemoryCluster::new(&topo);
        main.add_vm(HostId(0), synthetic_vm(V, 512)).unwrap();
        main.add_vm(HostId(2), synthetic_vm(PARTNER, 512)).unwrap();
        let second = MemoryCluster::new(&topo);
        second.add_vm(HostId(1), synthetic_vm(V, 512)).unwrap();

        // h1's journal: the migration of V to h2 that failed and left a copy there.
        let (mut journal, _) = Journal::open(&dir.path().join("h0.journal")).unwrap();
        let entry = journal.begin(V, "h1", "h2", 1, 1, 1_000).unwrap();
        journal
            .end(
                entry.id,
                Ending::Failed {
                    reason: "virDomainMigrate3: connection reset".into(),
                },
            )
            .unwrap();
        drop(journal);

        let net = DirectNetwork::new(topo.clone());
        let mut config = Config::default();
        config.token.handoff_timeout_ms = 300;
        config.decision.cooldown_base_s = 0;
        config.token.min_round_s = 1;
        let mut nodes: Vec<Arc<Daemon<DirectPeers>>> = Vec::new();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        for (h, cluster) in [(0, &main), (1, &second), (2, &main)] {
            let me = HostId(h);
            let (peers, inbound) = net.join(me, Arc::new(Directory::new(topo.clone(), me)));
            let demands = if h == 1 {
                Vec::new()
            } else {
                vec![Demand {
                    vm: V,
                    partner: PARTNER,
                    bytes_per_sec: 1000.0,
                }]
            };
            let node = inprocess::node(
                &topo,
                me,
                peers,
                Arc::new(cluster.host(me)),
                demands,
                config.clone(),
                dir.path(),
            );
            let mut stop = stop_rx.clone();
            tokio::spawn(drive(node.clone(), inbound, async move {
                let _ = stop.wait_for(|s| *s).await;
            }));
            nodes.push(node);
        }
        // Every daemon sees V on h1 and h2, from their own inventories.
        let both = vec![HostId(0), HostId(1)];
        support::time::poll_until("every daemon sees the zombie", || {
            nodes
                .iter()
                .all(|n| n.zombies().iter().any(|z| z.vm == V && z.hosts == both))
        })
        .await;
        for (i, n) in nodes.iter().enumerate() {
            // The gauge is set by the inventory task, right after the same reading.
            support::time::poll_until("the gauge shows the zombie", || {
                n.metrics().zombie_vms.get() == 1
            })
            .await;
            let Reply::Status(s) = n.commands().ask(Request::Status).await else {
                panic!("no status from h{}", i + 1);
            };
            assert_eq!(s.zombies.len(), 1, "h{}: {:?}", i + 1, s.zombies);
            assert_eq!(s.zombies[0].vm, V.to_string());
            assert_eq!(s.zombies[0].hosts, vec!["h1", "h2"]);
            // Only h1's journal holds the migration that left the copy on h2.
            match (i, s.zombies[0].journal.as_deref()) {
                (0, Some(j)) => assert!(
                    j.contains(&format!("entry {}", entry.id))
                        && j.contains("h1 -> h2")
                        && j.contains("failed"),
                    "{j}"
                ),
                (0, None) => panic!("h1's status must name its journal entry"),
                (_, j) => assert_eq!(j, None),
            }
            assert!(render_status(&s).contains("ZOMBIE: VM 10.0.0.1 runs on h1, h2"));
        }
        // While both copies run, the token visits V on both hosts and nobody moves it.
        for i in [0, 1] {
            nodes[i].traffic().tick(Instant::now());
            let vm = nodes[i].inventory()[0].clone();
            let a = nodes[i].assess(&vm).await;
            assert_eq!(a.outcome, TurnOutcome::Zombie, "h{}: {}", i + 1, a.detail);
            assert!(a.detail.contains("h1 and h2"), "{}", a.detail);
        }
        assert_eq!(
            (main.migrations(), second.migrations(), main.host_of(V)),
            (0, 0, Some(HostId(0))),
            "V was migrated while a second copy of it ran on h2"
        );

        // h2's copy goes (here: it leaves h2's hypervisor for a host no daemon runs on).
        let elsewhere = Destination {
            host: "h3".into(),
            libvirt_uri: None,
            migration_uri: None,
        };
        second
            .host(HostId(1))
            .migrate(V, &elsewhere, &MigrationParams::default())
            .unwrap();
        support::time::poll_until("every daemon sees the zombie gone", || {
            nodes
                .iter()
                .all(|n| n.zombies().is_empty() && n.metrics().zombie_vms.get() == 0)
        })
        .await;
        // And V is decided for again: it joins its partner on h3.
        support::time::poll_until("V moves to its partner's host", || {
            main.host_of(V) == Some(HostId(2))
        })
        .await;
        let _ = stop_tx.send(true);
    });
}

/// Inventory announcements are not one per connection: gossip delivers each to every host, so a
/// fan-out to N hosts after the idle close cost N publishes and N² deliveries. A host that started
/// alone announces once when peers appear, and a burst of new connections adds nothing.
#[test]
fn a_burst_of_new_connections_publishes_the_inventory_once() {
    const HOSTS: u32 = 8;
    let mut t = String::from(
        "[levels]\nnames = [\"rack\"]\nweights = [1.0]\n\n\
         [defaults]\nmax_vms = 4\nmemory_mib = 4096\n\n",
    );
    for h in 0..HOSTS {
        t.push_str(&format!(
            "[[host]]\nname = \"h{}\"\npath = [\"tor1\"]\n\n",
            h + 1
        ));
    }
    let topo = Arc::new(Topology::parse(Path::new("burst.toml"), &t).unwrap());
    let rt = inprocess::runtime();
    let dir = tempfile::tempdir().unwrap();
    let net = DirectNetwork::new(topo.clone());
    let sim = MemoryCluster::new(&topo);
    let start = |h: u32| {
        let me = HostId(h);
        sim.add_vm(me, synthetic_vm(VmId(0x0a00_0101 + h), 512))
            .unwrap();
        let mut config = Config::default();
        // No token: its heartbeats are announcements too, and would blur the count.
        config.token.regeneration_timeout_ms = Some(24 * 3600 * 1000);
        let (node, inbound) = direct::joined(&net, &topo, &sim, me, Vec::new(), config, dir.path());
        rt.spawn(drive(node.clone(), inbound, std::future::pending()));
        node
    };
    let published =
        |n: &Arc<Daemon<DirectPeers>>| n.peers().metrics().announcements_published.get();
    let h1 = start(0);
    // Alone, h1 has nobody to tell: its announcements are not published (and retried).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(published(&h1), 0);
    // Seven hosts come up at once: seven new connections at h1.
    let others: Vec<_> = (1..HOSTS).map(start).collect();
    let mine = VmId(0x0a00_0101);
    rt.block_on(support::time::poll_until(
        "every host knows h1's VM from its announcement",
        || {
            others
                .iter()
                .all(|n| n.peers().directory().known_vms().contains(&mine))
        },
    ));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(published(&h1), 1, "h1's announcements after 7 connections");
    // Every link drops and comes back (an idle close, then a fan-out): a burst of connection
    // events at every host, and no announcement, since nothing changed and none is due.
    let before: Vec<u64> = others.iter().map(published).collect();
    for h in 1..HOSTS {
        net.set_reachable(HostId(h), false);
    }
    for h in 1..HOSTS {
        net.set_reachable(HostId(h), true);
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        published(&h1),
        1,
        "h1's announcements after a reconnection burst"
    );
    let after: Vec<u64> = others.iter().map(published).collect();
    assert_eq!(after, before, "the other hosts' announcements");
}
