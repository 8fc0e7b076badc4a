//! The issue-3 scenario at full scale: `topology/dc-2560.toml` (2,560 hosts), 80% of the 40,960 VM
//! slots filled, 5 token rounds, all four policies (each also with group moves) and the centralised
//! baseline; then the c_m sweep of Fig. 5.3 on its own. Prints the summary table, wall and CPU time of each part.
//!
//!     cargo bench --bench sim_dc2560
//!     SCORED_SIM_VMS=40960 SCORED_SIM_OUT=/tmp/sim cargo bench --bench sim_dc2560
//!
//! (`SCORED_SIM_VMS` sets the VM count, `SCORED_SIM_OUT` writes the CSVs and figures there.)

use scored::sim::study::{self, Study};
use scored::sim::{Scenario, ScenarioParams, output};
use scored::topology::Topology;
use std::path::Path;
use std::time::Instant;

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointer it is given; RUSAGE_SELF is valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) };
    if rc != 0 {
        return f64::NAN;
    }
    // SAFETY: getrusage returned 0, so it filled the struct.
    let u = unsafe { u.assume_init() };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: there, only check it builds.
    if !std::env::args().any(|a| a == "--bench") {
        println!("sim_dc2560: run it with `cargo bench --bench sim_dc2560`");
        return;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("topology/dc-2560.toml");
    let t = Instant::now();
    let topo = Topology::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let vms = std::env::var("SCORED_SIM_VMS").ok().map(|v| {
        v.parse::<usize>()
            .unwrap_or_else(|_| panic!("SCORED_SIM_VMS={v} is not a number"))
    });
    let sc = Scenario::build(
        topo,
        ScenarioParams {
            vms,
            ..ScenarioParams::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "scenario built in {:.2} s: {} VMs, {} pairs",
        t.elapsed().as_secs_f64(),
        sc.vms(),
        sc.rates[0].pairs().len()
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    let cpu = cpu_seconds();
    let main = Study {
        sweep: Vec::new(),
        threads,
        ..Study::default()
    };
    let report = study::simulate(&sc, &main, &|_| {});
    println!(
        "\n4 policies (+ group moves) x 5 iterations + baseline: wall {:.1} s, CPU {:.1} s, {threads} threads\n",
        report.wall.as_secs_f64(),
        cpu_seconds() - cpu
    );
    print!("{}", output::summary_text(&sc, &report));

    let cpu = cpu_seconds();
    let sweep = Study {
        baseline: false,
        threads,
        ..Study::default()
    };
    let swept = study::simulate(&sc, &sweep, &|_| {});
    println!(
        "\nc_m sweep ({} runs): wall {:.1} s, CPU {:.1} s\n",
        swept.sweep.len(),
        swept.wall.as_secs_f64(),
        cpu_seconds() - cpu
    );
    if let Ok(dir) = std::env::var("SCORED_SIM_OUT") {
        let mut both = report.clone();
        both.sweep = swept.sweep.clone();
        let files =
            output::write_all(Path::new(&dir), &sc, &both).unwrap_or_else(|e| panic!("{e}"));
        println!("wrote {} files to {dir}", files.len());
    }
    print!("{}", output::summary_text(&sc, &swept));
}
