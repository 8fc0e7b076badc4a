//! `[migration]`: how one live migration runs (bandwidth, downtime, convergence, time limits)
//! and how many this host accepts at once.
//!
//! Declares and checks the values; migrating is the hypervisor's, which owns their defaults.

use super::section::{OptionSpec, Section, ZeroValue, at_least_one};
use crate::hypervisor::{Compression, MigrationParams};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Where libvirt's qemu driver looks for certificates unless qemu.conf says otherwise
/// (`default_tls_x509_cert_dir`).
pub const DEFAULT_TLS_CERT_DIR: &str = "/etc/pki/qemu";

/// How one live migration runs. Reloads on SIGHUP (applies to the next migration), except
/// `tls` and `tls_cert_dir`, which the start checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrationConfig {
    /// Bandwidth cap, MiB/s; 0 = unlimited. With a cap, each chosen move is forecast first
    /// (`crate::forecast`): one that no allowed mode would converge stays.
    pub bandwidth_mib_s: u64,
    /// Largest acceptable downtime of the final stop-and-copy phase.
    pub max_downtime_ms: u64,
    /// Throttle the guest's vCPUs when pre-copy does not converge.
    pub auto_converge: bool,
    #[serde(with = "compression_name")]
    pub compression: Compression,
    /// Switch to post-copy when pre-copy does not converge (the VM is lost if the destination
    /// dies mid-way): after the first pass when the forecast says pre-copy cannot converge,
    /// else when the stall rule fires.
    pub post_copy: bool,
    /// Abort a migration that takes longer than this.
    pub timeout_s: u64,
    /// Abort a migration whose remaining data has not shrunk for this long.
    pub stall_timeout_s: u64,
    /// Most migrations this host accepts at the same time as destination.
    pub max_incoming: u32,
    /// Encrypt the migration stream (libvirt's `VIR_MIGRATE_TLS`). Restart to change: the
    /// certificates are checked at start.
    pub tls: bool,
    /// The qemu driver's `migrate_tls_x509_cert_dir` (qemu.conf): checked at start for
    /// ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem and client-key.pem.
    pub tls_cert_dir: PathBuf,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        // The hypervisor's defaults are the single source of these values.
        let p = MigrationParams::default();
        MigrationConfig {
            bandwidth_mib_s: p.bandwidth_mib_s,
            max_downtime_ms: p.max_downtime.as_millis() as u64,
            auto_converge: p.auto_converge,
            compression: p.compression,
            post_copy: p.post_copy,
            timeout_s: p.timeout.as_secs(),
            stall_timeout_s: p.stall_timeout.as_secs(),
            max_incoming: 1,
            tls: p.tls,
            tls_cert_dir: PathBuf::from(DEFAULT_TLS_CERT_DIR),
        }
    }
}

impl MigrationConfig {
    /// The parameters handed to [`crate::hypervisor::Hypervisor::migrate`].
    pub fn params(&self) -> MigrationParams {
        MigrationParams {
            bandwidth_mib_s: self.bandwidth_mib_s,
            max_downtime: Duration::from_millis(self.max_downtime_ms),
            auto_converge: self.auto_converge,
            compression: self.compression,
            post_copy: self.post_copy,
            post_copy_after_first_pass: false,
            timeout: Duration::from_secs(self.timeout_s),
            stall_timeout: Duration::from_secs(self.stall_timeout_s),
            tls: self.tls,
        }
    }
}

/// A `[migration]` value that cannot be right.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MigrationConfigError {
    #[error(transparent)]
    Zero(#[from] ZeroValue),
    #[error("timeout_s = {timeout_s} must be longer than stall_timeout_s = {stall_timeout_s}")]
    TimeoutNotLonger {
        timeout_s: u64,
        stall_timeout_s: u64,
    },
    #[error(
        "post_copy cannot be combined with compression = \"multifd-zstd\" (QEMU refuses multifd with post-copy)"
    )]
    PostCopyWithMultifd,
    #[error("tls_cert_dir must be an absolute directory when tls is on (libvirtd reads it)")]
    TlsCertDir,
}

impl MigrationConfigError {
    pub fn keys(&self) -> Vec<String> {
        let keys: &[&str] = match self {
            MigrationConfigError::Zero(e) => return vec![e.key.to_string()],
            MigrationConfigError::TimeoutNotLonger { .. } => {
                &["migration.timeout_s", "migration.stall_timeout_s"]
            }
            MigrationConfigError::PostCopyWithMultifd => {
                &["migration.post_copy", "migration.compression"]
            }
            MigrationConfigError::TlsCertDir => &["migration.tls_cert_dir"],
        };
        keys.iter().map(|k| k.to_string()).collect()
    }
}

impl Section for MigrationConfig {
    const OPTIONS: &'static [OptionSpec] = options!(
        "migration",
        MigrationConfig {
            bandwidth_mib_s: Live,
            max_downtime_ms: Live,
            auto_converge: Live,
            compression: Live,
            post_copy: Live,
            timeout_s: Live,
            stall_timeout_s: Live,
            max_incoming: Live,
            tls: Restart,
            tls_cert_dir: Restart,
        }
    );
    type Error = MigrationConfigError;

    fn check(&self) -> Vec<MigrationConfigError> {
        let mut out: Vec<MigrationConfigError> = [
            at_least_one("migration.max_downtime_ms", self.max_downtime_ms),
            at_least_one("migration.stall_timeout_s", self.stall_timeout_s),
            at_least_one("migration.max_incoming", self.max_incoming.into()),
        ]
        .into_iter()
        .flatten()
        .map(Into::into)
        .collect();
        if self.timeout_s <= self.stall_timeout_s {
            out.push(MigrationConfigError::TimeoutNotLonger {
                timeout_s: self.timeout_s,
                stall_timeout_s: self.stall_timeout_s,
            });
        }
        if self.post_copy && self.compression == Compression::MultifdZstd {
            out.push(MigrationConfigError::PostCopyWithMultifd);
        }
        if self.tls && !self.tls_cert_dir.is_absolute() {
            out.push(MigrationConfigError::TlsCertDir);
        }
        out
    }
}

mod compression_name {
    use crate::hypervisor::Compression;
    use serde::{Deserialize, Deserializer, Serializer};

    const NAMES: [(Compression, &str); 3] = [
        (Compression::None, "none"),
        (Compression::Xbzrle, "xbzrle"),
        (Compression::MultifdZstd, "multifd-zstd"),
    ];

    pub fn serialize<S: Serializer>(c: &Compression, s: S) -> Result<S::Ok, S::Error> {
        let name = NAMES.iter().find(|(k, _)| k == c).map(|(_, n)| *n);
        s.serialize_str(name.expect("every compression has a name"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Compression, D::Error> {
        let s = String::deserialize(d)?;
        NAMES
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(c, _)| *c)
            .ok_or_else(|| {
                let known: Vec<_> = NAMES.iter().map(|(_, n)| *n).collect();
                serde::de::Error::custom(format!(
                    "unknown compression `{s}` (known: {})",
                    known.join(", ")
                ))
            })
    }
}
