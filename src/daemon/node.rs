//! One host's daemon state and what it does with it: answer peers (capacity, statistics), take
//! the token, decide for the VM the policy names (the shared `decide` code), migrate through the
//! hypervisor, and hand the token on.
//!
//! Generic over the transport ([`Peers`]): the same code runs over libp2p between real hosts and
//! over direct calls in the loopback tests. Locks are short and never held across an `.await`;
//! blocking hypervisor calls run in `spawn_blocking`, so the event loop always answers peers,
//! even while this host migrates a VM.

use super::history::{CooldownPolicy, History};
use super::journal::{self, Journal};
use super::ring::{self, Arrival, Ring};
use super::turn::{Action, DropReason, Handoff, Input, TurnMachine};
use crate::config::{Config, VmRef};
use crate::cost::{self, PartnerTraffic};
use crate::decide::{self, Decider, Gates, Subject, TurnOutcome};
use crate::flows::FlowSource;
use crate::hypervisor::{
    Capacity, Destination, Hypervisor, HypervisorError, MigrationReport, Vm, VmState,
};
use crate::metrics::{self, Metrics};
use crate::p2p::{LocateOptions, PeerError, Peers, Responder};
use crate::token::Neighbour;
use crate::topology::{HostId, Topology};
use futures::StreamExt;
use scored_proto::{
    Announcement, CapacityRequest, CapacityResponse, Stamp, StatsRequest, StatsResponse, Token,
    TokenAck, TokenView, VmBenefit, VmId,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Decisions kept for `scored status`.
const RECENT_DECISIONS: usize = 64;
/// Attempts to hand the token to one host before skipping it.
const HANDOFF_ATTEMPTS: u32 = 3;
/// Head of the global policy's round order shown in the log (the whole order of a large data
/// centre would not fit a log line).
const SCHEDULE_LOGGED: usize = 32;

/// Where the flow rates come from; the synthetic feed needs its clock moved.
pub enum Traffic {
    Capture(Box<crate::flows::capture::CaptureSource>),
    Synthetic {
        source: Box<crate::flows::synthetic::SyntheticSource>,
        started: Instant,
    },
}

impl Traffic {
    pub fn source(&self) -> &dyn FlowSource {
        match self {
            Traffic::Capture(c) => c.as_ref(),
            Traffic::Synthetic { source, .. } => source.as_ref(),
        }
    }

    fn source_mut(&mut self) -> &mut dyn FlowSource {
        match self {
            Traffic::Capture(c) => c.as_mut(),
            Traffic::Synthetic { source, .. } => source.as_mut(),
        }
    }

    /// Moves a synthetic feed's clock to now (capture reads its own clock).
    pub fn tick(&mut self, now: Instant) {
        if let Traffic::Synthetic { source, started } = self {
            source.advance_to(now.saturating_duration_since(*started));
        }
    }
}

/// What happened to one VM's turn, for logs, metrics and `scored status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// When the turn for this VM began (assessment, then any migration), wall clock: with
    /// `unix_ms` (when it ended) it shows that no two hosts ever decided at once.
    #[serde(default)]
    pub started_unix_ms: u64,
    pub unix_ms: u64,
    pub vm: String,
    pub outcome: String,
    /// u's own share of Eq. 3.1 where it runs (cost units).
    pub current_cost: f64,
    /// c_m that applied.
    pub migration_cost: f64,
    /// Best destination and its Eq. 3.2 benefit, before capacity and gates.
    pub best_host: Option<String>,
    pub best_benefit: Option<f64>,
    /// Where it went (or would go, in dry-run).
    pub to: Option<String>,
    pub partners: usize,
    pub detail: String,
    pub epoch: u64,
    pub seq: u64,
}

/// The result of assessing one VM now.
pub struct Assessment {
    pub outcome: TurnOutcome,
    pub decision: Option<decide::Decision>,
    pub partners: Vec<(VmId, HostId, f64)>,
    pub detail: String,
}

/// Mutable daemon state, behind one short lock.
pub struct State {
    pub ring: Ring,
    pub history: History,
    pub journal: Journal,
    pub inventory: Vec<Vm>,
    /// The stamp of the token this host works on, if it holds one.
    pub holding: Option<Stamp>,
    /// VMs whose migration, left open by a crash, may still run: never touched until settled.
    /// Asked about again on every inventory refresh.
    pub unsettled: HashSet<VmId>,
    /// A pass over `unsettled` is under way (refreshes overlap).
    pub settling: bool,
    /// While the hypervisor does not answer: its last error and when the outage began.
    pub hypervisor_down: Option<(String, Instant)>,
    pub maintenance: bool,
    /// `scored drain`: move every local VM away, one per token visit.
    pub draining: bool,
    /// VMs pinned at run time (`scored pin`).
    pub pinned: HashSet<VmId>,
    pub recent: VecDeque<DecisionRecord>,
    /// Hosts with a live connection to us.
    pub reachable: HashSet<HostId>,
    /// When this host first heard of each token round.
    pub rounds_seen: BTreeMap<u32, Instant>,
    pub migrations_done: u64,
    /// A loss check (pinging lower hosts) is under way.
    pub checking: bool,
    /// Shutting down: hand the token on, start nothing new.
    pub stopping: bool,
}

/// Everything one daemon owns.
pub struct Node<P: Peers> {
    pub topo: Arc<Topology>,
    pub me: HostId,
    pub peers: Arc<P>,
    pub hv: Arc<dyn Hypervisor>,
    pub traffic: Mutex<Traffic>,
    pub config: RwLock<Config>,
    pub metrics: Arc<Metrics>,
    pub state: Mutex<State>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Loss timeout and stagger derived from the configuration (docs/protocol.md, "Token loss").
pub fn loss_timing(config: &Config) -> (Duration, Duration) {
    let handoff = config.token.handoff_timeout();
    let loss = config
        .token
        .regeneration_timeout()
        .unwrap_or(handoff * 2)
        .max(handoff + heartbeat_interval(config));
    (loss, handoff / 4)
}

/// How often a holder tells everyone it still holds the token.
pub fn heartbeat_interval(config: &Config) -> Duration {
    (config.token.handoff_timeout() / 4).max(Duration::from_millis(50))
}

/// What a [`Node`] is built from.
pub struct Parts<P: Peers> {
    pub topo: Arc<Topology>,
    pub me: HostId,
    pub peers: Arc<P>,
    pub hv: Arc<dyn Hypervisor>,
    pub traffic: Traffic,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub journal: Journal,
}

impl<P: Peers> Node<P> {
    pub fn new(parts: Parts<P>) -> Self {
        let Parts {
            topo,
            me,
            peers,
            hv,
            traffic,
            config,
            metrics,
            journal,
        } = parts;
        let (loss, stagger) = loss_timing(&config);
        let maintenance = config.placement.maintenance;
        Node {
            topo,
            me,
            peers,
            hv,
            traffic: Mutex::new(traffic),
            config: RwLock::new(config),
            metrics,
            state: Mutex::new(State {
                ring: Ring::new(Instant::now(), loss, stagger),
                history: History::new(),
                journal,
                inventory: Vec::new(),
                holding: None,
                unsettled: HashSet::new(),
                settling: false,
                hypervisor_down: None,
                maintenance,
                draining: false,
                pinned: HashSet::new(),
                recent: VecDeque::new(),
                reachable: HashSet::new(),
                rounds_seen: BTreeMap::new(),
                migrations_done: 0,
                checking: false,
                stopping: false,
            }),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn traffic(&self) -> MutexGuard<'_, Traffic> {
        self.traffic.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> Config {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn name(&self) -> &str {
        &self.topo.host(self.me).name
    }

    fn host_name(&self, h: HostId) -> String {
        self.topo.host(h).name.clone()
    }

    // ----- inventory -------------------------------------------------------------------------

    /// Runs a blocking hypervisor call off the event loop, waiting for it at most
    /// `hypervisor.call_timeout_s`, and keeps track of whether the hypervisor answers: an outage
    /// is logged when it begins and when it ends, not per call.
    async fn hv_call<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&dyn Hypervisor) -> Result<T, HypervisorError> + Send + 'static,
    ) -> Result<T, HypervisorError> {
        let within = self.config().hypervisor.call_timeout();
        self.hv_call_within(what, within, f).await
    }

    /// [`Self::hv_call`] with its own bound. A call that does not return in time is left to
    /// its thread and reported as [`HypervisorError::NoAnswer`]: the token and the event loop
    /// never wait on a hung hypervisor for longer than the bound.
    async fn hv_call_within<T: Send + 'static>(
        &self,
        what: &'static str,
        within: Duration,
        f: impl FnOnce(&dyn Hypervisor) -> Result<T, HypervisorError> + Send + 'static,
    ) -> Result<T, HypervisorError> {
        let hv = self.hv.clone();
        let call = tokio::task::spawn_blocking(move || f(hv.as_ref()));
        let r = match tokio::time::timeout(within, call).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(HypervisorError::Connection(format!("{what} task: {e}"))),
            Err(_) => Err(HypervisorError::NoAnswer {
                call: what,
                after: within,
            }),
        };
        match &r {
            Err(e) if e.is_unavailable() => self.hypervisor_failed(what, e),
            _ => self.hypervisor_answered(),
        }
        r
    }

    fn hypervisor_failed(&self, what: &str, e: &HypervisorError) {
        self.metrics.hypervisor_up.set(0);
        let mut st = self.state();
        let began = st.hypervisor_down.is_none();
        let since = st
            .hypervisor_down
            .as_ref()
            .map(|(_, t)| *t)
            .unwrap_or_else(Instant::now);
        st.hypervisor_down = Some((e.to_string(), since));
        drop(st);
        if began {
            tracing::warn!(call = what, error = %e, "hypervisor not answering: no decisions for this host's VMs and no VMs taken in until it is back");
        }
    }

    fn hypervisor_answered(&self) {
        self.metrics.hypervisor_up.set(1);
        let ended = self.state().hypervisor_down.take();
        if let Some((error, since)) = ended {
            tracing::info!(down_s = since.elapsed().as_secs_f64(), last_error = %error, "hypervisor answering again");
        }
    }

    /// Reads the local VMs from the hypervisor and brings flows, directory and metrics in step
    /// (the incoming-migration gauge too, from the capacity); then asks again about migrations
    /// a previous run left unsettled.
    pub async fn refresh_inventory(self: &Arc<Self>) -> Result<(), HypervisorError> {
        self.read_inventory(true).await
    }

    /// [`Self::refresh_inventory`], reading the capacity only `with_capacity` (the token's path
    /// needs the VMs alone).
    async fn read_inventory(self: &Arc<Self>, with_capacity: bool) -> Result<(), HypervisorError> {
        let (vms, cap) = self
            .hv_call("inventory", move |hv| {
                let vms = hv.vms()?;
                let cap = if with_capacity {
                    Some(hv.capacity()?)
                } else {
                    None
                };
                Ok((vms, cap))
            })
            .await?;
        self.set_inventory(vms);
        if let Some(cap) = cap {
            self.metrics
                .migrations
                .in_flight
                .get_or_create(&metrics::DirectionLabels {
                    direction: metrics::MigrationDirection::Incoming,
                })
                .set(i64::from(cap.incoming_migrations));
        }
        let unsettled = !self.state().unsettled.is_empty();
        if unsettled {
            self.settle_unsettled().await;
        }
        Ok(())
    }

    fn set_inventory(&self, vms: Vec<Vm>) {
        if let Err(e) = self.traffic().source_mut().follow(&vms) {
            tracing::warn!(error = %e, "flow capture does not follow every VM");
        }
        self.metrics.vms.set(vms.len() as i64);
        let dir = self.peers.directory();
        let known: HashMap<VmId, Stamp> = dir
            .local_vms()
            .into_iter()
            .map(|l| (l.vm, l.since))
            .collect();
        dir.set_local(
            vms.iter()
                .map(|v| (v.id, known.get(&v.id).copied().unwrap_or_default())),
        );
        self.state().inventory = vms;
    }

    fn local_vm(&self, vm: VmId) -> Option<Vm> {
        self.state().inventory.iter().find(|v| v.id == vm).cloned()
    }

    /// After a crash: settles every migration the journal left open with what the hypervisor
    /// says now. Those still running (or whose state cannot be read) leave their VMs unsettled:
    /// untouched, and asked about again on every inventory refresh until they end.
    pub async fn reconcile(self: &Arc<Self>, left: Vec<journal::Entry>) {
        for e in left {
            self.settle_entry(e, true).await;
        }
    }

    /// Asks the hypervisor again about every unsettled VM's open journal entry.
    async fn settle_unsettled(self: &Arc<Self>) {
        let entries: Vec<journal::Entry> = {
            let mut st = self.state();
            if st.settling {
                return;
            }
            st.settling = true;
            st.journal
                .open_entries()
                .filter(|e| st.unsettled.contains(&e.vm))
                .cloned()
                .collect()
        };
        for e in entries {
            self.settle_entry(e, false).await;
        }
        self.state().settling = false;
    }

    /// Closes one journal entry if the hypervisor says how it ended; else marks its VM unsettled.
    async fn settle_entry(self: &Arc<Self>, e: journal::Entry, at_start: bool) {
        let vm = e.vm;
        let state = match self
            .hv_call("journal reconciliation", move |hv| hv.state(vm))
            .await
        {
            Ok(s) => s,
            Err(err) => {
                if at_start {
                    tracing::warn!(vm = %vm, error = %err, "journal: cannot read the VM's state; it stays untouched");
                }
                self.state().unsettled.insert(vm);
                return;
            }
        };
        let verdict = journal::reconcile(state);
        if at_start {
            tracing::info!(vm = %vm, to = %e.to, journal = e.id, ?verdict, unix_ms = unix_ms(), "journal: migration left open by the last run");
        }
        let outcome = match verdict {
            journal::Reconciled::StillRunning => {
                self.state().unsettled.insert(vm);
                tracing::debug!(vm = %vm, to = %e.to, journal = e.id, "journal: migration still running");
                return;
            }
            journal::Reconciled::Completed => journal::Ending::ReconciledCompleted,
            journal::Reconciled::Failed => journal::Ending::ReconciledFailed,
        };
        {
            let mut st = self.state();
            if let Err(err) = st.journal.end(e.id, outcome) {
                tracing::warn!(vm = %vm, journal = e.id, error = %err, "journal: entry not closed");
            }
            st.unsettled.remove(&vm);
            if verdict == journal::Reconciled::Completed {
                // As for a migration seen through: the VM must not bounce straight back.
                st.history
                    .record(vm, self.me, Duration::ZERO, Instant::now());
            }
        }
        tracing::info!(vm = %vm, to = %e.to, journal = e.id, ?verdict, unix_ms = unix_ms(), "journal: migration settled");
        if verdict == journal::Reconciled::Completed
            && let Some(to) = self.topo.host_by_name(&e.to).map(|h| h.id)
        {
            let at = Stamp {
                epoch: e.epoch,
                seq: e.seq,
            };
            if let Err(err) = self.peers.announce_migration(vm, to, at).await {
                tracing::debug!(error = %err, "settled migration not announced");
            }
        }
    }

    // ----- answering peers -------------------------------------------------------------------

    /// Capacity answer: what the hypervisor reports, less the topology's reserve, and whether this
    /// host accepts a VM of the requested size at all (maintenance, room).
    pub async fn answer_capacity(
        self: Arc<Self>,
        req: CapacityRequest,
        reply: Responder<CapacityResponse>,
    ) {
        let cap = match self.hv_call("capacity", |hv| hv.capacity()).await {
            Ok(c) => c,
            Err(e) if e.is_unavailable() => {
                return reply.refuse(format!("hypervisor not answering: {e}"));
            }
            Err(e) => return reply.refuse(format!("hypervisor: {e}")),
        };
        let host = self.topo.host(self.me);
        let maintenance = self.state().maintenance;
        let max_incoming = self.config().migration.max_incoming;
        // Incoming migrations count whoever started them: operators' virsh, OpenStack, or a
        // second token on the other side of a partition.
        let incoming = cap.incoming_migrations;
        let free_slots = host
            .max_vms
            .saturating_sub(cap.running_vms)
            .saturating_sub(incoming);
        let free_memory_mib = cap.free_memory_mib.saturating_sub(host.reserve_memory_mib);
        reply.send(CapacityResponse {
            free_slots,
            free_memory_mib,
            cpu_load: cap.cpu_load,
            maintenance,
            incoming_migrations: incoming,
            accepts: !maintenance
                && incoming < max_incoming
                && free_slots > 0
                && free_memory_mib >= req.memory_mib,
        });
    }

    /// Statistics for the global policy: each local VM's best expected benefit, from cached
    /// locations and no capacity queries.
    pub async fn answer_stats(
        self: Arc<Self>,
        _req: StatsRequest,
        reply: Responder<StatsResponse>,
    ) {
        let benefits = self.local_benefits().await;
        let token = self.token_view(Instant::now());
        reply.send(StatsResponse {
            token,
            benefits: benefits
                .into_iter()
                .map(|(vm, benefit)| VmBenefit { vm, benefit })
                .collect(),
        });
    }

    /// What this host knows of the token, for peers about to regenerate it.
    pub fn token_view(&self, now: Instant) -> TokenView {
        let st = self.state();
        let held = st.holding.is_some();
        let idle = if held {
            Some(Duration::ZERO)
        } else {
            st.ring.idle(now)
        };
        TokenView {
            at: Stamp {
                epoch: st.ring.highest_epoch(),
                seq: st.ring.last_seq(),
            },
            idle_ms: idle.map(|d| d.as_millis().min(u32::MAX as u128) as u32),
            held,
        }
    }

    async fn local_benefits(&self) -> Vec<(VmId, f64)> {
        let vms: Vec<VmId> = self.state().inventory.iter().map(|v| v.id).collect();
        let mut out = Vec::with_capacity(vms.len());
        let mut decider = Decider::new(&self.topo);
        for vm in vms {
            // Cached locations only: a statistics answer must be quick, and an estimate will do.
            let pt: Vec<PartnerTraffic> = self
                .cached_partners(vm)
                .into_iter()
                .map(|(_, host, rate)| PartnerTraffic { host, rate })
                .collect();
            let best = decider
                .candidates(self.me, &pt)
                .iter()
                .map(|c| c.benefit)
                .fold(0.0f64, f64::max);
            out.push((vm, best));
        }
        out
    }

    /// A peer's announcement (already applied to the directory).
    pub fn on_announcement(self: &Arc<Self>, from: HostId, a: Announcement) {
        let now = Instant::now();
        match a {
            Announcement::TokenSeen { at, round, .. } => {
                let mut st = self.state();
                st.ring.on_activity(at.epoch, at.seq, now);
                st.rounds_seen.entry(round).or_insert(now);
                while st.rounds_seen.len() > 8 {
                    st.rounds_seen.pop_first();
                }
            }
            Announcement::Migration(m) => {
                let Some(src) = self.topo.host_by_name(&m.from).map(|h| h.id) else {
                    return;
                };
                // The announcement carries no duration; the cooldown base covers it.
                self.state().history.record(m.vm, src, Duration::ZERO, now);
                if self
                    .topo
                    .host_by_name(&m.to)
                    .is_some_and(|h| h.id == self.me)
                {
                    // The VM runs here now: read it from the hypervisor rather than wait for
                    // the periodic refresh, so location answers and this host's decisions see
                    // it here at once (the directory ignores claims about its own VMs).
                    let node = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = node.refresh_inventory().await {
                            tracing::warn!(error = %e, "inventory after a VM migrated in");
                        }
                    });
                }
                tracing::debug!(from = %self.host_name(from), vm = %m.vm, to = %m.to, "peer migrated a VM");
            }
            Announcement::Inventory { .. } => {}
        }
    }

    // ----- the token -------------------------------------------------------------------------

    /// A peer hands us the token: fence, dedupe, acknowledge, and start working on it.
    pub fn on_token(self: &Arc<Self>, from: HostId, token: Token, reply: Responder<TokenAck>) {
        let now = Instant::now();
        let arrival = {
            let mut st = self.state();
            let a = st.ring.on_token(token.epoch, token.seq, now);
            if a == Arrival::Stale {
                let current = Stamp {
                    epoch: st.ring.highest_epoch(),
                    seq: st.ring.last_seq(),
                };
                drop(st);
                self.metrics.token.fenced.inc();
                tracing::warn!(from = %self.host_name(from), epoch = token.epoch, "stale token fenced off");
                reply.send(TokenAck::Fenced { current });
                return;
            }
            if a == Arrival::Fresh {
                st.holding = Some(Stamp {
                    epoch: token.epoch,
                    seq: token.seq,
                });
            }
            a
        };
        reply.send(TokenAck::Accepted);
        if arrival == Arrival::Fresh {
            self.metrics
                .token
                .epoch
                .set(ring::epoch_generation(token.epoch) as i64);
            let node = self.clone();
            tokio::spawn(async move { node.turn(token).await });
        }
    }

    /// Called on every tick while no token is held here: when the loss timeout (staggered by this
    /// host's place in the topology) has run out, checks that no lower host is alive to do it,
    /// then mints a new token. Returns the task to run, if any.
    pub fn loss_check(
        self: &Arc<Self>,
        now: Instant,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        {
            let mut st = self.state();
            if st.holding.is_some() || st.checking || st.stopping {
                return None;
            }
            if !st.ring.should_regenerate(self.timing_rank(), now) {
                return None;
            }
            st.checking = true;
        }
        let node = self.clone();
        Some(async move {
            if node.lower_host_alive().await {
                // Someone before us will (or did) regenerate: wait another period.
                let mut st = node.state();
                st.checking = false;
                st.ring.defer(Instant::now());
                return;
            }
            node.regenerate().await;
        })
    }

    /// Place in the regeneration order: hosts earlier in the topology file go first.
    fn timing_rank(&self) -> usize {
        self.me.index().min(32)
    }

    /// Whether any host before this one in the topology answers a (cheap, empty) location query.
    async fn lower_host_alive(&self) -> bool {
        let timeout = self.config().token.handoff_timeout() / 2;
        let lower: Vec<HostId> = (0..self.me.0).map(HostId).collect();
        let peers = self.peers.clone();
        let answers = futures::stream::iter(lower.into_iter().map(|h| {
            let peers = peers.clone();
            async move { peers.query_locations(h, Vec::new(), timeout).await.is_ok() }
        }))
        .buffer_unordered(crate::p2p::MAX_CONCURRENT_QUERIES);
        futures::pin_mut!(answers);
        while let Some(alive) = answers.next().await {
            if alive {
                return true;
            }
        }
        false
    }

    /// Asks every peer what it knows of the token and which VMs it runs; unless one of them heard
    /// of a live token recently, mints an epoch above every one reported, builds a fresh token from
    /// every host's inventory and works on it.
    ///
    /// Asking first matters most for a host that just (re)started: it has heard nothing yet, so
    /// its own loss detector fires although a token is alive, and the epoch it knows is 0.
    async fn regenerate(self: Arc<Self>) {
        let config = self.config();
        let (loss, _) = loss_timing(&config);
        let known = self.state().ring.highest_epoch();
        let req = StatsRequest {
            epoch: known,
            round: 0,
        };
        let mut vms: Vec<VmId> = self.state().inventory.iter().map(|v| v.id).collect();
        vms.extend(self.peers.directory().known_vms());
        let answers = self
            .peers
            .query_all_stats(req, config.token.handoff_timeout())
            .await;
        let now = Instant::now();
        let mut answered = 0;
        let mut live: Option<(HostId, TokenView)> = None;
        let epoch = {
            let mut st = self.state();
            st.checking = false;
            for (host, r) in &answers {
                let Ok(s) = r else { continue };
                answered += 1;
                vms.extend(s.benefits.iter().map(|b| b.vm));
                let view = s.token;
                if view.at.epoch == 0 {
                    continue;
                }
                let idle = Duration::from_millis(view.idle_ms.unwrap_or(u32::MAX).into());
                st.ring
                    .on_report(view.at.epoch, view.at.seq, now.checked_sub(idle));
                // Heard of within half the loss timeout: that token is alive, or was minted by a
                // peer a moment ago. Either way it is not ours to replace.
                if (view.held || idle < loss / 2) && view.at.epoch >= st.ring.highest_epoch() {
                    live = Some((*host, view));
                }
            }
            if live.is_some() || st.holding.is_some() || st.stopping {
                None
            } else {
                let epoch = st.ring.mint(self.me.0);
                st.ring.on_token(epoch, 0, now);
                st.holding = Some(Stamp { epoch, seq: 0 });
                Some(epoch)
            }
        };
        let Some(epoch) = epoch else {
            if let Some((host, view)) = live {
                self.metrics
                    .token
                    .epoch
                    .set(ring::epoch_generation(view.at.epoch) as i64);
                tracing::info!(
                    peer = %self.host_name(host),
                    epoch = view.at.epoch,
                    seq = view.at.seq,
                    idle_ms = view.idle_ms,
                    held = view.held,
                    "token not regenerated: a peer heard of a live token recently"
                );
            }
            return;
        };
        let token = Token::new(epoch, config.token.policy, vms);
        self.metrics.token.regenerations.inc();
        self.metrics
            .token
            .epoch
            .set(ring::epoch_generation(epoch) as i64);
        tracing::warn!(
            epoch,
            generation = ring::epoch_generation(epoch),
            slots = token.slots.len(),
            hosts_answered = answered,
            unix_ms = unix_ms(),
            policy = %token.policy,
            "token regenerated"
        );
        self.turn(token).await;
    }

    fn fenced(&self, token: &Token) -> bool {
        self.state().ring.highest_epoch() > token.epoch
    }

    /// Tells every host the token is alive here (and resets our own loss detector).
    async fn heartbeat(&self, at: Stamp, round: u32) {
        {
            let mut st = self.state();
            st.ring.touch(Instant::now());
            st.rounds_seen.entry(round).or_insert_with(Instant::now);
        }
        let a = Announcement::TokenSeen {
            host: self.name().to_string(),
            at,
            round,
        };
        if let Err(e) = self.peers.publish(a).await {
            tracing::debug!(error = %e, "token heartbeat not published");
        }
    }

    /// Works on the token until it is handed to another host, fenced, or this host stops. A
    /// companion task publishes the token's heartbeat the whole time, whatever the turn waits on
    /// (capacity answers, a long migration).
    pub async fn turn(self: Arc<Self>, token: Token) {
        self.metrics.token.held.set(1);
        let stamp = |t: &Token| {
            (
                Stamp {
                    epoch: t.epoch,
                    seq: t.seq,
                },
                t.round,
            )
        };
        let (beat_tx, mut beat_rx) = tokio::sync::watch::channel(stamp(&token));
        let beat = heartbeat_interval(&self.config());
        let node = self.clone();
        let beating = tokio::spawn(async move {
            loop {
                let (at, round) = *beat_rx.borrow_and_update();
                node.heartbeat(at, round).await;
                tokio::select! {
                    _ = tokio::time::sleep(beat) => {}
                    changed = beat_rx.changed() => if changed.is_err() { break },
                }
            }
        });
        let (token, result) = self.work(token, &beat_tx).await;
        drop(beat_tx);
        let _ = beating.await;
        self.metrics.token.held.set(0);
        let mut st = self.state();
        // A newer token may have arrived meanwhile; only clear what is ours.
        if st.holding.is_some_and(|h| h.epoch == token.epoch) {
            st.holding = None;
        }
        drop(st);
        if let Err(why) = result {
            tracing::warn!(
                epoch = token.epoch,
                "token dropped: {}",
                why.describe(&self.topo)
            );
        }
    }

    /// Carries out the turn machine's actions until the token is handed on or dropped.
    async fn work(
        self: &Arc<Self>,
        token: Token,
        beat: &tokio::sync::watch::Sender<(Stamp, u32)>,
    ) -> (Token, Result<(), DropReason>) {
        let config = self.config();
        let handoff = config.token.handoff_timeout();
        let pause = heartbeat_interval(&config);
        // Decide on what the hypervisor says runs here now, not on the last periodic read: a VM
        // that migrated in just before the token came would otherwise still be cached at its
        // old host, and its partners here would chase it there (a ping-pong across the rack that
        // round-robin's order, deciding for neighbouring ids turn after turn, ran into).
        if let Err(e) = self.read_inventory(false).await {
            tracing::warn!(error = %e, "inventory at token arrival; deciding on the last one read");
        }
        let (mut machine, mut action) =
            match TurnMachine::start(self.me, token.clone(), &self.known_vms()) {
                Ok(started) => started,
                Err(why) => return (token, Err(why)),
            };
        loop {
            if action.starts_step() {
                if self.fenced(machine.token()) {
                    return (machine.token().clone(), Err(DropReason::NewerEpoch));
                }
                beat.send_replace(machine.stamp());
            }
            let input = match action {
                Action::Done => return (machine.token().clone(), Ok(())),
                Action::Drop(why) => return (machine.token().clone(), Err(why)),
                Action::PaceRound(round) => {
                    self.pace_round(machine.token(), round).await;
                    Input::Paced {
                        known: self.known_vms(),
                    }
                }
                Action::Wait => {
                    tokio::time::sleep(pause).await;
                    Input::Waited {
                        known: self.known_vms(),
                    }
                }
                Action::GatherStatistics => {
                    let g = self.gather_statistics(machine.token(), handoff).await;
                    let vms = g.expected.len();
                    action = machine.on(Input::Statistics(g.expected));
                    // Logged once the round is ordered: the head of its schedule shows the order.
                    let token = machine.token();
                    let head: Vec<String> = token
                        .schedule
                        .iter()
                        .take(SCHEDULE_LOGGED)
                        .map(|v| v.to_string())
                        .collect();
                    tracing::info!(
                        epoch = token.epoch, round = token.round, hosts_asked = g.asked,
                        hosts_answered = g.answered, vms,
                        elapsed_ms = g.elapsed.as_secs_f64() * 1e3, schedule = %head.join(","),
                        "global policy: statistics gathered"
                    );
                    continue;
                }
                Action::Locate(vm) => {
                    let host = self.locate_one(vm, handoff).await;
                    // The slot's level and load: the keys the distributed and load-aware orders use.
                    let token = machine.token();
                    let slot = token.slot(vm).copied();
                    tracing::debug!(
                        vm = %vm, host = ?host.map(|h| self.host_name(h)), epoch = token.epoch,
                        seq = token.seq, round = token.round, slot_level = slot.map(|s| s.level),
                        slot_load = slot.map(|s| s.load), "token: next holder"
                    );
                    Input::Located {
                        host,
                        stopping: self.state().stopping,
                    }
                }
                Action::Decide(vm) => {
                    let neighbours = self.take_turn(vm, machine.token()).await;
                    tracing::debug!(vm = %vm, neighbours = neighbours.as_ref().map(|n| n.len()), "token: turn taken");
                    Input::Decided(neighbours.unwrap_or_default())
                }
                Action::HandTo(h) => {
                    let r = self.hand_to(h, machine.token(), handoff).await;
                    if matches!(r, Handoff::Skip { .. }) {
                        self.metrics.token.skipped_hosts.inc();
                    }
                    Input::Handed(r)
                }
                Action::Remint { host } => {
                    // The host may have taken it after all: fence that copy off.
                    let mut st = self.state();
                    let epoch = st.ring.mint(self.me.0);
                    st.ring.on_token(epoch, 0, Instant::now());
                    st.holding = Some(Stamp { epoch, seq: 0 });
                    drop(st);
                    tracing::warn!(
                        host = %self.host_name(host), epoch,
                        unix_ms = unix_ms(),
                        "ambiguous hand-off: token re-minted under a higher epoch"
                    );
                    Input::Reminted { epoch }
                }
            };
            action = machine.on(input);
        }
    }

    /// Every VM this host knows of: its own and those the directory learned from other hosts'
    /// inventories (the token gets a slot for each).
    fn known_vms(&self) -> Vec<VmId> {
        let mut vms: Vec<VmId> = self.state().inventory.iter().map(|v| v.id).collect();
        vms.extend(self.peers.directory().known_vms());
        vms
    }

    /// Waits at a pass boundary until the round took at least `min_round`, heartbeating.
    async fn pace_round(&self, token: &Token, round: u32) {
        let config = self.config();
        let min_round = config.token.min_round();
        let started = {
            let mut st = self.state();
            let prev = round.saturating_sub(1);
            let s = st.rounds_seen.get(&prev).copied();
            st.rounds_seen.entry(round).or_insert_with(Instant::now);
            s
        };
        let Some(started) = started else { return };
        let until = started + min_round;
        let beat = heartbeat_interval(&config);
        while Instant::now() < until {
            if self.fenced(token) {
                return;
            }
            tokio::time::sleep(beat.min(until.saturating_duration_since(Instant::now()))).await;
        }
        // The new round starts now, for everyone's pacing.
        self.state().rounds_seen.insert(round, Instant::now());
    }

    /// Global policy, at a round start: asks every other host for its VMs' expected benefits
    /// (one statistics request per host, in parallel) and orders the round by them. A host that
    /// does not answer in time leaves its VMs at the end of the round, by id: a slow peer must
    /// not stall the token.
    async fn gather_statistics(&self, token: &Token, timeout: Duration) -> Gathered {
        let started = Instant::now();
        let req = StatsRequest {
            epoch: token.epoch,
            round: token.round,
        };
        let mut expected = self.local_benefits().await;
        let answers = self.peers.query_all_stats(req, timeout).await;
        let asked = answers.len();
        let mut answered = 0usize;
        for (host, r) in answers {
            match r {
                Ok(s) => {
                    answered += 1;
                    expected.extend(s.benefits.into_iter().map(|b| (b.vm, b.benefit)));
                }
                Err(e) => {
                    tracing::info!(host = %self.host_name(host), error = %e, "global policy: no statistics")
                }
            }
        }
        let elapsed = started.elapsed();
        self.metrics
            .token
            .statistics_gather
            .observe(elapsed.as_secs_f64());
        Gathered {
            expected,
            asked,
            answered,
            elapsed,
        }
    }

    async fn locate_one(&self, vm: VmId, timeout: Duration) -> Option<HostId> {
        if self.state().inventory.iter().any(|v| v.id == vm) {
            return Some(self.me);
        }
        let options = LocateOptions {
            timeout,
            ..LocateOptions::default()
        };
        self.peers
            .locate(&[vm], options)
            .await
            .found
            .get(&vm)
            .copied()
    }

    async fn hand_to(&self, host: HostId, token: &Token, timeout: Duration) -> Handoff {
        let mut ambiguous = false;
        for attempt in 1..=HANDOFF_ATTEMPTS {
            let started = Instant::now();
            match self.peers.send_token(host, token.clone(), timeout).await {
                Ok(TokenAck::Accepted) => {
                    self.metrics
                        .token
                        .handoff_latency
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.token.passes.inc();
                    let mut st = self.state();
                    if st.holding.is_some_and(|h| h.epoch == token.epoch) {
                        st.holding = None;
                    }
                    return Handoff::Done;
                }
                Ok(TokenAck::Fenced { current }) => {
                    let mut st = self.state();
                    st.ring
                        .on_activity(current.epoch, current.seq, Instant::now());
                    self.metrics.token.fenced.inc();
                    return Handoff::Fenced;
                }
                Ok(TokenAck::Declined { reason }) => {
                    tracing::warn!(host = %self.host_name(host), %reason, "token declined; skipping host");
                    return Handoff::Skip { ambiguous: false };
                }
                Err(PeerError::Timeout { .. }) => {
                    ambiguous = true;
                    tracing::warn!(host = %self.host_name(host), attempt, "token hand-off timed out");
                }
                Err(e) => {
                    tracing::warn!(host = %self.host_name(host), attempt, error = %e, "token hand-off failed");
                    if !ambiguous && attempt == HANDOFF_ATTEMPTS {
                        return Handoff::Skip { ambiguous: false };
                    }
                    tokio::time::sleep(timeout / 10).await;
                }
            }
        }
        tracing::warn!(host = %self.host_name(host), "host skipped: the token could not be handed to it");
        Handoff::Skip { ambiguous }
    }

    // ----- one VM's turn ---------------------------------------------------------------------

    /// Partners of `vm` with their hosts as the directory has them now, without asking any peer
    /// (statistics, metrics, `scored status`: observers must not send the cluster queries).
    pub fn cached_partners(&self, vm: VmId) -> Vec<(VmId, HostId, f64)> {
        let dir = self.peers.directory();
        self.traffic()
            .source()
            .partners(vm)
            .into_iter()
            .filter(|(p, r)| *p != vm && *r > 0.0)
            .filter_map(|(p, rate)| dir.lookup(p).map(|host| (p, host, rate)))
            .collect()
    }

    /// Partners of `vm` with their hosts and rates (those whose host is unknown are left out).
    pub async fn partners(&self, vm: VmId, verify: bool) -> Vec<(VmId, HostId, f64)> {
        self.locate_partners(vm, verify).await.0
    }

    /// Partners with their hosts, and how many partners could not be placed because a lookup
    /// failed (as opposed to no host running them, e.g. a partner outside the data centre).
    async fn locate_partners(&self, vm: VmId, verify: bool) -> (Vec<(VmId, HostId, f64)>, usize) {
        let rates: Vec<(VmId, f64)> = self
            .traffic()
            .source()
            .partners(vm)
            .into_iter()
            .filter(|(p, r)| *p != vm && *r > 0.0)
            .collect();
        if rates.is_empty() {
            return (Vec::new(), 0);
        }
        let ids: Vec<VmId> = rates.iter().map(|(p, _)| *p).collect();
        let options = LocateOptions {
            timeout: self.config().token.handoff_timeout(),
            verify,
            ..LocateOptions::default()
        };
        let located = self.peers.locate(&ids, options).await;
        // `missing` mixes VMs no host runs with VMs whose host did not answer: when any query
        // failed, every partner not found counts as unplaced (defer rather than guess).
        let unplaced = if located.failures.is_empty() {
            0
        } else {
            ids.len() - located.found.len()
        };
        let found = located.found;
        (
            rates
                .into_iter()
                .filter_map(|(p, r)| found.get(&p).map(|h| (p, *h, r)))
                .collect(),
            unplaced,
        )
    }

    fn pinned(&self, vm: &Vm, config: &Config) -> bool {
        vm.pinned
            || self.state().pinned.contains(&vm.id)
            || config.placement.pinned.iter().any(|r| match r {
                VmRef::Id(id) => *id == vm.id,
                VmRef::Name(n) => *n == vm.name,
            })
    }

    /// Decides for one local VM now: the full S-CORE decision with capacity queries, and the
    /// daemon's own gates (cooldown, unsettled migration). Moves nothing.
    pub async fn assess(&self, vm: &Vm) -> Assessment {
        let config = self.config();
        let now = Instant::now();
        let cooldown = CooldownPolicy {
            base: Duration::from_secs(config.decision.cooldown_base_s),
            cap: Duration::from_secs(config.decision.cooldown_max_s),
            window: Duration::from_secs(config.decision.cooldown_window_s),
        };
        let history_policy = CooldownPolicy {
            window: Duration::from_secs(config.decision.history_s),
            ..cooldown
        };
        let (cooling, previous, unsettled) = {
            let st = self.state();
            let mut prev = st.history.left_recently(vm.id, &history_policy, now);
            prev.truncate(config.decision.history_hosts as usize);
            (
                st.history.cooldown_until(vm.id, &cooldown, now),
                prev,
                st.unsettled.contains(&vm.id) || st.journal.is_open(vm.id),
            )
        };
        // Cached locations (kept right by migration announcements, refreshed on a miss): a
        // stale one costs a suboptimal move at worst, while a verified lookup under load
        // drops exactly the partners whose hosts answer slowly.
        let (partners, unplaced) = self.locate_partners(vm.id, false).await;
        let pt: Vec<PartnerTraffic> = partners
            .iter()
            .map(|&(_, host, rate)| PartnerTraffic { host, rate })
            .collect();
        let current = cost::vm_cost(&self.topo, self.me, &pt);
        let early = |outcome, detail: String| Assessment {
            outcome,
            decision: None,
            partners: partners.clone(),
            detail,
        };
        if unsettled {
            return early(
                TurnOutcome::Busy,
                "a migration of this VM is not settled".into(),
            );
        }
        if unplaced > 0 {
            // Deciding without a partner's location could move the VM away from it.
            return early(
                TurnOutcome::Busy,
                format!(
                    "{unplaced} partner(s) could not be located (hosts not answering); deferred"
                ),
            );
        }
        if let Some(until) = cooling {
            let left = until.saturating_duration_since(now).as_secs();
            return early(
                TurnOutcome::Cooldown,
                format!("cooling down for {left} s more"),
            );
        }
        let gates = Gates {
            pinned: self.pinned(vm, &config),
            migration_cost: config.decision.effective_migration_cost(current),
            maintenance: &[],
            previous_hosts: &previous,
            return_margin: config.decision.return_margin_fraction,
            rack_alternates: if config.decision.rack_fallback { 3 } else { 0 },
        };
        let subject = Subject {
            vm: vm.id,
            host: self.me,
            memory_mib: vm.memory_mib,
            partners: &pt,
        };
        let mut decider = Decider::new(&self.topo);
        let mut search = decider.search(&subject, &gates);
        let req = CapacityRequest {
            memory_mib: vm.memory_mib,
        };
        let timeout = config.token.handoff_timeout();
        let max = config.decision.max_candidates as usize;
        // Ask the first candidates all at once: the search consumes the answers in its own
        // order, so the result is the same as asking one by one, in one round trip instead of
        // several. Hosts that join later (rack alternates) are asked when the search needs them.
        let first: Vec<HostId> = search.queue().iter().take(max).map(|c| c.host).collect();
        let mut answers = self.peers.query_capacities(&first, req, timeout).await;
        // Hosts whose answer timed out are asked once more, together, as a hand-off is retried:
        // on a loaded machine one request can go unanswered for the whole timeout and the next
        // pass at once, and a missed best move costs a round or more. At most one more timeout;
        // refusals and unreachable hosts are final.
        let timed_out: Vec<HostId> = answers
            .iter()
            .filter(|(_, r)| matches!(r, Err(PeerError::Timeout { .. })))
            .map(|(h, _)| *h)
            .collect();
        if !timed_out.is_empty() {
            tracing::debug!(
                hosts = timed_out.len(),
                "capacity requests timed out; asking once more"
            );
            answers.retain(|(_, r)| !matches!(r, Err(PeerError::Timeout { .. })));
            answers.extend(self.peers.query_capacities(&timed_out, req, timeout).await);
        }
        let mut known: HashMap<HostId, Option<Capacity>> = answers
            .into_iter()
            .map(|(h, r)| (h, self.capacity_answer(h, r)))
            .collect();
        let mut asked = 0;
        while let Some(h) = search.next_query() {
            if asked >= max {
                break;
            }
            asked += 1;
            let cap = match known.remove(&h) {
                Some(c) => c,
                None => {
                    let r = self.peers.query_capacity(h, req, timeout).await;
                    self.capacity_answer(h, r)
                }
            };
            search.answer(h, cap.as_ref());
        }
        let d = search.finish();
        let outcome = TurnOutcome::of(&d.outcome, config.decision.dry_run);
        let detail = format!(
            "asked {} host(s): {} full, {} no answer; {} excluded as a recent host",
            d.queries, d.full, d.unreachable, d.returning
        );
        Assessment {
            outcome,
            decision: Some(d),
            partners,
            detail,
        }
    }

    fn capacity_answer(
        &self,
        h: HostId,
        r: Result<CapacityResponse, PeerError>,
    ) -> Option<Capacity> {
        match r {
            Ok(r) => Some(capacity_of(self.topo.host(h), &r)),
            Err(e) => {
                tracing::debug!(host = %self.host_name(h), error = %e, "no capacity answer");
                None
            }
        }
    }

    /// The record of an assessment, as logged, kept for `scored status` and shown by `plan`.
    fn decision_record(
        &self,
        vm: VmId,
        a: &Assessment,
        to: Option<HostId>,
        at: Stamp,
        started_unix_ms: u64,
    ) -> DecisionRecord {
        let d = a.decision.as_ref();
        DecisionRecord {
            started_unix_ms,
            unix_ms: unix_ms(),
            vm: vm.to_string(),
            outcome: a.outcome.name().to_string(),
            current_cost: d.map(|d| d.current_cost).unwrap_or(0.0),
            migration_cost: d.map(|d| d.migration_cost).unwrap_or(0.0),
            best_host: d.and_then(|d| d.best).map(|c| self.host_name(c.host)),
            best_benefit: d.and_then(|d| d.best).map(|c| c.benefit),
            to: to.map(|h| self.host_name(h)),
            partners: a.partners.len(),
            detail: a.detail.clone(),
            epoch: at.epoch,
            seq: at.seq,
        }
    }

    fn record(
        &self,
        vm: VmId,
        a: &Assessment,
        to: Option<HostId>,
        token: &Token,
        started_unix_ms: u64,
    ) {
        let at = Stamp {
            epoch: token.epoch,
            seq: token.seq,
        };
        let rec = self.decision_record(vm, a, to, at, started_unix_ms);
        tracing::info!(
            vm = %rec.vm, outcome = %rec.outcome, started_unix_ms = rec.started_unix_ms,
            unix_ms = rec.unix_ms, epoch = rec.epoch, seq = rec.seq, round = token.round,
            current_cost = rec.current_cost,
            c_m = rec.migration_cost, best_host = ?rec.best_host, benefit = ?rec.best_benefit,
            to = ?rec.to, partners = rec.partners, detail = %rec.detail, "decision"
        );
        let mut st = self.state();
        st.recent.push_back(rec);
        while st.recent.len() > RECENT_DECISIONS {
            st.recent.pop_front();
        }
    }

    /// The holder's turn for local VM `vm`: decide, maybe migrate, and report the neighbours the
    /// token's levels are updated from.
    async fn take_turn(self: &Arc<Self>, vm: VmId, token: &Token) -> Option<Vec<Neighbour>> {
        let v = self.local_vm(vm)?;
        let started = Instant::now();
        let started_unix_ms = unix_ms();
        // The hypervisor has the last word on whether this VM can be decided for now: a cached
        // inventory must not drive a decision (or a migration) it cannot carry out.
        let early = match self.hv_call("VM state", move |hv| hv.state(vm)).await {
            Ok(VmState::Running) => None,
            Ok(VmState::Migrating) => Some((
                TurnOutcome::Busy,
                "the hypervisor runs a migration job of this VM; not deciding for it".to_string(),
            )),
            Ok(VmState::Absent) | Err(HypervisorError::NoSuchVm { .. }) => {
                // It left by other means (an operator's migration): no turn for it here.
                let _ = self.refresh_inventory().await;
                return None;
            }
            Err(e) if e.is_unavailable() => Some((
                TurnOutcome::HypervisorDown,
                format!("hypervisor not answering: {e}"),
            )),
            Err(e) => Some((
                TurnOutcome::Busy,
                format!("the VM's state cannot be read: {e}"),
            )),
        };
        if let Some((outcome, detail)) = early {
            let a = Assessment {
                outcome,
                decision: None,
                partners: self.cached_partners(vm),
                detail,
            };
            self.metrics.decided(a.outcome, started.elapsed());
            self.record(vm, &a, None, token, started_unix_ms);
            return Some(self.neighbours(self.me, &a.partners));
        }
        let draining = self.state().draining;
        let mut a = self.assess(&v).await;
        let mut to = a.decision.as_ref().and_then(|d| d.migrates_to());
        if draining && to.is_none() && !self.pinned(&v, &self.config()) {
            to = self.drain_target(&v).await;
            if to.is_some() {
                a.outcome = TurnOutcome::Migrated;
                a.detail = format!("draining: {}", a.detail);
            }
        }
        // From here to the job starting is a target of its own (≤ 100 ms, docs/evaluation.md).
        let decided = Instant::now();
        let mut at = self.me;
        if a.outcome == TurnOutcome::Migrated
            && let Some(dest) = to
        {
            if self.fenced(token) {
                return None;
            }
            match self.migrate(&v, dest, token, decided).await {
                Ok(report) => {
                    at = dest;
                    a.detail = format!(
                        "{}; migrated in {:.2} s, downtime {} ms, {} MiB",
                        a.detail,
                        report.elapsed.as_secs_f64(),
                        report.downtime.as_millis(),
                        report.bytes / (1024 * 1024)
                    );
                }
                Err(e) => {
                    a.outcome = if e.hung() {
                        TurnOutcome::HypervisorDown
                    } else {
                        TurnOutcome::Failed
                    };
                    a.detail = format!("{}; migration failed: {e}", a.detail);
                }
            }
        }
        self.metrics.decided(a.outcome, started.elapsed());
        self.record(vm, &a, to, token, started_unix_ms);
        Some(self.neighbours(at, &a.partners))
    }

    /// The token's view of a VM at `at` with these partners.
    fn neighbours(&self, at: HostId, partners: &[(VmId, HostId, f64)]) -> Vec<Neighbour> {
        partners
            .iter()
            .map(|&(p, h, rate)| Neighbour {
                vm: p,
                level: self.topo.level(at, h),
                rate,
            })
            .collect()
    }

    /// Draining: the best-connected host that accepts the VM, whatever Eq. 3.2 says.
    async fn drain_target(&self, vm: &Vm) -> Option<HostId> {
        let partners = self.partners(vm.id, false).await;
        let pt: Vec<PartnerTraffic> = partners
            .iter()
            .map(|&(_, host, rate)| PartnerTraffic { host, rate })
            .collect();
        let mut hosts: Vec<HostId> = self.peers.others();
        hosts.sort_by(|a, b| {
            cost::vm_cost(&self.topo, *a, &pt)
                .total_cmp(&cost::vm_cost(&self.topo, *b, &pt))
                .then(
                    self.topo
                        .level(self.me, *a)
                        .cmp(&self.topo.level(self.me, *b)),
                )
        });
        let req = CapacityRequest {
            memory_mib: vm.memory_mib,
        };
        let timeout = self.config().token.handoff_timeout();
        for h in hosts {
            if let Ok(r) = self.peers.query_capacity(h, req, timeout).await
                && r.accepts
            {
                return Some(h);
            }
        }
        None
    }

    /// Live-migrates `vm` to `to`: journal first, the blocking call off the event loop with the
    /// token's heartbeat going on, then history, announcement and inventory.
    async fn migrate(
        self: &Arc<Self>,
        vm: &Vm,
        to: HostId,
        token: &Token,
        decided: Instant,
    ) -> Result<MigrationReport, MigrateError> {
        let config = self.config();
        let dest_host = self.topo.host(to);
        let dest = Destination {
            host: dest_host.name.clone(),
            libvirt_uri: dest_host.libvirt_uri.clone(),
            migration_uri: dest_host.migration_uri.clone(),
        };
        let entry = {
            let mut st = self.state();
            st.journal.begin(
                vm.id,
                self.name(),
                &dest.host,
                token.epoch,
                token.seq,
                unix_ms(),
            )?
        };
        self.metrics.migrations.started.inc();
        // Gauges are handles: clone out of the family so no lock guard lives across an await.
        let out_gauge = self
            .metrics
            .migrations
            .in_flight
            .get_or_create(&metrics::DirectionLabels {
                direction: metrics::MigrationDirection::Outgoing,
            })
            .clone();
        out_gauge.inc();
        tracing::info!(vm = %vm.id, name = %vm.name, to = %dest.host, journal = entry.id, since_decision_us = decided.elapsed().as_micros() as u64, "migration starting");
        let params = config.migration.params();
        // The hypervisor's own watchdog ends the job by `timeout`; past that and one more call
        // timeout, the call itself hangs (seen: libvirt's Perform waiting on a migration stream
        // whose network path had died) and must not keep the token.
        let within = params.timeout + config.hypervisor.call_timeout();
        let (id, d) = (vm.id, dest.clone());
        let result = self
            .hv_call_within("migration", within, move |hv| hv.migrate(id, &d, &params))
            .await;
        out_gauge.dec();
        match result {
            Ok(report) => {
                {
                    let mut st = self.state();
                    let _ = st.journal.end(entry.id, journal::Ending::Succeeded);
                    st.history
                        .record(vm.id, self.me, report.elapsed, Instant::now());
                    st.migrations_done += 1;
                }
                let m = &self.metrics.migrations;
                m.succeeded.inc();
                m.duration.observe(report.elapsed.as_secs_f64());
                m.downtime.observe(report.downtime.as_secs_f64());
                m.transferred.observe(report.bytes as f64);
                tracing::info!(vm = %vm.id, to = %dest.host, elapsed_s = report.elapsed.as_secs_f64(), downtime_ms = report.downtime.as_millis() as u64, bytes = report.bytes, "migration succeeded");
                let at = Stamp {
                    epoch: token.epoch,
                    seq: token.seq,
                };
                if let Err(e) = self.peers.announce_migration(vm.id, to, at).await {
                    tracing::warn!(error = %e, "migration announcement not published");
                }
                if let Err(e) = self.refresh_inventory().await {
                    tracing::warn!(error = %e, "inventory after migration");
                }
                Ok(report)
            }
            Err(e @ HypervisorError::NoAnswer { .. }) => {
                // Neither failed nor done: the journal entry stays open and the VM unsettled
                // (no decision for it, asked about on every inventory refresh) until the
                // hypervisor says how the job ended, as after a crash.
                self.state().unsettled.insert(vm.id);
                tracing::error!(vm = %vm.id, to = %dest.host, journal = entry.id, error = %e, "migration call hangs: the token moves on; the VM stays unsettled until the hypervisor says how the job ended");
                Err(MigrateError::Hypervisor(e))
            }
            Err(e) => {
                let outcome = match &e {
                    HypervisorError::Aborted { reason, .. } => {
                        self.metrics
                            .migrations
                            .aborted
                            .get_or_create(&metrics::ReasonLabels { reason: *reason })
                            .inc();
                        journal::Ending::Aborted {
                            reason: reason.to_string(),
                        }
                    }
                    other => {
                        self.metrics.migrations.failed.inc();
                        journal::Ending::Failed {
                            reason: other.to_string(),
                        }
                    }
                };
                let _ = self.state().journal.end(entry.id, outcome);
                tracing::warn!(vm = %vm.id, to = %dest.host, error = %e, "migration failed; the VM stays here");
                let _ = self.refresh_inventory().await;
                Err(MigrateError::Hypervisor(e))
            }
        }
    }

    /// What this host would do for each local VM now (dry-run; `scored plan`).
    pub async fn plan(&self) -> Vec<DecisionRecord> {
        let vms = self.state().inventory.clone();
        let mut out = Vec::with_capacity(vms.len());
        let stamp = self.state().holding.unwrap_or_default();
        for v in vms {
            let started_unix_ms = unix_ms();
            let mut a = self.assess(&v).await;
            if a.outcome == TurnOutcome::Migrated {
                a.outcome = TurnOutcome::DryRun;
            }
            let to = a.decision.as_ref().and_then(|d| d.migrates_to());
            out.push(self.decision_record(v.id, &a, to, stamp, started_unix_ms));
        }
        out
    }

    /// This host's share of Eq. 3.1 by level, from current rates and cached locations.
    pub fn cost_by_level(&self) -> (Vec<f64>, Vec<f64>) {
        let levels = self.topo.levels() as usize;
        let mut cost = vec![0.0; levels];
        let mut traffic = vec![0.0; levels];
        let vms: Vec<VmId> = self.state().inventory.iter().map(|v| v.id).collect();
        for vm in vms {
            for (_, h, rate) in self.cached_partners(vm) {
                let l = self.topo.level(self.me, h) as usize;
                if l > 0 {
                    cost[l - 1] += rate * self.topo.weights().path_cost(l as u8);
                    traffic[l - 1] += rate;
                }
            }
        }
        (cost, traffic)
    }
}

/// Why a migration this host started did not go through.
#[derive(Debug, thiserror::Error)]
enum MigrateError {
    /// The journal could not record it: nothing was started.
    #[error("journal: {0}")]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
}

impl MigrateError {
    /// The call did not return in time (the job may still run): not a failed migration.
    fn hung(&self) -> bool {
        matches!(
            self,
            MigrateError::Hypervisor(HypervisorError::NoAnswer { .. })
        )
    }
}

/// The statistics of a global round's start, and how the asking went.
struct Gathered {
    expected: Vec<(VmId, f64)>,
    asked: usize,
    answered: usize,
    elapsed: Duration,
}

/// A capacity answer as the decision reads it: a host that does not accept (maintenance,
/// or too little room) reads as full.
fn capacity_of(host: &crate::topology::Host, r: &CapacityResponse) -> Capacity {
    let running = if r.accepts {
        host.max_vms
            .saturating_sub(r.free_slots)
            .saturating_sub(r.incoming_migrations)
    } else {
        host.max_vms
    };
    Capacity {
        running_vms: running,
        incoming_migrations: r.incoming_migrations,
        free_memory_mib: r.free_memory_mib.saturating_add(host.reserve_memory_mib),
        total_memory_mib: host.memory_mib,
        cpu_load: r.cpu_load,
    }
}
