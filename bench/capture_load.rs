//! Real capture at a bounded offered load: a "VM" (network namespace) writes UDP frames onto
//! its interface at a fixed rate for a fixed time; scored's capture source watches the
//! host-side veth (the VM's tap) and we report what it saw, what the kernel dropped, and the CPU
//! time of the capture thread per million frames: with the TPACKET_V3 ring, with the recvmmsg
//! reader, and with the ring and 1-in-10 sampling. (With the ring the kernel copies each frame's
//! headers into it in the sender's context: that cost is not in the capture thread's figure.)
//!
//! Needs root, takes about half a minute, so it only runs when asked:
//!     SCORED_CAPTURE_BENCH=1 cargo bench --bench capture_load
//! Optional: SCORED_CAPTURE_PPS (default 200000), SCORED_CAPTURE_SECS (default 5).
//! Frames go to a MAC nobody has, so the bridge drops them after the tap: the only consumer of
//! the traffic is the capture under test.

#[path = "../tests/support/host.rs"]
#[allow(dead_code)]
mod host;
#[path = "../tests/support/netns.rs"]
#[allow(dead_code)]
mod netns;

use host::is_root;
use netns::{TestHost, in_ns};
use scored::flows::capture::{CaptureConfig, CaptureSource};
use scored::flows::{FlowSource, TableConfig};
use scored::hypervisor::{Interface, Vm};
use scored::proto::VmId;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const MAC_A: [u8; 6] = [0x02, 0x5c, 0, 0, 0, 0x0a];
const NOBODY: [u8; 6] = [0x02, 0x5c, 0, 0, 0, 0xee];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A 100-byte UDP frame from VM A (10.77.0.1) to 10.77.0.2.
fn udp_frame() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&NOBODY);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 86, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&[10, 77, 0, 1, 10, 77, 0, 2]);
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x09, 0, 66, 0, 0]);
    f.resize(100, 0x5a);
    f
}

/// A raw AF_PACKET socket bound to `ifname`, sending whole frames with `sendmmsg(2)` (pnet's
/// sender makes a poll and a send per frame, too slow to offer 200k frames/s here).
struct RawSender {
    fd: std::os::fd::OwnedFd,
}

impl RawSender {
    fn open(ifname: &str) -> std::io::Result<RawSender> {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: valid C string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: plain system call; checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = index as i32;
        sll.sll_protocol = 0;
        use std::os::fd::AsRawFd;
        // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RawSender { fd })
    }

    /// Sends `frame` `count` times (at most 64 per call); returns how many went out.
    fn send(&self, frame: &[u8], count: usize) -> usize {
        use std::os::fd::AsRawFd;
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        };
        // SAFETY: mmsghdr is plain data; all-zero is valid.
        let mut msgs: [libc::mmsghdr; 64] = unsafe { std::mem::zeroed() };
        for m in msgs.iter_mut() {
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let mut sent = 0;
        while sent < count {
            let n = (count - sent).min(64);
            // SAFETY: `msgs` holds `n` headers pointing at `frame`, which outlives the call.
            let r = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
            if r <= 0 {
                break;
            }
            sent += r as usize;
        }
        sent
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for the kernel to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Sends `pps` frames per second for `secs` seconds from `ns`'s eth0, in 1 ms bursts. Returns
/// the frames sent, the time it took, and the sending thread's CPU time (which includes the
/// kernel's transmit path: veth, bridge, and the delivery to the capture socket).
fn offer(ns: &str, pps: u64, secs: u64) -> (u64, Duration, Duration) {
    in_ns(ns, || {
        let tx = RawSender::open("eth0").expect("raw socket on the VM's eth0");
        let frame = udp_frame();
        let total = pps * secs;
        let cpu0 = thread_cpu();
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            // Frames due by now, capped at one burst so a stall is not followed by a flood.
            let due = (start.elapsed().as_secs_f64() * pps as f64) as u64;
            let burst = due
                .saturating_sub(sent)
                .min(pps / 1000 + 1)
                .min(total - sent);
            sent += tx.send(&frame, burst as usize) as u64;
            if start.elapsed() > Duration::from_secs(secs * 3) {
                break; // the generator cannot keep up; report what it did
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        (sent, start.elapsed(), thread_cpu() - cpu0)
    })
}

fn run(host: &TestHost, vm: &Vm, pps: u64, secs: u64, sample: u32, ring: bool) {
    in_ns(&host.host, || {
        let defaults = CaptureConfig::default();
        let mut src = CaptureSource::new(CaptureConfig {
            table: TableConfig::default(),
            sample_one_in: sample,
            ring_bytes: if ring { defaults.ring_bytes } else { 0 },
            ..defaults
        })
        .expect("capture source");
        src.follow(std::slice::from_ref(vm))
            .expect("capture on tapa");
        std::thread::sleep(Duration::from_millis(200));
        let rx0 = host.counter("tapa", "rx_packets").unwrap();
        let cpu0 = src.stats().cpu;
        let (sent, took, sender_cpu) = offer(&host.vms[0].ns, pps, secs);
        std::thread::sleep(Duration::from_millis(500));
        let stats = src.stats();
        let on_tap = host.counter("tapa", "rx_packets").unwrap() - rx0;
        let seen = stats.frames.frames;
        let cpu = stats.cpu - cpu0;
        // The measured rate: these frames are one-way, so λ as the decision counts it (what
        // the partner answers, flows::answered) is zero.
        let lambda: f64 = src.partner_rates(vm.id).iter().map(|p| p.rate()).sum();
        let reader = src.taps()[0].reader;
        println!(
            "{reader}, sample 1/{sample}: offered {pps} frames/s for {secs} s; generator sent {sent} in {:.2} s \
             ({:.0}/s); tap counted {on_tap}; capture kept {seen} ({:.0}/s), scaled back to {} \
             frames; kernel drops {}; capture CPU {:.3} s = {:.3} s per million frames on the tap \
             ({:.1}% of a core); sender CPU {:.2} s per million frames; λ estimate {:.2} MB/s",
            took.as_secs_f64(),
            sent as f64 / took.as_secs_f64(),
            seen as f64 / took.as_secs_f64(),
            seen * sample as u64,
            stats.kernel_drops,
            cpu.as_secs_f64(),
            cpu.as_secs_f64() / (on_tap as f64 / 1e6),
            100.0 * cpu.as_secs_f64() / took.as_secs_f64(),
            sender_cpu.as_secs_f64() / (sent as f64 / 1e6),
            lambda / 1e6,
        );
    });
}

fn main() {
    if std::env::var("SCORED_CAPTURE_BENCH").as_deref() != Ok("1") {
        eprintln!("capture_load: skipped (set SCORED_CAPTURE_BENCH=1 to run; needs root)");
        return;
    }
    if !is_root() {
        eprintln!("capture_load: skipped: needs root for network namespaces and capture");
        return;
    }
    let pps = env_u64("SCORED_CAPTURE_PPS", 200_000);
    let secs = env_u64("SCORED_CAPTURE_SECS", 5).clamp(1, 60);
    let mut host = TestHost::new("bl").expect("host namespace");
    let a = host.add_vm("tapa", MAC_A, [10, 77, 0, 1]).expect("VM a");
    let vm = Vm {
        id: VmId::from_ipv4(a.ip),
        name: "a".into(),
        uuid: [0; 16],
        memory_mib: 0,
        vcpus: 1,
        interfaces: vec![Interface {
            mac: MAC_A,
            tap: Some("tapa".into()),
            addresses: vec![IpAddr::V4(a.ip)],
        }],
        pinned: false,
        groups: Vec::new(),
    };
    run(&host, &vm, pps, secs, 1, true);
    run(&host, &vm, pps, secs, 1, false);
    run(&host, &vm, pps, secs, 10, true);
}
