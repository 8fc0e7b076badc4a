//! The per-frame path of capture, from an in-memory buffer: parse the headers, attribute the
//! frame to (VM, partner, direction), aggregate it in the tap's tally, and flush the tally into
//! the flow table whenever it fills — everything a capture thread does per frame except the
//! system call that fetches it.
//!
//! Target (issue 4): ≥ 10M frames/s on one core. Run: `cargo bench --bench frame_parse`.
//! Times are CPU time of the benchmark thread (see `cpu_time.rs`).

#[path = "cpu_time.rs"]
mod cpu_time;

use cpu_time::ThreadCpuTime;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use scored::flows::attribute::{Ipv6Aliases, TapTally};
use scored::flows::{FlowTable, TableConfig};
use scored::proto::VmId;
use std::hint::black_box;
use std::time::Duration;

const VM_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const VM_IP: [u8; 4] = [10, 0, 0, 1];

/// An Ethernet frame of `len` bytes between the VM and partner `p` (10.1.x.y), one VLAN tag on
/// every fourth frame, IPv6-mapped on none (the common case is plain IPv4).
fn frame(out: bool, p: u32, len: usize, vlan: bool) -> Vec<u8> {
    let peer_mac = [0x52, 0x54, 0, 1, (p >> 8) as u8, p as u8];
    let peer_ip = [10, 1, (p >> 8) as u8, p as u8];
    let (smac, dmac, sip, dip) = if out {
        (VM_MAC, peer_mac, VM_IP, peer_ip)
    } else {
        (peer_mac, VM_MAC, peer_ip, VM_IP)
    };
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    if vlan {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
    }
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_len = (len - f.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&sip);
    f.extend_from_slice(&dip);
    f.resize(len, 0);
    f
}

/// 4096 frames over `partners` partners, both directions, sizes from ACKs to full MTU; flows
/// come in short runs as they do on a real tap.
fn workload(partners: u32) -> Vec<Vec<u8>> {
    let sizes = [66, 66, 120, 590, 1514, 1514, 1514, 9014];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut frames = Vec::new();
    while frames.len() < 4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = (x % partners as u64) as u32;
        let run = 1 + (x >> 32) % 8;
        for r in 0..run {
            let len = sizes[((x >> 8) as usize + r as usize) % sizes.len()];
            frames.push(frame(r % 3 != 2, p, len, frames.len() % 4 == 0));
        }
    }
    frames.truncate(4096);
    frames
}

fn parse_benches(c: &mut Criterion<ThreadCpuTime>) {
    let aliases = Ipv6Aliases::new();
    let mut g = c.benchmark_group("frame_parse");
    for partners in [10u32, 100, 1000] {
        let frames = workload(partners);
        let mut table = FlowTable::new(TableConfig::default()).unwrap();
        let mut tally = TapTally::new(Some(VmId::from_ipv4(VM_IP.into())), vec![VM_MAC], 1);
        g.throughput(Throughput::Elements(frames.len() as u64));
        g.bench_function(format!("parse+account, {partners} partners"), |b| {
            b.iter(|| {
                for f in &frames {
                    if tally.frame(black_box(f), &aliases) {
                        tally.flush(&mut table, Duration::from_secs(1));
                    }
                }
                tally.flush(&mut table, Duration::from_secs(1));
            })
        });
        assert_eq!(tally.counters().malformed_total(), 0);
        assert_eq!(tally.counters().frames, tally.counters().attributed_frames);
        g.bench_function(format!("parse only, {partners} partners"), |b| {
            b.iter(|| {
                for f in &frames {
                    black_box(scored::flows::frame::parse(black_box(f)).ok());
                }
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = parse_benches
}
criterion_main!(benches);
