//! A bare p2p node for tests and troubleshooting (`scored debug-p2p-node`, hidden): joins the
//! cluster with a real key and topology, answers peers from a fixed VM list, relays the token
//! around the hosts, and prints every event as one JSON line on stdout. Commands arrive on
//! stdin, one per line (see [`COMMANDS`]). It makes no decisions and migrates nothing.

use super::{InboundEvent, Libp2pPeers, LocateOptions, P2pConfig, Peers};
use crate::topology::{HostId, Topology};
use anyhow::{Context, anyhow};
use scored_proto::{
    Announcement, CapacityResponse, MAX_SURVEY_VMS, PlacementRequest, PlacementResponse, Stamp,
    StatsRequest, StatsResponse, SurveyRequest, SurveyResponse, SurveyedVm, Token, TokenAck,
    VmBenefit, VmId,
};
use serde_json::json;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

pub const COMMANDS: &str = concat!(
    "relay | locate VM... | capacity HOST | stats HOST | survey HOST | migrate VM HOST | ",
    "peers | quit"
);

#[derive(clap::Args, Debug, Clone)]
pub struct ProbeArgs {
    /// The cluster's topology file.
    #[arg(long)]
    pub topology: PathBuf,
    /// This host's key (as written by `scored keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// This host's name in the topology.
    #[arg(long)]
    pub host: String,
    /// VMs (IPv4 addresses) this node claims to run.
    #[arg(long, value_delimiter = ',')]
    pub vms: Vec<Ipv4Addr>,
    /// Forward a received token to the next host until its sequence number reaches this.
    #[arg(long, default_value_t = 0)]
    pub relay_hops: u64,
    /// Timeout for each request, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

fn emit(v: serde_json::Value) {
    // One line per event, flushed at once: the reader is another process.
    println!("{v}");
}

/// The host after `me` in name order: the relay ring.
fn successor(topology: &Topology, me: HostId) -> HostId {
    let mut hosts: Vec<_> = topology.hosts().iter().collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    let i = hosts.iter().position(|h| h.id == me).unwrap_or(0);
    hosts[(i + 1) % hosts.len()].id
}

pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    // stdout carries the events; logs go to stderr.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let topology = Arc::new(Topology::load(&args.topology).map_err(|e| anyhow!("{e}"))?);
    let key = crate::identity::load(&args.key)?;
    let me = topology
        .host_by_name(&args.host)
        .ok_or_else(|| anyhow!("{}: no host named {}", args.topology.display(), args.host))?
        .id;
    let directory = Arc::new(super::Directory::new(topology.clone(), me));
    directory.set_local(args.vms.iter().map(|a| (VmId::from_ipv4(*a), Stamp::ZERO)));
    let config = P2pConfig::new(key, topology.clone(), me);
    let (peers, mut inbound) = Libp2pPeers::start(config, directory.clone())
        .await
        .context("starting the p2p node")?;
    emit(json!({
        "event": "listening",
        "host": args.host,
        "peer_id": peers.peer_id().to_string(),
        "address": peers.listen_addrs().first().map(|a| a.to_string()),
    }));
    let timeout = Duration::from_millis(args.timeout_ms);
    let name = |h: HostId| topology.host(h).name.clone();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.first() == Some(&"quit") {
                    break;
                }
                if let Err(e) = command(&peers, &words, timeout).await {
                    emit(json!({"event": "error", "command": line, "message": format!("{e:#}")}));
                }
            }
            event = inbound.recv() => {
                let Some(event) = event else { break };
                match event {
                    InboundEvent::Token { from, token, reply } => {
                        reply.send(TokenAck::Accepted);
                        emit(json!({"event": "token", "from": name(from), "epoch": token.epoch, "seq": token.seq}));
                        relay(&peers, token, args.relay_hops, timeout);
                    }
                    InboundEvent::Capacity { from, request, reply } => {
                        let c = capacity(&topology, me, directory.local_vms().len(), request);
                        emit(json!({"event": "capacity-asked", "from": name(from)}));
                        reply.send(c);
                    }
                    InboundEvent::Stats { from, reply, .. } => {
                        emit(json!({"event": "stats-asked", "from": name(from)}));
                        // This node has no traffic to judge by: no VM expects a gain.
                        reply.send(StatsResponse {
                            token: Default::default(),
                            benefits: directory
                                .local_vms()
                                .into_iter()
                                .map(|l| VmBenefit { vm: l.vm, benefit: 0.0 })
                                .collect(),
                        });
                    }
                    InboundEvent::Survey { from, reply, .. } => {
                        emit(json!({"event": "survey-asked", "from": name(from)}));
                        // It knows no memory or traffic, and lets nothing move.
                        let local = directory.local_vms();
                        let room = capacity(&topology, me, local.len(), PlacementRequest::room(0));
                        reply.send(SurveyResponse {
                            vms: local
                                .into_iter()
                                .take(MAX_SURVEY_VMS)
                                .map(|l| SurveyedVm {
                                    vm: l.vm,
                                    memory_mib: 0,
                                    movable: false,
                                    partners: Vec::new(),
                                })
                                .collect(),
                            capacity: room.capacity,
                            cpus: room.cpus,
                        });
                    }
                    InboundEvent::GroupMove { from, request, reply } => {
                        emit(json!({"event": "move-asked", "from": name(from),
                            "vm": request.vm.to_string(), "to": request.to}));
                        reply.refuse("a debug p2p node migrates nothing");
                    }
                    InboundEvent::Announcement { from, announcement } => match announcement {
                        Announcement::Migration(m) => emit(json!({
                            "event": "announcement", "kind": "migration", "from": name(from),
                            "vm": m.vm.to_string(), "to": m.to,
                        })),
                        Announcement::Inventory { host, vms } => emit(json!({
                            "event": "announcement", "kind": "inventory", "from": name(from),
                            "host": host, "vms": vms.len(),
                        })),
                        Announcement::TokenSeen { host, at, round } => emit(json!({
                            "event": "announcement", "kind": "token-seen", "from": name(from),
                            "host": host, "epoch": at.epoch, "seq": at.seq, "round": round,
                        })),
                    },
                    InboundEvent::PeerUp(h) => emit(json!({"event": "peer-up", "host": name(h)})),
                    InboundEvent::PeerDown(h) => emit(json!({"event": "peer-down", "host": name(h)})),
                }
            }
        }
    }
    emit(json!({"event": "stopped"}));
    Ok(())
}

/// What this node can take: the topology's limits minus the VMs it claims.
fn capacity(
    topology: &Topology,
    me: HostId,
    running: usize,
    request: PlacementRequest,
) -> PlacementResponse {
    let h = topology.host(me);
    let free_slots = h.max_vms.saturating_sub(running as u32);
    let free_memory_mib = h.memory_mib.saturating_sub(h.reserve_memory_mib);
    PlacementResponse {
        capacity: CapacityResponse {
            free_slots,
            free_memory_mib,
            cpu_load: 0.0,
            maintenance: false,
            incoming_migrations: 0,
            accepts: free_slots > 0 && request.memory_mib <= free_memory_mib,
        },
        // This node knows no rules, nor its CPUs.
        refused_by_rule: None,
        cpus: 0,
    }
}

fn relay(peers: &Libp2pPeers, mut token: Token, hops: u64, timeout: Duration) {
    let topology = peers.topology().clone();
    if token.seq + 1 >= hops {
        if hops > 0 {
            emit(json!({"event": "relay-done", "seq": token.seq}));
        }
        return;
    }
    token.seq += 1;
    let next = successor(&topology, peers.me());
    let peers = peers.clone();
    tokio::spawn(async move {
        let to = topology.host(next).name.clone();
        let seq = token.seq;
        match peers.send_token(next, token, timeout).await {
            Ok(ack) => emit(
                json!({"event": "token-sent", "to": to, "seq": seq, "ack": format!("{ack:?}")}),
            ),
            Err(e) => emit(json!({"event": "error", "command": "relay", "message": e.to_string()})),
        }
    });
}

async fn command(peers: &Libp2pPeers, words: &[&str], timeout: Duration) -> anyhow::Result<()> {
    let topology = peers.topology().clone();
    let host = |name: &str| {
        topology
            .host_by_name(name)
            .map(|h| h.id)
            .ok_or_else(|| anyhow!("no host named {name}"))
    };
    let vm = |s: &str| -> anyhow::Result<VmId> {
        Ok(VmId::from_ipv4(s.parse().with_context(|| {
            format!("`{s}` is not an IPv4 address")
        })?))
    };
    match words {
        ["relay"] => {
            let vms = peers.directory().local_vms().iter().map(|l| l.vm).collect();
            let token = Token::new(1, scored_proto::PolicyKind::RoundRobin, vms);
            relay(peers, token, u64::MAX, timeout);
        }
        ["locate", ids @ ..] => {
            let ids = ids
                .iter()
                .map(|s| vm(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let options = LocateOptions {
                timeout,
                ..LocateOptions::default()
            };
            let found = peers.locate(&ids, options).await;
            let map: serde_json::Map<String, serde_json::Value> = found
                .found
                .iter()
                .map(|(v, h)| (v.to_string(), json!(topology.host(*h).name)))
                .collect();
            emit(json!({
                "event": "located", "found": map,
                "missing": found.missing.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
                "uncertain": found.uncertain.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
                "failures": found.failures.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            }));
        }
        ["capacity", h] => {
            let c = peers
                .query_capacity(host(h)?, PlacementRequest::room(1024), timeout)
                .await?
                .capacity;
            emit(
                json!({"event": "capacity", "host": h, "free_slots": c.free_slots,
                "free_memory_mib": c.free_memory_mib, "accepts": c.accepts}),
            );
        }
        ["stats", h] => {
            let s = peers
                .query_stats(host(h)?, StatsRequest { epoch: 1, round: 0 }, timeout)
                .await?;
            emit(json!({"event": "stats", "host": h, "vms": s.benefits.len()}));
        }
        ["survey", h] => {
            let s = peers
                .survey(host(h)?, SurveyRequest::default(), timeout)
                .await?;
            emit(json!({"event": "survey", "host": h, "vms": s.vms.len(),
                "free_slots": s.capacity.free_slots, "cpus": s.cpus}));
        }
        ["migrate", v, h] => {
            let (v, to) = (vm(v)?, host(h)?);
            if !peers.directory().is_local(v) {
                return Err(anyhow!("VM {v} does not run here"));
            }
            let r = peers.announce_migration(v, to, Stamp::new(1, 1)).await;
            emit(
                json!({"event": "migrated", "vm": v.to_string(), "to": h, "announced": r.is_ok(),
                "error": r.err().map(|e| e.to_string())}),
            );
        }
        ["peers"] => {
            let connected = peers.connected().await;
            emit(json!({
                "event": "peers",
                "connected": connected.iter().map(|h| topology.host(*h).name.clone()).collect::<Vec<_>>(),
                "mesh": peers.gossip_mesh().await,
            }));
        }
        _ => return Err(anyhow!("unknown command; commands: {COMMANDS}")),
    }
    Ok(())
}
