//! One S-CORE decision (`decide::Decider::decide`) on the 2,560-host data centre for a VM with
//! 10, 100 and 1,000 partners on random hosts, locations known, every host answering with room.
//! The decision part of issue 6's target (≤ 0.1 / 0.5 / 5 ms; original 0.32 / 2.97 / 30.54 s).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scored::cost::PartnerTraffic;
use scored::decide::{Decider, Gates, Subject};
use scored::hypervisor::Capacity;
use scored::topology::{HostId, Topology};
use scored_proto::VmId;
use std::hint::black_box;
use std::path::Path;

fn bench(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("topology/dc-2560.toml");
    let topo = Topology::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let hosts = topo.hosts().len() as u32;
    let mut decider = Decider::new(&topo);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let room = Capacity {
        running_vms: 8,
        incoming_migrations: 0,
        free_memory_mib: 8 * 1024,
        total_memory_mib: 17408,
        cpu_load: 0.0,
        cpus: 0,
    };
    let mut group = c.benchmark_group("decide");
    for k in [10usize, 100, 1000] {
        let partners: Vec<PartnerTraffic> = (0..k)
            .map(|_| PartnerTraffic {
                host: HostId(rng.random_range(0..hosts)),
                rate: rng.random_range(1.0..1e6),
            })
            .collect();
        let subject = Subject {
            vm: VmId(1),
            host: HostId(0),
            memory_mib: 1024,
            cpu_cores: 0.0,
            partners: &partners,
        };
        let gates = Gates::thesis(0.0);
        group.bench_with_input(BenchmarkId::new("partners", k), &k, |b, _| {
            b.iter(|| black_box(decider.decide(&subject, &gates, |_| Some(room))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
