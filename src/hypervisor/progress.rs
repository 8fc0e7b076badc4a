//! Is a live migration still getting somewhere? A pure watch over the job's "remaining bytes"
//! samples that says when to give up (timeout, stall) — the backend polls, this decides.
//!
//! No I/O and no clock: the caller passes the time since the job started with every sample.
//!
//! Progress means the remaining data reached a new low (by at least [`ProgressWatch::SLACK`]).
//! Pre-copy sends memory in passes; after each pass QEMU adds the pages dirtied meanwhile, so
//! `remaining` is a saw-tooth whose lows only fall while the migration converges. A guest that
//! dirties memory faster than the link carries it keeps hitting the same low, and after the stall
//! time without a new low the job is hopeless.

use super::AbortReason;
use std::time::Duration;

/// What the monitor should do after a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Abort(AbortReason),
}

#[derive(Clone, Debug)]
pub struct ProgressWatch {
    timeout: Duration,
    stall_timeout: Duration,
    /// Lowest remaining byte count seen so far.
    low: Option<u64>,
    last_progress: Duration,
    /// Post-copy runs: the destination pulls pages on demand and the job cannot be aborted
    /// without losing the VM, so only the caller's own judgement stops it.
    post_copy: bool,
}

impl ProgressWatch {
    /// A new low must beat the old one by this much: a few hundred KiB of jitter between polls
    /// near the end of a pass is not progress.
    pub const SLACK: u64 = 1 << 20;

    pub fn new(timeout: Duration, stall_timeout: Duration) -> Self {
        ProgressWatch {
            timeout,
            stall_timeout,
            low: None,
            last_progress: Duration::ZERO,
            post_copy: false,
        }
    }

    /// One sample: `at` is the time since the job started, `remaining` the job's remaining
    /// bytes (`None` while the job is still being set up and reports no figures).
    pub fn observe(&mut self, at: Duration, remaining: Option<u64>) -> Verdict {
        if self.post_copy {
            return Verdict::Continue;
        }
        if at >= self.timeout {
            return Verdict::Abort(AbortReason::Timeout);
        }
        match (remaining, self.low) {
            // Everything sent: the job is switching over. Not a new low (a non-converging job
            // can touch zero just before QEMU adds the next pass's dirty pages), but not a stall.
            (Some(0), _) => {
                self.last_progress = at;
                return Verdict::Continue;
            }
            (Some(r), None) => {
                self.low = Some(r);
                self.last_progress = at;
            }
            (Some(r), Some(low)) if r.saturating_add(Self::SLACK) <= low => {
                self.low = Some(r);
                self.last_progress = at;
            }
            _ => {}
        }
        if at.saturating_sub(self.last_progress) >= self.stall_timeout {
            Verdict::Abort(AbortReason::Stalled)
        } else {
            Verdict::Continue
        }
    }

    /// The job switched to post-copy: from now on nothing here aborts it.
    pub fn entered_post_copy(&mut self) {
        self.post_copy = true;
    }

    /// Lowest remaining byte count seen.
    pub fn low(&self) -> Option<u64> {
        self.low
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_converging_job_is_never_stopped() {
        let mut w = ProgressWatch::new(s(60.0), s(2.0));
        let mut remaining = 200 * MIB;
        for i in 0..100 {
            assert_eq!(
                w.observe(s(i as f64 * 0.1), Some(remaining)),
                Verdict::Continue
            );
            remaining = remaining.saturating_sub(2 * MIB);
        }
    }

    #[test]
    fn a_sawtooth_that_stops_falling_is_a_stall() {
        // Passes of 64 MiB, each draining to the same ~2 MiB floor: no new low after pass one.
        let mut w = ProgressWatch::new(s(600.0), s(5.0));
        let mut t = 0.0;
        let mut verdict = Verdict::Continue;
        'outer: for _pass in 0..20 {
            for step in 0..32u64 {
                let r = 64 * MIB - step * 2 * MIB + 2 * MIB;
                verdict = w.observe(s(t), Some(r));
                if verdict != Verdict::Continue {
                    break 'outer;
                }
                t += 0.1;
            }
        }
        assert_eq!(verdict, Verdict::Abort(AbortReason::Stalled));
        // Pass one ends at 3.2 s; five seconds later the job is declared stalled.
        assert!((8.0..9.0).contains(&t), "stalled at {t}");
    }

    #[test]
    fn jitter_below_the_slack_is_not_progress() {
        let mut w = ProgressWatch::new(s(600.0), s(3.0));
        assert_eq!(w.observe(s(0.0), Some(10 * MIB)), Verdict::Continue);
        let mut t = 0.5;
        while t < 2.9 {
            assert_eq!(w.observe(s(t), Some(10 * MIB - MIB / 2)), Verdict::Continue);
            t += 0.5;
        }
        assert_eq!(
            w.observe(s(3.0), Some(10 * MIB - MIB / 2)),
            Verdict::Abort(AbortReason::Stalled)
        );
    }

    #[test]
    fn setup_without_figures_counts_toward_the_stall() {
        let mut w = ProgressWatch::new(s(600.0), s(4.0));
        assert_eq!(w.observe(s(1.0), None), Verdict::Continue);
        assert_eq!(
            w.observe(s(4.0), None),
            Verdict::Abort(AbortReason::Stalled)
        );
    }

    #[test]
    fn the_timeout_wins_even_with_progress() {
        let mut w = ProgressWatch::new(s(10.0), s(5.0));
        let mut r = 1000 * MIB;
        for i in 0..100 {
            let v = w.observe(s(i as f64 * 0.5), Some(r));
            r -= 2 * MIB;
            if i as f64 * 0.5 >= 10.0 {
                assert_eq!(v, Verdict::Abort(AbortReason::Timeout));
                return;
            }
            assert_eq!(v, Verdict::Continue);
        }
        unreachable!();
    }

    #[test]
    fn completion_and_post_copy_are_never_aborted() {
        let mut w = ProgressWatch::new(s(5.0), s(1.0));
        assert_eq!(w.observe(s(0.5), Some(0)), Verdict::Continue);
        assert_eq!(w.observe(s(1.2), Some(0)), Verdict::Continue);
        let mut p = ProgressWatch::new(s(5.0), s(1.0));
        p.observe(s(0.0), Some(MIB * 10));
        p.entered_post_copy();
        assert_eq!(p.observe(s(30.0), Some(MIB * 10)), Verdict::Continue);
    }
}
