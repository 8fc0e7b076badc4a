//! The files QEMU needs for an encrypted migration (`VIR_MIGRATE_TLS`), checked where the qemu
//! driver reads them (`migrate_tls_x509_cert_dir` in qemu.conf, which defaults to
//! `default_tls_x509_cert_dir`, `/etc/pki/qemu`).
//!
//! Every host is the TLS server when a VM comes in and the client when one leaves, so it needs
//! both pairs and the CA that signed its peers. The daemon checks them at start, so a missing
//! file fails the start by name instead of every migration later. It only looks at the files:
//! it neither reads qemu.conf nor judges the certificates (QEMU does, at the handshake).

use std::path::{Path, PathBuf};

/// What each file is for, in the order the check reports them.
pub const CERTIFICATE_FILES: [(&str, &str); 5] = [
    (
        "ca-cert.pem",
        "the CA that signed every host's certificates",
    ),
    (
        "server-cert.pem",
        "this host's certificate as destination (the TLS server)",
    ),
    ("server-key.pem", "the key of server-cert.pem"),
    (
        "client-cert.pem",
        "this host's certificate as source (the TLS client)",
    ),
    ("client-key.pem", "the key of client-cert.pem"),
];

/// A certificate file an encrypted migration needs and does not find.
#[derive(Debug, thiserror::Error)]
#[error(
    "migration.tls is on but {} ({what}) is missing: {source}; create it (docs/operations.md, \
     \"Encrypted migration\") or set migration.tls = false",
    path.display()
)]
pub struct MissingCertificate {
    pub path: PathBuf,
    pub what: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// Checks that `dir` holds every file of [`CERTIFICATE_FILES`] as a readable regular file;
/// the first one missing is the error.
pub fn check_certificates(dir: &Path) -> Result<(), MissingCertificate> {
    for (name, what) in CERTIFICATE_FILES {
        let path = dir.join(name);
        let found = std::fs::File::open(&path).and_then(|f| {
            if f.metadata()?.is_file() {
                Ok(())
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file",
                ))
            }
        });
        if let Err(source) = found {
            return Err(MissingCertificate { path, what, source });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_certificates(dir.path()).unwrap_err();
        assert_eq!(e.path, dir.path().join("ca-cert.pem"));
        for (name, _) in &CERTIFICATE_FILES[..3] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let e = check_certificates(dir.path()).unwrap_err();
        assert_eq!(e.path, dir.path().join("client-cert.pem"));
        let text = e.to_string();
        assert!(
            text.contains("client-cert.pem") && text.contains("migration.tls"),
            "{text}"
        );
        std::fs::create_dir(dir.path().join("client-cert.pem")).unwrap();
        std::fs::write(dir.path().join("client-key.pem"), "x").unwrap();
        let e = check_certificates(dir.path()).unwrap_err();
        assert_eq!(
            e.path,
            dir.path().join("client-cert.pem"),
            "a directory is no file"
        );
        std::fs::remove_dir(dir.path().join("client-cert.pem")).unwrap();
        std::fs::write(dir.path().join("client-cert.pem"), "x").unwrap();
        check_certificates(dir.path()).unwrap();
    }
}
