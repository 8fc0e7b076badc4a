//! `scored testbed …`: the developer testbed from the command line (`scripts/testbed.sh` wraps
//! it). Parses arguments and prints; the work is in [`super`] and the libvirt backend.

use super::{GuestSpec, Testbed, TestbedConfig};
use crate::hypervisor::libvirt::{LibvirtConfig, LibvirtHypervisor};
use crate::hypervisor::{Compression, MigrationParams};
use anyhow::{Context, bail};
use scored_proto::VmId;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum TestbedCommand {
    /// Build the testbed: namespaces, bridges, a libvirtd per host, the guest image.
    Up {
        /// Topology whose hosts and switches to build (addresses and keys are generated).
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Without --topology: this many hosts, two per rack.
        #[arg(long, default_value_t = 2)]
        hosts: usize,
        #[command(flatten)]
        place: Place,
        #[arg(long, default_value = super::DEFAULT_CACHE)]
        cache: PathBuf,
    },
    /// Start `scored run` on every host (logs: <dir>/hosts/<host>/scored.log); `down` stops them.
    Daemons {
        #[command(flatten)]
        place: Place,
        /// Daemon option for every host, on top of the testbed's defaults (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<crate::config::Override>,
    },
    /// Show what the daemons do (token, decisions, migrations, total cost), then a summary.
    Watch {
        #[command(flatten)]
        place: Place,
        /// Stop after this many seconds at most.
        #[arg(long, default_value_t = 180)]
        secs: u64,
        /// Stop this many seconds after the last migration started.
        #[arg(long, default_value_t = 30)]
        settle_secs: u64,
    },
    /// Kill everything in the testbed's namespaces and delete them (logs stay in --dir).
    Down {
        #[command(flatten)]
        place: Place,
    },
    /// Hosts, their libvirtd and running guests.
    Status {
        #[command(flatten)]
        place: Place,
    },
    /// Define and start a guest on a host.
    Guest {
        #[command(flatten)]
        place: Place,
        /// Host name (as in the topology).
        #[arg(long)]
        host: String,
        #[arg(long)]
        name: String,
        /// The guest's address (its VmId); use 10.77.1.0 and above.
        #[arg(long)]
        ip: Ipv4Addr,
        #[arg(long, default_value_t = 128)]
        memory_mib: u64,
        /// A partner to send traffic to (repeat for several).
        #[arg(long = "peer")]
        peers: Vec<Ipv4Addr>,
        /// Rewrite this many MiB of memory in a loop.
        #[arg(long, default_value_t = 0)]
        dirty_mib: u32,
        #[arg(long)]
        pinned: bool,
        /// A placement group of its metadata, `NAME[:KIND[:SCOPE]]` (KIND anti-affinity or
        /// affinity, SCOPE host, rack or a level name), as `<scored:group>` (repeatable).
        #[arg(long = "group", value_name = "NAME[:KIND[:SCOPE]]", value_parser = group_tag)]
        groups: Vec<crate::hypervisor::GroupTag>,
    },
    /// Live-migrate a guest through scored's libvirt backend and print the report.
    Migrate {
        #[command(flatten)]
        place: Place,
        /// The guest's address.
        #[arg(long)]
        vm: Ipv4Addr,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// MiB/s, 0 = unlimited.
        #[arg(long, default_value_t = 0)]
        bandwidth: u64,
        #[arg(long, value_parser = ["none", "xbzrle", "multifd-zstd"], default_value = "none")]
        compression: String,
        #[arg(long)]
        auto_converge: bool,
        #[arg(long, default_value_t = 300)]
        max_downtime_ms: u64,
        #[arg(long, default_value_t = 30)]
        stall_secs: u64,
    },
}

#[derive(clap::Args)]
pub struct Place {
    /// Namespace prefix (namespaces are `<prefix>-<host>`).
    #[arg(long, default_value = "sclv")]
    prefix: String,
    /// State directory (default /var/lib/scored-testbed/<prefix>).
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl Place {
    fn dir(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/scored-testbed").join(&self.prefix))
    }
}

pub fn run(cmd: TestbedCommand) -> anyhow::Result<()> {
    match cmd {
        TestbedCommand::Up {
            topology,
            hosts,
            place,
            cache,
        } => {
            let cfg = TestbedConfig {
                prefix: place.prefix.clone(),
                dir: place.dir(),
                topology,
                hosts,
                cache,
            };
            let mut tb = Testbed::up(&cfg).context("scored testbed up")?;
            tb.keep();
            print!("{}", super::status(&cfg.dir)?);
            println!("topology: {}", tb.state.topology.display());
            Ok(())
        }
        TestbedCommand::Daemons { place, overrides } => {
            let mut tb = Testbed::open(&place.dir())?;
            let exe = std::env::current_exe().context("path of the scored binary")?;
            tb.start_daemons(&exe, &overrides)
                .context("scored testbed daemons")?;
            tb.wait_daemons(Duration::from_secs(30))?;
            for h in &tb.state.hosts {
                println!(
                    "scored on {:<8} pid {:<8} control {}  log {}",
                    h.name,
                    h.daemon_pid().unwrap_or(0),
                    h.control_socket().display(),
                    h.daemon_log().display()
                );
            }
            Ok(())
        }
        TestbedCommand::Watch {
            place,
            secs,
            settle_secs,
        } => {
            let tb = Testbed::open(&place.dir())?;
            super::watch::watch(
                &tb,
                Duration::from_secs(secs),
                Duration::from_secs(settle_secs),
            );
            Ok(())
        }
        TestbedCommand::Down { place } => {
            super::down(&place.prefix).context("scored testbed down")?;
            Ok(())
        }
        TestbedCommand::Status { place } => {
            print!("{}", super::status(&place.dir())?);
            Ok(())
        }
        TestbedCommand::Guest {
            place,
            host,
            name,
            ip,
            memory_mib,
            peers,
            dirty_mib,
            pinned,
            groups,
        } => {
            let tb = Testbed::open(&place.dir())?;
            let Some(i) = tb.state.hosts.iter().position(|h| h.name == host) else {
                bail!(
                    "no host `{host}` in the testbed at {}",
                    place.dir().display()
                );
            };
            let mut g = GuestSpec::new(&name, ip);
            g.memory_mib = memory_mib;
            g.peers = peers;
            g.dirty_mib = dirty_mib;
            g.pinned = pinned;
            g.groups = groups;
            tb.start_guest(i, &g)?;
            println!(
                "{name} ({ip}) started on {host}; console: {}",
                tb.console_path(&name).display()
            );
            Ok(())
        }
        TestbedCommand::Migrate {
            place,
            vm,
            from,
            to,
            bandwidth,
            compression,
            auto_converge,
            max_downtime_ms,
            stall_secs,
        } => {
            let tb = Testbed::open(&place.dir())?;
            let (Some(src), Some(dst)) = (tb.host(&from), tb.host(&to)) else {
                bail!("hosts `{from}` and `{to}` must both be in the testbed");
            };
            let hv = LibvirtHypervisor::connect(LibvirtConfig::new(&src.local_uri()))?;
            let params = MigrationParams {
                bandwidth_mib_s: bandwidth,
                max_downtime: Duration::from_millis(max_downtime_ms),
                auto_converge,
                compression: match compression.as_str() {
                    "xbzrle" => Compression::Xbzrle,
                    "multifd-zstd" => Compression::MultifdZstd,
                    _ => Compression::None,
                },
                stall_timeout: Duration::from_secs(stall_secs),
                ..Default::default()
            };
            let dest = dst.destination();
            let (r, t) = hv.migrate_traced(VmId::from_ipv4(vm), &dest, &params)?;
            println!(
                "migrated {vm} {from} -> {to}: elapsed {} ms, downtime {} ms (without hand-over {} ms), {:.1} MiB; job started after {} ms, wall {} ms",
                r.elapsed.as_millis(),
                r.downtime.as_millis(),
                t.downtime_net.map_or(-1, |d| d.as_millis() as i64),
                r.bytes as f64 / 1048576.0,
                t.job_started_after.map_or(-1, |d| d.as_millis() as i64),
                t.wall.as_millis()
            );
            Ok(())
        }
    }
}

/// `db-main:anti-affinity:host` as the group tag its metadata would carry.
fn group_tag(text: &str) -> Result<crate::hypervisor::GroupTag, String> {
    use crate::rules::GroupKind;
    let mut parts = text.split(':');
    let name = parts.next().unwrap_or("").to_string();
    if name.is_empty() {
        return Err("a group needs a name".into());
    }
    let kind = match parts.next() {
        None => None,
        Some(k) => Some(
            GroupKind::from_name(k)
                .ok_or_else(|| format!("kind `{k}`: use anti-affinity or affinity"))?,
        ),
    };
    let scope = parts.next().map(str::to_string);
    if parts.next().is_some() {
        return Err(format!("`{text}`: use NAME[:KIND[:SCOPE]]"));
    }
    Ok(crate::hypervisor::GroupTag { name, kind, scope })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::GroupKind;

    #[test]
    fn group_flags_read_as_metadata_tags() {
        let t = group_tag("db-main:anti-affinity:rack").unwrap();
        assert_eq!(
            (t.name.as_str(), t.kind, t.scope.as_deref()),
            ("db-main", Some(GroupKind::AntiAffinity), Some("rack"))
        );
        let t = group_tag("web").unwrap();
        assert_eq!((t.kind, t.scope), (None, None));
        assert!(group_tag("db:sometimes").unwrap_err().contains("sometimes"));
        assert!(group_tag(":affinity").is_err());
        assert!(group_tag("a:affinity:host:x").is_err());
    }
}
