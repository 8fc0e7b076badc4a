//! The daemon configuration: the shipped `dist/scored.toml` equals the code's defaults, bad files
//! are refused with the right file:line:col, overrides and SIGHUP reloads behave as documented.

use scored::config::{Config, ConfigErrors, OPTIONS, Origin, Override, Reload, VmRef, option};
use scored::hypervisor::Compression;
use scored::proto::{PolicyKind, VmId};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const DIST: &str = include_str!("../dist/scored.toml");
const FILE: &str = "/etc/scored/scored.toml";

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(Path::new(FILE), text, &[])
}

/// Parses `text`, expects exactly the given errors as (line, col, a fragment of the message).
fn assert_errors(text: &str, expected: &[(usize, usize, &str)]) {
    let errs = match parse(text) {
        Ok(_) => panic!("accepted a bad configuration:\n{text}"),
        Err(e) => e,
    };
    let got: Vec<_> = errs
        .0
        .iter()
        .map(|e| match &e.origin {
            Origin::File { path, line, col } => {
                assert_eq!(path, Path::new(FILE));
                (*line, *col, e.problem.to_string())
            }
            other => panic!("error from {other:?}, not the file: {e}"),
        })
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "errors for\n{text}\nwere:\n{errs}"
    );
    for ((line, col, msg), (el, ec, frag)) in got.iter().zip(expected) {
        assert_eq!((*line, *col), (*el, *ec), "position of `{msg}` in\n{text}");
        assert!(msg.contains(frag), "`{msg}` should mention `{frag}`");
    }
}

/// The `#key = value` lines of the shipped file, uncommented.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if is_assignment(rest) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_assignment(s: &str) -> bool {
    s.split_once(" = ").is_some_and(|(k, _)| {
        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    })
}

/// (section.key, comment block above it) for every commented assignment in the shipped file.
fn documented_options(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut comment = Vec::new();
    for l in text.lines() {
        if let Some(s) = l.strip_prefix('[') {
            section = s.trim_end_matches(']').to_string();
            comment.clear();
        } else if let Some(rest) = l.strip_prefix('#')
            && is_assignment(rest)
        {
            let key = rest.split_once(" = ").unwrap().0;
            out.push((format!("{section}.{key}"), comment.join("\n")));
            comment.clear();
        } else if let Some(c) = l.strip_prefix("# ") {
            comment.push(c.to_string());
        } else {
            comment.clear();
        }
    }
    out
}

#[test]
fn shipped_file_as_is_is_the_defaults() {
    assert_eq!(parse(DIST).unwrap(), Config::default());
}

#[test]
fn shipped_file_uncommented_is_the_defaults() {
    let text = uncommented(DIST);
    let mut c = parse(&text).unwrap_or_else(|e| panic!("uncommented dist/scored.toml: {e}"));
    // Options without a default show an example; the example must be valid.
    let name = c.host.name.take().expect("host.name example");
    assert_eq!(name, "hv01");
    assert!(c.p2p.listen.take().is_some());
    assert!(c.token.regeneration_timeout_ms.take().is_some());
    assert_eq!(c, Config::default());
}

#[test]
fn shipped_file_documents_every_option_once_with_its_reload_class() {
    let documented = documented_options(DIST);
    let keys: Vec<&str> = documented.iter().map(|(k, _)| k.as_str()).collect();
    let expected: Vec<&str> = OPTIONS.iter().map(|o| o.key).collect();
    assert_eq!(
        keys, expected,
        "dist/scored.toml and config::OPTIONS differ"
    );
    for (key, comment) in &documented {
        let live = comment.contains("Reloads on SIGHUP.");
        let restart = comment.contains("Restart to change.");
        match option(key).unwrap().reload {
            Reload::Live => assert!(live && !restart, "{key} reloads live:\n{comment}"),
            Reload::Restart => assert!(restart && !live, "{key} needs a restart:\n{comment}"),
        }
    }
}

#[test]
fn options_list_matches_the_types() {
    // Every key the default configuration serializes is listed; the listed keys that are not
    // serialized are exactly the optional ones (no default).
    let table: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
    let mut serialized = BTreeSet::new();
    for (section, keys) in &table {
        for key in keys.as_table().unwrap().keys() {
            serialized.insert(format!("{section}.{key}"));
        }
    }
    let listed: BTreeSet<String> = OPTIONS.iter().map(|o| o.key.to_string()).collect();
    let optional: BTreeSet<String> = listed.difference(&serialized).cloned().collect();
    assert!(
        serialized.is_subset(&listed),
        "{serialized:?} vs {listed:?}"
    );
    assert_eq!(
        optional,
        ["host.name", "p2p.listen", "token.regeneration_timeout_ms"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}

#[test]
fn a_full_file_is_read() {
    let text = r#"
[host]
name = "hv07"
key = "keys/host.key"
[token]
policy = "load-aware"
handoff_timeout_ms = 500
regeneration_timeout_ms = 1500
[decision]
migration_cost = 12.5
dry_run = true
[placement]
pinned = ["10.0.0.7", "db-primary"]
maintenance = true
[migration]
compression = "xbzrle"
post_copy = true
bandwidth_mib_s = 400
[p2p]
listen = "/ip4/10.0.0.7/tcp/7070"
[metrics]
listen = "127.0.0.1:9100"
[log]
format = "json"
level = "info,scored::daemon=debug"
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.host.name.as_deref(), Some("hv07"));
    assert_eq!(c.host.key, PathBuf::from("/etc/scored/keys/host.key"));
    assert_eq!(c.token.policy, PolicyKind::LoadAware);
    assert_eq!(
        c.token.regeneration_timeout(),
        Some(std::time::Duration::from_millis(1500))
    );
    assert_eq!(
        c.placement.pinned,
        vec![
            VmRef::Id(VmId::from_ipv4("10.0.0.7".parse().unwrap())),
            VmRef::Name("db-primary".into())
        ]
    );
    let p = c.migration.params();
    assert_eq!(p.compression, Compression::Xbzrle);
    assert!(p.post_copy);
    assert_eq!(p.bandwidth_mib_s, 400);
    assert_eq!(
        c.p2p.listen.as_ref().unwrap().to_string(),
        "/ip4/10.0.0.7/tcp/7070"
    );
    assert_eq!(c.metrics.listen, "127.0.0.1:9100".parse().unwrap());
    // Round trip: what the daemon would print with --print-config reads back the same.
    assert_eq!(parse(&c.to_toml()).unwrap(), c);
}

#[test]
fn defaults_match_the_hypervisor_defaults() {
    assert_eq!(
        Config::default().migration.params(),
        scored::hypervisor::MigrationParams::default()
    );
}

#[test]
fn effective_migration_cost_is_the_larger_threshold() {
    let mut d = Config::default().decision;
    d.migration_cost = 10.0;
    d.migration_cost_fraction = 0.1;
    assert_eq!(d.effective_migration_cost(50.0), 10.0);
    assert_eq!(d.effective_migration_cost(500.0), 50.0);
}

#[test]
fn unknown_keys_are_refused_where_they_stand() {
    assert_errors(
        "[decision]\ndry_run = true\nmigration_costs = 1.0\n",
        &[(3, 1, "unknown key `migration_costs`")],
    );
    assert_errors(
        "[tokn]\npolicy = \"global\"\n",
        &[(1, 2, "unknown key `tokn` (allowed here: host, hypervisor")],
    );
    assert_errors("verbose = true\n", &[(1, 1, "unknown key `verbose`")]);
    assert_errors(
        "[metrics]\n  listen = \"127.0.0.1:1\"\n  path = \"/m\"\n",
        &[(
            3,
            3,
            "unknown key `path` (allowed here: enabled, listen, max_connections, header_timeout_ms, write_timeout_ms)",
        )],
    );
}

#[test]
fn wrong_types_and_names_point_at_the_value() {
    assert_errors(
        "[token]\nhandoff_timeout_ms = \"2s\"\n",
        &[(2, 22, "invalid type: string \"2s\", expected u64")],
    );
    assert_errors(
        "[token]\npolicy = \"roundrobin\"\n",
        &[(
            2,
            10,
            "unknown token policy `roundrobin` (known: round-robin, global, distributed, load-aware)",
        )],
    );
    assert_errors(
        "[migration]\ncompression = \"zstd\"\n",
        &[(2, 15, "unknown compression `zstd`")],
    );
    assert_errors("[flows]\nsampling = -1\n", &[(2, 12, "invalid value")]);
    assert_errors(
        "[metrics]\nlisten = \"0.0.0.0\"\n",
        &[(2, 10, "invalid socket address")],
    );
    assert_errors(
        "[p2p]\nlisten = \"10.0.0.1:7070\"\n",
        &[(2, 10, "`10.0.0.1:7070`")],
    );
    assert_errors(
        "[log]\nformat = \"xml\"\n",
        &[(2, 10, "unknown variant `xml`")],
    );
}

#[test]
fn syntax_errors_have_positions() {
    assert_errors("[decision]\ndry_run = tru\n", &[(2, 11, "")]);
    assert_errors(
        "[token]\npolicy = \"global\"\npolicy = \"global\"\n",
        &[(3, 1, "duplicate key")],
    );
}

#[test]
fn out_of_range_values_are_refused_at_their_value() {
    assert_errors(
        "[decision]\nmigration_cost_fraction = 1.5\n",
        &[(
            2,
            27,
            "migration_cost_fraction = 1.5 must be between 0 and 1",
        )],
    );
    assert_errors(
        "[decision]\nmigration_cost = -3.0\n",
        &[(2, 18, "must be a finite number ≥ 0")],
    );
    assert_errors(
        "[migration]\nmax_incoming = 0\n",
        &[(2, 16, "max_incoming must be at least 1")],
    );
    assert_errors(
        "[metrics]\nmax_connections = 0\nwrite_timeout_ms = 0\n",
        &[
            (2, 19, "max_connections must be at least 1"),
            (3, 20, "write_timeout_ms must be at least 1"),
        ],
    );
    assert_errors(
        "[host]\nname = \"hv 07\"\n",
        &[(2, 8, "`hv 07` is not a host name")],
    );
    assert_errors(
        "[hypervisor]\nuri = \"qemu/system\"\n",
        &[(2, 7, "is not a libvirt URI")],
    );
    assert_errors(
        "[log]\nlevel = \"infoo\"\n",
        &[(2, 9, "`infoo` in log level `infoo` is not a level")],
    );
    assert_errors(
        "[log]\nlevel = \"scored=verbose\"\n",
        &[(2, 9, "`verbose`")],
    );
}

#[test]
fn cross_option_conflicts_point_at_the_key_written() {
    // Both written: the first key named.
    assert_errors(
        "[decision]\ncooldown_base_s = 7200\ncooldown_max_s = 3600\n",
        &[(
            3,
            18,
            "cooldown_max_s = 3600 is shorter than cooldown_base_s = 7200",
        )],
    );
    // Only the base written: the conflict with the default maximum is reported there.
    assert_errors(
        "[decision]\ncooldown_base_s = 86400\n",
        &[(
            2,
            19,
            "cooldown_max_s = 21600 is shorter than cooldown_base_s = 86400",
        )],
    );
    assert_errors(
        "[token]\nhandoff_timeout_ms = 5000\nregeneration_timeout_ms = 4000\n",
        &[(3, 27, "must be longer than handoff_timeout_ms = 5000")],
    );
    assert_errors(
        "[migration]\ncompression = \"multifd-zstd\"\npost_copy = true\n",
        &[(3, 13, "post_copy cannot be combined")],
    );
    assert_errors(
        "[placement]\npinned = [\"10.0.0.1\", \"web\",\n  \"10.0.0.1\"]\n",
        &[(3, 3, "`10.0.0.1` is pinned twice (also entry 1)")],
    );
    assert_errors(
        "[flows]\nwindow_s = 300\n",
        &[(2, 12, "idle_expiry_s = 120 is shorter than window_s = 300")],
    );
}

#[test]
fn all_problems_are_reported_in_file_order() {
    let text = "[log]\nlevel = \"loud\"\n[migration]\nmax_downtime_ms = 0\n[decision]\nreturn_margin_fraction = 2.0\n";
    assert_errors(
        text,
        &[
            (2, 9, "`loud`"),
            (4, 19, "max_downtime_ms must be at least 1"),
            (6, 26, "return_margin_fraction = 2 must be between 0 and 1"),
        ],
    );
    let shown = parse(text).unwrap_err().to_string();
    assert!(
        shown.starts_with("/etc/scored/scored.toml:2:9: "),
        "{shown}"
    );
    assert_eq!(shown.lines().count(), 3);
}

#[test]
fn unreadable_file_names_the_file() {
    let e = Config::load(Path::new("/nonexistent/scored.toml"), &[]).unwrap_err();
    let s = e.to_string();
    assert!(
        s.starts_with("/nonexistent/scored.toml: cannot read the configuration"),
        "{s}"
    );
}

#[test]
fn overrides_win_over_the_file() {
    let file = "[decision]\ndry_run = false\nmigration_cost = 3.0\n";
    let overrides: Vec<Override> = [
        "decision.dry_run=true",
        "host.name=hv03",
        "token.policy=global",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let c = Config::parse(Path::new(FILE), file, &overrides).unwrap();
    assert!(c.decision.dry_run);
    assert_eq!(c.decision.migration_cost, 3.0);
    assert_eq!(c.host.name.as_deref(), Some("hv03"));
    assert_eq!(c.token.policy, PolicyKind::Global);

    let list: Override = "placement.pinned=[\"10.1.1.1\", \"web\"]".parse().unwrap();
    let c = Config::parse(Path::new(FILE), "", &[list]).unwrap();
    assert_eq!(c.placement.pinned.len(), 2);
}

#[test]
fn bad_overrides_name_the_override() {
    assert!(
        "decision.dryrun=true"
            .parse::<Override>()
            .unwrap_err()
            .to_string()
            .contains("unknown option `decision.dryrun`")
    );
    assert!("dry_run".parse::<Override>().is_err());

    let check = |o: Override, fragment: &str| {
        let e = Config::parse(Path::new(FILE), "", std::slice::from_ref(&o)).unwrap_err();
        assert_eq!(
            e.first().origin,
            Origin::Override { key: o.key.clone() },
            "{e}"
        );
        assert!(e.to_string().contains(fragment), "{e}");
    };
    check(
        "token.policy=fastest".parse().unwrap(),
        "unknown token policy",
    );
    check(
        "decision.dry_run=maybe".parse().unwrap(),
        "expected a boolean",
    );
    // A value that is fine alone but conflicts with the file's defaults is blamed on the override.
    check(
        "decision.cooldown_base_s=999999".parse().unwrap(),
        "cooldown_max_s = 21600 is shorter",
    );
    // Built in code (as `scored run` flags will be), the key is still checked.
    check(Override::new("decision.nope", true), "unknown option");
}

#[test]
fn sighup_applies_live_options_and_lists_the_others() {
    let old = parse("[decision]\ndry_run = false\n[token]\npolicy = \"global\"\n").unwrap();
    let new = parse(
        "[decision]\ndry_run = true\nmigration_cost = 5.0\n[token]\npolicy = \"round-robin\"\n[log]\nlevel = \"debug\"\nformat = \"json\"\n[host]\nname = \"renamed\"\n",
    )
    .unwrap();
    let r = old.reload(&new);
    assert!(r.config.decision.dry_run);
    assert_eq!(r.config.decision.migration_cost, 5.0);
    assert_eq!(r.config.log.level, "debug");
    assert_eq!(r.config.token.policy, PolicyKind::Global);
    assert_eq!(r.config.host.name, None);
    assert_eq!(r.config.log.format, scored::config::LogFormat::Text);
    assert_eq!(
        r.needs_restart,
        vec!["host.name", "token.policy", "log.format"]
    );

    let same = old.reload(&old.clone());
    assert_eq!(same.config, old);
    assert!(same.needs_restart.is_empty());
}

#[test]
fn relative_paths_follow_the_file() {
    let c = Config::parse(
        Path::new("/srv/cluster/scored.toml"),
        "[host]\ntopology = \"topo.toml\"\n[journal]\npath = \"/var/x.journal\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.host.topology, PathBuf::from("/srv/cluster/topo.toml"));
    assert_eq!(c.journal.path, PathBuf::from("/var/x.journal"));
}

#[test]
fn config_check_command_reports_positions_and_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_scored");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("scored.toml");
    std::fs::write(&bad, "[token]\npolicy = \"fastest\"\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("{}:2:10: unknown token policy", bad.display())),
        "{err}"
    );

    let dist = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/scored.toml");
    let out = std::process::Command::new(bin)
        .args(["config", "print", dist, "--set", "decision.dry_run=true"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let c = parse(&printed).unwrap();
    assert!(c.decision.dry_run);
    assert_eq!(
        Config {
            decision: scored::config::DecisionConfig {
                dry_run: false,
                ..c.decision.clone()
            },
            ..c
        },
        Config::default()
    );
}
