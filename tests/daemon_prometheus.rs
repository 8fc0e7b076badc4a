//! A real Prometheus server scrapes the daemons of a running loopback cluster (eight `scored run`
//! processes, metrics on 127.0.0.1) and its HTTP API shows the series that move as they work:
//! token passes, decisions by outcome, migrations, flow-table entries, peers, the token epoch.

mod support;

use std::net::SocketAddr;
use support::cluster::{Cluster, Options};
use support::host::free_ports;
use support::prometheus::Prometheus;

#[test]
fn prometheus_scrapes_a_working_cluster() {
    let hosts = 8;
    let ports = free_ports(hosts);
    let mut host_overrides = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        host_overrides.push((i, "metrics.enabled".to_string(), "true".to_string()));
        host_overrides.push((
            i,
            "metrics.listen".to_string(),
            format!("\"127.0.0.1:{p}\""),
        ));
    }
    let mut c = Cluster::new(Options {
        hosts,
        vms: 12,
        host_overrides,
        ..Options::default()
    });
    c.start_all();
    let targets: Vec<SocketAddr> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let prom = Prometheus::start_many(&targets, "scored")
            .await
            .expect("prometheus");
        prom.wait_for(r#"count(up{job="scored"} == 1)"#, |v| v == hosts as f64)
            .await;
        prom.wait_for("sum(scored_token_passes_total)", |v| v >= 3.0)
            .await;
        prom.wait_for(r#"sum(scored_decisions_total{outcome="migrated"})"#, |v| {
            v >= 1.0
        })
        .await;
        prom.wait_for("sum(scored_migrations_succeeded_total)", |v| v >= 1.0)
            .await;
        prom.wait_for("sum(scored_migration_duration_seconds_count)", |v| v >= 1.0)
            .await;
        prom.wait_for("max(scored_token_epoch)", |v| v >= 1.0).await;
        // Connections open on demand: every host has some, none more than its peers.
        prom.wait_for("min(scored_peers_connected)", |v| v >= 1.0)
            .await;
        prom.wait_for("max(scored_peers_connected)", |v| v <= (hosts - 1) as f64)
            .await;
        prom.wait_for("sum(scored_flow_entries)", |v| v > 0.0).await;
        prom.wait_for("sum(scored_vms)", |v| v == 12.0).await;
        // Exactly one host holds the token at any scrape (or none, in a hand-off).
        prom.wait_for("sum(scored_token_held)", |v| v <= 1.0).await;
        // libp2p's own metrics, in the same registry: connections, bytes, gossip, liveness.
        prom.wait_for(
            "min(scored_libp2p_swarm_connections_established_total)",
            |v| v >= 1.0,
        )
        .await;
        prom.wait_for(
            r#"min(sum by (instance) (scored_libp2p_bandwidth_bytes_total{direction="Outbound"}))"#,
            |v| v > 0.0,
        )
        .await;
        prom.wait_for("sum(scored_libp2p_gossipsub_messages_total)", |v| v >= 1.0)
            .await;
        prom.wait_for("sum(scored_libp2p_identify_received_total)", |v| v >= 1.0)
            .await;
    });
    let f = c.shared();
    f.check().unwrap();
    assert_eq!(f.placement().len(), 12);
}
