//! A hypervisor host made of network namespaces, for tests and benches that need real packets:
//! one namespace is the host (a bridge, and one veth end per VM standing for the VM's tap), and
//! each "VM" is a namespace holding the other veth end with a fixed MAC and IPv4 address.
//!
//! Names carry the process id and a counter, so tests run in parallel; `Drop` deletes every
//! namespace (and with them every veth and the bridge), also when a test fails. IPv6 is off in
//! all of them, so no neighbour discovery or MLD chatter lands in the counts. Needs root.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`; the error says which command failed and why.
pub fn ip(args: &[&str]) -> io::Result<()> {
    run("ip", args)
}

pub fn run(cmd: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(cmd).args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Moves the calling thread into network namespace `ns` (other threads are not affected).
pub fn enter(ns: &str) -> io::Result<()> {
    let f = File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: `f` is an open namespace file; setns only changes this thread's namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `ns` and returns its result.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns).unwrap_or_else(|e| panic!("enter netns {ns}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// One VM of the test host.
#[derive(Clone, Debug)]
pub struct TestVm {
    pub ns: String,
    /// The host-side veth end: the VM's "tap".
    pub tap: String,
    pub mac: [u8; 6],
    pub ip: std::net::Ipv4Addr,
}

/// The host namespace with its bridge, and its VMs.
pub struct TestHost {
    pub host: String,
    pub vms: Vec<TestVm>,
    namespaces: Vec<String>,
}

impl TestHost {
    /// Creates the host namespace and its bridge `br0`.
    pub fn new(tag: &str) -> io::Result<TestHost> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let host = format!("sc{tag}{}x{n}h", std::process::id());
        let mut h = TestHost {
            host: host.clone(),
            vms: Vec::new(),
            namespaces: Vec::new(),
        };
        h.add_ns(&host)?;
        ip(&["-n", &host, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &host, "link", "set", "br0", "up"])?;
        Ok(h)
    }

    fn add_ns(&mut self, ns: &str) -> io::Result<()> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )
    }

    /// Adds a VM: a namespace whose `eth0` (MAC `mac`, address `ip`/24) is joined by a veth to
    /// `tap` on the host's bridge.
    pub fn add_vm(&mut self, tap: &str, mac: [u8; 6], ip4: [u8; 4]) -> io::Result<TestVm> {
        let ns = format!("{}v{}", self.host, self.vms.len());
        self.add_ns(&ns)?;
        let vm = TestVm {
            ns,
            tap: tap.to_string(),
            mac,
            ip: ip4.into(),
        };
        self.plug(&vm)?;
        self.vms.push(vm.clone());
        Ok(vm)
    }

    /// (Re-)creates the veth pair of `vm` and attaches its tap to the bridge.
    pub fn plug(&self, vm: &TestVm) -> io::Result<()> {
        let h = &self.host;
        ip(&[
            "-n", h, "link", "add", &vm.tap, "type", "veth", "peer", "name", "eth0", "netns",
            &vm.ns,
        ])?;
        let mac = vm
            .mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        ip(&["-n", &vm.ns, "link", "set", "eth0", "address", &mac])?;
        ip(&[
            "-n",
            &vm.ns,
            "addr",
            "add",
            &format!("{}/24", vm.ip),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &vm.ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", h, "link", "set", &vm.tap, "master", "br0"])?;
        ip(&["-n", h, "link", "set", &vm.tap, "up"])
    }

    /// Deletes `vm`'s veth pair (as when a VM is stopped or migrates away and its tap goes).
    pub fn unplug(&self, vm: &TestVm) -> io::Result<()> {
        ip(&["-n", &self.host, "link", "del", &vm.tap])
    }

    /// A counter of a host-side device, e.g. `rx_bytes` (what the VM sent) or `tx_bytes`.
    pub fn counter(&self, dev: &str, name: &str) -> io::Result<u64> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.host,
                "cat",
                &format!("/sys/class/net/{dev}/statistics/{name}"),
            ])
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|e| io::Error::other(format!("{dev} {name}: {e}")))
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
