//! `scored sim` on the command line: arguments, progress bar (only when stderr is a terminal),
//! the printed summary and the files in `--out`.

use super::engine::PerMove;
use super::groups::GroupParams;
use super::output;
use super::study::{self, Study};
use super::traffic::TrafficParams;
use super::workload::WorkloadParams;
use super::{Clock, Scenario, ScenarioParams};
use crate::daemon::history::CooldownPolicy;
use crate::decide::group::GroupOptions;
use crate::rules::window::EVERY_DAY;
use crate::rules::{Budget, Span, Window};
use crate::topology::Topology;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use scored_proto::PolicyKind;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Topology file (e.g. topology/dc-2560.toml).
    #[arg(long)]
    pub topology: PathBuf,
    /// Token policy to run: round-robin, global, distributed, load-aware, or all.
    #[arg(long, default_value = "all", value_parser = parse_policy)]
    pub policy: PolicyChoice,
    /// Migration cost c_m as a fraction of the mean per-VM share of the initial overall cost.
    #[arg(long, default_value_t = 0.0)]
    pub cm: f64,
    /// c_m also at least this share of the deciding VM's own current cost (the daemon's
    /// `[decision] migration_cost_fraction`, 0.05 there; 0: the constant `--cm` alone).
    #[arg(long, default_value_t = 0.0)]
    pub cm_own: f64,
    /// Token rounds (iterations): in each, every VM holds the token once.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seed of the one ChaCha stream all randomness comes from (placement, traffic, churn).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Directory for the CSV files, the summary and the SVG figures.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Number of VMs (default: --fill of the hosts' VM slots).
    #[arg(long)]
    pub vms: Option<usize>,
    /// Share of the hosts' VM slots that VMs occupy when --vms is not given.
    #[arg(long, default_value_t = 0.8)]
    pub fill: f64,
    /// Share of flows replaced by new ones at each round boundary.
    #[arg(long, default_value_t = 0.05)]
    pub churn: f64,
    /// Share of flows that stay inside their rack (the thesis: 0.8).
    #[arg(long, default_value_t = 0.8)]
    pub intra_rack: f64,
    /// c_m fractions for the sweep of Fig. 5.3 (comma-separated); "none" to skip.
    #[arg(long, default_value = "0,0.1,0.2,0.3,1,3,10,30")]
    pub sweep: String,
    /// Run each policy once more per horizon given (seconds, comma-separated), with a per-VM
    /// c_m: each move's forecast migration bytes times its path cost, spread over the horizon
    /// (`[decision] migration_cost_model = "forecast"`); `--cm` stays the floor. Default: none.
    #[arg(long, default_value = "none")]
    pub cm_horizon: String,
    /// Charge added to every move under a per-VM c_m, as a fraction of the mean per-VM cost.
    #[arg(long, default_value_t = 0.0)]
    pub disruption_cost: f64,
    /// The migration's share of the link in the simulated data centre, MiB/s (what each VM's
    /// forecast migration bytes are computed against).
    #[arg(long, default_value_t = 512.0)]
    pub migration_bandwidth: f64,
    /// Skip the centralised baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Skip the runs with group moves (rows `<policy> + group moves`, their c_m sweep).
    #[arg(long)]
    pub no_group_moves: bool,
    /// Most VMs a group move takes along (the deciding VM and the partners bound to it in its
    /// rack).
    #[arg(long, default_value_t = GroupOptions::default().max_group)]
    pub group_max: usize,
    /// Destination racks a group move surveys (those that receive most of the group's cost).
    #[arg(long, default_value_t = GroupOptions::default().racks)]
    pub group_racks: usize,
    /// Other hosts of a full partner host's rack that a decision may try.
    #[arg(long, default_value_t = 3)]
    pub rack_alternates: usize,
    /// Return to a host a VM left only when the move removes this share of its cost (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub return_margin: f64,
    /// The daemon's cooldown on the simulated clock (`--turn-ms`): a VM that moved sits its
    /// turns out for this many seconds, doubled for each further move in a day, capped at 6 h
    /// (`[decision] cooldown_*`). None: a VM may move at every turn (S-CORE's rule).
    #[arg(long)]
    pub cooldown_s: Option<u64>,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Share of VMs in placement groups of 2–5 members with heavy replication traffic between
    /// them (0: none, the thesis's scenario).
    #[arg(long, default_value_t = 0.0)]
    pub groups: f64,
    /// Share of the groups that are anti-affinity at rack scope (the other anti-affinity groups
    /// are at host scope).
    #[arg(long, default_value_t = 0.2)]
    pub group_rack_scope: f64,
    /// Share of the groups that are affinity groups at rack scope.
    #[arg(long, default_value_t = 0.2)]
    pub group_affinity: f64,
    /// Replication between every two members of a group, bytes per 60 s traffic window.
    #[arg(long, default_value_t = 256e6)]
    pub replication_bytes: f64,
    /// A migration window in simulated time, every host: `[DAYS ]HH:MM-HH:MM`, DAYS like
    /// `mon-fri` or `sat,sun` (default every day); an end not after the start runs past
    /// midnight. Repeat for more; none: migrate at any time.
    #[arg(long = "window")]
    pub windows: Vec<String>,
    /// IANA time zone of the windows.
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// At most this many migrations of one VM in any 24 h of simulated time.
    #[arg(long)]
    pub budget_vm_day: Option<u32>,
    /// At most this many migrations out of or into one host in any hour of simulated time.
    #[arg(long)]
    pub budget_host_hour: Option<u32>,
    /// Simulated time of the first token step (RFC 3339).
    #[arg(long, default_value = "2026-01-05T00:00:00Z")]
    pub start: String,
    /// Simulated milliseconds per token step (one VM's turn).
    #[arg(long, default_value_t = 1000)]
    pub turn_ms: u32,
    /// Simulate at most this many token steps per run (default: every round in full). The
    /// protocol's counts per decision need no full run at 50,000 hosts.
    #[arg(long)]
    pub max_turns: Option<usize>,
    /// Directories of earlier runs (their messages.csv) to draw with this one in
    /// protocol_scale.svg: traffic by kind against the number of hosts.
    #[arg(long = "scale-from")]
    pub scale_from: Vec<PathBuf>,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `--window`: `[DAYS ]HH:MM-HH:MM` in time zone `tz`, for every host.
fn parse_window(spec: &str, tz: &jiff::tz::TimeZone) -> anyhow::Result<Window> {
    let bad = |why: &str| anyhow::anyhow!("--window `{spec}`: {why}");
    let (days, times) = match spec.trim().rsplit_once(' ') {
        Some((d, t)) => (Some(d.trim()), t),
        None => (None, spec.trim()),
    };
    let day = |d: &str| {
        DAYS.iter()
            .position(|x| *x == d.to_ascii_lowercase())
            .ok_or_else(|| bad(&format!("`{d}` is not a day (mon … sun)")))
    };
    let mut mask = 0u8;
    match days {
        None => mask = EVERY_DAY,
        Some(list) => {
            for part in list.split(',') {
                match part.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (day(a)?, day(b)?);
                        let mut d = a;
                        loop {
                            mask |= 1 << d;
                            if d == b {
                                break;
                            }
                            d = (d + 1) % 7;
                        }
                    }
                    None => mask |= 1 << day(part)?,
                }
            }
        }
    }
    let minute = |t: &str| -> anyhow::Result<u16> {
        let (h, m) = t
            .split_once(':')
            .ok_or_else(|| bad(&format!("`{t}` is not HH:MM")))?;
        match (h.parse::<u16>(), m.parse::<u16>()) {
            (Ok(h), Ok(m)) if h < 24 && m < 60 => Ok(h * 60 + m),
            _ => Err(bad(&format!("`{t}` is not a time of day HH:MM"))),
        }
    };
    let (a, b) = times
        .split_once('-')
        .ok_or_else(|| bad("expected HH:MM-HH:MM"))?;
    Ok(Window {
        name: spec.to_string(),
        hosts: None,
        tz: tz.clone(),
        spans: vec![Span {
            days: mask,
            start: minute(a)?,
            end: minute(b)?,
        }],
    })
}

#[derive(Clone, Debug)]
pub enum PolicyChoice {
    All,
    One(PolicyKind),
}

fn parse_policy(s: &str) -> Result<PolicyChoice, String> {
    if s == "all" {
        return Ok(PolicyChoice::All);
    }
    PolicyKind::from_name(s)
        .map(PolicyChoice::One)
        .ok_or_else(|| {
            format!("unknown policy `{s}` (round-robin, global, distributed, load-aware, all)")
        })
}

/// A comma-separated list of numbers, or `none`: `--sweep` (fractions ≥ 0), `--cm-horizon`
/// (seconds ≥ 1). Each bad entry is named with its option.
fn parse_list(s: &str, option: &str, least: f64, what: &str) -> anyhow::Result<Vec<f64>> {
    if s == "none" || s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|x| {
            let v: f64 = x
                .trim()
                .parse()
                .with_context(|| format!("{option}: `{x}` is not a number"))?;
            anyhow::ensure!(v.is_finite() && v >= least, "{option}: {v} must be {what}");
            Ok(v)
        })
        .collect()
}

fn parse_sweep(s: &str) -> anyhow::Result<Vec<f64>> {
    parse_list(s, "--sweep", 0.0, "a non-negative fraction")
}

fn parse_horizons(s: &str) -> anyhow::Result<Vec<f64>> {
    parse_list(s, "--cm-horizon", 1.0, "at least 1 second")
}

impl SimArgs {
    /// The scenario and study these arguments describe.
    pub fn plan(&self) -> anyhow::Result<(ScenarioParams, Study)> {
        anyhow::ensure!(
            self.cm.is_finite() && self.cm >= 0.0,
            "--cm {} must be a non-negative fraction",
            self.cm
        );
        anyhow::ensure!(
            self.cm_own.is_finite() && self.cm_own >= 0.0,
            "--cm-own {} must be a non-negative fraction",
            self.cm_own
        );
        anyhow::ensure!(
            self.fill > 0.0 && self.fill <= 1.0,
            "--fill {} must be in (0, 1]",
            self.fill
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.intra_rack),
            "--intra-rack {} must be in [0, 1]",
            self.intra_rack
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.churn),
            "--churn {} must be in [0, 1]",
            self.churn
        );
        for (name, v) in [
            ("--groups", self.groups),
            ("--group-rack-scope", self.group_rack_scope),
            ("--group-affinity", self.group_affinity),
        ] {
            anyhow::ensure!((0.0..=1.0).contains(&v), "{name} {v} must be in [0, 1]");
        }
        anyhow::ensure!(
            self.group_rack_scope + self.group_affinity <= 1.0,
            "--group-rack-scope {} and --group-affinity {} share more than all the groups",
            self.group_rack_scope,
            self.group_affinity
        );
        anyhow::ensure!(
            self.replication_bytes.is_finite() && self.replication_bytes >= 0.0,
            "--replication-bytes {} must be a non-negative number",
            self.replication_bytes
        );
        anyhow::ensure!(
            self.disruption_cost.is_finite() && self.disruption_cost >= 0.0,
            "--disruption-cost {} must be a non-negative fraction",
            self.disruption_cost
        );
        anyhow::ensure!(
            self.migration_bandwidth.is_finite() && self.migration_bandwidth >= 1.0,
            "--migration-bandwidth {} must be at least 1 MiB/s",
            self.migration_bandwidth
        );
        let tz = jiff::tz::TimeZone::get(&self.timezone).map_err(|_| {
            anyhow::anyhow!("--timezone `{}`: no such IANA time zone", self.timezone)
        })?;
        let windows = self
            .windows
            .iter()
            .map(|w| parse_window(w, &tz))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let start: jiff::Timestamp = self
            .start
            .parse()
            .map_err(|e| anyhow::anyhow!("--start `{}`: {e}", self.start))?;
        let params = ScenarioParams {
            vms: self.vms,
            fill: self.fill,
            rounds: self.rounds,
            seed: self.seed,
            traffic: TrafficParams {
                churn: self.churn,
                intra_rack: self.intra_rack,
                ..TrafficParams::default()
            },
            groups: GroupParams {
                share: self.groups,
                rack_scope: self.group_rack_scope,
                affinity: self.group_affinity,
                replication_bytes: self.replication_bytes,
                ..GroupParams::default()
            },
            workload: WorkloadParams {
                bandwidth_mib_s: self.migration_bandwidth,
                ..WorkloadParams::default()
            },
            windows,
            budget: Budget {
                per_vm_per_day: self.budget_vm_day,
                per_host_per_hour: self.budget_host_hour,
            },
            clock: Clock {
                start_unix_ms: start.as_millisecond(),
                turn_ms: self.turn_ms as i64,
            },
            max_turns: self.max_turns,
            ..ScenarioParams::default()
        };
        let threads = self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let study = Study {
            policies: match self.policy {
                PolicyChoice::All => PolicyKind::ALL.to_vec(),
                PolicyChoice::One(p) => vec![p],
            },
            cm_fraction: self.cm,
            cm_own_fraction: self.cm_own,
            sweep: parse_sweep(&self.sweep)?,
            baseline: !self.no_baseline,
            per_move: parse_horizons(&self.cm_horizon)?
                .into_iter()
                .map(|horizon_s| PerMove {
                    horizon_s,
                    disruption: self.disruption_cost,
                })
                .collect(),
            rack_alternates: self.rack_alternates,
            return_margin: self.return_margin,
            cooldown: self.cooldown_s.map(|s| {
                let d = CooldownPolicy::default();
                let base = std::time::Duration::from_secs(s);
                CooldownPolicy {
                    base,
                    cap: d.cap.max(base),
                    ..d
                }
            }),
            group: (!self.no_group_moves).then_some(GroupOptions {
                max_group: self.group_max.max(1),
                racks: self.group_racks.max(1),
                ..GroupOptions::default()
            }),
            threads,
        };
        Ok((params, study))
    }
}

/// Runs `scored sim`.
pub fn run_cli(args: &SimArgs) -> anyhow::Result<()> {
    let (params, study) = args.plan()?;
    let topo = Topology::load(&args.topology).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sc = Scenario::build(topo, params).context("scored sim")?;
    let runs = study.policies.len()
        + study
            .sweep
            .iter()
            .filter(|&&f| f != study.cm_fraction)
            .count()
            * study.policies.len();
    let per_run = (sc.rounds() * sc.vms()).min(args.max_turns.unwrap_or(usize::MAX));
    let steps = (runs * per_run) as u64;
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(steps);
        b.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {percent}% token steps {human_pos}/{human_len} ({eta} left)",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    let progress = |k: u64| {
        if let Some(b) = &bar {
            b.inc(k);
        }
    };
    let report = study::simulate(&sc, &study, &progress);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    print!("{}", output::summary_text(&sc, &report));
    if let Some(peak) = peak_memory_kib() {
        println!("\npeak memory (VmHWM): {:.0} MiB", peak as f64 / 1024.0);
    }
    for r in &report.runs {
        anyhow::ensure!(
            r.bad_moves == 0,
            "{}: {} migrations did not lower the cost",
            r.policy,
            r.bad_moves
        );
    }
    let violations = output::rule_violations(&sc, &report);
    anyhow::ensure!(
        violations == 0,
        "{violations} placement rule violation(s) in the final allocations"
    );
    if let Some(dir) = &args.out {
        let written = output::write_all(dir, &sc, &report)?;
        eprintln!("wrote {} files to {}", written.len(), dir.display());
        if !args.scale_from.is_empty() {
            scale_figure(dir, &args.scale_from, &report)?;
        }
    } else {
        anyhow::ensure!(
            args.scale_from.is_empty(),
            "--scale-from needs --out (the figure is written there)"
        );
    }
    Ok(())
}

/// This process's peak resident memory (Linux), for the summary.
fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// protocol_scale.svg in `dir`: this run's message counts with those of the `earlier` runs.
fn scale_figure(
    dir: &std::path::Path,
    earlier: &[PathBuf],
    report: &study::Report,
) -> anyhow::Result<()> {
    use super::messages::{Model, report as counts};
    let mut points =
        counts::parse_messages_csv(&counts::messages_csv(&report.runs, &Model::default()))
            .map_err(|e| anyhow::anyhow!("this run's messages: {e}"))?;
    for d in earlier {
        let path = d.join("messages.csv");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("--scale-from: cannot read {}", path.display()))?;
        points.extend(
            counts::parse_messages_csv(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        );
    }
    #[cfg(feature = "plot")]
    for r in &report.runs {
        let path = dir.join(format!("protocol_scale_{}.svg", r.policy.name()));
        super::plot::protocol_scale(&path, &points, r.policy.name())?;
        eprintln!("wrote {}", path.display());
    }
    #[cfg(not(feature = "plot"))]
    {
        let _ = (dir, points);
        tracing::info!("no protocol scale figure: scored was built without the `plot` feature");
    }
    Ok(())
}
