//! `[hypervisor]`: the local hypervisor's URI and how long one call may take.
//!
//! Checks the URI's shape only; connecting is the daemon's job.

use super::section::{OptionSpec, Section, ZeroValue, at_least_one};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The local hypervisor. `uri`: restart to change; `call_timeout_s` reloads on SIGHUP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorConfig {
    /// libvirt connection URI of this host's own hypervisor.
    pub uri: String,
    /// Seconds the daemon waits for one hypervisor call before it counts the hypervisor as not
    /// answering; a migration call gets `migration.timeout_s` on top.
    pub call_timeout_s: u64,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            uri: "qemu:///system".into(),
            call_timeout_s: 30,
        }
    }
}

impl HypervisorConfig {
    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.call_timeout_s)
    }
}

/// A `[hypervisor]` value that cannot be right.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HypervisorConfigError {
    #[error("`{0}` is not a libvirt URI (e.g. qemu:///system)")]
    Uri(String),
    #[error(transparent)]
    Zero(#[from] ZeroValue),
}

impl HypervisorConfigError {
    pub fn keys(&self) -> Vec<String> {
        match self {
            HypervisorConfigError::Uri(_) => vec!["hypervisor.uri".into()],
            HypervisorConfigError::Zero(e) => vec![e.key.into()],
        }
    }
}

impl Section for HypervisorConfig {
    const OPTIONS: &'static [OptionSpec] = options!(
        "hypervisor",
        HypervisorConfig {
            uri: Restart,
            call_timeout_s: Live,
        }
    );
    type Error = HypervisorConfigError;

    fn check(&self) -> Vec<HypervisorConfigError> {
        let mut out = Vec::new();
        if self
            .uri
            .split_once("://")
            .is_none_or(|(scheme, _)| scheme.is_empty())
        {
            out.push(HypervisorConfigError::Uri(self.uri.clone()));
        }
        out.extend(at_least_one("hypervisor.call_timeout_s", self.call_timeout_s).map(Into::into));
        out
    }
}
