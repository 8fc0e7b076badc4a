//! `[token]`: the token's policy and timing. All hosts must agree on these.
//!
//! Declares and checks the values; the token itself and its policies are `crate::token`'s.

use super::section::{OptionSpec, Section, ZeroValue, at_least_one};
use scored_proto::PolicyKind;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The token and its policy. All hosts must agree on these; restart to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// Which VM holds the token next. Used when this host creates or regenerates the token; a
    /// circulating token carries its own policy.
    #[serde(with = "policy_name")]
    pub policy: PolicyKind,
    /// How long the holder waits for the next host to accept the token before skipping it.
    pub handoff_timeout_ms: u64,
    /// Shortest time one round may take: a holder that ends a round sooner waits, so a quiet
    /// cluster does not spin the token (and decides on fresh rates, see `flows.window_s`).
    pub min_round_s: u64,
    /// Silence after which a lost token is regenerated; unset = derived from the expected
    /// round time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regeneration_timeout_ms: Option<u64>,
    /// Token steps a peer's announced stamp may run ahead of this host's view of the token;
    /// an announcement further ahead is rejected (a stamp from the future would outrank every
    /// true location until the cluster caught up with it).
    pub stamp_skew_steps: u64,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            policy: PolicyKind::Distributed,
            handoff_timeout_ms: 2_000,
            min_round_s: 60,
            regeneration_timeout_ms: None,
            stamp_skew_steps: crate::p2p::directory::DEFAULT_STAMP_SKEW,
        }
    }
}

impl TokenConfig {
    pub fn handoff_timeout(&self) -> Duration {
        Duration::from_millis(self.handoff_timeout_ms)
    }

    pub fn min_round(&self) -> Duration {
        Duration::from_secs(self.min_round_s)
    }

    pub fn regeneration_timeout(&self) -> Option<Duration> {
        self.regeneration_timeout_ms.map(Duration::from_millis)
    }
}

/// A `[token]` value that cannot be right.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenConfigError {
    #[error(transparent)]
    Zero(#[from] ZeroValue),
    #[error(
        "regeneration_timeout_ms = {regeneration_ms} must be longer than handoff_timeout_ms = {handoff_ms}: a slow hand-off would look like a lost token"
    )]
    RegenerationNotLonger {
        regeneration_ms: u64,
        handoff_ms: u64,
    },
}

impl TokenConfigError {
    pub fn keys(&self) -> Vec<String> {
        match self {
            TokenConfigError::Zero(e) => vec![e.key.into()],
            TokenConfigError::RegenerationNotLonger { .. } => vec![
                "token.regeneration_timeout_ms".into(),
                "token.handoff_timeout_ms".into(),
            ],
        }
    }
}

impl Section for TokenConfig {
    const OPTIONS: &'static [OptionSpec] = options!(
        "token",
        TokenConfig {
            policy: Restart,
            handoff_timeout_ms: Restart,
            min_round_s: Restart,
            regeneration_timeout_ms: Restart,
            stamp_skew_steps: Restart,
        }
    );
    type Error = TokenConfigError;

    fn check(&self) -> Vec<TokenConfigError> {
        let mut out = Vec::new();
        out.extend(
            at_least_one("token.handoff_timeout_ms", self.handoff_timeout_ms).map(Into::into),
        );
        if let Some(r) = self.regeneration_timeout_ms
            && r <= self.handoff_timeout_ms
        {
            out.push(TokenConfigError::RegenerationNotLonger {
                regeneration_ms: r,
                handoff_ms: self.handoff_timeout_ms,
            });
        }
        out
    }
}

mod policy_name {
    use scored_proto::PolicyKind;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &PolicyKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PolicyKind, D::Error> {
        let s = String::deserialize(d)?;
        PolicyKind::from_name(&s).ok_or_else(|| {
            let known: Vec<_> = PolicyKind::ALL.iter().map(|p| p.name()).collect();
            serde::de::Error::custom(format!(
                "unknown token policy `{s}` (known: {})",
                known.join(", ")
            ))
        })
    }
}
