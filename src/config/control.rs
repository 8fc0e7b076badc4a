//! `[control]`: where the local control socket (`scored status`, `plan`, `drain`, `pin`) lives.
//!
//! Declares and checks the path; serving the socket is the daemon's.

use super::section::{NoFile, OptionSpec, Section, resolve_path};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The local control socket used by `scored status`, `plan`, `drain`, `pin`. Restart to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Unix socket, created mode 0600 (root only).
    pub socket: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::from("/run/scored/control.sock"),
        }
    }
}

/// A `[control]` value that cannot be right.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlConfigError {
    #[error(transparent)]
    NoFile(#[from] NoFile),
}

impl ControlConfigError {
    pub fn keys(&self) -> Vec<String> {
        match self {
            ControlConfigError::NoFile(e) => vec![e.key.into()],
        }
    }
}

impl Section for ControlConfig {
    const OPTIONS: &'static [OptionSpec] = options!("control", ControlConfig { socket: Restart });
    type Error = ControlConfigError;

    fn check(&self) -> Vec<ControlConfigError> {
        let empty = self.socket.as_os_str().is_empty();
        empty
            .then_some(
                NoFile {
                    key: "control.socket",
                }
                .into(),
            )
            .into_iter()
            .collect()
    }

    fn resolve_paths(&mut self, dir: &Path) {
        resolve_path(&mut self.socket, dir);
    }
}
