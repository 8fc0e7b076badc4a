//! The daemon's configuration (`/etc/scored/scored.toml`): every option with its default and unit,
//! validation with `file:line:col` errors, command-line overrides and SIGHUP reloads.
//!
//! This module only reads and checks settings: it never opens the key, the topology, sockets or
//! libvirt. `dist/scored.toml` documents every option; a test keeps it equal to [`Config::default`].
//! Units are part of the key names (`_ms`, `_s`, `_mib_s`), so a value is never ambiguous.

use crate::hypervisor::{Compression, MigrationParams};
use crate::topology::{line_col, syntax_message, valid_name, write_lines};
use libp2p::Multiaddr;
use scored_proto::{PolicyKind, VmId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

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

/// The local hypervisor. `uri`: restart to change; `call_timeout_s` reloads on SIGHUP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorConfig {
    /// libvirt connection URI of this host's own hypervisor.
    pub uri: String,
    /// Seconds the daemon waits for one hypervisor call before it counts the hypervisor as not
    /// answering; a migration call gets `migration.timeout_s` on top.
    pub call_timeout_s: u64,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            uri: "qemu:///system".into(),
            call_timeout_s: 30,
        }
    }
}

impl HypervisorConfig {
    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.call_timeout_s)
    }
}

/// The peer-to-peer transport. Restart to change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// libp2p listen address; unset = this host's `address` and `p2p_port` from the topology.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "as_display_opt",
        deserialize_with = "from_str_opt"
    )]
    pub listen: Option<Multiaddr>,
}

/// The token and its policy. All hosts must agree on these; restart to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// Which VM holds the token next. Used when this host creates or regenerates the token; a
    /// circulating token carries its own policy.
    #[serde(with = "policy_name")]
    pub policy: PolicyKind,
    /// How long the holder waits for the next host to accept the token before skipping it.
    pub handoff_timeout_ms: u64,
    /// Shortest time one round may take: a holder that ends a round sooner waits, so a quiet
    /// cluster does not spin the token (and decides on fresh rates, see `flows.window_s`).
    pub min_round_s: u64,
    /// Silence after which a lost token is regenerated; unset = derived from the expected
    /// round time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regeneration_timeout_ms: Option<u64>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            policy: PolicyKind::Distributed,
            handoff_timeout_ms: 2_000,
            min_round_s: 60,
            regeneration_timeout_ms: None,
        }
    }
}

impl TokenConfig {
    pub fn handoff_timeout(&self) -> Duration {
        Duration::from_millis(self.handoff_timeout_ms)
    }

    pub fn min_round(&self) -> Duration {
        Duration::from_secs(self.min_round_s)
    }

    pub fn regeneration_timeout(&self) -> Option<Duration> {
        self.regeneration_timeout_ms.map(Duration::from_millis)
    }
}

/// Eq. 3.2 and the gates around it. Reloads on SIGHUP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionConfig {
    /// Migration cost `c_m` of Eq. 3.2, in cost units (bytes/s × link weight): a move must
    /// gain more than this.
    pub migration_cost: f64,
    /// `c_m` as a fraction of the deciding VM's current cost; the larger of the two applies.
    pub migration_cost_fraction: f64,
    /// Decide, log and expose, but never migrate (recommend-only).
    pub dry_run: bool,
    /// Most candidate hosts asked for capacity in one decision.
    pub max_candidates: u32,
    /// When a partner's host is full, also try the other hosts in the partner's rack.
    pub rack_fallback: bool,
    /// Cooldown after a VM moves: the larger of this and the last migration's duration.
    pub cooldown_base_s: u64,
    /// The cooldown doubles for each move of the same VM within this window.
    pub cooldown_window_s: u64,
    /// Upper bound of the cooldown.
    pub cooldown_max_s: u64,
    /// Previous hosts remembered per VM.
    pub history_hosts: u32,
    /// How long a previous host is remembered.
    pub history_s: u64,
    /// Moving back to a remembered host needs a benefit of at least this fraction of the VM's
    /// current cost (on top of `c_m`), so a VM does not bounce back for a tiny gain.
    pub return_margin_fraction: f64,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        DecisionConfig {
            migration_cost: 0.0,
            migration_cost_fraction: 0.05,
            dry_run: false,
            max_candidates: 8,
            rack_fallback: true,
            cooldown_base_s: 15 * 60,
            cooldown_window_s: 24 * 3600,
            cooldown_max_s: 6 * 3600,
            history_hosts: 4,
            history_s: 24 * 3600,
            return_margin_fraction: 0.25,
        }
    }
}

impl DecisionConfig {
    /// The `c_m` that applies to a VM whose current cost (its share of Eq. 3.1) is `vm_cost`.
    pub fn effective_migration_cost(&self, vm_cost: f64) -> f64 {
        self.migration_cost
            .max(self.migration_cost_fraction * vm_cost.max(0.0))
    }
}

/// The operator's constraints on placement. Reloads on SIGHUP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementConfig {
    /// VMs that never move, by address (VM id) or libvirt domain name. Domains carrying the
    /// scored pin metadata flag are pinned as well.
    pub pinned: Vec<VmRef>,
    /// This host takes no incoming VMs, and `scored drain` may empty it.
    pub maintenance: bool,
}

/// A VM named in the configuration: by its id (primary IPv4 address) or its libvirt name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum VmRef {
    Id(VmId),
    Name(String),
}

impl FromStr for VmRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<Ipv4Addr>() {
            return Ok(VmRef::Id(VmId::from_ipv4(a)));
        }
        // libvirt accepts almost any name but '/'; an empty or control-character name is a typo.
        if s.is_empty() || s.len() > 255 || s.contains('/') || s.chars().any(char::is_control) {
            return Err(format!(
                "`{s}` is neither a VM address (IPv4) nor a libvirt domain name"
            ));
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

/// How one live migration runs. Reloads on SIGHUP (applies to the next migration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrationConfig {
    /// Bandwidth cap, MiB/s; 0 = unlimited.
    pub bandwidth_mib_s: u64,
    /// Largest acceptable downtime of the final stop-and-copy phase.
    pub max_downtime_ms: u64,
    /// Throttle the guest's vCPUs when pre-copy does not converge.
    pub auto_converge: bool,
    #[serde(with = "compression_name")]
    pub compression: Compression,
    /// Switch to post-copy when pre-copy does not converge (the VM is lost if the destination
    /// dies mid-way).
    pub post_copy: bool,
    /// Abort a migration that takes longer than this.
    pub timeout_s: u64,
    /// Abort a migration whose remaining data has not shrunk for this long.
    pub stall_timeout_s: u64,
    /// Most migrations this host accepts at the same time as destination.
    pub max_incoming: u32,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        // The hypervisor's defaults are the single source of these values.
        let p = MigrationParams::default();
        MigrationConfig {
            bandwidth_mib_s: p.bandwidth_mib_s,
            max_downtime_ms: p.max_downtime.as_millis() as u64,
            auto_converge: p.auto_converge,
            compression: p.compression,
            post_copy: p.post_copy,
            timeout_s: p.timeout.as_secs(),
            stall_timeout_s: p.stall_timeout.as_secs(),
            max_incoming: 1,
        }
    }
}

impl MigrationConfig {
    /// The parameters handed to [`crate::hypervisor::Hypervisor::migrate`].
    pub fn params(&self) -> MigrationParams {
        MigrationParams {
            bandwidth_mib_s: self.bandwidth_mib_s,
            max_downtime: Duration::from_millis(self.max_downtime_ms),
            auto_converge: self.auto_converge,
            compression: self.compression,
            post_copy: self.post_copy,
            timeout: Duration::from_secs(self.timeout_s),
            stall_timeout: Duration::from_secs(self.stall_timeout_s),
        }
    }
}

/// Traffic measurement (λ). Restart to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowsConfig {
    /// Rates are averaged over this window, long enough to ignore bursts.
    pub window_s: u64,
    /// Capture one packet in this many (1 = every packet); counts are scaled back up.
    pub sampling: u32,
    /// Most flow entries kept; the least recently seen are evicted first.
    pub max_entries: u32,
    /// A flow with no packet for this long is forgotten.
    pub idle_expiry_s: u64,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig {
            window_s: 30,
            sampling: 1,
            max_entries: 65_536,
            idle_expiry_s: 120,
        }
    }
}

impl FlowsConfig {
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_s)
    }

    pub fn idle_expiry(&self) -> Duration {
        Duration::from_secs(self.idle_expiry_s)
    }
}

/// The Prometheus endpoint. Restart to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Address of the HTTP endpoint serving `GET /metrics`.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
        }
    }
}

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

/// Logging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json` (one object per line). Restart to change.
    pub format: LogFormat,
    /// `tracing` filter: a level or `target=level` directives, comma-separated. Reloads on SIGHUP.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

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

const fn live(key: &'static str) -> OptionSpec {
    OptionSpec {
        key,
        reload: Reload::Live,
    }
}

const fn restart(key: &'static str) -> OptionSpec {
    OptionSpec {
        key,
        reload: Reload::Restart,
    }
}

/// Every option, in file order. Tests keep this list, the types above and `dist/scored.toml`
/// in step.
pub const OPTIONS: &[OptionSpec] = &[
    restart("host.name"),
    restart("host.key"),
    restart("host.topology"),
    restart("hypervisor.uri"),
    live("hypervisor.call_timeout_s"),
    restart("p2p.listen"),
    restart("token.policy"),
    restart("token.handoff_timeout_ms"),
    restart("token.min_round_s"),
    restart("token.regeneration_timeout_ms"),
    live("decision.migration_cost"),
    live("decision.migration_cost_fraction"),
    live("decision.dry_run"),
    live("decision.max_candidates"),
    live("decision.rack_fallback"),
    live("decision.cooldown_base_s"),
    live("decision.cooldown_window_s"),
    live("decision.cooldown_max_s"),
    live("decision.history_hosts"),
    live("decision.history_s"),
    live("decision.return_margin_fraction"),
    live("placement.pinned"),
    live("placement.maintenance"),
    live("migration.bandwidth_mib_s"),
    live("migration.max_downtime_ms"),
    live("migration.auto_converge"),
    live("migration.compression"),
    live("migration.post_copy"),
    live("migration.timeout_s"),
    live("migration.stall_timeout_s"),
    live("migration.max_incoming"),
    restart("flows.window_s"),
    restart("flows.sampling"),
    restart("flows.max_entries"),
    restart("flows.idle_expiry_s"),
    restart("metrics.enabled"),
    restart("metrics.listen"),
    restart("control.socket"),
    restart("journal.path"),
    restart("log.format"),
    live("log.level"),
];

/// Looks an option up by `section.key`.
pub fn option(key: &str) -> Option<&'static OptionSpec> {
    OPTIONS.iter().find(|o| o.key == key)
}

/// Where a configuration problem comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A position in a file (line and column 1-based; 0 when the problem has no position).
    File {
        path: PathBuf,
        line: usize,
        col: usize,
    },
    /// A command-line override (`--set key=value`).
    Override { key: String },
}

/// One problem in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: Origin,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File { path, line: 0, .. } => write!(f, "{}: {}", path.display(), self.message),
            Origin::File { path, line, col } => {
                write!(f, "{}:{line}:{col}: {}", path.display(), self.message)
            }
            Origin::Override { key } => write!(f, "override `{key}`: {}", self.message),
        }
    }
}

/// All problems found, in file order, overrides last. Never empty.
#[derive(Clone, Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn first(&self) -> &ConfigError {
        &self.0[0]
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_lines(f, &self.0)
    }
}

impl std::error::Error for ConfigErrors {}

/// A command-line override of one option: `section.key=value`. The value is read as a TOML
/// value (`true`, `30`, `"x"`, `["a", "b"]`); anything that is not valid TOML is taken as a
/// string, so `host.name=hv01` needs no quotes.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    pub key: String,
    pub value: toml::Value,
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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((key, raw)) = s.split_once('=') else {
            return Err(format!("`{s}` is not of the form section.key=value"));
        };
        let key = key.trim();
        if option(key).is_none() {
            return Err(unknown_option(key));
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

fn unknown_option(key: &str) -> String {
    format!("unknown option `{key}` (every option is listed in dist/scored.toml)")
}

/// The outcome of a SIGHUP: the configuration to run with, and the changed options that were
/// not applied because they need a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct Reloaded {
    pub config: Config,
    pub needs_restart: Vec<&'static str>,
}

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
                message: format!("cannot read the configuration: {e}"),
            }])
        })?;
        Config::parse(path, &text, overrides)
    }

    /// Parses and validates configuration text read from `path` (named in errors; relative paths
    /// in the file are resolved against its directory), then applies `overrides`.
    pub fn parse(path: &Path, text: &str, overrides: &[Override]) -> Result<Config, ConfigErrors> {
        let at = |span: Option<Range<usize>>, message: String| {
            let (line, col) = span.map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            ConfigError {
                origin: Origin::File {
                    path: path.to_path_buf(),
                    line,
                    col,
                },
                message,
            }
        };
        let mut config: Config = toml::from_str(text)
            .map_err(|e| ConfigErrors(vec![at(e.span(), syntax_message(e.message()))]))?;
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

        for p in config.problems() {
            if let Some(key) = p.keys.iter().find(|k| overridden.contains(base_key(k))) {
                errors.push((
                    usize::MAX,
                    ConfigError {
                        origin: Origin::Override {
                            key: base_key(key).to_string(),
                        },
                        message: p.message,
                    },
                ));
                continue;
            }
            let span = p.keys.iter().find_map(|k| spans.get(k));
            let order = span.as_ref().map(|s| s.start).unwrap_or(0);
            errors.push((order, at(span, p.message)));
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
            let err = |message: String| ConfigError {
                origin: Origin::Override { key: o.key.clone() },
                message,
            };
            let (section, key) = match (option(&o.key), o.key.split_once('.')) {
                (Some(_), Some(parts)) => parts,
                _ => return Err(err(unknown_option(&o.key))),
            };
            let Some(toml::Value::Table(t)) = table.get_mut(section) else {
                return Err(err(unknown_option(&o.key)));
            };
            t.insert(key.to_string(), o.value.clone());
            // Checked after each override, so an error names the override that caused it.
            Config::from_table(table.clone()).map_err(|e| err(e.message().trim().to_string()))?;
        }
        Ok(Config::from_table(table).expect("checked after the last override"))
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
        for p in [
            &mut self.host.key,
            &mut self.host.topology,
            &mut self.control.socket,
            &mut self.journal.path,
        ] {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = dir.join(&*p);
            }
        }
    }

    /// Every value and cross-option problem, each naming the keys it concerns (most relevant first).
    fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |keys: &[&str], message: String| {
            out.push(Problem {
                keys: keys.iter().map(|k| k.to_string()).collect(),
                message,
            })
        };

        if let Some(n) = &self.host.name
            && !valid_name(n)
        {
            bad(
                &["host.name"],
                format!("`{n}` is not a host name (1-64 characters of A-Z a-z 0-9 . _ -)"),
            );
        }
        for (key, p) in [
            ("host.key", &self.host.key),
            ("host.topology", &self.host.topology),
            ("control.socket", &self.control.socket),
            ("journal.path", &self.journal.path),
        ] {
            if p.as_os_str().is_empty() {
                bad(&[key], format!("`{key}` must name a file"));
            }
        }
        let uri = &self.hypervisor.uri;
        if uri
            .split_once("://")
            .is_none_or(|(scheme, _)| scheme.is_empty())
        {
            bad(
                &["hypervisor.uri"],
                format!("`{uri}` is not a libvirt URI (e.g. qemu:///system)"),
            );
        }

        let t = &self.token;
        positive(&mut bad, "token.handoff_timeout_ms", t.handoff_timeout_ms);
        if let Some(r) = t.regeneration_timeout_ms
            && r <= t.handoff_timeout_ms
        {
            bad(
                &["token.regeneration_timeout_ms", "token.handoff_timeout_ms"],
                format!(
                    "regeneration_timeout_ms = {r} must be longer than handoff_timeout_ms = {}: a slow hand-off would look like a lost token",
                    t.handoff_timeout_ms
                ),
            );
        }

        let d = &self.decision;
        if !d.migration_cost.is_finite() || d.migration_cost < 0.0 {
            bad(
                &["decision.migration_cost"],
                format!(
                    "migration_cost = {} must be a finite number ≥ 0",
                    d.migration_cost
                ),
            );
        }
        for (key, v) in [
            (
                "decision.migration_cost_fraction",
                d.migration_cost_fraction,
            ),
            ("decision.return_margin_fraction", d.return_margin_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                let name = key.split_once('.').map(|(_, k)| k).unwrap_or(key);
                bad(&[key], format!("{name} = {v} must be between 0 and 1"));
            }
        }
        positive(&mut bad, "decision.max_candidates", d.max_candidates as u64);
        positive(&mut bad, "decision.cooldown_window_s", d.cooldown_window_s);
        if d.cooldown_base_s > d.cooldown_max_s {
            bad(
                &["decision.cooldown_max_s", "decision.cooldown_base_s"],
                format!(
                    "cooldown_max_s = {} is shorter than cooldown_base_s = {}",
                    d.cooldown_max_s, d.cooldown_base_s
                ),
            );
        }
        if d.history_hosts > 64 {
            bad(
                &["decision.history_hosts"],
                format!("history_hosts = {} is more than 64", d.history_hosts),
            );
        }

        let mut seen: HashMap<&VmRef, usize> = HashMap::new();
        for (i, v) in self.placement.pinned.iter().enumerate() {
            if let Some(first) = seen.insert(v, i) {
                bad(
                    &[&format!("placement.pinned[{i}]"), "placement.pinned"],
                    format!("`{v}` is pinned twice (also entry {})", first + 1),
                );
            }
        }

        positive(
            &mut bad,
            "hypervisor.call_timeout_s",
            self.hypervisor.call_timeout_s,
        );
        let m = &self.migration;
        positive(&mut bad, "migration.max_downtime_ms", m.max_downtime_ms);
        positive(&mut bad, "migration.stall_timeout_s", m.stall_timeout_s);
        positive(&mut bad, "migration.max_incoming", m.max_incoming as u64);
        if m.timeout_s <= m.stall_timeout_s {
            bad(
                &["migration.timeout_s", "migration.stall_timeout_s"],
                format!(
                    "timeout_s = {} must be longer than stall_timeout_s = {}",
                    m.timeout_s, m.stall_timeout_s
                ),
            );
        }
        if m.post_copy && m.compression == Compression::MultifdZstd {
            bad(
                &["migration.post_copy", "migration.compression"],
                "post_copy cannot be combined with compression = \"multifd-zstd\" (QEMU refuses multifd with post-copy)".into(),
            );
        }

        let f = &self.flows;
        positive(&mut bad, "flows.window_s", f.window_s);
        positive(&mut bad, "flows.sampling", f.sampling as u64);
        positive(&mut bad, "flows.max_entries", f.max_entries as u64);
        if f.idle_expiry_s < f.window_s {
            bad(
                &["flows.idle_expiry_s", "flows.window_s"],
                format!(
                    "idle_expiry_s = {} is shorter than window_s = {}: flows would be forgotten before their rate is known",
                    f.idle_expiry_s, f.window_s
                ),
            );
        }

        if let Err(msg) = check_log_filter(&self.log.level) {
            bad(&["log.level"], msg);
        }
        out
    }
}

struct Problem {
    keys: Vec<String>,
    message: String,
}

fn positive(bad: &mut impl FnMut(&[&str], String), key: &str, v: u64) {
    if v == 0 {
        let name = key.split_once('.').map(|(_, k)| k).unwrap_or(key);
        bad(&[key], format!("{name} must be at least 1"));
    }
}

/// `placement.pinned[3]` → `placement.pinned`.
fn base_key(key: &str) -> &str {
    key.split('[').next().unwrap_or(key)
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Accepts what `tracing_subscriber::EnvFilter` accepts, minus the forms that are nearly always a
/// typo: a bare word is read by EnvFilter as a target with every level enabled (`infoo`).
fn check_log_filter(filter: &str) -> Result<(), String> {
    let bad_level = |l: &str| {
        format!(
            "`{l}` in log level `{filter}` is not a level (one of {}; or target=level)",
            LEVELS.join(", ")
        )
    };
    let mut any = false;
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        any = true;
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            _ => directive,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(bad_level(level));
        }
    }
    if !any {
        return Err("log level is empty (e.g. \"info\" or \"info,scored=debug\")".into());
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| format!("log level `{filter}`: {e}"))
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

fn as_display_opt<T: fmt::Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

fn from_str_opt<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: FromStr,
    T::Err: fmt::Display,
    D: Deserializer<'de>,
{
    let s = String::deserialize(d)?;
    s.parse()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
}

mod policy_name {
    use scored_proto::PolicyKind;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &PolicyKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PolicyKind, D::Error> {
        let s = String::deserialize(d)?;
        PolicyKind::from_name(&s).ok_or_else(|| {
            let known: Vec<_> = PolicyKind::ALL.iter().map(|p| p.name()).collect();
            serde::de::Error::custom(format!(
                "unknown token policy `{s}` (known: {})",
                known.join(", ")
            ))
        })
    }
}

mod compression_name {
    use crate::hypervisor::Compression;
    use serde::{Deserialize, Deserializer, Serializer};

    const NAMES: [(Compression, &str); 3] = [
        (Compression::None, "none"),
        (Compression::Xbzrle, "xbzrle"),
        (Compression::MultifdZstd, "multifd-zstd"),
    ];

    pub fn serialize<S: Serializer>(c: &Compression, s: S) -> Result<S::Ok, S::Error> {
        let name = NAMES.iter().find(|(k, _)| k == c).map(|(_, n)| *n);
        s.serialize_str(name.expect("every compression has a name"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Compression, D::Error> {
        let s = String::deserialize(d)?;
        NAMES
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(c, _)| *c)
            .ok_or_else(|| {
                let known: Vec<_> = NAMES.iter().map(|(_, n)| *n).collect();
                serde::de::Error::custom(format!(
                    "unknown compression `{s}` (known: {})",
                    known.join(", ")
                ))
            })
    }
}
