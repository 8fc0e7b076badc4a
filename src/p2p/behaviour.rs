//! What a scored libp2p node is made of: the connection limits, the allowlist, the
//! request-response [`Rpc`], gossipsub for announcements, identify, and ping for liveness,
//! composed in that order, and the swarm built around them (TCP + Noise + Yamux, with a
//! handshake timeout, a bound on streams per connection, and outgoing connections from ports of
//! their own: [`FreshPortDials`]). Construction only: nothing here runs the swarm or looks at a
//! message.
//!
//! Liveness is libp2p ping on every connection (a failed ping closes it, and the daemon sees
//! `PeerDown`) rather than a Heartbeat message of our own: it already runs on every connection
//! and measures what a heartbeat would.

use super::allowlist::Allowlist;
use super::limits::{PendingGate, connection_limits};
use super::rpc::{FrameWatch, Rpc};
use super::service::{P2pConfig, StartError};
use libp2p::Multiaddr;
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::gossipsub;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{Swarm, Transport, identify, noise, ping, tcp, yamux};
use prometheus_client::registry::Registry;
use scored_proto::{Announcement, IDENTIFY_PROTOCOL, TopologyFingerprint, WireMessage};
use std::pin::Pin;
use std::task::{Context, Poll};

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    // The limits first: a connection over them costs nothing more than its refusal.
    pub pending: PendingGate,
    pub limits: libp2p::connection_limits::Behaviour,
    // Right after the limits, so that an outsider is refused before any other behaviour sees
    // the connection, and so that the codecs know the peer when the rpc lanes set their
    // handlers up.
    pub allowlist: Allowlist,
    pub rpc: Rpc,
    pub gossip: gossipsub::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
}

/// The identify agent string: carries the topology fingerprint, so a mismatch is logged as soon
/// as two daemons connect.
pub(crate) fn agent(fp: TopologyFingerprint) -> String {
    format!("scored/{} topology={fp:016x}", env!("CARGO_PKG_VERSION"))
}

/// Gossipsub's mesh: each host forwards an announcement to `MESH_N` peers (between
/// `MESH_N_LOW` and `MESH_N_HIGH`), and keeps the connection to every mesh peer alive. The
/// defaults (6, 5, 12) made any connection a request opened (a lookup, a capacity query, a
/// regeneration survey) a candidate mesh peer that the far side grafts and keeps for good while
/// its mesh is short, as every mesh is at a cold start: 20 connections per host in a
/// 1,000-daemon lab, where the overlay dials 4. A mesh of 4 still reaches every host (a random
/// graph of degree 4 is connected; publishing floods to every connected peer), and each host
/// receives about 3 copies of an announcement instead of 5, each one a signature check.
pub(crate) const MESH_N: usize = 4;
pub(crate) const MESH_N_LOW: usize = 3;
pub(crate) const MESH_N_HIGH: usize = 6;
pub(crate) const MESH_OUTBOUND_MIN: usize = 2;

pub(crate) fn build_swarm(
    config: &P2pConfig,
    fp: TopologyFingerprint,
    watch: FrameWatch,
    registry: &mut Registry,
) -> Result<Swarm<Behaviour>, StartError> {
    let me = config.keypair.public().to_peer_id();
    let gossip_config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(config.gossip_heartbeat)
        .mesh_n(MESH_N)
        .mesh_n_low(MESH_N_LOW)
        .mesh_n_high(MESH_N_HIGH)
        .mesh_outbound_min(MESH_OUTBOUND_MIN)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(<Announcement as WireMessage>::MAX_FRAME + 1024)
        .build()
        .map_err(|e| StartError::setup("gossipsub configuration", e))?;
    let ping_config = ping::Config::new()
        .with_interval(config.ping_interval)
        .with_timeout(config.ping_interval * 2);
    let metrics = config.metrics.clone();
    let topology = config.topology.clone();
    let limits = config.limits;
    let mut yamux = yamux::Config::default();
    yamux.set_max_num_streams(limits.max_streams_per_connection);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        // libp2p's `with_tcp` puts no time limit on a handshake: a peer that connects and says
        // nothing would be held for ever.
        .with_other_transport(
            |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                Ok(FreshPortDials(tcp::tokio::Transport::new(
                    tcp::Config::default().nodelay(true),
                ))
                .upgrade(Version::V1Lazy)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux)
                .timeout(limits.handshake_timeout))
            },
        )
        .map_err(|e| StartError::setup("TCP transport", e))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key| {
            let gossip = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
            )?;
            Ok(Behaviour {
                pending: PendingGate::new(&topology, &limits, metrics.clone()),
                limits: connection_limits(&limits),
                allowlist: Allowlist::new(
                    &topology,
                    me,
                    metrics,
                    watch.clone(),
                    config.severed.clone(),
                ),
                rpc: Rpc::new(
                    &watch,
                    config.request_timeout,
                    config.move_timeout,
                    limits.max_requests_per_peer,
                ),
                gossip,
                identify: identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(agent(fp)),
                ),
                ping: ping::Behaviour::new(ping_config),
            })
        })
        .map_err(|e| StartError::setup("behaviours", e))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(config.idle_timeout)
                // Streams still choosing their protocol hold no permit of the rpc budget yet.
                .with_max_negotiating_inbound_streams(limits.max_requests_per_peer)
        })
        .build();
    Ok(swarm)
}

/// A transport whose every outgoing connection leaves from a new port, never from the port the
/// node listens on. libp2p dials from the listening port unless told otherwise (port reuse, for
/// NAT hole punching, which hosts of one data centre do not need), and request-response dials
/// with that default. Two daemons that dial each other at the same instant from their listening
/// ports make one TCP connection (a simultaneous open), on which both start Noise as its
/// initiator: both dials fail, and with them every request waiting on them. From ports of their
/// own, the two dials are two connections, and both succeed.
pub(crate) struct FreshPortDials<T>(pub T);

impl<T: Transport + Unpin> Transport for FreshPortDials<T> {
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = T::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.0.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.0.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let opts = DialOpts {
            port_use: PortUse::New,
            ..opts
        };
        self.0.dial(addr, opts)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll(cx)
    }
}
