//! The daemon's configuration (`/etc/scored/scored.toml`): every option with its default and unit,
//! validation with `file:line:col` errors, command-line overrides and SIGHUP reloads.
//!
//! One file per `[section]` declares together the section's struct, its defaults, the checks of
//! its values and how each of its options reloads; this file joins the sections into [`Config`].
//! `section.rs` says what a section is made of, `file.rs` reads the text (positions),
//! `overrides.rs` the command line's `--set`, and `error.rs` says what went wrong where.
//!
//! This module only reads and checks settings: it never opens the key, the topology, sockets or
//! libvirt. `dist/scored.toml` documents every option; a test keeps it equal to [`Config::default`].
//! Units are part of the key names (`_ms`, `_s`, `_mib_s`), so a value is never ambiguous.

/// The options of one section with their reload class, in file order, as `section.key` specs.
/// It names every field of the struct, so a field added without a reload class does not compile.
macro_rules! options {
    ($section:literal, $ty:ident { $($field:ident: $class:ident),* $(,)? }) => {{
        #[allow(dead_code)]
        fn every_field_has_a_reload_class(s: &$ty) {
            // An error here ("pattern requires `..`", "does not mention field") means a field
            // of the struct is missing from its section's `options!` table.
            let $ty { $($field: _),* } = s;
        }
        &[$($crate::config::OptionSpec {
            key: concat!($section, ".", stringify!($field)),
            reload: $crate::config::Reload::$class,
        }),*]
    }};
}

mod control;
mod decision;
mod error;
mod file;
mod flows;
mod host;
mod hypervisor;
mod journal;
mod log;
mod metrics;
mod migration;
mod overrides;
mod p2p;
mod placement;
mod section;
mod token;

pub use control::{ControlConfig, ControlConfigError};
pub use decision::{CostModel, DecisionConfig, DecisionConfigError, GroupMoves};
pub use error::{ConfigError, ConfigErrors, Origin, Problem};
pub use flows::{FlowsConfig, FlowsConfigError};
pub use host::{HostConfig, HostConfigError};
pub use hypervisor::{HypervisorConfig, HypervisorConfigError};
pub use journal::{JournalConfig, JournalConfigError};
pub use log::{LogConfig, LogConfigError, LogFormat};
pub use metrics::{MetricsConfig, MetricsConfigError};
pub use migration::{MigrationConfig, MigrationConfigError};
pub use overrides::{Override, OverrideError};
pub use p2p::{P2pConfig, P2pConfigError};
pub use placement::{DEFAULT_RULES_FILE, PlacementConfig, PlacementConfigError, VmRef, VmRefError};
pub use section::{NoFile, OptionSpec, Reload, ZeroValue};
pub use token::{TokenConfig, TokenConfigError};

use section::Section;

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/scored/scored.toml";

/// The whole configuration of one daemon. Every section and key may be left out: its default
/// applies. Which keys a SIGHUP reloads is in [`OPTIONS`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub host: HostConfig,
    pub hypervisor: HypervisorConfig,
    pub p2p: P2pConfig,
    pub token: TokenConfig,
    pub decision: DecisionConfig,
    pub placement: PlacementConfig,
    pub migration: MigrationConfig,
    pub flows: FlowsConfig,
    pub metrics: MetricsConfig,
    pub control: ControlConfig,
    pub journal: JournalConfig,
    pub log: LogConfig,
}

/// The sections' options in the order of [`Config`]'s fields (the order of the file).
const SECTIONS: [&[OptionSpec]; 12] = [
    HostConfig::OPTIONS,
    HypervisorConfig::OPTIONS,
    P2pConfig::OPTIONS,
    TokenConfig::OPTIONS,
    DecisionConfig::OPTIONS,
    PlacementConfig::OPTIONS,
    MigrationConfig::OPTIONS,
    FlowsConfig::OPTIONS,
    MetricsConfig::OPTIONS,
    ControlConfig::OPTIONS,
    JournalConfig::OPTIONS,
    LogConfig::OPTIONS,
];

const OPTION_COUNT: usize = {
    let (mut n, mut i) = (0, 0);
    while i < SECTIONS.len() {
        n += SECTIONS[i].len();
        i += 1;
    }
    n
};

const fn flatten<const N: usize>(parts: &[&[OptionSpec]]) -> [OptionSpec; N] {
    let mut out = [OptionSpec {
        key: "",
        reload: Reload::Restart,
    }; N];
    let (mut i, mut k) = (0, 0);
    while i < parts.len() {
        let mut j = 0;
        while j < parts[i].len() {
            out[k] = parts[i][j];
            k += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

/// Every option, in file order, gathered from the sections. Tests keep this list, the types and
/// `dist/scored.toml` in step.
pub const OPTIONS: &[OptionSpec] = &flatten::<OPTION_COUNT>(&SECTIONS);

/// Looks an option up by `section.key`.
pub fn option(key: &str) -> Option<&'static OptionSpec> {
    OPTIONS.iter().find(|o| o.key == key)
}

/// The outcome of a SIGHUP: the configuration to run with, and the changed options that were
/// not applied because they need a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct Reloaded {
    pub config: Config,
    pub needs_restart: Vec<&'static str>,
}

impl Config {
    /// How long one move of a group move may take, asked to answering: the migration's own
    /// limit, the hypervisor call's on top of it, and 30 s for the gates, the destination's
    /// re-check and the journal around it. The asker waits this long, and the host asked is
    /// given as long by its transport: the asker never gives up on a move still running.
    pub fn group_move_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.migration.timeout_s)
            + self.hypervisor.call_timeout()
            + std::time::Duration::from_secs(30)
    }

    /// What a SIGHUP with the freshly loaded `new` configuration does: options marked
    /// [`Reload::Live`] take their new values; others keep the running value and are listed.
    pub fn reload(&self, new: &Config) -> Reloaded {
        let old_t = self.to_table();
        let new_t = new.to_table();
        let mut merged = old_t.clone();
        let mut needs_restart = Vec::new();
        for o in OPTIONS {
            let (section, key) = o.key.split_once('.').expect("options are section.key");
            let get = |t: &toml::Table| t.get(section).and_then(|s| s.get(key)).cloned();
            let (before, after) = (get(&old_t), get(&new_t));
            if before == after {
                continue;
            }
            match o.reload {
                Reload::Restart => needs_restart.push(o.key),
                Reload::Live => {
                    let toml::Value::Table(s) = merged
                        .entry(section)
                        .or_insert_with(|| toml::Value::Table(Default::default()))
                    else {
                        unreachable!("sections serialize as tables")
                    };
                    match after {
                        Some(v) => s.insert(key.to_string(), v),
                        None => s.remove(key),
                    };
                }
            }
        }
        let config = Config::from_table(merged).expect("a mix of two valid configurations");
        Reloaded {
            config,
            needs_restart,
        }
    }

    /// The configuration as a TOML document (unset optional keys left out).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("every option serializes")
    }

    fn to_table(&self) -> toml::Table {
        toml::Table::try_from(self).expect("every option serializes")
    }

    fn from_table(t: toml::Table) -> Result<Config, toml::de::Error> {
        toml::Value::Table(t).try_into()
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let Config {
            host,
            hypervisor,
            p2p,
            token,
            decision,
            placement,
            migration,
            flows,
            metrics,
            control,
            journal,
            log,
        } = self;
        host.resolve_paths(dir);
        hypervisor.resolve_paths(dir);
        p2p.resolve_paths(dir);
        token.resolve_paths(dir);
        decision.resolve_paths(dir);
        placement.resolve_paths(dir);
        migration.resolve_paths(dir);
        flows.resolve_paths(dir);
        metrics.resolve_paths(dir);
        control.resolve_paths(dir);
        journal.resolve_paths(dir);
        log.resolve_paths(dir);
    }

    /// Every problem of every section, each naming the keys it concerns (most relevant first).
    fn problems(&self) -> Vec<Problem> {
        fn of<S: Section>(section: &S, out: &mut Vec<Problem>)
        where
            S::Error: Into<Problem>,
        {
            out.extend(section.check().into_iter().map(Into::into));
        }
        let Config {
            host,
            hypervisor,
            p2p,
            token,
            decision,
            placement,
            migration,
            flows,
            metrics,
            control,
            journal,
            log,
        } = self;
        let mut out = Vec::new();
        of(host, &mut out);
        of(hypervisor, &mut out);
        of(p2p, &mut out);
        of(token, &mut out);
        of(decision, &mut out);
        of(placement, &mut out);
        of(migration, &mut out);
        of(flows, &mut out);
        of(metrics, &mut out);
        of(control, &mut out);
        of(journal, &mut out);
        of(log, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_lists_its_options_together() {
        let table = Config::default().to_table();
        let mut serialized: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut listed: Vec<&str> = OPTIONS
            .iter()
            .map(|o| o.key.split_once('.').unwrap().0)
            .collect();
        listed.dedup();
        assert_eq!(listed.len(), SECTIONS.len(), "one run of keys per section");
        // The order of the file is checked against dist/scored.toml by tests/config.rs.
        listed.sort_unstable();
        serialized.sort_unstable();
        assert_eq!(listed, serialized);
    }

    #[test]
    fn every_key_checked_by_a_section_is_an_option() {
        // Every check of every section fails at once.
        let mut c = Config::default();
        c.host.name = Some("bad name".into());
        c.host.key = "".into();
        c.host.topology = "".into();
        c.hypervisor.uri = "qemu".into();
        c.hypervisor.call_timeout_s = 0;
        c.p2p.max_requests_per_peer = 0;
        c.p2p.max_inflight_per_peer_mib = c.p2p.max_inflight_mib + 1;
        c.token.handoff_timeout_ms = 0;
        c.token.regeneration_timeout_ms = Some(0);
        let d = &mut c.decision;
        d.migration_cost = -1.0;
        d.migration_cost_fraction = 2.0;
        d.return_margin_fraction = 2.0;
        d.max_candidates = 0;
        d.cooldown_window_s = 0;
        d.cooldown_base_s = d.cooldown_max_s + 1;
        d.history_hosts = 65;
        c.placement.pinned = vec![VmRef::Name("a".into()), VmRef::Name("a".into())];
        let m = &mut c.migration;
        m.max_downtime_ms = 0;
        m.stall_timeout_s = 0;
        m.max_incoming = 0;
        m.timeout_s = 0;
        m.post_copy = true;
        m.compression = crate::hypervisor::Compression::MultifdZstd;
        c.flows.sampling = 0;
        c.flows.max_entries = 0;
        c.flows.window_s = c.flows.idle_expiry_s + 1;
        c.control.socket = "".into();
        c.journal.path = "".into();
        c.log.level = "loud".into();
        let problems = c.problems();
        assert_eq!(problems.len(), 28, "{problems:#?}");
        for p in &problems {
            assert!(!p.keys().is_empty(), "{p}");
            for k in p.keys() {
                let base = k.split('[').next().unwrap();
                assert!(option(base).is_some(), "{p} names `{k}`");
            }
        }
    }

    #[test]
    fn problems_keep_their_cause() {
        use std::error::Error;
        let e = Config::load(Path::new("/nonexistent/scored.toml"), &[]).unwrap_err();
        let io = e
            .first()
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(io.map(|e| e.kind()), Some(std::io::ErrorKind::NotFound));

        let e = Config::parse(Path::new("c.toml"), "[token]\npolicy = 3\n", &[]).unwrap_err();
        assert!(matches!(e.first().problem, Problem::Syntax(_)), "{e}");

        let mut c = Config::default();
        c.log.level = "scored[=info".into();
        let problems = c.problems();
        assert!(
            matches!(problems[..], [Problem::Log(LogConfigError::Filter { .. })]),
            "{problems:?}"
        );
        assert!(problems[0].source().is_some());
    }
}
