//! The placement rules as this host applies them (`crate::rules` is the model; this room is the
//! daemon's side of it): the rules file, loaded at start and on SIGHUP (a file that does not
//! load on reload leaves the rules in force, logged and counted); the groups the local VMs'
//! libvirt metadata declares, interned into the rules; what a decision's [`RuleCheck`] is built
//! from (the VM's groups and where their other members run); the migration window and the
//! budgets that hold a chosen move back; and the rules this host's VMs break where they run.
//!
//! It never decides and never migrates: `assess` and `vm_turn` ask it.

use super::control::ViolationStatus;
use super::host::{Daemon, lock, unix_ms};
use crate::decide::TurnOutcome;
use crate::hypervisor::{GroupTag, Vm};
use crate::p2p::{LocateOptions, Peers};
use crate::rules::{GroupId, Member, Refusal, RuleCheck, Rules, WindowState};
use crate::topology::{HostId, Topology};
use scored_proto::VmId;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Reads the rules file at `path` (`rules::file`: a missing file is no rules), every error as
/// `file:line:col` on a line of its own.
pub fn read_rules_file(path: &Path, topo: &Topology) -> Result<Rules, String> {
    crate::rules::file::load(path, topo).map_err(|e| e.to_string())
}

/// The rules in force on this host.
#[derive(Default)]
pub(super) struct PlacementRules {
    /// The rules file's, as last loaded.
    file: Arc<Rules>,
    /// `file` with the local VMs bound by name and the groups their metadata declares: what
    /// decisions use.
    current: Arc<Rules>,
    /// Each local VM's metadata groups, as interned in `current`.
    local: HashMap<VmId, Vec<GroupId>>,
    /// The local VMs (id, libvirt name, metadata tags) `current` was built from, sorted by id:
    /// rebuilt only when they change.
    vms: Vec<(VmId, String, Vec<GroupTag>)>,
}

impl PlacementRules {
    /// `current` and `local` again from `file` and `vms`. A tag that cannot be honoured as
    /// written is logged (`rules::TagError` says why and what applies instead).
    fn rebuild(&mut self, topo: &Topology) {
        let mut rules = (*self.file).clone();
        rules.bind_names(self.vms.iter().map(|(id, name, _)| (*id, name.as_str())));
        let mut local = HashMap::new();
        for (vm, name, tags) in &self.vms {
            if tags.is_empty() {
                continue;
            }
            let (ids, errors) = rules.intern_tags(topo, tags);
            for e in errors {
                tracing::warn!(vm = %vm, name = %name, "{e}");
            }
            if !ids.is_empty() {
                local.insert(*vm, ids);
            }
        }
        self.current = Arc::new(rules);
        self.local = local;
    }
}

/// The rules file's members of `groups`, sorted.
fn file_members(rules: &Rules, groups: &[GroupId]) -> Vec<VmId> {
    let mut ids: Vec<VmId> = groups
        .iter()
        .flat_map(|g| rules.group(*g).members.iter().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// What a decision's [`RuleCheck`] is built from.
pub(super) struct RuleInputs {
    pub rules: Arc<Rules>,
    /// The VM's metadata groups (its rules-file groups the rules know themselves).
    pub extra: Vec<GroupId>,
    /// Where the other members of its groups run, as far as known.
    pub members: Vec<Member>,
    /// Why members may run on a host that did not answer (a lookup failed), when some may:
    /// deciding could break a rule.
    pub unplaced: Option<String>,
}

impl RuleInputs {
    pub fn check<'a>(&'a self, topo: &'a Topology, vm: VmId) -> RuleCheck<'a> {
        self.rules.check_for(topo, vm, &self.extra, &self.members)
    }
}

impl<P: Peers> Daemon<P> {
    /// Puts the rules file's `rules` in force (the metadata groups of the local VMs join them).
    pub fn set_rules(&self, rules: Rules) {
        let mut r = lock(&self.rules);
        r.file = Arc::new(rules);
        r.rebuild(&self.topo);
    }

    /// Loads the rules file the configuration names and puts it in force. A file that does not
    /// load leaves the rules in force as they were (none at start): logged with every error,
    /// counted in `scored_rules_file_errors_total`.
    pub fn load_rules(&self) -> bool {
        let path = self.config().placement.rules_file;
        match read_rules_file(&path, &self.topo) {
            Ok(rules) => {
                tracing::info!(
                    file = %path.display(),
                    groups = rules.groups().len(),
                    exclusions = rules.exclusions().len(),
                    windows = rules.windows.len(),
                    repair = rules.repair,
                    "placement rules in force"
                );
                self.set_rules(rules);
                true
            }
            Err(e) => {
                self.metrics.rules_file_errors.inc();
                tracing::error!(file = %path.display(), "placement rules not loaded; the rules in force stay:\n{e}");
                false
            }
        }
    }

    /// The rules in force: the file's with the local VMs' metadata groups.
    pub fn rules(&self) -> Arc<Rules> {
        lock(&self.rules).current.clone()
    }

    /// Follows the local VMs' names and metadata groups (after each inventory read).
    pub(super) fn follow_metadata_groups(&self, vms: &[Vm]) {
        let mut seen: Vec<(VmId, String, Vec<GroupTag>)> = vms
            .iter()
            .map(|v| (v.id, v.name.clone(), v.groups.clone()))
            .collect();
        seen.sort_unstable_by_key(|(vm, _, _)| *vm);
        let mut r = lock(&self.rules);
        if r.vms != seen {
            r.vms = seen;
            r.rebuild(&self.topo);
        }
    }

    /// Where the members of `groups` run: what this host knows without asking
    /// (`known_group_members`: rules-file members the directory places, local VMs by their
    /// metadata, peers' VMs by their groups announcements, room held here), then the rules-file
    /// members still unplaced looked up as partners are. Also why members may run on a host
    /// that did not answer, when some may.
    pub(super) async fn group_members(
        &self,
        rules: &Rules,
        groups: &[GroupId],
    ) -> (Vec<Member>, Option<String>) {
        let mut out = self.known_group_members(rules, groups);
        let ids: Vec<VmId> = file_members(rules, groups)
            .into_iter()
            .filter(|vm| !out.iter().any(|m| m.vm == *vm))
            .collect();
        if ids.is_empty() {
            return (out, None);
        }
        let options = LocateOptions {
            timeout: self.config().token.handoff_timeout(),
            verify: false,
            ..LocateOptions::default()
        };
        let located = self.peers.locate(&ids, options).await;
        let unplaced = located.why_uncertain("placement-group member");
        for &g in groups {
            for vm in &rules.group(g).members {
                if let Some(&host) = located.found.get(vm) {
                    out.push(Member {
                        group: g,
                        vm: *vm,
                        host,
                    });
                }
            }
        }
        (out, unplaced)
    }

    /// Every local VM in a group, with its groups (the rules file's, by id and by libvirt
    /// name, and its metadata's), as ids of the rules returned: what the last inventory read
    /// made of them, not a second reading.
    pub(super) fn local_memberships(&self) -> (Arc<Rules>, Vec<(VmId, Vec<GroupId>)>) {
        let r = lock(&self.rules);
        let list = r
            .vms
            .iter()
            .map(|(vm, _, _)| {
                let mut gs = r.current.groups_of(*vm).to_vec();
                if let Some(tagged) = r.local.get(vm) {
                    gs.extend_from_slice(tagged);
                }
                gs.sort_unstable();
                gs.dedup();
                (*vm, gs)
            })
            .filter(|(_, gs)| !gs.is_empty())
            .collect();
        (r.current.clone(), list)
    }

    /// The rules in force, `vm`'s metadata groups and every group it is in.
    pub(super) fn groups_of(&self, vm: VmId) -> (Arc<Rules>, Vec<GroupId>, Vec<GroupId>) {
        let (rules, extra) = {
            let r = lock(&self.rules);
            (
                r.current.clone(),
                r.local.get(&vm).cloned().unwrap_or_default(),
            )
        };
        let mut groups: Vec<GroupId> = rules.groups_of(vm).to_vec();
        groups.extend(extra.iter().copied());
        groups.sort_unstable();
        groups.dedup();
        (rules, extra, groups)
    }

    /// The rules that bear on local VM `vm` and where its groups' members run.
    pub(super) async fn rule_inputs(&self, vm: VmId) -> RuleInputs {
        let (rules, extra, groups) = self.groups_of(vm);
        let (members, unplaced) = if groups.is_empty() {
            (Vec::new(), None)
        } else {
            self.group_members(&rules, &groups).await
        };
        RuleInputs {
            rules,
            extra,
            members,
            unplaced,
        }
    }

    /// As [`Self::rule_inputs`], from what this host knows without asking.
    fn cached_rule_inputs(&self, vm: VmId) -> RuleInputs {
        let (rules, extra, groups) = self.groups_of(vm);
        let members = self.known_group_members(&rules, &groups);
        RuleInputs {
            rules,
            extra,
            members,
            unplaced: None,
        }
    }

    /// A refusal for a person, naming the member VM where this host knows its name:
    /// "anti-affinity group db-main, scope host: hv7 runs db-main-2".
    pub(super) fn explain(&self, rules: &Rules, r: &Refusal) -> String {
        let names: HashMap<VmId, String> = self
            .inventory
            .vms()
            .into_iter()
            .map(|v| (v.id, v.name))
            .collect();
        r.describe_as(rules, &self.topo, |vm| {
            names.get(&vm).cloned().unwrap_or_else(|| vm.to_string())
        })
    }

    /// Why a chosen move of `vm` from here to `to` may not start now, if it may not: a closed
    /// migration window (of this host or of `to`), a spent budget, or a forecast that the
    /// migration would not converge. The decision stands (the record and `scored plan` show
    /// it); only the migration waits.
    pub(super) fn held_back(
        &self,
        rules: &Rules,
        vm: VmId,
        to: HostId,
    ) -> Option<(TurnOutcome, String)> {
        let now = unix_ms();
        for h in [self.me, to] {
            if let WindowState::Closed { next_open_unix_ms } = rules.window(h, now as i64) {
                let next = next_open_unix_ms
                    .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
                    .map(|t| format!("opens {t}"))
                    .unwrap_or_else(|| "none opens within a week".into());
                return Some((
                    TurnOutcome::OutsideWindow,
                    format!(
                        "window: {} is outside its migration windows ({next})",
                        self.host_name(h)
                    ),
                ));
            }
        }
        let (vm_day, from_hour, to_hour) = self.ledger().budget_counts(vm, self.me, to);
        if let Err(spent) = rules
            .budget
            .allows(vm_day, (self.me, from_hour), Some((to, to_hour)))
        {
            return Some((TurnOutcome::OverBudget, spent.describe(&self.topo)));
        }
        self.forecast_holds_back(vm)
    }

    /// The rules the local VMs break where they run, from what this host knows without asking
    /// (`scored status`, `scored plan`, the gauge); sorted by VM.
    pub fn violations(&self) -> Vec<ViolationStatus> {
        let mut out = Vec::new();
        let mut vms = self.inventory.vms();
        vms.sort_unstable_by_key(|v| v.id);
        for v in vms {
            let inputs = self.cached_rule_inputs(v.id);
            let check = inputs.check(&self.topo, v.id);
            for r in check.violations(self.me) {
                out.push(ViolationStatus {
                    vm: v.id.to_string(),
                    name: v.name.clone(),
                    kind: r.kind().to_string(),
                    rule: self.explain(&inputs.rules, &r),
                });
            }
        }
        out
    }

    /// Sets `scored_rule_violations` by kind (after each inventory read).
    pub(super) fn watch_violations(&self) {
        let seen = self.violations();
        for kind in Refusal::KINDS {
            let n = seen.iter().filter(|v| v.kind == kind).count();
            self.metrics.rule_violations(kind).set(n as i64);
        }
    }

    /// A destination for a VM that breaks an anti-affinity rule here, when the repair option is
    /// on: the hosts where the move ends the violation and breaks no rule, cheapest for u's
    /// traffic first, the first with room (at most `max_candidates` asked).
    pub(super) async fn repair_target(
        &self,
        vm: &Vm,
        check: &RuleCheck<'_>,
        partners: &[crate::cost::PartnerTraffic],
    ) -> Option<HostId> {
        let mut hosts: Vec<(f64, HostId)> = self
            .peers
            .others()
            .into_iter()
            .filter(|h| check.repairs(self.me, *h))
            .map(|h| (crate::cost::vm_cost(&self.topo, h, partners), h))
            .collect();
        hosts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let config = self.config();
        hosts.truncate(config.decision.max_candidates as usize);
        // The destination judges the move by the rules too, and holds room for it (not for a
        // recommendation).
        let req = scored_proto::PlacementRequest {
            memory_mib: vm.memory_mib,
            moving: (!config.decision.dry_run).then(|| self.moving_vm(vm)),
        };
        let timeout = config.token.handoff_timeout();
        for (_, h) in hosts {
            if let Ok(r) = self.peers.query_capacity(h, req.clone(), timeout).await
                && r.capacity.accepts
                && r.capacity.free_memory_mib >= vm.memory_mib
            {
                return Some(h);
            }
        }
        None
    }
}
