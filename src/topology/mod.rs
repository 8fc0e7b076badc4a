//! The data-centre topology that operators write once: the switch tree, the link weight `c_i` of
//! each level, and every hypervisor with its place in the tree, addresses, identity and limits.
//!
//! `tree.rs` holds the validated tree and answers the one question the cost model asks of it,
//! the communication level `ℓ(x, y)` between two servers; `weights.rs` the link weights;
//! `networks.rs` the address ranges the VMs use (`vm_networks`, optional);
//! `file.rs` parses and validates the file into them; `error.rs` says what is wrong where.
//! No I/O beyond reading the file it is given; nothing of VMs, traffic or the daemon beyond
//! which addresses may be VMs.

mod error;
mod file;
pub mod generate;
mod networks;
mod tree;
mod weights;

pub use error::{TopologyCause, TopologyError, TopologyErrors, UriTemplateError};
// The configuration names this host by its topology name, so it checks names the same way.
pub(crate) use file::valid_name;
pub use networks::VmNetwork;
pub use tree::{Host, HostId, Switch, SwitchId, Topology};
pub use weights::{LinkWeights, WeightsError};

use std::path::Path;

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Topology, TopologyErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TopologyErrors::single(TopologyError::unreadable(path, e)))?;
        Self::parse(path, &text)
    }

    /// Parses and validates topology text; `path` is used in error messages only.
    pub fn parse(path: &Path, text: &str) -> Result<Topology, TopologyErrors> {
        file::parse(path, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn testbed() -> Topology {
        let text = include_str!("../../topology/testbed.toml");
        Topology::parse(Path::new("topology/testbed.toml"), text).unwrap()
    }

    #[test]
    fn testbed_levels() {
        let t = testbed();
        let id = |n: &str| t.host_by_name(n).unwrap().id;
        assert_eq!(t.levels(), 3);
        assert_eq!(t.level(id("hv1"), id("hv1")), 0);
        assert_eq!(t.level(id("hv1"), id("hv2")), 1);
        assert_eq!(t.level(id("hv1"), id("hv3")), 2);
        assert_eq!(t.level(id("hv1"), id("hv4")), 3);
        assert_eq!(t.level(id("hv3"), id("hv4")), 3);
        let e = std::f64::consts::E;
        assert!((t.path_cost(id("hv1"), id("hv4")) - (1.0 + e + e.powi(3))).abs() < 1e-9);
    }

    #[test]
    fn forest_meets_at_implicit_top() {
        let t = Topology::parse(
            Path::new("mem.toml"),
            r#"
            [levels]
            weights = [1, 2, 4]
            [[host]]
            name = "a"
            path = ["pod1", "tor1"]
            [[host]]
            name = "b"
            path = ["pod2", "tor2"]
            [[host]]
            name = "c"
            path = ["pod1", "tor3"]
            "#,
        )
        .unwrap();
        assert_eq!(t.level(HostId(0), HostId(1)), 3);
        assert_eq!(t.level(HostId(0), HostId(2)), 2);
        assert_eq!(t.racks().len(), 3);
    }
}
