//! What the daemons' protocol would send for a simulated run (docs/evaluation.md, "Protocol
//! scale").
//!
//! The engine counts what its decisions and its walk of the token actually do, as the daemon
//! would carry them out ([`Counts`]): hand-offs where the next VM runs on another host than the
//! holder, the capacity requests `daemon::assess` sends for each search (the first
//! `max_candidates` at once, then one per candidate the search needs beyond them), the
//! announcements of each migration, a heartbeat at every step of the walk, the global policy's
//! statistics at each round start. Each is priced with the real codec: the engine encodes real
//! `scored_proto` messages ([`Wire`]). What the simulation does not execute — gossipsub's fan-out,
//! the inventories republished every 30 s, the heartbeats during a migration, round time — is a
//! model, [`Model`], stated beside its parameters.

use crate::config::DecisionConfig;
use crate::topology::{HostId, Topology};
use scored_proto::{
    Announcement, CapacityResponse, Located, LocationAnswer, LocationQuery, MigrationAnnounce,
    MovingVm, PlacementRequest, PlacementResponse, Request, Response, Stamp, StatsRequest,
    StatsResponse, Token, TokenAck, TokenView, VmBenefit, VmId, WireMessage, encode,
};

/// The capacity requests one decision sends when the daemon asks its first candidates together
/// (`daemon::assess`): what a [`crate::decide::Search`] consumed, `first` of them in the batch.
pub fn max_candidates() -> usize {
    DecisionConfig::default().max_candidates as usize
}

fn frame_len<M: WireMessage>(m: &M) -> u64 {
    // Every message here is within its limits by construction (sizes of a real topology).
    encode(m).map_or(0, |f| f.len() as u64)
}

/// Frame sizes of the messages a run sends, from the real codec (length prefix, version byte,
/// postcard or hand-packed body, the request's topology fingerprint).
#[derive(Clone, Debug)]
pub struct Wire {
    fingerprint: u64,
    /// `Request<PlacementRequest>` naming a VM without groups, and its answer.
    pub capacity_request: u64,
    pub capacity_response: u64,
    pub token_ack: u64,
    pub stats_request: u64,
    /// `Response<StatsResponse>` of a host with k VMs, by k.
    stats_response: Vec<u64>,
    /// `Announcement::Inventory` of a host with k VMs, by k.
    inventory: Vec<u64>,
    /// The longest host name of the topology, for the announcements that name hosts.
    name: String,
}

/// A stamp as a long-lived cluster has them: a few generations minted, millions of steps.
const STAMP: Stamp = Stamp {
    epoch: (3 << 16) | 17,
    seq: 5_000_000,
};

impl Wire {
    pub fn new(topo: &Topology, sample: VmId, memory_mib: u64) -> Wire {
        let fingerprint = crate::p2p::fingerprint(topo);
        let name = topo
            .hosts()
            .iter()
            .map(|h| h.name.clone())
            .max_by_key(|n| n.len())
            .unwrap_or_default();
        let max_vms = topo.hosts().iter().map(|h| h.max_vms).max().unwrap_or(0) as usize;
        let ids: Vec<VmId> = (0..max_vms as u32).map(|i| VmId(sample.0 + i)).collect();
        let stats_response = (0..=max_vms)
            .map(|k| {
                frame_len(&Response::Ok(StatsResponse {
                    token: TokenView {
                        at: STAMP,
                        idle_ms: Some(120),
                        held: false,
                    },
                    benefits: ids[..k]
                        .iter()
                        .map(|&vm| VmBenefit { vm, benefit: 1.5e9 })
                        .collect(),
                }))
            })
            .collect();
        let inventory = (0..=max_vms)
            .map(|k| {
                frame_len(&Announcement::Inventory {
                    host: name.clone(),
                    vms: ids[..k]
                        .iter()
                        .map(|&vm| Located { vm, since: STAMP })
                        .collect(),
                })
            })
            .collect();
        Wire {
            fingerprint,
            capacity_request: frame_len(&Request {
                topology: fingerprint,
                body: PlacementRequest {
                    memory_mib,
                    moving: Some(MovingVm {
                        vm: sample,
                        groups: Vec::new(),
                    }),
                },
            }),
            capacity_response: frame_len(&Response::Ok(PlacementResponse {
                capacity: CapacityResponse {
                    free_slots: 3,
                    free_memory_mib: 3 * memory_mib,
                    cpu_load: 0.35,
                    maintenance: false,
                    incoming_migrations: 0,
                    accepts: true,
                },
                refused_by_rule: None,
                cpus: 64,
            })),
            token_ack: frame_len(&Response::Ok(TokenAck::Accepted)),
            stats_request: frame_len(&Request {
                topology: fingerprint,
                body: StatsRequest {
                    epoch: STAMP.epoch,
                    round: 3,
                },
            }),
            stats_response,
            inventory,
            name,
        }
    }

    /// The hand-off frame of `token` as it stands.
    pub fn token(&self, token: &Token) -> u64 {
        frame_len(&Request {
            topology: self.fingerprint,
            body: token.clone(),
        })
    }

    pub fn stats_response(&self, vms: usize) -> u64 {
        self.stats_response[vms.min(self.stats_response.len() - 1)]
    }

    pub fn inventory(&self, vms: usize) -> u64 {
        self.inventory[vms.min(self.inventory.len() - 1)]
    }

    pub fn migration(&self, vm: VmId) -> u64 {
        frame_len(&Announcement::Migration(MigrationAnnounce {
            vm,
            from: self.name.clone(),
            to: self.name.clone(),
            at: STAMP,
        }))
    }

    pub fn heartbeat(&self) -> u64 {
        frame_len(&Announcement::TokenSeen {
            host: self.name.clone(),
            at: STAMP,
            round: 3,
        })
    }

    /// A batched location query for `vms` at their host, answered "here" for each, as the
    /// daemon asks a host whose inventory it knows (`/scored/location/2`, no inventory asked).
    pub fn lookup(&self, vms: &[VmId]) -> u64 {
        frame_len(&Request {
            topology: self.fingerprint,
            body: LocationQuery::vms(vms.to_vec()),
        }) + frame_len(&Response::Ok(LocationAnswer {
            here: vms.iter().map(|&vm| Located { vm, since: STAMP }).collect(),
            moved: Vec::new(),
            inventory: None,
        }))
    }
}

/// A number of messages and their bytes (scored frames as encoded).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tally {
    pub messages: u64,
    pub bytes: u64,
}

impl Tally {
    pub fn add(&mut self, messages: u64, bytes: u64) {
        self.messages += messages;
        self.bytes += bytes;
    }
}

/// What one run's token steps sent, counted as they happened. Requests count twice (the
/// request and its answer); gossip counts publishes, before delivery ([`Model`] fans them out).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub hosts: usize,
    pub vms: usize,
    /// Token steps simulated (decisions).
    pub decisions: u64,
    pub migrations: u64,
    /// Token hand-offs (request + ack).
    pub handoffs: Tally,
    /// `/scored/capacity/2` requests and answers.
    pub capacity: Tally,
    /// `/scored/stats/1` at the global policy's round starts.
    pub stats: Tally,
    pub stats_rounds: u64,
    /// Location lookups: none with caches warm from inventories (the daemon does not verify
    /// partners' hosts before a decision, `daemon::assess`).
    pub lookups: Tally,
    /// What verified lookups would cost: one batch per distinct partner host but its own.
    pub lookups_if_verified: Tally,
    /// Publishes: `Migration` announcements (source and destination), the two hosts'
    /// inventories re-published because their VMs changed, `TokenSeen` at every step.
    pub migration_announces: Tally,
    pub inventory_changes: Tally,
    pub heartbeats: Tally,
    /// Token hand-off frame of the last round (the largest: the schedule fills during a round).
    pub token_frame: u64,
    /// Mean inventory frame (all hosts) at the start, for the periodic republication.
    pub inventory_frame: f64,
}

impl Counts {
    pub fn new(topo: &Topology, wire: &Wire, initial: &[HostId]) -> Counts {
        let per_host = vms_per_host(topo, initial);
        let hosts = topo.hosts().len();
        let total: u64 = per_host.iter().map(|&k| wire.inventory(k as usize)).sum();
        Counts {
            hosts,
            vms: initial.len(),
            inventory_frame: total as f64 / hosts.max(1) as f64,
            ..Counts::default()
        }
    }

    /// A round start of the global policy: every host but the gathering one is asked.
    pub fn statistics(&mut self, wire: &Wire, per_host: &[u32], gatherer: HostId) {
        self.stats_rounds += 1;
        for (h, &k) in per_host.iter().enumerate() {
            if h != gatherer.index() {
                self.stats
                    .add(2, wire.stats_request + wire.stats_response(k as usize));
            }
        }
    }

    /// The capacity requests of one search: `sent` requests, each answered.
    pub fn capacity_search(&mut self, wire: &Wire, sent: usize) {
        let sent = sent as u64;
        self.capacity.add(
            2 * sent,
            sent * (wire.capacity_request + wire.capacity_response),
        );
    }

    /// A migration of `vm` between hosts that now hold `from_vms` and `to_vms` VMs.
    pub fn migration(&mut self, wire: &Wire, vm: VmId, from_vms: usize, to_vms: usize) {
        self.migrations += 1;
        self.migration_announces.add(2, 2 * wire.migration(vm));
        self.inventory_changes
            .add(2, wire.inventory(from_vms) + wire.inventory(to_vms));
    }
}

/// VMs on each host under `loc`.
pub fn vms_per_host(topo: &Topology, loc: &[HostId]) -> Vec<u32> {
    let mut per_host = vec![0u32; topo.hosts().len()];
    for h in loc {
        per_host[h.index()] += 1;
    }
    per_host
}

mod model;
pub mod report;
pub use model::{KINDS, Kind, Model, Projection, Row};

#[cfg(test)]
mod tests;
