//! What the operator switched at run time: maintenance, draining and VMs pinned with
//! `scored pin` (the configuration's pins are read from the configuration). Changed only by
//! control commands and configuration reloads; read by the capacity answer and the turn.

use scored_proto::VmId;
use std::collections::HashSet;

pub(super) struct Operator {
    maintenance: bool,
    /// `scored drain`: move every local VM away, one per token visit.
    draining: bool,
    pinned: HashSet<VmId>,
}

impl Operator {
    pub(super) fn new(maintenance: bool) -> Self {
        Operator {
            maintenance,
            draining: false,
            pinned: HashSet::new(),
        }
    }

    pub(super) fn maintenance(&self) -> bool {
        self.maintenance
    }

    pub(super) fn draining(&self) -> bool {
        self.draining
    }

    pub(super) fn pinned(&self, vm: VmId) -> bool {
        self.pinned.contains(&vm)
    }

    /// Maintenance on or off; off also ends a drain.
    pub(super) fn set_maintenance(&mut self, on: bool) {
        self.maintenance = on;
        if !on {
            self.draining = false;
        }
    }

    /// The configuration's maintenance switch, at a reload.
    pub(super) fn follow_configuration(&mut self, maintenance: bool) {
        self.maintenance = maintenance;
    }

    /// Maintenance on, and every VM moved away one per token visit.
    pub(super) fn drain(&mut self) {
        self.maintenance = true;
        self.draining = true;
    }

    pub(super) fn pin(&mut self, vm: VmId, on: bool) {
        if on {
            self.pinned.insert(vm);
        } else {
            self.pinned.remove(&vm);
        }
    }
}
