//! What requests from peers may hold on this host at once: how many requests per peer are
//! being received or awaiting their answer, and how many bytes of request frames are being
//! received, per peer and all peers together. Shared by every connection's codec; permits give
//! back what they hold when dropped, so a stream that fails or times out frees its share.
//!
//! Counts only; it never reads a stream, and refusing is the codec's job.

use libp2p::PeerId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A request over one of the budgets. The peer is the codec's, and its stream is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OverBudget {
    #[error("{max} requests from this peer are already in flight")]
    Requests { max: usize },
    #[error("the peer's budget of {max} bytes of request frames in flight is spent")]
    PeerBytes { max: usize },
    #[error("this host's budget of {max} bytes of request frames in flight is spent")]
    HostBytes { max: usize },
}

impl OverBudget {
    /// The `reason` label it is counted under.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            OverBudget::Requests { .. } => crate::p2p::metrics::REQUESTS_IN_FLIGHT,
            OverBudget::PeerBytes { .. } | OverBudget::HostBytes { .. } => {
                crate::p2p::metrics::INFLIGHT_BYTES
            }
        }
    }
}

/// A codec whose connection's peer is unknown has `None` as its peer and shares one budget
/// with every such codec.
type Key = Option<PeerId>;

#[derive(Default)]
struct Held {
    requests: HashMap<Key, usize>,
    bytes: HashMap<Key, usize>,
    total_bytes: usize,
}

pub(crate) struct InboundBudget {
    max_requests_per_peer: usize,
    max_bytes_per_peer: usize,
    max_bytes: usize,
    held: Mutex<Held>,
}

impl InboundBudget {
    pub(crate) fn new(
        max_requests_per_peer: usize,
        max_bytes_per_peer: usize,
        max_bytes: usize,
    ) -> Arc<Self> {
        Arc::new(InboundBudget {
            max_requests_per_peer,
            max_bytes_per_peer,
            max_bytes,
            held: Mutex::new(Held::default()),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more request from `peer`, until the permit is dropped.
    pub(crate) fn request(self: &Arc<Self>, peer: Key) -> Result<RequestPermit, OverBudget> {
        let mut held = self.held();
        let n = held.requests.entry(peer).or_default();
        if *n >= self.max_requests_per_peer {
            if *n == 0 {
                held.requests.remove(&peer);
            }
            return Err(OverBudget::Requests {
                max: self.max_requests_per_peer,
            });
        }
        *n += 1;
        Ok(RequestPermit {
            budget: self.clone(),
            peer,
        })
    }

    /// An empty hold on `peer`'s bytes, grown as a frame arrives.
    pub(crate) fn bytes(self: &Arc<Self>, peer: Key) -> BytesPermit {
        BytesPermit {
            budget: self.clone(),
            peer,
            held: 0,
        }
    }

    /// Bytes of request frames held now, all peers together.
    #[cfg(test)]
    pub(crate) fn bytes_held(&self) -> usize {
        self.held().total_bytes
    }
}

/// One request in flight; dropped when its answer is written or its stream ends.
pub(crate) struct RequestPermit {
    budget: Arc<InboundBudget>,
    peer: Key,
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        let mut held = self.budget.held();
        if let Some(n) = held.requests.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                held.requests.remove(&self.peer);
            }
        }
    }
}

/// Bytes of one frame being received.
pub(crate) struct BytesPermit {
    budget: Arc<InboundBudget>,
    peer: Key,
    held: usize,
}

impl BytesPermit {
    /// Holds `total` bytes in all (more than before, or nothing changes).
    pub(crate) fn hold(&mut self, total: usize) -> Result<(), OverBudget> {
        let Some(more) = total.checked_sub(self.held).filter(|m| *m > 0) else {
            return Ok(());
        };
        let b = &self.budget;
        let mut held = b.held();
        let peer = held.bytes.get(&self.peer).copied().unwrap_or(0);
        if peer + more > b.max_bytes_per_peer {
            return Err(OverBudget::PeerBytes {
                max: b.max_bytes_per_peer,
            });
        }
        if held.total_bytes + more > b.max_bytes {
            return Err(OverBudget::HostBytes { max: b.max_bytes });
        }
        held.bytes.insert(self.peer, peer + more);
        held.total_bytes += more;
        self.held = total;
        Ok(())
    }
}

impl Drop for BytesPermit {
    fn drop(&mut self) {
        if self.held == 0 {
            return;
        }
        let mut held = self.budget.held();
        held.total_bytes -= self.held;
        if let Some(n) = held.bytes.get_mut(&self.peer) {
            *n -= self.held;
            if *n == 0 {
                held.bytes.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_give_back_what_they_hold() {
        let budget = InboundBudget::new(2, 100, 150);
        let (a, b) = (Some(PeerId::random()), Some(PeerId::random()));
        let r1 = budget.request(a).unwrap();
        let _r2 = budget.request(a).unwrap();
        assert_eq!(
            budget.request(a).err(),
            Some(OverBudget::Requests { max: 2 })
        );
        let _other = budget.request(b).unwrap();
        drop(r1);
        let _r3 = budget.request(a).unwrap();

        let mut fa = budget.bytes(a);
        fa.hold(60).unwrap();
        fa.hold(100).unwrap();
        assert_eq!(fa.hold(101), Err(OverBudget::PeerBytes { max: 100 }));
        let mut fb = budget.bytes(b);
        fb.hold(50).unwrap();
        assert_eq!(fb.hold(51), Err(OverBudget::HostBytes { max: 150 }));
        assert_eq!(budget.bytes_held(), 150);
        drop(fa);
        assert_eq!(budget.bytes_held(), 50);
        fb.hold(100).unwrap();
        drop(fb);
        assert_eq!(budget.bytes_held(), 0);
    }
}
