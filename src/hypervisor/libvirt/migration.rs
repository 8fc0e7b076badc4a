//! One live migration through `virDomainMigrate3`: its typed parameters and flags, the call on
//! a connection of its own with the [`Watchdog`] beside it, and the confirmation at the
//! destination (the VM runs there, the job's completed statistics).
//!
//! It moves the VM it is asked to move and reports; whether to move is decided elsewhere.

use super::domains::{job_figures, uuid_string};
use super::watchdog::Watchdog;
use super::{LibvirtHypervisor, open};
use crate::hypervisor::{
    Cause, Compression, Destination, HypervisorError, MigrationParams, MigrationReport, Result,
};
use scored_proto::VmId;
use std::time::{Duration, Instant};
use virt::domain::{Domain, MigrateParameters};
use virt::sys;

/// What one migration looked like from the source, beside the destination's [`MigrationReport`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MigrationTrace {
    /// From the call to the first job statistics showing a running migration job.
    pub job_started_after: Option<Duration>,
    /// Wall time of the whole call, as scored saw it.
    pub wall: Duration,
    /// Watchdog samples taken.
    pub samples: u32,
    /// Lowest remaining byte count the watchdog saw.
    pub lowest_remaining: Option<u64>,
    pub post_copy: bool,
    /// It switched to post-copy after the first pass, as the forecast asked, not on a stall.
    pub post_copy_after_first_pass: bool,
    /// The destination's downtime without libvirt's hand-over from source to destination.
    pub downtime_net: Option<Duration>,
}

impl LibvirtHypervisor {
    /// [`Hypervisor::migrate`](crate::hypervisor::Hypervisor::migrate) with what the source saw
    /// of the job.
    pub fn migrate_traced(
        &self,
        vm: VmId,
        dest: &Destination,
        params: &MigrationParams,
    ) -> Result<(MigrationReport, MigrationTrace)> {
        let started = Instant::now();
        let dest_name = dest.host.clone();
        let fail = |call: &'static str, source: Cause| HypervisorError::Migration {
            vm,
            dest: dest_name.clone(),
            call,
            source,
        };
        let (dom, desc) = self.find(vm)?.ok_or(HypervisorError::NoSuchVm { vm })?;
        if desc.pinned {
            return Err(fail(
                "pinned check",
                Cause::Refused(format!(
                    "domain {} is pinned by its scored metadata",
                    desc.name
                )),
            ));
        }
        let dest_uri = dest.libvirt_uri.as_deref().ok_or_else(|| {
            fail(
                "destination",
                Cause::Refused("no libvirt URI for the destination host".into()),
            )
        })?;
        let dconn = open(dest_uri).map_err(|e| fail("virConnectOpen", e.into()))?;
        let downtime_ms = params.max_downtime.as_millis().max(1) as u64;
        dom.migrate_set_max_downtime(downtime_ms, 0)
            .map_err(|e| fail("virDomainMigrateSetMaxDowntime", Cause::Libvirt(e)))?;
        let (mp, flags) = migrate_parameters(params, dest);

        // The migration call and the watchdog get a connection each, apart from the shared one:
        // libvirt 9.0's client sometimes never sends a call queued behind another thread's long
        // call on the same connection (seen here as a virDomainAbortJob that waited forever
        // behind virDomainMigrate3). So the daemon's inventory and state reads, on the shared
        // connection, never wait for a migration to end.
        let migrating = self
            .on_own_connection(&desc)
            .map_err(|e| fail("migration connection", e.into()))?;
        let watched = self
            .on_own_connection(&desc)
            .map_err(|e| fail("watchdog connection", e.into()))?;
        let watchdog = Watchdog::start(watched, params, self.cfg.poll_interval, started)
            .map_err(|e| fail("watchdog thread", Cause::Io(e)))?;
        let result = migrating.migrate3(&dconn, mp, flags);
        let seen = watchdog.stop();
        let mut trace = MigrationTrace {
            job_started_after: seen.job_started_after,
            wall: started.elapsed(),
            samples: seen.samples,
            lowest_remaining: seen.lowest_remaining,
            post_copy: seen.post_copy,
            post_copy_after_first_pass: seen.post_copy_after_first_pass,
            downtime_net: None,
        };

        match result {
            Ok(moved) => {
                if let Some(reason) = seen.aborted {
                    tracing::info!(%vm, dest = %dest.host, "migration completed although the watchdog asked to abort it ({reason})");
                }
                let (mut report, net) = confirm_at_destination(&moved, vm, &dest.host, trace.wall)?;
                report.post_copy = trace.post_copy;
                trace.downtime_net = net;
                if let Ok(conn) = self.conn()
                    && let Ok(still) = conn.lookup_domain_by_uuid_string(&uuid_string(&desc.uuid))
                    && still.is_active().unwrap_or(false)
                {
                    return Err(fail(
                        "virDomainMigrate3",
                        Cause::Refused(
                            "libvirt reported success but the domain is still active at the source"
                                .into(),
                        ),
                    ));
                }
                trace.wall = started.elapsed();
                Ok((report, trace))
            }
            Err(e) => {
                let at_source = dom.is_active().unwrap_or(false);
                if !at_source {
                    // The job failed late (say, in Confirm) after the VM moved: if it runs at the
                    // destination, the migration did happen.
                    if let Ok(there) = dconn.lookup_domain_by_uuid_string(&uuid_string(&desc.uuid))
                        && there.is_active().unwrap_or(false)
                    {
                        tracing::warn!(%vm, dest = %dest.host, "virDomainMigrate3 failed ({}) but the VM runs at the destination", e.message());
                        let (mut report, net) =
                            confirm_at_destination(&there, vm, &dest.host, trace.wall)?;
                        report.post_copy = trace.post_copy;
                        trace.downtime_net = net;
                        return Ok((report, trace));
                    }
                    return Err(fail(
                        "virDomainMigrate3",
                        Cause::LibvirtNoted {
                            error: e,
                            note: "; the VM is running neither here nor at the destination".into(),
                        },
                    ));
                }
                if let Some(reason) = seen.aborted {
                    return Err(HypervisorError::Aborted {
                        vm,
                        dest: dest.host.clone(),
                        reason,
                    });
                }
                let cause = match seen.abort_error {
                    Some(a) => Cause::LibvirtNoted {
                        error: e,
                        note: format!(" (watchdog: {a})"),
                    },
                    None => Cause::Libvirt(e),
                };
                Err(fail("virDomainMigrate3", cause))
            }
        }
    }
}

/// The typed parameters and flags of one migration. Always live, persistent at the destination
/// and undefined at the source; encrypted (TLS) unless the parameters say otherwise.
pub fn migrate_parameters(p: &MigrationParams, dest: &Destination) -> (MigrateParameters, u32) {
    let mut flags =
        sys::VIR_MIGRATE_LIVE | sys::VIR_MIGRATE_PERSIST_DEST | sys::VIR_MIGRATE_UNDEFINE_SOURCE;
    let mut mp = MigrateParameters {
        uri: dest.migration_uri.clone(),
        ..Default::default()
    };
    if p.bandwidth_mib_s > 0 {
        mp.bandwidth = Some(p.bandwidth_mib_s);
    }
    if p.auto_converge {
        flags |= sys::VIR_MIGRATE_AUTO_CONVERGE;
    }
    match p.compression {
        Compression::None => {}
        Compression::Xbzrle => {
            flags |= sys::VIR_MIGRATE_COMPRESSED;
            mp.compression = Some("xbzrle".into());
        }
        Compression::MultifdZstd => {
            // Needs a libvirt that knows multifd zstd (newer than Debian 12's 9.0, which
            // rejects it in virDomainMigrate3 before anything moves).
            flags |= sys::VIR_MIGRATE_COMPRESSED | sys::VIR_MIGRATE_PARALLEL;
            mp.compression = Some("zstd".into());
            mp.parallel_connections = Some(2);
        }
    }
    if p.post_copy {
        flags |= sys::VIR_MIGRATE_POSTCOPY;
    }
    if p.tls {
        // QEMU's TLS on the data stream; the URI stays tcp:// (TLS runs inside it).
        flags |= sys::VIR_MIGRATE_TLS;
    }
    (mp, flags)
}

/// Reads the destination's completed-job statistics: the migration's own account of itself.
fn confirm_at_destination(
    moved: &Domain,
    vm: VmId,
    dest: &str,
    wall: Duration,
) -> Result<(MigrationReport, Option<Duration>)> {
    let fail = |call: &'static str, source: Cause| HypervisorError::Migration {
        vm,
        dest: dest.to_string(),
        call,
        source,
    };
    if !moved.is_active().unwrap_or(false) {
        return Err(fail(
            "virDomainIsActive",
            Cause::Refused("the migrated domain is not running at the destination".into()),
        ));
    }
    if !moved.is_persistent().unwrap_or(false) {
        tracing::warn!(%vm, dest, "migrated domain is not persistent at the destination");
    }
    // Kept, not consumed: the destination's own daemon reads them too, for what the VM's next
    // migration will send (`LibvirtHypervisor::measure`).
    let flags = sys::VIR_DOMAIN_JOB_STATS_COMPLETED | sys::VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED;
    match job_figures(moved, flags) {
        Ok(s) if s.elapsed_ms.is_some() => Ok((
            MigrationReport {
                elapsed: Duration::from_millis(s.elapsed_ms.unwrap_or(0)),
                downtime: Duration::from_millis(s.downtime_ms.unwrap_or(0)),
                bytes: s.processed.unwrap_or(0),
                post_copy: false,
            },
            s.downtime_net_ms.map(Duration::from_millis),
        )),
        other => {
            // The VM moved; failing now would make the caller believe it had not. Report what
            // the source saw and say why the destination's figures are missing.
            let why = match other {
                Ok(_) => "no completed job statistics".to_string(),
                Err(e) => e.message().to_string(),
            };
            tracing::warn!(%vm, dest, "virDomainGetJobStats(COMPLETED) at the destination: {why}");
            Ok((
                MigrationReport {
                    elapsed: wall,
                    downtime: Duration::ZERO,
                    bytes: 0,
                    post_copy: false,
                },
                None,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_is_live_persistent_and_undefines_the_source() {
        let dest = Destination {
            host: "hv2".into(),
            libvirt_uri: Some("qemu+tcp://10.77.0.2/system".into()),
            migration_uri: Some("tcp://10.77.0.2".into()),
        };
        let base = sys::VIR_MIGRATE_LIVE
            | sys::VIR_MIGRATE_PERSIST_DEST
            | sys::VIR_MIGRATE_UNDEFINE_SOURCE;
        let p = MigrationParams {
            auto_converge: false,
            tls: false,
            ..Default::default()
        };
        let (mp, flags) = migrate_parameters(&p, &dest);
        assert_eq!(flags, base);
        // Encrypted by default.
        let (_, flags) = migrate_parameters(&MigrationParams::default(), &dest);
        assert_eq!(flags & sys::VIR_MIGRATE_TLS, sys::VIR_MIGRATE_TLS);
        assert_eq!(mp.uri.as_deref(), Some("tcp://10.77.0.2"));
        assert_eq!(mp.bandwidth, None);
        let p = MigrationParams {
            bandwidth_mib_s: 8,
            auto_converge: true,
            compression: Compression::Xbzrle,
            post_copy: true,
            tls: false,
            ..Default::default()
        };
        let (mp, flags) = migrate_parameters(&p, &dest);
        assert_eq!(
            flags,
            base | sys::VIR_MIGRATE_AUTO_CONVERGE
                | sys::VIR_MIGRATE_COMPRESSED
                | sys::VIR_MIGRATE_POSTCOPY
        );
        assert_eq!(mp.bandwidth, Some(8));
        assert_eq!(mp.compression.as_deref(), Some("xbzrle"));
        let p = MigrationParams {
            compression: Compression::MultifdZstd,
            auto_converge: false,
            ..Default::default()
        };
        let (mp, flags) = migrate_parameters(&p, &dest);
        assert_eq!(flags & sys::VIR_MIGRATE_PARALLEL, sys::VIR_MIGRATE_PARALLEL);
        assert_eq!(mp.parallel_connections, Some(2));
    }
}
