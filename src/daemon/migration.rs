//! One live migration this host starts, seen through: the journal entry first (nothing starts
//! if it cannot be written), the blocking call bounded by the migration timeout, then the
//! history, the metrics, the announcement to peers and a fresh inventory. A call that hangs
//! leaves the entry open and the VM unsettled, for settlement to close later.
//!
//! It never decides whether to migrate (it gives the hold-backs the migration forecast they
//! read), and never touches the token.

use super::host::Daemon;
use super::inventory::Read;
use super::journal::{self, JournalError};
use crate::config::{Config, CostModel};
use crate::cost::MoveCharge;
use crate::decide::TurnOutcome;
use crate::forecast;
use crate::hypervisor::{Destination, HypervisorError, MigrationParams, Vm};
use crate::metrics::{self, MigrationDirection};
use crate::p2p::Peers;
use crate::topology::HostId;
use scored_proto::{Stamp, VmId};
use std::time::Instant;

const MIB: f64 = 1024.0 * 1024.0;

impl<P: Peers> Daemon<P> {
    /// Live-migrates `vm` to `to` under token stamp `at`: journal first, the blocking call off
    /// the event loop with the token's heartbeat going on, then history, announcement and
    /// inventory.
    pub(super) async fn migrate(
        &self,
        vm: &Vm,
        to: HostId,
        at: Stamp,
        decided: Instant,
    ) -> Result<Ran, MigrateError> {
        let config = self.config();
        let dest_host = self.topo.host(to);
        let dest = Destination {
            host: dest_host.name.clone(),
            libvirt_uri: dest_host.libvirt_uri.clone(),
            migration_uri: dest_host.migration_uri.clone(),
        };
        let mut params = config.migration.params();
        let forecast = self.forecast(vm, &params);
        let predicted = forecast.as_ref().map(figures_of);
        let entry = self
            .ledger()
            .begin(vm.id, (self.name(), &dest.host), at, predicted.clone())?;
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
        // Pre-copy cannot converge and post-copy is allowed: switch after the first pass
        // rather than resend the memory until the stall rule fires.
        params.post_copy_after_first_pass =
            forecast.is_some_and(|f| f.mode == forecast::Mode::PostCopy);
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
        let (id, d, auto_converge) = (vm.id, dest.clone(), params.auto_converge);
        let result = self
            .hv
            .call("migration", within, move |hv| hv.migrate(id, &d, &params))
            .await;
        out_gauge.dec();
        match result {
            Ok(report) => {
                // How it ran: post-copy once it switched, else as it was started.
                let ran = if report.post_copy {
                    forecast::Mode::PostCopy
                } else if auto_converge {
                    forecast::Mode::PreCopyAutoConverge
                } else {
                    forecast::Mode::PreCopy
                };
                let actual = journal::Figures {
                    mode: ran.name().to_string(),
                    bytes: report.bytes,
                    time_ms: report.elapsed.as_millis() as u64,
                    downtime_ms: report.downtime.as_millis() as u64,
                };
                self.ledger()
                    .succeeded(entry.id, vm.id, (self.me, to), actual.clone());
                let m = &self.metrics.migrations;
                m.by_mode
                    .get_or_create(&metrics::ModeLabels {
                        predicted: forecast.map_or("none", |f| f.mode.name()),
                        actual: ran.name(),
                    })
                    .inc();
                m.succeeded.inc();
                m.duration.observe(report.elapsed.as_secs_f64());
                m.downtime.observe(report.downtime.as_secs_f64());
                m.transferred.observe(report.bytes as f64);
                // A report without figures (the destination kept no completed statistics, as
                // after a post-copy migration on libvirt 9.0) says nothing of the forecast.
                if let Some(f) = forecast.filter(|f| f.bytes > 0.0 && report.bytes > 0) {
                    m.forecast_bytes_ratio
                        .observe(report.bytes as f64 / f.bytes);
                }
                if let Some(f) = forecast.filter(|f| !f.total.is_zero()) {
                    m.forecast_seconds_ratio
                        .observe(report.elapsed.as_secs_f64() / f.total.as_secs_f64());
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
                Ok(Ran { predicted, actual })
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
    /// The forecast's choice for migrating `vm` with `params` (`crate::forecast`), from what the
    /// hypervisor last measured of it, with the measured figures it rests on. `None` without a
    /// measured dirty rate, or without a bandwidth cap (the link's share is then unknown).
    fn choice(
        &self,
        vm: &Vm,
        params: &MigrationParams,
    ) -> Option<(forecast::Choice, forecast::Resident, f64)> {
        let m = self.inventory.measured(vm.id)?;
        let workload = forecast::Workload::measured(&m, vm.memory_mib)?;
        let choice = forecast::choose(&workload, &forecast::Limits::of(params)?);
        let resident = forecast::Resident::of(&m, vm.memory_mib);
        Some((choice, resident, m.dirty_mib_s.unwrap_or(0.0)))
    }

    /// What migrating `vm` with `params` should cost, in the mode the forecast picks (or, when
    /// none converges, what pre-copy would send before it is aborted).
    fn forecast(&self, vm: &Vm, params: &MigrationParams) -> Option<forecast::Forecast> {
        self.choice(vm, params).map(|(c, _, _)| c.forecast())
    }

    /// `vm`'s own migration cost per destination under `[decision] migration_cost_model =
    /// "forecast"` (`None` under the constant model): the bytes the forecast expects in the mode
    /// it picks; without a forecast (no bandwidth cap, no dirty rate yet, or no mode that
    /// converges: the hold-back then speaks), the first pass, the least a migration sends.
    pub(super) fn move_charge(&self, vm: &Vm, config: &Config) -> Option<MoveCharge> {
        if config.decision.migration_cost_model != CostModel::Forecast {
            return None;
        }
        let params = config.migration.params();
        let bytes = match self.choice(vm, &params) {
            Some((forecast::Choice::Move(f), _, _)) => f.bytes,
            Some((forecast::Choice::WouldNotConverge { .. }, first, _)) => first.mib as f64 * MIB,
            None => {
                let first = self.inventory.measured(vm.id).map_or(vm.memory_mib, |m| {
                    forecast::Resident::of(&m, vm.memory_mib).mib
                });
                first as f64 * MIB
            }
        };
        Some(MoveCharge {
            bytes,
            horizon_s: config.decision.migration_cost_horizon_s as f64,
            disruption: config.decision.disruption_cost,
        })
    }

    /// The CPU `vm` used recently, in cores (0 when not measured).
    pub(super) fn cpu_cores(&self, vm: VmId) -> f64 {
        self.inventory
            .measured(vm)
            .and_then(|m| m.cpu_cores)
            .unwrap_or(0.0)
    }

    /// The forecast's figures for migrating `vm` now under the configured parameters, as the
    /// journal and the decision record keep them.
    pub(super) fn predicted(&self, vm: VmId) -> Option<journal::Figures> {
        let v = self.inventory.get(vm)?;
        self.forecast(&v, &self.config().migration.params())
            .as_ref()
            .map(figures_of)
    }

    /// Why a chosen move of `vm` should not start now, from its forecast: no mode the
    /// configuration allows converges (`WouldNotConverge`), or its first dirty rate is being
    /// measured and the forecast is a second or two away (`Busy`: the next turn decides with it).
    pub(super) fn forecast_holds_back(&self, vm: VmId) -> Option<(TurnOutcome, String)> {
        let pending = self
            .inventory
            .measured(vm)
            .is_some_and(|m| m.dirty_rate_pending);
        if pending && self.config().migration.bandwidth_mib_s > 0 {
            return Some((
                TurnOutcome::Busy,
                "forecast pending: the guest's dirty rate is being measured; deferred".into(),
            ));
        }
        self.would_not_converge(vm)
            .map(|why| (TurnOutcome::WouldNotConverge, why))
    }

    /// Why `vm` should not start migrating under the configured migration parameters: the
    /// forecast says no mode they allow converges. `None` when one does, or without a forecast.
    fn would_not_converge(&self, vm: VmId) -> Option<String> {
        let v = self.inventory.get(vm)?;
        let params = self.config().migration.params();
        let (forecast::Choice::WouldNotConverge { pre_copy }, first, dirty) =
            self.choice(&v, &params)?
        else {
            return None;
        };
        let allow = match (params.auto_converge, params.post_copy) {
            (false, false) => "migration.auto_converge or migration.post_copy",
            (true, false) => "migration.post_copy (auto-converge would not do)",
            // Post-copy always ends: a forecast with it allowed never lands here.
            (_, true) => "a larger migration.bandwidth_mib_s",
        };
        Some(format!(
            "forecast: would not converge: the guest dirties {dirty:.1} MiB/s, first pass \
             {} MiB ({}), against {} MiB/s and a {} ms downtime budget; pre-copy would send \
             {:.0} MiB over {:.1} s before it is aborted; allow {allow} to move it",
            first.mib,
            first.basis.name(),
            params.bandwidth_mib_s,
            params.max_downtime.as_millis(),
            pre_copy.bytes / (1024.0 * 1024.0),
            pre_copy.total.as_secs_f64(),
        ))
    }

    /// The forecast of a chosen move of `vm`, as a decision's detail shows it (in dry-run too,
    /// where nothing is held back: then it may say the move would not converge).
    pub(super) fn forecast_summary(&self, vm: VmId) -> Option<String> {
        let v = self.inventory.get(vm)?;
        let (choice, first, _) = self.choice(&v, &self.config().migration.params())?;
        let forecast::Choice::Move(f) = choice else {
            return self.would_not_converge(vm);
        };
        Some(format!(
            "forecast: {}, {:.0} MiB in {:.1} s, downtime {} ms (first pass {} MiB, {})",
            f.mode.name(),
            f.bytes / (1024.0 * 1024.0),
            f.total.as_secs_f64(),
            f.downtime.as_millis(),
            first.mib,
            first.basis.name(),
        ))
    }
}

/// A migration that went through: what its forecast predicted and what the hypervisor reported.
pub(super) struct Ran {
    pub predicted: Option<journal::Figures>,
    pub actual: journal::Figures,
}

/// A forecast as a record keeps it.
fn figures_of(f: &forecast::Forecast) -> journal::Figures {
    journal::Figures {
        mode: f.mode.name().to_string(),
        bytes: f.bytes as u64,
        time_ms: f.total.as_millis() as u64,
        downtime_ms: f.downtime.as_millis() as u64,
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
