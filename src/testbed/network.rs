//! The testbed's network: each host's namespace with its bridge and address, the fabric
//! namespace where the topology's switches are bridges joined by veths, and the check that the
//! fabric forwards. It changes only namespaces and links it created under the testbed's prefix.

use super::{HOST_NET, PREFIX_LEN, Result, Testbed, TestbedError, run};
use crate::topology::Topology;
use std::net::Ipv4Addr;
use std::process::Command;

pub(super) fn ip(args: &[&str], what: &str) -> Result<String> {
    run(Command::new("ip").args(args), what)
}

pub(super) fn host_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(HOST_NET[0], HOST_NET[1], 0, (i + 1) as u8)
}

/// Which bridge gets which fixed MAC address.
#[derive(Clone, Copy, Debug)]
pub(super) enum BridgeMac {
    /// `br0` of the i-th host: carries the host's address.
    Host(usize),
    /// The j-th switch of the topology, in the fabric namespace.
    Switch(usize),
    /// The bridge above several roots.
    Top,
}

impl BridgeMac {
    /// `02:73:63:…` (locally administered, "sc"), unique in the testbed's one L2 domain and
    /// apart from the guests' `52:54:…` and their taps' `fe:54:…`.
    fn address(self) -> String {
        let (kind, n) = match self {
            BridgeMac::Host(i) => (0, i),
            BridgeMac::Switch(j) => (1, j),
            BridgeMac::Top => (2, 0),
        };
        format!(
            "02:73:63:{kind:02x}:{:02x}:{:02x}",
            (n >> 8) & 0xff,
            n & 0xff
        )
    }
}

/// A bridge with a MAC address of its own. Without one, Linux gives a bridge the lowest MAC of
/// its ports and changes it as ports come and go: when an incoming guest's tap
/// (`fe:54:…`, the guest's MAC with libvirt's `fe` prefix) sorts below the uplink's random MAC,
/// the host's address moves to the tap's MAC, which the source host also has on its own bridge
/// (the guest's tap there) and so delivers to itself: the source can no longer reach the
/// destination, in the middle of the migration. CI saw exactly this once.
pub(super) fn bridge(ns: &str, name: &str, mac: BridgeMac) -> Result<()> {
    ip(
        &[
            "-n",
            ns,
            "link",
            "add",
            name,
            "address",
            &mac.address(),
            "type",
            "bridge",
        ],
        "create a bridge",
    )?;
    ip(&["-n", ns, "link", "set", name, "up"], "bridge up")?;
    Ok(())
}

impl Testbed {
    pub(super) fn fabric_ns(&self) -> String {
        format!("{}-fabric", self.state.prefix)
    }

    /// Bridges for the switch tree in the fabric namespace, one namespace per host with `br0`
    /// (address + VM taps) and a veth uplink to its rack's bridge.
    pub(super) fn build_network(&self, topo: &Topology) -> Result<()> {
        let fab = self.fabric_ns();
        ip(&["netns", "add", &fab], "create the fabric namespace")?;
        ip(&["-n", &fab, "link", "set", "lo", "up"], "fabric lo up")?;
        let roots = topo
            .switches()
            .iter()
            .filter(|s| s.parent.is_none())
            .count();
        if roots > 1 {
            bridge(&fab, "top", BridgeMac::Top)?;
        }
        for (j, s) in topo.switches().iter().enumerate() {
            let br = format!("s{j}");
            bridge(&fab, &br, BridgeMac::Switch(j))?;
            let parent = match s.parent {
                Some(p) => format!("s{}", p.0),
                None if roots > 1 => "top".to_string(),
                None => continue,
            };
            let (up, down) = (format!("s{j}up"), format!("s{j}dn"));
            ip(
                &[
                    "-n", &fab, "link", "add", &up, "type", "veth", "peer", "name", &down,
                ],
                "link a switch to its parent",
            )?;
            ip(
                &["-n", &fab, "link", "set", &up, "master", &br, "up"],
                "switch uplink",
            )?;
            ip(
                &["-n", &fab, "link", "set", &down, "master", &parent, "up"],
                "switch downlink",
            )?;
        }
        for (i, (h, th)) in topo.hosts().iter().zip(&self.state.hosts).enumerate() {
            let ns = &th.netns;
            ip(&["netns", "add", ns], "create a host namespace")?;
            ip(&["-n", ns, "link", "set", "lo", "up"], "host lo up")?;
            bridge(ns, "br0", BridgeMac::Host(i))?;
            let addr = format!("{}/{}", th.address, PREFIX_LEN);
            ip(
                &["-n", ns, "addr", "add", &addr, "dev", "br0"],
                "host address",
            )?;
            let port = format!("h{i}");
            ip(
                &[
                    "-n", &fab, "link", "add", &port, "type", "veth", "peer", "name", "up0",
                    "netns", ns,
                ],
                "host uplink",
            )?;
            ip(
                &["-n", ns, "link", "set", "up0", "master", "br0", "up"],
                "host uplink into br0",
            )?;
            let rack = format!("s{}", h.rack().0);
            ip(
                &["-n", &fab, "link", "set", &port, "master", &rack, "up"],
                "host port on its rack switch",
            )?;
        }
        Ok(())
    }

    /// Every host reaches the first over the fabric (bounded: one echo each, 2 s at most), so a
    /// broken fabric fails `up` with a clear error instead of hanging a migration's TCP connect.
    pub(super) fn check_fabric(&self) -> Result<()> {
        let Some(first) = self.state.hosts.first() else {
            return Ok(());
        };
        let target = first.address.to_string();
        for h in self.state.hosts.iter().skip(1) {
            let mut ok = false;
            for _ in 0..3 {
                let r = run(
                    Command::new("ip").args([
                        "netns", "exec", &h.netns, "ping", "-c", "1", "-W", "2", &target,
                    ]),
                    "check the fabric",
                );
                if r.is_ok() {
                    ok = true;
                    break;
                }
            }
            if !ok {
                return Err(TestbedError::Invalid(format!(
                    "host {} ({}) cannot reach {} ({}) over the fabric",
                    h.name, h.address, first.name, first.address
                )));
            }
        }
        Ok(())
    }
}
