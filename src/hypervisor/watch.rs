//! Following VMs as they appear on and leave this host, by polling any [`Hypervisor`].
//!
//! Polling, not libvirt's event callbacks: an event registration dies with its connection (a
//! libvirtd restart, which running guests survive), needs libvirt's event loop on a thread of its
//! own and unsafe callbacks, and a missed event is never replayed; a poll of `vms()` costs a few
//! milliseconds and always converges on the truth. The diff itself is pure.

use super::{Hypervisor, Result, Vm};
use scored_proto::VmId;
use std::collections::BTreeMap;

/// One change between two polls.
#[derive(Clone, Debug, PartialEq)]
pub enum VmChange {
    /// Now running here (started, or migrated in).
    Appeared(Vm),
    /// No longer running here (stopped, or migrated away).
    Left(VmId),
    /// Still here, but something scored uses changed (taps after a restart, pinned flag, memory).
    Changed(Vm),
}

/// The VMs seen at the last poll.
#[derive(Clone, Debug, Default)]
pub struct VmWatch {
    known: BTreeMap<VmId, Vm>,
}

impl VmWatch {
    pub fn new() -> Self {
        VmWatch::default()
    }

    /// Polls `hv` and returns what changed since the last poll.
    pub fn poll(&mut self, hv: &dyn Hypervisor) -> Result<Vec<VmChange>> {
        Ok(self.update(hv.vms()?))
    }

    /// Replaces the known set with `now` and returns the differences, ordered by VM id.
    pub fn update(&mut self, now: Vec<Vm>) -> Vec<VmChange> {
        let mut next: BTreeMap<VmId, Vm> = BTreeMap::new();
        for vm in now {
            next.entry(vm.id).or_insert(vm);
        }
        let mut changes = Vec::new();
        for (id, _) in self.known.iter().filter(|(id, _)| !next.contains_key(id)) {
            changes.push(VmChange::Left(*id));
        }
        for (id, vm) in &next {
            match self.known.get(id) {
                None => changes.push(VmChange::Appeared(vm.clone())),
                Some(old) if old != vm => changes.push(VmChange::Changed(vm.clone())),
                Some(_) => {}
            }
        }
        changes.sort_by_key(|c| match c {
            VmChange::Appeared(v) | VmChange::Changed(v) => v.id,
            VmChange::Left(id) => *id,
        });
        self.known = next;
        changes
    }

    pub fn known(&self) -> impl Iterator<Item = &Vm> {
        self.known.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn vm(last: u8, mem: u64) -> Vm {
        Vm {
            id: VmId::from_ipv4(Ipv4Addr::new(10, 77, 1, last)),
            name: format!("vm{last}"),
            uuid: [last; 16],
            memory_mib: mem,
            vcpus: 1,
            interfaces: vec![],
            pinned: false,
            groups: Vec::new(),
        }
    }

    #[test]
    fn appear_change_leave() {
        let mut w = VmWatch::new();
        assert_eq!(
            w.update(vec![vm(2, 128), vm(1, 128)]),
            vec![
                VmChange::Appeared(vm(1, 128)),
                VmChange::Appeared(vm(2, 128))
            ]
        );
        assert_eq!(w.update(vec![vm(1, 128), vm(2, 128)]), vec![]);
        assert_eq!(
            w.update(vec![vm(2, 256), vm(3, 128)]),
            vec![
                VmChange::Left(vm(1, 0).id),
                VmChange::Changed(vm(2, 256)),
                VmChange::Appeared(vm(3, 128))
            ]
        );
        assert_eq!(w.known().count(), 2);
    }
}
