//! Encrypted migration's certificates are checked at start: `scored run --check-config` (what
//! systemd's ExecStartPre runs) fails naming the first missing file under
//! `migration.tls_cert_dir`, passes once all five are there, and does not look when TLS is off.

use std::path::Path;
use std::process::Command;

/// A one-host topology whose host has a key and an address, and a configuration for it with a
/// libvirt URI (never opened by `--check-config`).
fn setup(dir: &Path) -> std::path::PathBuf {
    let key = scored::identity::generate(&dir.join("host.key"), true).unwrap();
    let peer_id = key.public().to_peer_id();
    let topo = dir.join("topology.toml");
    std::fs::write(
        &topo,
        format!(
            "[levels]\nnames = [\"rack\"]\nweights = [1.0]\n\n[[host]]\nname = \"hv1\"\n\
             path = [\"tor1\"]\naddress = \"10.0.0.1\"\npeer_id = \"{peer_id}\"\n"
        ),
    )
    .unwrap();
    let config = dir.join("scored.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nname = \"hv1\"\ntopology = \"{}\"\nkey = \"{}\"\n\n[hypervisor]\n\
             uri = \"qemu:///system\"\n\n[migration]\ntls_cert_dir = \"{}\"\n",
            topo.display(),
            dir.join("host.key").display(),
            dir.join("pki").display()
        ),
    )
    .unwrap();
    config
}

fn check(config: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scored"))
        .args(["run", "--check-config", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_migration_certificate_fails_the_start_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let pki = dir.path().join("pki");

    let (ok, err) = check(&config, &[]);
    assert!(!ok, "started without any certificate");
    assert!(
        err.contains(&pki.join("ca-cert.pem").display().to_string()),
        "{err}"
    );

    std::fs::create_dir(&pki).unwrap();
    for f in [
        "ca-cert.pem",
        "server-cert.pem",
        "server-key.pem",
        "client-cert.pem",
    ] {
        std::fs::write(pki.join(f), "test").unwrap();
    }
    let (ok, err) = check(&config, &[]);
    assert!(!ok, "started without client-key.pem");
    assert!(
        err.contains(&pki.join("client-key.pem").display().to_string())
            && err.contains("migration.tls"),
        "{err}"
    );

    // TLS off: nothing to check (and the operator chose cleartext).
    let (ok, err) = check(&config, &["--set", "migration.tls=false"]);
    assert!(ok, "{err}");

    std::fs::write(pki.join("client-key.pem"), "test").unwrap();
    let (ok, err) = check(&config, &[]);
    assert!(ok, "{err}");
}
