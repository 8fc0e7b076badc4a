//! Every Prometheus metric scored exports, declared in one place; the HTTP endpoint that serves
//! them as OpenMetrics text is `server`.
//!
//! Names are `scored_*` with the unit in the name (prometheus-client appends the unit and, for
//! counters, `_total`); the process collector uses the standard `process_*` names so stock
//! dashboards work. libp2p-metrics registers into the same [`Registry`] as `scored_libp2p_*`. This
//! module only counts and serves: it never decides anything, and holds no daemon state.

use crate::decide::TurnOutcome;
use crate::forecast::Mode;
use crate::hypervisor::AbortReason;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

mod server;

pub use server::{ConnectionDrop, DropLabels, EndpointLimits, MetricsServer};

/// The content type of the OpenMetrics text format, as Prometheus expects it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A gauge holding a float (rates, costs).
pub type FloatGauge = Gauge<f64, AtomicU64>;

impl EncodeLabelValue for TurnOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.name())
    }
}

impl EncodeLabelValue for AbortReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.name())
    }
}

/// Which way a migration goes, seen from this host (not a flow's direction: `flows::table`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MigrationDirection {
    Outgoing,
    Incoming,
}

impl EncodeLabelValue for MigrationDirection {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            MigrationDirection::Outgoing => "outgoing",
            MigrationDirection::Incoming => "incoming",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: TurnOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: AbortReason,
}

/// A completed migration's mode, as the forecast predicted it (`none` without a forecast) and
/// as it ran (`crate::forecast::Mode::name`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ModeLabels {
    pub predicted: &'static str,
    pub actual: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: MigrationDirection,
}

/// A topology level by its name in the topology file (`rack`, `aggregation`, `core`, …).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LevelLabels {
    pub level: String,
}

/// The token as this host sees it.
#[derive(Clone, Debug)]
pub struct TokenMetrics {
    /// 1 while this host holds the token.
    pub held: Gauge,
    pub passes: Counter,
    pub handoff_latency: Histogram,
    pub epoch: Gauge,
    pub regenerations: Counter,
    pub skipped_hosts: Counter,
    pub fenced: Counter,
    /// Turns that ended in a panic (the token they held was let go).
    pub turn_panics: Counter,
    /// Global policy: time to gather every host's statistics at a round start (its count is
    /// the number of rounds this host started).
    pub statistics_gather: Histogram,
}

#[derive(Clone, Debug)]
pub struct MigrationMetrics {
    pub started: Counter,
    pub succeeded: Counter,
    pub failed: Counter,
    pub aborted: Family<ReasonLabels, Counter>,
    pub in_flight: Family<DirectionLabels, Gauge>,
    pub duration: Histogram,
    pub downtime: Histogram,
    pub transferred: Histogram,
    /// Bytes a completed migration sent over the bytes its forecast predicted.
    pub forecast_bytes_ratio: Histogram,
    /// Its duration over the forecast's.
    pub forecast_seconds_ratio: Histogram,
    /// Completed migrations by predicted and actual mode.
    pub by_mode: Family<ModeLabels, Counter>,
}

#[derive(Clone, Debug, Default)]
pub struct FlowMetrics {
    pub entries: Gauge,
    pub evictions: Counter,
    pub packets: Counter,
    pub bytes: Counter,
    pub drops: Counter,
    pub unattributed: Counter,
    /// Frames a VM sent from, or received for, an address not its own.
    pub spoofed: Counter,
}

#[derive(Clone, Debug, Default)]
pub struct PeerMetrics {
    pub connected: Gauge,
    pub refused: Counter,
    /// What peers sent that was refused, by reason: the family the transport registers as
    /// `scored_p2p_rejected_total` (`run` shares it), so the daemon's own checks (an epoch no
    /// host could have minted) count beside the transport's.
    pub rejected: Family<Vec<(String, String)>, Counter>,
}

/// The `/metrics` endpoint's own connections (`server`).
#[derive(Clone, Debug, Default)]
pub struct EndpointMetrics {
    pub connections: Gauge,
    pub dropped: Family<DropLabels, Counter>,
}

/// Handles to every scored metric. Cloning is cheap (the values are shared), so each subsystem
/// keeps a clone of the part it moves.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub token: TokenMetrics,
    pub decisions: Family<OutcomeLabels, Counter>,
    pub decision_duration: Histogram,
    /// Group moves planned at turns (recommended, or carried out with `act`).
    pub group_plans: Counter,
    /// Hosts asked for a group-move survey (`/scored/group/1`).
    pub group_surveys: Counter,
    /// What the turns that ended in a decision had to reach: the distinct other hosts running
    /// the VM's located partners, and the distinct hosts asked for capacity. Their sum bounds
    /// the messages a decision should need (issue: ≤ 4 × it).
    pub decision_partner_hosts: Counter,
    pub decision_candidates: Counter,
    pub migrations: MigrationMetrics,
    /// This host's share of Eq. 3.1 (its VMs' traffic × path cost), by level.
    pub communication_cost: Family<LevelLabels, FloatGauge>,
    /// This host's VMs' traffic by the level it crosses, unweighted.
    pub traffic: Family<LevelLabels, FloatGauge>,
    pub vms: Gauge,
    pub maintenance: Gauge,
    /// 1 while this host's hypervisor answers, 0 during an outage.
    pub hypervisor_up: Gauge,
    /// VMs this host sees running on more than one host at once (zombies).
    pub zombie_vms: Gauge,
    pub flows: FlowMetrics,
    pub peers: PeerMetrics,
    pub endpoint: EndpointMetrics,
    /// Torn journal records cut when the journal was opened (kept in `<journal>.corrupt`).
    pub journal_torn_records: Counter,
    /// Local VMs breaking a placement rule where they run, by the rule's kind.
    pub rule_violations_by_kind: Family<KindLabels, Gauge>,
    /// Rules files that did not load (at start or on SIGHUP; the rules in force stay).
    pub rules_file_errors: Counter,
}

/// The kind of a placement rule (`rules::Refusal::kind`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

fn handoff_buckets() -> Histogram {
    // 0.5 ms … 16 s: loopback hand-offs to a stuck peer hitting the timeout.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn statistics_buckets() -> Histogram {
    // 1 ms … 16 s: one loopback round trip to every host waiting for the slowest.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn decision_buckets() -> Histogram {
    // 50 µs … 13 s: a cached decision to one with 1000 partners and cold lookups.
    Histogram::new(exponential_buckets(0.000_05, 4.0, 10))
}

fn migration_duration_buckets() -> Histogram {
    Histogram::new([
        1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    ])
}

fn downtime_buckets() -> Histogram {
    // 1 ms … 8 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// Actual over predicted: within ±15 % in the middle, a factor of 4 at the ends.
fn forecast_ratio_buckets() -> Histogram {
    Histogram::new([0.25, 0.5, 0.7, 0.85, 1.0, 1.15, 1.3, 1.5, 2.0, 4.0])
}

fn transferred_buckets() -> Histogram {
    // 16 MiB … 32 GiB.
    Histogram::new(exponential_buckets(16.0 * 1024.0 * 1024.0, 2.0, 12))
}

impl Metrics {
    /// Creates every scored metric and registers it, with the process collector and build
    /// information, in `registry` (the registry libp2p-metrics also uses). `levels` are the
    /// topology's level names, rack first: the per-level series exist from the start.
    pub fn register(registry: &mut Registry, levels: &[String]) -> Metrics {
        let m = Metrics {
            token: TokenMetrics {
                held: Gauge::default(),
                passes: Counter::default(),
                handoff_latency: handoff_buckets(),
                epoch: Gauge::default(),
                regenerations: Counter::default(),
                skipped_hosts: Counter::default(),
                fenced: Counter::default(),
                turn_panics: Counter::default(),
                statistics_gather: statistics_buckets(),
            },
            decisions: Family::default(),
            decision_duration: decision_buckets(),
            group_plans: Counter::default(),
            group_surveys: Counter::default(),
            decision_partner_hosts: Counter::default(),
            decision_candidates: Counter::default(),
            migrations: MigrationMetrics {
                started: Counter::default(),
                succeeded: Counter::default(),
                failed: Counter::default(),
                aborted: Family::default(),
                in_flight: Family::default(),
                duration: migration_duration_buckets(),
                downtime: downtime_buckets(),
                transferred: transferred_buckets(),
                forecast_bytes_ratio: forecast_ratio_buckets(),
                forecast_seconds_ratio: forecast_ratio_buckets(),
                by_mode: Family::default(),
            },
            communication_cost: Family::default(),
            traffic: Family::default(),
            vms: Gauge::default(),
            maintenance: Gauge::default(),
            hypervisor_up: Gauge::default(),
            zombie_vms: Gauge::default(),
            flows: FlowMetrics::default(),
            peers: PeerMetrics::default(),
            endpoint: EndpointMetrics::default(),
            journal_torn_records: Counter::default(),
            rule_violations_by_kind: Family::default(),
            rules_file_errors: Counter::default(),
        };
        for kind in crate::rules::Refusal::KINDS {
            let _ = m.rule_violations(kind);
        }
        // Every label value a family can take exists from the start, so rate() and alerts see
        // a zero rather than an absent series.
        for o in TurnOutcome::ALL {
            let _ = m.decisions.get_or_create(&OutcomeLabels { outcome: o });
        }
        for reason in [
            AbortReason::Timeout,
            AbortReason::Stalled,
            AbortReason::Cancelled,
        ] {
            let _ = m.migrations.aborted.get_or_create(&ReasonLabels { reason });
        }
        let ran = [Mode::PreCopy, Mode::PreCopyAutoConverge, Mode::PostCopy].map(Mode::name);
        for predicted in ran.iter().copied().chain(["none"]) {
            for actual in ran {
                let _ = m
                    .migrations
                    .by_mode
                    .get_or_create(&ModeLabels { predicted, actual });
            }
        }
        m.set_levels(levels, &[], &[]);
        for direction in [MigrationDirection::Outgoing, MigrationDirection::Incoming] {
            let _ = m
                .migrations
                .in_flight
                .get_or_create(&DirectionLabels { direction });
        }

        for reason in ConnectionDrop::ALL {
            let _ = m.endpoint.dropped.get_or_create(&DropLabels { reason });
        }

        registry.register_collector(Box::new(ProcessCollector));
        let r = registry.sub_registry_with_prefix("scored");
        r.register(
            "build",
            "scored version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );

        let t = &m.token;
        r.register(
            "token_held",
            "1 while this host holds the S-CORE token",
            t.held.clone(),
        );
        r.register(
            "token_passes",
            "Token hand-offs this host made to another host",
            t.passes.clone(),
        );
        r.register_with_unit(
            "token_handoff_latency",
            "Time from sending the token to its acceptance by the next host",
            Unit::Seconds,
            t.handoff_latency.clone(),
        );
        r.register(
            "token_epoch",
            "Epoch of the newest token this host has seen (raised on every regeneration)",
            t.epoch.clone(),
        );
        r.register(
            "token_regenerations",
            "Tokens this host regenerated after detecting a loss",
            t.regenerations.clone(),
        );
        r.register(
            "token_skipped_hosts",
            "Hand-offs skipped because the next host did not accept the token in time",
            t.skipped_hosts.clone(),
        );
        r.register(
            "token_fenced",
            "Tokens dropped because their epoch was older than one already seen",
            t.fenced.clone(),
        );
        r.register(
            "token_turn_panics",
            "Turns that ended in a panic; the token they held was let go and is regenerated",
            t.turn_panics.clone(),
        );
        r.register_with_unit(
            "token_statistics_gather",
            "Global policy: time to gather every host's statistics at a round start",
            Unit::Seconds,
            t.statistics_gather.clone(),
        );

        r.register(
            "decisions",
            "Decisions made for local VMs while holding the token, by outcome",
            m.decisions.clone(),
        );
        r.register_with_unit(
            "decision_duration",
            "Time one decision took (flows, locations, capacity queries, Eq. 3.2)",
            Unit::Seconds,
            m.decision_duration.clone(),
        );
        r.register(
            "group_plans",
            "Group moves planned at this host's turns (recommended, or carried out under decision.group_moves = act)",
            m.group_plans.clone(),
        );
        r.register(
            "group_surveys",
            "Hosts asked for a group-move survey (/scored/group/1) by this host's turns",
            m.group_surveys.clone(),
        );
        r.register(
            "decision_partner_hosts",
            "Other hosts running the located partners of VMs whose turn ended in a decision (migrated, no benefit, no capacity), summed over those turns",
            m.decision_partner_hosts.clone(),
        );
        r.register(
            "decision_candidates_asked",
            "Hosts asked for capacity by turns that ended in a decision, summed over those turns",
            m.decision_candidates.clone(),
        );

        let g = &m.migrations;
        r.register(
            "migrations_started",
            "Live migrations of local VMs started",
            g.started.clone(),
        );
        r.register(
            "migrations_succeeded",
            "Live migrations that completed with the VM running at the destination",
            g.succeeded.clone(),
        );
        r.register(
            "migrations_failed",
            "Live migrations that failed, leaving the VM running here",
            g.failed.clone(),
        );
        r.register(
            "migrations_aborted",
            "Live migrations scored aborted, by reason",
            g.aborted.clone(),
        );
        r.register(
            "migrations_in_flight",
            "Live migrations in progress on this host, by direction",
            g.in_flight.clone(),
        );
        r.register_with_unit(
            "migration_duration",
            "Duration of completed live migrations",
            Unit::Seconds,
            g.duration.clone(),
        );
        r.register_with_unit(
            "migration_downtime",
            "Downtime (final stop-and-copy) of completed live migrations",
            Unit::Seconds,
            g.downtime.clone(),
        );
        r.register_with_unit(
            "migration_transferred",
            "Bytes sent by completed live migrations",
            Unit::Bytes,
            g.transferred.clone(),
        );
        r.register_with_unit(
            "migration_forecast_bytes",
            "Bytes a completed live migration sent over the bytes its forecast (src/forecast.rs, from the guest's measured memory and dirty rate) predicted; only migrations with a forecast",
            Unit::Other("ratio".into()),
            g.forecast_bytes_ratio.clone(),
        );
        r.register_with_unit(
            "migration_forecast_seconds",
            "Duration of a completed live migration over the duration its forecast predicted; only migrations with a forecast",
            Unit::Other("ratio".into()),
            g.forecast_seconds_ratio.clone(),
        );
        r.register(
            "migrations_by_mode",
            "Completed live migrations by the mode the forecast predicted (none without a forecast) and the mode they ran in",
            g.by_mode.clone(),
        );

        r.register_with_unit(
            "communication_cost",
            "This host's share of the communication cost (Eq. 3.1): its VMs' traffic times the path cost, by level",
            Unit::Other("bytes_per_second".into()),
            m.communication_cost.clone(),
        );
        r.register_with_unit(
            "traffic",
            "Traffic of this host's VMs with their partners, by the level it crosses",
            Unit::Other("bytes_per_second".into()),
            m.traffic.clone(),
        );
        r.register("vms", "VMs running on this host", m.vms.clone());
        r.register(
            "maintenance",
            "1 while this host is in maintenance (never a destination)",
            m.maintenance.clone(),
        );
        r.register(
            "hypervisor_up",
            "1 while this host's hypervisor answers; 0 while it does not (no decisions for its VMs)",
            m.hypervisor_up.clone(),
        );
        r.register(
            "zombie_vms",
            "VMs this host sees running on more than one host at once, by the hosts' own inventories (no decisions for them)",
            m.zombie_vms.clone(),
        );

        r.register(
            "rule_violations",
            "Local VMs breaking a placement rule where they run (an operator's move, a VM started in the wrong place), by the rule's kind",
            m.rule_violations_by_kind.clone(),
        );
        r.register(
            "rules_file_errors",
            "Rules files that did not load, at start or on SIGHUP (the rules in force stay)",
            m.rules_file_errors.clone(),
        );

        let f = &m.flows;
        r.register(
            "flow_entries",
            "Entries in the flow table",
            f.entries.clone(),
        );
        r.register(
            "flow_evictions",
            "Flow entries evicted because the table was full",
            f.evictions.clone(),
        );
        r.register(
            "flow_packets",
            "Packets captured on VM interfaces",
            f.packets.clone(),
        );
        r.register_with_unit(
            "flow",
            "Bytes captured on VM interfaces (scaled by the sampling rate)",
            Unit::Bytes,
            f.bytes.clone(),
        );
        r.register(
            "flow_drops",
            "Packets the kernel dropped before capture read them",
            f.drops.clone(),
        );
        r.register(
            "flow_unattributed",
            "Captured packets that matched no local VM",
            f.unattributed.clone(),
        );
        r.register(
            "flow_spoofed",
            "Captured packets a local VM sent from, or received for, an address not its own (not counted as traffic)",
            f.spoofed.clone(),
        );

        r.register(
            "journal_torn_records",
            "Torn records (a write a crash interrupted) cut from the migration journal when it was opened, kept in <journal>.corrupt",
            m.journal_torn_records.clone(),
        );

        r.register(
            "peers_connected",
            "scored peers this host is connected to",
            m.peers.connected.clone(),
        );
        r.register(
            "peers_refused",
            "Connections refused because the peer is not in the topology file",
            m.peers.refused.clone(),
        );
        r.register(
            "metrics_connections",
            "Connections open to this metrics endpoint",
            m.endpoint.connections.clone(),
        );
        r.register(
            "metrics_connections_dropped",
            "Metrics endpoint connections closed before their answer was taken in, by reason",
            m.endpoint.dropped.clone(),
        );
        m
    }

    /// Counts one decision.
    /// The violations gauge of one rule kind.
    pub fn rule_violations(&self, kind: &str) -> Gauge {
        self.rule_violations_by_kind
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .clone()
    }

    pub fn decided(&self, outcome: TurnOutcome, took: Duration) {
        self.decisions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.decision_duration.observe(took.as_secs_f64());
    }

    /// What a turn that ended in a decision reached: `partner_hosts` other hosts run its
    /// partners, `candidates` hosts were asked for capacity. Other outcomes are not counted.
    pub fn reached(&self, outcome: TurnOutcome, partner_hosts: usize, candidates: usize) {
        if TurnOutcome::DECIDED.contains(&outcome) {
            self.decision_partner_hosts.inc_by(partner_hosts as u64);
            self.decision_candidates.inc_by(candidates as u64);
        }
    }

    /// Sets this host's communication cost and traffic per level (`names[i]` is level `i + 1`).
    pub fn set_levels(&self, names: &[String], cost: &[f64], traffic: &[f64]) {
        for (i, name) in names.iter().enumerate() {
            let l = LevelLabels {
                level: name.clone(),
            };
            self.communication_cost
                .get_or_create(&l)
                .set(cost.get(i).copied().unwrap_or(0.0));
            self.traffic
                .get_or_create(&l)
                .set(traffic.get(i).copied().unwrap_or(0.0));
        }
    }
}

/// The registry as OpenMetrics text (ending in `# EOF`).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// The standard `process_*` metrics of this process, read on every scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A read that fails leaves its metrics out of this scrape rather than failing it.
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        for (name, help, unit, v) in [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                p.resident_bytes as f64,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                p.virtual_bytes as f64,
            ),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(Unit::Seconds),
                p.start_time_seconds,
            ),
            ("process_threads", "OS threads", None, p.threads as f64),
        ] {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?)?;
        }
        if let Some(fds) = p.open_fds {
            let g = ConstGauge::new(fds as i64);
            g.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors",
                None,
                g.metric_type(),
            )?)?;
        }
        if let Some(max) = p.max_fds {
            let g = ConstGauge::new(max as i64);
            g.encode(encoder.encode_descriptor(
                "process_max_fds",
                "Limit on open file descriptors",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// What the process collector reports.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub start_time_seconds: f64,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    /// Reads this process's statistics through sysinfo (which reads `/proc/self` on Linux).
    /// The start time has whole-second resolution.
    pub fn read() -> Option<ProcessStats> {
        use std::sync::{Mutex, OnceLock};
        use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
        // One System for the process's life: a fresh one reads /proc/cpuinfo and every CPU's
        // line of /proc/stat on its first CPU refresh, on every scrape.
        static SYSTEM: OnceLock<Mutex<System>> = OnceLock::new();
        let pid = sysinfo::get_current_pid().ok()?;
        let mut system = SYSTEM
            .get_or_init(|| Mutex::new(System::new()))
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            false,
            ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory()
                .with_tasks(),
        );
        let p = system.process(pid)?;
        Some(ProcessStats {
            cpu_seconds: p.accumulated_cpu_time() as f64 / 1000.0,
            resident_bytes: p.memory(),
            virtual_bytes: p.virtual_memory(),
            // sysinfo lists the threads other than the main one.
            threads: p.tasks()?.len() as u64 + 1,
            start_time_seconds: p.start_time() as f64,
            open_fds: p.open_files().map(|n| n as u64),
            max_fds: p.open_files_limit().map(|n| n as u64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only turns that ended in a decision count what they reached, so the lab's "requests per
    /// host reached" divides by the same turns as its "per decision".
    #[test]
    fn reach_is_counted_for_decided_turns_only() {
        let mut registry = Registry::with_prefix("scored");
        let m = Metrics::register(&mut registry, &[]);
        m.reached(TurnOutcome::Migrated, 3, 2);
        m.reached(TurnOutcome::NoCapacity, 1, 4);
        m.reached(TurnOutcome::Busy, 9, 9);
        m.reached(TurnOutcome::Cooldown, 9, 9);
        assert_eq!(m.decision_partner_hosts.get(), 4);
        assert_eq!(m.decision_candidates.get(), 6);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("scored_decision_partner_hosts_total 4"),
            "{text}"
        );
        assert!(
            text.contains("scored_decision_candidates_asked_total 6"),
            "{text}"
        );
    }

    #[test]
    fn reads_own_process() {
        let s = ProcessStats::read().expect("/proc/self is readable on Linux");
        assert!(s.resident_bytes > 0);
        assert!(s.threads >= 1);
        assert!(s.open_fds.unwrap() >= 3);
        assert!(s.max_fds.unwrap() >= s.open_fds.unwrap());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // This test binary started moments ago (whole seconds, so up to one second "later").
        assert!(
            s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 600.0,
            "{} vs now {now}",
            s.start_time_seconds
        );
        // CPU time is counted in clock ticks: spend a visible amount and see it.
        let busy = std::time::Instant::now();
        let mut x = 0u64;
        while busy.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let after = ProcessStats::read().unwrap();
        assert!(after.cpu_seconds > s.cpu_seconds, "{after:?} after {s:?}");
    }
}
