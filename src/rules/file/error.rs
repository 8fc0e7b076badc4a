//! What can be wrong with a rules file, and where: each problem at its `file:line:col`, with the
//! typed error underneath when there is one; the list printed one line per problem.
//!
//! Names and places problems only; finding them is `file.rs`'s.

use crate::diagnostics::{write_lines, write_position};
use std::fmt;
use std::path::PathBuf;

/// One problem in a rules file, at a position.
#[derive(Debug, thiserror::Error)]
pub struct RulesFileError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is not at a position (the file cannot be read).
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    /// The sentence a person reads.
    pub message: String,
    /// What failed underneath, when something did.
    #[source]
    pub cause: Option<RulesFileCause>,
}

/// The failure underneath a [`RulesFileError`].
#[derive(Debug, thiserror::Error)]
pub enum RulesFileCause {
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Syntax(#[from] toml::de::Error),
}

impl fmt::Display for RulesFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_position(f, &self.file, self.line, self.col)?;
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one rules file, in file order. Never empty.
#[derive(Debug)]
pub struct RulesFileErrors(pub Vec<RulesFileError>);

impl fmt::Display for RulesFileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_lines(f, &self.0)
    }
}

// A list has no single cause: each entry keeps its own.
impl std::error::Error for RulesFileErrors {}
