//! What `scored rules check` prints for a good file: the groups by kind and scope, the
//! exclusions, each window with its next opening, the budgets and the repair option.
//!
//! Text for a person only; the instant "now" comes in as an argument, so the output is
//! reproducible in tests. Decides nothing.

use super::{GroupKind, Rules, Window, WindowState, scope_name};
use crate::diagnostics::first_of;
use crate::topology::Topology;
use jiff::Timestamp;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The summary of `rules` over `topo` at `now_unix_ms`, one item per line, indented under the
/// caller's `FILE: ok` line.
pub fn summary(rules: &Rules, topo: &Topology, now_unix_ms: i64) -> String {
    let mut out = String::new();
    let groups = rules.groups();
    let _ = writeln!(out, "  groups      {}", groups.len());
    let mut by: BTreeMap<(u8, u8), Vec<String>> = BTreeMap::new();
    for g in groups {
        let kind = match g.kind {
            GroupKind::AntiAffinity => 0,
            GroupKind::Affinity => 1,
        };
        let listed = g.members.len() + g.names.len();
        let what = if listed == 0 {
            format!("{} (members from VM metadata)", g.name)
        } else {
            format!("{} ({listed} listed)", g.name)
        };
        by.entry((kind, g.scope)).or_default().push(what);
    }
    for ((kind, scope), names) in by {
        let kind = if kind == 0 {
            GroupKind::AntiAffinity
        } else {
            GroupKind::Affinity
        };
        let _ = writeln!(
            out,
            "    {kind}, scope {}: {}",
            scope_name(topo, scope),
            first_of(&names, SHOWN)
        );
    }
    let _ = writeln!(out, "  exclusions  {}", rules.exclusions().len());
    for (i, x) in rules.exclusions().iter().enumerate().take(SHOWN) {
        let (vms, names, gs) = rules.excluded(super::ExclusionId(i as u32));
        let mut whom: Vec<String> = gs
            .iter()
            .map(|g| format!("group {}", rules.group(*g).name))
            .collect();
        whom.extend(vms.iter().map(|v| v.to_string()));
        whom.extend(names.iter().map(|n| n.to_string()));
        let _ = writeln!(
            out,
            "    {}: {} never on {} host(s)",
            x.name,
            whom.join(", "),
            x.hosts.len()
        );
    }
    if rules.exclusions().len() > SHOWN {
        let _ = writeln!(out, "    … and {} more", rules.exclusions().len() - SHOWN);
    }
    let _ = writeln!(out, "  windows     {}", rules.windows.len());
    for w in &rules.windows {
        let _ = writeln!(out, "    {}", window(w, now_unix_ms));
    }
    if !rules.windows.is_empty() {
        let always = (topo.hosts().iter())
            .filter(|h| rules.window(h.id, now_unix_ms) == WindowState::Always)
            .count();
        if always > 0 {
            let _ = writeln!(
                out,
                "    {always} host(s) no window names: they migrate at any time"
            );
        }
    }
    let b = &rules.budget;
    let limit = |v: Option<u32>| v.map_or("no limit".to_string(), |n| n.to_string());
    let _ = writeln!(
        out,
        "  budget      per VM per day: {}; per host per hour: {}",
        limit(b.per_vm_per_day),
        limit(b.per_host_per_hour)
    );
    let _ = writeln!(
        out,
        "  repair      {}",
        if rules.repair {
            "on: a member of a violated anti-affinity group moves away when its turn comes"
        } else {
            "off: violations are reported, not repaired"
        }
    );
    out
}

/// How many items of one kind the summary names before it only counts the rest: a file for a
/// whole data centre may hold thousands of groups.
const SHOWN: usize = 12;

/// `nights: mon-fri 22:00-06:00 Europe/Paris, every host; next opens Wed 2026-12-02 22:00 CET`
fn window(w: &Window, now: i64) -> String {
    let tz_name = w.tz.iana_name().unwrap_or("UTC");
    let spans: Vec<String> = (w.spans.iter())
        .map(|s| {
            let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
            let times = if s.start == s.end {
                "all day".to_string()
            } else {
                format!("{}-{}", hm(s.start), hm(s.end))
            };
            format!("{} {times}", days(s.days))
        })
        .collect();
    let hosts = match &w.hosts {
        None => "every host".to_string(),
        Some(h) => format!("{} host(s)", h.len()),
    };
    let state = if w.is_open(now) {
        "open now".to_string()
    } else {
        match w
            .next_open(now)
            .and_then(|t| Timestamp::from_millisecond(t).ok())
        {
            Some(t) => format!(
                "closed, next opens {}",
                t.to_zoned(w.tz.clone()).strftime("%a %Y-%m-%d %H:%M %Z")
            ),
            None => "closed, does not open within a week".to_string(),
        }
    };
    format!(
        "{}: {} {tz_name}, {hosts}; {state}",
        w.name,
        spans.join(", ")
    )
}

/// Day bits as `every day`, `mon-fri` or `sat,sun`.
fn days(bits: u8) -> String {
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    if bits & super::window::EVERY_DAY == super::window::EVERY_DAY {
        return "every day".into();
    }
    let mut parts = Vec::new();
    let mut d = 0;
    while d < 7 {
        if bits & (1 << d) == 0 {
            d += 1;
            continue;
        }
        let start = d;
        while d + 1 < 7 && bits & (1 << (d + 1)) != 0 {
            d += 1;
        }
        parts.push(if d - start >= 2 {
            format!("{}-{}", NAMES[start], NAMES[d])
        } else if d > start {
            format!("{},{}", NAMES[start], NAMES[d])
        } else {
            NAMES[start].to_string()
        });
        d += 1;
    }
    parts.join(",")
}
