//! `scored run`: builds the daemon from its configuration (topology, key, hypervisor, flow
//! source, libp2p, metrics, control socket, systemd notify) and drives its event loop until
//! SIGTERM or SIGINT. The loop itself is `event_loop::drive`, shared with the in-process tests.
//! Wiring only: what the daemon does is in its rooms.

use super::control;
use super::event_loop::{drive, shutdown};
use super::host::{Daemon, Parts};
use super::journal::Journal;
use super::traffic::Traffic;
use crate::config::{Config, Override};
use crate::flows::capture::{CaptureConfig, CaptureSource};
use crate::flows::synthetic::{Demand, SyntheticSource};
use crate::flows::table::TableConfig;
use crate::hypervisor::Hypervisor;
use crate::hypervisor::file::FileHost;
use crate::metrics::{EndpointLimits, Metrics, MetricsServer};
use crate::notify::Notifier;
use crate::p2p::{Directory, Inbound, Libp2pPeers, P2pConfig, P2pMetrics, Peers, Severed};
use crate::topology::{HostId, Topology};
use anyhow::{Context, anyhow};
use prometheus_client::registry::Registry;
use scored_proto::VmId;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UnixListener;

/// What `scored run` was asked to do.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub config: PathBuf,
    pub overrides: Vec<Override>,
    /// Validate configuration and topology, then exit.
    pub check_config: bool,
}

/// Loads and cross-checks the configuration and topology; names this host.
pub fn load(opts: &DaemonOptions) -> anyhow::Result<(Config, Arc<Topology>, HostId)> {
    let config = Config::load(&opts.config, &opts.overrides).map_err(|e| anyhow!("{e}"))?;
    let topo = Topology::load(&config.host.topology).map_err(|e| anyhow!("{e}"))?;
    let name = match &config.host.name {
        Some(n) => n.clone(),
        None => hostname().context("host.name is unset and the kernel host name is unreadable")?,
    };
    let me = topo.host_by_name(&name).map(|h| h.id).ok_or_else(|| {
        anyhow!(
            "{}: this host `{name}` is not in the topology {} (set host.name)",
            opts.config.display(),
            topo.source().display()
        )
    })?;
    let h = topo.host(me);
    if h.peer_id.is_none() || h.address.is_none() {
        return Err(anyhow!(
            "{}: host `{name}` needs an address and a peer_id to run the daemon (`scored keygen` prints the peer id)",
            topo.source().display()
        ));
    }
    check_migration_tls(&config)?;
    Ok((config, Arc::new(topo), me))
}

/// With encrypted migration on, a libvirt host must hold QEMU's certificates: a missing file
/// fails the start (and `--check-config`) by name rather than every migration later. A
/// simulated host migrates nothing through QEMU.
fn check_migration_tls(config: &Config) -> anyhow::Result<()> {
    if !config.migration.tls
        || config
            .hypervisor
            .uri
            .starts_with(crate::hypervisor::SIM_SCHEME)
    {
        return Ok(());
    }
    #[cfg(feature = "libvirt")]
    crate::hypervisor::libvirt::tls::check_certificates(&config.migration.tls_cert_dir)?;
    Ok(())
}

fn hostname() -> anyhow::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string())
}

/// The hypervisor backend and flow source the configuration names, with the cluster file of a
/// simulated host (whose traffic the daemon follows).
pub fn backend(
    config: &Config,
    topo: &Topology,
    me: HostId,
) -> anyhow::Result<(Arc<dyn Hypervisor>, Traffic, Option<FileHost>)> {
    let table = TableConfig {
        window: config.flows.window(),
        idle: config.flows.idle_expiry(),
        cap: config.flows.max_entries as usize,
        seed: rand::random(),
        ..TableConfig::default()
    };
    // A hypervisor not answering yet is an outage (reported by the first inventory read), not
    // a failed start: nothing is opened here.
    let backend = crate::hypervisor::open(&config.hypervisor.uri, &topo.host(me).name)?;
    let traffic = match &backend.simulated {
        // The traffic follows the file once it can be read (follow_shared_traffic).
        Some(host) => Traffic::Synthetic {
            source: Box::new(SyntheticSource::new(
                table,
                demands(&host.traffic().unwrap_or_default()),
            )?),
            started: Instant::now(),
        },
        None => Traffic::Capture(Box::new(CaptureSource::new(CaptureConfig {
            table,
            sample_one_in: config.flows.sampling,
            ..CaptureConfig::default()
        })?)),
    };
    Ok((backend.hypervisor, traffic, backend.simulated))
}

/// Both directions of each communicating pair of a shared cluster file.
fn demands(pairs: &[(VmId, VmId, f64)]) -> Vec<Demand> {
    pairs
        .iter()
        .flat_map(|&(a, b, rate)| {
            [
                Demand {
                    vm: a,
                    partner: b,
                    bytes_per_sec: rate,
                },
                Demand {
                    vm: b,
                    partner: a,
                    bytes_per_sec: rate,
                },
            ]
        })
        .collect()
}

/// A simulated host replays the traffic of its shared cluster file: when the file's traffic
/// changes (a test that makes traffic vary over time), the synthetic flows follow.
async fn follow_shared_traffic<P: Peers>(daemon: Arc<Daemon<P>>, host: FileHost) {
    let mut last = host.traffic().unwrap_or_default();
    let mut every = tokio::time::interval(Duration::from_secs(2));
    loop {
        every.tick().await;
        let h = host.clone();
        let Ok(Ok(now)) = tokio::task::spawn_blocking(move || h.traffic()).await else {
            continue;
        };
        if now != last {
            if let Traffic::Synthetic { source, .. } = &mut *daemon.traffic() {
                source.set_demands(demands(&now));
            }
            tracing::info!(pairs = now.len(), "simulated traffic changed");
            last = now;
        }
    }
}

/// What one daemon on the libp2p transport is built from: `scored run`'s host, or one of the
/// lab's (`scored lab`), which differ only in where these come from.
pub struct Node {
    pub config: Config,
    pub topo: Arc<Topology>,
    pub me: HostId,
    pub key: libp2p::identity::Keypair,
    pub hv: Arc<dyn Hypervisor>,
    pub traffic: Traffic,
    pub journal: Journal,
    /// Entries the journal's previous run left open.
    pub left: Vec<super::journal::Entry>,
    pub rules: crate::rules::Rules,
    /// Peers cut off on purpose (the lab's partitions); empty for `scored run`.
    pub severed: Severed,
}

/// A daemon built and on the network, its event loop not started yet.
pub struct Started {
    pub daemon: Arc<Daemon<Libp2pPeers>>,
    pub inbound: Inbound,
    pub metrics: Arc<Metrics>,
    /// The first inventory read (an error: the hypervisor does not answer yet).
    pub inventory: Result<(), crate::hypervisor::HypervisorError>,
}

/// Starts the libp2p node and the daemon on it, with their metrics in `registry`: the
/// placement rules in force, the journal reconciled, the first inventory read and announced.
pub async fn start(node: Node, registry: &mut Registry) -> anyhow::Result<Started> {
    let Node {
        config,
        topo,
        me,
        key,
        hv,
        traffic,
        journal,
        left,
        rules,
        severed,
    } = node;
    let metrics = Arc::new(Metrics::register(registry, topo.level_names()));
    let p2p_metrics = P2pMetrics {
        refused_connections: metrics.peers.refused.clone(),
        rejected: metrics.peers.rejected.clone(),
        ..P2pMetrics::default()
    };
    p2p_metrics.register(registry);

    let directory = Arc::new(Directory::new(topo.clone(), me));
    directory.set_stamp_skew(config.token.stamp_skew_steps);
    let republish = crate::p2p::zombies::republish_every(
        topo.hosts().len(),
        config.p2p.inventory_republish_per_s,
    );
    directory.zombies().set_republish_period(republish);
    let mut p2p = P2pConfig::new(key, topo.clone(), me);
    // The daemon announces its inventory itself (`daemon::zombies`): a second, early one
    // from the transport would double what every host receives at a cold start.
    p2p.inventory_interval = None;
    p2p.listen = config.p2p.listen.clone();
    p2p.limits = config.p2p.limits();
    p2p.idle_timeout = Duration::from_secs(config.p2p.idle_connection_timeout_s.into());
    // A move of a group move is answered when its migration ended. Taken at start: a longer
    // `migration.timeout_s` reloaded on SIGHUP counts after a restart.
    p2p.move_timeout = config.group_move_timeout();
    p2p.metrics = p2p_metrics;
    p2p.severed = severed;
    let (peers, inbound) = Libp2pPeers::start_observed(p2p, directory, Some(registry))
        .await
        .map_err(|e| anyhow!("p2p: {e}"))?;
    let daemon = Arc::new(Daemon::new(Parts {
        topo,
        me,
        peers: Arc::new(peers),
        hv,
        traffic,
        config: config.clone(),
        metrics: metrics.clone(),
        journal,
    }));
    tracing::info!(
        file = %config.placement.rules_file.display(),
        groups = rules.groups().len(),
        exclusions = rules.exclusions().len(),
        windows = rules.windows.len(),
        repair = rules.repair,
        "placement rules in force"
    );
    daemon.set_rules(rules);
    daemon.reconcile(left).await;
    // A hypervisor that does not answer yet is an outage like any other (logged once, metric,
    // status): the daemon starts with no local VMs, decides nothing for its host and takes no
    // VM in, and picks its VMs up on the first inventory refresh that reaches the hypervisor.
    // It announces no (empty) inventory meanwhile: its peers keep what they knew.
    let inventory = daemon.refresh_inventory().await;
    if inventory.is_ok()
        && let Err(e) = daemon.peers().announce_inventory().await
    {
        tracing::info!(error = %e, "first inventory announcement not published (no peer yet)");
    }
    Ok(Started {
        daemon,
        inbound,
        metrics,
        inventory,
    })
}

/// `scored run`.
pub fn run(opts: DaemonOptions) -> anyhow::Result<()> {
    let (config, topo, me) = load(&opts)?;
    // A rules file that does not load stops the start: running without the anti-affinity an
    // operator wrote could put replicas together. (On SIGHUP the rules in force stay instead.)
    let rules = super::rules::read_rules_file(&config.placement.rules_file, &topo)
        .map_err(|e| anyhow!("placement rules:\n{e}"))?;
    if opts.check_config {
        println!(
            "{}: ok (host {}, topology {} with {} hosts, {} placement group(s))",
            opts.config.display(),
            topo.host(me).name,
            topo.source().display(),
            topo.hosts().len(),
            rules.groups().len()
        );
        return Ok(());
    }
    let log = crate::logging::init(&config.log).map_err(|e| anyhow!("logging: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(opts, config, (topo, me), rules, log))
}

async fn serve(
    opts: DaemonOptions,
    config: Config,
    (topo, me): (Arc<Topology>, HostId),
    rules: crate::rules::Rules,
    log: crate::logging::LogHandle,
) -> anyhow::Result<()> {
    let notifier = Notifier::from_env().context("systemd notify")?;
    let key = crate::identity::load(&config.host.key)?;
    let (journal, left) = Journal::open(&config.journal.path)?;
    let (hv, traffic, simulated) = backend(&config, &topo, me)?;

    let mut registry = Registry::default();
    let Started {
        daemon,
        inbound,
        metrics,
        inventory,
    } = start(
        Node {
            config: config.clone(),
            topo: topo.clone(),
            me,
            key,
            hv,
            traffic,
            journal,
            left,
            rules,
            severed: Severed::default(),
        },
        &mut registry,
    )
    .await?;

    let _metrics_server = if config.metrics.enabled {
        let s = MetricsServer::bind(
            config.metrics.listen,
            Arc::new(registry),
            EndpointLimits::from(&config.metrics),
            metrics.endpoint.clone(),
        )
        .await
        .with_context(|| format!("metrics.listen {}", config.metrics.listen))?;
        tracing::info!(address = %s.local_addr(), "metrics endpoint");
        Some(s)
    } else {
        None
    };
    if let Some(host) = simulated {
        daemon
            .tasks
            .spawn_until_stopped(follow_shared_traffic(daemon.clone(), host));
    }
    let control_listener = control::bind(&config.control.socket)
        .with_context(|| format!("control.socket {}", config.control.socket.display()))?;
    daemon
        .tasks
        .spawn_until_stopped(serve_control(control_listener, daemon.clone()));

    let ready = match &inventory {
        Ok(()) => format!(
            "host {} with {} VM(s), {} peers in the topology",
            daemon.name(),
            daemon.inventory().len(),
            topo.hosts().len() - 1
        ),
        Err(e) => format!(
            "host {}, hypervisor not answering yet ({e}), {} peers in the topology",
            daemon.name(),
            topo.hosts().len() - 1
        ),
    };
    let _ = notifier.ready(&ready);
    tracing::info!("{ready}: ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let reload = {
        let daemon = daemon.clone();
        let path = opts.config.clone();
        let overrides = opts.overrides.clone();
        move || {
            let _ = notifier.reloading();
            match Config::load(&path, &overrides) {
                Ok(new) => {
                    let current = daemon.config();
                    let r = current.reload(&new);
                    if let Err(e) = log.set_level(&r.config.log.level) {
                        tracing::warn!(error = %e, "log level not changed");
                    }
                    for key in &r.needs_restart {
                        tracing::warn!(option = key, "changed; takes effect at the next restart");
                    }
                    daemon.reload_config(r.config);
                    tracing::info!(file = %path.display(), "configuration reloaded");
                    // The rules file reloads with the configuration; a bad one keeps the rules
                    // in force.
                    daemon.load_rules();
                }
                Err(e) => tracing::error!("configuration not reloaded:\n{e}"),
            }
            let _ = notifier.ready("reloaded");
        }
    };
    let watchdog = Notifier::from_env()
        .ok()
        .and_then(|n| n.watchdog_interval().map(|i| (n, i)));
    let stop = async move {
        let mut wd = tokio::time::interval(
            watchdog
                .as_ref()
                .map(|(_, i)| *i)
                .unwrap_or(Duration::from_secs(3600)),
        );
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = hup.recv() => reload(),
                _ = wd.tick() => if let Some((n, _)) = &watchdog { let _ = n.watchdog(); },
            }
        }
    };
    drive(daemon.clone(), inbound, stop).await;

    let _ = Notifier::from_env().map(|n| n.stopping("handing the token on"));
    shutdown(&daemon).await;
    let _ = std::fs::remove_file(&config.control.socket);
    tracing::info!("stopped");
    Ok(())
}

/// Serves the control socket until the daemon stops: each connection in a task of its own,
/// its request sent to the event loop as a command.
async fn serve_control<P: Peers>(listener: UnixListener, daemon: Arc<Daemon<P>>) {
    let commands = daemon.commands();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let commands = commands.clone();
        daemon.tasks.spawn_until_stopped(async move {
            if let Err(e) = control::serve_connection(stream, &commands).await {
                tracing::debug!(error = %e, "control connection");
            }
        });
    }
}
