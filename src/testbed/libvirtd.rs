//! One private libvirtd per testbed host: its configuration, start (in the host's namespaces,
//! with QEMU's capability probe seeded from the cache), the wait for its socket, and the kill and
//! restart the fault tests use. It touches no libvirtd but the ones it started.

use super::{Result, Testbed, TestbedError, TestbedHost, run};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// libvirt refuses to start QEMU without this user even when qemu.conf says root.
pub(super) fn ensure_libvirt_qemu_user() -> Result<()> {
    let known = Command::new("getent")
        .args(["passwd", "libvirt-qemu"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if known {
        return Ok(());
    }
    let _ = Command::new("groupadd")
        .args(["-r", "libvirt-qemu"])
        .stderr(Stdio::null())
        .status();
    run(
        Command::new("useradd").args([
            "-r",
            "-g",
            "libvirt-qemu",
            "-d",
            "/var/lib/libvirt",
            "-s",
            "/usr/sbin/nologin",
            "libvirt-qemu",
        ]),
        "create the libvirt-qemu user",
    )
    .map(|_| ())
}

pub(super) fn write_libvirt_config(h: &TestbedHost) -> Result<()> {
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map_err(|e| TestbedError::io(Path::new("/proc/sys/kernel/random/uuid"), e))?;
    // Test-only settings: no authentication on the unix socket or TCP inside the namespace.
    let libvirtd = format!(
        "host_uuid = \"{}\"\nunix_sock_rw_perms = \"0777\"\nauth_unix_ro = \"none\"\n\
         auth_unix_rw = \"none\"\nlisten_tls = 0\nlisten_tcp = 1\nauth_tcp = \"none\"\n\
         log_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n",
        uuid.trim()
    );
    // Encrypted migration with the testbed's own certificates (`pki`), the client's verified.
    let qemu = format!(
        "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\n\
         security_driver = \"none\"\nstdio_handler = \"file\"\ncgroup_controllers = []\n\
         namespaces = []\nmigrate_tls_x509_cert_dir = \"{}\"\nmigrate_tls_x509_verify = 1\n",
        h.tls_dir().display()
    );
    for (f, text) in [
        ("libvirtd.conf", libvirtd.as_str()),
        ("qemu.conf", qemu.as_str()),
    ] {
        let p = h.dir.join("etc").join(f);
        std::fs::write(&p, text).map_err(|e| TestbedError::io(&p, e))?;
    }
    Ok(())
}

pub(super) fn wait_for_libvirtd(h: &TestbedHost, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if h.socket().exists() {
            match virt::connect::Connect::open(Some(&h.local_uri())) {
                Ok(c) => {
                    // The first call that needs QEMU's capabilities pays the probe once.
                    let r = c.capabilities();
                    match r {
                        Ok(_) => return Ok(()),
                        Err(e) => last = Some(e),
                    }
                }
                Err(e) => last = Some(e),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(TestbedError::LibvirtNotReady {
        host: h.name.clone(),
        after: timeout,
        log: h.dir.join("log/libvirtd.log"),
        last,
    })
}

/// Copies libvirt's cached QEMU probe into a new host, so its daemon starts in milliseconds.
pub(super) fn seed_capabilities(cache: &Path, h: &TestbedHost) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return Ok(());
    };
    let dst = h.dir.join("cache/qemu/capabilities");
    std::fs::create_dir_all(&dst).map_err(|e| TestbedError::io(&dst, e))?;
    for e in entries.flatten() {
        let _ = std::fs::copy(e.path(), dst.join(e.file_name()));
    }
    Ok(())
}

/// Keeps the first host's probe for the next hosts and runs (libvirt re-probes by itself when
/// QEMU or libvirt changed, so a stale copy costs only the probe it would have cost anyway).
pub(super) fn save_capabilities(h: &TestbedHost, cache: &Path) {
    let src = h.dir.join("cache/qemu/capabilities");
    let Ok(entries) = std::fs::read_dir(&src) else {
        return;
    };
    if std::fs::create_dir_all(cache).is_err() {
        return;
    }
    for e in entries.flatten() {
        let _ = std::fs::copy(e.path(), cache.join(e.file_name()));
    }
}

impl Testbed {
    pub(super) fn start_libvirtd(&mut self, host: &TestbedHost) -> Result<()> {
        let d = host.dir.display();
        let script = format!(
            "mount --bind {d}/run /run/libvirt && mount --bind {d}/lib /var/lib/libvirt && \
             mount --bind {d}/etc /etc/libvirt && mount --bind {d}/log /var/log/libvirt && \
             mount --bind {d}/cache /var/cache/libvirt && \
             exec /usr/sbin/libvirtd --listen -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid"
        );
        let log_path = host.dir.join("libvirtd.stderr");
        let log = std::fs::File::create(&log_path).map_err(|e| TestbedError::io(&log_path, e))?;
        let err = log
            .try_clone()
            .map_err(|e| TestbedError::io(&log_path, e))?;
        let _ = std::fs::remove_file(host.pid_file());
        let _ = std::fs::remove_file(host.socket());
        use std::os::unix::process::CommandExt;
        let child = Command::new("ip")
            .args(["netns", "exec", &host.netns, "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: a Ctrl-C meant for `scored testbed up` must not kill it.
            .process_group(0)
            .spawn()
            .map_err(|source| TestbedError::Spawn {
                what: format!("start libvirtd of {}", host.name),
                cmd: "ip netns exec … libvirtd".into(),
                source,
            })?;
        self.children.push(child);
        Ok(())
    }

    /// Kills one host's libvirtd (SIGKILL, as a crash would); its running guests stay up.
    pub fn kill_libvirtd(&mut self, host: usize) -> Result<()> {
        let h = self.state.hosts[host].clone();
        let pid = h.libvirtd_pid().ok_or_else(|| {
            TestbedError::Invalid(format!("host {}: libvirtd is not running", h.name))
        })?;
        // SAFETY: a pid read from the pid file of a daemon this testbed started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.libvirtd_pid() == Some(pid) && Instant::now() < deadline {
            self.reap();
            std::thread::sleep(Duration::from_millis(20));
        }
        self.reap();
        Ok(())
    }

    /// Starts a host's libvirtd again (after [`Testbed::kill_libvirtd`]) and waits for it.
    pub fn restart_libvirtd(&mut self, host: usize) -> Result<()> {
        let h = self.state.hosts[host].clone();
        self.start_libvirtd(&h)?;
        wait_for_libvirtd(&h, Duration::from_secs(60))
    }

    pub(super) fn reap(&mut self) {
        self.children
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }
}
