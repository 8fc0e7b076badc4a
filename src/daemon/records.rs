//! The record of each VM's turn: logged as the `decision` line, kept (the latest few) for
//! `scored status`, shown by `scored plan`. Holds records only; it decides nothing.

use super::journal::Figures;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Decisions kept for `scored status`.
const RECENT_DECISIONS: usize = 64;

/// What happened to one VM's turn, for logs, metrics and `scored status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// When the turn for this VM began (assessment, then any migration), wall clock: with
    /// `unix_ms` (when it ended) it shows that no two hosts ever decided at once.
    #[serde(default)]
    pub started_unix_ms: u64,
    pub unix_ms: u64,
    pub vm: String,
    pub outcome: String,
    /// u's own share of Eq. 3.1 where it runs (cost units).
    pub current_cost: f64,
    /// c_m that applied.
    pub migration_cost: f64,
    /// Best destination and its Eq. 3.2 benefit, before capacity and gates.
    pub best_host: Option<String>,
    pub best_benefit: Option<f64>,
    /// Where it went (or would go, in dry-run).
    pub to: Option<String>,
    pub partners: usize,
    pub detail: String,
    /// The migration forecast of a move chosen, recommended or held back by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted: Option<Figures>,
    /// What the hypervisor reported of the migration, when one went through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<Figures>,
    pub epoch: u64,
    pub seq: u64,
    /// The group move planned at this turn (`decision.group_moves = "recommend"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupRecord>,
}

/// A group move as a turn's record gives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The moves in the order they would be carried out.
    pub moves: Vec<GroupMoveRecord>,
    /// The exact drop of Eq. 3.1 once every move is done, and the moves' migration costs.
    pub benefit: f64,
    pub migration_cost: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupMoveRecord {
    pub vm: String,
    pub from: String,
    pub to: String,
    /// Sent out of a full destination to make room (not a member of the group).
    pub evicted: bool,
}

/// The latest decisions, oldest first.
#[derive(Default)]
pub(super) struct Decisions {
    recent: VecDeque<DecisionRecord>,
}

impl Decisions {
    pub(super) fn push(&mut self, rec: DecisionRecord) {
        self.recent.push_back(rec);
        while self.recent.len() > RECENT_DECISIONS {
            self.recent.pop_front();
        }
    }

    pub(super) fn recent(&self) -> Vec<DecisionRecord> {
        self.recent.iter().cloned().collect()
    }
}
