//! What every `[section]` of the configuration is made of: its options with their reload
//! classes, its checks, its paths; and the rules several sections share (a count of at least 1,
//! a path that names a file, relative to the configuration file).
//!
//! Knows no particular section: each declares itself in its own file.

use std::path::{Path, PathBuf};

/// Whether a changed option takes effect on SIGHUP or needs a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// Applied by SIGHUP without a restart.
    Live,
    /// Read at start only; a SIGHUP that changes it is reported and otherwise ignored.
    Restart,
}

/// One option of the file: its `section.key` and how it reloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionSpec {
    pub key: &'static str,
    pub reload: Reload,
}

/// One `[section]` of the file, declared in its own file with its struct.
pub(super) trait Section {
    /// Every key of the section in file order with its reload class (built by `options!`).
    const OPTIONS: &'static [OptionSpec];
    /// What [`Section::check`] finds (`Infallible` for a section whose every value is valid);
    /// `config::Problem` wraps it.
    type Error;
    /// Every problem in this section's values. A check reads its own section only.
    fn check(&self) -> Vec<Self::Error>;
    /// Makes the section's relative file paths relative to the configuration file's directory.
    fn resolve_paths(&mut self, _dir: &Path) {}
}

/// A count or duration option set to 0 where at least 1 is needed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{} must be at least 1", short_key(.key))]
pub struct ZeroValue {
    pub key: &'static str,
}

/// Returns the problem of a count or duration `key` whose value `v` is 0.
pub(super) fn at_least_one(key: &'static str, v: u64) -> Option<ZeroValue> {
    (v == 0).then_some(ZeroValue { key })
}

/// A file option left empty.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{key}` must name a file")]
pub struct NoFile {
    pub key: &'static str,
}

/// A relative path in the file is relative to the file's directory.
pub(super) fn resolve_path(p: &mut PathBuf, dir: &Path) {
    if p.is_relative() && !p.as_os_str().is_empty() {
        *p = dir.join(&*p);
    }
}

/// `token.handoff_timeout_ms` → `handoff_timeout_ms`: messages name the key inside its section.
pub(super) fn short_key(key: &str) -> &str {
    key.split_once('.').map(|(_, k)| k).unwrap_or(key)
}
