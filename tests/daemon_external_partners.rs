//! A VM that talks to an address no host runs (the data centre's gateway) is still decided on
//! while a host that has nothing to do with it is down, and a host that is down holds back only
//! the decisions whose partners it may run. Sixteen real `Daemon`s over the in-process transport,
//! one hypervisor for all; the token is never started, the decisions are taken by hand.

mod support;

use scored::config::Config;
use scored::daemon::Daemon;
use scored::daemon::event_loop::drive;
use scored::decide::TurnOutcome;
use scored::flows::synthetic::Demand;
use scored::hypervisor::memory::{MemoryCluster, synthetic_vm};
use scored::p2p::{DirectNetwork, DirectPeers, Peers};
use scored::proto::VmId;
use scored::topology::{HostId, Topology};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use support::{direct, inprocess};

/// Sixteen hosts, four racks of four (h0..h3 under tor0, h4..h7 under tor1, …).
fn topology() -> Arc<Topology> {
    let mut t = String::from(
        "[levels]\nnames = [\"rack\", \"core\"]\nweights = [1.0, 3.0]\n\n\
         [defaults]\nmax_vms = 16\nmemory_mib = 16384\nreserve_memory_mib = 256\n",
    );
    for i in 0..16 {
        t.push_str(&format!(
            "[[host]]\nname = \"h{i}\"\npath = [\"tor{}\"]\n",
            i / 4
        ));
    }
    Arc::new(Topology::parse(Path::new("external-partners.toml"), &t).unwrap())
}

/// VM `k` of host `h`: 10.0.h.k.
fn on(h: u8, k: u8) -> VmId {
    VmId::from_ipv4(std::net::Ipv4Addr::new(10, 0, h, k))
}

/// The gateway: no host runs it.
fn gateway() -> VmId {
    VmId::from_ipv4(std::net::Ipv4Addr::new(10, 99, 0, 1))
}

#[test]
fn a_host_that_is_down_defers_only_the_vms_whose_partners_it_may_run() {
    let rt = inprocess::runtime();
    rt.block_on(async {
        let topo = topology();
        let dir = tempfile::tempdir().unwrap();
        let sim = MemoryCluster::new(&topo);
        // S on h0 talks to ten partners, six of them on h5, and to the gateway. B on h0 talks
        // to P on h15, the host that goes down. C on h0 talks to a partner on h6 and is in a
        // placement group with a replica that runs nowhere (stopped) and with P.
        let (s, b, p, c) = (on(0, 1), on(0, 2), on(15, 1), on(0, 3));
        let partners = [
            on(5, 1),
            on(5, 2),
            on(5, 3),
            on(5, 4),
            on(5, 5),
            on(5, 6),
            on(6, 1),
            on(7, 1),
            on(9, 1),
            on(10, 1),
        ];
        for vm in [s, b, p, c].iter().chain(&partners) {
            let h = HostId(u32::from(vm.to_ipv4().octets()[2]));
            sim.add_vm(h, synthetic_vm(*vm, 512)).unwrap();
        }
        let mut demands: Vec<Demand> = partners
            .iter()
            .map(|&partner| Demand {
                vm: s,
                partner,
                bytes_per_sec: 1000.0,
            })
            .collect();
        demands.push(Demand {
            vm: s,
            partner: gateway(),
            bytes_per_sec: 5000.0,
        });
        demands.push(Demand {
            vm: b,
            partner: p,
            bytes_per_sec: 1000.0,
        });
        demands.push(Demand {
            vm: c,
            partner: on(6, 1),
            bytes_per_sec: 1000.0,
        });
        let rules_file = dir.path().join("rules.toml");
        std::fs::write(
            &rules_file,
            format!(
                "[[group]]\nname = \"db\"\nkind = \"anti-affinity\"\nscope = \"host\"\nmembers = [\"{c}\", \"10.0.12.7\", \"{p}\"]\n"
            ),
        )
        .unwrap();
        let rules = scored::rules::file::load(&rules_file, &topo).unwrap();

        let net = DirectNetwork::new(topo.clone());
        let mut config = Config::default();
        config.token.handoff_timeout_ms = 300;
        // No token in this test: the decisions below are taken by hand.
        config.token.regeneration_timeout_ms = Some(3_600_000);
        config.decision.cooldown_base_s = 0;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut nodes: Vec<Arc<Daemon<DirectPeers>>> = Vec::new();
        for h in 0..16 {
            let me = HostId(h);
            let mine = if h == 0 { demands.clone() } else { Vec::new() };
            let (node, inbound) =
                direct::joined(&net, &topo, &sim, me, mine, config.clone(), dir.path());
            let mut stop = stop_rx.clone();
            tokio::spawn(drive(node.clone(), inbound, async move {
                let _ = stop.wait_for(|s| *s).await;
            }));
            nodes.push(node);
        }
        nodes[0].set_rules(rules);
        // h0 has heard every host's inventory (h15's included) before h15 goes down.
        let h0 = nodes[0].clone();
        support::time::poll_until("h0 knows where every partner runs", || {
            h0.cached_partners(s).len() == partners.len() && h0.cached_partners(b).len() == 1
        })
        .await;
        net.set_reachable(HostId(15), false);

        h0.traffic().tick(Instant::now());
        let vm_of = |id: VmId| h0.inventory().into_iter().find(|v| v.id == id).unwrap();
        for _ in 0..3 {
            let a = h0.assess(&vm_of(s)).await;
            assert_eq!(a.outcome, TurnOutcome::Migrated, "S: {}", a.detail);
            assert_eq!(a.to, Some(HostId(5)), "S: {}", a.detail);
            assert_eq!(a.partners.len(), partners.len(), "the gateway is left out");
            // P's host is down: B is decided on with P where h15 last said it runs (h15
            // cannot take B, so B stays), not deferred.
            let a = h0.assess(&vm_of(b)).await;
            assert_ne!(a.outcome, TurnOutcome::Busy, "B: {}", a.detail);
            assert_eq!(a.partners, vec![(p, HostId(15), a.partners[0].2)]);
            // C's other replica is found to run nowhere, P where h15 last said: nothing keeps C
            // from h6.
            let a = h0.assess(&vm_of(c)).await;
            assert_eq!(a.outcome, TurnOutcome::Migrated, "C: {}", a.detail);
            assert_eq!(a.to, Some(HostId(6)), "C: {}", a.detail);
        }
        // The cache lost its entries (as after a flood of claims): partners are asked of the
        // hosts whose inventory names them. S is still decided on; B's partner may run on h15,
        // which does not answer, so B waits, and says which host it waits for.
        h0.peers().directory().forget_cached();
        let a = h0.assess(&vm_of(s)).await;
        assert_eq!(a.outcome, TurnOutcome::Migrated, "S: {}", a.detail);
        let a = h0.assess(&vm_of(b)).await;
        assert_eq!(a.outcome, TurnOutcome::Busy, "B: {}", a.detail);
        assert!(
            a.detail
                .contains("1 partner(s) could not be located (may run on h15, not answering)"),
            "{}",
            a.detail
        );
        // C's group member P may run on h15 too: deciding without it could put the two
        // together, so C waits, and says for which host.
        let a = h0.assess(&vm_of(c)).await;
        assert_eq!(a.outcome, TurnOutcome::Busy, "C: {}", a.detail);
        assert!(
            a.detail.contains(
                "1 placement-group member(s) could not be located (may run on h15, not answering)"
            ),
            "{}",
            a.detail
        );
        let _ = stop_tx.send(true);
    });
}
