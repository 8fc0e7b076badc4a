//! Host load in the decision: a destination reports its CPUs and load per CPU
//! (`/scored/capacity/3`), and a move onto a host that would then exceed
//! `[decision] max_destination_cpu_load` with the VM's recent CPU use is not taken. A real
//! `Daemon` deciding over the in-process transport; h2's answers played by hand.

mod support;

use scored::config::Config;
use scored::daemon::Assessment;
use scored::decide::TurnOutcome;
use support::two_hosts::{assess_subject, measured_subject};

/// h1 decides for its subject, which used `cores` of CPU recently, while h2 answers with
/// `load` per CPU over `cpus` CPUs; the gate at `max_load` (0: off).
async fn decide(cores: Option<f64>, (load, cpus): (f32, u32), max_load: f64) -> Assessment {
    let mut config = Config::default();
    config.decision.cooldown_base_s = 0;
    config.decision.max_destination_cpu_load = max_load;
    assess_subject(config, Some(measured_subject(0.0, cores)), (load, cpus)).await
}

#[tokio::test]
async fn a_destination_without_cpu_for_the_vm_is_not_taken() {
    // h2 runs at 0.8 per CPU over 4 CPUs; the subject used 0.9 of a core: with it, h2 would
    // run at 1.025 per CPU.
    let a = decide(Some(0.9), (0.8, 4), 0.9).await;
    assert_eq!(a.outcome, TurnOutcome::NoCapacity, "{}", a.detail);
    let d = a.decision.unwrap();
    assert_eq!((d.full, d.cpu_full), (1, 1));
    assert!(
        a.detail
            .contains("1 of the full without CPU for its 0.90 core(s) under load 0.9"),
        "{}",
        a.detail
    );
    // The same host with room for it: 0.5 + 0.225 ≤ 0.9.
    let a = decide(Some(0.9), (0.5, 4), 0.9).await;
    assert_eq!(a.outcome, TurnOutcome::Migrated, "{}", a.detail);
    // The gate off (the default), a host that does not report its CPUs (an older peer) or a
    // VM whose CPU use is not measured yet: not judged.
    for (cores, answer, max) in [
        (Some(0.9), (0.8, 4), 0.0),
        (Some(0.9), (0.8, 0), 0.9),
        (None, (0.8, 4), 0.9),
    ] {
        let a = decide(cores, answer, max).await;
        assert_eq!(
            a.outcome,
            TurnOutcome::Migrated,
            "{cores:?} {answer:?} {max}: {}",
            a.detail
        );
    }
}
