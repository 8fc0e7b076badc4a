//! Closing the connections nothing uses.
//!
//! libp2p closes a connection `idle_timeout` after its last use only when none of its streams
//! is open. gossipsub keeps one stream open each way on every connection to a peer of its
//! topics, mesh member or not, and never marks them as not counting
//! (libp2p/rust-libp2p#5190, open; libp2p-gossipsub 0.50 here). So every connection a request
//! ever opened stayed for good: a host's connections grew towards one to every host it ever
//! asked (20 → 31 per host between 150 s and 450 s of a 64-daemon lab, and the process's heap
//! with them, at ≈ 130 KB a connection), instead of the overlay's ≈ 8.
//!
//! The driver therefore closes, on its redial tick, every connection to a peer that is not one
//! of this host's overlay neighbours (its fingers and the hosts whose finger it is: the
//! connections gossip runs over, kept by both ends), has no request in flight either way, and
//! has not been used for `timeout`: it closes between `timeout` and `timeout` plus a tick after
//! its last use.

use libp2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

pub(crate) struct IdleConnections {
    timeout: Duration,
    /// Kept whatever their use: the overlay's connections, both ways.
    overlay: HashSet<PeerId>,
    last_used: HashMap<PeerId, Instant>,
    /// Requests sent and not settled, and requests received and not answered, by peer. A
    /// request waiting for a migration (a group move) keeps its connection for as long.
    in_flight: HashMap<PeerId, u32>,
}

impl IdleConnections {
    pub(crate) fn new(timeout: Duration, overlay: impl IntoIterator<Item = PeerId>) -> Self {
        IdleConnections {
            timeout,
            overlay: overlay.into_iter().collect(),
            last_used: HashMap::new(),
            in_flight: HashMap::new(),
        }
    }

    /// A connection to `peer` opened, or something went over it.
    pub(crate) fn used(&mut self, peer: PeerId, now: Instant) {
        self.last_used.insert(peer, now);
    }

    /// A request to or from `peer` began.
    pub(crate) fn started(&mut self, peer: PeerId, now: Instant) {
        *self.in_flight.entry(peer).or_default() += 1;
        self.used(peer, now);
    }

    /// A request to or from `peer` ended: answered, refused or failed.
    pub(crate) fn ended(&mut self, peer: PeerId, now: Instant) {
        if let Some(n) = self.in_flight.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.in_flight.remove(&peer);
            }
        }
        self.used(peer, now);
    }

    /// The last connection to `peer` closed. Its requests end through their own failures.
    pub(crate) fn closed(&mut self, peer: &PeerId) {
        self.last_used.remove(peer);
    }

    /// The peers among `connected` whose connections should close now.
    pub(crate) fn idle<'a>(
        &self,
        connected: impl IntoIterator<Item = &'a PeerId>,
        now: Instant,
    ) -> Vec<PeerId> {
        connected
            .into_iter()
            .filter(|p| !self.overlay.contains(p) && !self.in_flight.contains_key(p))
            .filter(|p| {
                self.last_used
                    .get(p)
                    .is_none_or(|t| now.saturating_duration_since(*t) >= self.timeout)
            })
            .copied()
            .collect()
    }

    /// Requests in flight to or from `peer`.
    #[cfg(test)]
    fn in_flight(&self, peer: &PeerId) -> u32 {
        self.in_flight.get(peer).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn a_connection_closes_once_unused_for_the_timeout_and_never_in_the_overlay() {
        let (finger, asked) = (peer(), peer());
        let mut idle = IdleConnections::new(Duration::from_secs(60), [finger]);
        let t0 = Instant::now();
        idle.used(finger, t0);
        idle.used(asked, t0);
        let connected = [finger, asked];
        assert!(
            idle.idle(&connected, t0 + Duration::from_secs(59))
                .is_empty()
        );
        assert_eq!(idle.idle(&connected, t0 + Duration::from_secs(60)), [asked]);
        // Used again: another minute.
        idle.used(asked, t0 + Duration::from_secs(30));
        assert!(
            idle.idle(&connected, t0 + Duration::from_secs(80))
                .is_empty()
        );
        assert_eq!(idle.idle(&connected, t0 + Duration::from_secs(90)), [asked]);
        // A connection this host never saw used (opened before it counted) is idle.
        let unknown = peer();
        assert_eq!(idle.idle(&[unknown], t0), [unknown]);
    }

    #[test]
    fn a_request_in_flight_keeps_its_connection_however_long_it_takes() {
        let p = peer();
        let mut idle = IdleConnections::new(Duration::from_secs(1), []);
        let t0 = Instant::now();
        idle.started(p, t0);
        idle.started(p, t0);
        let later = t0 + Duration::from_secs(600);
        assert!(idle.idle(&[p], later).is_empty());
        idle.ended(p, later);
        assert_eq!(idle.in_flight(&p), 1);
        assert!(idle.idle(&[p], later + Duration::from_secs(5)).is_empty());
        idle.ended(p, later);
        assert!(
            idle.idle(&[p], later + Duration::from_millis(999))
                .is_empty()
        );
        assert_eq!(idle.idle(&[p], later + Duration::from_secs(1)), [p]);
        // An end without a start (a refusal counted twice) never goes below zero.
        idle.ended(p, later);
        assert_eq!(idle.in_flight(&p), 0);
        // The connection's close forgets its use, not its requests.
        idle.started(p, later);
        idle.closed(&p);
        assert_eq!(idle.in_flight(&p), 1);
        assert!(idle.idle(&[p], later + Duration::from_secs(100)).is_empty());
    }
}
