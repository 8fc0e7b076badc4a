//! `dist/systemd/scored.service` under a real systemd as PID 1: a Debian 12 root file system
//! (debootstrap, cached under target/tmp) booted with `systemd-nspawn` in its own network
//! namespace, the unit and the binary bind-mounted in unchanged. A probe unit inside drives the
//! service the way an operator does — start, status, reload, a crash, stop — and writes what
//! systemd says into a directory the test reads after the container powered off.
//!
//! What this shows that `systemd-analyze verify` cannot: `Type=notify` start completes only on
//! READY=1, the watchdog is fed (a 2 s watchdog over 6 s does not kill it), the hardening
//! (ProtectSystem=strict, the capability bounding set, the system-call filter,
//! MemoryDenyWriteExecute…) leaves the daemon able to run, `Restart=on-failure` brings it back
//! after SIGKILL, and SIGTERM ends it cleanly with STOPPING=1 and status 0.
//!
//! Needs root (CI runs as root); without it the test says why and returns.

mod support;

use scored::hypervisor::memory::{MemoryCluster, synthetic_vm};
use scored::topology::{HostId, Topology};
use scored_proto::VmId;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::host::is_root;

const SUITE: &str = "bookworm";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The Debian root file system, built once and reused (a few hundred MB; a minute to build).
fn rootfs() -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("systemd-rootfs");
    let root = base.join(SUITE);
    if root.join("usr/lib/systemd/systemd").exists() && root.join(".complete").exists() {
        return root;
    }
    let partial = base.join(format!("{SUITE}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&base).unwrap();
    let mirror = std::env::var("SCORED_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    eprintln!("building the container root file system from {mirror} (once)");
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus,libvirt0",
            SUITE,
        ])
        .arg(&partial)
        .arg(&mirror));
    std::fs::write(partial.join(".complete"), "").unwrap();
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&partial, &root).unwrap();
    root
}

const TOPOLOGY: &str = r#"[levels]
names = ["rack"]
weights = [1.0]

[defaults]
max_vms = 8
memory_mib = 16384

[[host]]
name = "hv1"
path = ["tor1"]
address = "127.0.0.1"
p2p_port = 7070
"#;

/// The probe: drives the service like an operator and records what systemd says.
const PROBE: &str = r#"#!/bin/sh
out=/srv/out
show() {
  echo "== $1"
  systemctl show scored -p ActiveState -p SubState -p Result -p NRestarts -p ExecMainStatus \
    -p StatusText -p WatchdogUSec -p MainPID
}
{
  install -d -m 0700 /var/lib/scored
  cp /etc/scored/cluster.json /var/lib/scored/cluster.json
  started=$(date +%s%N)
  systemctl start scored; echo "start rc=$?"
  echo "start took ms=$(( ($(date +%s%N) - started) / 1000000 ))"
  show started
  scored status --json > $out/status.json 2>&1; echo "status rc=$?"
  sleep 6
  show watchdog
  systemctl reload scored; echo "reload rc=$?"
  sleep 1
  show reloaded
  systemctl kill -s KILL scored; echo "kill rc=$?"
  for i in $(seq 1 30); do
    sleep 1
    [ "$(systemctl show scored -p NRestarts --value)" = 1 ] && \
      [ "$(systemctl is-active scored)" = active ] && break
  done
  show restarted
  systemctl stop scored; echo "stop rc=$?"
  show stopped
  journalctl -u scored --no-pager -o cat > $out/journal.txt 2>&1
} > $out/result.txt 2>&1
echo done > $out/done
systemctl poweroff
"#;

const PROBE_UNIT: &str = "[Unit]\nDescription=drives scored.service for the test\nAfter=multi-user.target\n\n\
[Service]\nType=oneshot\nExecStart=/usr/local/bin/scored-probe\n";

/// Test-only timings: a short watchdog, a quick restart.
const DROP_IN: &str = "[Service]\nWatchdogSec=2s\nRestartSec=1s\n";

/// `key = value` lines of one `== label` section of the probe's output.
fn section<'a>(result: &'a str, label: &str) -> Vec<(&'a str, &'a str)> {
    result
        .split("== ")
        .find(|s| s.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` section in:\n{result}"))
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once('='))
        .collect()
}

fn prop<'a>(props: &[(&'a str, &'a str)], key: &str) -> &'a str {
    props
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no {key} in {props:?}"))
}

#[test]
fn the_unit_runs_under_real_systemd() {
    if !is_root() {
        eprintln!("skipped: systemd-nspawn needs root (CI runs as root)");
        return;
    }
    let root = rootfs();
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let out = dir.path().join("out");
    let units = dir.path().join("units");
    for d in [&etc, &out, &units] {
        std::fs::create_dir_all(d).unwrap();
    }

    // One host; the simulated hypervisor's cluster file holds its two VMs and their traffic.
    let key = scored::identity::generate(&etc.join("host.key"), false).unwrap();
    let topology = format!("{TOPOLOGY}peer_id = \"{}\"\n", key.public().to_peer_id());
    std::fs::write(etc.join("topology.toml"), &topology).unwrap();
    let topo = Topology::parse(Path::new("topology.toml"), &topology).unwrap();
    let cluster = MemoryCluster::new(&topo);
    let (a, b) = (VmId(0x0a00_0001), VmId(0x0a00_0002));
    cluster.add_vm(HostId(0), synthetic_vm(a, 512)).unwrap();
    cluster.add_vm(HostId(0), synthetic_vm(b, 512)).unwrap();
    cluster
        .save_shared(&etc.join("cluster.json"), &[(a, b, 1e5)])
        .unwrap();
    std::fs::write(
        etc.join("scored.toml"),
        "[host]\nname = \"hv1\"\n\n[hypervisor]\nuri = \"sim+file:///var/lib/scored/cluster.json\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:9464\"\n",
    )
    .unwrap();
    std::fs::write(units.join("scored-probe"), PROBE).unwrap();
    std::fs::set_permissions(
        units.join("scored-probe"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(units.join("scored-probe.service"), PROBE_UNIT).unwrap();
    std::fs::create_dir_all(units.join("scored.service.d")).unwrap();
    std::fs::write(units.join("scored.service.d/test.conf"), DROP_IN).unwrap();

    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bind_ro = |from: &Path, to: &str| format!("--bind-ro={}:{to}", from.display());
    let mut nspawn = Command::new("systemd-nspawn");
    nspawn
        .args([
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--private-network",
        ])
        .args(["--volatile=overlay", "--console=pipe"])
        .arg(format!("--directory={}", root.display()))
        .arg(format!("--machine=scored-test-{}", std::process::id()))
        .arg(bind_ro(
            Path::new(env!("CARGO_BIN_EXE_scored")),
            "/usr/bin/scored",
        ))
        .arg(bind_ro(
            &manifest.join("dist/systemd/scored.service"),
            "/etc/systemd/system/scored.service",
        ))
        .arg(bind_ro(
            &units.join("scored.service.d"),
            "/etc/systemd/system/scored.service.d",
        ))
        .arg(bind_ro(
            &units.join("scored-probe.service"),
            "/etc/systemd/system/scored-probe.service",
        ))
        .arg(bind_ro(
            &units.join("scored-probe"),
            "/usr/local/bin/scored-probe",
        ))
        .arg(bind_ro(&etc, "/etc/scored"))
        .arg(format!("--bind={}:/srv/out", out.display()))
        .args(["--boot", "--", "systemd.wants=scored-probe.service"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = nspawn.spawn().expect("systemd-nspawn");
    // Bounded: the probe takes about 15 s; a container that hangs is shut down, then killed.
    let start = Instant::now();
    let limit = Duration::from_secs(240);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > limit {
            // SIGTERM asks nspawn to shut the container down; SIGKILL if that hangs too.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(20));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let console = child.wait_with_output().map(|o| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    let result = read("result.txt");
    let journal = read("journal.txt");
    assert!(
        out.join("done").exists(),
        "the probe did not finish (nspawn: {status:?}, {:.0} s)\nresult:\n{result}\njournal:\n{journal}\nconsole:\n{}",
        start.elapsed().as_secs_f64(),
        console.unwrap_or_default()
    );
    let ctx = format!("\nresult:\n{result}\njournal:\n{journal}");

    // Type=notify: `systemctl start` returned once READY=1 came, and the service runs.
    assert!(result.contains("start rc=0"), "{ctx}");
    let started = section(&result, "started");
    assert_eq!(prop(&started, "ActiveState"), "active", "{ctx}");
    assert_eq!(prop(&started, "SubState"), "running", "{ctx}");
    assert_eq!(prop(&started, "WatchdogUSec"), "2s", "{ctx}");
    // The control socket works inside the sandbox.
    assert!(result.contains("status rc=0"), "{ctx}");
    let status: serde_json::Value = serde_json::from_str(&read("status.json"))
        .unwrap_or_else(|e| panic!("status --json: {e}\n{}", read("status.json")));
    assert_eq!(status["host"], "hv1", "{status}");
    // Three watchdog periods later it is still the same process: the event loop feeds it.
    let watchdog = section(&result, "watchdog");
    assert_eq!(prop(&watchdog, "ActiveState"), "active", "{ctx}");
    assert_eq!(prop(&watchdog, "NRestarts"), "0", "{ctx}");
    assert_eq!(
        prop(&watchdog, "MainPID"),
        prop(&started, "MainPID"),
        "{ctx}"
    );
    // SIGHUP reloads in place.
    assert!(result.contains("reload rc=0"), "{ctx}");
    let reloaded = section(&result, "reloaded");
    assert_eq!(prop(&reloaded, "ActiveState"), "active", "{ctx}");
    assert_eq!(
        prop(&reloaded, "MainPID"),
        prop(&started, "MainPID"),
        "{ctx}"
    );
    // A crash is restarted by systemd.
    let restarted = section(&result, "restarted");
    assert_eq!(prop(&restarted, "NRestarts"), "1", "{ctx}");
    assert_eq!(prop(&restarted, "ActiveState"), "active", "{ctx}");
    assert_ne!(
        prop(&restarted, "MainPID"),
        prop(&started, "MainPID"),
        "{ctx}"
    );
    // SIGTERM: a clean stop, exit status 0, nothing left running.
    assert!(result.contains("stop rc=0"), "{ctx}");
    let stopped = section(&result, "stopped");
    assert_eq!(prop(&stopped, "ActiveState"), "inactive", "{ctx}");
    assert_eq!(prop(&stopped, "Result"), "success", "{ctx}");
    assert_eq!(prop(&stopped, "ExecMainStatus"), "0", "{ctx}");
    // The daemon's own words, through journald.
    assert!(journal.contains("p2p node listening"), "{ctx}");
    assert!(journal.contains("configuration reloaded"), "{ctx}");
}
