//! How much of this host the transport lets others hold: connections being set up and
//! established, streams per connection, requests and bytes in flight. The values with their
//! production defaults, and the gate on incoming handshakes; libp2p's `connection_limits`
//! counts established and outgoing connections, the rpc codec requests and bytes. Nothing here
//! looks at what a peer sends.
//!
//! The gate is ours rather than `connection_limits`'s pending-incoming count because that
//! count is one number for everyone: an outsider filling it would lock listed hosts out too.

use super::metrics::{P2pMetrics, PENDING_INCOMING};
use crate::topology::Topology;
use libp2p::core::{Endpoint, multiaddr::Protocol, transport::PortUse};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId, connection_limits};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::Duration;

/// The transport's limits. [`TransportLimits::default`] is sized for a 2,000-host data centre in
/// which every host may talk to every other (docs/protocol.md, "Transport").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportLimits {
    /// Incoming connections still in their handshake, from addresses the topology does not
    /// list, all together. Addresses the topology lists are held only to the per-address limit,
    /// so a flood from elsewhere cannot lock a listed host out.
    pub max_pending_incoming: u32,
    /// Incoming connections still in their handshake from one IP address, times the number of
    /// hosts the topology lists at that address (at least one).
    pub max_pending_incoming_per_ip: u32,
    /// Outgoing connections being dialled at once.
    pub max_pending_outgoing: u32,
    /// Established connections, all peers together.
    pub max_established: u32,
    /// Established connections to one peer.
    pub max_established_per_peer: u32,
    /// A connection that has not finished its Noise and Yamux handshakes by then is dropped.
    pub handshake_timeout: Duration,
    /// Yamux streams open at once on one connection.
    pub max_streams_per_connection: usize,
    /// Requests from one peer being received or awaiting this host's answer, all protocols
    /// and connections together.
    pub max_requests_per_peer: usize,
    /// Bytes of request frames being received, all peers together.
    pub max_inflight_bytes: usize,
    /// Bytes of request frames being received from one peer.
    pub max_inflight_bytes_per_peer: usize,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            max_pending_incoming: 256,
            max_pending_incoming_per_ip: 8,
            max_pending_outgoing: 256,
            max_established: 4096,
            max_established_per_peer: 3,
            handshake_timeout: Duration::from_secs(10),
            max_streams_per_connection: 64,
            max_requests_per_peer: 32,
            max_inflight_bytes: 256 << 20,
            max_inflight_bytes_per_peer: 48 << 20,
        }
    }
}

/// Holds incoming connections in their handshake to [`TransportLimits::max_pending_incoming`]
/// (addresses the topology does not list, together) and
/// [`TransportLimits::max_pending_incoming_per_ip`] (any one address), refusing the rest as soon
/// as TCP accepts them, before any Noise work. Counts what it holds and what it refuses; it
/// never looks at an established connection (libp2p's `connection_limits` does).
pub(crate) struct PendingGate {
    max_unlisted: u32,
    max_per_ip: u32,
    /// Hosts the topology lists at each address.
    listed: HashMap<IpAddr, u32>,
    holding: HashMap<ConnectionId, (IpAddr, bool)>,
    per_ip: HashMap<IpAddr, u32>,
    unlisted: u32,
    logged: HashSet<IpAddr>,
    metrics: P2pMetrics,
}

/// Addresses refused individually in the log; past this many, refusals are only counted.
const MAX_LOGGED: usize = 1024;

/// Why an incoming connection was refused before its handshake.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PendingRefused {
    #[error("{ip} already has {max} connections in their handshake")]
    PerAddress { ip: IpAddr, max: u32 },
    #[error(
        "{ip} is not in the topology, and {max} connections from such addresses are already in their handshake"
    )]
    Unlisted { ip: IpAddr, max: u32 },
}

impl PendingGate {
    pub(crate) fn new(topology: &Topology, limits: &TransportLimits, metrics: P2pMetrics) -> Self {
        PendingGate {
            max_unlisted: limits.max_pending_incoming,
            max_per_ip: limits.max_pending_incoming_per_ip,
            listed: topology.hosts().iter().filter_map(|h| h.address).fold(
                HashMap::new(),
                |mut m, ip| {
                    *m.entry(ip).or_default() += 1;
                    m
                },
            ),
            holding: HashMap::new(),
            per_ip: HashMap::new(),
            unlisted: 0,
            logged: HashSet::new(),
            metrics,
        }
    }

    fn admit(&mut self, id: ConnectionId, remote: &Multiaddr) -> Result<(), PendingRefused> {
        // A listener only hands over IP addresses; one without any is held as unlisted.
        let ip = remote
            .iter()
            .find_map(|p| match p {
                Protocol::Ip4(a) => Some(IpAddr::V4(a)),
                Protocol::Ip6(a) => Some(IpAddr::V6(a)),
                _ => None,
            })
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let hosts = self.listed.get(&ip).copied();
        let listed = hosts.is_some();
        // Several hosts behind one address (a cluster on one machine) each get their share.
        let max = self.max_per_ip.saturating_mul(hosts.unwrap_or(1));
        let count = self.per_ip.get(&ip).copied().unwrap_or(0);
        if count >= max {
            return Err(PendingRefused::PerAddress { ip, max });
        }
        if !listed && self.unlisted >= self.max_unlisted {
            return Err(PendingRefused::Unlisted {
                ip,
                max: self.max_unlisted,
            });
        }
        *self.per_ip.entry(ip).or_default() += 1;
        self.unlisted += u32::from(!listed);
        self.holding.insert(id, (ip, listed));
        self.metrics.pending_incoming.set(self.holding.len() as i64);
        Ok(())
    }

    /// The connection finished its handshake or failed: it no longer counts.
    fn release(&mut self, id: ConnectionId) {
        let Some((ip, listed)) = self.holding.remove(&id) else {
            return;
        };
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        self.unlisted -= u32::from(!listed);
        self.metrics.pending_incoming.set(self.holding.len() as i64);
    }
}

impl NetworkBehaviour for PendingGate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.admit(id, remote).map_err(|refused| {
            self.metrics.reject(PENDING_INCOMING);
            let (PendingRefused::PerAddress { ip, .. } | PendingRefused::Unlisted { ip, .. }) =
                refused;
            if self.logged.len() < MAX_LOGGED && self.logged.insert(ip) {
                tracing::warn!(%remote, reason = %refused, "refused an incoming connection before its handshake (logged once per address)");
            }
            ConnectionDenied::new(refused)
        })
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.release(id);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // A handshake that failed, timed out or was refused by a later behaviour.
        if let FromSwarm::ListenFailure(f) = event {
            self.release(f.connection_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// libp2p's own limits on outgoing handshakes and established connections.
pub(crate) fn connection_limits(limits: &TransportLimits) -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_pending_outgoing(Some(limits.max_pending_outgoing))
            .with_max_established(Some(limits.max_established))
            .with_max_established_per_peer(Some(limits.max_established_per_peer)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn gate(max_unlisted: u32, max_per_ip: u32) -> PendingGate {
        let text = "[levels]\nweights = [1, 3]\n[[host]]\nname = \"a\"\npath = [\"agg\", \"tor1\"]\naddress = \"10.0.0.1\"\np2p_port = 7070\n";
        let topology = Topology::parse(Path::new("t.toml"), text).unwrap();
        let limits = TransportLimits {
            max_pending_incoming: max_unlisted,
            max_pending_incoming_per_ip: max_per_ip,
            ..TransportLimits::default()
        };
        PendingGate::new(&topology, &limits, P2pMetrics::default())
    }

    fn from(ip: &str) -> Multiaddr {
        format!("/ip4/{ip}/tcp/40000").parse().unwrap()
    }

    #[test]
    fn outsiders_fill_their_share_and_never_a_listed_address() {
        let mut g = gate(3, 2);
        let id = ConnectionId::new_unchecked;
        g.admit(id(1), &from("192.0.2.1")).unwrap();
        g.admit(id(2), &from("192.0.2.1")).unwrap();
        // Per address first, then the outsiders' shared places.
        assert!(matches!(
            g.admit(id(3), &from("192.0.2.1")),
            Err(PendingRefused::PerAddress { max: 2, .. })
        ));
        g.admit(id(4), &from("192.0.2.2")).unwrap();
        assert!(matches!(
            g.admit(id(5), &from("192.0.2.3")),
            Err(PendingRefused::Unlisted { max: 3, .. })
        ));
        // A host the topology lists still gets in, up to its own per-address limit.
        g.admit(id(6), &from("10.0.0.1")).unwrap();
        g.admit(id(7), &from("10.0.0.1")).unwrap();
        assert!(g.admit(id(8), &from("10.0.0.1")).is_err());
        assert_eq!(g.metrics.pending_incoming.get(), 5);
        // A finished or failed handshake frees its place, once.
        g.release(id(4));
        g.release(id(4));
        g.admit(id(9), &from("192.0.2.3")).unwrap();
        assert!(g.admit(id(10), &from("192.0.2.4")).is_err());
        for i in [1, 2, 6, 7, 9] {
            g.release(id(i));
        }
        assert_eq!(g.metrics.pending_incoming.get(), 0);
        assert!(g.per_ip.is_empty() && g.unlisted == 0);
    }
}
