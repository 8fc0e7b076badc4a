//! `scored sim` on the command line: arguments, progress bar (only when stderr is a terminal),
//! the printed summary and the files in `--out`.

use super::output;
use super::study::{self, Study};
use super::traffic::TrafficParams;
use super::{Scenario, ScenarioParams};
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
    /// Skip the centralised baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Other hosts of a full partner host's rack that a decision may try.
    #[arg(long, default_value_t = 3)]
    pub rack_alternates: usize,
    /// Return to a host a VM left only when the move removes this share of its cost (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub return_margin: f64,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
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

fn parse_sweep(s: &str) -> anyhow::Result<Vec<f64>> {
    if s == "none" || s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|x| {
            let v: f64 = x
                .trim()
                .parse()
                .with_context(|| format!("--sweep: `{x}` is not a number"))?;
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "--sweep: {v} must be a non-negative fraction"
            );
            Ok(v)
        })
        .collect()
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
            sweep: parse_sweep(&self.sweep)?,
            baseline: !self.no_baseline,
            rack_alternates: self.rack_alternates,
            return_margin: self.return_margin,
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
    let steps = (runs * sc.rounds() * sc.vms()) as u64;
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
    for r in &report.runs {
        anyhow::ensure!(
            r.bad_moves == 0,
            "{}: {} migrations did not lower the cost",
            r.policy,
            r.bad_moves
        );
    }
    if let Some(dir) = &args.out {
        let written = output::write_all(dir, &sc, &report)?;
        eprintln!("wrote {} files to {}", written.len(), dir.display());
    }
    Ok(())
}
