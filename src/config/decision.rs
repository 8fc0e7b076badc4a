//! `[decision]`: Eq. 3.2's migration cost and the gates around a decision (candidates,
//! cooldown, history).
//!
//! Declares and checks the values; deciding is `crate::decide`'s.

use super::section::{OptionSpec, Section, ZeroValue, at_least_one, short_key};
use serde::{Deserialize, Serialize};

/// Eq. 3.2 and the gates around it. Reloads on SIGHUP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionConfig {
    /// Migration cost `c_m` of Eq. 3.2, in cost units (bytes/s × link weight): a move must
    /// gain more than this.
    pub migration_cost: f64,
    /// `c_m` as a fraction of the deciding VM's current cost; the larger of the two applies.
    pub migration_cost_fraction: f64,
    /// `constant`: `c_m` is the two options above (the thesis). `forecast`: each move is also
    /// charged its own predicted migration traffic times the path cost to its destination,
    /// spread over `migration_cost_horizon_s`, plus `disruption_cost`; the larger applies.
    pub migration_cost_model: CostModel,
    /// Seconds over which a move's predicted traffic is set against the rate it saves (how long
    /// a placement is expected to hold). `forecast` model only.
    pub migration_cost_horizon_s: u64,
    /// Charge added to every move under the `forecast` model, cost units.
    pub disruption_cost: f64,
    /// Decide, log and expose, but never migrate (recommend-only).
    pub dry_run: bool,
    /// Most candidate hosts asked for capacity in one decision.
    pub max_candidates: u32,
    /// When a partner's host is full, also try the other hosts in the partner's rack.
    pub rack_fallback: bool,
    /// Cooldown after a VM moves: the larger of this and the last migration's duration.
    pub cooldown_base_s: u64,
    /// The cooldown doubles for each move of the same VM within this window.
    pub cooldown_window_s: u64,
    /// Upper bound of the cooldown.
    pub cooldown_max_s: u64,
    /// Previous hosts remembered per VM.
    pub history_hosts: u32,
    /// How long a previous host is remembered.
    pub history_s: u64,
    /// A destination whose load per CPU would exceed this with the VM's recent CPU use added
    /// is not taken; 0 turns the gate off.
    pub max_destination_cpu_load: f64,
    /// Moving back to a remembered host needs a benefit of at least this fraction of the VM's
    /// current cost (on top of `c_m`), so a VM does not bounce back for a tiny gain.
    pub return_margin_fraction: f64,
    /// Group moves (`decide::group`): `off`; `recommend`: the holder also plans moving its VM
    /// together with the partners bound to it in its rack, surveying the hosts involved
    /// (`/scored/group/1`), and reports the plan; `act`: it carries the plan out when it beats
    /// S-CORE's own move.
    pub group_moves: GroupMoves,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        DecisionConfig {
            migration_cost: 0.0,
            migration_cost_fraction: 0.05,
            migration_cost_model: CostModel::Constant,
            migration_cost_horizon_s: 900,
            disruption_cost: 0.0,
            dry_run: false,
            max_candidates: 8,
            rack_fallback: true,
            cooldown_base_s: 15 * 60,
            cooldown_window_s: 24 * 3600,
            cooldown_max_s: 6 * 3600,
            history_hosts: 4,
            history_s: 24 * 3600,
            return_margin_fraction: 0.25,
            max_destination_cpu_load: 0.0,
            group_moves: GroupMoves::Off,
        }
    }
}

impl DecisionConfig {
    /// The `c_m` that applies to a VM whose current cost (its share of Eq. 3.1) is `vm_cost`.
    pub fn effective_migration_cost(&self, vm_cost: f64) -> f64 {
        crate::cost::migration_cost(self.migration_cost, self.migration_cost_fraction, vm_cost)
    }
}

/// How Eq. 3.2's `c_m` is found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CostModel {
    /// The configured constant (and fraction): the same for every VM and destination.
    #[default]
    Constant,
    /// Per VM and destination, from the migration forecast (`crate::cost::MoveCharge`).
    Forecast,
}

/// Whether the holder plans group moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupMoves {
    /// S-CORE's rule alone.
    #[default]
    Off,
    /// Plan a group move at every turn whose VM could lead one, and report it (the turn's
    /// record, `scored plan`, the log, `scored_group_plans_total`); move nothing for it.
    Recommend,
    /// Plan and carry out group moves: the holder migrates its own VMs and asks the hosts of
    /// the others to migrate theirs, in the plan's order, undoing the moves made when one
    /// fails. A host carries out a peer's move only when it too is set to `act`.
    Act,
}

/// The largest `history_hosts` accepted.
const MAX_HISTORY_HOSTS: u32 = 64;

/// A `[decision]` value that cannot be right.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecisionConfigError {
    #[error("migration_cost = {0} must be a finite number ≥ 0")]
    MigrationCost(f64),
    #[error("disruption_cost = {0} must be a finite number ≥ 0")]
    DisruptionCost(f64),
    #[error("max_destination_cpu_load = {0} must be a finite number ≥ 0 (0: off)")]
    MaxCpuLoad(f64),
    #[error("{} = {value} must be between 0 and 1", short_key(.key))]
    NotAFraction { key: &'static str, value: f64 },
    #[error(transparent)]
    Zero(#[from] ZeroValue),
    #[error("cooldown_max_s = {max_s} is shorter than cooldown_base_s = {base_s}")]
    CooldownMaxBelowBase { max_s: u64, base_s: u64 },
    #[error("history_hosts = {0} is more than {MAX_HISTORY_HOSTS}")]
    TooManyHistoryHosts(u32),
}

impl DecisionConfigError {
    pub fn keys(&self) -> Vec<String> {
        let keys: &[&str] = match self {
            DecisionConfigError::MigrationCost(_) => &["decision.migration_cost"],
            DecisionConfigError::DisruptionCost(_) => &["decision.disruption_cost"],
            DecisionConfigError::MaxCpuLoad(_) => &["decision.max_destination_cpu_load"],
            DecisionConfigError::NotAFraction { key, .. } => return vec![key.to_string()],
            DecisionConfigError::Zero(e) => return vec![e.key.to_string()],
            DecisionConfigError::CooldownMaxBelowBase { .. } => {
                &["decision.cooldown_max_s", "decision.cooldown_base_s"]
            }
            DecisionConfigError::TooManyHistoryHosts(_) => &["decision.history_hosts"],
        };
        keys.iter().map(|k| k.to_string()).collect()
    }
}

impl Section for DecisionConfig {
    const OPTIONS: &'static [OptionSpec] = options!(
        "decision",
        DecisionConfig {
            migration_cost: Live,
            migration_cost_fraction: Live,
            migration_cost_model: Live,
            migration_cost_horizon_s: Live,
            disruption_cost: Live,
            dry_run: Live,
            max_candidates: Live,
            rack_fallback: Live,
            cooldown_base_s: Live,
            cooldown_window_s: Live,
            cooldown_max_s: Live,
            history_hosts: Live,
            history_s: Live,
            return_margin_fraction: Live,
            max_destination_cpu_load: Live,
            group_moves: Live,
        }
    );
    type Error = DecisionConfigError;

    fn check(&self) -> Vec<DecisionConfigError> {
        let mut out = Vec::new();
        if !self.migration_cost.is_finite() || self.migration_cost < 0.0 {
            out.push(DecisionConfigError::MigrationCost(self.migration_cost));
        }
        if !self.max_destination_cpu_load.is_finite() || self.max_destination_cpu_load < 0.0 {
            out.push(DecisionConfigError::MaxCpuLoad(
                self.max_destination_cpu_load,
            ));
        }
        if !self.disruption_cost.is_finite() || self.disruption_cost < 0.0 {
            out.push(DecisionConfigError::DisruptionCost(self.disruption_cost));
        }
        out.extend(
            at_least_one(
                "decision.migration_cost_horizon_s",
                self.migration_cost_horizon_s,
            )
            .map(Into::into),
        );
        for (key, value) in [
            (
                "decision.migration_cost_fraction",
                self.migration_cost_fraction,
            ),
            (
                "decision.return_margin_fraction",
                self.return_margin_fraction,
            ),
        ] {
            if !(0.0..=1.0).contains(&value) {
                out.push(DecisionConfigError::NotAFraction { key, value });
            }
        }
        out.extend(
            at_least_one("decision.max_candidates", self.max_candidates.into()).map(Into::into),
        );
        out.extend(
            at_least_one("decision.cooldown_window_s", self.cooldown_window_s).map(Into::into),
        );
        if self.cooldown_base_s > self.cooldown_max_s {
            out.push(DecisionConfigError::CooldownMaxBelowBase {
                max_s: self.cooldown_max_s,
                base_s: self.cooldown_base_s,
            });
        }
        if self.history_hosts > MAX_HISTORY_HOSTS {
            out.push(DecisionConfigError::TooManyHistoryHosts(self.history_hosts));
        }
        out
    }
}
