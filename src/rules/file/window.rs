//! The `[[window]]` tables: a time zone (required: a window is never in the host's local time),
//! days, a start and an end of day, and the hosts it applies to.
//!
//! Reads the values and reports what is wrong with them; when a window is open is
//! `rules::window`'s.

use super::{Errors, RawWindow, check_name, host_set, once};
use crate::rules::Rules;
use crate::rules::window::{EVERY_DAY, Span, Window};
use crate::topology::Topology;
use jiff::tz::TimeZone;
use std::collections::HashMap;
use toml::Spanned;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const DAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

fn day(s: &str) -> Option<u8> {
    let s = s.to_ascii_lowercase();
    (0..7u8).find(|&d| s == DAYS[d as usize] || s == DAY_NAMES[d as usize])
}

/// `mon`, `monday` or a range `mon-fri` (which may wrap: `fri-mon`), as day bits.
fn days(s: &str) -> Option<u8> {
    let Some((a, b)) = s.split_once('-') else {
        return day(s).map(|d| 1 << d);
    };
    let (a, b) = (day(a)?, day(b)?);
    let mut bits = 0u8;
    let mut d = a;
    loop {
        bits |= 1 << d;
        if d == b {
            return Some(bits);
        }
        d = (d + 1) % 7;
    }
}

/// `HH:MM` as minutes of the day; `24:00` only where `end_of_day` allows it.
fn time_of_day(s: &str, end_of_day: bool) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) if end_of_day => Some(24 * 60),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

pub(super) fn windows(
    errs: &mut Errors,
    rules: &mut Rules,
    raw: &[Spanned<RawWindow>],
    topo: &Topology,
) {
    let mut seen = HashMap::new();
    for w in raw {
        let r = w.get_ref();
        let name = match &r.name {
            Some(n) => {
                check_name(errs, "window", n);
                once(errs, &mut seen, "window", n);
                n.get_ref().clone()
            }
            None => {
                errs.at(w.span(), "this [[window]] has no `name`");
                String::new()
            }
        };
        let tz = match &r.timezone {
            None => {
                errs.at(
                    w.span(),
                    format!(
                        "window `{name}` has no `timezone`: name one (e.g. `UTC` or `Europe/Paris`), windows are never in the host's local time"
                    ),
                );
                None
            }
            Some(t) => match TimeZone::get(t.get_ref()) {
                Ok(tz) => Some(tz),
                Err(_) => {
                    errs.at(
                        t.span(),
                        format!(
                            "unknown time zone `{}` (an IANA name such as `Europe/Paris` or `UTC`)",
                            t.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        let mut bits = 0u8;
        for d in r.days.iter().flatten() {
            match days(d.get_ref()) {
                Some(b) => bits |= b,
                None => errs.at(
                    d.span(),
                    format!(
                        "unknown day `{}` (mon, tue, wed, thu, fri, sat, sun, or a range such as `mon-fri`)",
                        d.get_ref()
                    ),
                ),
            }
        }
        if r.days.is_none() {
            bits = EVERY_DAY;
        } else if r.days.as_ref().is_some_and(Vec::is_empty) {
            errs.at(
                w.span(),
                format!("window `{name}` has `days = []`: leave `days` out for every day"),
            );
        }
        let mut time = |key: &str, v: &Option<Spanned<String>>, end: bool| match v {
            None => {
                errs.at(w.span(), format!("window `{name}` has no `{key}` (HH:MM)"));
                None
            }
            Some(t) => {
                let m = time_of_day(t.get_ref(), end);
                if m.is_none() {
                    let range = if end {
                        "00:00 to 23:59, or 24:00 for an end"
                    } else {
                        "00:00 to 23:59"
                    };
                    errs.at(
                        t.span(),
                        format!("`{}` is not a time of day HH:MM ({range})", t.get_ref()),
                    );
                }
                m
            }
        };
        let start = time("start", &r.start, false);
        let end = time("end", &r.end, true);
        let hosts = (r.hosts.is_some() || r.switches.is_some()).then(|| {
            host_set(
                errs,
                topo,
                r.hosts.as_deref().unwrap_or(&[]),
                r.switches.as_deref().unwrap_or(&[]),
            )
        });
        if let (Some(tz), Some(start), Some(end)) = (tz, start, end) {
            rules.windows.push(Window {
                name,
                hosts,
                tz,
                spans: vec![Span {
                    days: bits,
                    start,
                    end,
                }],
            });
        }
    }
}
