//! The message counts as `scored sim` prints and writes them: a table in the summary,
//! `messages.csv` (one row per run and kind) and `round_time.csv` (one row per run), and the
//! rows of earlier runs read back for the growth figure.

use super::{KINDS, Model, Row};
use crate::sim::engine::PolicyRun;
use std::fmt::Write;

pub const MESSAGES_HEADER: &str = "run,hosts,vms,decisions,kind,messages_per_decision,bytes_per_decision,messages_per_round,bytes_per_round";
pub const ROUND_HEADER: &str = "run,hosts,vms,decisions,handoffs_per_decision,migrations_per_decision,token_frame_bytes,decisions_s,handoffs_s,arrival_reads_s,statistics_s,turns_s,migrations_s,round_s,bytes_per_host_per_s";

fn total(rows: &[Row]) -> (f64, f64, f64, f64) {
    rows.iter().fold((0.0, 0.0, 0.0, 0.0), |t, r| {
        (
            t.0 + r.messages_per_decision,
            t.1 + r.bytes_per_decision,
            t.2 + r.messages_per_round,
            t.3 + r.bytes_per_round,
        )
    })
}

/// The CSV rows of `runs` (kinds in [`KINDS`] order, then `total`).
pub fn messages_csv(runs: &[PolicyRun], model: &Model) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{MESSAGES_HEADER}");
    for r in runs {
        let c = &r.messages;
        let rows = model.rows(c);
        let head = format!("{},{},{},{}", r.policy.name(), c.hosts, c.vms, c.decisions);
        for row in &rows {
            let _ = writeln!(
                s,
                "{head},{},{:.6},{:.1},{:.1},{:.0}",
                row.kind.name(),
                row.messages_per_decision,
                row.bytes_per_decision,
                row.messages_per_round,
                row.bytes_per_round
            );
        }
        let t = total(&rows);
        let _ = writeln!(
            s,
            "{head},total,{:.6},{:.1},{:.1},{:.0}",
            t.0, t.1, t.2, t.3
        );
    }
    s
}

pub fn round_time_csv(runs: &[PolicyRun], model: &Model) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{ROUND_HEADER}");
    for r in runs {
        let c = &r.messages;
        let p = model.round(c);
        let d = c.decisions.max(1) as f64;
        let bytes = total(&model.rows(c)).3;
        let _ = writeln!(
            s,
            "{},{},{},{},{:.6},{:.6},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.0}",
            r.policy.name(),
            c.hosts,
            c.vms,
            c.decisions,
            (c.handoffs.messages / 2) as f64 / d,
            c.migrations as f64 / d,
            c.token_frame,
            p.decisions_s,
            p.handoffs_s,
            p.arrival_reads_s,
            p.statistics_s,
            p.turns_s(),
            p.migrations_s,
            p.total_s(),
            per_host_rate(bytes, p.total_s(), c.hosts)
        );
    }
    s
}

fn human(bytes: f64) -> String {
    match bytes {
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} KB", b / 1e3),
        b => format!("{b:.0} B"),
    }
}

/// The summary's section: per kind, messages and bytes per decision and per round of each run;
/// then each run's round time and what it means per host.
pub fn summary(runs: &[PolicyRun], model: &Model) -> String {
    let mut s = String::new();
    let Some(first) = runs.first() else {
        return s;
    };
    let _ = writeln!(
        s,
        "\nprotocol traffic, cluster-wide (gossip: every copy sent on a connection), from {} token steps of each run; messages (bytes) per decision / bytes per round of {} decisions:\n",
        first.messages.decisions, first.messages.vms
    );
    let _ = write!(s, "| kind |");
    for r in runs {
        let _ = write!(s, " {} |", r.policy.name());
    }
    let _ = writeln!(s, "\n|---|{}", "---:|".repeat(runs.len()));
    let rows: Vec<Vec<Row>> = runs.iter().map(|r| model.rows(&r.messages)).collect();
    for (k, kind) in KINDS.iter().enumerate() {
        let _ = write!(s, "| {} |", kind.name());
        for run_rows in &rows {
            let row = &run_rows[k];
            let _ = write!(
                s,
                " {:.3} ({}) / {} |",
                row.messages_per_decision,
                human(row.bytes_per_decision),
                human(row.bytes_per_round)
            );
        }
        let _ = writeln!(s);
    }
    let _ = write!(s, "| total |");
    for run_rows in &rows {
        let t = total(run_rows);
        let _ = write!(s, " {:.1} ({}) / {} |", t.0, human(t.1), human(t.3));
    }
    let _ = writeln!(s, "\n\nround time (model) and mean traffic per host:\n");
    for (r, run_rows) in runs.iter().zip(&rows) {
        let p = model.round(&r.messages);
        let t = total(run_rows);
        let _ = writeln!(
            s,
            "- {}: {:.0} s of turns ({:.0} s deciding, {:.0} s handing off, {:.0} s reading inventories at arrival, {:.1} s statistics) + {:.0} s migrating = {:.0} s; {}/s per host",
            r.policy.name(),
            p.turns_s(),
            p.decisions_s,
            p.handoffs_s,
            p.arrival_reads_s,
            p.statistics_s,
            p.migrations_s,
            p.total_s(),
            human(per_host_rate(t.3, p.total_s(), r.messages.hosts))
        );
    }
    s
}

/// Bytes a host sends per second on average: a round's bytes spread over its hosts and time.
pub fn per_host_rate(bytes_per_round: f64, round_s: f64, hosts: usize) -> f64 {
    if round_s <= 0.0 || hosts == 0 {
        return 0.0;
    }
    bytes_per_round / round_s / hosts as f64
}

/// One row of a `messages.csv` read back: (run, hosts, kind, messages per decision, bytes per
/// decision, messages per round, bytes per round).
#[derive(Clone, Debug, PartialEq)]
pub struct ScalePoint {
    pub run: String,
    pub hosts: usize,
    pub kind: String,
    pub messages_per_decision: f64,
    pub bytes_per_decision: f64,
    pub messages_per_round: f64,
    pub bytes_per_round: f64,
}

/// Parses `messages.csv` text; the error names the line.
pub fn parse_messages_csv(text: &str) -> Result<Vec<ScalePoint>, String> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == MESSAGES_HEADER => {}
        _ => return Err(format!("line 1: expected the header `{MESSAGES_HEADER}`")),
    }
    let mut out = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let bad = |what: &str| format!("line {}: {what}", i + 1);
        if f.len() != 9 {
            return Err(bad(&format!("{} fields, expected 9", f.len())));
        }
        let num = |k: usize| -> Result<f64, String> {
            f[k].parse::<f64>()
                .map_err(|_| bad(&format!("`{}` is not a number", f[k])))
        };
        out.push(ScalePoint {
            run: f[0].to_string(),
            hosts: f[1]
                .parse()
                .map_err(|_| bad(&format!("`{}` is not a host count", f[1])))?,
            kind: f[4].to_string(),
            messages_per_decision: num(5)?,
            bytes_per_decision: num(6)?,
            messages_per_round: num(7)?,
            bytes_per_round: num(8)?,
        });
    }
    Ok(out)
}
