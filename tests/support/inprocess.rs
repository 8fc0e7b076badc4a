//! One [`Daemon`] inside the test (or bench) process, built the way the in-process tests
//! and benches need it: synthetic traffic over a 1 s window, warmed up as if it had run for 30 s,
//! metrics in a registry of its own, the journal in `dir`. The caller wires the transport and
//! starts `drive` if it wants the event loop.

use prometheus_client::registry::Registry;
use scored::config::Config;
use scored::daemon::journal::Journal;
use scored::daemon::traffic::Traffic;
use scored::daemon::{Daemon, Parts};
use scored::flows::synthetic::{Demand, SyntheticSource};
use scored::flows::table::TableConfig;
use scored::hypervisor::Hypervisor;
use scored::metrics::Metrics;
use scored::p2p::Peers;
use scored::topology::{HostId, Topology};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn node<P: Peers>(
    topo: &Arc<Topology>,
    me: HostId,
    peers: P,
    hv: Arc<dyn Hypervisor>,
    demands: Vec<Demand>,
    config: Config,
    dir: &Path,
) -> Arc<Daemon<P>> {
    let table = TableConfig {
        window: Duration::from_secs(1),
        ..TableConfig::default()
    };
    let (journal, _) = Journal::open(&dir.join(format!("h{}.journal", me.0))).unwrap();
    Arc::new(Daemon::new(Parts {
        topo: topo.clone(),
        me,
        peers: Arc::new(peers),
        hv,
        traffic: Traffic::Synthetic {
            source: Box::new(SyntheticSource::new(table, demands).unwrap()),
            started: Instant::now() - Duration::from_secs(30),
        },
        config,
        metrics: Arc::new(Metrics::register(
            &mut Registry::default(),
            topo.level_names(),
        )),
        journal,
    }))
}

/// The runtime the in-process tests drive their nodes on: two workers, as the daemon has.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
