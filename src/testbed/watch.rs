//! `scored testbed watch`: what the testbed's daemons do, live, for the demo. Follows every
//! host's JSON log (token hand-offs, decisions with their Eq. 3.2 figures, migrations with
//! downtime), polls every daemon's `status` for the total cost of the captured traffic, and ends
//! with a before/after summary including the delay from a positive decision to the job start.
//!
//! Read-only: it never asks a daemon to do anything.

use super::{Testbed, TestbedHost};
use crate::daemon::control::{self, Reply, Request, Status};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

/// Seconds since the epoch of an RFC 3339 UTC timestamp as the JSON log writes it
/// (`2026-11-23T18:52:29.361059Z`); `None` for anything else.
pub fn log_seconds(ts: &str) -> Option<f64> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let h: f64 = t.next()?.parse().ok()?;
    let min: f64 = t.next()?.parse().ok()?;
    let s: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), as in Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days as f64 * 86400.0 + h * 3600.0 + min * 60.0 + s)
}

/// One migration as two log lines of the source's daemon tell it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MigrationTiming {
    pub vm: String,
    pub from: String,
    pub to: String,
    /// From the positive decision to the job showing up in the source's job statistics.
    pub decision_to_job_ms: Option<f64>,
    pub elapsed_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    pub bytes: Option<u64>,
}

/// Pairs each `migration starting` line with the next `migrated` line for the same VM: the job
/// started at `migrated.ts − wall_ms + job_started_after_ms`; the decision was taken
/// `since_decision_us` before `migration starting`.
pub fn timings(host: &str, events: &[serde_json::Value]) -> Vec<MigrationTiming> {
    let mut out = Vec::new();
    let mut open: BTreeMap<String, (f64, f64, String)> = BTreeMap::new();
    for e in events {
        let ts = e["timestamp"].as_str().and_then(log_seconds);
        let vm = e["vm"].as_str().unwrap_or("").to_string();
        match e["message"].as_str() {
            Some("migration starting") => {
                if let (Some(ts), Some(us)) = (ts, e["since_decision_us"].as_u64()) {
                    let to = e["to"].as_str().unwrap_or("").to_string();
                    open.insert(vm, (ts, us as f64 / 1000.0, to));
                }
            }
            Some("migrated") => {
                let Some((start_ts, before_ms, to)) = open.remove(&vm) else {
                    continue;
                };
                let job = match (
                    ts,
                    e["wall_ms"].as_u64(),
                    e["job_started_after_ms"].as_u64(),
                ) {
                    (Some(end), Some(wall), Some(after)) => {
                        let job_start = end - wall as f64 / 1000.0 + after as f64 / 1000.0;
                        Some(before_ms + (job_start - start_ts) * 1000.0)
                    }
                    _ => None,
                };
                out.push(MigrationTiming {
                    vm,
                    from: host.to_string(),
                    to,
                    decision_to_job_ms: job,
                    elapsed_ms: e["elapsed_ms"].as_u64(),
                    downtime_ms: e["downtime_ms"].as_u64(),
                    bytes: e["bytes"].as_u64(),
                });
            }
            _ => {}
        }
    }
    out
}

/// One line for a log event worth showing, `None` for the rest.
pub fn describe(host: &str, e: &serde_json::Value) -> Option<String> {
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_string();
    let f = |k: &str| e[k].as_f64().unwrap_or(0.0);
    let opt = |k: &str| {
        // Option fields are logged with Debug: `Some("hv4")`, `Some(1.5)`, `None`.
        let v = s(k);
        v.strip_prefix("Some(")
            .and_then(|v| v.strip_suffix(')'))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or(v)
    };
    let line = match e["message"].as_str()? {
        "token: next holder" => format!(
            "token   at {host}, turn of VM {} (round {})",
            s("vm"),
            e["round"].as_u64().unwrap_or(0)
        ),
        "decision" => {
            let outcome = s("outcome");
            // A VM already beside its partners, or not talking, has nothing to show.
            let idle = outcome == "no_benefit" && f("current_cost") == 0.0;
            if outcome == "no_traffic" || outcome == "cooldown" || idle {
                return None;
            }
            format!(
                "decide  {host} VM {}: {outcome}; cost {:.0}, c_m {:.0}, best {} benefit {} (Eq. 3.2)",
                s("vm"),
                f("current_cost"),
                f("c_m"),
                opt("best_host"),
                opt("benefit")
                    .parse::<f64>()
                    .map_or("-".to_string(), |b| format!("{b:.0}"))
            )
        }
        "migration starting" => format!(
            "migrate {host} VM {} -> {} ({:.1} ms after the decision)",
            s("vm"),
            s("to"),
            e["since_decision_us"].as_u64().unwrap_or(0) as f64 / 1000.0
        ),
        "migrated" => format!(
            "done    {host} VM {} -> {}: {} ms, downtime {} ms, {:.1} MiB",
            s("vm"),
            s("dest"),
            e["elapsed_ms"].as_u64().unwrap_or(0),
            e["downtime_ms"].as_u64().unwrap_or(0),
            e["bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0
        ),
        m if m.starts_with("migration failed") => format!(
            "FAILED  {host} VM {} -> {}: {}",
            s("vm"),
            s("to"),
            s("error")
        ),
        _ => return None,
    };
    Some(line)
}

/// Follows one file from where it was last read; returns whole new lines only.
struct Follow {
    offset: u64,
    partial: String,
}

impl Follow {
    fn lines(&mut self, path: &Path) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else {
            return Vec::new();
        };
        self.offset += n as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut out: Vec<String> = self.partial.split('\n').map(str::to_string).collect();
        self.partial = out.pop().unwrap_or_default();
        out
    }
}

fn status(h: &TestbedHost) -> Option<Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    match rt.block_on(control::request(
        &h.control_socket(),
        &Request::Status,
        Duration::from_secs(3),
    )) {
        Ok(Reply::Status(s)) => Some(*s),
        _ => None,
    }
}

/// Total cost (sum of the VMs' Eq. 3.1 shares) and placement, from every daemon's status.
fn snapshot(tb: &Testbed) -> (f64, BTreeMap<String, String>) {
    let mut cost = 0.0;
    let mut placement = BTreeMap::new();
    for h in &tb.state.hosts {
        if let Some(s) = status(h) {
            for v in &s.vms {
                cost += v.cost;
                placement.insert(format!("{} ({})", v.name, v.id), h.name.clone());
            }
        }
    }
    (cost, placement)
}

/// Watches for at most `limit`, or until `settle` passed without a migration after at least one
/// happened. Prints as it goes, then the summary.
pub fn watch(tb: &Testbed, limit: Duration, settle: Duration) {
    let started = Instant::now();
    let mut follows: Vec<Follow> = tb
        .state
        .hosts
        .iter()
        .map(|_| Follow {
            offset: 0,
            partial: String::new(),
        })
        .collect();
    let mut events: Vec<Vec<serde_json::Value>> = vec![Vec::new(); tb.state.hosts.len()];
    let (mut before_cost, before_place) = snapshot(tb);
    let mut last_cost = before_cost;
    let mut last_move: Option<Instant> = None;
    let mut last_poll = Instant::now();
    let mut last_holder = String::new();
    let mut first_done = false;
    println!(
        "watching {} daemons (Ctrl-C stops the watch)",
        tb.state.hosts.len()
    );
    while started.elapsed() < limit {
        for (i, h) in tb.state.hosts.iter().enumerate() {
            for line in follows[i].lines(&h.daemon_log()) {
                let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let msg = e["message"].as_str().unwrap_or("");
                if msg == "migration starting" {
                    last_move = Some(Instant::now());
                }
                // Show a hand-off only when the token changes host, not on every VM's turn.
                let show = msg != "token: next holder" || {
                    let changed = h.name != last_holder;
                    last_holder = h.name.clone();
                    changed
                };
                if msg == "migrated" {
                    first_done = true;
                }
                if show && let Some(text) = describe(&h.name, &e) {
                    println!("{:6.1}s  {text}", started.elapsed().as_secs_f64());
                }
                events[i].push(e);
            }
        }
        if last_poll.elapsed() >= Duration::from_secs(2) {
            last_poll = Instant::now();
            let (cost, _) = snapshot(tb);
            // Until a move completes, the largest reading is the "before" cost: the first ones
            // come while the flow windows are still filling.
            if !first_done && cost > before_cost {
                before_cost = cost;
            }
            if (cost - last_cost).abs() > 0.05 * last_cost.max(1.0) {
                println!(
                    "{:6.1}s  cost    total {cost:.0} (Eq. 3.1 on captured traffic)",
                    started.elapsed().as_secs_f64()
                );
                last_cost = cost;
            }
        }
        if last_move.is_some_and(|t| t.elapsed() >= settle) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (after_cost, after_place) = snapshot(tb);
    println!("\nsummary");
    println!("  VM                       before   after");
    for (vm, before) in &before_place {
        let after = after_place.get(vm).map_or("?", String::as_str);
        println!("  {vm:<24} {before:<8} {after}");
    }
    println!("  total cost (Eq. 3.1)     {before_cost:<8.0} {after_cost:.0}");
    let all: Vec<MigrationTiming> = tb
        .state
        .hosts
        .iter()
        .zip(&events)
        .flat_map(|(h, ev)| timings(&h.name, ev))
        .collect();
    for t in &all {
        println!(
            "  migration {} {} -> {}: decision to job start {} ms, {} ms total, downtime {} ms",
            t.vm,
            t.from,
            t.to,
            t.decision_to_job_ms
                .map_or("?".to_string(), |d| format!("{d:.1}")),
            t.elapsed_ms.unwrap_or(0),
            t.downtime_ms.unwrap_or(0)
        );
    }
    if all.is_empty() {
        println!("  no migration happened");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_parse() {
        let a = log_seconds("2026-11-23T18:52:29.361059Z").unwrap();
        let b = log_seconds("2026-11-24T00:00:00Z").unwrap();
        assert!((b - a - (5.0 * 3600.0 + 7.0 * 60.0 + 30.638941)).abs() < 1e-6);
        assert_eq!(log_seconds("1970-01-01T00:00:01Z"), Some(1.0));
        assert_eq!(log_seconds("yesterday"), None);
        assert_eq!(log_seconds("2026-13-01T00:00:00Z"), None);
    }

    #[test]
    fn decision_to_job_start_adds_both_logs() {
        let ev = vec![
            json!({"timestamp":"2026-11-23T18:52:29.000000Z","message":"migration starting","vm":"10.77.1.1","to":"hv4","since_decision_us":1500}),
            json!({"timestamp":"2026-11-23T18:52:33.000000Z","message":"migrated","vm":"10.77.1.1","dest":"hv4","elapsed_ms":2000,"downtime_ms":30,"bytes":1,"job_started_after_ms":40,"wall_ms":3990}),
        ];
        let t = timings("hv1", &ev);
        assert_eq!(t.len(), 1);
        // Job start: 33.000 − 3.990 + 0.040 = 29.050 → 50 ms after `starting`, + 1.5 ms before.
        let d = t[0].decision_to_job_ms.unwrap();
        // Epoch seconds in an f64 keep about a microsecond, as fine as the log's timestamps.
        assert!((d - 51.5).abs() < 1e-3, "{d}");
        assert_eq!((t[0].from.as_str(), t[0].to.as_str()), ("hv1", "hv4"));
        // A `migrated` line without its start is not a timing.
        assert!(timings("hv1", &ev[1..]).is_empty());
    }

    #[test]
    fn decisions_show_their_figures() {
        let e = json!({"message":"decision","vm":"10.77.1.1","outcome":"migrated","current_cost":45951.7,"c_m":2297.5,"best_host":"Some(\"hv4\")","benefit":"Some(91903.5)"});
        let line = describe("hv1", &e).unwrap();
        assert!(
            line.contains("cost 45952") && line.contains("best hv4 benefit 91904"),
            "{line}"
        );
        assert!(describe("hv1", &json!({"message":"decision","outcome":"cooldown"})).is_none());
        assert!(describe("hv1", &json!({"message":"ready"})).is_none());
    }
}
