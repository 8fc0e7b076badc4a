//! The one task that owns the swarm: it takes commands from [`Libp2pPeers`] handles, sends
//! requests and settles their answers, admits or refuses what peers ask (rate limit, topology
//! fingerprint), counts and logs what the transport's limits refused, answers location queries from the directory, hands every other request to the
//! daemon and sends its answer back, reacts to connections, gossip, identify and ping, and closes
//! the connections nothing uses ([`super::idle`]).
//! It decides nothing for the daemon and never waits on it: answers come back as futures.
//!
//! [`Libp2pPeers`]: super::Libp2pPeers

use super::behaviour::{Behaviour, BehaviourEvent};
use super::directory::Directory;
use super::gossip::Gossip;
use super::idle::IdleConnections;
use super::metrics::P2pMetrics;
use super::rpc::{
    Limited, Pending, RateLimiter, Refused, RefusedFrame, Reply, RpcEvent, RpcRequest, RpcResponse,
};
use super::service::P2pConfig;
use super::{AnnounceError, InboundEvent, Responder, deliver, reply_or_unavailable};
use crate::topology::{HostId, Topology};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use libp2p::gossipsub;
use libp2p::metrics::Recorder;
use libp2p::request_response::{self as rr, ResponseChannel};
use libp2p::swarm::{ConnectionDenied, ConnectionId, DialError, ListenError, SwarmEvent};
use libp2p::{PeerId, Swarm, connection_limits, identify, ping};
use scored_proto::{GroupRequest, Refusal, Response, TopologyFingerprint};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// What a [`Libp2pPeers`](super::Libp2pPeers) handle asks of the driver.
pub(crate) enum Command {
    Request(PeerId, RpcRequest, Reply),
    Publish(Vec<u8>, oneshot::Sender<Result<(), AnnounceError>>),
    /// A groups announcement, on `/scored/announce/2`.
    PublishGroups(Vec<u8>, oneshot::Sender<Result<(), AnnounceError>>),
    Connected(oneshot::Sender<Vec<PeerId>>),
    GossipMesh(oneshot::Sender<usize>),
}

/// A daemon's answer, ready to go back on its response channel.
struct Answer {
    channel: ResponseChannel<RpcResponse>,
    response: RpcResponse,
}

/// The channels the driver reads from and writes to.
pub(crate) struct Channels {
    pub inbound: mpsc::Sender<InboundEvent>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub refused: mpsc::Receiver<RefusedFrame>,
    /// Kept here as connections open and close, read by the daemon through its handle.
    pub connected: super::Connected,
}

pub(crate) struct Driver {
    swarm: Swarm<Behaviour>,
    topology: Arc<Topology>,
    fingerprint: TopologyFingerprint,
    directory: Arc<Directory>,
    inbound: mpsc::Sender<InboundEvent>,
    connected: super::Connected,
    metrics: P2pMetrics,
    /// libp2p's own metrics, when the daemon registered them.
    libp2p_metrics: Option<libp2p::metrics::Metrics>,
    commands: mpsc::UnboundedReceiver<Command>,
    refused: mpsc::Receiver<RefusedFrame>,
    /// How long the daemon may take to answer a request.
    request_timeout: Duration,
    /// How long it may take to answer a move of a group move: the migration's time.
    move_timeout: Duration,
    pending: Pending,
    /// Outgoing dials under way, and to whom.
    dials: HashMap<ConnectionId, PeerId>,
    limiter: RateLimiter,
    answers: FuturesUnordered<BoxFuture<'static, Answer>>,
    gossip: Gossip,
    severed: super::Severed,
    /// Peers already named in the log, with why (a transport limit's reason, a topology
    /// mismatch, gossip dropped on the way to them): each is logged once, counted always.
    /// Bounded by the topology's hosts × the reasons.
    named: HashSet<(PeerId, &'static str)>,
    /// When each connection was last used, so the ones gossip alone keeps open can close.
    idle: IdleConnections,
}

/// [`Driver::named`]'s reasons beside the transport limits'.
const TOPOLOGY_MISMATCH: &str = "topology_mismatch";
const GOSSIP_DROPPED: &str = "gossip_dropped";

impl Driver {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        config: &P2pConfig,
        fingerprint: TopologyFingerprint,
        directory: Arc<Directory>,
        gossip: Gossip,
        channels: Channels,
        libp2p_metrics: Option<libp2p::metrics::Metrics>,
    ) -> Self {
        Driver {
            swarm,
            topology: config.topology.clone(),
            fingerprint,
            directory,
            inbound: channels.inbound,
            connected: channels.connected,
            metrics: config.metrics.clone(),
            libp2p_metrics,
            commands: channels.commands,
            refused: channels.refused,
            request_timeout: config.request_timeout,
            move_timeout: config.move_timeout,
            pending: Pending::default(),
            dials: HashMap::new(),
            limiter: RateLimiter::new(config.rate_limits),
            answers: FuturesUnordered::new(),
            gossip,
            severed: config.severed.clone(),
            named: HashSet::new(),
            idle: IdleConnections::new(
                config.idle_timeout,
                super::gossip::overlay_neighbours(&config.topology, config.me),
            ),
        }
    }

    pub(crate) async fn run(
        mut self,
        redial: Duration,
        inventory: Option<Duration>,
        first_inventory: Duration,
    ) {
        self.dial_fingers();
        let mut redial = tokio::time::interval(redial);
        let republish = inventory.is_some();
        let mut inventory = tokio::time::interval_at(
            tokio::time::Instant::now() + first_inventory,
            inventory.unwrap_or(Duration::from_secs(3600)),
        );
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.swarm_event(event),
                Some(bad) = self.refused.recv() => self.refused(bad),
                Some(a) = self.answers.next(), if !self.answers.is_empty() => {
                    // A daemon's answer is counted as served, refusal or not, once it is sent.
                    self.respond(a.channel, a.response, true);
                }
                _ = redial.tick() => {
                    self.drop_severed();
                    self.close_idle();
                    self.dial_fingers();
                    self.limiter.prune(Instant::now());
                }
                _ = inventory.tick(), if republish => self.gossip.publish_inventory(&mut self.swarm.behaviour_mut().gossip),
            }
        }
        tracing::debug!("p2p node stopped");
    }

    /// Closes the connections a deliberate partition (the lab's) cut since the last tick; the
    /// allowlist refuses new ones.
    fn drop_severed(&mut self) {
        if self.severed.is_empty() {
            return;
        }
        let cut: Vec<PeerId> = self
            .swarm
            .connected_peers()
            .filter(|p| self.severed.contains(p))
            .copied()
            .collect();
        for p in cut {
            let _ = self.swarm.disconnect_peer_id(p);
        }
    }

    /// Closes the connections nothing has used for the idle timeout, which libp2p itself
    /// keeps open for gossip's streams (`idle`).
    fn close_idle(&mut self) {
        for p in self.idle.idle(self.swarm.connected_peers(), Instant::now()) {
            tracing::debug!(peer = %self.host_name(&p), "closing an idle connection");
            let _ = self.swarm.disconnect_peer_id(p);
        }
    }

    fn host_name(&self, peer: &PeerId) -> String {
        self.topology
            .host_by_peer(peer)
            .map(|h| h.name.clone())
            .unwrap_or_else(|| peer.to_string())
    }

    fn command(&mut self, c: Command) {
        let b = self.swarm.behaviour_mut();
        match c {
            Command::Request(peer, request, reply) => {
                self.metrics.sent(request.kind().protocol());
                self.send_request(peer, request, reply, true);
            }
            Command::Publish(data, tx) => {
                let _ = tx.send(self.gossip.publish(&mut b.gossip, data));
            }
            Command::PublishGroups(data, tx) => {
                let _ = tx.send(self.gossip.publish_groups(&mut b.gossip, data));
            }
            Command::Connected(tx) => {
                let _ = tx.send(self.swarm.connected_peers().copied().collect());
            }
            Command::GossipMesh(tx) => {
                let _ = tx.send(self.gossip.mesh_size(&b.gossip));
            }
        }
    }

    /// Dials the fingers that have no connection, remembering the dials (the swarm reports only
    /// the dials its behaviours start).
    fn dial_fingers(&mut self) {
        self.dials.extend(self.gossip.dial_fingers(&mut self.swarm));
    }

    /// Hands a request to libp2p. One that will wait for a dial already under way (libp2p does not
    /// dial again) keeps a copy, to be sent once more if that older dial fails.
    fn send_request(&mut self, peer: PeerId, request: RpcRequest, reply: Reply, retry: bool) {
        let joins_older_dial =
            retry && !self.swarm.is_connected(&peer) && self.dials.values().any(|p| *p == peer);
        let copy = joins_older_dial.then(|| (peer, request.clone()));
        let (kind, id) = self.swarm.behaviour_mut().rpc.send_request(&peer, request);
        self.pending.insert(kind, id, reply, copy);
        self.idle.started(peer, Instant::now());
    }

    /// Sends a response; `counted` responses whose peer still waits count as served.
    fn respond(
        &mut self,
        channel: ResponseChannel<RpcResponse>,
        response: RpcResponse,
        counted: bool,
    ) {
        // A closed channel means the peer gave up: nothing to send, nothing served. Counted
        // before it is handed over: the connection's own task writes the answer as soon as it
        // has it, so the peer may read it (and look at this counter) before a count made after
        // the hand-over has run (seen: the survey test read 0 once in about 50 runs).
        if counted && channel.is_open() {
            self.metrics.served(response.kind().protocol());
        }
        self.swarm
            .behaviour_mut()
            .rpc
            .send_response(channel, response);
    }

    fn refused(&mut self, bad: RefusedFrame) {
        let error = match bad.why {
            Refused::Malformed(e) => e,
            Refused::OverBudget(over) => {
                // Not necessarily the peer's fault (the host's budget may be spent by others):
                // its stream is dropped, its connection kept. The codec counted it.
                let reason = over.reason();
                if let Some(peer) = bad.peer
                    && self.named.insert((peer, reason))
                {
                    tracing::warn!(peer = %self.host_name(&peer), protocol = bad.protocol, %over, "dropped a request stream over the transport's budget (logged once per peer and reason)");
                }
                return;
            }
        };
        self.metrics.malformed_frames.inc();
        let Some(peer) = bad.peer else {
            tracing::warn!(protocol = bad.protocol, %error, "malformed frame from an unidentified connection");
            return;
        };
        tracing::warn!(peer = %self.host_name(&peer), protocol = bad.protocol, %error, "malformed frame: disconnecting the peer");
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Counts a connection that libp2p's connection limits refused, naming its peer once.
    fn connection_denied(&mut self, peer: Option<PeerId>, cause: &ConnectionDenied) {
        let Some(exceeded) = cause.downcast_ref::<connection_limits::Exceeded>() else {
            return;
        };
        self.metrics.reject(super::metrics::CONNECTION_LIMIT);
        let reason = super::metrics::CONNECTION_LIMIT;
        if let Some(peer) = peer
            && self.topology.host_by_peer(&peer).is_some()
            && self.named.insert((peer, reason))
        {
            tracing::warn!(peer = %self.host_name(&peer), %exceeded, "refused a connection over the transport's limits (logged once per peer)");
        }
    }

    /// The sender's host, if it made its request with our topology and is within its
    /// allowance; otherwise the refusal to send back. The topology comes first: a peer started
    /// with another file must keep hearing why (and the mismatch metric keep rising), not be
    /// told it asks too often.
    fn admit(&mut self, peer: &PeerId, request: &RpcRequest) -> Result<HostId, Refusal> {
        if request.topology() != self.fingerprint {
            self.metrics.topology_mismatches.inc();
            if self.named.insert((*peer, TOPOLOGY_MISMATCH)) {
                tracing::error!(
                    peer = %self.host_name(peer),
                    theirs = format!("{:016x}", request.topology()),
                    ours = format!("{:016x}", self.fingerprint),
                    "peer runs with a different topology file: refusing its requests until both use the same file"
                );
            }
            return Err(Refusal::TopologyMismatch {
                expected: self.fingerprint,
            });
        }
        if let Err(limited) = self.limiter.admit(*peer, request.kind(), Instant::now()) {
            return Err(self.rate_limited(peer, limited));
        }
        // The allowlist admitted the connection, so the peer is in the topology.
        self.topology
            .host_by_peer(peer)
            .map(|h| h.id)
            .ok_or_else(|| Refusal::Unavailable {
                reason: "unknown peer".into(),
            })
    }

    fn rate_limited(&mut self, peer: &PeerId, limited: Limited) -> Refusal {
        self.metrics.reject(super::metrics::RATE_LIMITED);
        if limited.first {
            tracing::warn!(
                peer = %self.host_name(peer),
                protocol = limited.kind.protocol(),
                retry_after = ?limited.retry_after,
                "peer exceeds its request allowance: refusing (logged once per peer and protocol until it calms down)"
            );
        }
        Refusal::Unavailable {
            reason: limited.to_string(),
        }
    }

    fn inbound_request(
        &mut self,
        peer: PeerId,
        request: RpcRequest,
        channel: ResponseChannel<RpcResponse>,
    ) {
        let from = match self.admit(&peer, &request) {
            Ok(from) => from,
            Err(refusal) => {
                let refused = RpcResponse::refused(request.kind(), refusal);
                self.respond(channel, refused, false);
                return;
            }
        };
        match request {
            RpcRequest::Location(r) => {
                // The inventory, when asked for, is this host's own word about itself: the
                // asker knows who answers from the connection (Noise, the peer id the topology
                // lists), which is all a gossip signature would add.
                let answer =
                    RpcResponse::Location(Response::Ok(self.directory.answer_query(&r.body)));
                self.respond(channel, answer, true);
            }
            RpcRequest::Token(r) => {
                self.hand_to_daemon(channel, RpcResponse::Token, |reply| InboundEvent::Token {
                    from,
                    token: r.body,
                    reply,
                })
            }
            RpcRequest::Capacity(r) => {
                self.hand_to_daemon(channel, RpcResponse::Capacity, |reply| {
                    InboundEvent::Capacity {
                        from,
                        request: r.body,
                        reply,
                    }
                })
            }
            RpcRequest::Stats(r) => {
                self.hand_to_daemon(channel, RpcResponse::Stats, |reply| InboundEvent::Stats {
                    from,
                    request: r.body,
                    reply,
                })
            }
            RpcRequest::Group(r) => match r.body {
                GroupRequest::Survey(request) => {
                    self.hand_to_daemon(channel, RpcResponse::survey, |reply| {
                        InboundEvent::Survey {
                            from,
                            request,
                            reply,
                        }
                    })
                }
                // Answered when the migration ended: the daemon has the migration's time.
                GroupRequest::Move(request) => self.hand_to_daemon_within(
                    self.move_timeout,
                    channel,
                    RpcResponse::moved,
                    |reply| InboundEvent::GroupMove {
                        from,
                        request,
                        reply,
                    },
                ),
            },
        }
    }

    /// Queues a request for the daemon; its answer (or a refusal when the daemon gives none
    /// within the request timeout) goes back on `channel`.
    fn hand_to_daemon<T: Send + 'static>(
        &mut self,
        channel: ResponseChannel<RpcResponse>,
        wrap: fn(Response<T>) -> RpcResponse,
        make_event: impl FnOnce(Responder<T>) -> InboundEvent,
    ) {
        self.hand_to_daemon_within(self.request_timeout, channel, wrap, make_event);
    }

    /// [`Self::hand_to_daemon`], the daemon given `limit` to answer.
    fn hand_to_daemon_within<T: Send + 'static>(
        &mut self,
        limit: Duration,
        channel: ResponseChannel<RpcResponse>,
        wrap: fn(Response<T>) -> RpcResponse,
        make_event: impl FnOnce(Responder<T>) -> InboundEvent,
    ) {
        let rx = deliver(&self.inbound, make_event);
        self.answers.push(
            async move {
                let r = match tokio::time::timeout(limit, rx).await {
                    Ok(r) => reply_or_unavailable(r),
                    Err(_) => Response::Refused(Refusal::Unavailable {
                        reason: format!("the daemon gave no answer within {limit:?}"),
                    }),
                };
                Answer {
                    channel,
                    response: wrap(r),
                }
            }
            .boxed(),
        );
    }

    fn rpc_event(&mut self, e: RpcEvent) {
        let (kind, event) = e.split();
        match event {
            rr::Event::Message {
                peer,
                message:
                    rr::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                self.idle.started(peer, Instant::now());
                self.inbound_request(peer, request, channel)
            }
            rr::Event::Message {
                peer,
                message:
                    rr::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.idle.ended(peer, Instant::now());
                self.pending.settle(kind, request_id, Ok(response));
            }
            // A response that failed to decode was reported by the codec already.
            rr::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.idle.ended(peer, Instant::now());
                if let Some((peer, request, reply)) =
                    self.pending.settle(kind, request_id, Err(error.into()))
                {
                    tracing::debug!(peer = %self.host_name(&peer), protocol = kind.protocol(), "an older dial failed: dialling again for the request that waited on it");
                    self.send_request(peer, request, reply, false);
                }
            }
            rr::Event::InboundFailure { peer, error, .. } => {
                self.idle.ended(peer, Instant::now());
                tracing::debug!(%peer, protocol = kind.protocol(), %error, "inbound request failed");
            }
            rr::Event::ResponseSent { peer, .. } => self.idle.ended(peer, Instant::now()),
        }
    }

    fn behaviour_event(&mut self, event: BehaviourEvent) {
        if let Some(m) = &self.libp2p_metrics {
            match &event {
                BehaviourEvent::Gossip(e) => m.record(e),
                BehaviourEvent::Identify(e) => m.record(e),
                BehaviourEvent::Ping(e) => m.record(e),
                _ => {}
            }
        }
        match event {
            BehaviourEvent::Pending(never) | BehaviourEvent::Limits(never) => match never {},
            BehaviourEvent::Allowlist(never) => match never {},
            BehaviourEvent::Rpc(e) => self.rpc_event(e),
            BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let gossip = &mut self.swarm.behaviour_mut().gossip;
                let verdict = self
                    .gossip
                    .receive(gossip, propagation_source, message_id, message);
                if verdict != gossipsub::MessageAcceptance::Accept {
                    self.metrics.rejected_announcements.inc();
                }
            }
            BehaviourEvent::Gossip(gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            }) => {
                let dropped = failed_messages.priority + failed_messages.non_priority;
                self.metrics.gossip_dropped.inc_by(dropped as u64);
                if self.named.insert((peer_id, GOSSIP_DROPPED)) {
                    tracing::warn!(
                        peer = %self.host_name(&peer_id),
                        dropped,
                        "gossip could not keep up with a peer: messages to it were dropped (logged once per peer; scored_p2p_gossip_dropped_total counts them all)"
                    );
                }
            }
            BehaviourEvent::Gossip(_) => {}
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let ours = format!("topology={:016x}", self.fingerprint);
                if !info.agent_version.contains(&ours)
                    && self.named.insert((peer_id, TOPOLOGY_MISMATCH))
                {
                    tracing::error!(
                        peer = %self.host_name(&peer_id),
                        agent = %info.agent_version,
                        ours,
                        "peer runs with a different topology file: its requests will be refused"
                    );
                }
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e),
            }) if !matches!(e, ping::Failure::Unsupported) => {
                tracing::warn!(peer = %self.host_name(&peer), error = %e, "liveness probe failed: closing the connection");
                self.swarm.close_connection(connection);
            }
            BehaviourEvent::Ping(_) => {}
        }
    }

    fn swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(m) = &self.libp2p_metrics {
            m.record(&event);
        }
        match event {
            SwarmEvent::Behaviour(e) => self.behaviour_event(e),
            SwarmEvent::Dialing {
                peer_id: Some(peer),
                connection_id,
            } => {
                self.dials.insert(connection_id, peer);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                connection_id,
                ..
            } => {
                self.dials.remove(&connection_id);
                self.idle.used(peer_id, Instant::now());
                if num_established.get() == 1
                    && let Some(h) = self.topology.host_by_peer(&peer_id)
                {
                    tracing::debug!(peer = %h.name, "peer up");
                    self.connected.set(h.id, true);
                    let _ = self.inbound.try_send(InboundEvent::PeerUp(h.id));
                }
            }
            // The last connection to a peer closed (others may still be open otherwise).
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } => {
                self.idle.closed(&peer_id);
                if let Some(h) = self.topology.host_by_peer(&peer_id) {
                    tracing::debug!(peer = %h.name, cause = ?cause, "peer down");
                    self.connected.set(h.id, false);
                    let _ = self.inbound.try_send(InboundEvent::PeerDown(h.id));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                error,
                connection_id,
            } => {
                self.dials.remove(&connection_id);
                if let DialError::Denied { cause } = &error {
                    self.connection_denied(peer_id, cause);
                }
                tracing::debug!(peer = ?peer_id.map(|p| self.host_name(&p)), %error, "dial failed");
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                peer_id,
                ..
            } => {
                if let ListenError::Denied { cause } = &error {
                    self.connection_denied(peer_id, cause);
                }
                tracing::debug!(%send_back_addr, %error, "incoming connection failed");
            }
            _ => {}
        }
    }
}
