//! What a daemon says of its peers (`scored status`'s reachable peers, `scored_peers_connected`)
//! is the transport's view, even after its event queue overflowed and the transport's "peer up"
//! and "peer down" events were dropped: a daemon too busy to read its queue must not report a
//! dead peer as reachable for good. A real `Daemon` over the in-process transport.

mod support;

use scored::config::Config;
use scored::daemon::event_loop::drive;
use scored::hypervisor::memory::MemoryCluster;
use scored::p2p::{DirectNetwork, Directory, INBOUND_QUEUE};
use scored::topology::{HostId, Topology};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::{direct, inprocess};

#[test]
fn a_daemon_whose_peer_events_were_dropped_still_reports_the_peers_it_has() {
    inprocess::runtime().block_on(async {
        let mut text = String::from("[levels]\nweights = [1]\n[defaults]\nmax_vms = 4\n");
        for i in 0..4 {
            text.push_str(&format!("[[host]]\nname = \"h{i}\"\npath = [\"tor\"]\n"));
        }
        let topo = Arc::new(Topology::parse(Path::new("peers.toml"), &text).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let sim = MemoryCluster::new(&topo);
        let net = DirectNetwork::new(topo.clone());
        let mut config = Config::default();
        config.token.regeneration_timeout_ms = Some(3_600_000);
        let me = HostId(0);
        let (node, inbound) = direct::joined(&net, &topo, &sim, me, Vec::new(), config, dir.path());
        // h1..h3 join (three "peer up" events), then h3 flaps more times than h0's queue holds
        // and ends up, then h2 goes down: h2's "down" and h3's last events find the queue full.
        let _others: Vec<_> = (1..4)
            .map(|h| net.join(HostId(h), Arc::new(Directory::new(topo.clone(), HostId(h)))))
            .collect();
        for _ in 0..INBOUND_QUEUE {
            net.set_reachable(HostId(3), false);
            net.set_reachable(HostId(3), true);
        }
        net.set_reachable(HostId(2), false);

        // Only now does h0 read its queue.
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let driving = tokio::spawn(drive(node.clone(), inbound, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        // The gauges are refreshed every few seconds; the queue is read long before.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let reachable = loop {
            let status = node.status();
            let gauge = node.metrics().peers.connected.get();
            if (status.peers_reachable.len() as i64, gauge) == (2, 2)
                || tokio::time::Instant::now() > deadline
            {
                break (status.peers_reachable, gauge);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            reachable,
            (vec!["h1".to_string(), "h3".to_string()], 2),
            "h2 is down and h3 up"
        );
        let _ = stop_tx.send(true);
        let _ = driving.await;
    });
}
