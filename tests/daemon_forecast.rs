//! A chosen move is held back when the migration forecast, from what the hypervisor measured of
//! the guest, says no mode the operator allows would converge; otherwise the decision names the
//! mode and the predicted bytes, time and downtime. A real `Daemon` deciding over the in-process
//! transport, its hypervisor reporting the guest's measurements.

mod support;

use scored::config::{Config, CostModel};
use scored::daemon::Assessment;
use scored::decide::TurnOutcome;
use scored::hypervisor::Measured;
use support::two_hosts::{assess_subject, measured_subject};

/// h1 decides for a 512 MiB subject measured as `m`, migrations configured by `edit`.
async fn decide(m: Option<Measured>, edit: impl FnOnce(&mut Config)) -> (TurnOutcome, String) {
    let a = assess(m, edit).await;
    (a.outcome, a.detail)
}

/// [`decide`], the whole assessment.
async fn assess(m: Option<Measured>, edit: impl FnOnce(&mut Config)) -> Assessment {
    let mut config = Config::default();
    config.decision.cooldown_base_s = 0;
    edit(&mut config);
    assess_subject(config, m, (0.1, 0)).await
}

/// A guest rewriting memory at `dirty` MiB/s, using 200 MiB.
fn busy(dirty: f64) -> Option<Measured> {
    Some(measured_subject(dirty, Some(0.9)))
}

/// A 32 MiB/s link with a 300 ms downtime budget: 9.6 MiB fit in the last copy.
fn link(c: &mut Config, auto_converge: bool, post_copy: bool) {
    c.migration.bandwidth_mib_s = 32;
    c.migration.max_downtime_ms = 300;
    c.migration.auto_converge = auto_converge;
    c.migration.post_copy = post_copy;
}

#[tokio::test]
async fn a_guest_whose_passes_never_fit_the_budget_stays_unless_a_mode_that_ends_is_allowed() {
    // 28 MiB/s against 32: each pass leaves at least the 28 MiB dirtied within the measured
    // second, never the 9.6 MiB the budget fits; the stall rule would abort it.
    let (outcome, detail) = decide(busy(28.0), |c| link(c, false, false)).await;
    assert_eq!(outcome, TurnOutcome::WouldNotConverge, "{detail}");
    assert!(
        detail.contains(
            "would not converge: the guest dirties 28.0 MiB/s, first pass 200 MiB (guest-used)"
        ),
        "{detail}"
    );
    assert!(
        detail.contains("allow migration.auto_converge or migration.post_copy"),
        "{detail}"
    );

    // Auto-converge throttles it until a pass fits.
    let (outcome, detail) = decide(busy(28.0), |c| link(c, true, false)).await;
    assert_eq!(outcome, TurnOutcome::Migrated, "{detail}");
    assert!(
        detail.contains("forecast: pre_copy_auto_converge"),
        "{detail}"
    );

    // 48 MiB/s outruns the link: every pass grows to the whole memory, and the throttle climbs
    // too slowly for the stall rule. Only post-copy ends.
    let (outcome, detail) = decide(busy(48.0), |c| link(c, true, false)).await;
    assert_eq!(outcome, TurnOutcome::WouldNotConverge, "{detail}");
    assert!(
        detail.contains("allow migration.post_copy (auto-converge would not do)"),
        "{detail}"
    );
    let (outcome, detail) = decide(busy(48.0), |c| link(c, true, true)).await;
    assert_eq!(outcome, TurnOutcome::Migrated, "{detail}");
    assert!(detail.contains("forecast: post_copy"), "{detail}");

    // In dry-run nothing is held back, but the record says what the move would do.
    let (outcome, detail) = decide(busy(28.0), |c| {
        link(c, false, false);
        c.decision.dry_run = true;
    })
    .await;
    assert_eq!(outcome, TurnOutcome::DryRun, "{detail}");
    assert!(detail.contains("would not converge"), "{detail}");
}

#[tokio::test]
async fn a_quiet_guest_moves_with_its_forecast_and_an_unmeasured_one_moves_without() {
    let (outcome, detail) = decide(busy(1.0), |c| link(c, false, false)).await;
    assert_eq!(outcome, TurnOutcome::Migrated, "{detail}");
    assert!(
        detail.contains("forecast: pre_copy, ")
            && detail.contains("(first pass 200 MiB, guest-used)"),
        "{detail}"
    );

    // No measurement, or no bandwidth cap (the migration's share of the link unknown): no
    // forecast, and the move goes ahead as before.
    let (outcome, detail) = decide(None, |c| link(c, false, false)).await;
    assert_eq!(outcome, TurnOutcome::Migrated, "{detail}");
    assert!(!detail.contains("forecast"), "{detail}");
    let (outcome, detail) = decide(busy(48.0), |c| c.migration.auto_converge = false).await;
    assert_eq!(outcome, TurnOutcome::Migrated, "{detail}");
    assert!(!detail.contains("forecast"), "{detail}");
}

#[tokio::test]
async fn a_move_waits_for_a_dirty_rate_being_measured_and_not_for_one_never_coming() {
    // The first calculation is running: the forecast is a second or two away, the next turn
    // decides with it.
    let measuring = Measured {
        dirty_mib_s: None,
        dirty_rate_pending: true,
        ..busy(0.0).unwrap()
    };
    let (outcome, detail) = decide(Some(measuring), |c| link(c, false, false)).await;
    assert_eq!(outcome, TurnOutcome::Busy, "{detail}");
    assert!(detail.contains("forecast pending"), "{detail}");
    // A hypervisor that measures no dirty rate (or refused the calculation): no forecast, and
    // the move goes ahead as without one.
    let never = Measured {
        dirty_mib_s: None,
        dirty_rate_pending: false,
        ..busy(0.0).unwrap()
    };
    let (outcome, detail) = decide(Some(never), |c| link(c, false, false)).await;
    assert_eq!(outcome, TurnOutcome::Migrated, "{detail}");
    assert!(!detail.contains("forecast"), "{detail}");
}

#[tokio::test]
async fn under_the_forecast_cost_model_a_move_must_pay_for_its_own_migration_traffic() {
    // The subject sends 1,000 B/s to its partner one rack hop away: the move saves 2,000 cost
    // units a second. Under the constant model c_m is 5 % of its cost (50): it moves.
    let a = assess(busy(1.0), |c| link(c, false, false)).await;
    assert_eq!(a.outcome, TurnOutcome::Migrated, "{}", a.detail);
    let floor = |a: &Assessment| (a.decision.as_ref().unwrap().migration_cost - 50.0).abs() < 1e-6;
    assert!(floor(&a), "{:?}", a.decision);
    let predicted = a.predicted.expect("a forecast for the chosen move");
    assert_eq!(predicted.mode, "pre_copy");
    // Under the forecast model the ~200 MiB it would send across the rack, spread over 15
    // minutes, cost ~233,000 a second: far more than it saves.
    let forecast = |horizon_s: u64| {
        move |c: &mut Config| {
            link(c, false, false);
            c.decision.migration_cost_model = CostModel::Forecast;
            c.decision.migration_cost_horizon_s = horizon_s;
        }
    };
    let a = assess(busy(1.0), forecast(900)).await;
    assert_eq!(a.outcome, TurnOutcome::NoBenefit, "{}", a.detail);
    let c_m = a.decision.as_ref().unwrap().migration_cost;
    let expected = predicted.bytes as f64 / 900.0;
    assert!((c_m / expected - 1.0).abs() < 1e-6, "{c_m} vs {expected}");
    // Over a horizon long enough the traffic costs less than the constant floor: it moves,
    // charged the floor.
    let a = assess(busy(1.0), forecast(1_000_000_000)).await;
    assert_eq!(a.outcome, TurnOutcome::Migrated, "{}", a.detail);
    assert!(floor(&a), "{:?}", a.decision);
    // Unmeasured, the guest is charged its whole configured memory (512 MiB), the most a first
    // pass sends.
    let a = assess(None, forecast(900)).await;
    assert_eq!(a.outcome, TurnOutcome::NoBenefit, "{}", a.detail);
    let c_m = a.decision.as_ref().unwrap().migration_cost;
    assert!(
        (c_m - 512.0 * 1024.0 * 1024.0 / 900.0).abs() < 1e-3,
        "{c_m}"
    );
}
