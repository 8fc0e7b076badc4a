//! Migration windows: when a host may migrate, in a time zone the operator names.
//!
//! A window is a list of spans (days of the week, a start and an end time of day) in one IANA
//! time zone, for every host or for some. A host to which at least one window applies migrates
//! only inside one of them; outside, it still decides and `scored plan` shows what it would do.
//! A span whose end is not after its start runs past midnight into the next day (22:00–06:00),
//! and belongs to the day it starts on; start = end is the whole day.

use super::HostSet;
use crate::topology::HostId;
use jiff::Timestamp;
use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;

/// One span: on `days` (bit 0 Monday … bit 6 Sunday), from `start` to `end`, minutes of the
/// local day (0..1440).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub days: u8,
    pub start: u16,
    pub end: u16,
}

/// Every day of the week.
pub const EVERY_DAY: u8 = 0x7f;

impl Span {
    fn wraps(&self) -> bool {
        self.end <= self.start
    }

    /// Whether local weekday `day` (0 Monday) at minute `minute` is inside this span.
    fn contains(&self, day: u8, minute: u16) -> bool {
        let on = |d: u8| self.days & (1 << d) != 0;
        if !self.wraps() {
            return on(day) && self.start <= minute && minute < self.end;
        }
        (on(day) && minute >= self.start) || (on((day + 6) % 7) && minute < self.end)
    }
}

/// A migration window.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// The operator's name for it.
    pub name: String,
    /// The hosts it applies to; `None`: every host.
    pub hosts: Option<HostSet>,
    pub tz: TimeZone,
    pub spans: Vec<Span>,
}

impl Window {
    pub fn applies_to(&self, host: HostId) -> bool {
        self.hosts.as_ref().is_none_or(|s| s.contains(host))
    }

    /// Whether `unix_ms` is inside this window.
    pub fn is_open(&self, unix_ms: i64) -> bool {
        let Ok(ts) = Timestamp::from_millisecond(unix_ms) else {
            return false;
        };
        let local = ts.to_zoned(self.tz.clone());
        let day = local.weekday().to_monday_zero_offset() as u8;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        self.spans.iter().any(|s| s.contains(day, minute))
    }

    /// The first instant after `unix_ms` at which one of its spans starts (within 8 days).
    pub fn next_open(&self, unix_ms: i64) -> Option<i64> {
        let ts = Timestamp::from_millisecond(unix_ms).ok()?;
        let today: Date = ts.to_zoned(self.tz.clone()).date();
        let mut best: Option<i64> = None;
        for k in 0..8i64 {
            let Ok(date) = today.checked_add(jiff::Span::new().days(k)) else {
                continue;
            };
            let day = date.weekday().to_monday_zero_offset() as u8;
            for s in &self.spans {
                if s.days & (1 << day) == 0 {
                    continue;
                }
                let Ok(t) = Time::new((s.start / 60) as i8, (s.start % 60) as i8, 0, 0) else {
                    continue;
                };
                let Ok(z) = date.to_datetime(t).to_zoned(self.tz.clone()) else {
                    continue;
                };
                let at = z.timestamp().as_millisecond();
                if at > unix_ms && best.is_none_or(|b| at < b) {
                    best = Some(at);
                }
            }
        }
        best
    }
}

/// Whether a host may migrate now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowState {
    /// No window applies to the host: it may migrate at any time.
    Always,
    /// Inside window `window` (index in the rules' list).
    Open { window: usize },
    /// Windows apply and none is open; the next opens at `next_open_unix_ms` (if within a week).
    Closed { next_open_unix_ms: Option<i64> },
}

impl WindowState {
    pub fn allows(&self) -> bool {
        !matches!(self, WindowState::Closed { .. })
    }
}

pub(super) fn state(windows: &[Window], host: HostId, unix_ms: i64) -> WindowState {
    let mut any = false;
    let mut next: Option<i64> = None;
    for (i, w) in windows.iter().enumerate() {
        if !w.applies_to(host) {
            continue;
        }
        any = true;
        if w.is_open(unix_ms) {
            return WindowState::Open { window: i };
        }
        if let Some(n) = w.next_open(unix_ms) {
            next = Some(next.map_or(n, |b: i64| b.min(n)));
        }
    }
    if any {
        WindowState::Closed {
            next_open_unix_ms: next,
        }
    } else {
        WindowState::Always
    }
}
