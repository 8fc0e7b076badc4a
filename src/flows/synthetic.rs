//! A flow source fed from a list of steady rates and a clock the caller moves: the simulator and
//! the loopback daemon tests use it where a real host would capture packets.
//!
//! It goes through the same [`FlowTable`] as capture (same averaging, expiry and cap), so what
//! the decision reads from it behaves like what it reads on a real host. Deterministic: no clock
//! of its own, no randomness.

use super::table::{Direction, FlowTable, PartnerRate, Steady, TableConfig};
use super::{FlowSource, Result, SourceStats};
use crate::hypervisor::Vm;
use scored_proto::VmId;
use std::collections::HashSet;
use std::time::Duration;

/// Frame size assumed to turn a byte rate into a packet rate (a full Ethernet MTU frame).
pub const NOMINAL_FRAME_BYTES: f64 = 1514.0;

/// A steady flow: local VM `vm` exchanges `bytes_per_sec` with `partner` (recorded as sent by
/// `vm`, so λ(vm, partner) reads exactly `bytes_per_sec` once the average has settled).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Demand {
    pub vm: VmId,
    pub partner: VmId,
    pub bytes_per_sec: f64,
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct SyntheticSource {
    table: FlowTable,
    demands: Vec<Demand>,
    /// `None` until [`FlowSource::follow`] is called: every demand's VM counts as local.
    local: Option<HashSet<VmId>>,
    now: Duration,
    tick: Duration,
}

impl SyntheticSource {
    pub fn new(config: TableConfig, demands: Vec<Demand>) -> Result<Self> {
        Ok(SyntheticSource {
            table: FlowTable::new(config)?,
            demands,
            local: None,
            now: Duration::ZERO,
            tick: config.tick,
        })
    }

    /// Replaces the traffic pattern from now on.
    pub fn set_demands(&mut self, demands: Vec<Demand>) {
        self.demands = demands;
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    /// Moves the clock to `now`, accounting every demand for each tick that ended on the way.
    /// Cost O(demands) whatever the jump. A `now` in the past is ignored.
    pub fn advance_to(&mut self, now: Duration) {
        if now <= self.now {
            return;
        }
        let tick_ns = self.tick.as_nanos().max(1);
        let from = self.now.as_nanos() / tick_ns;
        let to = now.as_nanos() / tick_ns;
        let ticks = (to - from).min(u32::MAX as u128) as u32;
        self.now = now;
        if ticks == 0 {
            return;
        }
        let secs = self.tick.as_secs_f64();
        for d in &self.demands {
            if self.local.as_ref().is_some_and(|l| !l.contains(&d.vm)) {
                continue;
            }
            let bytes = d.bytes_per_sec * secs;
            let steady = Steady {
                bytes_per_tick: bytes,
                packets_per_tick: bytes / NOMINAL_FRAME_BYTES,
                ticks,
            };
            self.table
                .record_steady(d.vm, d.partner, Direction::Out, steady, now);
        }
        self.table.expire_all(now);
    }

    pub fn table(&self) -> &FlowTable {
        &self.table
    }
}

impl FlowSource for SyntheticSource {
    fn follow(&mut self, vms: &[Vm]) -> Result<()> {
        let local: HashSet<VmId> = vms.iter().map(|v| v.id).collect();
        for vm in self.table.vms() {
            if !local.contains(&vm) {
                self.table.forget_vm(vm);
            }
        }
        self.local = Some(local);
        Ok(())
    }

    fn partners(&self, vm: VmId) -> Vec<(VmId, f64)> {
        self.table.partners(vm, self.now)
    }

    fn partner_rates(&self, vm: VmId) -> Vec<PartnerRate> {
        self.table.partner_rates(vm, self.now)
    }

    fn vm_load(&self, vm: VmId) -> f64 {
        self.table.vm_load(vm, self.now)
    }

    fn stats(&self) -> SourceStats {
        SourceStats {
            table: self.table.stats(),
            ..SourceStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(n: u32) -> VmId {
        VmId(0x0a00_0000 + n)
    }

    fn a_vm(id: VmId) -> Vm {
        Vm {
            id,
            name: format!("vm-{id}"),
            uuid: [0; 16],
            memory_mib: 256,
            vcpus: 1,
            interfaces: vec![],
            pinned: false,
            groups: Vec::new(),
        }
    }

    #[test]
    fn rates_settle_on_the_demands() {
        let demands = vec![
            Demand {
                vm: vm(1),
                partner: vm(2),
                bytes_per_sec: 1e6,
            },
            Demand {
                vm: vm(1),
                partner: vm(3),
                bytes_per_sec: 5e3,
            },
            Demand {
                vm: vm(2),
                partner: vm(1),
                bytes_per_sec: 1e6,
            },
        ];
        let mut s = SyntheticSource::new(TableConfig::default(), demands).unwrap();
        // Twenty windows in one jump, then a few small steps: the same result as ticking.
        s.advance_to(Duration::from_secs(600));
        s.advance_to(Duration::from_millis(600_500));
        s.advance_to(Duration::from_secs(603));
        let mut p = s.partners(vm(1));
        p.sort_by_key(|x| x.0);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].0, vm(2));
        assert!((p[0].1 - 1e6).abs() < 1.0, "{p:?}");
        assert!((p[1].1 - 5e3).abs() < 0.01, "{p:?}");
        assert!((s.vm_load(vm(1)) - 1.005e6).abs() < 1.0);
        let r = s.partner_rates(vm(1));
        assert!(r.iter().all(|r| r.in_bytes_per_sec == 0.0));
        let pps: f64 = r.iter().map(|r| r.packets_per_sec).sum();
        assert!((pps - 1.005e6 / NOMINAL_FRAME_BYTES).abs() < 0.01);
    }

    #[test]
    fn a_vm_that_leaves_is_forgotten_and_idle_flows_expire() {
        let demands = vec![
            Demand {
                vm: vm(1),
                partner: vm(2),
                bytes_per_sec: 100.0,
            },
            Demand {
                vm: vm(2),
                partner: vm(1),
                bytes_per_sec: 100.0,
            },
        ];
        let mut s = SyntheticSource::new(TableConfig::default(), demands).unwrap();
        s.advance_to(Duration::from_secs(10));
        assert_eq!(s.partners(vm(2)).len(), 1);
        // vm(2) migrates away.
        s.follow(&[a_vm(vm(1))]).unwrap();
        assert!(s.partners(vm(2)).is_empty());
        s.advance_to(Duration::from_secs(20));
        assert!(s.partners(vm(2)).is_empty());
        assert_eq!(s.partners(vm(1)).len(), 1);
        // The traffic stops; after the idle timeout the entry is gone.
        s.set_demands(vec![]);
        s.advance_to(Duration::from_secs(20 + 121));
        assert!(s.partners(vm(1)).is_empty());
        assert_eq!(s.stats().table.expirations, 1);
        assert_eq!(s.stats().table.forgotten, 1);
    }
}
