//! The migration forecast against real migrations: on the namespace testbed, an idle guest and
//! guests rewriting memory, each measured by scored's libvirt backend (the QEMU process's resident
//! memory, the guest's own used memory from its balloon statistics, the non-zero memory its last
//! migration sent, libvirt's dirty-rate calculation), forecast by `scored::forecast`, then
//! migrated back and forth through a capped link; prints predicted against actual bytes, time and
//! downtime (the destination's completed-job statistics) for every migration, and writes them as
//! JSON fixtures (`tests/fixtures/forecast.json` holds a selection, checked by
//! `tests/forecast_fixtures.rs`).
//!
//!     sudo cargo bench --bench forecast      # SCORED_BENCH_MIGRATIONS=10 per guest by default
//!
//! Needs root (namespaces, libvirtd); not part of the test suite. Writes
//! target/bench-forecast.md and target/bench-forecast.json.

use scored::forecast::{self, Limits, Workload};
use scored::hypervisor::libvirt::{LibvirtConfig, LibvirtHypervisor};
use scored::hypervisor::{Hypervisor, MigrationParams};
use scored::proto::VmId;
use scored::testbed::{GuestSpec, Testbed, TestbedConfig, TestbedHost};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("forecast bench: skipped: needs root (network namespaces, libvirtd)");
        return;
    }
    let n: usize = std::env::var("SCORED_BENCH_MIGRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .max(1);
    let dir = std::env::temp_dir().join("scored-bench-sclvfcst");
    let _ = std::fs::remove_dir_all(&dir);
    let tb = Testbed::up(&TestbedConfig::new("sclvfcst", &dir)).expect("testbed up");
    let hosts: Vec<&TestbedHost> = tb.state.hosts.iter().collect();
    let hv: Vec<LibvirtHypervisor> = hosts
        .iter()
        .map(|h| LibvirtHypervisor::connect(LibvirtConfig::new(&h.local_uri())).expect("connect"))
        .collect();
    let dest = |h: &TestbedHost| h.destination();
    let params = MigrationParams {
        bandwidth_mib_s: 64,
        max_downtime: Duration::from_millis(300),
        auto_converge: false,
        timeout: Duration::from_secs(120),
        stall_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let limits = Limits::of(&params).expect("a capped link");
    // An idle guest; one rewriting 8 MiB (a pass leaves 8 MiB, 125 ms at 64 MiB/s: converges);
    // one rewriting 24 MiB (375 ms: no pass fits the 300 ms budget, forecast not to converge).
    let guests = [
        ("idle", 0u32, 60u8, n),
        ("dirty8", 8, 61, n),
        ("dirty24", 24, 62, 2),
    ];
    let mut rows = Vec::new();
    let mut fixtures = Vec::new();
    for (name, dirty, last, tries) in guests {
        let ip = Ipv4Addr::new(10, 77, 1, last);
        let mut g = GuestSpec::new(name, ip);
        g.memory_mib = 256;
        g.dirty_mib = dirty;
        tb.start_guest(0, &g).expect("start guest");
        tb.wait_heartbeat(name, 5, Duration::from_secs(120))
            .expect("guest boots");
        let id = VmId::from_ipv4(ip);
        let mut at = 0usize;
        for i in 0..tries {
            // A fresh dirty rate each time: the first call starts the calculation. The balloon
            // reports the guest's used memory every 2 s once its driver is loaded.
            let deadline = Instant::now() + Duration::from_secs(60);
            let measured = loop {
                hv[at].vms().expect("vms");
                let m = hv[at].measure().expect("measure");
                if let Some(m) = m
                    .into_iter()
                    .find(|m| m.vm == id && m.dirty_mib_s.is_some() && m.guest_used_mib.is_some())
                {
                    break m;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name}: no dirty rate or used memory measured"
                );
                std::thread::sleep(Duration::from_millis(500));
            };
            // As the daemon forecasts (`daemon::migration`).
            let w = Workload::measured(&measured, g.memory_mib).expect("dirty rate measured");
            let f = forecast::expected(&w, &limits);
            // The guest, its figures and the forecast: the first cells of every row.
            let first = forecast::Resident::of(&measured, g.memory_mib);
            let or_dash = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            let forecast_cells = format!(
                "{name} | {i} | {} | {} | {} | {} ({}) | {:.1} | {:.1} ({})",
                or_dash(measured.resident_mib),
                or_dash(measured.guest_used_mib),
                or_dash(measured.arrived_nonzero_mib),
                first.mib,
                first.basis.name(),
                measured.dirty_mib_s.unwrap_or(0.0),
                f.bytes / MIB,
                if f.converges {
                    "converges"
                } else {
                    "would not converge"
                },
            );
            // One fixture per migration: what was measured and forecast, then what happened.
            let fixture = |actual: serde_json::Value| {
                serde_json::json!({
                    "guest": name,
                    "memory_mib": g.memory_mib,
                    "measured": measured,
                    "bandwidth_mib_s": params.bandwidth_mib_s,
                    "max_downtime_ms": params.max_downtime.as_millis() as u64,
                    "predicted": {"bytes": f.bytes, "seconds": f.total.as_secs_f64(),
                                  "downtime_ms": f.downtime.as_secs_f64() * 1e3,
                                  "passes": f.passes, "mode": f.mode.name(),
                                  "converges": f.converges},
                    "actual": actual,
                })
            };
            let to = 1 - at;
            let r = match hv[at].migrate(id, &dest(hosts[to]), &params) {
                Ok(r) => r,
                Err(e) => {
                    // The guest stays where it is: the forecast said so or it was wrong.
                    let row = format!(
                        "| {forecast_cells} | aborted: {e} | | {:.2} | | | |",
                        f.total.as_secs_f64()
                    );
                    eprintln!("{row}");
                    rows.push(row);
                    fixtures.push(fixture(serde_json::json!({"aborted": e.to_string()})));
                    std::thread::sleep(Duration::from_secs(2));
                    continue;
                }
            };
            at = to;
            let row = format!(
                "| {forecast_cells} | {:.1} | {:+.0} % | {:.2} | {:.2} | {:.0} | {:.0} |",
                r.bytes as f64 / MIB,
                (f.bytes / r.bytes as f64 - 1.0) * 100.0,
                f.total.as_secs_f64(),
                r.elapsed.as_secs_f64(),
                f.downtime.as_secs_f64() * 1e3,
                r.downtime.as_secs_f64() * 1e3,
            );
            eprintln!("{row}");
            rows.push(row);
            fixtures.push(fixture(serde_json::json!({
                "bytes": r.bytes, "seconds": r.elapsed.as_secs_f64(),
                "downtime_ms": r.downtime.as_secs_f64() * 1e3,
            })));
            std::thread::sleep(Duration::from_millis(500));
        }
        // Off before the next guest: a guest left rewriting memory would take the CPU the next
        // one's migration needs (TCG, TLS), and its achieved bandwidth would fall below the cap.
        let off = std::process::Command::new("virsh")
            .args(["-c", &hosts[at].local_uri(), "destroy", name])
            .output()
            .expect("virsh destroy");
        assert!(off.status.success(), "virsh destroy {name}: {off:?}");
    }
    let table = format!(
        "| guest | # | QEMU RSS MiB | guest used MiB | last arrival non-zero MiB | first pass MiB (basis) | dirty MiB/s | predicted MiB (forecast) | actual MiB | error (predicted / actual − 1) | predicted s | actual s | predicted downtime ms | actual downtime ms |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n{}\n",
        rows.join("\n")
    );
    println!("\n{table}");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let _ = std::fs::write(target.join("bench-forecast.md"), &table);
    let _ = std::fs::write(
        target.join("bench-forecast.json"),
        serde_json::to_string_pretty(&fixtures).unwrap(),
    );
    eprintln!("written to {}", target.join("bench-forecast.md").display());
}
