//! A whole evaluation over one scenario: every requested policy at the chosen `c_m`, the
//! centralised baseline, and the c_m sweep of Fig. 5.3, spread over worker threads. Each run is
//! independent and deterministic, so the thread count never changes a result.

use super::baseline::{self, Baseline};
use super::bound;
use super::engine::{self, PerMove, PolicyRun, RunOptions};
use super::{Scenario, cost_per_vm};
use crate::daemon::history::CooldownPolicy;
use crate::decide::group::GroupOptions;
use scored_proto::PolicyKind;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Which runs make up the study.
#[derive(Clone, Debug)]
pub struct Study {
    pub policies: Vec<PolicyKind>,
    /// `c_m` as a fraction of the mean per-VM cost at the start (see [`cost_per_vm`]).
    pub cm_fraction: f64,
    /// `c_m` at least this share of the deciding VM's own cost in every run (the daemon's
    /// `migration_cost_fraction`; 0: the constant alone).
    pub cm_own_fraction: f64,
    /// Fractions for the c_m sweep (Fig. 5.3); empty: no sweep.
    pub sweep: Vec<f64>,
    pub baseline: bool,
    /// Each policy once more under each of these per-VM `c_m` (`[decision]
    /// migration_cost_model = "forecast"`), with the constant `cm_fraction` as its floor; the
    /// disruption charge as a fraction of the mean per-VM cost, like `cm_fraction`.
    pub per_move: Vec<PerMove>,
    pub rack_alternates: usize,
    pub return_margin: f64,
    /// The daemon's cooldown on the scenario's clock (`RunOptions::cooldown`).
    pub cooldown: Option<CooldownPolicy>,
    /// Each policy once more with group moves beside its single moves (rows `<policy> + group
    /// moves`, and the c_m sweep again); `None`: S-CORE's moves alone.
    pub group: Option<GroupOptions>,
    pub threads: usize,
}

impl Default for Study {
    fn default() -> Self {
        Study {
            policies: PolicyKind::ALL.to_vec(),
            cm_fraction: 0.0,
            cm_own_fraction: 0.0,
            sweep: vec![0.0, 0.1, 0.2, 0.3, 1.0, 3.0, 10.0, 30.0],
            baseline: true,
            per_move: Vec::new(),
            rack_alternates: 3,
            return_margin: 0.0,
            cooldown: None,
            group: Some(GroupOptions::default()),
            threads: 2,
        }
    }
}

/// One point of the c_m sweep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SweepPoint {
    pub policy: PolicyKind,
    pub cm_fraction: f64,
    /// Cost reduction against the initial allocation under the last round's traffic.
    pub reduction: f64,
    pub migrations: u64,
    /// Bytes the migrations sent (each VM's forecast).
    pub migrated_bytes: f64,
    /// With group moves (`Study::group`).
    pub group: bool,
}

/// Everything a study produced.
#[derive(Clone, Debug)]
pub struct Report {
    /// One run per policy, in `Study::policies` order.
    pub runs: Vec<PolicyRun>,
    /// The runs under each per-VM `c_m` of `Study::per_move`, with their wall times.
    pub per_move: Vec<(PerMove, PolicyRun, Duration)>,
    /// The same with group moves (`Study::group`).
    pub per_move_group: Vec<(PerMove, PolicyRun, Duration)>,
    /// Each policy with group moves (`Study::group`), with its wall time.
    pub group: Vec<(PolicyRun, Duration)>,
    /// The same runs ignoring the scenario's placement rules (empty when it has none): what
    /// the rules cost, and the violations they prevent.
    pub without_rules: Vec<PolicyRun>,
    pub without_rules_times: Vec<Duration>,
    pub baseline: Option<Baseline>,
    /// A lower bound on Eq. 3.1 under the last round's traffic by link level
    /// (`bound::lower_bound_by_level`), computed with the baseline (empty without it), and the
    /// time it took.
    pub bound_by_level: Vec<f64>,
    pub bound_time: Duration,
    pub sweep: Vec<SweepPoint>,
    /// Eq. 3.1 of the initial allocation under each round's traffic.
    pub initial_costs: Vec<f64>,
    pub cost_per_vm: f64,
    pub cm_fraction: f64,
    /// `Study::cm_own_fraction`.
    pub cm_own_fraction: f64,
    /// Wall time of each run (same order as `runs`), the baseline's, and the whole study's.
    pub run_times: Vec<Duration>,
    pub baseline_time: Duration,
    pub wall: Duration,
}

impl Report {
    /// The runs that applied the scenario's rules: each policy, then each with group moves.
    pub fn runs_with_rules(&self) -> impl Iterator<Item = &PolicyRun> {
        self.runs.iter().chain(self.group.iter().map(|(r, _)| r))
    }

    /// The lower bound on Eq. 3.1 under the last round's traffic (`None` without the baseline).
    pub fn bound(&self) -> Option<f64> {
        (!self.bound_by_level.is_empty()).then(|| self.bound_by_level.iter().sum())
    }

    /// `1 − final / initial` under the last round's traffic.
    pub fn reduction(&self, final_cost: f64) -> f64 {
        let start = *self.initial_costs.last().expect("at least one round");
        if start > 0.0 {
            1.0 - final_cost / start
        } else {
            0.0
        }
    }
}

enum Job {
    /// Policy at a constant c_m fraction, as `Run` says.
    Run(PolicyKind, f64, Run),
    Baseline,
}

/// What a policy run is for.
#[derive(Clone, Copy, PartialEq)]
enum Run {
    /// The summary's row (and a sweep point when its fraction is swept).
    Main,
    /// The same, ignoring the scenario's rules.
    WithoutRules,
    /// A point of the c_m sweep alone.
    Sweep,
    /// Under a per-VM c_m, its fraction the floor.
    PerMove(PerMove),
    /// The same with group moves: the row `<policy> + group moves, per-VM c_m over <h> s`.
    PerMoveGroup(PerMove),
    /// With group moves: the row `<policy> + group moves` (and a sweep point when swept).
    Group,
    /// A point of the c_m sweep with group moves.
    GroupSweep,
}

enum Done {
    Run(Box<PolicyRun>, Duration),
    Baseline(Box<Baseline>, Duration),
}

/// Runs the study. `progress` receives token steps as they complete (from several threads).
pub fn simulate(sc: &Scenario, study: &Study, progress: &(dyn Fn(u64) + Sync)) -> Report {
    let started = Instant::now();
    let unit = cost_per_vm(sc);
    let mut jobs: Vec<Job> = Vec::new();
    if study.baseline {
        // Longest job first keeps the threads evenly busy.
        jobs.push(Job::Baseline);
    }
    let mut each_policy = |f: f64, run: Run| {
        for &p in &study.policies {
            jobs.push(Job::Run(p, f, run));
        }
    };
    each_policy(study.cm_fraction, Run::Main);
    if !sc.rules.is_empty() {
        each_policy(study.cm_fraction, Run::WithoutRules);
    }
    for &m in &study.per_move {
        each_policy(study.cm_fraction, Run::PerMove(m));
    }
    if study.group.is_some() {
        each_policy(study.cm_fraction, Run::Group);
        for &m in &study.per_move {
            each_policy(study.cm_fraction, Run::PerMoveGroup(m));
        }
    }
    for &f in &study.sweep {
        if f != study.cm_fraction {
            each_policy(f, Run::Sweep);
            if study.group.is_some() {
                each_policy(f, Run::GroupSweep);
            }
        }
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Done)>> = Mutex::new(Vec::new());
    let threads = study.threads.clamp(1, jobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(k) else { break };
                    let t = Instant::now();
                    let done = match *job {
                        Job::Baseline => Done::Baseline(Box::new(baseline::run(sc)), t.elapsed()),
                        Job::Run(policy, f, run) => {
                            let opt = RunOptions {
                                policy,
                                migration_cost: f * unit,
                                migration_cost_fraction: study.cm_own_fraction,
                                per_move: match run {
                                    Run::PerMove(m) | Run::PerMoveGroup(m) => Some(PerMove {
                                        disruption: m.disruption * unit,
                                        ..m
                                    }),
                                    _ => None,
                                },
                                rack_alternates: study.rack_alternates,
                                return_margin: study.return_margin,
                                record_steps: run == Run::Main,
                                verify_moves: false,
                                rules: run != Run::WithoutRules,
                                cooldown: study.cooldown,
                                group: match run {
                                    Run::Group | Run::GroupSweep | Run::PerMoveGroup(_) => {
                                        study.group
                                    }
                                    _ => None,
                                },
                            };
                            let run = engine::run(sc, &opt, progress);
                            Done::Run(Box::new(run), t.elapsed())
                        }
                    };
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((k, done));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|r| r.0);

    let initial_costs: Vec<f64> = (0..sc.rounds()).map(|r| sc.cost(r, &sc.initial)).collect();
    let mut report = Report {
        runs: Vec::new(),
        per_move: Vec::new(),
        per_move_group: Vec::new(),
        group: Vec::new(),
        without_rules: Vec::new(),
        without_rules_times: Vec::new(),
        baseline: None,
        bound_by_level: Vec::new(),
        bound_time: Duration::ZERO,
        sweep: Vec::new(),
        initial_costs,
        cost_per_vm: unit,
        cm_fraction: study.cm_fraction,
        cm_own_fraction: study.cm_own_fraction,
        run_times: Vec::new(),
        baseline_time: Duration::ZERO,
        wall: Duration::ZERO,
    };
    let in_sweep = |f: f64| study.sweep.contains(&f);
    for (k, done) in results {
        match done {
            Done::Baseline(b, t) => {
                report.baseline = Some(*b);
                report.baseline_time = t;
            }
            Done::Run(run, t) => {
                let Job::Run(_, f, kind) = jobs[k] else {
                    continue;
                };
                match kind {
                    Run::PerMove(m) => {
                        report.per_move.push((m, *run, t));
                        continue;
                    }
                    Run::PerMoveGroup(m) => {
                        report.per_move_group.push((m, *run, t));
                        continue;
                    }
                    Run::WithoutRules => {
                        report.without_rules.push(*run);
                        report.without_rules_times.push(t);
                        continue;
                    }
                    Run::Main | Run::Sweep | Run::Group | Run::GroupSweep => {}
                }
                let group = matches!(kind, Run::Group | Run::GroupSweep);
                if in_sweep(f) {
                    report.sweep.push(SweepPoint {
                        policy: run.policy,
                        cm_fraction: f,
                        reduction: report.reduction(run.final_cost()),
                        migrations: run.migrations,
                        migrated_bytes: run.migrated_bytes,
                        group,
                    });
                }
                match kind {
                    Run::Main => {
                        report.runs.push(*run);
                        report.run_times.push(t);
                    }
                    Run::Group => report.group.push((*run, t)),
                    _ => {}
                }
            }
        }
    }
    if study.baseline {
        let t = Instant::now();
        if let Some(rates) = sc.rates.last() {
            report.bound_by_level = bound::lower_bound_by_level(&sc.topology, &sc.slots, rates);
        }
        report.bound_time = t.elapsed();
    }
    report.sweep.sort_by(|a, b| {
        (a.group, a.policy as u8)
            .cmp(&(b.group, b.policy as u8))
            .then(a.cm_fraction.total_cmp(&b.cm_fraction))
    });
    report.wall = started.elapsed();
    report
}
