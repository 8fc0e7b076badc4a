//! Only hosts the topology lists may talk to us. This behaviour refuses every other PeerId when
//! its connection is established (after the Noise handshake proved the PeerId, before any
//! protocol handler exists), so nothing is ever served to an outsider. It also tells the swarm
//! where each allowed peer listens, so a request to a peer dials the topology's address.

use super::metrics::P2pMetrics;
use super::rpc::FrameWatch;
use crate::topology::Topology;
use libp2p::core::{Endpoint, transport::PortUse};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::task::{Context, Poll};

/// Outsiders logged individually; past this many, refusals are only counted.
const MAX_LOGGED: usize = 1024;

#[derive(Debug, thiserror::Error)]
#[error("peer {peer} is not in the topology")]
pub(crate) struct NotInTopology {
    peer: PeerId,
}

#[derive(Debug, thiserror::Error)]
#[error("peer {peer} is cut off by a deliberate partition")]
pub(crate) struct SeveredPeer {
    peer: PeerId,
}

pub(crate) struct Allowlist {
    addresses: HashMap<PeerId, Multiaddr>,
    logged: HashSet<PeerId>,
    metrics: P2pMetrics,
    watch: FrameWatch,
    severed: super::Severed,
}

impl Allowlist {
    pub(crate) fn new(
        topology: &Topology,
        me: PeerId,
        metrics: P2pMetrics,
        watch: FrameWatch,
        severed: super::Severed,
    ) -> Self {
        let addresses = topology
            .hosts()
            .iter()
            .filter_map(|h| Some((h.peer_id?, h.p2p_multiaddr()?)))
            .filter(|(p, _)| *p != me)
            .collect();
        Allowlist {
            addresses,
            logged: HashSet::new(),
            metrics,
            watch,
            severed,
        }
    }

    /// Admits `peer` or refuses it. Admitting also tells the codecs which peer the connection
    /// that the next behaviours set up is for (they run right after this one).
    fn check(&mut self, peer: PeerId, addr: &Multiaddr) -> Result<(), ConnectionDenied> {
        if self.severed.contains(&peer) {
            self.watch.set_connecting(None);
            return Err(ConnectionDenied::new(SeveredPeer { peer }));
        }
        if self.addresses.contains_key(&peer) {
            self.watch.set_connecting(Some(peer));
            return Ok(());
        }
        self.watch.set_connecting(None);
        self.metrics.refused_connections.inc();
        if self.logged.len() < MAX_LOGGED && self.logged.insert(peer) {
            tracing::warn!(%peer, %addr, "refused a peer that is not in the topology (logged once per peer)");
        }
        Err(ConnectionDenied::new(NotInTopology { peer }))
    }
}

impl NetworkBehaviour for Allowlist {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(peer, remote)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        let Some(peer) = peer else {
            return Ok(vec![]);
        };
        if self.severed.contains(&peer) {
            return Err(ConnectionDenied::new(SeveredPeer { peer }));
        }
        match self.addresses.get(&peer) {
            Some(a) => Ok(vec![a.clone()]),
            None => Err(ConnectionDenied::new(NotInTopology { peer })),
        }
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(peer, addr)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

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
