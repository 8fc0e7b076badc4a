//! What the lab measured: the live line (one a second; rewritten in place on a terminal) and
//! the final report, as text or JSON. Figures only: the lab's loop gathers them.

use crate::decide::TurnOutcome;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

/// Turns that end in a decision (the VM was judged: it moved, or there was no gain, or no room).
pub const DECIDED: [TurnOutcome; 3] = TurnOutcome::DECIDED;

/// Turns put off: the VM was not judged this time.
pub const DEFERRED: [TurnOutcome; 3] = [
    TurnOutcome::Busy,
    TurnOutcome::HypervisorDown,
    TurnOutcome::Zombie,
];

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub hosts: usize,
    pub vms: usize,
    pub policy: String,
    pub seed: u64,
    /// Seconds it took to start every daemon (paced by --start-rate), before the run's clock.
    pub start_s: f64,
    pub elapsed_s: f64,
    /// Highest token round any daemon reached.
    pub rounds: u32,
    /// Mean seconds per completed round (None before the second round begins).
    pub round_time_s: Option<f64>,
    pub turns: u64,
    /// Turns by outcome (`scored_decisions_total`'s labels).
    pub outcomes: BTreeMap<String, u64>,
    pub decisions: u64,
    pub deferred: u64,
    /// deferred / (decisions + deferred).
    pub deferred_share: f64,
    /// Why turns were deferred (the decision records' detail, numbers dropped), by count; the
    /// records are sampled once a second per host, so the counts are a sample.
    pub deferral_reasons: BTreeMap<String, u64>,
    /// Requests sent + answered + announcements published + received, every host.
    pub messages: u64,
    pub messages_per_decision: Option<f64>,
    /// Requests sent + answered (token hand-offs, locations, capacity, statistics): what
    /// deciding costs, apart from the gossip every host hears.
    pub requests: u64,
    pub requests_per_decision: Option<f64>,
    /// Requests sent, by protocol.
    pub requests_sent_by_protocol: BTreeMap<String, u64>,
    /// Over the decided turns, per decision: the other hosts running the VM's located partners
    /// and the hosts asked for capacity (each counted once per decision).
    pub partner_hosts_per_decision: Option<f64>,
    pub candidates_per_decision: Option<f64>,
    /// `requests` ÷ (partner hosts + candidates) over the decided turns: the target is
    /// ≤ 4 (a request and its answer to each host a decision must reach, twice over).
    pub requests_per_host_reached: Option<f64>,
    /// Gossip messages a host gave up sending to a peer (queue full, or queued too long), all
    /// hosts: gossip lost on the way, not by design.
    pub gossip_dropped: u64,
    /// Bytes in and out of every swarm (libp2p's bandwidth counters; hosts alive at the end).
    pub bytes: u64,
    pub bytes_per_decision: Option<f64>,
    pub connections_per_host: f64,
    pub connections_max: i64,
    pub regenerations: u64,
    pub migrations: u64,
    /// Group moves the turns planned (`--set decision.group_moves=recommend` or `act`), and
    /// hosts surveyed for them per decision.
    pub group_plans: u64,
    pub group_surveys_per_decision: Option<f64>,
    /// Most daemons acting on a token at once, over the run (holding it, not handing it on,
    /// not fenced; `TokenWatch::acting`), and at the end.
    pub holders_max: usize,
    pub holders_now: usize,
    /// Polls at which more than one daemon acted on a token, and the first of them: who, on
    /// which token (epoch.seq).
    pub acting_overlaps: u64,
    pub first_overlap: Option<String>,
    /// Most daemons holding a token at once, counting a holder whose hand-off is waiting for
    /// the next host's answer (so two, or more on a slow machine, for one token).
    pub holding_max: usize,
    pub hosts_downed: u64,
    /// `None`: every poll found each VM on exactly one host.
    pub vm_check: Option<String>,
    pub polls: u64,
    /// Eq. 3.1 reduction from the initial placement under the current round's traffic, %.
    pub cost_reduction_pct: f64,
    /// `scored sim`'s on the same scenario after as many turns, under the same round's traffic,
    /// with the daemons' cooldown on the lab's clock (a turn every `sim_turn_ms`), %: what the
    /// daemons should reach.
    pub sim_cost_reduction_pct: Option<f64>,
    /// The same without the cooldown (S-CORE's rule: a VM may move at every turn), %.
    pub sim_uncooled_cost_reduction_pct: Option<f64>,
    /// The simulator's clock for the comparison: the lab's mean time per turn, ms.
    pub sim_turn_ms: Option<f64>,
    pub partition: Option<PartitionReport>,
    pub cpu_s: f64,
    pub rss_mib: f64,
    pub cpu_s_per_daemon_hour: f64,
    pub rss_mib_per_daemon: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PartitionReport {
    pub pod: String,
    pub hosts_cut_off: usize,
    pub duration_s: f64,
    /// Most daemons acting on a token at once inside the pod, and outside it, while cut off.
    pub holders_inside_max: usize,
    pub holders_outside_max: usize,
    /// Seconds after the heal until one holder remained (None: never seen in the run).
    pub single_holder_after_s: Option<f64>,
    /// Holders seen 3 × the loss timeout after the heal.
    pub holders_after_3_loss_timeouts: Option<usize>,
    pub loss_timeout_s: f64,
}

/// The live line, once a second: rewritten in place on a terminal, one line each otherwise.
pub fn live(r: &Report, up: usize) {
    let line = format!(
        "{:>5.0}s up {up}/{} round {} holders {} turns {} decided {} deferred {:.0}% reqs/dec {} moves {} cost -{:.1}% cpu {:.0}s rss {:.0}MiB",
        r.elapsed_s,
        r.hosts,
        r.rounds,
        r.holders_now,
        r.turns,
        r.decisions,
        r.deferred_share * 100.0,
        r.requests_per_decision
            .map(|m| format!("{m:.0}"))
            .unwrap_or_else(|| "-".into()),
        r.migrations,
        r.cost_reduction_pct,
        r.cpu_s,
        r.rss_mib,
    );
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[2K{line}");
    } else {
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}

/// Ends the live line (on a terminal it has no newline yet).
pub fn end_live() {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

pub fn text(r: &Report) -> String {
    let opt = |v: Option<f64>, unit: &str| {
        v.map(|v| format!("{v:.1}{unit}"))
            .unwrap_or_else(|| "-".into())
    };
    let mut s = format!(
        "scored lab: {} daemons (started in {:.0} s), {} VMs, policy {}, seed {}, {:.0} s\n",
        r.hosts, r.start_s, r.vms, r.policy, r.seed, r.elapsed_s
    );
    s += &format!(
        "token      {} rounds, {} per round, {} regenerations, at most {} hosts acting on a token at once ({} now; {} holding one, hand-offs waiting for their answer included)\n",
        r.rounds,
        opt(r.round_time_s, " s"),
        r.regenerations,
        r.holders_max,
        r.holders_now,
        r.holding_max
    );
    if let Some(first) = &r.first_overlap {
        s += &format!(
            "           more than one acting at {} of {} polls; the first {first}\n",
            r.acting_overlaps, r.polls
        );
    }
    s += &format!(
        "turns      {}: {} decided, {} deferred ({:.1}%)\n",
        r.turns,
        r.decisions,
        r.deferred,
        r.deferred_share * 100.0
    );
    let outcomes: Vec<String> = r
        .outcomes
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    s += &format!("           {}\n", outcomes.join(", "));
    for (why, n) in &r.deferral_reasons {
        s += &format!("  deferred: {why} ({n} sampled)\n");
    }
    s += &format!(
        "messages   {} ({} per decision; requests and answers {}, {} per decision), {} bytes ({} per decision)\n",
        r.messages,
        opt(r.messages_per_decision, ""),
        r.requests,
        opt(r.requests_per_decision, ""),
        r.bytes,
        opt(r.bytes_per_decision, ""),
    );
    let by: Vec<String> = r
        .requests_sent_by_protocol
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect();
    s += &format!("           requests sent: {}\n", by.join(", "));
    s += &format!(
        "reach      per decision {} partner hosts + {} hosts asked for capacity; {} requests and answers per host reached (target ≤ 4; gossip not counted)\n",
        opt(r.partner_hosts_per_decision, ""),
        opt(r.candidates_per_decision, ""),
        opt(r.requests_per_host_reached, ""),
    );
    s += &format!(
        "network    {:.1} connections per host (max {}), {} hosts downed, {} gossip messages dropped on the way to a slow peer\n",
        r.connections_per_host, r.connections_max, r.hosts_downed, r.gossip_dropped
    );
    if r.group_plans > 0 || r.group_surveys_per_decision.is_some_and(|v| v > 0.0) {
        s += &format!(
            "groups     {} group moves planned (recommended or carried out); {} hosts surveyed per decision\n",
            r.group_plans,
            opt(r.group_surveys_per_decision, ""),
        );
    }
    s += &format!(
        "VMs        {} migrations; {} polls: {}\n",
        r.migrations,
        r.polls,
        r.vm_check.as_deref().unwrap_or("no VM lost or duplicated")
    );
    s += &format!(
        "cost       -{:.1}% (scored sim after as many turns: {} with the daemons' cooldown at {} a turn, {} without)\n",
        r.cost_reduction_pct,
        opt(r.sim_cost_reduction_pct.map(|v| -v), "%"),
        opt(r.sim_turn_ms, " ms"),
        opt(r.sim_uncooled_cost_reduction_pct.map(|v| -v), "%"),
    );
    if let Some(p) = &r.partition {
        s += &format!(
            "partition  pod {} ({} hosts) cut off {:.0} s: at most {} holders inside, {} outside; one holder {} after the heal; {} holders at 3 x loss timeout ({:.1} s)\n",
            p.pod,
            p.hosts_cut_off,
            p.duration_s,
            p.holders_inside_max,
            p.holders_outside_max,
            opt(p.single_holder_after_s, " s"),
            p.holders_after_3_loss_timeouts
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            p.loss_timeout_s
        );
    }
    s += &format!(
        "process    {:.1} CPU-s, {:.0} MiB RSS: {:.1} CPU-s per daemon-hour, {:.1} MiB per daemon\n",
        r.cpu_s, r.rss_mib, r.cpu_s_per_daemon_hour, r.rss_mib_per_daemon
    );
    s
}
