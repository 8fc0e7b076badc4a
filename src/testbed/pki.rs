//! The testbed's certificates for encrypted migration: one CA per testbed, and for every host
//! the five files libvirt's qemu driver reads from `migrate_tls_x509_cert_dir` (ca-cert.pem,
//! server-cert.pem + server-key.pem for incoming migrations, client-cert.pem + client-key.pem for
//! outgoing ones). The server certificate names the host's fabric address, which is what QEMU
//! checks against the migration URI `tcp://<address>`.
//!
//! Made with the `openssl` command (scripts/install-deps.sh), fresh for every testbed, valid for
//! 30 days: test keys, never meant for anything else. It writes only under the testbed's own
//! directory.

use super::{Result, TestbedError, TestbedHost, run};
use std::path::{Path, PathBuf};
use std::process::Command;

impl TestbedHost {
    /// The qemu driver's `migrate_tls_x509_cert_dir` for this host.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }
}

/// openssl settings: extensions of the CA and of each kind of host certificate.
fn openssl_config(h: Option<&TestbedHost>) -> String {
    let mut text = String::from(
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = scored testbed\n\
         [ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n",
    );
    if let Some(h) = h {
        text.push_str(&format!(
            "[server]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n\
             subjectAltName = IP:{addr},DNS:{name}\n\
             [client]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = clientAuth\n\
             subjectAltName = IP:{addr},DNS:{name}\n",
            addr = h.address,
            name = h.name
        ));
    }
    text
}

fn openssl(args: &[&str], what: &str) -> Result<()> {
    run(Command::new("openssl").args(args), what).map(|_| ())
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Issues the CA under `dir/pki-ca` and each host's five files in [`TestbedHost::tls_dir`].
pub(super) fn issue(dir: &Path, hosts: &[TestbedHost]) -> Result<()> {
    let ca_dir = dir.join("pki-ca");
    std::fs::create_dir_all(&ca_dir).map_err(|e| TestbedError::io(&ca_dir, e))?;
    let cnf = ca_dir.join("openssl.cnf");
    std::fs::write(&cnf, openssl_config(None)).map_err(|e| TestbedError::io(&cnf, e))?;
    let (ca_key, ca_cert) = (ca_dir.join("ca-key.pem"), ca_dir.join("ca-cert.pem"));
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509", "-new"];
    args.extend(ec);
    args.extend([
        "-keyout",
        path(&ca_key),
        "-out",
        path(&ca_cert),
        "-days",
        "30",
        "-subj",
        "/CN=scored testbed CA",
        "-config",
        path(&cnf),
        "-extensions",
        "ca",
    ]);
    openssl(&args, "create the testbed's CA")?;
    for (i, h) in hosts.iter().enumerate() {
        let out = h.tls_dir();
        std::fs::create_dir_all(&out).map_err(|e| TestbedError::io(&out, e))?;
        let cnf = out.join("openssl.cnf");
        std::fs::write(&cnf, openssl_config(Some(h))).map_err(|e| TestbedError::io(&cnf, e))?;
        std::fs::copy(&ca_cert, out.join("ca-cert.pem"))
            .map_err(|e| TestbedError::io(&out.join("ca-cert.pem"), e))?;
        for (n, role) in ["server", "client"].into_iter().enumerate() {
            let key = out.join(format!("{role}-key.pem"));
            let csr = out.join(format!("{role}.csr"));
            let cert = out.join(format!("{role}-cert.pem"));
            let subject = format!("/CN={}", h.name);
            let mut args = vec!["req", "-new"];
            args.extend(ec);
            args.extend([
                "-keyout",
                path(&key),
                "-out",
                path(&csr),
                "-subj",
                &subject,
                "-config",
                path(&cnf),
            ]);
            openssl(&args, &format!("host {}: {role} key", h.name))?;
            // Serials unique within the testbed's CA.
            let serial = (2 * i + n + 1).to_string();
            openssl(
                &[
                    "x509",
                    "-req",
                    "-in",
                    path(&csr),
                    "-CA",
                    path(&ca_cert),
                    "-CAkey",
                    path(&ca_key),
                    "-set_serial",
                    &serial,
                    "-days",
                    "30",
                    "-extfile",
                    path(&cnf),
                    "-extensions",
                    role,
                    "-out",
                    path(&cert),
                ],
                &format!("host {}: sign its {role} certificate", h.name),
            )?;
        }
    }
    Ok(())
}
