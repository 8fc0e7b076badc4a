//! Small host facts the tests and benches share: a free loopback port, whether we run as root.

/// A TCP port on 127.0.0.1 the OS considers free now (another process could take it before the
/// caller binds it; the window is milliseconds).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
