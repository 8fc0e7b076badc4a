//! Guests on the testbed's hosts: what a guest is ([`GuestSpec`]), its libvirt domain XML, its
//! start, and its serial console with the heartbeat the guest's init prints. Building the guest
//! image is `guest`'s job.

use super::{PREFIX_LEN, Result, Testbed, TestbedError};
use crate::hypervisor::GroupTag;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A guest for [`Testbed::start_guest`].
#[derive(Clone, Debug)]
pub struct GuestSpec {
    pub name: String,
    pub ip: Ipv4Addr,
    pub memory_mib: u64,
    pub peers: Vec<Ipv4Addr>,
    pub ping_size: u32,
    /// Seconds between echoes to each partner.
    pub ping_interval: f32,
    pub traffic_secs: u32,
    /// MiB the guest rewrites in a loop (0 = idle).
    pub dirty_mib: u32,
    /// Seconds after boot before the rewriting starts.
    pub dirty_after_secs: u32,
    pub pinned: bool,
    /// Placement groups of its metadata (`<scored:group …/>`), as an operator would set them.
    pub groups: Vec<GroupTag>,
}

impl GuestSpec {
    pub fn new(name: &str, ip: Ipv4Addr) -> Self {
        GuestSpec {
            name: name.to_string(),
            ip,
            memory_mib: 128,
            peers: Vec::new(),
            ping_size: 1000,
            ping_interval: 0.5,
            traffic_secs: 3600,
            dirty_mib: 0,
            dirty_after_secs: 0,
            pinned: false,
            groups: Vec::new(),
        }
    }

    /// The guest's `<scored:vm>` metadata element: its identity, its pin and its groups.
    pub fn metadata_xml(&self) -> String {
        let mut groups = String::new();
        for g in &self.groups {
            groups.push_str(&format!(
                "\n      <scored:group name='{}'",
                attribute(&g.name)
            ));
            if let Some(kind) = g.kind {
                groups.push_str(&format!(" kind='{}'", kind.name()));
            }
            if let Some(scope) = &g.scope {
                groups.push_str(&format!(" scope='{}'", attribute(scope)));
            }
            groups.push_str("/>");
        }
        let close = if groups.is_empty() {
            "/>".to_string()
        } else {
            format!(">{groups}\n    </scored:vm>")
        };
        format!(
            "<scored:vm xmlns:scored='{ns}' ip='{ip}' pinned='{pinned}'{close}",
            ns = crate::hypervisor::libvirt::METADATA_NS,
            ip = self.ip,
            pinned = if self.pinned { "yes" } else { "no" },
        )
    }

    /// Locally administered MAC derived from the address, so captures can map one to the other.
    pub fn mac(&self) -> String {
        let o = self.ip.octets();
        format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    }

    /// Host-side tap name (≤ 15 bytes), unique per guest address.
    pub fn tap(&self) -> String {
        let o = self.ip.octets();
        format!("sct{:02x}{:02x}", o[2], o[3])
    }
}

/// One `hb <name> <boot> <n>` line of a guest's serial console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub boot: String,
    pub n: u64,
}

/// What a guest printed on its serial console so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Console {
    /// Boot ids from the banner lines, one per boot.
    pub boots: Vec<String>,
    pub beats: Vec<Heartbeat>,
}

impl Console {
    pub fn parse(text: &str) -> Console {
        let mut c = Console::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["hb", _name, boot, n] => {
                    if let Ok(n) = n.parse() {
                        c.beats.push(Heartbeat {
                            boot: boot.to_string(),
                            n,
                        });
                    }
                }
                ["scored-guest", _name, "boot", boot, ..] => c.boots.push(boot.to_string()),
                _ => {}
            }
        }
        c
    }

    pub fn read(path: &Path) -> Console {
        // A console is written by QEMU as it runs: bytes that are not UTF-8 are line noise.
        let bytes = std::fs::read(path).unwrap_or_default();
        Console::parse(&String::from_utf8_lossy(&bytes))
    }

    pub fn last(&self) -> Option<&Heartbeat> {
        self.beats.last()
    }

    /// The guest booted once and its heartbeat never went backwards or changed boot id.
    pub fn continuous(&self) -> bool {
        self.boots.len() == 1
            && self.beats.iter().all(|b| b.boot == self.boots[0])
            && self.beats.windows(2).all(|w| w[1].n > w[0].n)
    }
}

/// `text` as the value of an attribute quoted with `'`.
fn attribute(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('\'', "&apos;")
}

impl Testbed {
    pub fn console_path(&self, guest: &str) -> PathBuf {
        self.dir.join("console").join(format!("{guest}.log"))
    }

    pub fn console(&self, guest: &str) -> Console {
        Console::read(&self.console_path(guest))
    }

    /// Waits until the guest's heartbeat reaches `n`.
    pub fn wait_heartbeat(&self, guest: &str, n: u64, timeout: Duration) -> Result<Heartbeat> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.console(guest);
            if let Some(b) = c.last().filter(|b| b.n >= n) {
                return Ok(b.clone());
            }
            if Instant::now() >= deadline {
                return Err(TestbedError::Invalid(format!(
                    "guest {guest}: heartbeat {n} not seen within {timeout:?} (last: {:?}; console {})",
                    c.last(),
                    self.console_path(guest).display()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The libvirt domain XML of a testbed guest (diskless: kernel + initramfs from the cache).
    pub fn domain_xml(&self, g: &GuestSpec) -> String {
        let peers: Vec<String> = g.peers.iter().map(Ipv4Addr::to_string).collect();
        let cmdline = format!(
            "console=ttyS0 loglevel=1 panic=1 sc_name={} sc_ip={}/{} sc_peers={} \
             sc_ping_size={} sc_ping_interval={} sc_traffic_secs={} sc_dirty_mib={} sc_dirty_after={}",
            g.name,
            g.ip,
            PREFIX_LEN,
            peers.join(","),
            g.ping_size,
            g.ping_interval,
            g.traffic_secs,
            g.dirty_mib,
            g.dirty_after_secs
        );
        format!(
            r#"<domain type='qemu'>
  <name>{name}</name>
  <metadata>
    {metadata}
  </metadata>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='br0'/>
      <target dev='{tap}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{console}' append='on'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='virtio'>
      <stats period='2'/>
    </memballoon>
  </devices>
</domain>
"#,
            name = g.name,
            metadata = g.metadata_xml(),
            mem = g.memory_mib,
            kernel = self.state.kernel.display(),
            initrd = self.state.initrd.display(),
            mac = g.mac(),
            tap = g.tap(),
            console = self.console_path(&g.name).display(),
        )
    }

    /// Defines (persistently) and starts a guest on host `host`.
    pub fn start_guest(&self, host: usize, g: &GuestSpec) -> Result<()> {
        let h = &self.state.hosts[host];
        let lv = |call: &'static str, source: virt::error::Error| TestbedError::Libvirt {
            host: h.name.clone(),
            call,
            source,
        };
        let _ = std::fs::remove_file(self.console_path(&g.name));
        let conn = virt::connect::Connect::open(Some(&h.local_uri()))
            .map_err(|e| lv("virConnectOpen", e))?;
        let dom = conn
            .define_domain_xml(&self.domain_xml(g))
            .map_err(|e| lv("virDomainDefineXML", e))?;
        dom.create().map_err(|e| lv("virDomainCreate", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::libvirt::DomainDescription;
    use crate::rules::GroupKind;

    /// What the testbed writes is what scored's libvirt backend reads.
    #[test]
    fn a_guest_s_groups_are_read_back_from_its_metadata() {
        let mut g = GuestSpec::new("db1", Ipv4Addr::new(10, 77, 1, 21));
        g.groups = vec![
            GroupTag {
                name: "db-main".into(),
                kind: Some(GroupKind::AntiAffinity),
                scope: Some("host".into()),
            },
            GroupTag {
                name: "o'neil & <co>".into(),
                kind: None,
                scope: None,
            },
        ];
        let xml = |g: &GuestSpec| {
            format!(
                "<domain><name>{}</name><uuid>4dcb9ef2-a3c4-4a6b-8c1e-2b1f7d0e9a13</uuid>\
                 <metadata>{}</metadata><memory unit='MiB'>128</memory></domain>",
                g.name,
                g.metadata_xml()
            )
        };
        let d = DomainDescription::parse(&xml(&g)).unwrap();
        assert_eq!(d.groups, g.groups);
        assert_eq!(d.declared_ip, Some(g.ip));
        assert!(!d.pinned);
        g.groups.clear();
        g.pinned = true;
        let d = DomainDescription::parse(&xml(&g)).unwrap();
        assert!(d.groups.is_empty() && d.pinned);
    }
}
