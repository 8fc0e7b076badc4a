//! The testbed: real libvirt hypervisors on one machine, for the integration tests, the benches
//! and the demo. Each host of a topology file becomes a network namespace with a bridge for its
//! VM taps, a private libvirtd (state directories bind-mounted in its own mount namespace) and a
//! host key; the topology's switch tree becomes bridges in a fabric namespace joined by veths.
//!
//! Only for development machines (root, Debian 12): the daemon never uses this module. Nothing
//! here talks to addresses outside the namespaces it created; everything it starts lives in them,
//! so teardown kills exactly the processes in its own namespaces and deletes them.
//!
//! This file builds and tears down the whole; `network` (namespaces, bridges, the fabric),
//! `libvirtd` (one private libvirtd per host), `pki` (certificates for encrypted migration), `domains` (guests, their consoles), `guest` (the
//! guest image), `daemons` (scored on every host) and `watch` (the live view) do one job each.

pub mod cli;
pub mod daemons;
mod domains;
pub mod guest;
mod libvirtd;
mod network;
mod pki;
pub mod watch;

pub use domains::{Console, GuestSpec, Heartbeat};

use libvirtd::{
    ensure_libvirt_qemu_user, save_capabilities, seed_capabilities, wait_for_libvirtd,
    write_libvirt_config,
};
use network::{host_address, ip};

use crate::topology::Topology;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Default directory for cached guest images and libvirt's QEMU capability probes.
pub const DEFAULT_CACHE: &str = "/var/cache/scored-testbed";
/// Host `i` (0-based, topology order) gets `10.77.0.(i+1)`; guests live in the same /16.
pub const HOST_NET: [u8; 2] = [10, 77];
const PREFIX_LEN: u8 = 16;
/// More would not fit one /24 of host addresses, and far exceeds what 2 cores can run.
pub const MAX_TESTBED_HOSTS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// A command could not be started at all.
    #[error("{what}: `{cmd}` failed: {source}")]
    Spawn {
        what: String,
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed: its exit status and what it wrote on stderr.
    #[error("{what}: `{cmd}` failed: {status}: {stderr}")]
    Command {
        what: String,
        cmd: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A file or document that could not be read or written (`what` names it): the topology,
    /// the testbed's state, a generated configuration, a host key.
    #[error("{what}: {source}")]
    Document {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("topology: {0}")]
    Topology(String),
    #[error("guest image: {message}")]
    Guest { message: String },
    #[error("host {host}: {call}: {}", source.message())]
    Libvirt {
        host: String,
        call: &'static str,
        #[source]
        source: virt::error::Error,
    },
    /// libvirtd did not answer in time; `last` is the last error seen meanwhile, if any.
    #[error(
        "host {host}: virConnectOpen (waiting for libvirtd): not ready after {after:?}: {}; see {}",
        last.as_ref().map_or("socket never appeared".to_string(), |e| e.message().to_string()),
        log.display()
    )]
    LibvirtNotReady {
        host: String,
        after: Duration,
        log: PathBuf,
        #[source]
        last: Option<virt::error::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl TestbedError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        TestbedError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn document(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        TestbedError::Document {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

pub type Result<T> = std::result::Result<T, TestbedError>;

/// Runs a command to completion; its stdout on success, its stderr in the error otherwise.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| TestbedError::Spawn {
            what: what.to_string(),
            cmd: shown.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(TestbedError::Command {
            what: what.to_string(),
            cmd: shown,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What to build.
#[derive(Clone, Debug)]
pub struct TestbedConfig {
    /// Namespace prefix: lower-case letters and digits only (namespaces are `<prefix>-<host>`).
    pub prefix: String,
    /// State directory: generated topology, host keys, libvirt state, logs, guest consoles.
    pub dir: PathBuf,
    /// Topology whose hosts and switches to build; `None` = `hosts` hosts, two per rack.
    pub topology: Option<PathBuf>,
    /// Host count for a generated topology.
    pub hosts: usize,
    pub cache: PathBuf,
}

impl TestbedConfig {
    pub fn new(prefix: &str, dir: impl Into<PathBuf>) -> Self {
        TestbedConfig {
            prefix: prefix.to_string(),
            dir: dir.into(),
            topology: None,
            hosts: 2,
            cache: PathBuf::from(DEFAULT_CACHE),
        }
    }
}

/// One hypervisor of the testbed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TestbedHost {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Addr,
    /// This host's directory: libvirt state (`run`, `lib`, `etc`, `log`, `cache`), `host.key`.
    pub dir: PathBuf,
    pub peer_id: String,
}

impl TestbedHost {
    /// libvirtd's socket, reachable from the root namespace (a unix socket ignores netns).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/libvirt-sock")
    }

    /// URI for a client in the root namespace (tests, the demo's observer).
    pub fn local_uri(&self) -> String {
        format!("qemu+unix:///system?socket={}", self.socket().display())
    }

    /// URI for a client inside the testbed's namespaces (another host's libvirtd or scored).
    pub fn tcp_uri(&self) -> String {
        format!("qemu+tcp://{}/system", self.address)
    }

    /// Where QEMU sends migration data to this host.
    pub fn migration_uri(&self) -> String {
        format!("tcp://{}", self.address)
    }

    /// This host as a migration's destination for a client in the root namespace (tests,
    /// benches, `scored testbed migrate`): libvirtd by its unix socket, while QEMU's migration
    /// stream crosses the testbed fabric to the host's address.
    pub fn destination(&self) -> crate::hypervisor::Destination {
        crate::hypervisor::Destination {
            host: self.name.clone(),
            libvirt_uri: Some(self.local_uri()),
            migration_uri: Some(self.migration_uri()),
        }
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("host.key")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("run/libvirtd.pid")
    }

    /// Pid of this host's libvirtd, when it runs.
    pub fn libvirtd_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: signal 0 only checks that the process exists.
        (pid > 0 && unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
    }
}

/// The state file `<dir>/testbed.json`: what `down` and `status` need after `up` has exited.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TestbedState {
    pub prefix: String,
    pub topology: PathBuf,
    pub hosts: Vec<TestbedHost>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// A running testbed. Dropping it tears everything down (unless [`Testbed::keep`] was called).
pub struct Testbed {
    pub state: TestbedState,
    pub dir: PathBuf,
    children: Vec<std::process::Child>,
    keep: bool,
}

impl Testbed {
    /// Builds the testbed. On failure, whatever was built is torn down again.
    pub fn up(cfg: &TestbedConfig) -> Result<Testbed> {
        check_prefix(&cfg.prefix)?;
        // A crashed earlier run with the same prefix would hold the names we need.
        down(&cfg.prefix)?;
        let image = guest::ensure(&cfg.cache)?;
        let mut tb = Testbed {
            state: TestbedState {
                prefix: cfg.prefix.clone(),
                topology: cfg.dir.join("topology.toml"),
                hosts: Vec::new(),
                kernel: image.kernel.clone(),
                initrd: image.initrd.clone(),
            },
            dir: cfg.dir.clone(),
            children: Vec::new(),
            keep: false,
        };
        tb.build(cfg)?;
        Ok(tb)
    }

    fn build(&mut self, cfg: &TestbedConfig) -> Result<()> {
        for d in ["hosts", "console"] {
            let p = cfg.dir.join(d);
            // Fresh hosts every time: a domain defined by an earlier run would still be defined.
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).map_err(|e| TestbedError::io(&p, e))?;
        }
        let topo = self.write_topology(cfg)?;
        self.save()?;
        ensure_libvirt_qemu_user()?;
        for d in [
            "/run/libvirt",
            "/var/lib/libvirt",
            "/etc/libvirt",
            "/var/log/libvirt",
            "/var/cache/libvirt",
        ] {
            std::fs::create_dir_all(d).map_err(|e| TestbedError::io(Path::new(d), e))?;
        }
        self.build_network(&topo)?;
        self.check_fabric()?;
        // The first daemon probes QEMU's capabilities (~8 s); the others reuse its cache.
        let caps_cache = cfg.cache.join("libvirt-qemu-capabilities");
        pki::issue(&cfg.dir, &self.state.hosts)?;
        for i in 0..self.state.hosts.len() {
            let host = self.state.hosts[i].clone();
            write_libvirt_config(&host)?;
            seed_capabilities(&caps_cache, &host)?;
            self.start_libvirtd(&host)?;
            wait_for_libvirtd(&host, Duration::from_secs(90))?;
            if i == 0 {
                save_capabilities(&host, &caps_cache);
            }
        }
        Ok(())
    }

    /// Writes `<dir>/topology.toml`: the template (or a generated one) with each host's
    /// testbed address and a fresh host key's PeerId, then loads it back to validate it.
    fn write_topology(&mut self, cfg: &TestbedConfig) -> Result<Topology> {
        let mut doc: toml::Table = match &cfg.topology {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| TestbedError::io(p, e))?;
                // Validate the template first so its errors carry its own file:line:col.
                Topology::parse(p, &text).map_err(|e| TestbedError::document("topology", e))?;
                text.parse()
                    .map_err(|e| TestbedError::document(format!("topology: {}", p.display()), e))?
            }
            None => generated_topology(cfg.hosts)?,
        };
        let hosts = doc
            .get_mut("host")
            .and_then(|h| h.as_array_mut())
            .ok_or_else(|| TestbedError::Topology("no [[host]] entries".into()))?;
        if hosts.is_empty() || hosts.len() > MAX_TESTBED_HOSTS {
            return Err(TestbedError::Topology(format!(
                "{} hosts; the testbed builds 1 to {MAX_TESTBED_HOSTS}",
                hosts.len()
            )));
        }
        for (i, h) in hosts.iter_mut().enumerate() {
            let t = h
                .as_table_mut()
                .ok_or_else(|| TestbedError::Topology("[[host]] is not a table".into()))?;
            let name = t
                .get("name")
                .and_then(|n| n.as_str())
                .ok_or_else(|| TestbedError::Topology(format!("host #{} has no name", i + 1)))?
                .to_string();
            check_host_name(&name)?;
            let address = host_address(i);
            let dir = cfg.dir.join("hosts").join(&name);
            for sub in ["run", "lib", "etc", "log", "cache"] {
                let p = dir.join(sub);
                std::fs::create_dir_all(&p).map_err(|e| TestbedError::io(&p, e))?;
            }
            let key = crate::identity::generate(&dir.join("host.key"), true)
                .map_err(|e| TestbedError::document(format!("host {name}"), e))?;
            let peer_id = key.public().to_peer_id().to_string();
            t.insert("address".into(), address.to_string().into());
            t.insert("peer_id".into(), peer_id.clone().into());
            // The daemons inside the namespaces reach each other over the fabric.
            t.remove("libvirt_uri");
            t.remove("migration_uri");
            self.state.hosts.push(TestbedHost {
                netns: format!("{}-{}", cfg.prefix, name),
                name,
                address,
                dir,
                peer_id,
            });
        }
        let text = format!(
            "# Generated by `scored testbed up` for the namespaces {}-*: addresses and peer ids\n\
             # are this testbed's own. Host keys: hosts/<name>/host.key.\n\n{}",
            cfg.prefix,
            toml::to_string(&doc).map_err(|e| TestbedError::document("topology", e))?
        );
        let path = &self.state.topology;
        std::fs::write(path, text).map_err(|e| TestbedError::io(path, e))?;
        Topology::load(path).map_err(|e| TestbedError::document("topology", e))
    }

    fn save(&self) -> Result<()> {
        let p = self.dir.join("testbed.json");
        let text = serde_json::to_string_pretty(&self.state)
            .map_err(|e| TestbedError::document("testbed state", e))?;
        std::fs::write(&p, text).map_err(|e| TestbedError::io(&p, e))
    }

    /// Loads the state an earlier `up` wrote (for `status`, `guest`, and the demo).
    pub fn open(dir: &Path) -> Result<Testbed> {
        let p = dir.join("testbed.json");
        let text = std::fs::read_to_string(&p).map_err(|e| TestbedError::io(&p, e))?;
        let state: TestbedState = serde_json::from_str(&text)
            .map_err(|e| TestbedError::document(p.display().to_string(), e))?;
        Ok(Testbed {
            state,
            dir: dir.to_path_buf(),
            children: Vec::new(),
            keep: true,
        })
    }

    pub fn host(&self, name: &str) -> Option<&TestbedHost> {
        self.state.hosts.iter().find(|h| h.name == name)
    }

    /// Keeps everything running when this value is dropped (`scored testbed up` exits).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Tears the testbed down now.
    pub fn down(&mut self) -> Result<()> {
        let r = down(&self.state.prefix);
        for c in &mut self.children {
            let _ = c.wait();
        }
        self.children.clear();
        r
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = self.down()
        {
            eprintln!("testbed {}: teardown: {e}", self.state.prefix);
        }
    }
}

/// Tears down every namespace named `<prefix>-*`: kills the processes inside (libvirtd, QEMU;
/// their mount namespaces and bind mounts go with them), then deletes the namespaces. Works after
/// a crash too, since it needs nothing but the names. Leaves the state directory (logs,
/// consoles) in place.
pub fn down(prefix: &str) -> Result<()> {
    check_prefix(prefix)?;
    let list = ip(&["netns", "list"], "list network namespaces")?;
    let mine: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            n.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('-'))
        })
        .map(str::to_string)
        .collect();
    for _round in 0..50 {
        let mut alive = 0;
        for ns in &mine {
            let pids =
                ip(&["netns", "pids", ns], "list processes in a namespace").unwrap_or_default();
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                alive += 1;
                // SAFETY: every process in this namespace was started by this testbed.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if alive == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut last_err = None;
    for ns in &mine {
        if let Err(e) = ip(&["netns", "del", ns], "delete a namespace") {
            last_err = Some(e);
        }
    }
    last_err.map_or(Ok(()), Err)
}

/// One line per host: libvirtd up or down, and its running guests.
pub fn status(dir: &Path) -> Result<String> {
    let tb = Testbed::open(dir)?;
    let mut out = format!(
        "testbed {} ({} hosts, topology {})\n",
        tb.state.prefix,
        tb.state.hosts.len(),
        tb.state.topology.display()
    );
    for h in &tb.state.hosts {
        let guests = match h.libvirtd_pid() {
            None => "libvirtd down".to_string(),
            Some(pid) => match virt::connect::Connect::open(Some(&h.local_uri()))
                .and_then(|c| c.list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE))
            {
                Ok(doms) => {
                    let names: Vec<String> = doms.iter().filter_map(|d| d.name().ok()).collect();
                    format!("libvirtd pid {pid}; running: {}", names.join(" "))
                }
                Err(e) => format!("libvirtd pid {pid}; not answering: {}", e.message()),
            },
        };
        out.push_str(&format!(
            "  {:<8} {:<15} netns {:<20} {}\n",
            h.name,
            h.address.to_string(),
            h.netns,
            guests
        ));
    }
    Ok(out)
}

fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty()
        || prefix.len() > 12
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(TestbedError::Invalid(format!(
            "testbed prefix `{prefix}`: use 1 to 12 lower-case letters or digits"
        )));
    }
    Ok(())
}

fn check_host_name(name: &str) -> Result<()> {
    if name == "fabric"
        || name.is_empty()
        || name.len() > 32
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(TestbedError::Topology(format!(
            "host name `{name}` cannot name a namespace (letters, digits, - and _; not `fabric`)"
        )));
    }
    Ok(())
}

/// `n` hosts, two per rack, racks under one core switch.
fn generated_topology(n: usize) -> Result<toml::Table> {
    if n == 0 || n > MAX_TESTBED_HOSTS {
        return Err(TestbedError::Topology(format!(
            "{n} hosts; the testbed builds 1 to {MAX_TESTBED_HOSTS}"
        )));
    }
    let mut text = String::from(
        "[levels]\nnames = [\"rack\", \"core\"]\nweights = [1.0, 2.718281828459045]\n\n\
         [defaults]\nmax_vms = 4\nmemory_mib = 2048\nreserve_memory_mib = 256\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "\n[[host]]\nname = \"hv{}\"\npath = [\"core\", \"tor{}\"]\n",
            i + 1,
            i / 2 + 1
        ));
    }
    text.parse()
        .map_err(|e| TestbedError::document("topology: generated topology", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        assert!(check_prefix("sclv").is_ok());
        assert!(check_prefix("sclv2").is_ok());
        assert!(check_prefix("sclv-x").is_err());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("Sclv").is_err());
    }

    #[test]
    fn generated_topology_is_valid() {
        let doc = generated_topology(4).unwrap();
        let text = toml::to_string(&doc).unwrap();
        let t = Topology::parse(Path::new("gen.toml"), &text).unwrap();
        assert_eq!(t.hosts().len(), 4);
        assert_eq!(t.racks().len(), 2);
        assert!(generated_topology(0).is_err());
    }

    #[test]
    fn console_tells_a_restart_from_a_continued_heartbeat() {
        let ok = Console::parse(
            "noise\nscored-guest vm1 boot B1 ip x\nhb vm1 B1 0\nhb vm1 B1 1\n\u{1}garbage\nhb vm1 B1 2\n",
        );
        assert!(ok.continuous());
        assert_eq!(ok.last().map(|b| b.n), Some(2));
        let restarted = Console::parse(
            "scored-guest vm1 boot B1 ip x\nhb vm1 B1 0\nscored-guest vm1 boot B2 ip x\nhb vm1 B2 0\n",
        );
        assert!(!restarted.continuous());
        let backwards = Console::parse("scored-guest v boot B ip x\nhb v B 3\nhb v B 1\n");
        assert!(!backwards.continuous());
        assert!(!Console::parse("").continuous());
    }

    #[test]
    fn guest_identity_follows_its_address() {
        let g = GuestSpec::new("vm1", Ipv4Addr::new(10, 77, 1, 10));
        assert_eq!(g.mac(), "52:54:0a:4d:01:0a");
        assert_eq!(g.tap(), "sct010a");
        assert!(g.tap().len() <= 15);
    }
}
