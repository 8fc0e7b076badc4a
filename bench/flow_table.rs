//! Flow table benchmarks on the thesis's two flow sets, at 1M (VM, partner) entries:
//! set A "all sources unique" (1M local VMs × 1 partner), set B "1000 per source"
//! (1000 VMs × 1000 partners). Insert, update, λ(u,·) lookup by VM, expiry; and the memory per
//! entry, printed once per set (criterion measures time only).
//!
//! Targets (issue 4): ≥ 10M updates/s on one core; ≤ 64 bytes per entry; λ(u,·) for a VM with
//! 1000 partners in ≤ 100 µs. Run: `cargo bench --bench flow_table`. Times are CPU time of the
//! benchmark thread (see `cpu_time.rs`).

#[path = "cpu_time.rs"]
mod cpu_time;

use cpu_time::ThreadCpuTime;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use scored::flows::{Direction, FlowTable, TableConfig, Update};
use scored::proto::VmId;
use std::hint::black_box;
use std::time::Duration;

const N: usize = 1_000_000;

#[derive(Clone, Copy)]
enum FlowSet {
    /// All sources unique: every entry has its own VM.
    A,
    /// 1000 partners per source.
    B,
}

impl FlowSet {
    fn name(self) -> &'static str {
        match self {
            FlowSet::A => "set-A-1M-sources",
            FlowSet::B => "set-B-1000x1000",
        }
    }

    fn key(self, i: usize) -> (VmId, VmId) {
        match self {
            FlowSet::A => (VmId(0x0a00_0000 + i as u32), VmId(0x0b00_0000 + i as u32)),
            FlowSet::B => (
                VmId(0x0a00_0000 + (i / 1000) as u32),
                VmId(0x0b00_0000 + (i % 1000) as u32),
            ),
        }
    }
}

fn config() -> TableConfig {
    TableConfig {
        cap: N,
        ..TableConfig::default()
    }
}

/// A fixed pseudo-random permutation of 0..n (xorshift; no RNG crate needed for a shuffle).
fn shuffled(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn filled(set: FlowSet) -> FlowTable {
    let mut t = FlowTable::new(config()).unwrap();
    for i in 0..N {
        let (u, v) = set.key(i);
        t.record(u, v, Direction::Out, 1500, 1, Duration::from_secs(1));
    }
    assert_eq!(t.len(), N);
    let s = t.stats();
    eprintln!(
        "{}: {} entries, {} slots, {} bytes = {:.1} bytes/entry, {} rebuilds",
        set.name(),
        s.entries,
        s.slots,
        s.memory_bytes,
        s.memory_bytes as f64 / s.entries as f64,
        s.rebuilds
    );
    t
}

fn table_benches(c: &mut Criterion<ThreadCpuTime>) {
    for set in [FlowSet::A, FlowSet::B] {
        let keys: Vec<(VmId, VmId)> = shuffled(N).into_iter().map(|i| set.key(i)).collect();
        let mut g = c.benchmark_group(format!("flow_table/{}", set.name()));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(4));

        g.throughput(Throughput::Elements(N as u64));
        g.bench_function("insert 1M", |b| {
            b.iter_batched(
                || FlowTable::new(config()).unwrap(),
                |mut t| {
                    for (u, v) in &keys {
                        t.record(*u, *v, Direction::Out, 1500, 1, Duration::from_secs(1));
                    }
                    t
                },
                BatchSize::LargeInput,
            )
        });

        let mut table = filled(set);
        // Random order over all 1M entries: every update misses the cache (the worst case; a
        // tap's frames mostly hit a handful of hot entries).
        g.bench_function("update 1M random, same tick", |b| {
            b.iter(|| {
                for (u, v) in &keys {
                    table.record(*u, *v, Direction::In, 100, 1, Duration::from_secs(1));
                }
            })
        });
        // As the capture threads write: batches of 64 (a tally's flush), each slot requested from
        // memory a few updates ahead.
        let batches: Vec<Vec<Update>> = keys
            .chunks(64)
            .map(|c| {
                c.iter()
                    .map(|(u, v)| Update {
                        vm: *u,
                        partner: *v,
                        dir: Direction::Out,
                        bytes: 100,
                        packets: 1,
                    })
                    .collect()
            })
            .collect();
        g.bench_function("update 1M random, batches of 64", |b| {
            b.iter(|| {
                for batch in &batches {
                    table.record_batch(batch, Duration::from_secs(1));
                }
            })
        });
        let mut second = 2u64;
        g.bench_function("update 1M random, each in a new tick", |b| {
            b.iter(|| {
                second += 1;
                for (u, v) in &keys {
                    table.record(*u, *v, Direction::In, 100, 1, Duration::from_secs(second));
                }
            })
        });

        let vms: Vec<VmId> = match set {
            FlowSet::A => keys.iter().take(1000).map(|k| k.0).collect(),
            FlowSet::B => (0..1000).map(|i| VmId(0x0a00_0000 + i)).collect(),
        };
        let mut next = 0usize;
        g.throughput(Throughput::Elements(1));
        g.bench_function("lambda(u) one VM", |b| {
            b.iter(|| {
                next = (next + 7) % vms.len();
                let p = table.partners(vms[next], Duration::from_secs(second));
                black_box(p.len())
            })
        });

        // Expiry scan over every slot: first with nothing to expire, then with everything.
        g.throughput(Throughput::Elements(N as u64));
        g.bench_function("expire pass, none idle", |b| {
            b.iter(|| black_box(table.expire_all(Duration::from_secs(second))))
        });
        g.bench_function("expire pass, all idle", |b| {
            b.iter_batched(
                || table.clone(),
                |mut t| {
                    let n = t.expire_all(Duration::from_secs(second + 1000));
                    assert_eq!(n, N);
                    t
                },
                BatchSize::LargeInput,
            )
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = table_benches
}
criterion_main!(benches);
