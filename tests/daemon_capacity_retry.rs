//! A decision whose best destination's capacity answer timed out asks that host once more, as a
//! token hand-off is retried, and only then gives up: a real `Daemon` deciding through the
//! in-process transport, with the destination's side played by hand so the first answer can be
//! held back past the timeout.

mod support;

use scored::config::Config;
use scored::decide::TurnOutcome;
use scored::flows::synthetic::Demand;
use scored::hypervisor::memory::{MemoryCluster, synthetic_vm};
use scored::p2p::{DirectNetwork, Directory, Inbound, InboundEvent};
use scored::proto::{CapacityResponse, PlacementResponse, Stamp, VmId};
use scored::topology::{HostId, Topology};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::inprocess;

const TIMEOUT: Duration = Duration::from_millis(300);

/// Two hosts in one rack; the subject on h1 talks only to a partner on h2, so moving to h2 is
/// the one move with a benefit.
fn topology() -> Arc<Topology> {
    let t = "[levels]\nnames = [\"rack\"]\nweights = [1.0]\n\n\
             [defaults]\nmax_vms = 4\nmemory_mib = 4096\nreserve_memory_mib = 256\n\n\
             [[host]]\nname = \"h1\"\npath = [\"tor1\"]\n\n\
             [[host]]\nname = \"h2\"\npath = [\"tor1\"]\n";
    Arc::new(Topology::parse(Path::new("retry-topology.toml"), t).unwrap_or_else(|e| panic!("{e}")))
}

/// Plays h2: answers location queries from its directory (the transport does that) and each
/// capacity request after the delay `delays` gives for it (`None`: never). Returns how many
/// capacity requests it saw.
async fn destination(mut inbound: Inbound, delays: Vec<Option<Duration>>) -> usize {
    let mut seen = 0;
    let mut held = Vec::new();
    let until = Instant::now() + 4 * TIMEOUT;
    while let Ok(Some(ev)) = tokio::time::timeout_at(until.into(), inbound.recv()).await {
        if let InboundEvent::Capacity { reply, .. } = ev {
            let delay = delays.get(seen).copied().flatten();
            seen += 1;
            let answer = CapacityResponse {
                free_slots: 3,
                free_memory_mib: 3000,
                cpu_load: 0.1,
                maintenance: false,
                incoming_migrations: 0,
                accepts: true,
            };
            match delay {
                Some(d) => {
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        reply.send(PlacementResponse {
                            capacity: answer,
                            refused_by_rule: None,
                        });
                    });
                }
                // Keep the responder alive: the asker must time out, not see a refusal.
                None => held.push(reply),
            }
        }
    }
    seen
}

async fn decide(delays: Vec<Option<Duration>>) -> (TurnOutcome, String, usize) {
    let topo = topology();
    let dir = tempfile::tempdir().unwrap();
    let sim = MemoryCluster::new(&topo);
    let (subject, partner) = (VmId(0x0a00_0001), VmId(0x0a00_0002));
    sim.add_vm(HostId(0), synthetic_vm(subject, 512)).unwrap();
    sim.add_vm(HostId(1), synthetic_vm(partner, 512)).unwrap();
    let net = DirectNetwork::new(topo.clone());
    let h2_dir = Arc::new(Directory::new(topo.clone(), HostId(1)));
    h2_dir.set_local([(partner, Stamp::default())]);
    let (_h2_peers, h2_inbound) = net.join(HostId(1), h2_dir);
    let h2 = tokio::spawn(destination(h2_inbound, delays));

    let (peers, _inbound) = net.join(HostId(0), Arc::new(Directory::new(topo.clone(), HostId(0))));
    let mut config = Config::default();
    config.token.handoff_timeout_ms = TIMEOUT.as_millis() as u64;
    config.decision.cooldown_base_s = 0;
    let demands = vec![Demand {
        vm: subject,
        partner,
        bytes_per_sec: 1000.0,
    }];
    let hv = Arc::new(sim.host(HostId(0)));
    let node = inprocess::node(&topo, HostId(0), peers, hv, demands, config, dir.path());
    node.refresh_inventory().await.unwrap();
    node.traffic().tick(Instant::now());
    let vm = node.inventory()[0].clone();
    let a = node.assess(&vm).await;
    let seen = h2.await.unwrap();
    (a.outcome, a.detail, seen)
}

#[tokio::test]
async fn a_timed_out_capacity_answer_is_asked_for_once_more() {
    // The first answer comes after the timeout, the second at once: the move is found.
    let (outcome, detail, seen) = decide(vec![Some(2 * TIMEOUT), Some(Duration::ZERO)]).await;
    assert_eq!(outcome, TurnOutcome::Migrated, "{detail}");
    assert_eq!(seen, 2, "one request, then one more");
}

#[tokio::test]
async fn a_host_that_never_answers_is_asked_twice_then_counts_as_no_answer() {
    let (outcome, detail, seen) = decide(vec![None, None, None]).await;
    assert_eq!(outcome, TurnOutcome::NoCapacity, "{detail}");
    assert!(detail.contains("1 no answer"), "{detail}");
    assert_eq!(seen, 2, "one more request, not more");
}

#[tokio::test]
async fn a_prompt_answer_is_asked_for_once() {
    let (outcome, detail, seen) = decide(vec![Some(Duration::ZERO)]).await;
    assert_eq!(outcome, TurnOutcome::Migrated, "{detail}");
    assert_eq!(seen, 1);
}
