//! One host's daemon: the rooms it is made of, how it is built, and what the rest of the crate
//! and the tests may read of it. Each room owns its state behind its own short lock (never held
//! across an `.await`); the rooms' behaviour lives in their own files as `impl Daemon` blocks.
//!
//! Generic over the transport ([`Peers`]): the same code runs over libp2p between real hosts and
//! over direct calls in the in-process tests. Nothing here sends, decides or migrates.

use super::commands::{Command, CommandSender};
use super::hypervisor_calls::HypervisorCalls;
use super::inventory::Inventory;
use super::journal::Journal;
use super::ledger::Ledger;
use super::operator::Operator;
use super::records::{DecisionRecord, Decisions};
use super::rules::PlacementRules;
use super::tasks::Tasks;
use super::token_watch::TokenWatch;
use super::traffic::Traffic;

use crate::config::Config;
use crate::hypervisor::{Hypervisor, Vm};
use crate::metrics::Metrics;
use crate::p2p::Peers;
use crate::topology::{HostId, Topology};
use scored_proto::{Stamp, VmId};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Control commands waiting for the event loop.
const COMMAND_QUEUE: usize = 16;

/// Everything one daemon owns.
pub struct Daemon<P: Peers> {
    pub(super) topo: Arc<Topology>,
    pub(super) me: HostId,
    pub(super) peers: Arc<P>,
    pub(super) metrics: Arc<Metrics>,
    config: RwLock<Config>,
    traffic: Mutex<Traffic>,
    pub(super) hv: HypervisorCalls,
    pub(super) inventory: Inventory,
    ledger: Mutex<Ledger>,
    watch: Mutex<TokenWatch>,
    operator: Mutex<Operator>,
    decisions: Mutex<Decisions>,
    /// The placement rules in force (`rules`).
    pub(super) rules: Mutex<PlacementRules>,
    pub(super) tasks: Tasks,
    commands: CommandSender,
    /// Taken by the event loop when it starts: it alone answers control commands.
    command_queue: Mutex<Option<mpsc::Receiver<Command>>>,
    /// One settlement pass at a time (the inventory task and a direct refresh may overlap).
    pub(super) settling: tokio::sync::Mutex<()>,
    /// The inventory last announced and the zombies last reported (`zombies`).
    pub(super) zombie_watch: Mutex<super::zombies::ZombieWatch>,
    /// The placement rules in force; the destination's re-check (`group_members`).
    pub(super) placement: super::group_members::Placement,
}

/// What a [`Daemon`] is built from.
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

/// Locks a room, whatever a panicking holder left (each room's state stays consistent between
/// statements: no invariant spans a panic).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn unix_ms() -> u64 {
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

impl<P: Peers> Daemon<P> {
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
        metrics
            .journal_torn_records
            .inc_by(journal.repairs().len() as u64);
        for reason in super::ring::EpochRejected::REASONS {
            // The series exist from the start, like every other reason's.
            let _ = metrics
                .peers
                .rejected
                .get_or_create(&vec![("reason".to_string(), reason.to_string())]);
        }
        let minters = topo.hosts().len() as u32;
        let maintenance = config.placement.maintenance;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let ledger = Ledger::new(journal, topo.clone());
        Daemon {
            topo,
            me,
            peers,
            hv: HypervisorCalls::new(hv, metrics.clone()),
            metrics,
            config: RwLock::new(config),
            traffic: Mutex::new(traffic),
            inventory: Inventory::default(),
            ledger: Mutex::new(ledger),
            watch: Mutex::new(TokenWatch::new(loss, stagger, minters)),
            operator: Mutex::new(Operator::new(maintenance)),
            decisions: Mutex::new(Decisions::default()),
            rules: Mutex::default(),
            tasks: Tasks::new(),
            commands: CommandSender::new(tx),
            command_queue: Mutex::new(Some(rx)),
            settling: tokio::sync::Mutex::new(()),
            zombie_watch: Mutex::default(),
            placement: Default::default(),
        }
    }

    /// A copy of the configuration as it stands (it changes on reload).
    pub fn config(&self) -> Config {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts a configuration in force (live options take effect at their next use).
    pub fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Puts a reloaded configuration in force: as [`Self::set_config`], and the maintenance
    /// switch follows the file only where the file changed it (what `scored drain` or
    /// `scored maintenance` set survives a reload of an unchanged file).
    pub fn reload_config(&self, config: Config) {
        let maintenance = config.placement.maintenance;
        self.set_config(config);
        self.operator().follow_configuration(maintenance);
    }

    pub fn name(&self) -> &str {
        &self.topo.host(self.me).name
    }

    pub(super) fn host_name(&self, h: HostId) -> String {
        self.topo.host(h).name.clone()
    }

    pub fn me(&self) -> HostId {
        self.me
    }

    pub fn topology(&self) -> &Arc<Topology> {
        &self.topo
    }

    pub fn peers(&self) -> &Arc<P> {
        &self.peers
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The flow source (tests move a synthetic feed's clock through it).
    pub fn traffic(&self) -> MutexGuard<'_, Traffic> {
        lock(&self.traffic)
    }

    /// The local VMs as last read from the hypervisor.
    pub fn inventory(&self) -> Vec<Vm> {
        self.inventory.vms()
    }

    /// What this host knows of the token: the ring (fencing, loss), the stamp it holds, rounds.
    pub fn token_watch(&self) -> MutexGuard<'_, TokenWatch> {
        lock(&self.watch)
    }

    /// The stamp of the token this host works on, if it holds one.
    pub fn holding(&self) -> Option<Stamp> {
        self.token_watch().holding()
    }

    /// The stamp of the token this host may act on ([`TokenWatch::acting`]).
    pub fn acting(&self) -> Option<Stamp> {
        self.token_watch().acting()
    }

    /// The highest epoch this host has seen.
    pub fn highest_epoch(&self) -> u64 {
        self.token_watch().ring().highest_epoch()
    }

    /// The latest decisions, oldest first, as `scored status` shows them.
    pub fn recent_decisions(&self) -> Vec<DecisionRecord> {
        lock(&self.decisions).recent()
    }

    /// Whether a migration of `vm` is left open and not settled yet.
    pub fn is_unsettled(&self, vm: VmId) -> bool {
        self.ledger().is_unsettled(vm)
    }

    /// Whether the journal holds an open entry for `vm`.
    pub fn journal_is_open(&self, vm: VmId) -> bool {
        self.ledger().journal_is_open(vm)
    }

    /// Where control requests go: the event loop that owns the state answers them.
    pub fn commands(&self) -> CommandSender {
        self.commands.clone()
    }

    pub(super) fn take_command_queue(&self) -> Option<mpsc::Receiver<Command>> {
        lock(&self.command_queue).take()
    }

    pub(super) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        lock(&self.ledger)
    }

    pub(super) fn operator(&self) -> MutexGuard<'_, Operator> {
        lock(&self.operator)
    }

    pub(super) fn decisions(&self) -> MutexGuard<'_, Decisions> {
        lock(&self.decisions)
    }

    /// Shutting down: hand the token on, start nothing new.
    pub(super) fn stopping(&self) -> bool {
        self.tasks.stopping()
    }
}
