//! Writes a study's results: the per-step cost CSV, the summary table (text and CSV), the c_m
//! sweep CSV, the protocol's message counts and the figures. The only part of the simulator that
//! touches files.

use super::Scenario;
use super::engine;
use super::messages;
#[cfg(feature = "plot")]
use super::plot;
use super::study::Report;
use scored_proto::PolicyKind;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// A result file that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[cfg(feature = "plot")]
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> OutputError + '_ {
    move |e| OutputError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// One line of the summary table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub name: String,
    /// Final cost / initial cost (round 0).
    pub normalised: f64,
    /// 1 − final / initial allocation's cost, both under the last round's traffic.
    pub reduction: f64,
    /// What the run or plan moved (`None` for the lower bound, which is no allocation).
    pub moves: Option<Moves>,
    /// VMs that moved back to a host they had left (`None` for the baseline, a plan).
    pub moved_back: Option<u64>,
    pub seconds: f64,
}

/// The migrations of a run or a plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moves {
    pub migrations: u64,
    pub per_vm: f64,
    pub vms_moved: u64,
    /// Bytes the migrations sent (each VM's forecast; a plan's: each VM it moves, once).
    pub migrated_bytes: f64,
}

impl Row {
    /// GiB sent by migrations per point (1 %) of cost reduction: what the run paid for what
    /// it removed (`None` when it removed nothing or moved nothing).
    pub fn gib_per_point(&self) -> Option<f64> {
        let m = self.moves?;
        (self.reduction > 0.0).then(|| m.migrated_bytes / GIB / (self.reduction * 100.0))
    }
}

/// The name of a policy's row with group moves.
pub fn group_row(policy: PolicyKind) -> String {
    format!("{} + group moves", policy.name())
}

/// The name of the lower bound's row (`bound`).
pub const BOUND_ROW: &str = "lower bound on Eq. 3.1 (capacity only)";

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The summary rows: each policy, then the baseline and the lower bound, then (when the scenario
/// has placement rules) each policy as if there were none, named `<policy>, without rules`.
pub fn rows(sc: &Scenario, report: &Report) -> Vec<Row> {
    let n = sc.vms() as f64;
    let c0 = report.initial_costs[0];
    let row = |r: &crate::sim::engine::PolicyRun, name: String, seconds: f64| Row {
        name,
        normalised: r.final_cost() / c0,
        reduction: report.reduction(r.final_cost()),
        moves: Some(Moves {
            migrations: r.migrations,
            per_vm: r.migrations as f64 / n,
            vms_moved: r.vms_moved,
            migrated_bytes: r.migrated_bytes,
        }),
        moved_back: Some(r.moved_back),
        seconds,
    };
    let mut out: Vec<Row> = report
        .runs
        .iter()
        .zip(&report.run_times)
        .map(|(r, t)| row(r, r.policy.name().to_string(), t.as_secs_f64()))
        .collect();
    for (r, t) in &report.group {
        out.push(row(r, group_row(r.policy), t.as_secs_f64()));
    }
    for (m, r, t) in &report.per_move {
        let name = format!("{}, per-VM c_m over {:.0} s", r.policy.name(), m.horizon_s);
        out.push(row(r, name, t.as_secs_f64()));
    }
    for (m, r, t) in &report.per_move_group {
        let name = format!(
            "{}, per-VM c_m over {:.0} s",
            group_row(r.policy),
            m.horizon_s
        );
        out.push(row(r, name, t.as_secs_f64()));
    }
    if let Some(b) = &report.baseline {
        for (name, costs, moved, placement) in [
            (
                "centralised, incremental",
                &b.incremental_costs,
                b.incremental_vms_moved,
                &b.incremental_placement,
            ),
            (
                "centralised, re-placement",
                &b.costs,
                b.vms_moved,
                &b.placement,
            ),
        ] {
            let last = *costs.last().expect("one cost per round");
            let migrated_bytes = placement
                .iter()
                .zip(&sc.initial)
                .zip(&sc.migration_bytes)
                .filter(|((a, b), _)| a != b)
                .map(|(_, bytes)| bytes)
                .sum();
            out.push(Row {
                name: name.into(),
                normalised: last / c0,
                reduction: report.reduction(last),
                moves: Some(Moves {
                    migrations: moved,
                    per_vm: moved as f64 / n,
                    vms_moved: moved,
                    migrated_bytes,
                }),
                moved_back: None,
                seconds: report.baseline_time.as_secs_f64(),
            });
        }
    }
    if let Some(bound) = report.bound() {
        out.push(Row {
            name: BOUND_ROW.into(),
            normalised: bound / c0,
            reduction: report.reduction(bound),
            moves: None,
            moved_back: None,
            seconds: report.bound_time.as_secs_f64(),
        });
    }
    for (r, t) in report.without_rules.iter().zip(&report.without_rules_times) {
        let name = format!("{}, without rules", r.policy.name());
        out.push(row(r, name, t.as_secs_f64()));
    }
    out
}

/// Rule violations (pairs of group members placed where their rule forbids) in the final
/// allocation of every policy run with the rules (with and without group moves) and of both
/// centralised plans: must be 0.
pub fn rule_violations(sc: &Scenario, report: &Report) -> u64 {
    let runs: u64 = report.runs_with_rules().map(|r| r.violations).sum();
    let plans = report.baseline.as_ref().map_or(0, |b| {
        sc.rule_violations(&b.incremental_placement) + sc.rule_violations(&b.placement)
    });
    runs + plans
}

/// The placement rules' part of the summary: the groups, windows and budget, `rule violations:
/// N`, and what the same runs do without the rules. Empty when the scenario has no rules.
fn rules_text(sc: &Scenario, report: &Report) -> String {
    let mut s = String::new();
    let rules = &sc.rules;
    if rules.is_empty() {
        return s;
    }
    let [host, rack, affinity] = sc.group_counts;
    let _ = writeln!(
        s,
        "\nplacement rules: {} groups over {} VMs ({host} anti-affinity at host scope, {rack} anti-affinity at rack scope, {affinity} affinity at rack scope); {} migration window(s); budget: {} per VM per day, {} per host per hour",
        rules.groups().len(),
        sc.grouped_vms,
        rules.windows.len(),
        rules
            .budget
            .per_vm_per_day
            .map_or("no limit".to_string(), |v| v.to_string()),
        rules
            .budget
            .per_host_per_hour
            .map_or("no limit".to_string(), |v| v.to_string()),
    );
    let refused: u64 = report.runs_with_rules().map(|r| r.refused_by_rule).sum();
    let _ = writeln!(
        s,
        "rule violations: {} (every policy with the rules, with and without group moves, and both centralised plans; moves the destination's re-check refused: {refused})",
        rule_violations(sc, report)
    );
    if !report.without_rules.is_empty() {
        let _ = write!(
            s,
            "without the rules (rows `…, without rules` above), the same runs end with violations:"
        );
        for r in &report.without_rules {
            let _ = write!(s, " {} {};", r.policy.name(), r.violations);
        }
        let _ = writeln!(s);
    }
    s
}

/// The summary as a Markdown table with a header describing the scenario.
pub fn summary_text(sc: &Scenario, report: &Report) -> String {
    let mut s = String::new();
    let flows: usize = sc.rates[0].pairs().len();
    let _ = writeln!(
        s,
        "scenario: {} ({} hosts, {} racks), {} VMs, {} communicating pairs, {} rounds, seed {}",
        sc.topology.source().display(),
        sc.topology.hosts().len(),
        sc.topology.racks().len(),
        sc.vms(),
        flows,
        sc.rounds(),
        sc.params.seed
    );
    let _ = writeln!(
        s,
        "c_m = {:.0}% of the mean per-VM cost ({:.4e}){}; initial cost {:.4e}; wall {:.1} s\n",
        report.cm_fraction * 100.0,
        report.cm_fraction * report.cost_per_vm,
        if report.cm_own_fraction > 0.0 {
            format!(
                ", and at least {}% of the deciding VM's own cost",
                report.cm_own_fraction * 100.0
            )
        } else {
            String::new()
        },
        report.initial_costs[0],
        report.wall.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| run | cost reduction | final / initial cost | migrations | migrations per VM | VMs moved | VMs that moved back | migrated GiB | GiB per point | run time |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows(sc, report) {
        let back = match (&r.moves, r.moved_back) {
            (_, Some(b)) => b.to_string(),
            (Some(_), None) => "n/a (plan)".to_string(),
            (None, None) => "n/a".to_string(),
        };
        let moves = match &r.moves {
            Some(m) => format!(
                "{} | {:.3} | {} | {} | {:.0}",
                m.migrations,
                m.per_vm,
                m.vms_moved,
                back,
                m.migrated_bytes / GIB
            ),
            None => format!("n/a | n/a | n/a | {back} | n/a"),
        };
        let _ = writeln!(
            s,
            "| {} | {:.1}% | {:.4} | {moves} | {} | {:.1} s |",
            r.name,
            r.reduction * 100.0,
            r.normalised,
            r.gib_per_point()
                .map_or("-".to_string(), |g| format!("{g:.1}")),
            r.seconds
        );
    }
    let _ = writeln!(
        s,
        "\ndecisions (one per token step): migrate / no benefit above c_m / no room / no traffic / excluded by a gate; capacity queries; largest gap between the step-by-step cost (initial minus the benefits) and Eq. 3.1 recomputed\n"
    );
    let gated = !sc.rules.windows.is_empty() || sc.rules.budget != crate::rules::Budget::default();
    if gated {
        let _ = writeln!(
            s,
            "(with migration windows or budgets: then outside a window / over a budget)\n"
        );
    }
    let cooling = report.runs.iter().any(|r| r.outcomes[engine::COOLING] > 0);
    if cooling {
        let _ = writeln!(s, "(with the cooldown: then turns sat out cooling down)\n");
    }
    for r in &report.runs {
        let o = r.outcomes;
        let _ = write!(
            s,
            "- {}: {} / {} / {} / {} / {}",
            r.policy.name(),
            o[0],
            o[1],
            o[2],
            o[3],
            o[4],
        );
        if gated {
            let _ = write!(s, " / {} / {}", o[5], o[6]);
        }
        if cooling {
            let _ = write!(s, " / {}", o[engine::COOLING]);
        }
        let _ = writeln!(s, "; {} queries; gap {:.1e}", r.capacity_queries, r.drift);
    }
    if !report.group.is_empty() {
        let _ = writeln!(
            s,
            "\ngroup moves (`decide::group`): decisions carried out as a group move, their migrations (of which VMs sent out of a full host), plans surveyed, hosts other than the holder's asked per token step; the bad-move count and the step-by-step gap as above\n"
        );
        for (r, _) in &report.group {
            let g = r.group;
            let steps = r.outcomes.iter().sum::<u64>().max(1);
            let _ = writeln!(
                s,
                "- {}: {} decisions, {} migrations ({} sent away), {} plans, {:.2} hosts asked per step; {} bad; gap {:.1e}",
                group_row(r.policy),
                g.decisions,
                g.moves,
                g.evictions,
                g.plans,
                g.hosts_asked as f64 / steps as f64,
                r.bad_moves,
                r.drift
            );
        }
    }
    s.push_str(&rules_text(sc, report));
    s.push_str(&messages::report::summary(
        &report.runs,
        &messages::Model::default(),
    ));
    let last = sc.rounds() - 1;
    let names = sc.topology.level_names();
    let _ = write!(
        s,
        "\nshare of the final cost by level (last round's traffic):\n\n| allocation |"
    );
    for l in 1..=sc.topology.levels() as usize {
        let _ = write!(s, " {} |", names[l - 1]);
    }
    let _ = writeln!(
        s,
        "\n|---|{}",
        "---:|".repeat(sc.topology.levels() as usize)
    );
    let mut level_row = |name: &str, loc: &[crate::topology::HostId]| {
        let by = sc.cost_by_level(last, loc);
        let total: f64 = by.iter().sum::<f64>().max(1e-300);
        let _ = write!(s, "| {name} |");
        for v in &by[1..] {
            let _ = write!(s, " {:.1}% |", v / total * 100.0);
        }
        let _ = writeln!(s);
    };
    level_row("initial", &sc.initial);
    for r in &report.runs {
        level_row(r.policy.name(), &r.placement);
    }
    if let Some(b) = &report.baseline {
        level_row("centralised, incremental", &b.incremental_placement);
        level_row("centralised, re-placement", &b.placement);
    }
    let _ = write!(
        s,
        "\nhot ToR pairs (≥ 10% of the initial largest rack-to-rack traffic): initial {}",
        super::hot_rack_pairs(sc, last, &sc.initial, 0.1)
    );
    for r in &report.runs {
        let _ = write!(
            s,
            ", {} {}",
            r.policy.name(),
            super::hot_rack_pairs(sc, last, &r.placement, 0.1)
        );
    }
    if let Some(b) = &report.baseline {
        let _ = write!(
            s,
            ", centralised incremental {}, re-placement {}",
            super::hot_rack_pairs(sc, last, &b.incremental_placement, 0.1),
            super::hot_rack_pairs(sc, last, &b.placement, 0.1)
        );
    }
    let _ = writeln!(s);
    if let Some(b) = &report.baseline {
        let _ = writeln!(
            s,
            "\ncentralised baseline (both plans, {:.1} s): {} moves + {} swaps over {} sweeps; re-placement polished with {} group plans ({} moves); {} of {} re-placement plans from a fresh traffic-built allocation; a plan's migrations = VMs not on their initial host",
            report.baseline_time.as_secs_f64(),
            b.work.moves,
            b.work.swaps,
            b.work.sweeps,
            b.work.group_plans,
            b.work.group_moves,
            b.constructive,
            b.costs.len()
        );
        if let (Some(floor), Some(&plan)) = (report.bound(), b.costs.last()) {
            let _ = writeln!(
                s,
                "lower bound on Eq. 3.1 (last round's traffic, capacity only; row `{BOUND_ROW}`): {floor:.4e}, {:.4} of the initial cost; the re-placement plan is {} the bound",
                floor / report.initial_costs[0],
                if floor > 0.0 {
                    format!("{:.2}×", plan / floor)
                } else {
                    "above 0, and so above".to_string()
                }
            );
        }
        if !report.bound_by_level.is_empty() {
            let _ = write!(
                s,
                "by link level, bound / re-placement plan (share of the initial cost; a pair meeting at level ℓ pays on the links of levels 1..ℓ):"
            );
            let plan = link_level_costs(sc, last, &b.placement);
            let c0 = report.initial_costs[0];
            for (l, name) in names.iter().enumerate() {
                let _ = write!(
                    s,
                    " {name} {:.4} / {:.4};",
                    report.bound_by_level[l + 1] / c0,
                    plan[l + 1] / c0
                );
            }
            let _ = writeln!(s);
        }
        if b.constructive_refused > 0 {
            let _ = writeln!(
                s,
                "(the traffic-built allocation broke a placement rule in {} round(s) and was left out)",
                b.constructive_refused
            );
        }
    }
    if !report.sweep.is_empty() {
        let _ = writeln!(s, "\nc_m sweep (cost reduction):\n");
        let mut fractions: Vec<f64> = report.sweep.iter().map(|p| p.cm_fraction).collect();
        fractions.sort_by(f64::total_cmp);
        fractions.dedup();
        let _ = write!(s, "| policy |");
        for f in &fractions {
            let _ = write!(s, " c_m {:.0}% |", f * 100.0);
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "|---|{}", "---:|".repeat(fractions.len()));
        let lines = report
            .runs
            .iter()
            .map(|r| (r.policy, false))
            .chain(report.group.iter().map(|(r, _)| (r.policy, true)));
        for (policy, group) in lines {
            let name = if group {
                group_row(policy)
            } else {
                policy.name().to_string()
            };
            let _ = write!(s, "| {name} |");
            for f in &fractions {
                match report
                    .sweep
                    .iter()
                    .find(|p| p.policy == policy && p.group == group && p.cm_fraction == *f)
                {
                    Some(p) => {
                        let _ = write!(s, " {:.1}% |", p.reduction * 100.0);
                    }
                    None => {
                        let _ = write!(s, " |");
                    }
                }
            }
            let _ = writeln!(s);
        }
    }
    s
}

/// Eq. 3.1 of `loc` under round `round` split by the links it is paid on: `out[i]` is
/// `c_i` times the traffic of the pairs meeting at level i or above, doubled (the terms of
/// `bound::lower_bound_by_level`).
fn link_level_costs(sc: &Scenario, round: usize, loc: &[crate::topology::HostId]) -> Vec<f64> {
    let w = sc.topology.weights();
    let by_meeting = sc.cost_by_level(round, loc);
    let mut out = vec![0.0; by_meeting.len()];
    // Traffic (doubled) of the pairs meeting at level ℓ and above, from the top down.
    let mut above = 0.0;
    for l in (1..by_meeting.len()).rev() {
        above += by_meeting[l] / w.path_cost(l as _);
        out[l] = (w.path_cost(l as _) - w.path_cost((l - 1) as _)) * above;
    }
    out
}

/// A run's name as a CSV field: quoted when it holds a comma (RFC 4180).
fn csv_name(name: &str) -> String {
    if name.contains(',') {
        format!("\"{name}\"")
    } else {
        name.to_string()
    }
}

fn create(path: &Path) -> Result<std::io::BufWriter<std::fs::File>, OutputError> {
    Ok(std::io::BufWriter::new(
        std::fs::File::create(path).map_err(io(path))?,
    ))
}

/// Writes every result file into `dir` (created if missing); returns the paths written.
pub fn write_all(dir: &Path, sc: &Scenario, report: &Report) -> Result<Vec<PathBuf>, OutputError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut written = Vec::new();
    let n = sc.vms();
    let c0 = report.initial_costs[0];

    // Cost per token step, normalised to the initial cost, one column per policy.
    let path = dir.join("cost_per_step.csv");
    let mut f = create(&path)?;
    let mut header = String::from("step,iteration");
    for r in &report.runs {
        let _ = write!(header, ",{}", r.policy.name());
    }
    if report.baseline.is_some() {
        header.push_str(",centralised_incremental,centralised_replacement");
    }
    writeln!(f, "{header}").map_err(io(&path))?;
    let steps = report.runs.iter().map(|r| r.costs.len()).max().unwrap_or(0);
    let mut line = String::new();
    for k in 0..steps {
        line.clear();
        let _ = write!(line, "{},{:.5}", k + 1, (k + 1) as f64 / n as f64);
        for r in &report.runs {
            match r.costs.get(k) {
                Some(c) => {
                    let _ = write!(line, ",{:.6}", c / c0);
                }
                None => line.push(','),
            }
        }
        if let Some(b) = &report.baseline {
            let round = (k / n).min(b.costs.len() - 1);
            let _ = write!(
                line,
                ",{:.6},{:.6}",
                b.incremental_costs[round] / c0,
                b.costs[round] / c0
            );
        }
        writeln!(f, "{line}").map_err(io(&path))?;
    }
    f.flush().map_err(io(&path))?;
    written.push(path);

    let path = dir.join("summary.md");
    std::fs::write(&path, summary_text(sc, report)).map_err(io(&path))?;
    written.push(path);

    let path = dir.join("summary.csv");
    let mut f = create(&path)?;
    writeln!(
        f,
        "run,reduction,normalised_final_cost,migrations,migrations_per_vm,vms_moved,vms_moved_back,seconds"
    )
    .map_err(io(&path))?;
    for r in rows(sc, report) {
        let name = csv_name(&r.name);
        let moves = r.moves.map_or(",,".to_string(), |m| {
            format!("{},{:.6},{}", m.migrations, m.per_vm, m.vms_moved)
        });
        writeln!(
            f,
            "{},{:.6},{:.6},{},{},{:.3}",
            name,
            r.reduction,
            r.normalised,
            moves,
            r.moved_back.map_or(String::new(), |b| b.to_string()),
            r.seconds
        )
        .map_err(io(&path))?;
    }
    f.flush().map_err(io(&path))?;
    written.push(path);

    // What each run's migrations sent for what they removed (each VM's forecast bytes).
    let path = dir.join("migration_traffic.csv");
    let mut f = create(&path)?;
    writeln!(
        f,
        "run,reduction,migrations,migrated_gib,gib_per_reduction_point"
    )
    .map_err(io(&path))?;
    // The lower bound moves nothing: no row here.
    for r in rows(sc, report) {
        let Some(m) = r.moves else { continue };
        let name = csv_name(&r.name);
        writeln!(
            f,
            "{},{:.6},{},{:.3},{}",
            name,
            r.reduction,
            m.migrations,
            m.migrated_bytes / GIB,
            r.gib_per_point()
                .map_or(String::new(), |g| format!("{g:.4}"))
        )
        .map_err(io(&path))?;
    }
    f.flush().map_err(io(&path))?;
    written.push(path);

    let model = messages::Model::default();
    let path = dir.join("messages.csv");
    std::fs::write(&path, messages::report::messages_csv(&report.runs, &model))
        .map_err(io(&path))?;
    written.push(path);
    let path = dir.join("round_time.csv");
    std::fs::write(
        &path,
        messages::report::round_time_csv(&report.runs, &model),
    )
    .map_err(io(&path))?;
    written.push(path);

    if !report.sweep.is_empty() {
        let path = dir.join("cm_sweep.csv");
        let mut f = create(&path)?;
        writeln!(
            f,
            "policy,cm_fraction,cm_absolute,reduction,migrations,migrated_gib,moves,migrations_per_vm,gib_per_reduction_point"
        )
        .map_err(io(&path))?;
        for p in &report.sweep {
            let per_point = if p.reduction > 0.0 {
                format!("{:.4}", p.migrated_bytes / GIB / (p.reduction * 100.0))
            } else {
                String::new()
            };
            writeln!(
                f,
                "{},{},{:.6e},{:.6},{},{:.3},{},{:.4},{}",
                p.policy.name(),
                p.cm_fraction,
                p.cm_fraction * report.cost_per_vm,
                p.reduction,
                p.migrations,
                p.migrated_bytes / GIB,
                if p.group { "group" } else { "single" },
                p.migrations as f64 / sc.vms() as f64,
                per_point
            )
            .map_err(io(&path))?;
        }
        f.flush().map_err(io(&path))?;
        written.push(path);
    }

    write_figures(dir, sc, report, &mut written)?;
    Ok(written)
}

/// Racks above which the ToR heat maps are not drawn.
#[cfg(feature = "plot")]
const HEAT_MAP_RACKS: usize = 256;

/// The SVG figures (Figs. 5.1–5.4), appended to `written`.
#[cfg(feature = "plot")]
fn write_figures(
    dir: &Path,
    sc: &Scenario,
    report: &Report,
    written: &mut Vec<PathBuf>,
) -> Result<(), OutputError> {
    if !report.runs.is_empty() {
        let path = dir.join("fig5_2_cost_vs_iterations.svg");
        plot::cost_over_iterations(&path, report, sc.vms())?;
        written.push(path);
    }
    if !report.sweep.is_empty() {
        let path = dir.join("fig5_3_reduction_vs_cm.svg");
        plot::reduction_vs_cm(&path, &report.sweep)?;
        written.push(path);
        let path = dir.join("tradeoff_reduction_vs_migrated.svg");
        plot::reduction_vs_migrated(&path, &report.sweep)?;
        written.push(path);
    }

    if sc.topology.racks().len() > HEAT_MAP_RACKS {
        // A cell per rack pair: unreadable, and an SVG of hundreds of MB.
        return Ok(());
    }
    // Heat maps share one colour scale: the largest rack-to-rack cell of the initial matrix.
    let before = sc.rack_matrix(0, &sc.initial);
    let max = before
        .iter()
        .enumerate()
        .flat_map(|(i, row)| row.iter().enumerate().filter(move |(j, _)| *j != i))
        .map(|(_, &v)| v)
        .fold(0.0f64, f64::max)
        .max(1e-300);
    let path = dir.join("fig5_1_tor_traffic_before.svg");
    plot::rack_heat_map(
        &path,
        &before,
        max,
        "ToR x ToR traffic, initial placement (cf. Fig. 5.1)",
    )?;
    written.push(path);
    let last = sc.rounds() - 1;
    for r in &report.runs {
        let m = sc.rack_matrix(last, &r.placement);
        let path = dir.join(format!("fig5_4_tor_traffic_after_{}.svg", r.policy.name()));
        let title = format!(
            "ToR x ToR traffic after {} iterations, {} (cf. Fig. 5.4)",
            sc.rounds(),
            r.policy.name()
        );
        plot::rack_heat_map(&path, &m, max, &title)?;
        written.push(path);
    }
    Ok(())
}

/// Without the `plot` feature there are no figures: the CSV files hold the same numbers.
#[cfg(not(feature = "plot"))]
fn write_figures(
    dir: &Path,
    _sc: &Scenario,
    _report: &Report,
    _written: &mut Vec<PathBuf>,
) -> Result<(), OutputError> {
    tracing::info!(dir = %dir.display(), "no SVG figures: scored was built without the `plot` feature");
    Ok(())
}
