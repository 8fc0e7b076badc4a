//! One daemon of the lab: the real one, built by `daemon::run::start` as `scored run` builds it
//! (same rooms, turn, decision, directory, journal, regeneration), on its own libp2p swarm on
//! 127.0.0.1, driven by the shared event loop. The lab can crash it (no token handed on) and
//! start it again with the same key, port and journal.

use super::datacentre::{DataCentre, LabHypervisor};
use crate::config::Config;
use crate::daemon::Daemon;
use crate::daemon::event_loop::{crash, drive};
use crate::daemon::journal::Journal;
use crate::daemon::run::{Node, Started, start};
use crate::daemon::traffic::Traffic;
use crate::flows::synthetic::SyntheticSource;
use crate::flows::table::TableConfig;
use crate::metrics::Metrics;
use crate::p2p::{Libp2pPeers, P2pMetrics, Severed};
use crate::topology::{HostId, Topology};
use anyhow::anyhow;
use libp2p::identity::Keypair;
use prometheus_client::registry::Registry;
use scored_proto::VmId;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// What one daemon's counters said when it crashed: the lab adds them to the living ones'.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub outcomes: [u64; crate::decide::TurnOutcome::ALL.len()],
    pub sent: u64,
    /// `sent` by protocol, in [`crate::p2p::metrics::PROTOCOLS`]' order.
    pub sent_by: [u64; crate::p2p::metrics::PROTOCOLS.len()],
    pub served: u64,
    pub published: u64,
    pub received: u64,
    /// Gossip messages given up on the way to a slow peer.
    pub gossip_dropped: u64,
    pub regenerations: u64,
    pub migrations: u64,
    /// Group moves planned (recommended or carried out), and hosts surveyed to plan them.
    pub group_plans: u64,
    pub group_surveys: u64,
    /// Over the decided turns: other hosts running their partners, hosts asked for capacity.
    pub partner_hosts: u64,
    pub candidates: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        for (a, b) in self.outcomes.iter_mut().zip(o.outcomes) {
            *a += b;
        }
        self.sent += o.sent;
        for (a, b) in self.sent_by.iter_mut().zip(o.sent_by) {
            *a += b;
        }
        self.served += o.served;
        self.published += o.published;
        self.received += o.received;
        self.gossip_dropped += o.gossip_dropped;
        self.regenerations += o.regenerations;
        self.migrations += o.migrations;
        self.group_plans += o.group_plans;
        self.group_surveys += o.group_surveys;
        self.partner_hosts += o.partner_hosts;
        self.candidates += o.candidates;
    }

    fn read(m: &Metrics, p: &P2pMetrics) -> Counters {
        let mut outcomes = [0; crate::decide::TurnOutcome::ALL.len()];
        for (i, o) in crate::decide::TurnOutcome::ALL.into_iter().enumerate() {
            outcomes[i] = m
                .decisions
                .get_or_create(&crate::metrics::OutcomeLabels { outcome: o })
                .get();
        }
        Counters {
            outcomes,
            sent: p.sent_total(),
            sent_by: p.sent_by_protocol(),
            served: p.served_total(),
            published: p.announcements_published.get(),
            received: p.announcements_received.get(),
            gossip_dropped: p.gossip_dropped.get(),
            regenerations: m.token.regenerations.get(),
            migrations: m.migrations.succeeded.get(),
            group_plans: m.group_plans.get(),
            group_surveys: m.group_surveys.get(),
            partner_hosts: m.decision_partner_hosts.get(),
            candidates: m.decision_candidates.get(),
        }
    }
}

/// A running daemon and what the lab reads of it.
pub struct Running {
    pub daemon: Arc<Daemon<Libp2pPeers>>,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    drive: tokio::task::JoinHandle<()>,
    /// VMs whose traffic its flow source was last given, and the scenario round.
    pub fed: (BTreeSet<VmId>, usize),
}

/// One host of the lab, up or down.
pub struct LabHost {
    pub id: HostId,
    pub key: Keypair,
    pub journal: PathBuf,
    pub severed: Severed,
    pub stalled: Arc<AtomicBool>,
    pub running: Option<Running>,
    /// Decision records already counted (by end time) for the deferral reasons.
    pub seen_ms: u64,
    pub starts: u32,
}

impl LabHost {
    /// Starts (or restarts) the daemon.
    pub async fn start(
        &mut self,
        config: &Config,
        topo: &Arc<Topology>,
        dc: &DataCentre,
        round: usize,
    ) -> anyhow::Result<()> {
        let (journal, left) = Journal::open(&self.journal)?;
        let hv = Arc::new(LabHypervisor {
            inner: dc.cluster.host(self.id),
            model: dc.model,
            stalled: self.stalled.clone(),
            stall: config.hypervisor.call_timeout() + Duration::from_secs(1),
        });
        let local: BTreeSet<VmId> = dc
            .cluster
            .placement()
            .into_iter()
            .filter(|(_, h)| *h == self.id)
            .map(|(v, _)| v)
            .collect();
        let table = TableConfig {
            window: config.flows.window(),
            idle: config.flows.idle_expiry(),
            cap: config.flows.max_entries as usize,
            seed: u64::from(self.id.0),
            ..TableConfig::default()
        };
        let source = SyntheticSource::new(table, dc.demands_of(round, local.iter().copied()))?;
        // At the lab's start the hosts have been running for a while: their flow tables hold a
        // full window. A restarted host starts cold, as a rebooted one would.
        let warm = if self.starts == 0 {
            config.flows.window()
        } else {
            Duration::ZERO
        };
        self.starts += 1;
        let mut registry = Registry::default();
        let Started {
            daemon,
            inbound,
            metrics,
            inventory: _,
        } = start(
            Node {
                config: config.clone(),
                topo: topo.clone(),
                me: self.id,
                key: self.key.clone(),
                hv,
                traffic: Traffic::Synthetic {
                    source: Box::new(source),
                    started: Instant::now() - warm,
                },
                journal,
                left,
                rules: crate::rules::Rules::default(),
                severed: self.severed.clone(),
            },
            &mut registry,
        )
        .await
        .map_err(|e| anyhow!("host {}: {e:#}", topo.host(self.id).name))?;
        let drive = tokio::spawn(drive(daemon.clone(), inbound, std::future::pending()));
        self.running = Some(Running {
            daemon,
            metrics,
            registry,
            drive,
            fed: (local, round),
        });
        Ok(())
    }

    /// Crashes the daemon: no token handed on, every connection closed at once. Returns its
    /// counters, which die with it.
    pub fn crash(&mut self) -> Counters {
        let Some(r) = self.running.take() else {
            return Counters::default();
        };
        let c = Counters::read(&r.metrics, r.daemon.peers().metrics());
        crash(&r.daemon);
        r.daemon.peers().halt();
        r.drive.abort();
        c
    }

    pub fn counters(&self) -> Counters {
        self.running
            .as_ref()
            .map(|r| Counters::read(&r.metrics, r.daemon.peers().metrics()))
            .unwrap_or_default()
    }

    /// Gives the flow source the traffic of the VMs on this host now, if they or the round
    /// changed (a host sees only its own VMs' traffic; a VM that arrives brings its flows).
    pub fn feed(&mut self, dc: &DataCentre, local: BTreeSet<VmId>, round: usize) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        if r.fed.0 == local && r.fed.1 == round {
            return;
        }
        let demands = dc.demands_of(round, local.iter().copied());
        if let Traffic::Synthetic { source, .. } = &mut *r.daemon.traffic() {
            source.set_demands(demands);
        }
        r.fed = (local, round);
    }
}

/// The configuration every lab daemon runs with: the defaults, the lab's own choices (no
/// metrics endpoint, a control socket and journal per host under `dir`), then `overrides`.
pub fn config(
    dir: &std::path::Path,
    policy: &str,
    overrides: &[crate::config::Override],
) -> anyhow::Result<Config> {
    let mut all: Vec<crate::config::Override> = [
        ("metrics.enabled", "false".to_string()),
        ("token.policy", format!("\"{policy}\"")),
        (
            "control.socket",
            format!("\"{}\"", dir.join("unused.sock").display()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| format!("{k}={v}").parse())
    .collect::<Result<_, _>>()
    .map_err(|e| anyhow!("{e}"))?;
    all.extend(overrides.iter().cloned());
    Config::parse(&dir.join("lab.toml"), "", &all).map_err(|e| anyhow!("{e}"))
}

/// The loss timeout of the configuration (for the partition's heal check).
pub fn loss_timeout(config: &Config) -> Duration {
    crate::daemon::loss_timing(config).0
}
