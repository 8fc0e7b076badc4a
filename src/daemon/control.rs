//! The local control socket: `scored status`, `plan`, `drain`, `maintenance`, `pin` talk to the
//! running daemon through a unix socket only root can open. One JSON request line, one JSON
//! reply line. Requests are size-limited; a malformed one gets an error reply, never a panic.
//!
//! This file is the protocol, the client and the rendering; a request reaches the daemon's state
//! only as a command to its event loop (`commands`). No task is spawned here.

use super::commands::CommandSender;
use super::records::DecisionRecord;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Longest request line accepted.
const MAX_REQUEST: usize = 4096;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Plan,
    /// Maintenance on and move every VM away, one per token visit.
    Drain,
    Maintenance {
        on: bool,
    },
    Pin {
        vm: String,
        on: bool,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Status(Box<Status>),
    Plan {
        decisions: Vec<DecisionRecord>,
        /// The placement rules local VMs break where they run.
        #[serde(default)]
        violations: Vec<ViolationStatus>,
    },
    Done {
        message: String,
    },
    Error {
        message: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub host: String,
    pub token: TokenStatus,
    pub maintenance: bool,
    pub draining: bool,
    pub dry_run: bool,
    pub vms: Vec<VmStatus>,
    /// This host's share of Eq. 3.1 by level name.
    pub cost_by_level: Vec<(String, f64)>,
    pub peers_reachable: Vec<String>,
    pub migrations_done: u64,
    pub recent: Vec<DecisionRecord>,
    /// While this host's hypervisor does not answer: its last error and for how long.
    #[serde(default)]
    pub hypervisor_down: Option<HypervisorDown>,
    /// VMs whose migration, left open by a previous run, is not settled yet.
    #[serde(default)]
    pub unsettled: Vec<String>,
    /// VMs running on more than one host, as the hosts' inventories say (zombies).
    #[serde(default)]
    pub zombies: Vec<super::zombies::ZombieStatus>,
    /// The placement rules local VMs break where they run.
    #[serde(default)]
    pub violations: Vec<ViolationStatus>,
    /// This host's CPU as its capacity answers report it (`None` before the first read).
    #[serde(default)]
    pub cpu: Option<CpuStatus>,
}

/// The host's CPU, as a destination's capacity answer reports it to peers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuStatus {
    /// 0 when the hypervisor cannot say.
    pub cpus: u32,
    /// 1-minute load average per CPU.
    pub load_per_cpu: f32,
    /// `[decision] max_destination_cpu_load` (0: off): peers take this host for a VM only
    /// while its load with the VM's CPU added stays under it.
    pub max_load: f64,
}

/// A placement rule a local VM breaks where it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViolationStatus {
    pub vm: String,
    pub name: String,
    /// `anti_affinity`, `affinity` or `exclusion` (the metric's label).
    pub kind: String,
    /// The rule, for a person: "anti-affinity group db-main, scope host: h1 runs db-main-2".
    pub rule: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HypervisorDown {
    pub error: String,
    pub for_s: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenStatus {
    pub held: bool,
    pub policy: String,
    pub epoch_generation: u64,
    pub epoch: u64,
    pub seq: u64,
    /// The latest token round (completed passes) this host has heard of.
    pub round: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmStatus {
    pub id: String,
    pub name: String,
    pub memory_mib: u64,
    /// Resident memory, dirty rate and CPU use as the hypervisor last measured them (absent
    /// until measured; older daemons do not send them).
    #[serde(default)]
    pub resident_mib: Option<u64>,
    #[serde(default)]
    pub dirty_mib_s: Option<f64>,
    #[serde(default)]
    pub cpu_cores: Option<f64>,
    /// What a migration's first pass would send, MiB, and which measurement says so
    /// (`crate::forecast::Resident`: last-arrival, guest-used, process-resident, configured).
    #[serde(default)]
    pub first_pass_mib: Option<u64>,
    #[serde(default)]
    pub first_pass_basis: Option<String>,
    pub pinned: bool,
    /// u's own share of Eq. 3.1 here.
    pub cost: f64,
    pub partners: Vec<PartnerStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartnerStatus {
    pub vm: String,
    pub host: String,
    pub level: u8,
    pub bytes_per_sec: f64,
}

/// Binds the socket, replacing a stale one, readable and writable by root only.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        // A live daemon answers; a stale socket from a crash does not and is replaced.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "{}: another scored daemon is listening here",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Answers one connection: one request line, one reply line.
pub async fn serve_connection(stream: UnixStream, commands: &CommandSender) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST as u64 + 1));
    reader.read_line(&mut line).await?;
    let reply = if line.len() > MAX_REQUEST {
        Reply::Error {
            message: format!("request longer than {MAX_REQUEST} bytes"),
        }
    } else {
        match serde_json::from_str::<Request>(line.trim()) {
            Ok(req) => commands.ask(req).await,
            Err(e) => Reply::Error {
                message: format!("bad request: {e}"),
            },
        }
    };
    let mut out = serde_json::to_string(&reply).unwrap_or_else(|e| {
        format!("{{\"reply\":\"error\",\"message\":\"cannot encode reply: {e}\"}}")
    });
    out.push('\n');
    w.write_all(out.as_bytes()).await?;
    w.shutdown().await
}

/// Why a control request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "{path}: cannot reach the daemon ({source}); is `scored run` running, and are you root?"
    )]
    Unreachable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unreadable reply from the daemon: {0}")]
    Unreadable(#[source] serde_json::Error),
    #[error("{path}: no reply within {timeout:?}")]
    NoReply { path: String, timeout: Duration },
}

/// Client side: sends one request and reads the reply.
pub async fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Reply, ControlError> {
    let shown = || path.display().to_string();
    let io = |source| ControlError::Io {
        path: shown(),
        source,
    };
    let exchange = async {
        let stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| ControlError::Unreachable {
                    path: shown(),
                    source,
                })?;
        let (r, mut w) = stream.into_split();
        let mut line = serde_json::to_string(req).expect("control requests serialise");
        line.push('\n');
        w.write_all(line.as_bytes()).await.map_err(io)?;
        let mut answer = String::new();
        BufReader::new(r.take(64 << 20))
            .read_line(&mut answer)
            .await
            .map_err(io)?;
        serde_json::from_str::<Reply>(answer.trim()).map_err(ControlError::Unreadable)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ControlError::NoReply {
            path: shown(),
            timeout,
        })?
}

/// Human-readable `scored status`.
pub fn render_status(s: &Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "host {}   token: {} (policy {}, epoch {} seq {})   maintenance: {}{}   dry-run: {}",
        s.host,
        if s.token.held {
            "HELD here"
        } else {
            "elsewhere"
        },
        s.token.policy,
        s.token.epoch_generation,
        s.token.seq,
        if s.maintenance { "on" } else { "off" },
        if s.draining { " (draining)" } else { "" },
        if s.dry_run { "on" } else { "off" }
    );
    let _ = writeln!(
        o,
        "peers reachable: {}   migrations out of here: {}",
        if s.peers_reachable.is_empty() {
            "none".to_string()
        } else {
            s.peers_reachable.join(", ")
        },
        s.migrations_done
    );
    if let Some(c) = &s.cpu {
        let cpus = if c.cpus == 0 {
            "CPUs unknown".to_string()
        } else {
            format!("{} CPUs", c.cpus)
        };
        let headroom = if c.max_load > 0.0 && c.cpus > 0 {
            format!(
                "; room for {:.1} core(s) of incoming VMs under {}",
                ((c.max_load - c.load_per_cpu as f64) * c.cpus as f64).max(0.0),
                c.max_load
            )
        } else {
            "; no CPU gate (decision.max_destination_cpu_load = 0)".to_string()
        };
        let _ = writeln!(
            o,
            "cpu: {cpus}, load {:.2} per CPU{headroom}",
            c.load_per_cpu
        );
    }
    match &s.hypervisor_down {
        None => {
            let _ = writeln!(o, "hypervisor: answering");
        }
        Some(d) => {
            let _ = writeln!(
                o,
                "hypervisor: NOT ANSWERING for {} s (no decisions here): {}",
                d.for_s, d.error
            );
        }
    }
    if !s.unsettled.is_empty() {
        let _ = writeln!(
            o,
            "migrations left by the last run, not settled yet: {}",
            s.unsettled.join(", ")
        );
    }
    for z in &s.zombies {
        let _ = writeln!(
            o,
            "ZOMBIE: VM {} runs on {} (no decision for it until one copy is gone); journal here: {}",
            z.vm,
            z.hosts.join(", "),
            z.journal.as_deref().unwrap_or("no migration of it")
        );
    }
    o.push_str(&render_violations(&s.violations));
    let costs: Vec<String> = s
        .cost_by_level
        .iter()
        .map(|(l, c)| format!("{l} {c:.1}"))
        .collect();
    let _ = writeln!(o, "this host's cost by level: {}", costs.join(", "));
    let _ = writeln!(
        o,
        "\n{:<16} {:<14} {:>8} {:>8} {:>26} {:>8} {:>5} {:>12}  partners (host, level, B/s)",
        "VM", "name", "MiB", "RSS MiB", "1st pass MiB (basis)", "dirty/s", "CPU", "cost"
    );
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for v in &s.vms {
        let p: Vec<String> = v
            .partners
            .iter()
            .map(|p| format!("{}@{} L{} {:.0}", p.vm, p.host, p.level, p.bytes_per_sec))
            .collect();
        let _ = writeln!(
            o,
            "{:<16} {:<14} {:>8} {:>8} {:>26} {:>8} {:>5} {:>12.1}  {}{}",
            v.id,
            v.name,
            v.memory_mib,
            or_dash(v.resident_mib.map(|m| m.to_string())),
            or_dash(v.first_pass_mib.map(|m| match &v.first_pass_basis {
                Some(b) => format!("{m} ({b})"),
                None => m.to_string(),
            })),
            or_dash(v.dirty_mib_s.map(|d| format!("{d:.1}M"))),
            or_dash(v.cpu_cores.map(|c| format!("{c:.2}"))),
            v.cost,
            if v.pinned { "[pinned] " } else { "" },
            if p.is_empty() {
                "-".to_string()
            } else {
                p.join(", ")
            }
        );
    }
    if !s.recent.is_empty() {
        let _ = writeln!(o, "\nrecent decisions:");
        o.push_str(&render_decisions(&s.recent));
    }
    o
}

/// Human-readable placement rules broken here (`scored status`, `scored plan`); nothing when
/// none is.
pub fn render_violations(vs: &[ViolationStatus]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    for v in vs {
        let _ = writeln!(o, "RULE BROKEN: VM {} ({}): {}", v.vm, v.name, v.rule);
    }
    o
}

/// Human-readable `scored plan`: the rules broken here, then what each VM's turn would do.
pub fn render_plan(ds: &[DecisionRecord], vs: &[ViolationStatus]) -> String {
    let mut o = render_violations(vs);
    if !o.is_empty() {
        o.push('\n');
    }
    o.push_str(&render_decisions(ds));
    o
}

/// Human-readable decisions (`scored plan`, the tail of `scored status`).
pub fn render_decisions(ds: &[DecisionRecord]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<16} {:<12} {:>12} {:>10} {:<10} {:>12} {:<24} {:<10}  detail",
        "VM", "outcome", "cost", "c_m", "best", "benefit", "forecast", "to"
    );
    for d in ds {
        // The move's forecast next to its benefit: mode, bytes, time, downtime.
        let forecast = d.predicted.as_ref().map_or("-".to_string(), |f| {
            format!(
                "{} {}MiB {:.1}s {}ms",
                f.mode.replace("pre_copy_auto_converge", "auto_converge"),
                f.bytes / (1024 * 1024),
                f.time_ms as f64 / 1000.0,
                f.downtime_ms
            )
        });
        let _ = writeln!(
            o,
            "{:<16} {:<12} {:>12.1} {:>10.1} {:<10} {:>12} {:<24} {:<10}  {}",
            d.vm,
            d.outcome,
            d.current_cost,
            d.migration_cost,
            d.best_host.as_deref().unwrap_or("-"),
            d.best_benefit
                .map(|b| format!("{b:.1}"))
                .unwrap_or("-".into()),
            forecast,
            d.to.as_deref().unwrap_or("-"),
            d.detail
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_reject_garbage() {
        for r in [
            Request::Status,
            Request::Plan,
            Request::Drain,
            Request::Maintenance { on: true },
            Request::Pin {
                vm: "10.0.0.1".into(),
                on: false,
            },
        ] {
            let s = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        }
        assert!(serde_json::from_str::<Request>("{\"cmd\":\"reboot\"}").is_err());
        assert!(serde_json::from_str::<Request>("garbage").is_err());
    }
}
