//! Live migration on the namespace testbed: ≥ 20 migrations of an idle 256 MiB guest per
//! configuration (with and without compression and auto-converge, two downtime budgets), through
//! scored's libvirt backend. Prints median and spread of total time, downtime and bytes (from the
//! destination's completed-job statistics) and of the delay from the call to the job starting.
//!
//!     sudo cargo bench --bench migration            # SCORED_BENCH_MIGRATIONS=20 by default
//!
//! Needs root (namespaces, libvirtd); not part of the test suite. Writes the table to
//! target/bench-migration.md as well, for docs/evaluation.md.

use scored::hypervisor::libvirt::{LibvirtConfig, LibvirtHypervisor};
use scored::hypervisor::{Compression, MigrationParams};
use scored::proto::VmId;
use scored::testbed::{GuestSpec, Testbed, TestbedConfig, TestbedHost};
use std::net::Ipv4Addr;
use std::time::Duration;

struct Setting {
    name: &'static str,
    params: MigrationParams,
}

#[derive(Default)]
struct Samples {
    elapsed_ms: Vec<f64>,
    downtime_ms: Vec<f64>,
    mib: Vec<f64>,
    started_ms: Vec<f64>,
    wall_ms: Vec<f64>,
}

fn spread(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    format!(
        "{:.0} ({:.0}–{:.0}; p90 {:.0})",
        q(0.5),
        s[0],
        s[s.len() - 1],
        q(0.9)
    )
}

fn spread1(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    format!("{:.1} ({:.1}–{:.1})", q(0.5), s[0], s[s.len() - 1])
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("migration bench: skipped: needs root (network namespaces, libvirtd)");
        return;
    }
    let n: usize = std::env::var("SCORED_BENCH_MIGRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(2);
    let dir = std::env::temp_dir().join("scored-bench-sclvbench");
    let _ = std::fs::remove_dir_all(&dir);
    let tb = Testbed::up(&TestbedConfig::new("sclvbench", &dir)).expect("testbed up");
    let ip = Ipv4Addr::new(10, 77, 1, 50);
    let mut g = GuestSpec::new("bench", ip);
    g.memory_mib = 256;
    tb.start_guest(0, &g).expect("start guest");
    let first = tb
        .wait_heartbeat("bench", 5, Duration::from_secs(60))
        .expect("guest boots");
    let id = VmId::from_ipv4(ip);
    let hosts: Vec<&TestbedHost> = tb.state.hosts.iter().collect();
    let hv: Vec<LibvirtHypervisor> = hosts
        .iter()
        .map(|h| LibvirtHypervisor::connect(LibvirtConfig::new(&h.local_uri())).expect("connect"))
        .collect();
    let dest = |h: &TestbedHost| h.destination();
    let setting = |name, downtime_ms, auto_converge, compression| Setting {
        name,
        params: MigrationParams {
            max_downtime: Duration::from_millis(downtime_ms),
            auto_converge,
            compression,
            ..Default::default()
        },
    };
    let settings = [
        setting("plain, 300 ms budget", 300, false, Compression::None),
        setting(
            "xbzrle + auto-converge, 300 ms",
            300,
            true,
            Compression::Xbzrle,
        ),
        setting("plain, 30 ms budget", 30, false, Compression::None),
        setting(
            "xbzrle + auto-converge, 30 ms",
            30,
            true,
            Compression::Xbzrle,
        ),
    ];
    let mut at = 0usize;
    let mut rows = Vec::new();
    for s in &settings {
        let mut x = Samples::default();
        for i in 0..n {
            let to = 1 - at;
            let (r, t) = hv[at]
                .migrate_traced(id, &dest(hosts[to]), &s.params)
                .unwrap_or_else(|e| panic!("{} #{i}: {e}", s.name));
            at = to;
            x.elapsed_ms.push(r.elapsed.as_secs_f64() * 1e3);
            x.downtime_ms.push(r.downtime.as_secs_f64() * 1e3);
            x.mib.push(r.bytes as f64 / 1048576.0);
            x.started_ms
                .push(t.job_started_after.unwrap_or_default().as_secs_f64() * 1e3);
            x.wall_ms.push(t.wall.as_secs_f64() * 1e3);
            eprintln!(
                "{} #{i}: elapsed {:?} downtime {:?} {} B",
                s.name, r.elapsed, r.downtime, r.bytes
            );
            // Let the guest run a beat at its new home before it moves again.
            std::thread::sleep(Duration::from_millis(500));
        }
        rows.push(format!(
            "| {} | {n} | {} | {} | {} | {} | {} |",
            s.name,
            spread(&x.elapsed_ms),
            spread(&x.downtime_ms),
            spread1(&x.mib),
            spread(&x.started_ms),
            spread(&x.wall_ms),
        ));
    }
    let console = tb.console("bench");
    assert!(
        console.continuous() && console.last().is_some_and(|b| b.n > first.n),
        "the guest must have kept running across every migration"
    );
    let table = format!(
        "| setting | migrations | total time ms: median (min–max; p90) | downtime ms | MiB moved: median (min–max) | call → job running, ms | wall time of the call, ms |\n\
         |---|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    println!("\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-migration.md");
    let _ = std::fs::write(&out, &table);
    eprintln!("written to {}", out.display());
}
