//! What the daemon's hypervisor reads cost with libvirt: the calls on the token path
//! (`vms_incremental()` on each token arrival: one listing of the domains' states, XML only for
//! domains that changed; `state(vm)` at the start of each local turn) and the periodic refresh
//! (`vms()`, every domain's XML, + `capacity()`, every 2 s), timed through scored's libvirt backend against a real libvirtd
//! of the namespace testbed with 1 and then `SCORED_BENCH_GUESTS` (default 8) running guests.
//!
//!     sudo cargo bench --bench hypervisor_calls     # SCORED_BENCH_CALLS=200 by default
//!
//! Needs root (namespaces, libvirtd); not part of the test suite. Writes the table to
//! target/bench-hypervisor-calls.md as well, for docs/evaluation.md.

use scored::hypervisor::Hypervisor;
use scored::hypervisor::libvirt::{LibvirtConfig, LibvirtHypervisor};
use scored::proto::VmId;
use scored::testbed::{GuestSpec, Testbed, TestbedConfig};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// `calls` timings of `f`, in ms: "median (p90; max)".
fn time<T>(calls: usize, mut f: impl FnMut() -> T) -> String {
    let mut ms: Vec<f64> = (0..calls)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    format!("{:.2} ({:.2}; {:.2})", q(0.5), q(0.9), ms[ms.len() - 1])
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("hypervisor_calls bench: skipped: needs root (network namespaces, libvirtd)");
        return;
    }
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
            .max(1)
    };
    let (calls, guests) = (
        env("SCORED_BENCH_CALLS", 200),
        env("SCORED_BENCH_GUESTS", 8),
    );
    let dir = std::env::temp_dir().join("scored-bench-sclvcalls");
    let _ = std::fs::remove_dir_all(&dir);
    let tb = Testbed::up(&TestbedConfig::new("sclvcalls", &dir)).expect("testbed up");
    let hv = LibvirtHypervisor::connect(LibvirtConfig::new(&tb.state.hosts[0].local_uri()))
        .expect("connect");
    let mut rows = Vec::new();
    let mut running = 0;
    for n in [1, guests] {
        while running < n {
            let name = format!("g{running}");
            let g = GuestSpec::new(&name, Ipv4Addr::new(10, 77, 1, 100 + running as u8));
            tb.start_guest(0, &g).expect("start guest");
            running += 1;
        }
        for i in 0..running {
            tb.wait_heartbeat(&format!("g{i}"), 2, Duration::from_secs(120))
                .expect("guest boots");
        }
        assert_eq!(hv.vms().expect("vms").len(), running);
        let vm = VmId::from_ipv4(Ipv4Addr::new(10, 77, 1, 100));
        hv.vms().expect("vms");
        let described = hv.descriptions();
        let arrival = time(calls, || hv.vms_incremental().expect("vms_incremental"));
        assert_eq!(
            hv.descriptions(),
            described,
            "nothing changed: the arrival read described no domain"
        );
        rows.push(format!(
            "| {running} | {arrival} | {} | {} | {} | {} |",
            time(calls, || hv.vms().expect("vms")),
            time(calls, || hv.capacity().expect("capacity")),
            time(calls, || {
                (hv.vms().expect("vms"), hv.capacity().expect("capacity"))
            }),
            time(calls, || hv.state(vm).expect("state")),
        ));
        eprintln!("{}", rows.last().unwrap());
    }
    let table = format!(
        "| guests | `vms_incremental()` (each token arrival) ms: median (p90; max) | `vms()` | `capacity()` | both (periodic refresh) | `state(vm)` (each local turn) |\n\
         |---:|---|---|---|---|---|\n{}\n\n{calls} calls each.\n",
        rows.join("\n")
    );
    println!("\n{table}");
    let out =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-hypervisor-calls.md");
    let _ = std::fs::write(&out, &table);
    eprintln!("written to {}", out.display());
}
