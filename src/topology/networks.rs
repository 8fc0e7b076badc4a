//! `vm_networks`: the address ranges the data centre's VMs use (a VM id is its IPv4 address).
//! An address outside them is no VM of the data centre (a gateway, a client): lookups never ask
//! a peer about it. Parsing and membership only; what a lookup does with it is `p2p`'s.

use scored_proto::VmId;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// One IPv4 network, `address/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmNetwork {
    base: u32,
    prefix: u8,
}

impl VmNetwork {
    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    pub fn contains(&self, vm: VmId) -> bool {
        u32::from(vm.to_ipv4()) & self.mask() == self.base
    }
}

impl std::fmt::Display for VmNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl FromStr for VmNetwork {
    type Err = String;

    /// The message names the text and says how to write it.
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((addr, prefix)) = s.split_once('/') else {
            return Err(format!(
                "`{s}` is not a network: write it as address/prefix, e.g. `10.0.0.0/16`"
            ));
        };
        let addr = match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => a,
            Ok(IpAddr::V6(_)) => {
                return Err(format!(
                    "`{s}` is an IPv6 network: VMs are known by their IPv4 address"
                ));
            }
            Err(_) => return Err(format!("`{addr}` in `{s}` is not an IPv4 address")),
        };
        let prefix = match prefix.parse::<u8>() {
            Ok(p) if p <= 32 => p,
            _ => {
                return Err(format!(
                    "`{prefix}` in `{s}` is not a prefix length from 0 to 32"
                ));
            }
        };
        let net = VmNetwork {
            base: u32::from(addr),
            prefix,
        };
        let base = net.base & net.mask();
        if base != net.base {
            // Most likely a typo in one of the two halves: say what the prefix makes of it.
            return Err(format!(
                "`{s}` has address bits beyond its /{prefix} prefix: did you mean `{}/{prefix}`?",
                Ipv4Addr::from(base)
            ));
        }
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(s: &str) -> VmId {
        VmId::from_ipv4(s.parse().unwrap())
    }

    #[test]
    fn networks_hold_their_addresses_only() {
        let n: VmNetwork = "10.0.0.0/16".parse().unwrap();
        assert!(n.contains(vm("10.0.0.1")) && n.contains(vm("10.0.255.254")));
        assert!(!n.contains(vm("10.1.0.1")) && !n.contains(vm("192.168.0.1")));
        let all: VmNetwork = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(vm("203.0.113.9")));
        let one: VmNetwork = "10.9.9.9/32".parse().unwrap();
        assert!(one.contains(vm("10.9.9.9")) && !one.contains(vm("10.9.9.8")));
        assert_eq!(n.to_string(), "10.0.0.0/16");
    }

    #[test]
    fn bad_networks_say_what_is_wrong() {
        let err = |s: &str| s.parse::<VmNetwork>().unwrap_err();
        assert!(err("10.0.0.0").contains("address/prefix"));
        assert!(err("10.0.0.300/16").contains("not an IPv4 address"));
        assert!(err("fd00::/8").contains("IPv6"));
        assert!(err("10.0.0.0/33").contains("0 to 32"));
        assert!(err("10.0.0.0/x").contains("0 to 32"));
        assert_eq!(
            err("10.0.1.0/16"),
            "`10.0.1.0/16` has address bits beyond its /16 prefix: did you mean `10.0.0.0/16`?"
        );
    }
}
