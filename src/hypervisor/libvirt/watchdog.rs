//! The migration watchdog: a thread that reads the source's job statistics while
//! `virDomainMigrate3` blocks, and aborts the job (or switches it to post-copy, when allowed)
//! once the [`ProgressWatch`] says it stalled or overran.
//!
//! The rule is the pure [`ProgressWatch`]; this only samples and acts on its verdict. It never
//! touches anything but the one job it watches.

use super::domains::job_figures;
use crate::hypervisor::progress::{ProgressWatch, Verdict};
use crate::hypervisor::{AbortReason, MigrationParams};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use virt::domain::Domain;
use virt::sys;

/// What the watchdog saw and did.
#[derive(Clone, Debug, Default)]
pub(super) struct Seen {
    /// Why it asked libvirt to abort the job, if it did.
    pub(super) aborted: Option<AbortReason>,
    /// The libvirt call that failed when it tried to stop or switch the job, and why.
    pub(super) abort_error: Option<String>,
    pub(super) job_started_after: Option<Duration>,
    pub(super) samples: u32,
    pub(super) lowest_remaining: Option<u64>,
    pub(super) post_copy: bool,
    /// It switched to post-copy after the first pass (the forecast's choice), not on a stall.
    pub(super) post_copy_after_first_pass: bool,
}

/// A thread that polls the source's job statistics while `virDomainMigrate3` blocks, and aborts
/// the job (or switches it to post-copy, when allowed) when the [`ProgressWatch`] says so.
pub(super) struct Watchdog {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Seen>,
}

impl Watchdog {
    pub(super) fn start(
        dom: Domain,
        p: &MigrationParams,
        every: Duration,
        started: Instant,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mut watch = ProgressWatch::new(p.timeout, p.stall_timeout);
        let post_copy_allowed = p.post_copy;
        let post_copy_early = p.post_copy && p.post_copy_after_first_pass;
        let handle = std::thread::Builder::new()
            .name("scored-migration-watchdog".into())
            .spawn(move || {
                let mut seen = Seen::default();
                while !flag.load(Ordering::Acquire) {
                    let at = started.elapsed();
                    let (remaining, iteration) = match job_figures(&dom, 0) {
                        Ok(s) if s.kind != sys::VIR_DOMAIN_JOB_NONE as i32 => {
                            seen.job_started_after.get_or_insert(at);
                            (s.remaining, s.iteration)
                        }
                        _ => (None, None),
                    };
                    seen.samples += 1;
                    // The forecast said pre-copy cannot converge: post-copy once the first
                    // full pass is sent. Refused, the job goes on under the stall rule.
                    if post_copy_early
                        && !seen.post_copy
                        && seen.abort_error.is_none()
                        && iteration.is_some_and(|i| i >= 2)
                    {
                        // SAFETY: a valid domain handle owned by this thread.
                        let rc = unsafe { sys::virDomainMigrateStartPostCopy(dom.as_ptr(), 0) };
                        if rc == 0 {
                            seen.post_copy = true;
                            seen.post_copy_after_first_pass = true;
                            watch.entered_post_copy();
                        } else {
                            seen.abort_error = Some(format!(
                                "virDomainMigrateStartPostCopy after the first pass: {}",
                                virt::error::Error::last_error().message()
                            ));
                        }
                    }
                    // Before the job reports figures, only the clock can condemn it.
                    let verdict = watch.observe(at, remaining);
                    if let Verdict::Abort(reason) = verdict {
                        if reason == AbortReason::Stalled && post_copy_allowed && !seen.post_copy {
                            // SAFETY: a valid domain handle owned by this thread.
                            let rc = unsafe { sys::virDomainMigrateStartPostCopy(dom.as_ptr(), 0) };
                            if rc == 0 {
                                seen.post_copy = true;
                                watch.entered_post_copy();
                                continue;
                            }
                            seen.abort_error = Some(format!(
                                "virDomainMigrateStartPostCopy: {}",
                                virt::error::Error::last_error().message()
                            ));
                        }
                        seen.aborted.get_or_insert(reason);
                        // SAFETY: as above. Fails harmlessly if the job just ended.
                        let rc = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
                        if rc == 0 {
                            break;
                        }
                        seen.abort_error = Some(format!(
                            "virDomainAbortJob: {}",
                            virt::error::Error::last_error().message()
                        ));
                    }
                    seen.lowest_remaining = watch.low();
                    // Finely until the job shows up (that delay is a measured figure), then
                    // at the configured pace.
                    let pause = if seen.job_started_after.is_none() {
                        every.min(Duration::from_millis(10))
                    } else {
                        every
                    };
                    std::thread::sleep(pause);
                }
                seen.lowest_remaining = watch.low();
                seen
            })?;
        Ok(Watchdog { stop, handle })
    }

    pub(super) fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Release);
        self.handle.join().unwrap_or_default()
    }
}
