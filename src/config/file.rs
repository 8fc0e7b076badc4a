//! Reading a configuration: the TOML text into [`Config`], command-line overrides on top, then
//! each problem placed at the `file:line:col` of the value it is about (or at its override).
//!
//! What a value may be is decided by its section (`check`), not here; this file only finds the
//! text a problem points at and whether an override caused it.

use super::error::{ConfigError, ConfigErrors, Origin, Problem};
use super::overrides::{Override, OverrideError};
use super::{Config, option};
use crate::diagnostics::line_col;
use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::Path;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

impl Config {
    /// Reads and validates a configuration file, then applies command-line overrides.
    pub fn load(path: &Path, overrides: &[Override]) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                origin: Origin::File {
                    path: path.to_path_buf(),
                    line: 0,
                    col: 0,
                },
                problem: Problem::Unreadable(e),
            }])
        })?;
        Config::parse(path, &text, overrides)
    }

    /// Parses and validates configuration text read from `path` (named in errors; relative paths
    /// in the file are resolved against its directory), then applies `overrides`.
    pub fn parse(path: &Path, text: &str, overrides: &[Override]) -> Result<Config, ConfigErrors> {
        let at = |span: Option<Range<usize>>, problem: Problem| {
            let (line, col) = span.map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            ConfigError {
                origin: Origin::File {
                    path: path.to_path_buf(),
                    line,
                    col,
                },
                problem,
            }
        };
        let mut config: Config = toml::from_str(text)
            .map_err(|e| ConfigErrors(vec![at(e.span(), Problem::Syntax(Box::new(e)))]))?;
        let spans = SpanIndex::build(text);

        let mut overridden = HashSet::new();
        let mut errors = Vec::new();
        if !overrides.is_empty() {
            match config.overridden(overrides) {
                Ok(c) => config = c,
                Err(e) => return Err(ConfigErrors(vec![e])),
            }
            overridden.extend(overrides.iter().map(|o| o.key.as_str()));
        }
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }

        for problem in config.problems() {
            let keys = problem.keys();
            if let Some(key) = keys.iter().find(|k| overridden.contains(base_key(k))) {
                errors.push((
                    usize::MAX,
                    ConfigError {
                        origin: Origin::Override {
                            key: base_key(key).to_string(),
                        },
                        problem,
                    },
                ));
                continue;
            }
            let span = keys.iter().find_map(|k| spans.get(k));
            let order = span.as_ref().map(|s| s.start).unwrap_or(0);
            errors.push((order, at(span, problem)));
        }
        if errors.is_empty() {
            return Ok(config);
        }
        errors.sort_by_key(|(o, _)| *o);
        Err(ConfigErrors(errors.into_iter().map(|(_, e)| e).collect()))
    }

    /// This configuration with `overrides` applied (not yet cross-checked: [`Config::parse`]
    /// does that).
    fn overridden(&self, overrides: &[Override]) -> Result<Config, ConfigError> {
        let mut table = self.to_table();
        for o in overrides {
            let err = |problem: Problem| ConfigError {
                origin: Origin::Override { key: o.key.clone() },
                problem,
            };
            let unknown = || err(OverrideError::UnknownOption(o.key.clone()).into());
            let (section, key) = match (option(&o.key), o.key.split_once('.')) {
                (Some(_), Some(parts)) => parts,
                _ => return Err(unknown()),
            };
            let Some(toml::Value::Table(t)) = table.get_mut(section) else {
                return Err(unknown());
            };
            t.insert(key.to_string(), o.value.clone());
            // Checked after each override, so an error names the override that caused it.
            Config::from_table(table.clone())
                .map_err(|e| err(Problem::OverrideValue(Box::new(e))))?;
        }
        Ok(Config::from_table(table).expect("checked after the last override"))
    }
}

/// `placement.pinned[3]` → `placement.pinned`.
fn base_key(key: &str) -> &str {
    key.split('[').next().unwrap_or(key)
}

/// Positions of every key's value in the file, by `section.key` (and `section.key[i]` for array
/// elements), so cross-option checks can point at the text they are about.
struct SpanIndex(BTreeMap<String, Range<usize>>);

impl SpanIndex {
    fn build(text: &str) -> SpanIndex {
        let mut map = BTreeMap::new();
        if let Ok(root) = DeTable::parse(text) {
            walk(root.get_ref(), "", &mut map);
        }
        SpanIndex(map)
    }

    fn get(&self, key: &str) -> Option<Range<usize>> {
        self.0.get(key).cloned()
    }
}

fn walk(table: &DeTable<'_>, prefix: &str, out: &mut BTreeMap<String, Range<usize>>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        record(v, &path, out);
        if let DeValue::Table(t) = v.get_ref() {
            walk(t, &path, out);
        }
    }
}

fn record(v: &Spanned<DeValue<'_>>, path: &str, out: &mut BTreeMap<String, Range<usize>>) {
    out.insert(path.to_string(), v.span());
    if let DeValue::Array(items) = v.get_ref() {
        for (i, item) in items.iter().enumerate() {
            record(item, &format!("{path}[{i}]"), out);
        }
    }
}
