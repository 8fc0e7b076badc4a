//! [`Peers`] over libp2p: TCP + Noise + Yamux, request-response for the token, location,
//! capacity and statistics protocols (scored-proto frames), gossipsub for announcements,
//! identify, and ping for liveness.
//!
//! Announcements travel by gossipsub rather than a request to every host: a migrating host
//! would otherwise open up to 2,559 streams per migration in the dc-2560 data centre, while
//! gossipsub reaches everyone in O(log n) hops over a handful of kept connections, signs each
//! message with its author's key (so a host can only speak for itself), and its best-effort
//! delivery is enough: a missed announcement only leaves a cache entry stale, which the
//! directory corrects on the next lookup. Liveness is libp2p ping on every connection (a failed
//! ping closes it, and the daemon sees `PeerDown`) rather than a Heartbeat message of our own:
//! it already runs on every connection and measures what a heartbeat would.
//!
//! One task owns the swarm; handles talk to it over a channel. The task ends, closing every
//! connection, when the last handle is dropped.

use super::allowlist::Allowlist;
use super::codec::{FrameCodec, FrameWatch, MalformedFrame};
use super::directory::Directory;
use super::metrics::P2pMetrics;
use super::{
    Inbound, InboundEvent, PeerError, Peers, Responder, deliver, fingerprint, reply_or_unavailable,
};
use crate::topology::{HostId, Topology};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::identity::Keypair;
use libp2p::metrics::Recorder;
use libp2p::request_response::{self as rr, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, noise, ping, tcp, yamux};
use prometheus_client::registry::Registry;
use scored_proto::{
    ANNOUNCE_TOPIC, Announcement, CAPACITY_PROTOCOL, CapacityProtocol, CapacityRequest,
    CapacityResponse, IDENTIFY_PROTOCOL, LOCATION_PROTOCOL, LocationProtocol, LocationRequest,
    LocationResponse, Refusal, Request, Response, STATS_PROTOCOL, StatsProtocol, StatsRequest,
    StatsResponse, TOKEN_PROTOCOL, Token, TokenAck, TokenProtocol, TopologyFingerprint, VmId,
    WireMessage,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How a libp2p node is set up. [`P2pConfig::new`] gives the production defaults.
#[derive(Clone, Debug)]
pub struct P2pConfig {
    /// The host key (`identity::load`); its PeerId must be the one the topology lists for `me`.
    pub keypair: Keypair,
    pub topology: Arc<Topology>,
    pub me: HostId,
    /// Where to listen; by default the address and port the topology gives `me`.
    pub listen: Option<Multiaddr>,
    pub metrics: P2pMetrics,
    /// Longest any request may take inside the swarm (callers usually give up sooner).
    pub request_timeout: Duration,
    /// A connection with no open stream and nothing to keep it closes after this long.
    pub idle_timeout: Duration,
    /// Liveness probe period on every connection.
    pub ping_interval: Duration,
    pub gossip_heartbeat: Duration,
    /// How often this host republishes its inventory.
    pub inventory_interval: Duration,
    /// How often dropped gossip connections are re-dialled.
    pub redial_interval: Duration,
}

impl P2pConfig {
    pub fn new(keypair: Keypair, topology: Arc<Topology>, me: HostId) -> Self {
        P2pConfig {
            keypair,
            topology,
            me,
            listen: None,
            metrics: P2pMetrics::default(),
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            ping_interval: Duration::from_secs(5),
            gossip_heartbeat: Duration::from_millis(700),
            inventory_interval: Duration::from_secs(300),
            redial_interval: Duration::from_secs(10),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the host key's PeerId is {key}, but the topology lists {listed} for host {host}: wrong key file or wrong host name"
    )]
    WrongKey {
        host: String,
        key: String,
        listed: String,
    },
    #[error("host {host} has no address in the topology and no listen address was given")]
    NoAddress { host: String },
    #[error("cannot listen on {addr}: {message}")]
    Listen { addr: Multiaddr, message: String },
    #[error("libp2p setup: {0}")]
    Setup(String),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    // First, so that an outsider is refused before any other behaviour sees the connection.
    allowlist: Allowlist,
    token: rr::Behaviour<FrameCodec<TokenProtocol>>,
    location: rr::Behaviour<FrameCodec<LocationProtocol>>,
    capacity: rr::Behaviour<FrameCodec<CapacityProtocol>>,
    stats: rr::Behaviour<FrameCodec<StatsProtocol>>,
    gossip: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// Why an outbound request got no response (the handle turns it into a [`PeerError`]).
#[derive(Debug)]
enum Failure {
    Unreachable(String),
    Protocol(String),
    Timeout,
}

type Reply<T> = oneshot::Sender<Result<T, Failure>>;
type Pending<T> = HashMap<OutboundRequestId, Reply<T>>;

enum Command {
    Token(PeerId, Request<Token>, Reply<Response<TokenAck>>),
    Location(
        PeerId,
        Request<LocationRequest>,
        Reply<Response<LocationResponse>>,
    ),
    Capacity(
        PeerId,
        Request<CapacityRequest>,
        Reply<Response<CapacityResponse>>,
    ),
    Stats(
        PeerId,
        Request<StatsRequest>,
        Reply<Response<StatsResponse>>,
    ),
    Publish(Vec<u8>, oneshot::Sender<Result<(), String>>),
    Connected(oneshot::Sender<Vec<PeerId>>),
    GossipPeers(oneshot::Sender<usize>),
}

/// A daemon's answer, ready to go back on its response channel.
enum Answer {
    Token(ResponseChannel<Response<TokenAck>>, Response<TokenAck>),
    Capacity(
        ResponseChannel<Response<CapacityResponse>>,
        Response<CapacityResponse>,
    ),
    Stats(
        ResponseChannel<Response<StatsResponse>>,
        Response<StatsResponse>,
    ),
}

struct Shared {
    me: HostId,
    peer_id: PeerId,
    topology: Arc<Topology>,
    directory: Arc<Directory>,
    fingerprint: TopologyFingerprint,
    metrics: P2pMetrics,
    listen: Vec<Multiaddr>,
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A handle to this host's libp2p node; clones share the node.
#[derive(Clone)]
pub struct Libp2pPeers {
    shared: Arc<Shared>,
}

impl Libp2pPeers {
    /// Starts the node: listens, dials a few peers for gossip, and returns the handle and the
    /// queue of requests the daemon must answer. Location requests are answered from
    /// `directory` without involving the daemon.
    pub async fn start(
        config: P2pConfig,
        directory: Arc<Directory>,
    ) -> Result<(Libp2pPeers, Inbound), StartError> {
        Self::start_observed(config, directory, None).await
    }

    /// [`Libp2pPeers::start`], with libp2p's own metrics (connections, bytes by direction and
    /// protocol stack, gossip, identify, ping) registered in `registry` as `scored_libp2p_*`.
    pub async fn start_observed(
        config: P2pConfig,
        directory: Arc<Directory>,
        registry: Option<&mut Registry>,
    ) -> Result<(Libp2pPeers, Inbound), StartError> {
        let topology = config.topology.clone();
        let host = topology.host(config.me);
        let peer_id = config.keypair.public().to_peer_id();
        if host.peer_id != Some(peer_id) {
            return Err(StartError::WrongKey {
                host: host.name.clone(),
                key: peer_id.to_string(),
                listed: host
                    .peer_id
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "no peer_id".into()),
            });
        }
        let listen = match config.listen.clone().or_else(|| host.p2p_multiaddr()) {
            Some(a) => a,
            None => {
                return Err(StartError::NoAddress {
                    host: host.name.clone(),
                });
            }
        };
        let fp = fingerprint(&topology);
        let (watch, malformed) = FrameWatch::new(256);
        let mut scratch = Registry::default();
        let (registry, observed) = match registry {
            Some(r) => (r.sub_registry_with_prefix("scored"), true),
            None => (&mut scratch, false),
        };
        let mut swarm = build_swarm(&config, fp, watch, registry)?;
        let libp2p_metrics = observed.then(|| libp2p::metrics::Metrics::new(registry));
        let topic = IdentTopic::new(ANNOUNCE_TOPIC);
        swarm
            .behaviour_mut()
            .gossip
            .subscribe(&topic)
            .map_err(|e| StartError::Setup(format!("gossip subscribe: {e}")))?;
        swarm
            .listen_on(listen.clone())
            .map_err(|e| StartError::Listen {
                addr: listen.clone(),
                message: e.to_string(),
            })?;
        let listening = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr { address, .. } => return Ok(address),
                    SwarmEvent::ListenerClosed { reason: Err(e), .. }
                    | SwarmEvent::ListenerError { error: e, .. } => return Err(e.to_string()),
                    _ => {}
                }
            }
        })
        .await;
        let bound = match listening {
            Ok(Ok(a)) => a,
            Ok(Err(message)) => {
                return Err(StartError::Listen {
                    addr: listen,
                    message,
                });
            }
            Err(_) => {
                return Err(StartError::Listen {
                    addr: listen,
                    message: "no listen address after 10 s".into(),
                });
            }
        };
        tracing::info!(host = %host.name, %peer_id, address = %bound, "p2p node listening");

        let (inbound_tx, inbound) = Inbound::channel();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let gossip_peers = gossip_fingers(&topology, config.me);
        let driver = Driver {
            swarm,
            topology: topology.clone(),
            me: config.me,
            fingerprint: fp,
            directory: directory.clone(),
            inbound: inbound_tx,
            metrics: config.metrics.clone(),
            libp2p_metrics,
            commands: commands_rx,
            malformed,
            topic,
            request_timeout: config.request_timeout,
            pending_token: HashMap::new(),
            pending_location: HashMap::new(),
            pending_capacity: HashMap::new(),
            pending_stats: HashMap::new(),
            answers: FuturesUnordered::new(),
            mismatch_logged: HashSet::new(),
            gossip_peers,
        };
        let task = tokio::spawn(driver.run(
            config.redial_interval,
            config.inventory_interval,
            config.gossip_heartbeat * 3,
        ));
        Ok((
            Libp2pPeers {
                shared: Arc::new(Shared {
                    me: config.me,
                    peer_id,
                    topology,
                    directory,
                    fingerprint: fp,
                    metrics: config.metrics,
                    listen: vec![bound],
                    commands,
                    task,
                }),
            },
            inbound,
        ))
    }

    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.shared.listen
    }

    pub fn metrics(&self) -> &P2pMetrics {
        &self.shared.metrics
    }

    pub fn fingerprint(&self) -> TopologyFingerprint {
        self.shared.fingerprint
    }

    /// Hosts with an open connection now.
    pub async fn connected(&self) -> Vec<HostId> {
        let (tx, rx) = oneshot::channel();
        if self.shared.commands.send(Command::Connected(tx)).is_err() {
            return vec![];
        }
        let peers = rx.await.unwrap_or_default();
        peers
            .iter()
            .filter_map(|p| self.shared.topology.host_by_peer(p).map(|h| h.id))
            .collect()
    }

    /// Peers in this host's gossip mesh for announcements.
    pub async fn gossip_mesh(&self) -> usize {
        let (tx, rx) = oneshot::channel();
        if self.shared.commands.send(Command::GossipPeers(tx)).is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    fn peer(&self, host: HostId) -> Result<PeerId, PeerError> {
        let h = self
            .shared
            .topology
            .hosts()
            .get(host.index())
            .ok_or_else(|| PeerError::NoIdentity {
                host: format!("#{}", host.0),
            })?;
        if host == self.shared.me {
            return Err(PeerError::ToSelf {
                host: h.name.clone(),
            });
        }
        h.peer_id.ok_or_else(|| PeerError::NoIdentity {
            host: h.name.clone(),
        })
    }

    async fn request<B: WireMessage, T: WireMessage>(
        &self,
        host: HostId,
        body: B,
        timeout: Duration,
        command: fn(PeerId, Request<B>, Reply<Response<T>>) -> Command,
    ) -> Result<T, PeerError> {
        let peer = self.peer(host)?;
        let name = || self.shared.topology.host(host).name.clone();
        let (tx, rx) = oneshot::channel();
        let request = Request {
            topology: self.shared.fingerprint,
            body,
        };
        self.shared
            .commands
            .send(command(peer, request, tx))
            .map_err(|_| PeerError::Closed)?;
        let what = B::NAME;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) | Ok(Ok(Err(Failure::Timeout))) => Err(PeerError::Timeout {
                host: name(),
                what,
                after: timeout,
            }),
            Ok(Err(_)) => Err(PeerError::Closed),
            Ok(Ok(Err(Failure::Unreachable(reason)))) => Err(PeerError::Unreachable {
                host: name(),
                reason,
            }),
            Ok(Ok(Err(Failure::Protocol(message)))) => Err(PeerError::Protocol {
                host: name(),
                what,
                message,
            }),
            Ok(Ok(Ok(Response::Refused(refusal)))) => Err(PeerError::Refused {
                host: name(),
                what,
                refusal,
            }),
            Ok(Ok(Ok(Response::Ok(v)))) => Ok(v),
        }
    }
}

impl Peers for Libp2pPeers {
    fn me(&self) -> HostId {
        self.shared.me
    }

    fn topology(&self) -> &Arc<Topology> {
        &self.shared.topology
    }

    fn directory(&self) -> &Arc<Directory> {
        &self.shared.directory
    }

    async fn send_token(
        &self,
        to: HostId,
        token: Token,
        timeout: Duration,
    ) -> Result<TokenAck, PeerError> {
        self.request(to, token, timeout, Command::Token).await
    }

    async fn query_locations(
        &self,
        host: HostId,
        vms: Vec<VmId>,
        timeout: Duration,
    ) -> Result<LocationResponse, PeerError> {
        self.request(host, LocationRequest { vms }, timeout, Command::Location)
            .await
    }

    async fn query_capacity(
        &self,
        host: HostId,
        request: CapacityRequest,
        timeout: Duration,
    ) -> Result<CapacityResponse, PeerError> {
        self.request(host, request, timeout, Command::Capacity)
            .await
    }

    async fn query_stats(
        &self,
        host: HostId,
        request: StatsRequest,
        timeout: Duration,
    ) -> Result<StatsResponse, PeerError> {
        self.request(host, request, timeout, Command::Stats).await
    }

    async fn publish(&self, announcement: Announcement) -> Result<(), PeerError> {
        let data =
            scored_proto::encode(&announcement).map_err(|e| PeerError::Announce(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Publish(data, tx))
            .map_err(|_| PeerError::Closed)?;
        rx.await
            .map_err(|_| PeerError::Closed)?
            .map_err(PeerError::Announce)
    }
}

fn build_swarm(
    config: &P2pConfig,
    fp: TopologyFingerprint,
    watch: FrameWatch,
    registry: &mut Registry,
) -> Result<Swarm<Behaviour>, StartError> {
    let setup = |e: &dyn std::fmt::Display| StartError::Setup(e.to_string());
    let me = config.keypair.public().to_peer_id();
    let rr_config = rr::Config::default().with_request_timeout(config.request_timeout);
    let gossip_config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(config.gossip_heartbeat)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(<Announcement as WireMessage>::MAX_FRAME + 1024)
        .build()
        .map_err(|e| setup(&e))?;
    let agent = format!("scored/{} topology={fp:016x}", env!("CARGO_PKG_VERSION"));
    let ping_config = ping::Config::new()
        .with_interval(config.ping_interval)
        .with_timeout(config.ping_interval * 2);
    let metrics = config.metrics.clone();
    let topology = config.topology.clone();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| setup(&e))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key| {
            let gossip = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
            )?;
            let rr = |id: &'static str| [(StreamProtocol::new(id), ProtocolSupport::Full)];
            Ok(Behaviour {
                allowlist: Allowlist::new(&topology, me, metrics, watch.clone()),
                token: rr::Behaviour::with_codec(
                    FrameCodec::new(watch.clone()),
                    rr(TOKEN_PROTOCOL),
                    rr_config.clone(),
                ),
                location: rr::Behaviour::with_codec(
                    FrameCodec::new(watch.clone()),
                    rr(LOCATION_PROTOCOL),
                    rr_config.clone(),
                ),
                capacity: rr::Behaviour::with_codec(
                    FrameCodec::new(watch.clone()),
                    rr(CAPACITY_PROTOCOL),
                    rr_config.clone(),
                ),
                stats: rr::Behaviour::with_codec(
                    FrameCodec::new(watch.clone()),
                    rr(STATS_PROTOCOL),
                    rr_config,
                ),
                gossip,
                identify: identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(agent),
                ),
                ping: ping::Behaviour::new(ping_config),
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        .build();
    Ok(swarm)
}

/// The peers this host keeps connections to for gossip: those at distances 1, 2, 4, … along
/// the hosts sorted by name. Every host doing the same gives a connected overlay of
/// O(log n) connections per host and O(log n) hops between any two.
fn gossip_fingers(topology: &Topology, me: HostId) -> Vec<PeerId> {
    let mut hosts: Vec<_> = topology
        .hosts()
        .iter()
        .filter(|h| h.peer_id.is_some() && h.address.is_some())
        .collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    let Some(i) = hosts.iter().position(|h| h.id == me) else {
        return vec![];
    };
    let n = hosts.len();
    let mut out = Vec::new();
    let mut d = 1;
    while d < n {
        if let Some(p) = hosts[(i + d) % n].peer_id
            && !out.contains(&p)
        {
            out.push(p);
        }
        d *= 2;
    }
    out
}

struct Driver {
    swarm: Swarm<Behaviour>,
    topology: Arc<Topology>,
    me: HostId,
    fingerprint: TopologyFingerprint,
    directory: Arc<Directory>,
    inbound: mpsc::Sender<InboundEvent>,
    metrics: P2pMetrics,
    /// libp2p's own metrics, when the daemon registered them.
    libp2p_metrics: Option<libp2p::metrics::Metrics>,
    commands: mpsc::UnboundedReceiver<Command>,
    malformed: mpsc::Receiver<MalformedFrame>,
    topic: IdentTopic,
    request_timeout: Duration,
    pending_token: Pending<Response<TokenAck>>,
    pending_location: Pending<Response<LocationResponse>>,
    pending_capacity: Pending<Response<CapacityResponse>>,
    pending_stats: Pending<Response<StatsResponse>>,
    answers: FuturesUnordered<BoxFuture<'static, Answer>>,
    mismatch_logged: HashSet<PeerId>,
    gossip_peers: Vec<PeerId>,
}

/// An inbound request the codec accepted.
enum Sorted<Req, Resp> {
    Request {
        peer: PeerId,
        request: Req,
        channel: ResponseChannel<Resp>,
    },
    Nothing,
}

/// Settles outbound requests and picks out inbound ones.
fn sort<Req, Resp>(pending: &mut Pending<Resp>, event: rr::Event<Req, Resp>) -> Sorted<Req, Resp> {
    match event {
        rr::Event::Message {
            peer,
            message: rr::Message::Request {
                request, channel, ..
            },
            ..
        } => Sorted::Request {
            peer,
            request,
            channel,
        },
        rr::Event::Message {
            message:
                rr::Message::Response {
                    request_id,
                    response,
                },
            ..
        } => {
            if let Some(tx) = pending.remove(&request_id) {
                let _ = tx.send(Ok(response));
            }
            Sorted::Nothing
        }
        rr::Event::OutboundFailure {
            request_id, error, ..
        } => {
            // A response that failed to decode was reported by the codec already.
            let failure = match error {
                rr::OutboundFailure::DialFailure => Failure::Unreachable("dial failed".into()),
                rr::OutboundFailure::Timeout => Failure::Timeout,
                rr::OutboundFailure::ConnectionClosed => {
                    Failure::Unreachable("connection closed before the answer".into())
                }
                rr::OutboundFailure::UnsupportedProtocols => {
                    Failure::Protocol("peer does not speak this protocol".into())
                }
                rr::OutboundFailure::Io(e) => Failure::Protocol(e.to_string()),
            };
            if let Some(tx) = pending.remove(&request_id) {
                let _ = tx.send(Err(failure));
            }
            Sorted::Nothing
        }
        rr::Event::InboundFailure { peer, error, .. } => {
            tracing::debug!(%peer, %error, "inbound request failed");
            Sorted::Nothing
        }
        rr::Event::ResponseSent { .. } => Sorted::Nothing,
    }
}

impl Driver {
    async fn run(mut self, redial: Duration, inventory: Duration, first_inventory: Duration) {
        self.dial_gossip_peers();
        let mut redial = tokio::time::interval(redial);
        let mut inventory =
            tokio::time::interval_at(tokio::time::Instant::now() + first_inventory, inventory);
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.swarm_event(event),
                Some(bad) = self.malformed.recv() => self.malformed(bad),
                Some(answer) = self.answers.next(), if !self.answers.is_empty() => self.answer(answer),
                _ = redial.tick() => self.dial_gossip_peers(),
                _ = inventory.tick() => self.publish_inventory(),
            }
        }
        tracing::debug!("p2p node stopped");
    }

    fn host_name(&self, peer: &PeerId) -> String {
        self.topology
            .host_by_peer(peer)
            .map(|h| h.name.clone())
            .unwrap_or_else(|| peer.to_string())
    }

    fn dial_gossip_peers(&mut self) {
        for p in self.gossip_peers.clone() {
            if self.swarm.is_connected(&p) {
                continue;
            }
            let opts = DialOpts::peer_id(p)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(peer = %self.host_name(&p), error = %e, "gossip dial failed");
            }
        }
    }

    fn publish_inventory(&mut self) {
        let a = self.directory.inventory();
        match scored_proto::encode(&a) {
            Ok(data) => {
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .gossip
                    .publish(self.topic.clone(), data)
                {
                    tracing::debug!(error = %e, "inventory not published");
                }
            }
            Err(e) => tracing::warn!(error = %e, "inventory too large to announce"),
        }
    }

    fn command(&mut self, c: Command) {
        let b = self.swarm.behaviour_mut();
        match c {
            Command::Token(p, r, tx) => {
                let id = b.token.send_request(&p, r);
                self.pending_token.insert(id, tx);
            }
            Command::Location(p, r, tx) => {
                let id = b.location.send_request(&p, r);
                self.pending_location.insert(id, tx);
            }
            Command::Capacity(p, r, tx) => {
                let id = b.capacity.send_request(&p, r);
                self.pending_capacity.insert(id, tx);
            }
            Command::Stats(p, r, tx) => {
                let id = b.stats.send_request(&p, r);
                self.pending_stats.insert(id, tx);
            }
            Command::Publish(data, tx) => {
                let r = match b.gossip.publish(self.topic.clone(), data) {
                    Ok(_) => Ok(()),
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                        Err("no peer has joined the announcement topic yet".into())
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(r);
            }
            Command::Connected(tx) => {
                let _ = tx.send(self.swarm.connected_peers().copied().collect());
            }
            Command::GossipPeers(tx) => {
                let hash = self.topic.hash();
                let _ = tx.send(b.gossip.mesh_peers(&hash).count());
            }
        }
    }

    fn answer(&mut self, a: Answer) {
        // A closed channel means the peer gave up: nothing to send.
        let b = self.swarm.behaviour_mut();
        let (sent, protocol) = match a {
            Answer::Token(ch, r) => (b.token.send_response(ch, r).is_ok(), TOKEN_PROTOCOL),
            Answer::Capacity(ch, r) => (b.capacity.send_response(ch, r).is_ok(), CAPACITY_PROTOCOL),
            Answer::Stats(ch, r) => (b.stats.send_response(ch, r).is_ok(), STATS_PROTOCOL),
        };
        if sent {
            self.metrics.served(protocol);
        }
    }

    fn malformed(&mut self, bad: MalformedFrame) {
        self.metrics.malformed_frames.inc();
        let Some(peer) = bad.peer else {
            tracing::warn!(protocol = bad.protocol, error = %bad.error, "malformed frame from an unidentified connection");
            return;
        };
        tracing::warn!(peer = %self.host_name(&peer), protocol = bad.protocol, error = %bad.error, "malformed frame: disconnecting the peer");
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// The sender's host, if its request was made with our topology; otherwise the refusal
    /// to send back.
    fn admit<T>(&mut self, peer: &PeerId, request: &Request<T>) -> Result<HostId, Refusal> {
        if request.topology != self.fingerprint {
            self.metrics.topology_mismatches.inc();
            if self.mismatch_logged.insert(*peer) {
                tracing::error!(
                    peer = %self.host_name(peer),
                    theirs = format!("{:016x}", request.topology),
                    ours = format!("{:016x}", self.fingerprint),
                    "peer runs with a different topology file: refusing its requests until both use the same file"
                );
            }
            return Err(Refusal::TopologyMismatch {
                expected: self.fingerprint,
            });
        }
        // The allowlist admitted the connection, so the peer is in the topology.
        self.topology
            .host_by_peer(peer)
            .map(|h| h.id)
            .ok_or_else(|| Refusal::Unavailable {
                reason: "unknown peer".into(),
            })
    }

    /// Queues a request for the daemon; its answer (or a refusal when the daemon gives none in
    /// time) goes back on `channel`.
    fn hand_to_daemon<T: Send + 'static>(
        &mut self,
        make_event: impl FnOnce(Responder<T>) -> InboundEvent,
        wrap: impl FnOnce(Response<T>) -> Answer + Send + 'static,
    ) {
        let rx = deliver(&self.inbound, make_event);
        let limit = self.request_timeout;
        self.answers.push(
            async move {
                let r = match tokio::time::timeout(limit, rx).await {
                    Ok(r) => reply_or_unavailable(r),
                    Err(_) => Response::Refused(Refusal::Unavailable {
                        reason: format!("the daemon gave no answer within {limit:?}"),
                    }),
                };
                wrap(r)
            }
            .boxed(),
        );
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
            BehaviourEvent::Allowlist(never) => match never {},
            BehaviourEvent::Token(e) => match sort(&mut self.pending_token, e) {
                Sorted::Request {
                    peer,
                    request,
                    channel,
                } => match self.admit(&peer, &request) {
                    Ok(from) => self.hand_to_daemon(
                        |reply| InboundEvent::Token {
                            from,
                            token: request.body,
                            reply,
                        },
                        move |r| Answer::Token(channel, r),
                    ),
                    Err(refusal) => {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .token
                            .send_response(channel, Response::Refused(refusal));
                    }
                },
                Sorted::Nothing => {}
            },
            BehaviourEvent::Location(e) => match sort(&mut self.pending_location, e) {
                Sorted::Request {
                    peer,
                    request,
                    channel,
                } => {
                    let response = match self.admit(&peer, &request) {
                        Ok(_) => Response::Ok(self.directory.answer(&request.body.vms)),
                        Err(refusal) => Response::Refused(refusal),
                    };
                    let ok = matches!(response, Response::Ok(_));
                    if self
                        .swarm
                        .behaviour_mut()
                        .location
                        .send_response(channel, response)
                        .is_ok()
                        && ok
                    {
                        self.metrics.served(LOCATION_PROTOCOL);
                    }
                }
                Sorted::Nothing => {}
            },
            BehaviourEvent::Capacity(e) => match sort(&mut self.pending_capacity, e) {
                Sorted::Request {
                    peer,
                    request,
                    channel,
                } => match self.admit(&peer, &request) {
                    Ok(from) => self.hand_to_daemon(
                        |reply| InboundEvent::Capacity {
                            from,
                            request: request.body,
                            reply,
                        },
                        move |r| Answer::Capacity(channel, r),
                    ),
                    Err(refusal) => {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .capacity
                            .send_response(channel, Response::Refused(refusal));
                    }
                },
                Sorted::Nothing => {}
            },
            BehaviourEvent::Stats(e) => match sort(&mut self.pending_stats, e) {
                Sorted::Request {
                    peer,
                    request,
                    channel,
                } => match self.admit(&peer, &request) {
                    Ok(from) => self.hand_to_daemon(
                        |reply| InboundEvent::Stats {
                            from,
                            request: request.body,
                            reply,
                        },
                        move |r| Answer::Stats(channel, r),
                    ),
                    Err(refusal) => {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .stats
                            .send_response(channel, Response::Refused(refusal));
                    }
                },
                Sorted::Nothing => {}
            },
            BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let verdict = self.gossip_message(message.source, &message.data);
                if verdict != MessageAcceptance::Accept {
                    self.metrics.rejected_announcements.inc();
                }
                self.swarm
                    .behaviour_mut()
                    .gossip
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
            }
            BehaviourEvent::Gossip(_) => {}
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let ours = format!("topology={:016x}", self.fingerprint);
                if !info.agent_version.contains(&ours) && self.mismatch_logged.insert(peer_id) {
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

    /// Checks, applies and forwards one announcement; says whether gossip should pass it on.
    fn gossip_message(&mut self, source: Option<PeerId>, data: &[u8]) -> MessageAcceptance {
        let Some(author) = source
            .and_then(|p| self.topology.host_by_peer(&p))
            .map(|h| h.id)
        else {
            return MessageAcceptance::Reject;
        };
        let name = self.topology.host(author).name.clone();
        let announcement = match scored_proto::decode::<Announcement>(data) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(author = %name, error = %e, "undecodable announcement");
                return MessageAcceptance::Reject;
            }
        };
        if author == self.me {
            return MessageAcceptance::Ignore;
        }
        if let Err(e) = self.directory.apply(author, &announcement) {
            tracing::warn!(author = %name, error = %e, "announcement rejected");
            return MessageAcceptance::Reject;
        }
        let event = InboundEvent::Announcement {
            from: author,
            announcement,
        };
        if self.inbound.try_send(event).is_err() {
            tracing::debug!(author = %name, "daemon queue full: announcement applied, event dropped");
        }
        MessageAcceptance::Accept
    }

    fn swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(m) = &self.libp2p_metrics {
            m.record(&event);
        }
        match event {
            SwarmEvent::Behaviour(e) => self.behaviour_event(e),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } => {
                if num_established.get() == 1
                    && let Some(h) = self.topology.host_by_peer(&peer_id)
                {
                    tracing::debug!(peer = %h.name, "peer up");
                    let _ = self.inbound.try_send(InboundEvent::PeerUp(h.id));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                if num_established == 0
                    && let Some(h) = self.topology.host_by_peer(&peer_id)
                {
                    tracing::debug!(peer = %h.name, cause = ?cause, "peer down");
                    let _ = self.inbound.try_send(InboundEvent::PeerDown(h.id));
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id.map(|p| self.host_name(&p)), %error, "dial failed");
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::debug!(%send_back_addr, %error, "incoming connection failed");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology_with_identities(n: usize) -> Topology {
        let mut text = String::from("[levels]\nweights = [1]\n");
        for i in 0..n {
            let peer = Keypair::generate_ed25519().public().to_peer_id();
            text.push_str(&format!(
                "[[host]]\nname = \"h{i:02}\"\npath = [\"tor\"]\naddress = \"127.0.0.1\"\np2p_port = {}\npeer_id = \"{peer}\"\n",
                10_000 + i
            ));
        }
        Topology::parse(std::path::Path::new("fingers.toml"), &text).unwrap()
    }

    #[test]
    fn gossip_fingers_form_a_connected_overlay_of_log_degree() {
        for n in [1usize, 2, 3, 5, 8, 33] {
            let topo = topology_with_identities(n);
            let index: HashMap<PeerId, usize> = topo
                .hosts()
                .iter()
                .map(|h| (h.peer_id.unwrap(), h.id.index()))
                .collect();
            let mut adjacent = vec![HashSet::new(); n];
            for h in topo.hosts() {
                let fingers = gossip_fingers(&topo, h.id);
                assert!(fingers.len() <= (n as f64).log2().ceil() as usize, "n={n}");
                for p in fingers {
                    let j = index[&p];
                    assert_ne!(j, h.id.index(), "a host never dials itself");
                    adjacent[h.id.index()].insert(j);
                    adjacent[j].insert(h.id.index());
                }
            }
            let mut seen = vec![false; n];
            let mut stack = vec![0];
            while let Some(i) = stack.pop() {
                if !std::mem::replace(&mut seen[i], true) {
                    stack.extend(adjacent[i].iter().copied());
                }
            }
            assert!(seen.iter().all(|s| *s), "n={n}: overlay not connected");
        }
    }
}
