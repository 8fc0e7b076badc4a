//! The migration forecast against migrations the testbed really made. `bench/forecast.rs`
//! measured each guest with scored's libvirt backend, forecast it, migrated it and recorded both;
//! `tests/fixtures/forecast.json` keeps a selection: an idle guest and one rewriting 8 MiB, fresh
//! and after a first migration, and one rewriting 24 MiB whose migrations stalled and were
//! aborted. From the recorded measurements, today's model must predict the bytes each completed
//! migration sent within ±30 %, and must say the guest whose migrations were aborted would not
//! converge.

use scored::forecast::{self, Limits, Resident, Workload};
use scored::hypervisor::{Measured, MigrationParams};
use serde::Deserialize;
use std::time::Duration;

#[derive(Deserialize)]
struct Fixture {
    guest: String,
    memory_mib: u64,
    measured: Measured,
    bandwidth_mib_s: u64,
    max_downtime_ms: u64,
    actual: Actual,
}

#[derive(Deserialize)]
struct Actual {
    bytes: Option<u64>,
    aborted: Option<String>,
}

fn fixtures() -> Vec<Fixture> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/forecast.json");
    let text = std::fs::read_to_string(path).expect("read the fixtures");
    serde_json::from_str(&text).expect("parse the fixtures")
}

/// The limits the bench migrated under (and the daemon derives from its configuration).
fn limits(f: &Fixture) -> Limits {
    Limits::of(&MigrationParams {
        bandwidth_mib_s: f.bandwidth_mib_s,
        max_downtime: Duration::from_millis(f.max_downtime_ms),
        auto_converge: false,
        timeout: Duration::from_secs(120),
        stall_timeout: Duration::from_secs(10),
        ..Default::default()
    })
    .expect("a capped link")
}

#[test]
fn completed_migrations_are_predicted_within_30_percent() {
    let all = fixtures();
    let completed: Vec<&Fixture> = all.iter().filter(|f| f.actual.bytes.is_some()).collect();
    assert!(
        completed.len() >= 4,
        "too few completed migrations recorded"
    );
    for f in completed {
        let w = Workload::measured(&f.measured, f.memory_mib).expect("a measured dirty rate");
        let predicted = forecast::expected(&w, &limits(f));
        let actual = f.actual.bytes.unwrap() as f64;
        let error = predicted.bytes / actual - 1.0;
        let basis = Resident::of(&f.measured, f.memory_mib).basis.name();
        eprintln!(
            "{}: predicted {:.1} MiB, actual {:.1} MiB ({:+.0} %), first pass from {basis}",
            f.guest,
            predicted.bytes / 1048576.0,
            actual / 1048576.0,
            error * 100.0
        );
        assert!(predicted.converges, "{}: {predicted:?}", f.guest);
        assert!(
            error.abs() <= 0.30,
            "{}: predicted {predicted:?}, sent {actual} bytes ({:+.0} %)",
            f.guest,
            error * 100.0
        );
    }
}

#[test]
fn a_guest_whose_migrations_stalled_is_forecast_not_to_converge() {
    let all = fixtures();
    let aborted: Vec<&Fixture> = all.iter().filter(|f| f.actual.aborted.is_some()).collect();
    assert!(!aborted.is_empty(), "no aborted migration recorded");
    for f in aborted {
        let w = Workload::measured(&f.measured, f.memory_mib).expect("a measured dirty rate");
        let choice = forecast::choose(&w, &limits(f));
        assert!(
            matches!(choice, forecast::Choice::WouldNotConverge { .. }),
            "{} ({:?}) was aborted for real: {choice:?}",
            f.guest,
            f.actual.aborted
        );
    }
}
