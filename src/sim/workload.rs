//! What each simulated VM's migration would send: the guest's non-zero memory and its dirty
//! rate, drawn per VM, and the migration forecast (`crate::forecast`, the daemon's own model)
//! over a fixed migration link. The simulator's migrated bytes, and the per-VM `c_m` of
//! `[decision] migration_cost_model = "forecast"`, come from here.
//!
//! The distribution is an assumption, documented in docs/evaluation.md ("Per-VM migration
//! cost in the simulator"), not a measurement: most guests are nearly idle and hold part of
//! their memory, a long tail dirties memory fast.
//! - first pass (non-zero memory): a share of the configured memory, uniform in
//!   [`WorkloadParams::resident_share`];
//! - dirty rate: log-normal, median [`WorkloadParams::dirty_median_mib_s`], shape
//!   [`WorkloadParams::dirty_sigma`] (with the defaults, 4 MiB/s median, 18 MiB/s at the 90th
//!   percentile, 131 MiB/s at the 99th), measured as the daemon measures it, over one second;
//! - the migration gets [`WorkloadParams::bandwidth_mib_s`] with a 300 ms downtime budget and
//!   may fall back to auto-converge and post-copy, so every move the decision makes goes ahead
//!   (a guest no mode moves is `would_not_converge` in the daemon; here none is).

use crate::forecast::{self, Limits, Workload};
use crate::hypervisor::{DIRTY_RATE_WINDOW, MigrationParams};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

const MIB: f64 = 1024.0 * 1024.0;

/// The per-VM workload distribution and the migration link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorkloadParams {
    /// The first pass is this share of the configured memory, uniform between the two.
    pub resident_share: (f64, f64),
    pub dirty_median_mib_s: f64,
    /// Shape of the log-normal dirty rate (σ of its logarithm).
    pub dirty_sigma: f64,
    /// The migration's share of the link, MiB/s.
    pub bandwidth_mib_s: f64,
}

impl Default for WorkloadParams {
    fn default() -> Self {
        WorkloadParams {
            resident_share: (0.25, 1.0),
            dirty_median_mib_s: 4.0,
            dirty_sigma: 1.5,
            bandwidth_mib_s: 512.0,
        }
    }
}

impl WorkloadParams {
    /// The limits every simulated migration runs under.
    pub fn limits(&self) -> Limits {
        let params = MigrationParams {
            bandwidth_mib_s: self.bandwidth_mib_s.round().max(1.0) as u64,
            post_copy: true,
            ..MigrationParams::default()
        };
        Limits::of(&params).expect("a bandwidth is set")
    }

    /// One VM of `memory_mib`, drawn from `rng`.
    pub fn draw(&self, memory_mib: u64, rng: &mut ChaCha8Rng) -> Workload {
        let (lo, hi) = self.resident_share;
        let share = if hi > lo {
            rng.random_range(lo..hi)
        } else {
            lo
        };
        // Box-Muller: one standard normal from two uniforms.
        let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let dirty = self.dirty_median_mib_s * (self.dirty_sigma * z).exp();
        let memory = memory_mib as f64 * MIB;
        Workload {
            resident_bytes: share.clamp(0.0, 1.0) * memory,
            dirty_bytes_per_s: dirty * MIB,
            working_set_bytes: memory,
            measured_over: DIRTY_RATE_WINDOW,
        }
    }

    /// The bytes a migration of each of `n` VMs of `memory_mib` sends, in the mode the forecast
    /// picks, drawn from `rng`.
    pub fn migration_bytes(&self, n: usize, memory_mib: u64, rng: &mut ChaCha8Rng) -> Vec<f64> {
        let limits = self.limits();
        (0..n)
            .map(|_| forecast::expected(&self.draw(memory_mib, rng), &limits).bytes)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_drawn_workloads_follow_the_documented_distribution() {
        let p = WorkloadParams::default();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut dirty: Vec<f64> = Vec::new();
        let mut shares: Vec<f64> = Vec::new();
        for _ in 0..20_000 {
            let w = p.draw(1024, &mut rng);
            dirty.push(w.dirty_bytes_per_s / MIB);
            shares.push(w.resident_bytes / (1024.0 * MIB));
        }
        dirty.sort_by(f64::total_cmp);
        let at = |q: f64| dirty[(q * dirty.len() as f64) as usize];
        assert!((at(0.5) - 4.0).abs() < 0.3, "median {}", at(0.5));
        assert!((at(0.9) / (4.0 * (1.5f64 * 1.2816).exp()) - 1.0).abs() < 0.1);
        assert!(shares.iter().all(|&s| (0.25..1.0).contains(&s)));
        let mean = shares.iter().sum::<f64>() / shares.len() as f64;
        assert!((mean - 0.625).abs() < 0.01, "{mean}");
    }

    #[test]
    fn every_migration_sends_at_least_its_first_pass_and_a_hot_guest_more() {
        let p = WorkloadParams::default();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let limits = p.limits();
        for _ in 0..2_000 {
            let w = p.draw(1024, &mut rng);
            let f = forecast::expected(&w, &limits);
            assert!(f.converges, "post-copy is allowed: {w:?} {f:?}");
            assert!(f.bytes >= w.resident_bytes - 1.0);
        }
        let idle = Workload {
            dirty_bytes_per_s: 0.0,
            ..p.draw(1024, &mut rng)
        };
        let hot = Workload {
            dirty_bytes_per_s: 200.0 * MIB,
            ..idle
        };
        assert!(forecast::expected(&hot, &limits).bytes > forecast::expected(&idle, &limits).bytes);
    }
}
