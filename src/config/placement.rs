//! `[placement]`: the operator's constraints on where VMs run (pinned VMs, maintenance), and
//! [`VmRef`], how the configuration names a VM.
//!
//! Declares and checks the values; which VMs exist is the hypervisor's to say.

use super::section::{OptionSpec, Section};
use scored_proto::VmId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The operator's constraints on placement. Reloads on SIGHUP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementConfig {
    /// VMs that never move, by address (VM id) or libvirt domain name. Domains carrying the
    /// scored pin metadata flag are pinned as well.
    pub pinned: Vec<VmRef>,
    /// This host takes no incoming VMs, and `scored drain` may empty it.
    pub maintenance: bool,
    /// The cluster's placement rules file (anti-affinity, affinity, exclusions, windows,
    /// budgets), the same on every host. A missing file at this path is no rules.
    pub rules_file: std::path::PathBuf,
}

/// Where the rules file is unless the configuration says otherwise.
pub const DEFAULT_RULES_FILE: &str = "/etc/scored/rules.toml";

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            pinned: Vec::new(),
            maintenance: false,
            rules_file: DEFAULT_RULES_FILE.into(),
        }
    }
}

/// A VM named in the configuration: by its id (primary IPv4 address) or its libvirt name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum VmRef {
    Id(VmId),
    Name(String),
}

/// Text that names no VM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is neither a VM address (IPv4) nor a libvirt domain name")]
pub struct VmRefError(pub String);

impl FromStr for VmRef {
    type Err = VmRefError;
    fn from_str(s: &str) -> Result<Self, VmRefError> {
        if let Ok(a) = s.parse::<Ipv4Addr>() {
            return Ok(VmRef::Id(VmId::from_ipv4(a)));
        }
        // libvirt accepts almost any name but '/'; an empty or control-character name is a typo.
        if s.is_empty() || s.len() > 255 || s.contains('/') || s.chars().any(char::is_control) {
            return Err(VmRefError(s.to_string()));
        }
        Ok(VmRef::Name(s.to_string()))
    }
}

impl fmt::Display for VmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmRef::Id(id) => write!(f, "{id}"),
            VmRef::Name(n) => f.write_str(n),
        }
    }
}

impl Serialize for VmRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VmRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A `[placement]` value that cannot be right.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementConfigError {
    /// `index` and `first` are 0-based positions in `pinned`.
    #[error("`{vm}` is pinned twice (also entry {})", .first + 1)]
    PinnedTwice {
        vm: VmRef,
        index: usize,
        first: usize,
    },
}

impl PlacementConfigError {
    pub fn keys(&self) -> Vec<String> {
        match self {
            PlacementConfigError::PinnedTwice { index, .. } => {
                vec![
                    format!("placement.pinned[{index}]"),
                    "placement.pinned".into(),
                ]
            }
        }
    }
}

impl Section for PlacementConfig {
    const OPTIONS: &'static [OptionSpec] = options!(
        "placement",
        PlacementConfig {
            pinned: Live,
            maintenance: Live,
            rules_file: Live,
        }
    );
    type Error = PlacementConfigError;

    /// A relative `rules_file` is beside the configuration file, as the topology is.
    fn resolve_paths(&mut self, dir: &std::path::Path) {
        super::section::resolve_path(&mut self.rules_file, dir);
    }

    fn check(&self) -> Vec<PlacementConfigError> {
        let mut out = Vec::new();
        let mut seen: HashMap<&VmRef, usize> = HashMap::new();
        for (index, vm) in self.pinned.iter().enumerate() {
            if let Some(first) = seen.insert(vm, index) {
                out.push(PlacementConfigError::PinnedTwice {
                    vm: vm.clone(),
                    index,
                    first,
                });
            }
        }
        out
    }
}
