//! Answers to peers: capacity (may this host take a VM of this size?), statistics for the global
//! policy and for a peer about to regenerate the token, and what peers announce (the token seen
//! elsewhere, a VM that moved). Each capacity or statistics answer runs in a task of its own, so
//! the event loop answers everyone even while this host decides or migrates.
//!
//! Reads the daemon's state and writes only what an announcement tells; it never decides.

use super::host::{Daemon, unix_ms};
use crate::cost::PartnerTraffic;
use crate::decide::Decider;
use crate::p2p::{Peers, Responder};
use crate::topology::HostId;
use scored_proto::{
    Announcement, CapacityResponse, MAX_SURVEY_PARTNERS, MAX_SURVEY_VMS, PlacementRequest,
    PlacementResponse, Stamp, StatsRequest, StatsResponse, SurveyRequest, SurveyResponse,
    SurveyedVm, VmBenefit, VmId,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl<P: Peers> Daemon<P> {
    /// Capacity answer: what the hypervisor reports, less the topology's reserve, and whether this
    /// host accepts a VM of the requested size at all (maintenance, room). A request that names
    /// the VM is judged by the placement rules here too, with what this host knows best; an
    /// accepted one holds room for the VM (`group_members`).
    pub async fn answer_capacity(
        self: Arc<Self>,
        from: HostId,
        req: PlacementRequest,
        reply: Responder<PlacementResponse>,
    ) {
        let (mut capacity, cpus) = match self.room(req.memory_mib).await {
            Ok(r) => r,
            Err(why) => return reply.refuse(why),
        };
        let mut refused_by_rule = None;
        if let Some(moving) = &req.moving {
            // Held until the VM arrives or is seen elsewhere, at most as long as the asker's
            // migration may take after its decision.
            let config = self.config();
            let hold =
                Duration::from_secs(config.migration.timeout_s) + config.token.handoff_timeout();
            if let Err(sentence) = self.recheck(from, moving, capacity.accepts, hold) {
                tracing::info!(vm = %moving.vm, from = %self.host_name(from), rule = %sentence, "capacity request refused by a placement rule");
                capacity.accepts = false;
                refused_by_rule = Some(truncate(sentence, scored_proto::MAX_REASON));
            }
        }
        reply.send(PlacementResponse {
            capacity,
            refused_by_rule,
            cpus,
        });
    }

    /// This host's room as peers hear it, with its CPU count: what the hypervisor reports, less
    /// the topology's reserve, and whether a VM of `memory_mib` would be accepted now
    /// (maintenance, the incoming bound, room). `Err`: the hypervisor's failure, as a refusal
    /// says it.
    async fn room(&self, memory_mib: u64) -> Result<(CapacityResponse, u32), String> {
        let within = self.config().hypervisor.call_timeout();
        let cap = match self.hv.call("capacity", within, |hv| hv.capacity()).await {
            Ok(c) => c,
            Err(e) if e.is_unavailable() => return Err(format!("hypervisor not answering: {e}")),
            Err(e) => return Err(format!("hypervisor: {e}")),
        };
        let host = self.topo.host(self.me);
        let maintenance = self.operator().maintenance();
        let max_incoming = self.config().migration.max_incoming;
        // Incoming migrations count whoever started them: operators' virsh, OpenStack, or a
        // second token on the other side of a partition.
        let incoming = cap.incoming_migrations;
        let free_slots = host
            .max_vms
            .saturating_sub(cap.running_vms)
            .saturating_sub(incoming);
        let free_memory_mib = cap.free_memory_mib.saturating_sub(host.reserve_memory_mib);
        let capacity = CapacityResponse {
            free_slots,
            free_memory_mib,
            cpu_load: cap.cpu_load,
            maintenance,
            incoming_migrations: incoming,
            accepts: !maintenance
                && incoming < max_incoming
                && free_slots > 0
                && free_memory_mib >= memory_mib,
        };
        Ok((capacity, cap.cpus))
    }

    /// The group-move survey (`/scored/group/1`) a peer asked for; see [`Self::survey_here`].
    pub async fn answer_survey(
        self: Arc<Self>,
        from: HostId,
        req: SurveyRequest,
        reply: Responder<SurveyResponse>,
    ) {
        match self.survey_here().await {
            Ok(r) => {
                tracing::debug!(from = %self.host_name(from), at = ?req.at, vms = r.vms.len(), "survey answered");
                reply.send(r)
            }
            Err(why) => reply.refuse(why),
        }
    }

    /// This host as a group-move survey gives it: its VMs with their memory, whether this
    /// daemon's gates would let each move now, and its heaviest partners; its room. What a peer
    /// planning a group move reads, and what this host's own plans read of it. `Err`: the
    /// hypervisor's failure.
    pub(super) async fn survey_here(&self) -> Result<SurveyResponse, String> {
        let (capacity, cpus) = self.room(0).await?;
        let config = self.config();
        let now = Instant::now();
        let window_open = self.rules().window(self.me, unix_ms() as i64).allows();
        let mut vms = self.inventory.vms();
        vms.sort_unstable_by_key(|v| v.id);
        vms.truncate(MAX_SURVEY_VMS);
        // The rates first, the traffic's lock released before the ledger's is taken.
        let rates: Vec<Vec<(VmId, f64)>> = {
            let traffic = self.traffic();
            let source = traffic.source();
            vms.iter().map(|v| source.partners(v.id)).collect()
        };
        let out: Vec<SurveyedVm> = vms
            .iter()
            .zip(rates)
            .map(|(v, rates)| {
                let mut partners: Vec<(VmId, f64)> = rates
                    .into_iter()
                    .filter(|(p, r)| *p != v.id && *r > 0.0 && r.is_finite())
                    .collect();
                partners.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                partners.truncate(MAX_SURVEY_PARTNERS);
                SurveyedVm {
                    vm: v.id,
                    memory_mib: v.memory_mib,
                    movable: window_open && !capacity.maintenance && self.may_move(v, &config, now),
                    partners,
                }
            })
            .collect();
        Ok(SurveyResponse {
            vms: out,
            capacity,
            cpus,
        })
    }

    /// Statistics for the global policy: each local VM's best expected benefit, from cached
    /// locations and no capacity queries.
    pub async fn answer_stats(
        self: Arc<Self>,
        _req: StatsRequest,
        reply: Responder<StatsResponse>,
    ) {
        let benefits = self.local_benefits();
        let token = self.token_watch().view(Instant::now());
        reply.send(StatsResponse {
            token,
            benefits: benefits
                .into_iter()
                .map(|(vm, benefit)| VmBenefit { vm, benefit })
                .collect(),
        });
    }

    pub(super) fn local_benefits(&self) -> Vec<(VmId, f64)> {
        let vms = self.inventory.ids();
        let mut out = Vec::with_capacity(vms.len());
        let mut decider = Decider::new(&self.topo);
        for vm in vms {
            // Cached locations only: a statistics answer must be quick, and an estimate will do.
            let pt: Vec<PartnerTraffic> = self
                .cached_partners(vm)
                .into_iter()
                .map(|(_, host, rate)| PartnerTraffic { host, rate })
                .collect();
            let best = decider.best_benefit(self.me, &pt);
            out.push((vm, best));
        }
        out
    }

    /// Tells the directory where the token is as far as the ring knows: peers' stamps are
    /// judged by what the ring accepted, never by an announcement's own stamp.
    pub(super) fn sync_token_clock(&self) {
        let seen = {
            let watch = self.token_watch();
            let ring = watch.ring();
            Stamp {
                epoch: ring.highest_epoch(),
                seq: ring.last_seq(),
            }
        };
        self.peers.directory().observe_token(seen);
    }

    /// A peer's announcement (already applied to the directory).
    pub fn on_announcement(&self, from: HostId, a: Announcement) {
        let now = Instant::now();
        match a {
            Announcement::TokenSeen { at, round, .. } => {
                self.on_token_seen(from, at, round, now);
                self.sync_token_clock();
            }
            Announcement::Migration(m) => {
                let host = |name: &str| self.topo.host_by_name(name).map(|h| h.id);
                let (Some(src), Some(dst)) = (host(&m.from), host(&m.to)) else {
                    return;
                };
                // The budgets count every move heard of, told by its source or its destination.
                self.ledger().count_move(m.vm, src, dst);
                if dst == from && src != self.me {
                    // Attributable: the host now running the VM says so itself (the directory
                    // passes each arrival on once). The announcement carries no duration; the
                    // cooldown base covers it. A move out of here is in the history already.
                    self.ledger().moved(m.vm, src, dst, Duration::ZERO, now);
                } else if dst == self.me {
                    // Its former host says the VM comes here: read it from the hypervisor rather
                    // than wait for the periodic refresh, so location answers and this host's
                    // decisions see it here at once, and this host announces the arrival.
                    self.refresh_soon();
                }
                tracing::debug!(from = %self.host_name(from), vm = %m.vm, to = %m.to, "peer migrated a VM");
            }
            Announcement::Inventory { .. } => {}
        }
    }
}

/// `s` cut to at most `max` bytes, on a character boundary (a refusal's sentence is bounded on
/// the wire; group names are at most 64 bytes, so this only matters for a rule of many words).
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
