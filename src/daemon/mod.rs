//! The daemon: one per hypervisor. Owns the local VM inventory, the flow table, the topology and
//! the token while it is held; decides for local VMs with the shared policy/decision/cost code and
//! migrates through the hypervisor. Never blocks its event loop on libvirt or capture.

pub mod control;
pub mod history;
pub mod journal;
pub mod node;
pub mod ring;
pub mod run;
pub mod turn;
