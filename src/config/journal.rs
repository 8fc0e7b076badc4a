//! `[journal]`: where the journal of in-flight migrations, reconciled after a crash, is kept.
//!
//! Declares and checks the path; the journal itself is the daemon's.

use super::section::{NoFile, OptionSpec, Section, resolve_path};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The journal of in-flight migrations, reconciled after a crash. Restart to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    pub path: PathBuf,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: PathBuf::from("/var/lib/scored/migrations.journal"),
        }
    }
}

/// A `[journal]` value that cannot be right.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JournalConfigError {
    #[error(transparent)]
    NoFile(#[from] NoFile),
}

impl JournalConfigError {
    pub fn keys(&self) -> Vec<String> {
        match self {
            JournalConfigError::NoFile(e) => vec![e.key.into()],
        }
    }
}

impl Section for JournalConfig {
    const OPTIONS: &'static [OptionSpec] = options!("journal", JournalConfig { path: Restart });
    type Error = JournalConfigError;

    fn check(&self) -> Vec<JournalConfigError> {
        let empty = self.path.as_os_str().is_empty();
        empty
            .then_some(
                NoFile {
                    key: "journal.path",
                }
                .into(),
            )
            .into_iter()
            .collect()
    }

    fn resolve_paths(&mut self, dir: &Path) {
        resolve_path(&mut self.path, dir);
    }
}
