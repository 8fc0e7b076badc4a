//! The daemon: one per hypervisor. Owns the local VM inventory, the flow table, the topology and
//! the token while it is held; decides for local VMs with the shared policy/decision/cost code and
//! migrates through the hypervisor. Never blocks its event loop on libvirt or capture.
//!
//! Rooms, each owning its state (docs/architecture.md, "The daemon's turn"): `host` (the daemon
//! and its parts), `hypervisor_calls`, `inventory`, `ledger` (journal, settlement, history),
//! `answers` (to peers), `group_members` (what is known of placement groups; the destination's
//! re-check), `token_watch` and `regeneration` (token loss), `turn_loop` (drives the
//! token's walk, the pure machine in `token::walk`), `vm_turn` and `assess` (one VM),
//! `migration`, `rules` (the placement rules in force) and `moves` (the budgets' count),
//! `operator`, `records`, `commands` and `control` (the control socket), `tasks`
//! (the owner of every task), `event_loop` and `run` (wiring).

mod answers;
mod assess;
pub mod commands;
pub mod control;
pub mod event_loop;
mod group_log;
mod group_members;
mod group_moves;
mod group_plan;
pub mod history;
pub mod host;
mod hypervisor_calls;
mod inventory;
pub mod journal;
mod ledger;
mod migration;
mod moves;
mod operator;
pub mod records;
mod regeneration;
pub mod ring;
mod rules;
pub mod run;
mod tasks;
pub mod token_watch;
pub mod traffic;
mod turn_loop;
mod vm_turn;
pub mod zombies;

pub use assess::Assessment;
pub use group_moves::Carried;
pub use host::{Daemon, Parts, heartbeat_interval, loss_timing};
pub use hypervisor_calls::Outage;
