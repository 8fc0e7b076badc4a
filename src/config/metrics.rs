//! `[metrics]`: whether and where the Prometheus endpoint listens.
//!
//! Declares the values only; the metrics themselves are `crate::metrics`'s.

use super::section::{OptionSpec, Section};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::net::SocketAddr;

/// The Prometheus endpoint. Restart to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Address of the HTTP endpoint serving `GET /metrics`.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
        }
    }
}

impl Section for MetricsConfig {
    const OPTIONS: &'static [OptionSpec] = options!(
        "metrics",
        MetricsConfig {
            enabled: Restart,
            listen: Restart,
        }
    );
    // Any socket address that parses may be listened on.
    type Error = Infallible;

    fn check(&self) -> Vec<Infallible> {
        Vec::new()
    }
}
