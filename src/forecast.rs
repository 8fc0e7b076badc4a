//! What one live migration will cost before it starts: memory passes, bytes on the wire, total
//! time and downtime, whether it converges, under pre-copy, pre-copy with auto-converge, and
//! post-copy; and which of them to use (or not to move at all). Pure: the workload's figures and
//! the link come in as arguments, nothing is measured or read here.
//!
//! **Pre-copy** (QEMU's default, the model of Clark et al., "Live Migration of Virtual
//! Machines", NSDI 2005, and Akoush et al., "Predicting the Performance of Virtual Machine
//! Migration", MASCOTS 2010): the first pass sends every page the guest holds (QEMU sends a
//! zero page as a few header bytes, so the guest's non-zero memory ([`Resident`]), not its
//! configured size, is what counts); each further pass sends the pages dirtied during the one before; when what is left
//! can be sent within the downtime budget the guest stops and the rest goes in one last copy. With
//! a dirty rate `d` and bandwidth `b`, pass `i` sends `R · (d/b)^i` (never more than the set of
//! pages the guest writes, its working set): below `d/b < 1` it shrinks geometrically and
//! converges; at or above it never shrinks, and the job runs until scored's stall rule or its
//! timeout aborts it, having sent gigabytes for nothing.
//!
//! **Auto-converge** (QEMU's `auto-converge` capability, defaults from QEMU's
//! `migration/migration.c`): when the bytes dirtied during a pass exceed half the bytes that pass
//! sent, twice, QEMU throttles the guest's vCPUs to 20 %, then 10 points more after every further
//! such pass, up to 99 %: the dirty rate falls with the CPU the guest gets.
//!
//! **Post-copy** (QEMU's `postcopy-ram`, libvirt's `VIR_MIGRATE_POSTCOPY` after one pre-copy
//! pass, as WALM and libvirt's own hybrid do): one full pass, then the guest runs at the
//! destination at once and pulls the pages dirtied since on demand. It always ends, with a
//! downtime of the switch-over alone, but a destination or link that dies meanwhile loses the
//! guest: the operator must allow it.
//!
//! The choice ([`choose`]) follows the issue this serves: plain pre-copy when it converges
//! within the budget; with auto-converge when only that converges; post-copy when allowed;
//! otherwise the VM stays ([`Choice::WouldNotConverge`], with the pre-copy figures that say why).

use crate::hypervisor::{DIRTY_RATE_WINDOW, Measured, MigrationParams};
use std::time::Duration;

const MIB: f64 = 1024.0 * 1024.0;

/// The time QEMU needs to switch a guest over besides copying its last pages (device state,
/// the destination resuming): the thesis measured 16.38 ms of downtime for idle 196 MB guests,
/// almost all of it this.
pub const SWITCHOVER: Duration = Duration::from_millis(16);

/// QEMU's auto-converge: a pass is unproductive when it dirtied more than this share of what
/// it sent (`throttle-trigger-threshold`, 50 %)...
const THROTTLE_TRIGGER: f64 = 0.5;
/// ...and throttling starts after this many unproductive passes.
const UNPRODUCTIVE_PASSES: u32 = 2;
/// `cpu-throttle-initial`, `cpu-throttle-increment`, `max-cpu-throttle`.
const THROTTLE_INITIAL: f64 = 0.20;
const THROTTLE_INCREMENT: f64 = 0.10;
const THROTTLE_MAX: f64 = 0.99;
/// A model that has not ended after this many passes has not converged (QEMU has no limit;
/// the job's timeout ends it long before in every realistic case).
const MAX_PASSES: u32 = 10_000;

/// The guest, as measured before it may move.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Workload {
    /// Memory the guest holds (resident, non-zero pages), bytes: what the first pass sends.
    pub resident_bytes: f64,
    /// Bytes of memory the guest dirties per second while it runs unthrottled.
    pub dirty_bytes_per_s: f64,
    /// The most memory the guest writes in any interval (its writable working set), bytes: a
    /// pass never has more to resend. At most the guest's memory.
    pub working_set_bytes: f64,
    /// The window the dirty rate was measured over (libvirt: at least 1 s). A measurement
    /// cannot tell a guest dirtying `d` bytes evenly from one rewriting `d` bytes many times
    /// within the window, so in any shorter interval the guest is taken to dirty as much as in
    /// the whole window. Zero: the rate holds at every scale.
    pub measured_over: Duration,
}

/// What the migration may use and how long it may take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Bandwidth the migration stream gets on the path, bytes per second.
    pub bandwidth_bytes_per_s: f64,
    /// Longest acceptable stop of the guest for the last copy.
    pub max_downtime: Duration,
    /// The job is aborted after this long.
    pub timeout: Duration,
    /// The job is aborted when what is left has not shrunk for this long (scored's stall rule).
    pub stall_timeout: Duration,
    /// The operator lets scored throttle the guest's CPUs to converge.
    pub auto_converge: bool,
    /// The operator accepts post-copy (a guest lost if the destination dies mid-way).
    pub post_copy: bool,
}

impl Limits {
    /// The limits a migration with `params` runs under; `None` without a bandwidth cap (the
    /// migration's share of the link is then unknown).
    pub fn of(params: &MigrationParams) -> Option<Limits> {
        (params.bandwidth_mib_s > 0).then_some(Limits {
            bandwidth_bytes_per_s: params.bandwidth_mib_s as f64 * MIB,
            max_downtime: params.max_downtime,
            timeout: params.timeout,
            stall_timeout: params.stall_timeout,
            auto_converge: params.auto_converge,
            post_copy: params.post_copy,
        })
    }
}

/// How a migration runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    PreCopy,
    /// Pre-copy with QEMU throttling the guest's vCPUs.
    PreCopyAutoConverge,
    /// One pre-copy pass, then the guest runs at the destination and pulls the rest.
    PostCopy,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::PreCopy => "pre_copy",
            Mode::PreCopyAutoConverge => "pre_copy_auto_converge",
            Mode::PostCopy => "post_copy",
        }
    }
}

/// The model's figures for one migration in one mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Forecast {
    pub mode: Mode,
    /// Memory passes while the guest runs (the first full one included; not the last copy).
    pub passes: u32,
    /// Bytes the migration sends, the last copy (or post-copy's pulled pages) included. For a
    /// migration that does not converge: what it sends before it is aborted.
    pub bytes: f64,
    /// From start to the guest running at the destination (or to the abort).
    pub total: Duration,
    /// How long the guest stands still.
    pub downtime: Duration,
    /// It ends with the guest at the destination, within the timeout and the stall rule.
    pub converges: bool,
    /// The vCPU throttle auto-converge reached (0 without it).
    pub throttle: f64,
}

/// Where the first pass's size was read from, most faithful first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResidentBasis {
    /// The non-zero memory the migration that brought the VM here sent: exactly what a first
    /// pass sent, once (at least what the guest reports in use now).
    LastArrival,
    /// What the guest reports in use (balloon statistics). Low for a guest that freed memory it
    /// had written (its boot, a finished job): freed pages still hold data and are sent.
    GuestUsed,
    /// The QEMU process's resident set: the guest pages it touched and QEMU's own memory (device
    /// emulation, TCG's translation cache), so high, by 40–60 % on the testbed's small guests.
    ProcessResident,
    /// Nothing measured: the guest's configured memory, the most a first pass can send.
    Configured,
}

impl ResidentBasis {
    pub fn name(self) -> &'static str {
        match self {
            ResidentBasis::LastArrival => "last-arrival",
            ResidentBasis::GuestUsed => "guest-used",
            ResidentBasis::ProcessResident => "process-resident",
            ResidentBasis::Configured => "configured",
        }
    }
}

/// What a migration's first pass will send: the guest's non-zero memory (QEMU sends a zero page
/// as a header), as well as the hypervisor's figures tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resident {
    pub mib: u64,
    pub basis: ResidentBasis,
}

impl Resident {
    /// The best figure `m` holds for a guest of `memory_mib`: the VM's last arrival here (taken
    /// as at least what the guest uses now), else the guest's own use, else the QEMU process's
    /// resident set, else the configured memory. Never more than the configured memory, nor
    /// than the resident set (a page QEMU never touched reads as zeroes and is not sent).
    ///
    /// Reading the guest's pages for zeroes (as QEMU's first pass does) would be exact, but
    /// needs `CAP_SYS_PTRACE` over the QEMU process; the service runs without it.
    pub fn of(m: &Measured, memory_mib: u64) -> Resident {
        let (mib, basis) = match (m.arrived_nonzero_mib, m.guest_used_mib, m.resident_mib) {
            (Some(a), used, _) => (a.max(used.unwrap_or(0)), ResidentBasis::LastArrival),
            (None, Some(used), _) => (used, ResidentBasis::GuestUsed),
            (None, None, Some(rss)) => (rss, ResidentBasis::ProcessResident),
            (None, None, None) => (memory_mib, ResidentBasis::Configured),
        };
        let cap = memory_mib.min(m.resident_mib.unwrap_or(u64::MAX));
        Resident {
            mib: mib.min(cap),
            basis,
        }
    }
}

impl Workload {
    /// A guest of `memory_mib` as the hypervisor measured it; `None` before its dirty rate is
    /// known. The first pass is [`Resident::of`] the measurement; the working set is unknown,
    /// so the whole memory.
    pub fn measured(m: &Measured, memory_mib: u64) -> Option<Workload> {
        let memory = memory_mib as f64 * MIB;
        Some(Workload {
            resident_bytes: Resident::of(m, memory_mib).mib as f64 * MIB,
            dirty_bytes_per_s: m.dirty_mib_s? * MIB,
            working_set_bytes: memory,
            measured_over: DIRTY_RATE_WINDOW,
        })
    }

    /// The time over which the guest dirties memory during an interval of `dt` seconds, as
    /// far as its measurement can tell: never less than the measurement's window.
    fn span(&self, dt: f64) -> f64 {
        dt.max(self.measured_over.as_secs_f64())
    }
}

/// What to do with a VM that may move.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Choice {
    Move(Forecast),
    /// No allowed mode ends within the limits: the VM stays. The pre-copy figures say why.
    WouldNotConverge {
        pre_copy: Forecast,
    },
}

/// Pre-copy, with or without auto-converge, pass by pass.
pub fn pre_copy(w: &Workload, l: &Limits, auto_converge: bool) -> Forecast {
    let b = l.bandwidth_bytes_per_s.max(1.0);
    let budget = l.max_downtime.as_secs_f64();
    let ws = w.working_set_bytes.max(0.0);
    let mut left = w.resident_bytes.max(0.0);
    let (mut bytes, mut t, mut passes) = (0.0, 0.0, 0u32);
    let (mut throttle, mut unproductive) = (0.0f64, 0u32);
    // The stall rule: what is left must shrink below its smallest so far within the stall time.
    let (mut smallest, mut smallest_at) = (f64::INFINITY, 0.0);
    let mode = if auto_converge {
        Mode::PreCopyAutoConverge
    } else {
        Mode::PreCopy
    };
    let ended = |bytes: f64, t: f64, passes, converges, down: f64, throttle| Forecast {
        mode,
        passes,
        bytes,
        total: Duration::from_secs_f64(t),
        downtime: Duration::from_secs_f64(down),
        converges,
        throttle,
    };
    loop {
        // What is left fits in the downtime: stop the guest and copy it.
        if left / b <= budget {
            let last = left / b + SWITCHOVER.as_secs_f64();
            let total = t + last;
            let converges = total <= l.timeout.as_secs_f64();
            return ended(bytes + left, total, passes, converges, last, throttle);
        }
        if left < smallest {
            (smallest, smallest_at) = (left, t);
        } else if t - smallest_at > l.stall_timeout.as_secs_f64() {
            return ended(bytes, t, passes, false, 0.0, throttle);
        }
        if passes >= MAX_PASSES || t > l.timeout.as_secs_f64() {
            return ended(bytes, t, passes, false, 0.0, throttle);
        }
        // One pass: send what is left while the guest dirties more.
        let dt = left / b;
        let dirtied = (w.dirty_bytes_per_s.max(0.0) * (1.0 - throttle) * w.span(dt)).min(ws);
        bytes += left;
        t += dt;
        passes += 1;
        if auto_converge && dirtied > THROTTLE_TRIGGER * left {
            unproductive += 1;
            if unproductive >= UNPRODUCTIVE_PASSES {
                throttle = if throttle == 0.0 {
                    THROTTLE_INITIAL
                } else {
                    (throttle + THROTTLE_INCREMENT).min(THROTTLE_MAX)
                };
                unproductive = 0;
            }
        }
        left = dirtied;
    }
}

/// Post-copy after one full pre-copy pass: the pages dirtied during that pass are pulled by the
/// running guest at the destination, each once.
pub fn post_copy(w: &Workload, l: &Limits) -> Forecast {
    let b = l.bandwidth_bytes_per_s.max(1.0);
    let first = w.resident_bytes.max(0.0);
    let dt = first / b;
    let pulled = (w.dirty_bytes_per_s.max(0.0) * w.span(dt)).min(w.working_set_bytes.max(0.0));
    let total = dt + SWITCHOVER.as_secs_f64() + pulled / b;
    Forecast {
        mode: Mode::PostCopy,
        passes: 1,
        bytes: first + pulled,
        total: Duration::from_secs_f64(total),
        downtime: SWITCHOVER,
        // Once switched over it cannot be aborted: it ends, however long the pull takes.
        converges: true,
        throttle: 0.0,
    }
}

/// What the migration will cost in the mode [`choose`] picks, or, when none converges, under
/// pre-copy (what it would send before it is aborted).
pub fn expected(w: &Workload, l: &Limits) -> Forecast {
    choose(w, l).forecast()
}

impl Choice {
    /// The figures of the mode chosen, or, when none converges, pre-copy's.
    pub fn forecast(self) -> Forecast {
        match self {
            Choice::Move(f) => f,
            Choice::WouldNotConverge { pre_copy } => pre_copy,
        }
    }
}

/// The mode to migrate `w` with under `l`, or none.
pub fn choose(w: &Workload, l: &Limits) -> Choice {
    let plain = pre_copy(w, l, false);
    if plain.converges {
        return Choice::Move(plain);
    }
    if l.auto_converge {
        let throttled = pre_copy(w, l, true);
        if throttled.converges {
            return Choice::Move(throttled);
        }
    }
    if l.post_copy {
        return Choice::Move(post_copy(w, l));
    }
    Choice::WouldNotConverge { pre_copy: plain }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    const GIB: f64 = 1024.0 * MIB;

    fn limits(mib_s: f64) -> Limits {
        Limits {
            bandwidth_bytes_per_s: mib_s * MIB,
            max_downtime: Duration::from_millis(300),
            timeout: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(30),
            auto_converge: false,
            post_copy: false,
        }
    }

    #[test]
    fn an_idle_guest_sends_its_resident_memory_once() {
        // 2 GiB configured, 100 MiB touched, idle: one pass and an empty last copy.
        let w = Workload {
            resident_bytes: 100.0 * MIB,
            dirty_bytes_per_s: 0.0,
            working_set_bytes: 2.0 * GIB,
            measured_over: Duration::ZERO,
        };
        let f = pre_copy(&w, &limits(100.0), false);
        assert!(f.converges);
        assert_eq!(f.passes, 1);
        assert!((f.bytes - 100.0 * MIB).abs() < 1.0);
        assert!((f.total.as_secs_f64() - 1.016).abs() < 1e-3, "{f:?}");
        assert_eq!(f.downtime, SWITCHOVER);
    }

    #[test]
    fn pre_copy_follows_the_geometric_series_below_the_link_rate() {
        // ρ = 0.5: passes send R, R/2, R/4 ... until R·ρ^n / b fits in 300 ms.
        let (r, b) = (1024.0 * MIB, 100.0 * MIB);
        let w = Workload {
            resident_bytes: r,
            dirty_bytes_per_s: 0.5 * b,
            working_set_bytes: 4.0 * GIB,
            measured_over: Duration::ZERO,
        };
        let f = pre_copy(&w, &limits(100.0), false);
        // 1024/2^n ≤ 30 MiB ⇒ n = 6 passes (1024 … 32), then a last copy of 16 MiB.
        assert_eq!(f.passes, 6);
        let series: f64 = (0..=6).map(|i| r * 0.5f64.powi(i)).sum();
        assert!((f.bytes - series).abs() < 1.0, "{} vs {series}", f.bytes);
        assert!(f.downtime.as_secs_f64() <= 0.3 + SWITCHOVER.as_secs_f64());
        assert!(f.converges);
    }

    #[test]
    fn a_guest_dirtying_faster_than_the_link_is_left_in_place_unless_post_copy_is_allowed() {
        let w = Workload {
            resident_bytes: 512.0 * MIB,
            dirty_bytes_per_s: 200.0 * MIB,
            working_set_bytes: 512.0 * MIB,
            measured_over: Duration::ZERO,
        };
        let l = limits(100.0);
        let f = pre_copy(&w, &l, false);
        assert!(!f.converges);
        // Stopped by the stall rule after ~30 s of resending, not at the 300 s timeout.
        assert!(f.total.as_secs_f64() < 40.0, "{f:?}");
        assert!(matches!(choose(&w, &l), Choice::WouldNotConverge { .. }));
        let with_post = Limits {
            post_copy: true,
            ..l
        };
        let Choice::Move(p) = choose(&w, &with_post) else {
            panic!("post-copy allowed");
        };
        assert_eq!(p.mode, Mode::PostCopy);
        assert_eq!(p.downtime, SWITCHOVER);
        // The first pass, then the pages dirtied meanwhile (capped by the working set).
        assert!((p.bytes - 1024.0 * MIB).abs() < 1.0, "{p:?}");
    }

    #[test]
    fn a_hot_working_set_measured_over_a_second_is_not_taken_to_shrink_within_it() {
        // 24 MiB/s measured over 1 s against 64 MiB/s and 300 ms: if the rate held at every
        // scale the passes would shrink (24 → 9 MiB); the guest may as well rewrite its 24 MiB
        // in every short pass, and then no pass fits the budget (24 MiB / 64 MiB/s = 375 ms).
        let mut w = Workload {
            resident_bytes: 180.0 * MIB,
            dirty_bytes_per_s: 24.0 * MIB,
            working_set_bytes: 256.0 * MIB,
            measured_over: Duration::ZERO,
        };
        let l = limits(64.0);
        assert!(pre_copy(&w, &l, false).converges);
        w.measured_over = Duration::from_secs(1);
        assert!(!pre_copy(&w, &l, false).converges);
    }

    #[test]
    fn auto_converge_throttles_a_guest_slightly_faster_than_the_link_into_converging() {
        let w = Workload {
            resident_bytes: 1024.0 * MIB,
            dirty_bytes_per_s: 120.0 * MIB,
            working_set_bytes: 1024.0 * MIB,
            measured_over: Duration::ZERO,
        };
        let l = Limits {
            auto_converge: true,
            ..limits(100.0)
        };
        let Choice::Move(f) = choose(&w, &l) else {
            panic!("auto-converge converges");
        };
        assert_eq!(f.mode, Mode::PreCopyAutoConverge);
        assert!(f.throttle >= THROTTLE_INITIAL, "{f:?}");
    }

    #[test]
    fn the_first_pass_is_read_from_the_best_figure_measured() {
        let m = |rss, used, arrived| Measured {
            vm: scored_proto::VmId(1),
            resident_mib: rss,
            guest_used_mib: used,
            arrived_nonzero_mib: arrived,
            dirty_mib_s: Some(0.0),
            dirty_rate_pending: false,
            cpu_cores: None,
        };
        let of = |x: Measured| {
            let r = Resident::of(&x, 256);
            (r.mib, r.basis)
        };
        use ResidentBasis::*;
        // The testbed's idle 256 MiB guest: QEMU holds 190 MiB, the guest uses 65, its last
        // migration sent 91 MiB of non-zero pages.
        assert_eq!(of(m(Some(190), Some(65), Some(91))), (91, LastArrival));
        // A guest that grew since it arrived: what it uses now.
        assert_eq!(of(m(Some(190), Some(120), Some(91))), (120, LastArrival));
        assert_eq!(of(m(Some(190), Some(65), None)), (65, GuestUsed));
        assert_eq!(of(m(Some(190), None, None)), (190, ProcessResident));
        assert_eq!(of(m(None, None, None)), (256, Configured));
        // Never more than the configured memory, nor than what the process has touched.
        assert_eq!(of(m(Some(330), None, None)), (256, ProcessResident));
        assert_eq!(of(m(Some(80), Some(100), Some(120))), (80, LastArrival));
        let w = Workload::measured(&m(Some(190), Some(65), Some(91)), 256).unwrap();
        assert_eq!(w.resident_bytes, 91.0 * MIB);
        assert_eq!(w.working_set_bytes, 256.0 * MIB);
    }

    fn workload() -> impl Strategy<Value = Workload> {
        (1.0f64..8192.0, 0.0f64..400.0, 1.0f64..8192.0, 0u64..3).prop_map(|(r, d, ws, win)| {
            Workload {
                resident_bytes: r * MIB,
                dirty_bytes_per_s: d * MIB,
                working_set_bytes: ws * MIB,
                measured_over: Duration::from_secs(win),
            }
        })
    }

    fn any_limits() -> impl Strategy<Value = Limits> {
        (10.0f64..2000.0, 10u64..2000, any::<bool>(), any::<bool>()).prop_map(
            |(b, down, ac, pc)| Limits {
                auto_converge: ac,
                post_copy: pc,
                max_downtime: Duration::from_millis(down),
                ..limits(b)
            },
        )
    }

    proptest! {
        #[test]
        fn the_choice_respects_the_operator_and_the_budget(w in workload(), l in any_limits()) {
            match choose(&w, &l) {
                Choice::Move(f) => {
                    prop_assert!(f.converges);
                    prop_assert!(f.mode != Mode::PostCopy || l.post_copy);
                    prop_assert!(f.mode != Mode::PreCopyAutoConverge || l.auto_converge);
                    // A pre-copy that converges keeps the guest's stop within the budget.
                    if f.mode != Mode::PostCopy {
                        prop_assert!(f.downtime <= l.max_downtime + SWITCHOVER + Duration::from_micros(1));
                    }
                    // Plain pre-copy is preferred whenever it converges.
                    if f.mode != Mode::PreCopy {
                        prop_assert!(!pre_copy(&w, &l, false).converges);
                    }
                    // At least the resident memory crosses the link.
                    prop_assert!(f.bytes >= w.resident_bytes - 1.0);
                }
                Choice::WouldNotConverge { pre_copy: f } => {
                    prop_assert!(!f.converges);
                    prop_assert!(!l.post_copy);
                }
            }
        }

        #[test]
        fn dirtying_faster_never_costs_less(w in workload(), l in any_limits(), more in 0.0f64..200.0) {
            let busier = Workload { dirty_bytes_per_s: w.dirty_bytes_per_s + more * MIB, ..w };
            let (a, b) = (pre_copy(&w, &l, false), pre_copy(&busier, &l, false));
            if a.converges && b.converges {
                prop_assert!(b.bytes >= a.bytes - 1.0, "{a:?} {b:?}");
            }
            prop_assert!(a.converges || !b.converges, "the busier guest converged alone");
        }

        #[test]
        fn a_faster_link_never_takes_longer(w in workload(), l in any_limits(), more in 0.0f64..1000.0) {
            let faster = Limits { bandwidth_bytes_per_s: l.bandwidth_bytes_per_s + more * MIB, ..l };
            let (a, b) = (pre_copy(&w, &l, false), pre_copy(&w, &faster, false));
            if a.converges {
                prop_assert!(b.converges, "{a:?} {b:?}");
                prop_assert!(b.total <= a.total + Duration::from_micros(1), "{a:?} {b:?}");
            }
        }
    }
}
