mod support;
use std::time::Duration;
use support::cluster::{Cluster, Options};
#[test]
fn scratch() {
    let mut c = Cluster::new(Options::default());
    let f = c.shared();
    for (vm, h) in f.placement() {
        eprintln!("placement {vm} {h}");
    }
    for (a, b, r) in &f.traffic {
        eprintln!("pair {a} {b} {r:.0}");
    }
    c.start_all();
    std::thread::sleep(Duration::from_secs(20));
    for i in 0..c.hosts.len() {
        if let Some(s) = c.status(i) {
            for v in &s.vms {
                eprintln!(
                    "{} vm {} cost {:.1} partners {:?}",
                    s.host,
                    v.id,
                    v.cost,
                    v.partners
                        .iter()
                        .map(|p| (
                            p.vm.clone(),
                            p.host.clone(),
                            p.level,
                            p.bytes_per_sec as u64
                        ))
                        .collect::<Vec<_>>()
                );
            }
        } else {
            eprintln!("h{} no status", i + 1);
        }
    }
}
