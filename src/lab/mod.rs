//! `scored lab`: many real daemons on this machine over a simulated data centre. Each is the
//! daemon `scored run` builds (`daemon::run::start`), with its own key and libp2p swarm on
//! 127.0.0.1, all in this process; the VMs run on the in-memory hypervisor and their traffic is
//! the simulator's, plus traffic to addresses outside the data centre. The lab downs hosts on a
//! schedule (crashes, then restarts them), can make one host's hypervisor stop answering and cut
//! one pod off for a while, checks every second that no VM is lost or duplicated, and reports
//! what the protocol did and what it cost (`report.rs`).
//!
//! `datacentre.rs`: topology, VMs, traffic, hypervisor; `host.rs`: one daemon.

pub mod datacentre;
pub mod host;
pub mod report;

use crate::config::Override;
use crate::daemon::history::CooldownPolicy;
use crate::decide::TurnOutcome;
use crate::sim::ScenarioParams;
use crate::sim::engine::{self, RunOptions};
use crate::topology::{HostId, Topology};
use anyhow::{Context, anyhow};
use datacentre::{DataCentre, TrafficShape};
use host::{Counters, LabHost};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use report::{PartitionReport, Report};
use scored_proto::{PolicyKind, Stamp, VmId};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `scored lab`'s options.
#[derive(clap::Args, Clone, Debug)]
pub struct LabArgs {
    /// Daemons, on a generated tree (racks of up to 16 hosts in up to 8 pods).
    #[arg(long, default_value_t = 64, conflicts_with = "topology")]
    pub hosts: usize,
    /// A topology file instead of the generated tree (its addresses and keys are replaced by
    /// the lab's: every host on 127.0.0.1).
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// VM slots per host of the generated tree.
    #[arg(long, default_value_t = 16)]
    pub vms_per_host: u32,
    /// Share of the slots VMs use.
    #[arg(long, default_value_t = 0.8)]
    pub fill: f64,
    /// Share of each VM's traffic to addresses outside the data centre (a few gateway/DNS
    /// addresses shared by many VMs, and client addresses).
    #[arg(long, default_value_t = 0.3)]
    pub external: f64,
    /// Share of the hosts down at any time (crashed, restarted after --down-for).
    #[arg(long, default_value_t = 0.02)]
    pub down: f64,
    /// How long a downed host stays down, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub down_for: f64,
    /// Hosts whose hypervisor stops answering for the whole run.
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
    /// Cut one pod off the rest this many seconds into the run (default: no partition).
    #[arg(long)]
    pub partition_at: Option<f64>,
    /// How long the pod stays cut off, seconds.
    #[arg(long, default_value_t = 180.0)]
    pub partition_for: f64,
    /// Share of flows replaced at each token round (the simulator's churn).
    #[arg(long, default_value_t = 0.05)]
    pub churn: f64,
    /// Rounds of traffic drawn (the last one holds after that).
    #[arg(long, default_value_t = 20)]
    pub traffic_rounds: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 120.0)]
    pub duration: f64,
    /// Token policy: round-robin, global, distributed or load-aware.
    #[arg(long, default_value = "distributed", value_parser = parse_policy)]
    pub policy: PolicyKind,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Migration throughput of the simulated hypervisor, MB/s (a 1 GiB VM sends 65% of it).
    #[arg(long, default_value_t = 1250.0)]
    pub migration_mb_s: f64,
    /// Override one option of every daemon's configuration: section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<Override>,
    /// Where the journals go (default: a fresh directory under the system's temp dir, removed
    /// at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Leave the VM address ranges out of the lab's topology: external partners are then
    /// told from VMs by the inventories peers announce (docs/protocol.md), not by the
    /// `vm_networks` the topology declares (by default the lab declares its VMs' 10.0.0.0/8,
    /// or keeps what a `--topology` file says).
    #[arg(long)]
    pub no_vm_networks: bool,
    /// Daemons started per second at the beginning (0: each as soon as the one before it is
    /// up). A machine that plays a thousand hosts cannot also start them at once: every new
    /// daemon's inventory is checked by every other, and the first daemons' loss timeouts run
    /// out while the process is saturated. The run's --duration counts from the last start.
    #[arg(long, default_value_t = 50.0)]
    pub start_rate: f64,
    /// Print the final report as JSON (the live line still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Daemons' log level to stderr (default: none).
    #[arg(long)]
    pub log: Option<String>,
}

fn parse_policy(s: &str) -> Result<PolicyKind, String> {
    PolicyKind::from_name(s).ok_or_else(|| {
        format!("unknown policy `{s}` (round-robin, global, distributed, load-aware)")
    })
}

/// `scored lab`.
pub fn run_cli(args: &LabArgs) -> anyhow::Result<()> {
    raise_fd_limit();
    if let Some(level) = &args.log {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(args, true))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::text(&report));
    }
    // Daemons' leftover tasks are the runtime's to drop.
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// Each connection costs a socket; a thousand daemons need more than the default soft limit.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The partition's state.
struct Partition {
    pod: String,
    inside: Vec<bool>,
    at: Duration,
    until: Duration,
    started: bool,
    healed: bool,
    report: PartitionReport,
}

/// Runs the lab on the current runtime; `live`: print the live line.
pub async fn run(args: &LabArgs, live: bool) -> anyhow::Result<Report> {
    let base = match &args.topology {
        Some(p) => Topology::load(p).map_err(|e| anyhow!("{e}"))?,
        None => datacentre::generated(args.hosts, args.vms_per_host)?,
    };
    let n = base.hosts().len();
    let ids = datacentre::identities(n)?;
    let topo = Arc::new(datacentre::on_loopback(&base, &ids, !args.no_vm_networks)?);
    let mut params = ScenarioParams {
        fill: args.fill,
        rounds: args.traffic_rounds.max(1),
        seed: args.seed,
        ..ScenarioParams::default()
    };
    params.traffic.churn = args.churn;
    let model = crate::hypervisor::memory::MigrationModel {
        throughput_bytes_per_s: args.migration_mb_s.max(1.0) * 1e6,
        ..Default::default()
    };
    let dc = DataCentre::new(
        &topo,
        params,
        &TrafficShape {
            external: args.external,
            seed: args.seed,
        },
        model,
    )?;
    let (dir, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("scored-lab-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let config = host::config(&dir, args.policy.name(), &args.overrides)?;
    let loss = host::loss_timeout(&config);

    let mut hosts: Vec<LabHost> = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| LabHost {
            id: HostId(i as u32),
            key: id.key,
            journal: dir.join(format!("{}.journal", topo.hosts()[i].name)),
            severed: Default::default(),
            stalled: Default::default(),
            running: None,
            seen_ms: 0,
            starts: 0,
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0x1ab_d0e5);
    let order: Vec<usize> = {
        let mut o: Vec<usize> = (0..n).collect();
        rand::seq::SliceRandom::shuffle(&mut o[..], &mut rng);
        o
    };
    // The stalled hypervisors are the shuffle's first hosts; they are never downed.
    let stalled: BTreeSet<usize> = order.iter().take(args.stalled.min(n)).copied().collect();
    for &i in &stalled {
        hosts[i]
            .stalled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let starting = Instant::now();
    let pace = (args.start_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.start_rate));
    for (k, h) in hosts.iter_mut().enumerate() {
        if let Some(pace) = pace {
            tokio::time::sleep_until((starting + pace.mul_f64(k as f64)).into()).await;
        }
        h.start(&config, &topo, &dc, 0).await?;
    }
    let start_s = starting.elapsed().as_secs_f64();
    let mut partition = args.partition_at.map(|at| {
        let last = topo.hosts().last().expect("at least two hosts");
        let pod_switch = last.path[0];
        let inside: Vec<bool> = topo
            .hosts()
            .iter()
            .map(|h| h.path[0] == pod_switch)
            .collect();
        Partition {
            pod: topo.switch(pod_switch).name.clone(),
            report: PartitionReport {
                pod: topo.switch(pod_switch).name.clone(),
                hosts_cut_off: inside.iter().filter(|b| **b).count(),
                duration_s: args.partition_for,
                loss_timeout_s: loss.as_secs_f64(),
                ..Default::default()
            },
            inside,
            at: Duration::from_secs_f64(at.max(0.0)),
            until: Duration::from_secs_f64(at.max(0.0) + args.partition_for.max(0.0)),
            started: false,
            healed: false,
        }
    });

    let initial = dc.scenario.initial.clone();
    let start = Instant::now();
    let end = Duration::from_secs_f64(args.duration.max(1.0));
    let down_target = ((n as f64) * args.down.clamp(0.0, 0.5)).round() as usize;
    let down_for = Duration::from_secs_f64(args.down_for.max(1.0));
    let mut down: Vec<(usize, Duration)> = Vec::new();
    let mut retired = Counters::default();
    let mut r = Report {
        hosts: n,
        vms: dc.scenario.vms(),
        policy: args.policy.name().to_string(),
        seed: args.seed,
        start_s,
        ..Default::default()
    };
    let mut round_starts: Vec<(u32, Duration)> = Vec::new();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    every.tick().await;
    loop {
        every.tick().await;
        let now = start.elapsed();
        if now >= end {
            break;
        }
        // Hosts down: restart those due, then down others (never a stalled one) to the target.
        let mut i = 0;
        while i < down.len() {
            if down[i].1 <= now {
                let (h, _) = down.swap_remove(i);
                if let Err(e) = hosts[h].start(&config, &topo, &dc, r.rounds as usize).await {
                    tracing::warn!(error = %e, "restart failed; retried next second");
                    down.push((h, now + Duration::from_secs(1)));
                }
            } else {
                i += 1;
            }
        }
        while down.len() < down_target {
            let up: Vec<usize> = (0..n)
                .filter(|i| !stalled.contains(i) && hosts[*i].running.is_some())
                .collect();
            let Some(&h) = up.choose(&mut rng) else { break };
            retired.add(&hosts[h].crash());
            r.hosts_downed += 1;
            let jitter = Duration::from_millis(rng.random_range(0..1000));
            down.push((h, now + down_for + jitter));
        }
        if let Some(p) = partition.as_mut() {
            if !p.started && now >= p.at {
                p.started = true;
                let (inside, outside): (Vec<usize>, Vec<usize>) =
                    (0..n).partition(|i| p.inside[*i]);
                let peer = |i: &usize| hosts[*i].key.public().to_peer_id();
                let inside_peers: Vec<_> = inside.iter().map(peer).collect();
                let outside_peers: Vec<_> = outside.iter().map(peer).collect();
                for &i in &inside {
                    hosts[i].severed.set(outside_peers.iter().copied());
                }
                for &i in &outside {
                    hosts[i].severed.set(inside_peers.iter().copied());
                }
                tracing::info!(pod = %p.pod, "partition: pod cut off");
            }
            if p.started && !p.healed && now >= p.until {
                p.healed = true;
                for h in &hosts {
                    h.severed.clear();
                }
                tracing::info!(pod = %p.pod, "partition healed");
            }
        }

        // Where the VMs are: checked, fed to the hosts' flow sources, costed.
        r.polls += 1;
        let rounds = hosts
            .iter()
            .filter_map(|h| h.running.as_ref())
            .map(|x| x.daemon.token_watch().latest_round())
            .max()
            .unwrap_or(0);
        if round_starts.last().is_none_or(|(k, _)| *k < rounds) {
            round_starts.push((rounds, now));
        }
        r.rounds = rounds;
        let traffic_round = rounds as usize;
        match dc.locations() {
            Ok(loc) => {
                let mut local: Vec<BTreeSet<VmId>> = vec![BTreeSet::new(); n];
                for (v, h) in loc.iter().enumerate() {
                    local[h.index()].insert(dc.scenario.ids[v]);
                }
                for (h, vms) in hosts.iter_mut().zip(local) {
                    h.feed(&dc, vms, traffic_round);
                }
                let cr = traffic_round.min(dc.scenario.rounds() - 1);
                let before = dc.scenario.cost(cr, &initial);
                if before > 0.0 {
                    r.cost_reduction_pct = 100.0 * (before - dc.scenario.cost(cr, &loc)) / before;
                }
            }
            Err(e) => {
                if r.vm_check.is_none() {
                    r.vm_check = Some(format!("at {:.0} s: {e}", now.as_secs_f64()));
                }
            }
        }
        if let Err(e) = dc.cluster.check()
            && r.vm_check.is_none()
        {
            r.vm_check = Some(format!("at {:.0} s: {e}", now.as_secs_f64()));
        }

        // Tokens.
        // Hosts acting on a token (the safety figure: at most one), and hosts holding one,
        // counting those whose hand-off to the next host is still waiting for its answer.
        let daemon = |i: &usize| hosts[*i].running.as_ref().map(|x| &x.daemon);
        let acting: Vec<(usize, Stamp)> = (0..n)
            .filter_map(|i| daemon(&i).and_then(|d| d.acting()).map(|at| (i, at)))
            .collect();
        if acting.len() > 1 {
            r.acting_overlaps += 1;
            if r.first_overlap.is_none() {
                r.first_overlap = Some(overlap(&dc.scenario.topology, &acting, now));
            }
        }
        let holding: Vec<usize> = acting.iter().map(|(i, _)| *i).collect();
        let held = (0..n)
            .filter(|i| daemon(i).is_some_and(|d| d.holding().is_some()))
            .count();
        r.holders_now = holding.len();
        r.holders_max = r.holders_max.max(holding.len());
        r.holding_max = r.holding_max.max(held);
        if let Some(p) = partition.as_mut() {
            watch_partition(p, &holding, now, loss);
        }

        // Counters, deferral reasons, connections.
        let mut c = retired;
        let mut conns = Vec::new();
        for h in hosts.iter_mut() {
            c.add(&h.counters());
            let Some(x) = h.running.as_ref() else {
                continue;
            };
            conns.push(x.metrics.peers.connected.get());
            let mut latest = h.seen_ms;
            for rec in x.daemon.recent_decisions() {
                if rec.unix_ms <= h.seen_ms {
                    continue;
                }
                latest = latest.max(rec.unix_ms);
                if report::DEFERRED.iter().any(|o| o.name() == rec.outcome) {
                    *r.deferral_reasons.entry(reason(&rec.detail)).or_default() += 1;
                }
            }
            h.seen_ms = latest;
        }
        summarise(&mut r, &c, &conns);
        r.round_time_s = round_time(&round_starts);
        if let Some(p) = crate::metrics::ProcessStats::read() {
            r.cpu_s = p.cpu_seconds;
            r.rss_mib = p.resident_bytes as f64 / (1024.0 * 1024.0);
        }
        r.elapsed_s = now.as_secs_f64();
        if live {
            report::live(&r, n - down.len());
        }
    }
    if live {
        report::end_live();
    }
    r.elapsed_s = start.elapsed().as_secs_f64();
    r.partition = partition.map(|p| p.report);
    r.bytes = hosts
        .iter()
        .filter_map(|h| h.running.as_ref())
        .map(|x| bandwidth(&x.registry))
        .sum();
    r.bytes_per_decision = (r.decisions > 0).then(|| r.bytes as f64 / r.decisions as f64);
    let daemon_hours = n as f64 * r.elapsed_s / 3600.0;
    r.cpu_s_per_daemon_hour = r.cpu_s / daemon_hours.max(1e-9);
    r.rss_mib_per_daemon = r.rss_mib / n as f64;
    for h in hosts.iter_mut() {
        h.crash();
    }
    if r.turns > 0 {
        // The simulator's clock runs at the lab's mean time per turn, so its cooldowns end
        // after as many turns as the daemons' did (a migration's simulated time included).
        let turn_ms = 1000.0 * r.elapsed_s / r.turns.max(1) as f64;
        r.sim_turn_ms = Some(turn_ms);
        let cooldown = CooldownPolicy::of(&config.decision);
        let at = (r.rounds, r.turns);
        r.sim_cost_reduction_pct = Some(sim_reduction(
            &dc,
            &config,
            args.policy,
            at,
            Some((cooldown, turn_ms)),
        ));
        r.sim_uncooled_cost_reduction_pct =
            Some(sim_reduction(&dc, &config, args.policy, at, None));
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(r)
}

fn watch_partition(p: &mut Partition, holding: &[usize], now: Duration, loss: Duration) {
    if p.started && !p.healed {
        let inside = holding.iter().filter(|i| p.inside[**i]).count();
        p.report.holders_inside_max = p.report.holders_inside_max.max(inside);
        p.report.holders_outside_max = p.report.holders_outside_max.max(holding.len() - inside);
    }
    if p.healed {
        let since = now.saturating_sub(p.until);
        if holding.len() == 1 && p.report.single_holder_after_s.is_none() {
            p.report.single_holder_after_s = Some(since.as_secs_f64());
        }
        if since >= loss * 3 && p.report.holders_after_3_loss_timeouts.is_none() {
            p.report.holders_after_3_loss_timeouts = Some(holding.len());
        }
    }
}

/// Who acted on which token (epoch.seq) at once: two stamps of one epoch are one token twice
/// (a hand-off both sides act on), two epochs a regenerated token and the one it replaces.
fn overlap(topo: &Topology, acting: &[(usize, Stamp)], now: Duration) -> String {
    let who: Vec<String> = acting
        .iter()
        .map(|(i, at)| format!("{} on {at}", topo.host(HostId(*i as u32)).name))
        .collect();
    format!("at {:.0} s: {}", now.as_secs_f64(), who.join(", "))
}

/// A record's detail without its numbers, so that like reasons count together.
fn reason(detail: &str) -> String {
    let s: String = detail
        .chars()
        .map(|c| if c.is_ascii_digit() { 'N' } else { c })
        .collect();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !(c == 'N' && out.ends_with('N')) {
            out.push(c);
        }
    }
    out
}

fn summarise(r: &mut Report, c: &Counters, conns: &[i64]) {
    r.outcomes.clear();
    for (i, o) in TurnOutcome::ALL.into_iter().enumerate() {
        r.outcomes.insert(o.name().to_string(), c.outcomes[i]);
    }
    let count = |set: &[TurnOutcome]| -> u64 { set.iter().map(|o| r.outcomes[o.name()]).sum() };
    r.decisions = count(&report::DECIDED);
    r.deferred = count(&report::DEFERRED);
    r.turns = c.outcomes.iter().sum();
    r.deferred_share = if r.decisions + r.deferred > 0 {
        r.deferred as f64 / (r.decisions + r.deferred) as f64
    } else {
        0.0
    };
    r.messages = c.sent + c.served + c.published + c.received;
    r.gossip_dropped = c.gossip_dropped;
    r.messages_per_decision = (r.decisions > 0).then(|| r.messages as f64 / r.decisions as f64);
    r.requests = c.sent + c.served;
    r.requests_per_decision = (r.decisions > 0).then(|| r.requests as f64 / r.decisions as f64);
    r.partner_hosts_per_decision =
        (r.decisions > 0).then(|| c.partner_hosts as f64 / r.decisions as f64);
    r.candidates_per_decision = (r.decisions > 0).then(|| c.candidates as f64 / r.decisions as f64);
    let reached = c.partner_hosts + c.candidates;
    r.requests_per_host_reached = (reached > 0).then(|| r.requests as f64 / reached as f64);
    r.requests_sent_by_protocol = crate::p2p::metrics::PROTOCOLS
        .iter()
        .zip(c.sent_by)
        .map(|(p, n)| (p.to_string(), n))
        .collect();
    r.regenerations = c.regenerations;
    r.migrations = c.migrations;
    r.group_plans = c.group_plans;
    r.group_surveys_per_decision =
        (r.decisions > 0).then(|| c.group_surveys as f64 / r.decisions as f64);
    r.connections_per_host = if conns.is_empty() {
        0.0
    } else {
        conns.iter().sum::<i64>() as f64 / conns.len() as f64
    };
    r.connections_max = conns.iter().copied().max().unwrap_or(0);
}

/// Mean time between the starts of the rounds seen (the first round's start is when the lab
/// first saw it).
fn round_time(starts: &[(u32, Duration)]) -> Option<f64> {
    let first = starts.iter().find(|(k, _)| *k >= 1)?;
    let last = starts.last()?;
    (last.0 > first.0).then(|| (last.1 - first.1).as_secs_f64() / f64::from(last.0 - first.0))
}

/// Bytes through one swarm, both directions (libp2p's bandwidth counters).
fn bandwidth(registry: &prometheus_client::registry::Registry) -> u64 {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return 0;
    }
    text.lines()
        .filter(|l| l.starts_with("scored_libp2p_bandwidth_bytes_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `scored sim`'s reduction on the same scenario after as many turns as the lab's, ending in the
/// round the lab is in (whose traffic the lab's cost is under), with the daemons' c_m rule
/// (constant, or a fraction of the deciding VM's cost), return margin and group moves, and with
/// `cooling`, their cooldown on a clock of that many milliseconds a turn.
fn sim_reduction(
    dc: &DataCentre,
    config: &crate::config::Config,
    policy: PolicyKind,
    (round, turns): (u32, u64),
    cooling: Option<(CooldownPolicy, f64)>,
) -> f64 {
    let mut sc = dc.scenario.clone();
    sc.rates
        .truncate((round as usize + 1).clamp(1, sc.rates.len()));
    sc.params.max_turns = Some(turns.max(1) as usize);
    if let Some((_, turn_ms)) = cooling {
        sc.params.clock.turn_ms = turn_ms.round().max(1.0) as i64;
    }
    let opt = RunOptions {
        policy,
        migration_cost: config.decision.migration_cost,
        migration_cost_fraction: config.decision.migration_cost_fraction,
        per_move: None,
        rack_alternates: if config.decision.rack_fallback { 3 } else { 0 },
        return_margin: config.decision.return_margin_fraction,
        record_steps: false,
        verify_moves: false,
        rules: false,
        cooldown: cooling.map(|(c, _)| c),
        // The daemons' group moves, when they carry them out (one planner for both).
        group: (config.decision.group_moves == crate::config::GroupMoves::Act)
            .then(crate::decide::group::GroupOptions::default),
    };
    let run = engine::run(&sc, &opt, |_| {});
    // Under the traffic of the lab's round, wherever the simulated token is (a down host's VMs
    // take no turns in the lab, so the simulator may be a few turns behind).
    let last = sc.rounds() - 1;
    let before = sc.cost(last, &sc.initial);
    if before > 0.0 {
        100.0 * (before - sc.cost(last, &run.placement)) / before
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlap_names_each_host_and_the_token_it_acts_on() {
        let text = "[levels]\nweights = [1, 3]\n\
            [[host]]\nname = \"a\"\npath = [\"agg\", \"tor1\"]\naddress = \"10.0.0.1\"\np2p_port = 7070\n\
            [[host]]\nname = \"b\"\npath = [\"agg\", \"tor1\"]\naddress = \"10.0.0.2\"\np2p_port = 7070\n";
        let topo = Topology::parse(std::path::Path::new("t.toml"), text).unwrap();
        let acting = [(0, Stamp::new(1 << 16, 40)), (1, Stamp::new(2 << 16, 2))];
        assert_eq!(
            overlap(&topo, &acting, Duration::from_millis(312_400)),
            "at 312 s: a on 65536.40, b on 131072.2"
        );
    }
}
