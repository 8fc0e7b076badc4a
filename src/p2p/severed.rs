//! A deliberate partition of the libp2p transport: the peers this node refuses to connect to
//! and drops when connected. Empty in production (`scored run` never sets it); the lab
//! (`scored lab`) cuts a pod off the rest of the data centre with it, and emulates a crashed
//! host, whose peers see its connections close and every dial fail.
//!
//! Clones share one set, so the lab changes it while the swarm runs: the allowlist refuses
//! new connections at once, the driver closes the existing ones at its next redial tick.

use libp2p::PeerId;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

#[derive(Clone, Debug, Default)]
pub struct Severed(Arc<RwLock<HashSet<PeerId>>>);

impl Severed {
    /// From now on, `peers` are cut off (replacing the previous set).
    pub fn set(&self, peers: impl IntoIterator<Item = PeerId>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = peers.into_iter().collect();
    }

    /// Heals the partition: every peer may connect again.
    pub fn clear(&self) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn contains(&self, peer: &PeerId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(peer)
    }

    pub fn is_empty(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_cut() {
        let a = Severed::default();
        let b = a.clone();
        let p = PeerId::random();
        assert!(b.is_empty());
        a.set([p]);
        assert!(b.contains(&p));
        assert!(!b.contains(&PeerId::random()));
        b.clear();
        assert!(a.is_empty());
    }
}
