//! Separate `scored` processes on 127.0.0.1: keys from `scored keygen`, nodes from the hidden
//! `scored debug-p2p-node`, driven over stdin and watched through their JSON event lines.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::host::free_ports;
use support::loopback::{self, HostSpec};

const BIN: &str = env!("CARGO_BIN_EXE_scored");
const WAIT: Duration = Duration::from_secs(20);

/// The running nodes; killed and reaped on drop, so a failing test leaves no process behind.
struct Cluster {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    events: mpsc::Receiver<(usize, Value)>,
    backlog: Vec<(usize, Value)>,
    logs: Vec<PathBuf>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            for l in &self.logs {
                eprintln!(
                    "--- {}\n{}",
                    l.display(),
                    std::fs::read_to_string(l).unwrap_or_default()
                );
            }
        }
    }
}

impl Cluster {
    fn send(&mut self, node: usize, line: &str) {
        writeln!(self.stdins[node], "{line}").unwrap();
        self.stdins[node].flush().unwrap();
    }

    /// The first event (new or held back) that `want` accepts; others are kept for later.
    fn expect(&mut self, what: &str, want: impl Fn(usize, &Value) -> bool) -> (usize, Value) {
        if let Some(i) = self.backlog.iter().position(|(n, v)| want(*n, v)) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((n, v)) if want(n, &v) => return (n, v),
                Ok((n, v)) => {
                    if v["event"] == "error" {
                        panic!("node {n} reported an error while waiting for {what}: {v}");
                    }
                    self.backlog.push((n, v));
                }
                Err(_) => panic!(
                    "no {what} within {WAIT:?}; other events: {:?}",
                    self.backlog
                ),
            }
        }
    }
}

fn keygen(path: &Path) -> libp2p::PeerId {
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn event(v: &Value, name: &str) -> bool {
    v["event"] == name
}

#[test]
fn four_processes_relay_locate_and_announce() {
    const N: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(N);
    let specs: Vec<HostSpec> = (0..N)
        .map(|i| HostSpec {
            name: format!("h{i}"),
            rack: i / 2,
            port: ports[i],
            peer: keygen(&dir.path().join(format!("h{i}.key"))),
        })
        .collect();
    let topology = loopback::write(
        dir.path(),
        "topology.toml",
        &loopback::topology_text(&specs, "[1, 3]"),
    );

    let (tx, events) = mpsc::channel();
    let mut cluster = Cluster {
        children: Vec::new(),
        stdins: Vec::new(),
        events,
        backlog: Vec::new(),
        logs: Vec::new(),
    };
    for i in 0..N {
        let log = dir.path().join(format!("h{i}.log"));
        let mut child = Command::new(BIN)
            .arg("debug-p2p-node")
            .arg("--topology")
            .arg(&topology)
            .arg("--key")
            .arg(dir.path().join(format!("h{i}.key")))
            .args(["--host", &format!("h{i}")])
            .args(["--vms", &format!("10.0.{i}.1,10.0.{i}.2")])
            .args(["--relay-hops", "8"])
            .env("RUST_LOG", "scored=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        cluster.logs.push(log);
        cluster.stdins.push(child.stdin.take().unwrap());
        let stdout = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("node {i} printed non-JSON {line:?}: {e}"));
                if tx.send((i, v)).is_err() {
                    return;
                }
            }
        });
        cluster.children.push(child);
    }
    for i in 0..N {
        cluster.expect("listening", |n, v| n == i && event(v, "listening"));
    }

    // The token goes round the ring (by host name) until its seq reaches 7.
    cluster.send(0, "relay");
    for seq in 1..8u64 {
        let (n, v) = cluster.expect(&format!("token {seq}"), |_, v| {
            event(v, "token") && v["seq"] == seq
        });
        assert_eq!(n, seq as usize % N, "token {seq} went to the wrong host");
        assert_eq!(v["from"], format!("h{}", (n + N - 1) % N));
    }
    let (n, _) = cluster.expect("relay-done", |_, v| event(v, "relay-done"));
    assert_eq!(n, 3);

    // Locations across processes.
    cluster.send(0, "locate 10.0.1.1 10.0.2.2 10.0.3.1 10.9.9.9");
    let (_, v) = cluster.expect("located", |n, v| n == 0 && event(v, "located"));
    assert_eq!(v["found"]["10.0.1.1"], "h1");
    assert_eq!(v["found"]["10.0.2.2"], "h2");
    assert_eq!(v["found"]["10.0.3.1"], "h3");
    assert_eq!(v["missing"][0], "10.9.9.9");

    cluster.send(1, "capacity h2");
    let (_, v) = cluster.expect("capacity", |n, v| n == 1 && event(v, "capacity"));
    assert_eq!(v["free_slots"], 14);
    cluster.expect("capacity-asked", |n, v| {
        n == 2 && event(v, "capacity-asked")
    });

    // Announcements need a gossip mesh; then one migration reaches every other process.
    let deadline = Instant::now() + WAIT;
    for i in 0..N {
        loop {
            cluster.send(i, "peers");
            let (_, v) = cluster.expect("peers", |n, v| n == i && event(v, "peers"));
            if v["mesh"].as_u64().unwrap_or(0) > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "h{i} never joined a gossip mesh");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    cluster.send(1, "migrate 10.0.1.2 h3");
    let (_, v) = cluster.expect("migrated", |n, v| n == 1 && event(v, "migrated"));
    assert_eq!(v["announced"], true, "{v}");
    for i in [0, 2, 3] {
        let (_, v) = cluster.expect(&format!("announcement at h{i}"), |n, v| {
            n == i && event(v, "announcement") && v["kind"] == "migration"
        });
        assert_eq!(
            (v["vm"].as_str(), v["to"].as_str()),
            (Some("10.0.1.2"), Some("h3"))
        );
    }
    cluster.send(0, "locate 10.0.1.2");
    let (_, v) = cluster.expect("located", |n, v| n == 0 && event(v, "located"));
    assert_eq!(v["found"]["10.0.1.2"], "h3");

    for i in 0..N {
        cluster.send(i, "quit");
    }
    for i in 0..N {
        cluster.expect("stopped", |n, v| n == i && event(v, "stopped"));
    }
    for (i, c) in cluster.children.iter_mut().enumerate() {
        let status = c.wait().unwrap();
        assert!(status.success(), "h{i} exited with {status}");
    }
}
