//! `[metrics]`: whether and where the Prometheus endpoint listens, and the limits that keep it
//! answering scrapes whatever other clients of its port do.
//!
//! Declares and checks the values only; the metrics and the endpoint are `crate::metrics`'s.

use super::section::{OptionSpec, Section, ZeroValue, at_least_one};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The Prometheus endpoint. Restart to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Address of the HTTP endpoint serving `GET /metrics`.
    pub listen: SocketAddr,
    /// Connections open at once; one more closes an older one (`metrics::server`'s rule).
    pub max_connections: u32,
    /// Time from the connection to the end of its request head (Prometheus sends it at once).
    pub header_timeout_ms: u64,
    /// Time for the client to take the answer in once its request is complete.
    pub write_timeout_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
            max_connections: 16,
            header_timeout_ms: 5_000,
            // Prometheus's default scrape timeout: an answer taken in later is thrown away.
            write_timeout_ms: 10_000,
        }
    }
}

/// A `[metrics]` value that cannot be right.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricsConfigError {
    #[error(transparent)]
    Zero(#[from] ZeroValue),
}

impl MetricsConfigError {
    pub fn keys(&self) -> Vec<String> {
        match self {
            MetricsConfigError::Zero(e) => vec![e.key.into()],
        }
    }
}

impl Section for MetricsConfig {
    const OPTIONS: &'static [OptionSpec] = options!(
        "metrics",
        MetricsConfig {
            enabled: Restart,
            listen: Restart,
            max_connections: Restart,
            header_timeout_ms: Restart,
            write_timeout_ms: Restart,
        }
    );
    type Error = MetricsConfigError;

    fn check(&self) -> Vec<MetricsConfigError> {
        [
            at_least_one("metrics.max_connections", self.max_connections.into()),
            at_least_one("metrics.header_timeout_ms", self.header_timeout_ms),
            at_least_one("metrics.write_timeout_ms", self.write_timeout_ms),
        ]
        .into_iter()
        .flatten()
        .map(Into::into)
        .collect()
    }
}
