//! `[host]`: who this host is and where its identity and the cluster's topology live.
//!
//! Checks only the values themselves: whether the key or topology file exists is found when the
//! daemon opens them.

use super::section::{NoFile, OptionSpec, Section, resolve_path};
use crate::topology::valid_name;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Who this host is and where its identity and the cluster's topology live. Restart to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// This host's name in the topology file; unset = the kernel's host name (`uname -n`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The Ed25519 key written by `scored keygen`.
    pub key: PathBuf,
    /// The operator's topology file (the same file on every host).
    pub topology: PathBuf,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            name: None,
            key: PathBuf::from(crate::identity::DEFAULT_KEY_PATH),
            topology: PathBuf::from("/etc/scored/topology.toml"),
        }
    }
}

/// A `[host]` value that cannot be right.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostConfigError {
    #[error("`{0}` is not a host name (1-64 characters of A-Z a-z 0-9 . _ -)")]
    Name(String),
    #[error(transparent)]
    NoFile(#[from] NoFile),
}

impl HostConfigError {
    pub fn keys(&self) -> Vec<String> {
        match self {
            HostConfigError::Name(_) => vec!["host.name".into()],
            HostConfigError::NoFile(e) => vec![e.key.into()],
        }
    }
}

impl Section for HostConfig {
    const OPTIONS: &'static [OptionSpec] = options!(
        "host",
        HostConfig {
            name: Restart,
            key: Restart,
            topology: Restart,
        }
    );
    type Error = HostConfigError;

    fn check(&self) -> Vec<HostConfigError> {
        let mut out = Vec::new();
        if let Some(n) = &self.name
            && !valid_name(n)
        {
            out.push(HostConfigError::Name(n.clone()));
        }
        for (key, p) in [("host.key", &self.key), ("host.topology", &self.topology)] {
            if p.as_os_str().is_empty() {
                out.push(NoFile { key }.into());
            }
        }
        out
    }

    fn resolve_paths(&mut self, dir: &Path) {
        resolve_path(&mut self.key, dir);
        resolve_path(&mut self.topology, dir);
    }
}
