//! Control requests as typed commands: the control socket sends each [`Request`] with a oneshot
//! reply channel to the event loop, which answers it from the rooms that own the state (status,
//! drain, maintenance, pin at once; a plan, which asks peers, in a task of its own).
//!
//! Changes only what an operator may change (the `operator` room); never the token.

use super::control::{
    CpuStatus, HypervisorDown, PartnerStatus, Reply, Request, Status, TokenStatus, VmStatus,
};
use super::host::Daemon;
use super::ring;
use crate::p2p::Peers;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// One control request on its way to the event loop.
pub struct Command {
    request: Request,
    reply: oneshot::Sender<Reply>,
}

/// Sends control requests to the daemon's event loop.
#[derive(Clone)]
pub struct CommandSender(mpsc::Sender<Command>);

impl CommandSender {
    pub(super) fn new(tx: mpsc::Sender<Command>) -> Self {
        CommandSender(tx)
    }

    /// Sends `request` and waits for the answer.
    pub async fn ask(&self, request: Request) -> Reply {
        let (tx, rx) = oneshot::channel();
        let stopped = || Reply::Error {
            message: "the daemon is stopping".into(),
        };
        if self.0.send(Command { request, reply: tx }).await.is_err() {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }
}

impl<P: Peers> Daemon<P> {
    /// Answers one command (the event loop calls this: it owns the state it changes).
    pub(super) fn on_command(self: &Arc<Self>, cmd: Command) {
        let Command { request, reply } = cmd;
        let answer = match request {
            Request::Status => Reply::Status(Box::new(self.status())),
            Request::Plan => {
                // A plan asks peers for capacity: not on the event loop.
                let daemon = self.clone();
                self.tasks.spawn(async move {
                    let decisions = daemon.plan().await;
                    let violations = daemon.violations();
                    let _ = reply.send(Reply::Plan {
                        decisions,
                        violations,
                    });
                });
                return;
            }
            Request::Drain => {
                self.operator().drain();
                self.metrics.maintenance.set(1);
                Reply::Done {
                    message: format!(
                        "{}: maintenance on, draining {} VM(s) one per token visit",
                        self.name(),
                        self.inventory.len()
                    ),
                }
            }
            Request::Maintenance { on } => {
                self.operator().set_maintenance(on);
                self.metrics.maintenance.set(on as i64);
                Reply::Done {
                    message: format!(
                        "{}: maintenance {}",
                        self.name(),
                        if on { "on" } else { "off" }
                    ),
                }
            }
            Request::Pin { vm, on } => match self.inventory.find(&vm) {
                Some(id) => {
                    self.operator().pin(id, on);
                    Reply::Done {
                        message: format!(
                            "VM {id} {} (until the daemon restarts; use placement.pinned or the domain's metadata to keep it)",
                            if on { "pinned" } else { "unpinned" }
                        ),
                    }
                }
                None => Reply::Error {
                    message: format!("no VM `{vm}` runs on {}", self.name()),
                },
            },
        };
        let _ = reply.send(answer);
    }

    /// `scored status`.
    pub fn status(&self) -> Status {
        let config = self.config();
        let topo = &self.topo;
        let (maintenance, draining) = {
            let op = self.operator();
            (op.maintenance(), op.draining())
        };
        let vms = self
            .inventory
            .vms()
            .iter()
            .map(|v| {
                let partners = self.cached_partners(v.id);
                let cost: f64 = partners
                    .iter()
                    .map(|&(_, h, r)| r * topo.path_cost(self.me, h))
                    .sum();
                let measured = self.inventory.measured(v.id);
                let first_pass = measured.map(|m| crate::forecast::Resident::of(&m, v.memory_mib));
                VmStatus {
                    id: v.id.to_string(),
                    name: v.name.clone(),
                    memory_mib: v.memory_mib,
                    resident_mib: measured.and_then(|m| m.resident_mib),
                    dirty_mib_s: measured.and_then(|m| m.dirty_mib_s),
                    cpu_cores: measured.and_then(|m| m.cpu_cores),
                    first_pass_mib: first_pass.map(|r| r.mib),
                    first_pass_basis: first_pass.map(|r| r.basis.name().to_string()),
                    pinned: v.pinned || self.operator().pinned(v.id),
                    cost,
                    partners: partners
                        .iter()
                        .map(|&(p, h, r)| PartnerStatus {
                            vm: p.to_string(),
                            host: topo.host(h).name.clone(),
                            level: topo.level(self.me, h),
                            bytes_per_sec: r,
                        })
                        .collect(),
                }
            })
            .collect();
        let (cost, _) = self.cost_by_level();
        let mut peers: Vec<String> = self
            .peers
            .connected()
            .iter()
            .map(|h| topo.host(*h).name.clone())
            .collect();
        peers.sort();
        let token = {
            let watch = self.token_watch();
            let highest = watch.ring().highest_epoch();
            TokenStatus {
                held: watch.holding().is_some(),
                policy: config.token.policy.to_string(),
                epoch_generation: ring::epoch_generation(highest),
                epoch: highest,
                seq: watch.ring().last_seq(),
                round: watch.latest_round(),
            }
        };
        let (migrations_done, unsettled) = {
            let ledger = self.ledger();
            (ledger.migrations_done(), ledger.unsettled())
        };
        let now = Instant::now();
        Status {
            host: self.name().to_string(),
            token,
            maintenance,
            draining,
            dry_run: config.decision.dry_run,
            vms,
            cost_by_level: topo.level_names().iter().cloned().zip(cost).collect(),
            peers_reachable: peers,
            migrations_done,
            recent: self.recent_decisions(),
            hypervisor_down: self.hv.outage().map(|o| HypervisorDown {
                error: o.error,
                for_s: now.saturating_duration_since(o.since).as_secs(),
            }),
            unsettled,
            zombies: self.zombie_status(),
            violations: self.violations(),
            cpu: self.inventory.capacity().map(|c| CpuStatus {
                cpus: c.cpus,
                load_per_cpu: c.cpu_load,
                // The gate peers apply is each asker's own; this host's setting is the best
                // guess of the cluster's.
                max_load: config.decision.max_destination_cpu_load,
            }),
        }
    }
}
