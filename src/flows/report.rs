//! `scored flows`: capture on the given taps and print, every interval, the per-(VM, partner)
//! rates scored would decide from, with the counters of what it could not attribute. So an
//! operator sees what scored sees.
//!
//! Command-line edge: it prints, sleeps and reads interface lists; the measuring itself is the
//! same [`CaptureSource`] the daemon runs.

use super::answered::answered_rate;
use super::capture::{CaptureConfig, CaptureSource, TapSpec};
use super::frame::Mac;
use super::table::TableConfig;
use super::{FlowSource, Malformed, Skip, SourceStats, format_mac, parse_mac};
use anyhow::{Context, bail};
use scored_proto::VmId;
use std::io::Write;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// `TAP` or `TAP=MAC` on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapArg {
    pub name: String,
    pub mac: Option<Mac>,
}

impl FromStr for TapArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, mac) = match s.split_once('=') {
            Some((n, m)) => {
                let mac = parse_mac(m).ok_or_else(|| {
                    format!("`{m}` in `{s}` is not a MAC address (want aa:bb:cc:dd:ee:ff)")
                })?;
                (n, Some(mac))
            }
            None => (s, None),
        };
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            return Err(format!(
                "`{name}` is not an interface name (1–15 characters, no '/' or spaces)"
            ));
        }
        Ok(TapArg {
            name: name.to_string(),
            mac,
        })
    }
}

/// What `scored flows` was asked to do.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub taps: Vec<TapArg>,
    pub interval: Duration,
    /// Reports to print before exiting (`None`: until interrupted).
    pub count: Option<u64>,
    pub window: Duration,
    pub sample_one_in: u32,
}

/// Resolves each tap argument into what capture needs. Without a MAC the interface's own MAC
/// is the VM's (capturing on an endpoint, such as a VM's own interface or a veth end), and its
/// IPv4 address, if any, is the VM id; with a MAC (a tap: give the guest's MAC, as in
/// `virsh domiflist`) the VM id is learned from the first IPv4 frame the VM sends.
pub fn resolve(taps: &[TapArg]) -> anyhow::Result<Vec<TapSpec>> {
    let ifaces = pnet::datalink::interfaces();
    taps.iter()
        .map(|t| {
            let iface = ifaces.iter().find(|i| i.name == t.name);
            let Some(iface) = iface else {
                bail!("interface {} does not exist in this network namespace", t.name);
            };
            match t.mac {
                Some(mac) => Ok(TapSpec {
                    name: t.name.clone(),
                    vm: None,
                    macs: vec![mac],
                }),
                None => {
                    let Some(mac) = iface.mac.filter(|m| m.octets() != [0; 6]) else {
                        bail!(
                            "interface {} has no MAC address of its own: give the VM's, as {}=aa:bb:cc:dd:ee:ff",
                            t.name,
                            t.name
                        );
                    };
                    let vm = iface.ips.iter().find_map(|n| match n.ip() {
                        IpAddr::V4(a) => Some(VmId::from_ipv4(a)),
                        IpAddr::V6(_) => None,
                    });
                    Ok(TapSpec {
                        name: t.name.clone(),
                        vm,
                        macs: vec![mac.octets()],
                    })
                }
            }
        })
        .collect()
}

/// Runs the debug command: capture, and print a report every interval to `out`.
pub fn watch(opts: &WatchOptions, out: &mut impl Write) -> anyhow::Result<()> {
    if opts.interval < Duration::from_millis(100) {
        bail!("--interval must be at least 0.1 s");
    }
    let specs = resolve(&opts.taps)?;
    let table = TableConfig {
        window: opts.window,
        // A fresh hash seed per run, as the daemon should use: partners a VM chooses must not
        // be able to aim at one probe run.
        seed: rand::random(),
        ..TableConfig::default()
    };
    let config = CaptureConfig {
        table,
        sample_one_in: opts.sample_one_in.max(1),
        ..CaptureConfig::default()
    };
    let mut source = CaptureSource::new(config).context("flow table")?;
    source.set_taps(&specs).context("start capture")?;
    for s in &specs {
        writeln!(
            out,
            "capturing on {} (VM MAC {}, VM id {})",
            s.name,
            s.macs.iter().map(format_mac).collect::<Vec<_>>().join(","),
            s.vm.map(|v| v.to_string())
                .unwrap_or_else(|| "learned from its traffic".into())
        )?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while opts.count.is_none_or(|c| n < c) {
        std::thread::sleep(opts.interval);
        n += 1;
        print_report(&source, start.elapsed(), out)?;
        out.flush()?;
    }
    source.shutdown();
    Ok(())
}

/// Human-readable bytes/s.
pub fn format_rate(bytes_per_sec: f64) -> String {
    let units = ["B/s", "kB/s", "MB/s", "GB/s"];
    let mut v = bytes_per_sec;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

fn print_report(
    source: &CaptureSource,
    elapsed: Duration,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let stats = source.stats();
    writeln!(out, "--- {:.1} s", elapsed.as_secs_f64())?;
    writeln!(
        out,
        "{:<16} {:<16} {:>12} {:>12} {:>12} {:>10} {:>6}",
        "vm", "partner", "out", "in", "counted", "frames/s", "idle"
    )?;
    let mut vms: Vec<VmId> = stats.taps.iter().filter_map(|t| t.vm).collect();
    vms.sort_unstable();
    vms.dedup();
    for vm in vms {
        let mut rates = source.partner_rates(vm);
        rates.sort_by(|a, b| b.rate().total_cmp(&a.rate()));
        for r in rates {
            writeln!(
                out,
                "{:<16} {:<16} {:>12} {:>12} {:>12} {:>10.1} {:>5}s",
                vm.to_string(),
                r.partner.to_string(),
                format_rate(r.out_bytes_per_sec),
                format_rate(r.in_bytes_per_sec),
                // λ as the decision reads it: what the partner answers (flows::answered).
                format_rate(answered_rate(&r)),
                r.packets_per_sec,
                r.idle.as_secs()
            )?;
        }
    }
    write_counters(&stats, out)
}

fn write_counters(stats: &SourceStats, out: &mut impl Write) -> std::io::Result<()> {
    let f = &stats.frames;
    let skipped: Vec<String> = Skip::ALL
        .iter()
        .filter(|s| f.skipped(**s) > 0)
        .map(|s| format!("{} {}", s.name(), f.skipped(*s)))
        .collect();
    let malformed: Vec<String> = Malformed::ALL
        .iter()
        .filter(|m| f.malformed(**m) > 0)
        .map(|m| format!("{} {}", m.name(), f.malformed(*m)))
        .collect();
    writeln!(
        out,
        "frames {} ({} bytes), attributed {}, not attributed: {}; malformed: {}",
        f.frames,
        f.bytes,
        f.attributed_frames,
        if skipped.is_empty() {
            "none".into()
        } else {
            skipped.join(", ")
        },
        if malformed.is_empty() {
            "none".into()
        } else {
            malformed.join(", ")
        }
    )?;
    writeln!(
        out,
        "kernel drops {}, capture cpu {:.3} s, table {} entries ({} evicted, {} expired)",
        stats.kernel_drops,
        stats.cpu.as_secs_f64(),
        stats.table.entries,
        stats.table.evictions,
        stats.table.expirations
    )?;
    for t in stats.taps.iter().filter(|t| !t.running) {
        writeln!(
            out,
            "tap {} stopped: {}",
            t.name,
            t.error.as_deref().unwrap_or("unknown reason")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_args() {
        assert_eq!(
            "vnet0".parse::<TapArg>().unwrap(),
            TapArg {
                name: "vnet0".into(),
                mac: None
            }
        );
        let t: TapArg = "vnet1=52:54:00:00:00:01".parse().unwrap();
        assert_eq!(t.mac, Some([0x52, 0x54, 0, 0, 0, 1]));
        let e = "vnet1=52:54:00".parse::<TapArg>().unwrap_err();
        assert!(e.contains("not a MAC address"), "{e}");
        assert!("".parse::<TapArg>().is_err());
        assert!("a/b".parse::<TapArg>().is_err());
        assert!("averyveryverylongname".parse::<TapArg>().is_err());
    }

    #[test]
    fn rates_read_well() {
        assert_eq!(format_rate(0.0), "0.0 B/s");
        assert_eq!(format_rate(1234.0), "1.2 kB/s");
        assert_eq!(format_rate(12_500_000.0), "12.5 MB/s");
        assert_eq!(format_rate(3e12), "3000.0 GB/s");
    }

    #[test]
    fn missing_interface_is_named() {
        let e = resolve(&["scored-nope0".parse().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("scored-nope0"), "{e}");
    }
}
