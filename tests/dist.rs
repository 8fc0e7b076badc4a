//! What `dist/` ships to operators: the systemd unit passes `systemd-analyze verify` and keeps its
//! hardening, the Prometheus rules and config pass promtool (with rule unit tests), the
//! Grafana dashboard and alerts use only metrics that scored exports, and the example rules file
//! is valid for the example topology and shows every kind of rule.

mod support;

use prometheus_client::registry::Registry;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::openmetrics;

const UNIT: &str = include_str!("../dist/systemd/scored.service");
const INSTALLED_BINARY: &str = "/usr/bin/scored";

fn dist(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist")
        .join(path)
}

/// Runs a tool the test needs; a missing tool fails the test with how to get it.
fn run(tool: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{tool}` ({e}): scripts/install-deps.sh installs it")
        })
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The unit with its binary pointed at the one cargo built, written into a temporary directory:
/// `systemd-analyze verify` checks that the executables exist.
fn unit_copy(unit: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let built = env!("CARGO_BIN_EXE_scored");
    let text = unit.replace(INSTALLED_BINARY, built);
    let path = dir.path().join("scored.service");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn directive<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn systemd_unit_passes_verify() {
    assert_eq!(
        directive(UNIT, "ExecStart"),
        vec![format!("{INSTALLED_BINARY} run --config /etc/scored/scored.toml").as_str()]
    );
    let (dir, path) = unit_copy(UNIT);
    let out = run(
        "systemd-analyze",
        &["verify", path.to_str().unwrap()],
        dir.path(),
    );
    // verify exits 0 even for unknown keys it ignores; any message at all is a finding.
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).trim(), "", "systemd-analyze verify complained");
}

#[test]
fn systemd_verify_catches_a_broken_unit() {
    for (from, to, finding) in [
        ("Restart=on-failure", "Restart=sometimes", "restart"),
        ("WatchdogSec=30s", "WatchdogSecs=30s", "Unknown key"),
        (
            INSTALLED_BINARY,
            "/nonexistent/scored",
            "/nonexistent/scored",
        ),
    ] {
        let broken = UNIT.replace(from, to);
        assert_ne!(broken, UNIT, "{from} not in the unit");
        let (dir, path) = if from == INSTALLED_BINARY {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("scored.service");
            std::fs::write(&path, &broken).unwrap();
            (dir, path)
        } else {
            unit_copy(&broken)
        };
        let out = run(
            "systemd-analyze",
            &["verify", path.to_str().unwrap()],
            dir.path(),
        );
        assert!(
            text(&out).contains(finding),
            "verify missed `{to}`: {}",
            text(&out)
        );
    }
}

#[test]
fn systemd_unit_is_a_hardened_notify_service() {
    let one = |key: &str| {
        let v = directive(UNIT, key);
        assert_eq!(v.len(), 1, "{key} = {v:?}");
        v[0]
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("NotifyAccess"), "main");
    assert!(one("WatchdogSec").ends_with('s'));
    // Capture needs CAP_NET_RAW and AF_PACKET; libvirt's socket must stay reachable.
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_RAW");
    let families = one("RestrictAddressFamilies");
    for f in ["AF_UNIX", "AF_INET", "AF_INET6", "AF_PACKET"] {
        assert!(families.split(' ').any(|x| x == f), "{f} missing");
    }
    assert_eq!(one("ReadWritePaths"), "-/run/libvirt");
    assert_eq!(one("ProtectSystem"), "strict");
    // The control socket and journal live where the shipped configuration says.
    let defaults = scored::config::Config::default();
    assert_eq!(
        defaults.control.socket.parent().unwrap(),
        Path::new("/run").join(one("RuntimeDirectory"))
    );
    assert_eq!(
        defaults.journal.path.parent().unwrap(),
        Path::new("/var/lib").join(one("StateDirectory"))
    );
    assert_eq!(
        Path::new(scored::config::DEFAULT_PATH).parent().unwrap(),
        Path::new("/etc").join(one("ConfigurationDirectory"))
    );

    let (dir, path) = unit_copy(UNIT);
    let out = run(
        "systemd-analyze",
        &["security", "--offline=true", path.to_str().unwrap()],
        dir.path(),
    );
    let report = text(&out);
    let level: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for scored.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    // systemd rates 0-10; below 4 is "OK". The unit scored 1.9 when written.
    assert!(level <= 3.0, "exposure {level}:\n{report}");
}

/// dist/rules.toml, checked by `scored rules check` against the testbed topology its comments
/// are written for, holds an example of every kind of rule an operator can state.
#[test]
fn example_rules_file_is_valid_and_shows_every_kind_of_rule() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let topology = root.join("topology/testbed.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_scored"))
        .args(["rules", "check"])
        .arg(dist("rules.toml"))
        .arg("--topology")
        .arg(&topology)
        .output()
        .unwrap();
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for line in [
        "groups      3",
        "anti-affinity, scope host: db-main (2 listed)",
        "anti-affinity, scope rack: etcd (3 listed)",
        "affinity, scope aggregation: shop (2 listed)",
        "exclusions  2",
        "db-off-agg2: group db-main never on 1 host(s)",
        "batch-not-on-hv1: 10.77.3.7, batch-7 never on 1 host(s)",
        "windows     3",
        "weeknights: mon-fri 22:00-06:00 Europe/London, 3 host(s)",
        "site-b-nights: every day 01:00-05:00 America/New_York, 1 host(s)",
        "budget      per VM per day: 4; per host per hour: 6",
        "repair      off",
    ] {
        assert!(shown.contains(line), "`{line}` missing from:\n{shown}");
    }
    // The library reads it the same way the daemon will.
    let topo = scored::topology::Topology::load(&topology).unwrap();
    let rules = scored::rules::file::load(&dist("rules.toml"), &topo).unwrap();
    let hv4 = topo.host_by_name("hv4").unwrap().id;
    let hv1 = topo.host_by_name("hv1").unwrap().id;
    assert!(rules.windows.iter().any(|w| w.applies_to(hv4)));
    assert!(rules.windows.iter().filter(|w| w.applies_to(hv1)).count() == 2);
    // The daemon's default path is where the package documents the file.
    assert_eq!(scored::config::DEFAULT_RULES_FILE, "/etc/scored/rules.toml");
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = dist("prometheus");
    let out = run("promtool", &["check", "rules", "alerts.yml"], &dir);
    assert!(out.status.success(), "{}", text(&out));
    let out = run("promtool", &["test", "rules", "alerts.test.yml"], &dir);
    assert!(out.status.success(), "{}", text(&out));
    let out = run("promtool", &["check", "config", "prometheus.yml"], &dir);
    assert!(out.status.success(), "{}", text(&out));
}

/// Every sample name a query may use: scored's, the process collector's, libp2p's, and the
/// `up` series Prometheus adds.
fn exported_names() -> (HashSet<String>, BTreeSet<String>) {
    let mut r = Registry::default();
    let levels = ["rack", "aggregation", "core"].map(String::from);
    let _m = scored::metrics::Metrics::register(&mut r, &levels);
    // The p2p layer's own families, registered beside them as `scored run` does.
    scored::p2p::P2pMetrics::default().register(&mut r);
    // libp2p's metrics as the daemon registers them (`Libp2pPeers::start_observed`).
    let _p2p = libp2p::metrics::Metrics::new(r.sub_registry_with_prefix("scored"));
    let e = openmetrics::check(&scored::metrics::encode(&r)).unwrap();
    let mut names = e.sample_names();
    names.insert("up".into());
    // The bandwidth family the swarm builder wraps around the transport has no sample (and so
    // no line) before the first byte; tests/daemon_prometheus.rs queries it from a live cluster.
    names.insert("scored_libp2p_bandwidth_bytes_total".into());
    let scored_families = e
        .families
        .keys()
        // libp2p's many families are there to query; only its bandwidth is on the dashboard.
        .filter(|f| f.starts_with("scored_") && !f.starts_with("scored_libp2p_"))
        .cloned()
        .collect();
    (names, scored_families)
}

/// The `expr:` values of a Prometheus rules file (single-line or `|` blocks).
fn rule_expressions(yaml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(rest) = l.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest == "|" || rest == ">" {
            let indent = l.len() - l.trim_start().len();
            let mut block = String::new();
            while let Some(next) = lines.peek() {
                if next.trim().is_empty() || next.len() - next.trim_start().len() > indent {
                    block.push_str(next.trim());
                    block.push(' ');
                    lines.next();
                } else {
                    break;
                }
            }
            out.push(block);
        } else {
            out.push(rest.to_string());
        }
    }
    out
}

fn unknown_names(exprs: &[String], known: &HashSet<String>) -> Vec<String> {
    exprs
        .iter()
        .flat_map(|e| {
            openmetrics::metric_names_in(e)
                .into_iter()
                .filter(|n| !known.contains(n))
                .map(move |n| format!("{n} in `{e}`"))
        })
        .collect()
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let (known, _) = exported_names();
    let rules = std::fs::read_to_string(dist("prometheus/alerts.yml")).unwrap();
    let exprs = rule_expressions(&rules);
    assert_eq!(exprs.len(), rules.matches("- alert:").count());
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("scored_migrations_aborted_total"))
    );
    assert_eq!(unknown_names(&exprs, &known), Vec::<String>::new());
    // The check itself can fail.
    assert_eq!(
        unknown_names(&["rate(scored_token_passes[5m])".to_string()], &known).len(),
        1
    );
}

#[test]
fn grafana_dashboard_is_valid_and_uses_only_exported_metrics() {
    let text = std::fs::read_to_string(dist("grafana/scored.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(d["uid"], "scored");
    let panels = d["panels"].as_array().unwrap();
    let mut ids = HashSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        let pos = &p["gridPos"];
        assert!(pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap() <= 24);
        if p["type"] == "row" {
            continue;
        }
        assert!(!p["title"].as_str().unwrap().is_empty());
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    let (known, scored_families) = exported_names();
    assert_eq!(unknown_names(&exprs, &known), Vec::<String>::new());

    // The host picker lists hosts from a metric that exists.
    let var = &d["templating"]["list"][1]["query"]["query"];
    let metric = var
        .as_str()
        .and_then(|q| q.strip_prefix("label_values("))
        .and_then(|q| q.split(',').next())
        .unwrap();
    assert!(known.contains(metric), "{metric}");

    // Every scored family is on the dashboard somewhere.
    let all = format!("{} {metric}", exprs.join(" "));
    let missing: Vec<_> = scored_families
        .iter()
        .filter(|f| !all.contains(f.as_str()))
        .collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}
