//! Small host facts the tests and benches share: a free loopback port, whether we run as root.

/// `n` distinct TCP ports on 127.0.0.1 the OS considers free now: all are held until every one
/// is chosen, so no two are the same (asking one at a time can get a port back twice). Another
/// process could take one before the caller binds it; the window is milliseconds.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
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
