//! `[log]`: the log format and the `tracing` filter.
//!
//! Declares and checks the values; installing the subscriber is `crate::logging`'s.

use super::section::{OptionSpec, Section};
use serde::{Deserialize, Serialize};
use tracing_subscriber::filter::ParseError;

/// Logging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json` (one object per line). Restart to change.
    pub format: LogFormat,
    /// `tracing` filter: a level or `target=level` directives, comma-separated. Reloads on SIGHUP.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// A `[log]` value that cannot be right.
#[derive(Debug, thiserror::Error)]
pub enum LogConfigError {
    #[error("`{level}` in log level `{filter}` is not a level (one of {}; or target=level)", LEVELS.join(", "))]
    NotALevel { level: String, filter: String },
    #[error("log level is empty (e.g. \"info\" or \"info,scored=debug\")")]
    Empty,
    #[error("log level `{filter}`: {source}")]
    Filter {
        filter: String,
        #[source]
        source: ParseError,
    },
}

impl LogConfigError {
    pub fn keys(&self) -> Vec<String> {
        vec!["log.level".into()]
    }
}

impl Section for LogConfig {
    const OPTIONS: &'static [OptionSpec] = options!(
        "log",
        LogConfig {
            format: Restart,
            level: Live,
        }
    );
    type Error = LogConfigError;

    fn check(&self) -> Vec<LogConfigError> {
        check_filter(&self.level).err().into_iter().collect()
    }
}

/// Accepts what `tracing_subscriber::EnvFilter` accepts, minus the forms that are nearly always a
/// typo: a bare word is read by EnvFilter as a target with every level enabled (`infoo`).
fn check_filter(filter: &str) -> Result<(), LogConfigError> {
    let mut any = false;
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        any = true;
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            _ => directive,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(LogConfigError::NotALevel {
                level: level.to_string(),
                filter: filter.to_string(),
            });
        }
    }
    if !any {
        return Err(LogConfigError::Empty);
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|source| LogConfigError::Filter {
            filter: filter.to_string(),
            source,
        })
}
