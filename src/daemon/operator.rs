//! What the operator switched at run time: maintenance, draining and VMs pinned with
//! `scored pin` (the configuration's pins are read from the configuration). Changed only by
//! control commands and configuration reloads; read by the capacity answer and the turn.
//!
//! The newer act wins: a reload changes the maintenance switch only when the file's
//! `placement.maintenance` changed since it was last read; a reload of an unchanged file leaves
//! what `scored drain` / `scored maintenance` set.

use scored_proto::VmId;
use std::collections::HashSet;

pub(super) struct Operator {
    maintenance: bool,
    /// `scored drain`: move every local VM away, one per token visit.
    draining: bool,
    /// `placement.maintenance` as the file said when last read (start or reload).
    configured: bool,
    pinned: HashSet<VmId>,
}

impl Operator {
    pub(super) fn new(maintenance: bool) -> Self {
        Operator {
            maintenance,
            draining: false,
            configured: maintenance,
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

    /// The configuration's maintenance switch, at a reload: put in force only if the file
    /// changed it (then as `scored maintenance`: off also ends a drain).
    pub(super) fn follow_configuration(&mut self, maintenance: bool) {
        if maintenance != self.configured {
            self.configured = maintenance;
            self.set_maintenance(maintenance);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_changes_maintenance_only_when_the_file_did() {
        let mut op = Operator::new(false);
        op.drain();
        op.follow_configuration(false);
        assert!(
            op.maintenance() && op.draining(),
            "unchanged file undid the drain"
        );
        op.follow_configuration(true);
        assert!(op.maintenance() && op.draining());
        op.follow_configuration(false);
        assert!(
            !op.maintenance() && !op.draining(),
            "the file's newer off wins"
        );

        let mut op = Operator::new(true);
        op.set_maintenance(false);
        op.follow_configuration(true);
        assert!(!op.maintenance(), "unchanged file undid `maintenance off`");
    }
}
