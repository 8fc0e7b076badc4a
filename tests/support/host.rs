//! Small host facts the tests and benches share: a free loopback port, whether we run as root.

/// Every port [`free_ports`] handed out in this test process.
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// `n` distinct TCP ports on 127.0.0.1 the OS considers free now, none handed out before in
/// this process: the OS gives a port it just released back (seen: a test's metrics port, asked
/// for in one call, came back as a daemon's p2p port in the next, and that daemon could not
/// start). Every probe is held until all are chosen. Another process could take one before the
/// caller binds it; the window is milliseconds.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut given = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut held = Vec::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        assert!(
            held.len() < 64 * n + 4096,
            "no {n} fresh loopback ports after {} probes",
            held.len()
        );
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if given.insert(port) {
            out.push(port);
        }
        held.push(l);
    }
    out
}

pub fn free_port() -> u16 {
    free_ports(1)[0]
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a test that builds a libvirt testbed can run here: root for namespaces and
/// libvirtd (without it: a note, and the test returns), and libvirtd installed (without it: a
/// failure, since scripts/install-deps.sh installs it).
pub fn testbed_ready(test: &str) -> bool {
    if !is_root() {
        eprintln!("{test}: skipped: needs root to create network namespaces and run libvirtd");
        return false;
    }
    assert!(
        std::path::Path::new("/usr/sbin/libvirtd").exists(),
        "{test}: libvirtd is missing; run scripts/install-deps.sh"
    );
    true
}
