//! Daemon idle overhead (issue 6 target: ≤ 1% of a core, ≤ 30 MB RSS with 16 VMs × 100 flows).
//!
//! Two release `scored run` processes on 127.0.0.1 with the shipped defaults (2 s hand-off,
//! 60 s rounds) but `decision.dry_run`: h1 runs 16 simulated VMs, each with 100 partners (16 on
//! h2, 84 outside the cluster), h2 runs the 16 partner VMs; metrics served on a loopback port.
//! Every turn is decided, nothing moves: without dry-run h1's VMs move to h2 one every 8 s
//! (their simulated migration) and take their flows along, so the first version of this bench
//! measured h1 while it migrated, ending with half its VMs (800 entries). After a warm-up,
//! h1's CPU time and RSS are read from /proc over a measurement window; the run fails unless h1
//! tracks all 1,600 flows at its end. `cargo bench --bench daemon_idle`; prints one line per figure.

use scored::hypervisor::file::set_shared_traffic;
use scored::hypervisor::memory::{MemoryCluster, synthetic_vm};
use scored::proto::VmId;
use scored::topology::{HostId, Topology};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/support/host.rs"]
#[allow(dead_code)]
mod host;
use host::free_ports;

const VMS: u32 = 16;
const PARTNERS: u32 = 100;

/// Kills the daemons even when the bench panics.
struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// utime + stime of a process, in clock ticks, and its resident set in KiB.
fn sample(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    (ticks, rss)
}

fn main() {
    // `cargo test --benches` runs benches once as tests: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let warmup = Duration::from_secs(20);
    let window = Duration::from_secs(60);
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let mut topo_text = String::from(
        "[levels]\nnames = [\"rack\", \"pod\"]\nweights = [1.0, 2.718281828459045]\n\n\
         [defaults]\nmax_vms = 32\nmemory_mib = 65536\nreserve_memory_mib = 1024\n",
    );
    for (i, port) in ports.iter().enumerate() {
        let name = format!("h{}", i + 1);
        let key =
            scored::identity::generate(&dir.path().join(format!("{name}.key")), false).unwrap();
        topo_text.push_str(&format!(
            "\n[[host]]\nname = \"{name}\"\npath = [\"pod1\", \"tor{}\"]\naddress = \"127.0.0.1\"\np2p_port = {port}\npeer_id = \"{}\"\n",
            i + 1,
            key.public().to_peer_id()
        ));
    }
    let topology = dir.path().join("topology.toml");
    std::fs::write(&topology, topo_text).unwrap();
    let topo = Topology::load(&topology).unwrap();
    let cluster = MemoryCluster::new(&topo);
    let base = 0x0a00_0000u32;
    let mut pairs = Vec::new();
    for i in 0..VMS {
        cluster
            .add_vm(HostId(0), synthetic_vm(VmId(base + 1 + i), 512))
            .unwrap();
        cluster
            .add_vm(HostId(1), synthetic_vm(VmId(base + 101 + i), 512))
            .unwrap();
        for p in 0..PARTNERS {
            let partner = if p < VMS {
                VmId(base + 101 + p)
            } else {
                VmId(base + 0x0001_0000 + i * PARTNERS + p)
            };
            pairs.push((VmId(base + 1 + i), partner, 1000.0 + p as f64));
        }
    }
    let shared = dir.path().join("cluster.json");
    cluster.save_shared(&shared, &[]).unwrap();
    set_shared_traffic(&shared, &pairs).unwrap();

    let mut daemons = Daemons(Vec::new());
    let metrics_ports = free_ports(2);
    for (i, metrics_port) in metrics_ports.iter().enumerate() {
        let name = format!("h{}", i + 1);
        let config = format!(
            "[host]\nname = \"{name}\"\nkey = \"{name}.key\"\ntopology = \"topology.toml\"\n\n\
             [hypervisor]\nuri = \"sim+file://{}\"\n\n\
             [control]\nsocket = \"{}\"\n\n[journal]\npath = \"{name}.journal\"\n\n\
             [log]\nlevel = \"warn\"\n\n[metrics]\nlisten = \"127.0.0.1:{}\"\n\n\
             [decision]\ndry_run = true\n",
            shared.display(),
            dir.path().join(format!("{name}.sock")).display(),
            metrics_port
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        daemons.0.push(
            Command::new(env!("CARGO_BIN_EXE_scored"))
                .arg("run")
                .arg("--config")
                .arg(&path)
                .env_remove("NOTIFY_SOCKET")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap(),
        );
    }
    let pid = daemons.0[0].id();
    std::thread::sleep(warmup);
    for c in &mut daemons.0 {
        assert!(
            c.try_wait().unwrap().is_none(),
            "a daemon exited during the warm-up; see its log in {}",
            dir.path().display()
        );
    }
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (t0, _) = sample(pid);
    let start = Instant::now();
    let mut peak_rss = 0;
    while start.elapsed() < window {
        std::thread::sleep(Duration::from_secs(1));
        peak_rss = peak_rss.max(sample(pid).1);
    }
    let (t1, rss) = sample(pid);
    // The figure counts only if the daemon really tracks 16 × 100 flows: its own gauge says.
    let mut http = std::net::TcpStream::connect(("127.0.0.1", metrics_ports[0])).unwrap();
    http.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    http.read_to_string(&mut page).unwrap();
    let flows: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix("scored_flow_entries "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no scored_flow_entries in the metrics page:\n{page}"));
    if flows != f64::from(VMS * PARTNERS) {
        let log = std::fs::read_to_string(dir.path().join("h1.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!(
            "h1 tracks {flows} flows, not {}: the figures would be for fewer. h1's log ends:\n{}",
            VMS * PARTNERS,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let cpu = (t1 - t0) as f64 / hz / start.elapsed().as_secs_f64();
    println!(
        "daemon_idle: {VMS} VMs x {PARTNERS} flows ({flows} flow-table entries), release build, {} s window after {} s warm-up: \
         CPU {:.2}% of a core, RSS {:.1} MB (peak {:.1} MB)",
        window.as_secs(),
        warmup.as_secs(),
        cpu * 100.0,
        rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
}
