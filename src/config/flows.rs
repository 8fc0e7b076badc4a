//! `[flows]`: how traffic (λ) is measured: the rate window, sampling, and the flow table's size
//! and expiry.
//!
//! Declares and checks the values; capture and the flow table are `crate::flows`'s.

use super::section::{OptionSpec, Section, ZeroValue, at_least_one};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Traffic measurement (λ). Restart to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowsConfig {
    /// Rates are averaged over this window, long enough to ignore bursts.
    pub window_s: u64,
    /// Capture one packet in this many (1 = every packet); counts are scaled back up.
    pub sampling: u32,
    /// Most flow entries kept; the least recently seen are evicted first.
    pub max_entries: u32,
    /// A flow with no packet for this long is forgotten.
    pub idle_expiry_s: u64,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig {
            window_s: 30,
            sampling: 1,
            max_entries: 65_536,
            idle_expiry_s: 120,
        }
    }
}

impl FlowsConfig {
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_s)
    }

    pub fn idle_expiry(&self) -> Duration {
        Duration::from_secs(self.idle_expiry_s)
    }
}

/// A `[flows]` value that cannot be right.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlowsConfigError {
    #[error(transparent)]
    Zero(#[from] ZeroValue),
    #[error(
        "idle_expiry_s = {idle_expiry_s} is shorter than window_s = {window_s}: flows would be forgotten before their rate is known"
    )]
    ExpiryBeforeWindow { idle_expiry_s: u64, window_s: u64 },
}

impl FlowsConfigError {
    pub fn keys(&self) -> Vec<String> {
        match self {
            FlowsConfigError::Zero(e) => vec![e.key.into()],
            FlowsConfigError::ExpiryBeforeWindow { .. } => {
                vec!["flows.idle_expiry_s".into(), "flows.window_s".into()]
            }
        }
    }
}

impl Section for FlowsConfig {
    const OPTIONS: &'static [OptionSpec] = options!(
        "flows",
        FlowsConfig {
            window_s: Restart,
            sampling: Restart,
            max_entries: Restart,
            idle_expiry_s: Restart,
        }
    );
    type Error = FlowsConfigError;

    fn check(&self) -> Vec<FlowsConfigError> {
        let mut out: Vec<FlowsConfigError> = [
            at_least_one("flows.window_s", self.window_s),
            at_least_one("flows.sampling", self.sampling.into()),
            at_least_one("flows.max_entries", self.max_entries.into()),
        ]
        .into_iter()
        .flatten()
        .map(Into::into)
        .collect();
        if self.idle_expiry_s < self.window_s {
            out.push(FlowsConfigError::ExpiryBeforeWindow {
                idle_expiry_s: self.idle_expiry_s,
                window_s: self.window_s,
            });
        }
        out
    }
}
