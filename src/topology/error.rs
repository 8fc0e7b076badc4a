//! What can be wrong with a topology file, and where: each problem at its `file:line:col`, with
//! the typed error underneath when there is one; the whole list printed one line per problem.
//!
//! Names and places problems only; finding them is `file.rs`'s.

use crate::diagnostics::{write_lines, write_position};
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a topology file, at a position.
#[derive(Debug, thiserror::Error)]
pub struct TopologyError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is not at a position (e.g. the file cannot be read).
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    /// The whole sentence a person reads (it includes the cause's text, when there is one).
    pub message: String,
    /// What failed underneath, when something did.
    #[source]
    pub cause: Option<TopologyCause>,
}

/// The failure underneath a [`TopologyError`], kept for callers that look at it.
#[derive(Debug, thiserror::Error)]
pub enum TopologyCause {
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Syntax(#[from] toml::de::Error),
    #[error(transparent)]
    Address(#[from] std::net::AddrParseError),
    #[error(transparent)]
    PeerId(#[from] libp2p::identity::ParseError),
    #[error(transparent)]
    UriTemplate(#[from] UriTemplateError),
}

/// Why a `libvirt_uri` or `migration_uri` template cannot be expanded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriTemplateError {
    #[error("unclosed `{{` in URI template `{template}`")]
    Unclosed { template: String },
    #[error(
        "unknown placeholder `{{{placeholder}}}` in URI template `{template}` (known: {{name}}, {{address}})"
    )]
    UnknownPlaceholder {
        placeholder: String,
        template: String,
    },
}

impl TopologyError {
    pub(super) fn unreadable(file: &Path, e: std::io::Error) -> Self {
        TopologyError {
            file: file.to_path_buf(),
            line: 0,
            col: 0,
            message: format!("cannot read file: {e}"),
            cause: Some(e.into()),
        }
    }
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_position(f, &self.file, self.line, self.col)?;
        write!(f, ": {}", self.message)
    }
}

/// All problems found in one topology file, in file order. Never empty.
#[derive(Debug)]
pub struct TopologyErrors(pub Vec<TopologyError>);

impl TopologyErrors {
    pub(super) fn single(e: TopologyError) -> Self {
        TopologyErrors(vec![e])
    }

    pub fn first(&self) -> &TopologyError {
        &self.0[0]
    }
}

impl fmt::Display for TopologyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_lines(f, &self.0)
    }
}

// A list has no single cause: each entry keeps its own (`TopologyError::cause`).
impl std::error::Error for TopologyErrors {}
