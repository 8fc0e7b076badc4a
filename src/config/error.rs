//! What can be wrong with a configuration, and where: each problem with its origin (a position
//! in the file, or a command-line override), the whole list printed one line per problem.
//!
//! The checks themselves live with their sections; this file only names and places what they
//! find. It reads no file.

use super::control::ControlConfigError;
use super::decision::DecisionConfigError;
use super::flows::FlowsConfigError;
use super::host::HostConfigError;
use super::hypervisor::HypervisorConfigError;
use super::journal::JournalConfigError;
use super::log::LogConfigError;
use super::metrics::MetricsConfigError;
use super::migration::MigrationConfigError;
use super::overrides::OverrideError;
use super::p2p::P2pConfigError;
use super::placement::PlacementConfigError;
use super::token::TokenConfigError;
use crate::diagnostics::{syntax_message, write_lines, write_position};
use std::convert::Infallible;
use std::fmt;
use std::path::PathBuf;

/// Where a configuration problem comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A position in a file (line and column 1-based; 0 when the problem has no position).
    File {
        path: PathBuf,
        line: usize,
        col: usize,
    },
    /// A command-line override (`--set key=value`).
    Override { key: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line, col } => write_position(f, path, *line, *col),
            Origin::Override { key } => write!(f, "override `{key}`"),
        }
    }
}

/// What is wrong: the file as a whole, an override, or a section's values.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("cannot read the configuration: {0}")]
    Unreadable(#[source] std::io::Error),
    /// Not TOML, an unknown key, or a value of the wrong type (in the file's words).
    #[error("{}", syntax_message(.0.message()))]
    Syntax(#[source] Box<toml::de::Error>),
    /// An override's value that its option does not take.
    #[error("{}", .0.message().trim())]
    OverrideValue(#[source] Box<toml::de::Error>),
    #[error(transparent)]
    Override(#[from] OverrideError),
    #[error(transparent)]
    Host(#[from] HostConfigError),
    #[error(transparent)]
    Hypervisor(#[from] HypervisorConfigError),
    #[error(transparent)]
    P2p(#[from] P2pConfigError),
    #[error(transparent)]
    Token(#[from] TokenConfigError),
    #[error(transparent)]
    Decision(#[from] DecisionConfigError),
    #[error(transparent)]
    Placement(#[from] PlacementConfigError),
    #[error(transparent)]
    Migration(#[from] MigrationConfigError),
    #[error(transparent)]
    Flows(#[from] FlowsConfigError),
    #[error(transparent)]
    Metrics(#[from] MetricsConfigError),
    #[error(transparent)]
    Control(#[from] ControlConfigError),
    #[error(transparent)]
    Journal(#[from] JournalConfigError),
    #[error(transparent)]
    Log(#[from] LogConfigError),
}

// A section whose every value is valid finds nothing.
impl From<Infallible> for Problem {
    fn from(never: Infallible) -> Self {
        match never {}
    }
}

impl Problem {
    /// The `section.key`s a section's problem is about, the one to point at first (the value
    /// that is wrong, or for a conflict the key that should change). Empty for problems of the
    /// file as a whole or of an override.
    pub fn keys(&self) -> Vec<String> {
        match self {
            Problem::Unreadable(_)
            | Problem::Syntax(_)
            | Problem::OverrideValue(_)
            | Problem::Override(_) => Vec::new(),
            Problem::Host(e) => e.keys(),
            Problem::Hypervisor(e) => e.keys(),
            Problem::P2p(e) => e.keys(),
            Problem::Token(e) => e.keys(),
            Problem::Decision(e) => e.keys(),
            Problem::Placement(e) => e.keys(),
            Problem::Migration(e) => e.keys(),
            Problem::Flows(e) => e.keys(),
            Problem::Metrics(e) => e.keys(),
            Problem::Control(e) => e.keys(),
            Problem::Journal(e) => e.keys(),
            Problem::Log(e) => e.keys(),
        }
    }
}

/// One problem in the configuration, and where it is.
#[derive(Debug)]
pub struct ConfigError {
    pub origin: Origin,
    pub problem: Problem,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.problem)
    }
}

// The problem's text is already in this error's message; its cause is next in the chain.
impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.problem)
    }
}

/// All problems found, in file order, overrides last. Never empty.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn first(&self) -> &ConfigError {
        &self.0[0]
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_lines(f, &self.0)
    }
}

// A list has no single cause: each entry keeps its own.
impl std::error::Error for ConfigErrors {}
