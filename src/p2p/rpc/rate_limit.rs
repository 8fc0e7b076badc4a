//! How much one peer may ask of this host: a token bucket per (peer, protocol), kept as the
//! generic cell rate algorithm (one instant per bucket: when it will be full again). Pure: the
//! caller passes the time, so tests and the simulator can drive it; it never reads a clock and
//! never answers the peer itself.
//!
//! The limits are sized from what daemons do (docs/protocol.md, "Rate limits"): a daemon that
//! follows the protocol sends one host at most a few requests of one kind at a time and waits
//! for each answer, so only a peer that floods can reach them.

use super::Kind;
use libp2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// One protocol's allowance per peer: `burst` requests at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub burst: u32,
    pub per_second: u32,
}

impl Quota {
    /// Time for one request's worth to refill.
    fn interval(self) -> Duration {
        Duration::from_secs(1) / self.per_second.max(1)
    }
}

/// Per-peer allowances of the five request-response protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    pub token: Quota,
    pub location: Quota,
    pub capacity: Quota,
    pub stats: Quota,
    /// Group-move surveys (`/scored/group/1`).
    pub group: Quota,
}

impl Default for RateLimits {
    /// Sized in docs/protocol.md ("Rate limits"): each about twice the fastest a daemon that
    /// follows the protocol can ask one host, with bursts far above its largest burst.
    fn default() -> Self {
        RateLimits {
            // A hand-off from one peer needs the token back first: two turns and two round
            // trips (≥ 2 × 0.24 ms on loopback) between two of them.
            token: Quota {
                burst: 64,
                per_second: 2_000,
            },
            // One batch per lookup, decisions back to back (≈ 1 ms each).
            location: Quota {
                burst: 512,
                per_second: 5_000,
            },
            // One request (and one retry) per decision that lists this host as a candidate.
            capacity: Quota {
                burst: 512,
                per_second: 5_000,
            },
            // One per global-policy round and per regeneration.
            stats: Quota {
                burst: 64,
                per_second: 500,
            },
            // One per group-move plan that counts this host in its rack or a destination rack:
            // a plan waits for its surveys (a round trip) and then decides, capacity requests
            // included (≥ 1 ms each), so one peer surveys one host < 800 times a second. Kept
            // near that bound: an answer may take 1 MiB.
            group: Quota {
                burst: 64,
                per_second: 1_000,
            },
        }
    }
}

impl RateLimits {
    pub(crate) fn quota(&self, kind: Kind) -> Quota {
        match kind {
            Kind::Token => self.token,
            Kind::Location => self.location,
            Kind::Capacity => self.capacity,
            Kind::Stats => self.stats,
            Kind::Group => self.group,
        }
    }
}

/// A request over its peer's allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rate limited: more than {} {} requests at once or {} a second from this host", quota.burst, kind.protocol(), quota.per_second)]
pub(crate) struct Limited {
    pub kind: Kind,
    pub quota: Quota,
    /// How long until one more request would be admitted.
    pub retry_after: Duration,
    /// The first refusal since the peer's bucket was last full: the one worth a log line.
    pub first: bool,
}

/// Every (peer, protocol) bucket. An absent bucket is a full one, so buckets that have refilled
/// can be dropped ([`RateLimiter::prune`]) without changing any decision.
pub(crate) struct RateLimiter {
    limits: RateLimits,
    /// When each bucket will be full again (the "theoretical arrival time").
    full_at: HashMap<(PeerId, Kind), Instant>,
    /// Buckets that refused since they were last full (logged once each). Always a subset of
    /// `full_at`'s keys, so pruning bounds both; a peer that floods again after calming down
    /// is logged again.
    refused: HashSet<(PeerId, Kind)>,
}

impl RateLimiter {
    pub(crate) fn new(limits: RateLimits) -> Self {
        RateLimiter {
            limits,
            full_at: HashMap::new(),
            refused: HashSet::new(),
        }
    }

    /// Admits one request of `kind` from `peer` arriving at `now`, or says why not. A refused
    /// request costs nothing, so a peer that slows down is served again at once.
    pub(crate) fn admit(&mut self, peer: PeerId, kind: Kind, now: Instant) -> Result<(), Limited> {
        let quota = self.limits.quota(kind);
        let interval = quota.interval();
        let capacity = interval * quota.burst;
        let full_at = self.full_at.get(&(peer, kind)).copied().unwrap_or(now);
        let next = full_at.max(now) + interval;
        if next > now + capacity {
            return Err(Limited {
                kind,
                quota,
                retry_after: next - (now + capacity),
                first: self.refused.insert((peer, kind)),
            });
        }
        self.full_at.insert((peer, kind), next);
        Ok(())
    }

    /// Forgets buckets that are full by `now`.
    pub(crate) fn prune(&mut self, now: Instant) {
        self.full_at.retain(|_, full_at| *full_at > now);
        let full_at = &self.full_at;
        self.refused.retain(|k| full_at.contains_key(k));
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.full_at.len().max(self.refused.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(burst: u32, per_second: u32) -> RateLimiter {
        let q = Quota { burst, per_second };
        RateLimiter::new(RateLimits {
            token: q,
            location: q,
            capacity: q,
            stats: q,
            group: q,
        })
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let mut l = limiter(4, 10);
        let (peer, t0) = (PeerId::random(), Instant::now());
        for _ in 0..4 {
            l.admit(peer, Kind::Capacity, t0).unwrap();
        }
        let e = l.admit(peer, Kind::Capacity, t0).unwrap_err();
        assert_eq!(e.retry_after, 100 * MS);
        assert!(e.to_string().starts_with("rate limited"), "{e}");
        assert!(e.to_string().contains("/scored/capacity/1"), "{e}");
        // Refusals cost nothing: exactly one refill later, exactly one more.
        assert!(l.admit(peer, Kind::Capacity, t0 + 99 * MS).is_err());
        l.admit(peer, Kind::Capacity, t0 + 100 * MS).unwrap();
        assert!(l.admit(peer, Kind::Capacity, t0 + 100 * MS).is_err());
        // At the refill rate, forever.
        for i in 2..50 {
            l.admit(peer, Kind::Capacity, t0 + i * 100 * MS).unwrap();
        }
        // After a quiet spell the whole burst is back, no more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..4 {
            l.admit(peer, Kind::Capacity, later).unwrap();
        }
        assert!(l.admit(peer, Kind::Capacity, later).is_err());
    }

    #[test]
    fn peers_and_protocols_have_their_own_buckets() {
        let mut l = limiter(2, 1);
        let (a, b, t0) = (PeerId::random(), PeerId::random(), Instant::now());
        l.admit(a, Kind::Token, t0).unwrap();
        l.admit(a, Kind::Token, t0).unwrap();
        assert!(l.admit(a, Kind::Token, t0).is_err());
        l.admit(a, Kind::Stats, t0).unwrap();
        l.admit(a, Kind::Group, t0).unwrap();
        l.admit(a, Kind::Group, t0).unwrap();
        assert!(l.admit(a, Kind::Group, t0).is_err());
        l.admit(b, Kind::Token, t0).unwrap();
        l.admit(b, Kind::Token, t0).unwrap();
        assert!(l.admit(b, Kind::Token, t0).is_err());
    }

    #[test]
    fn pruning_forgets_only_full_buckets() {
        let mut l = limiter(3, 10);
        let (a, b, t0) = (PeerId::random(), PeerId::random(), Instant::now());
        l.admit(a, Kind::Location, t0).unwrap();
        for _ in 0..3 {
            l.admit(b, Kind::Location, t0).unwrap();
        }
        // a is full again after 100 ms, b after 300 ms.
        l.prune(t0 + 150 * MS);
        assert_eq!(l.tracked(), 1);
        assert!(l.admit(b, Kind::Location, t0 + 150 * MS).is_ok());
        assert!(l.admit(b, Kind::Location, t0 + 150 * MS).is_err());
        l.prune(t0 + Duration::from_secs(1));
        assert_eq!(l.tracked(), 0);
    }

    /// What daemons send one host must never be refused by the defaults.
    #[test]
    fn the_defaults_admit_what_daemons_send() {
        let mut l = RateLimiter::new(RateLimits::default());
        let (peer, t0) = (PeerId::random(), Instant::now());
        // A regeneration right after a global-policy round: two statistics requests and the
        // lower-host probe (an empty location request), all at once; then hand-offs retried
        // three times, then decisions back to back, 1 ms apart, each asking this host's capacity
        // and asking again after a timeout, for ten seconds.
        l.admit(peer, Kind::Stats, t0).unwrap();
        l.admit(peer, Kind::Stats, t0).unwrap();
        l.admit(peer, Kind::Location, t0).unwrap();
        for _ in 0..3 {
            l.admit(peer, Kind::Token, t0).unwrap();
        }
        for i in 0..10_000u32 {
            let now = t0 + MS * i;
            l.admit(peer, Kind::Capacity, now).unwrap();
            l.admit(peer, Kind::Capacity, now).unwrap();
            l.admit(peer, Kind::Location, now).unwrap();
        }
        // The token back every 0.6 ms (two loopback hand-offs and two turns) for ten seconds.
        for i in 0..16_000u32 {
            l.admit(peer, Kind::Token, t0 + Duration::from_micros(600) * i)
                .unwrap();
        }
        // A global-policy round every 10 ms for ten seconds.
        for i in 0..1_000u32 {
            l.admit(peer, Kind::Stats, t0 + 10 * MS * i).unwrap();
        }
        // Group-move plans back to back, each surveying this host once, a survey round trip
        // and a decision (≥ 1.25 ms together) apart, for ten seconds.
        for i in 0..8_000u32 {
            l.admit(peer, Kind::Group, t0 + Duration::from_micros(1_250) * i)
                .unwrap();
        }
    }

    /// Many peers flooding: what is remembered of them (buckets and logged refusals) is gone
    /// once they calm down, and a peer that floods again is logged again.
    #[test]
    fn refusals_are_logged_once_per_flood_and_forgotten_after() {
        let mut l = limiter(2, 10);
        let t0 = Instant::now();
        let peers: Vec<PeerId> = (0..1_000).map(|_| PeerId::random()).collect();
        let mut logged = 0;
        for p in &peers {
            for _ in 0..50 {
                if let Err(e) = l.admit(*p, Kind::Token, t0) {
                    logged += usize::from(e.first);
                }
            }
        }
        assert_eq!(logged, peers.len(), "one log line per flooding peer");
        l.prune(t0 + Duration::from_secs(1));
        assert_eq!(l.tracked(), 0);
        // The same peer flooding again later is logged again; an honest peer is served.
        let later = t0 + Duration::from_secs(2);
        l.admit(peers[0], Kind::Token, later).unwrap();
        l.admit(peers[0], Kind::Token, later).unwrap();
        assert!(l.admit(peers[0], Kind::Token, later).unwrap_err().first);
        assert!(!l.admit(peers[0], Kind::Token, later).unwrap_err().first);
        l.admit(peers[1], Kind::Token, later).unwrap();
    }
}
