//! Cost of the operational paths that run while the daemon idles: one Prometheus scrape (encode
//! the whole registry, scored + process + libp2p families) and reading the configuration.

use criterion::{Criterion, criterion_group, criterion_main};
use prometheus_client::registry::Registry;
use std::hint::black_box;
use std::path::Path;

fn scrape(c: &mut Criterion) {
    let mut r = Registry::default();
    let levels = ["rack", "aggregation", "pod", "core"].map(String::from);
    let m = scored::metrics::Metrics::register(&mut r, &levels);
    let _p2p = libp2p::metrics::Metrics::new(&mut r);
    m.token.passes.inc_by(1000);
    m.migrations.duration.observe(4.0);
    let size = scored::metrics::encode(&r).len();
    eprintln!("exposition: {size} bytes");
    c.bench_function("metrics_encode_scrape", |b| {
        b.iter(|| black_box(scored::metrics::encode(&r)))
    });
}

fn config(c: &mut Criterion) {
    let text = include_str!("../dist/scored.toml");
    let uncommented: String = text
        .lines()
        .map(|l| {
            l.strip_prefix('#')
                .filter(|r| r.contains(" = ") && !r.starts_with(' '))
                .unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n");
    c.bench_function("config_parse_full_file", |b| {
        b.iter(|| {
            scored::config::Config::parse(
                Path::new("/etc/scored/scored.toml"),
                black_box(&uncommented),
                &[],
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, scrape, config);
criterion_main!(benches);
