//! Group moves planned at a turn with the simulator's planner (`decide::group`), from what this
//! host knows of itself and what the hosts it surveys (`/scored/group/1`) answer.
//!
//! The planner reads the data centre through [`GroupView`]. Here the view answers from the
//! surveys taken so far and notes every host it lacked; planning then runs again once those
//! hosts answered. Each pass asks only the hosts the previous one lacked, and a plan is taken
//! only from a pass that lacked none (at most [`PASSES`]). A host that does not answer takes no
//! part, as in the simulator. The turn's own host is surveyed the way a peer would be, without
//! a message.
//!
//! A surveyed VM is what its host says of it: whether that daemon's gates let it move, its
//! memory, its heaviest partners. What only a VM's own daemon holds — its recent hosts (the
//! return gate) and its migration forecast — is applied here for this host's VMs and left to
//! the daemon that would move the others.
//!
//! Recommend-only so far: the turn reports the plan; nothing moves for it.

use super::assess::capacity_of;
use super::host::{Daemon, unix_ms};
use crate::config::Config;
use crate::cost::{self, Link, MoveCharge};
use crate::decide::Decider;
use crate::decide::group::{GroupOptions, GroupPlan, GroupView};
use crate::hypervisor::Capacity;
use crate::p2p::Peers;
use crate::topology::HostId;
use scored_proto::{Stamp, SurveyRequest, SurveyResponse, SurveyedVm, VmId};
use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

/// Planning passes at most: the deciding VM's rack, then the destination racks, then one to
/// spare (a member found only once the first answers came).
const PASSES: usize = 4;

/// What the surveys said, by host (`None`: asked, did not answer), and where each surveyed VM
/// runs.
#[derive(Default)]
struct Surveys {
    hosts: HashMap<HostId, Option<SurveyResponse>>,
    vms: HashMap<VmId, (HostId, usize)>,
}

impl Surveys {
    fn add(&mut self, host: HostId, answer: Option<SurveyResponse>) {
        if let Some(r) = &answer {
            for (i, v) in r.vms.iter().enumerate() {
                self.vms.insert(v.vm, (host, i));
            }
        }
        self.hosts.insert(host, answer);
    }

    fn vm(&self, vm: VmId) -> Option<(HostId, &SurveyedVm)> {
        let &(h, i) = self.vms.get(&vm)?;
        let r = self.hosts.get(&h)?.as_ref()?;
        Some((h, &r.vms[i]))
    }
}

/// A turn's group planning.
#[derive(Debug, Default)]
pub struct GroupOutcome {
    /// The plan the last pass made, if it lacked no host.
    pub plan: Option<GroupPlan>,
    /// Peers asked for a survey, and how many of them did not answer.
    pub surveyed: usize,
    pub unanswered: usize,
    /// The passes ran out with hosts still lacking: no plan taken.
    pub incomplete: bool,
}

/// The data centre as the surveys so far show it.
struct SurveyView<'a, P: Peers> {
    daemon: &'a Daemon<P>,
    config: &'a Config,
    surveys: &'a Surveys,
    now_ms: i64,
    now: Instant,
    /// Hosts this pass needed and had no survey of.
    lacking: BTreeSet<HostId>,
}

impl<P: Peers> SurveyView<'_, P> {
    /// `host`'s survey; a host not surveyed yet is noted as lacking.
    fn survey(&mut self, host: HostId) -> Option<&SurveyResponse> {
        match self.surveys.hosts.get(&host) {
            Some(answer) => answer.as_ref(),
            None => {
                self.lacking.insert(host);
                None
            }
        }
    }

    /// Where `vm` runs: its host's survey, else the directory's cache.
    fn locate(&self, vm: VmId) -> Option<HostId> {
        match self.surveys.vm(vm) {
            Some((h, _)) => Some(h),
            None => self.daemon.peers.directory().lookup(vm),
        }
    }
}

impl<P: Peers> GroupView for SurveyView<'_, P> {
    fn host_of(&self, vm: VmId) -> Option<HostId> {
        self.locate(vm)
    }

    fn partners(&mut self, vm: VmId, out: &mut Vec<Link>) {
        let Some(host) = self.locate(vm) else {
            return;
        };
        if self.survey(host).is_none() {
            return;
        }
        let Some((_, v)) = self.surveys.vm(vm) else {
            return;
        };
        // A partner no host runs (a gateway, a client) has no place in Eq. 3.1's tree.
        out.extend(
            v.partners
                .iter()
                .filter_map(|&(p, rate)| self.locate(p).map(|host| Link { vm: p, host, rate })),
        );
    }

    fn residents(&mut self, host: HostId, out: &mut Vec<VmId>) {
        if let Some(r) = self.survey(host) {
            out.extend(r.vms.iter().map(|v| v.vm));
        }
    }

    fn capacity(&mut self, host: HostId) -> Option<Capacity> {
        let topo = &self.daemon.topo;
        self.survey(host)
            .map(|r| capacity_of(topo.host(host), &r.capacity, r.cpus))
    }

    fn memory_mib(&self, vm: VmId) -> u64 {
        self.surveys.vm(vm).map_or(0, |(_, v)| v.memory_mib)
    }

    fn movable(&mut self, vm: VmId) -> bool {
        if let Some(host) = self.locate(vm) {
            self.survey(host);
        }
        self.surveys.vm(vm).is_some_and(|(_, v)| v.movable)
    }

    fn admits(
        &mut self,
        vm: VmId,
        from: HostId,
        to: HostId,
        placed: &dyn Fn(VmId) -> Option<HostId>,
    ) -> bool {
        let d = self.daemon;
        let Some(dest) = self.survey(to) else {
            return false;
        };
        if dest.capacity.maintenance {
            return false;
        }
        let rules = d.rules();
        if !rules.window(to, self.now_ms).allows() {
            return false;
        }
        if from == d.me && self.config.decision.return_margin_fraction > 0.0 {
            let (_, previous, _) = d.rest(vm, self.config, self.now);
            if previous.contains(&to) {
                return false;
            }
        }
        let check = rules.check_located(&d.topo, vm, |m| placed(m).or_else(|| self.locate(m)));
        check.allows(from, to).is_ok()
    }

    fn migration_cost(&mut self, vm: VmId, from: HostId, to: HostId, partners: &[Link]) -> f64 {
        let d = self.daemon;
        let own = cost::cost_at(&d.topo, from, partners.iter().map(|l| (l.host, l.rate)));
        let constant = self.config.decision.effective_migration_cost(own);
        // The forecast of a VM is its own host's: known here for this host's VMs only.
        let charge: Option<MoveCharge> = (from == d.me)
            .then(|| d.inventory.get(vm))
            .flatten()
            .and_then(|v| d.move_charge(&v, self.config));
        cost::move_cost(&d.topo, constant, charge.as_ref(), from, to)
    }
}

impl<P: Peers> Daemon<P> {
    /// Plans a group move led by `vm` (`decide::group`) that would gain more than `floor` after
    /// its migration costs, surveying the hosts the plan reads. Moves nothing.
    pub(super) async fn plan_group(&self, vm: VmId, floor: f64, at: Stamp) -> GroupOutcome {
        let config = self.config();
        let mut surveys = Surveys::default();
        match self.survey_here().await {
            Ok(here) => surveys.add(self.me, Some(here)),
            Err(why) => {
                tracing::debug!(vm = %vm, error = %why, "no group plan: this host's hypervisor");
                return GroupOutcome::default();
            }
        }
        let mut out = GroupOutcome::default();
        let decider = Decider::new(&self.topo);
        let options = GroupOptions::default();
        let timeout = config.token.handoff_timeout();
        for _ in 0..PASSES {
            let mut view = SurveyView {
                daemon: self,
                config: &config,
                surveys: &surveys,
                now_ms: unix_ms() as i64,
                now: Instant::now(),
                lacking: BTreeSet::new(),
            };
            let plan = decider.plan_group(&mut view, vm, &options, floor);
            let lacking: Vec<HostId> = view.lacking.into_iter().collect();
            if lacking.is_empty() {
                out.plan = plan;
                return out;
            }
            self.metrics.group_surveys.inc_by(lacking.len() as u64);
            out.surveyed += lacking.len();
            for (h, answer) in self
                .peers
                .surveys(&lacking, SurveyRequest { at }, timeout)
                .await
            {
                if let Err(e) = &answer {
                    tracing::debug!(vm = %vm, host = %self.host_name(h), error = %e, "no survey answer");
                    out.unanswered += 1;
                }
                surveys.add(h, answer.ok());
            }
        }
        out.incomplete = true;
        out
    }
}
