//! One live migration this host starts, seen through: the journal entry first (nothing starts
//! if it cannot be written), the blocking call bounded by the migration timeout, then the
//! history, the metrics, the announcement to peers and a fresh inventory. A call that hangs
//! leaves the entry open and the VM unsettled, for settlement to close later.
//!
//! It never decides whether to migrate, and never touches the token.

use super::host::Daemon;
use super::inventory::Read;
use super::journal::{self, JournalError};
use crate::forecast;
use crate::hypervisor::{Destination, HypervisorError, MigrationParams, MigrationReport, Vm};
use crate::metrics::{self, MigrationDirection};
use crate::p2p::Peers;
use crate::topology::HostId;
use scored_proto::{Stamp, Token};
use std::time::Instant;

impl<P: Peers> Daemon<P> {
    /// Live-migrates `vm` to `to`: journal first, the blocking call off the event loop with the
    /// token's heartbeat going on, then history, announcement and inventory.
    pub(super) async fn migrate(
        &self,
        vm: &Vm,
        to: HostId,
        token: &Token,
        decided: Instant,
    ) -> Result<MigrationReport, MigrateError> {
        let config = self.config();
        let dest_host = self.topo.host(to);
        let dest = Destination {
            host: dest_host.name.clone(),
            libvirt_uri: dest_host.libvirt_uri.clone(),
            migration_uri: dest_host.migration_uri.clone(),
        };
        let at = Stamp {
            epoch: token.epoch,
            seq: token.seq,
        };
        let entry = self.ledger().begin(vm.id, self.name(), &dest.host, at)?;
        self.metrics.migrations.started.inc();
        // Gauges are handles: clone out of the family so no lock guard lives across an await.
        let out_gauge = self
            .metrics
            .migrations
            .in_flight
            .get_or_create(&metrics::DirectionLabels {
                direction: MigrationDirection::Outgoing,
            })
            .clone();
        out_gauge.inc();
        let params = config.migration.params();
        let forecast = self.forecast(vm, &params);
        tracing::info!(
            vm = %vm.id, name = %vm.name, to = %dest.host, journal = entry.id,
            since_decision_us = decided.elapsed().as_micros() as u64,
            predicted_bytes = forecast.map(|f| f.bytes as u64),
            predicted_s = forecast.map(|f| f.total.as_secs_f64()),
            predicted_downtime_ms = forecast.map(|f| f.downtime.as_millis() as u64),
            predicted_mode = forecast.map(|f| f.mode.name()),
            predicted_converges = forecast.map(|f| f.converges),
            "migration starting"
        );
        // The hypervisor's own watchdog ends the job by `timeout`; past that and one more call
        // timeout, the call itself hangs (seen: libvirt's Perform waiting on a migration stream
        // whose network path had died) and must not keep the token.
        let within = params.timeout + config.hypervisor.call_timeout();
        let (id, d) = (vm.id, dest.clone());
        let result = self
            .hv
            .call("migration", within, move |hv| hv.migrate(id, &d, &params))
            .await;
        out_gauge.dec();
        match result {
            Ok(report) => {
                self.ledger()
                    .succeeded(entry.id, vm.id, (self.me, to), report.elapsed);
                let m = &self.metrics.migrations;
                m.succeeded.inc();
                m.duration.observe(report.elapsed.as_secs_f64());
                m.downtime.observe(report.downtime.as_secs_f64());
                m.transferred.observe(report.bytes as f64);
                if let Some(f) = forecast.filter(|f| f.bytes > 0.0) {
                    m.forecast_bytes_ratio
                        .observe(report.bytes as f64 / f.bytes);
                }
                tracing::info!(
                    vm = %vm.id, to = %dest.host, elapsed_s = report.elapsed.as_secs_f64(),
                    downtime_ms = report.downtime.as_millis() as u64, bytes = report.bytes,
                    predicted_bytes = forecast.map(|f| f.bytes as u64),
                    predicted_s = forecast.map(|f| f.total.as_secs_f64()),
                    predicted_downtime_ms = forecast.map(|f| f.downtime.as_millis() as u64),
                    "migration succeeded"
                );
                if let Err(e) = self.peers.announce_migration(vm.id, to, at).await {
                    tracing::warn!(error = %e, "migration announcement not published");
                }
                if let Err(e) = self.read_inventory(Read::Full).await {
                    tracing::warn!(error = %e, "inventory after migration");
                }
                Ok(report)
            }
            Err(e @ HypervisorError::NoAnswer { .. }) => {
                // Neither failed nor done: the journal entry stays open and the VM unsettled
                // (no decision for it, asked about on every inventory refresh) until the
                // hypervisor says how the job ended, as after a crash.
                self.ledger().hung(vm.id);
                tracing::error!(vm = %vm.id, to = %dest.host, journal = entry.id, error = %e, "migration call hangs: the token moves on; the VM stays unsettled until the hypervisor says how the job ended");
                Err(MigrateError::Hypervisor(e))
            }
            Err(e) => {
                let outcome = match &e {
                    HypervisorError::Aborted { reason, .. } => {
                        self.metrics
                            .migrations
                            .aborted
                            .get_or_create(&metrics::ReasonLabels { reason: *reason })
                            .inc();
                        journal::Ending::Aborted {
                            reason: reason.to_string(),
                        }
                    }
                    other => {
                        self.metrics.migrations.failed.inc();
                        journal::Ending::Failed {
                            reason: other.to_string(),
                        }
                    }
                };
                self.ledger().ended(entry.id, vm.id, outcome);
                tracing::warn!(vm = %vm.id, to = %dest.host, error = %e, "migration failed; the VM stays here");
                let _ = self.read_inventory(Read::Full).await;
                Err(MigrateError::Hypervisor(e))
            }
        }
    }
}

impl<P: Peers> Daemon<P> {
    /// What migrating `vm` with `params` should cost (`crate::forecast`), in the mode these
    /// parameters allow, from what the hypervisor last measured of it. `None` without a
    /// measured dirty rate, or without a bandwidth cap (the link's share is then unknown).
    fn forecast(&self, vm: &Vm, params: &MigrationParams) -> Option<forecast::Forecast> {
        let m = self.inventory.measured(vm.id)?;
        let workload = forecast::Workload::measured(&m, vm.memory_mib)?;
        Some(forecast::expected(
            &workload,
            &forecast::Limits::of(params)?,
        ))
    }
}

/// Why a migration this host started did not go through.
#[derive(Debug, thiserror::Error)]
pub(super) enum MigrateError {
    /// The journal could not record it: nothing was started.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
}

impl MigrateError {
    /// The call did not return in time (the job may still run): not a failed migration.
    pub(super) fn hung(&self) -> bool {
        matches!(
            self,
            MigrateError::Hypervisor(HypervisorError::NoAnswer { .. })
        )
    }
}
