//! A cluster of real `scored run` processes on 127.0.0.1: each with its own key, config, control
//! socket and journal, all reading one topology and one shared simulated cluster file (VMs and
//! their traffic, built from a simulator scenario). Everything is killed when the value drops.

#![allow(dead_code)]

use super::host::free_ports;
use scored::daemon::control::{self, Reply, Request, Status};
use scored::hypervisor::file::{self, SharedFile};
use scored::hypervisor::memory::{MemoryCluster, MigrationModel, synthetic_vm};
use scored::proto::VmId;
use scored::sim::{Scenario, ScenarioParams};
use scored::topology::{HostId, Topology};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Host {
    pub name: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub starts: u32,
}

/// One cluster at a time per test binary: eight daemons already fill two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Cluster {
    _serial: std::sync::MutexGuard<'static, ()>,
    pub dir: tempfile::TempDir,
    pub topology: PathBuf,
    pub shared: PathBuf,
    pub scenario: Scenario,
    pub hosts: Vec<Host>,
}

/// 8 hosts: 2 pods × 2 racks × 2 hosts (levels rack, pod, core), 4 VMs of 512 MiB at most each.
pub fn topology_text(ports: &[u16], peers: &[String]) -> String {
    let mut t = String::from(
        "[levels]\nnames = [\"rack\", \"pod\", \"core\"]\nweights = [1.0, 2.718281828459045, 20.085536923187668]\n\n\
         [defaults]\nmax_vms = 4\nmemory_mib = 2560\nreserve_memory_mib = 256\n",
    );
    for (i, (port, peer)) in ports.iter().zip(peers).enumerate() {
        let pod = i / 4 + 1;
        let rack = i / 2 + 1;
        t.push_str(&format!(
            "\n[[host]]\nname = \"h{}\"\npath = [\"pod{pod}\", \"tor{rack}\"]\naddress = \"127.0.0.1\"\np2p_port = {port}\npeer_id = \"{peer}\"\n",
            i + 1
        ));
    }
    t
}

/// Options of a test cluster.
pub struct Options {
    pub hosts: usize,
    pub vms: usize,
    pub seed: u64,
    pub policy: &'static str,
    /// Extra TOML appended to every host's config (sections must not repeat the base ones:
    /// use `overrides` for keys of the base sections).
    pub overrides: Vec<(String, String)>,
    /// Per-host overrides (index, key, value).
    pub host_overrides: Vec<(usize, String, String)>,
    /// How long a simulated migration takes (it sleeps that long in the source daemon).
    pub migration: MigrationModel,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hosts: 8,
            vms: 20,
            seed: 7,
            policy: "distributed",
            overrides: Vec::new(),
            host_overrides: Vec::new(),
            migration: MigrationModel {
                sent_fraction: 0.5,
                throughput_bytes_per_s: 2.56e9,
                downtime: Duration::from_millis(5),
            },
        }
    }
}

impl Cluster {
    pub fn new(opts: Options) -> Cluster {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(opts.hosts);
        let mut peers = Vec::new();
        for i in 0..opts.hosts {
            let key =
                scored::identity::generate(&dir.path().join(format!("h{}.key", i + 1)), false)
                    .unwrap();
            peers.push(key.public().to_peer_id().to_string());
        }
        let topology = dir.path().join("topology.toml");
        std::fs::write(&topology, topology_text(&ports, &peers)).unwrap();
        let topo = Topology::load(&topology).unwrap();

        let mut params = ScenarioParams {
            vms: Some(opts.vms),
            vm_memory_mib: 512,
            rounds: 1,
            seed: opts.seed,
            ..ScenarioParams::default()
        };
        params.traffic.churn = 0.0;
        let scenario = Scenario::build(topo.clone(), params).unwrap();
        let cluster = MemoryCluster::new(&topo);
        cluster.set_model(opts.migration);
        for (i, h) in scenario.initial.iter().enumerate() {
            cluster
                .add_vm(*h, synthetic_vm(scenario.ids[i], 512))
                .unwrap();
        }
        let pairs: Vec<(VmId, VmId, f64)> = scenario.rates[0]
            .pairs()
            .iter()
            .map(|&(a, b, r)| (scenario.ids[a as usize], scenario.ids[b as usize], r))
            .collect();
        let shared = dir.path().join("cluster.json");
        cluster.save_shared(&shared, &pairs).unwrap();

        let mut hosts = Vec::new();
        for i in 0..opts.hosts {
            let name = format!("h{}", i + 1);
            let socket = dir.path().join(format!("{name}.sock"));
            let mut kv: Vec<(String, String)> = vec![
                ("host.name".into(), format!("\"{name}\"")),
                ("host.key".into(), format!("\"{name}.key\"")),
                ("host.topology".into(), "\"topology.toml\"".into()),
                (
                    "hypervisor.uri".into(),
                    format!("\"sim+file://{}\"", shared.display()),
                ),
                ("token.policy".into(), format!("\"{}\"", opts.policy)),
                ("token.handoff_timeout_ms".into(), "5000".into()),
                ("token.min_round_s".into(), "0".into()),
                ("decision.migration_cost_fraction".into(), "0.0".into()),
                ("decision.cooldown_base_s".into(), "0".into()),
                ("decision.return_margin_fraction".into(), "0.0".into()),
                ("flows.window_s".into(), "1".into()),
                ("flows.max_entries".into(), "4096".into()),
                ("metrics.enabled".into(), "false".into()),
                ("control.socket".into(), format!("\"{}\"", socket.display())),
                ("journal.path".into(), format!("\"{name}.journal\"")),
                ("log.format".into(), "\"json\"".into()),
                ("log.level".into(), "\"info,scored::daemon=debug\"".into()),
            ];
            kv.extend(opts.overrides.iter().cloned());
            kv.extend(
                opts.host_overrides
                    .iter()
                    .filter(|(h, _, _)| *h == i)
                    .map(|(_, k, v)| (k.clone(), v.clone())),
            );
            let config = dir.path().join(format!("{name}.toml"));
            std::fs::write(&config, render_config(&kv)).unwrap();
            hosts.push(Host {
                name: name.clone(),
                config,
                socket,
                log: dir.path().join(format!("{name}.log")),
                child: None,
                starts: 0,
            });
        }
        Cluster {
            _serial: serial,
            dir,
            topology,
            shared,
            scenario,
            hosts,
        }
    }

    pub fn start_all(&mut self) {
        for i in 0..self.hosts.len() {
            self.start(i);
        }
    }

    pub fn start(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        assert!(h.child.is_none(), "{} already runs", h.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&h.log)
            .unwrap();
        let child = Command::new(daemon_binary())
            .arg("run")
            .arg("--config")
            .arg(&h.config)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        h.child = Some(child);
        h.starts += 1;
    }

    /// SIGKILL: no chance to hand anything on.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.hosts[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, i: usize) -> std::process::ExitStatus {
        let mut c = self.hosts[i].child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap()
    }

    pub fn running(&mut self, i: usize) -> bool {
        match self.hosts[i].child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    pub fn shared(&self) -> SharedFile {
        file::read_shared(&self.shared).unwrap()
    }

    /// Eq. 3.1 of the current placement under the scenario's traffic.
    pub fn cost(&self) -> f64 {
        let placement = self.shared().placement();
        let topo = &self.scenario.topology;
        let loc: Vec<HostId> = self
            .scenario
            .ids
            .iter()
            .map(|v| topo.host_by_name(&placement[v]).unwrap().id)
            .collect();
        self.scenario.cost(0, &loc)
    }

    pub fn initial_cost(&self) -> f64 {
        self.scenario.cost(0, &self.scenario.initial)
    }

    pub fn request(&self, i: usize, req: Request) -> Result<Reply, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(control::request(
            &self.hosts[i].socket,
            &req,
            Duration::from_secs(10),
        ))
        .map_err(|e| e.to_string())
    }

    pub fn status(&self, i: usize) -> Option<Status> {
        match self.request(i, Request::Status) {
            Ok(Reply::Status(s)) => Some(*s),
            _ => None,
        }
    }

    /// Which host holds the token now, asked of every running daemon.
    pub fn holder(&mut self) -> Option<usize> {
        (0..self.hosts.len())
            .filter(|&i| self.hosts[i].child.is_some())
            .find(|&i| self.status(i).is_some_and(|s| s.token.held))
    }

    /// Polls `f` every 100 ms until it returns true or `limit` passes; returns whether it did.
    pub fn wait(&mut self, limit: Duration, mut f: impl FnMut(&mut Cluster) -> bool) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if f(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Every JSON log line of every host, with the host's index.
    pub fn events(&self) -> Vec<(usize, serde_json::Value)> {
        let mut out = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let text = std::fs::read_to_string(&h.log).unwrap_or_default();
            for line in text.lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                    out.push((i, v));
                }
            }
        }
        out
    }

    /// JSON log lines written since the last call with the same cursor (one offset per host):
    /// long tests poll the logs without re-reading them whole.
    pub fn new_events(&self, cursor: &mut Vec<usize>) -> Vec<(usize, serde_json::Value)> {
        cursor.resize(self.hosts.len(), 0);
        let mut out = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let Ok(bytes) = std::fs::read(&h.log) else {
                continue;
            };
            // Only whole lines: a daemon may be writing the last one.
            let end = bytes[cursor[i]..]
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|p| cursor[i] + p + 1)
                .unwrap_or(cursor[i]);
            for line in String::from_utf8_lossy(&bytes[cursor[i]..end]).lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                    out.push((i, v));
                }
            }
            cursor[i] = end;
        }
        out
    }

    /// Log lines of one host, for failure messages.
    pub fn tail(&self, i: usize, n: usize) -> String {
        let text = std::fs::read_to_string(&self.hosts[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            self.kill(i);
        }
        if let Some(keep) = std::env::var_os("SCORED_TEST_KEEP_LOGS") {
            let keep = PathBuf::from(keep);
            let _ = std::fs::create_dir_all(&keep);
            for h in &self.hosts {
                let _ = std::fs::copy(&h.log, keep.join(format!("{}.log", h.name)));
            }
        }
        if std::thread::panicking() {
            for i in 0..self.hosts.len() {
                eprintln!(
                    "---- {} log tail ----\n{}",
                    self.hosts[i].name,
                    self.tail(i, 30)
                );
            }
        }
    }
}

/// The `scored` binary the daemons run: this build's, or `SCORED_TEST_BIN` when set. Helpers that
/// share one target dir overwrite each other's `debug/scored`; a copy taken right after one's own
/// build keeps a cluster test on the code it means to test.
pub fn daemon_binary() -> PathBuf {
    std::env::var_os("SCORED_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_scored")))
}

/// Renders `section.key = value` pairs as TOML (later pairs override earlier ones).
fn render_config(kv: &[(String, String)]) -> String {
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (k, v) in kv {
        let (sec, key) = k.split_once('.').unwrap();
        let pos = match sections.iter().position(|(s, _)| s == sec) {
            Some(p) => p,
            None => {
                sections.push((sec.to_string(), Vec::new()));
                sections.len() - 1
            }
        };
        let entries = &mut sections[pos].1;
        entries.retain(|(k2, _)| k2 != key);
        entries.push((key.to_string(), v.clone()));
    }
    let mut out = Vec::new();
    for (sec, entries) in sections {
        writeln!(out, "[{sec}]").unwrap();
        for (k, v) in entries {
            writeln!(out, "{k} = {v}").unwrap();
        }
        writeln!(out).unwrap();
    }
    String::from_utf8(out).unwrap()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
