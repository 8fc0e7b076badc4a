//! Command-line overrides (`--set section.key=value`): what one is and how its text is read.
//!
//! Applying them to a configuration, and blaming a bad value on its override, is `file.rs`'s.

use super::option;
use std::str::FromStr;

/// A command-line override of one option: `section.key=value`. The value is read as a TOML
/// value (`true`, `30`, `"x"`, `["a", "b"]`); anything that is not valid TOML is taken as a
/// string, so `host.name=hv01` needs no quotes.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    pub key: String,
    pub value: toml::Value,
}

/// Why an override was refused before its value was looked at.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OverrideError {
    #[error("`{0}` is not of the form section.key=value")]
    NotAssignment(String),
    #[error("unknown option `{0}` (every option is listed in dist/scored.toml)")]
    UnknownOption(String),
}

impl Override {
    pub fn new(key: impl Into<String>, value: impl Into<toml::Value>) -> Self {
        Override {
            key: key.into(),
            value: value.into(),
        }
    }
}

impl FromStr for Override {
    type Err = OverrideError;
    fn from_str(s: &str) -> Result<Self, OverrideError> {
        let Some((key, raw)) = s.split_once('=') else {
            return Err(OverrideError::NotAssignment(s.to_string()));
        };
        let key = key.trim();
        if option(key).is_none() {
            return Err(OverrideError::UnknownOption(key.to_string()));
        }
        let raw = raw.trim();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        Ok(Override {
            key: key.to_string(),
            value,
        })
    }
}
