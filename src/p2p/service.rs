//! [`Peers`] over libp2p: the [`Libp2pPeers`] handle and the start of a node (check the key,
//! build the swarm, listen, spawn the driver). The handle only sends commands to the driver task
//! and turns what comes back into typed answers or [`PeerError`]s; it never touches the swarm.

use super::behaviour::build_swarm;
use super::directory::Directory;
use super::driver::{Channels, Command, Driver};
use super::gossip::Gossip;
use super::limits::TransportLimits;
use super::metrics::P2pMetrics;
use super::rpc::{
    Exchange, FrameWatch, InboundBudget, MOVE_REQUEST, RateLimits, RequestFailure,
    group_answer_name, token_frame_limit,
};
use super::{Inbound, PeerError, Peers, fingerprint};
use crate::topology::{HostId, Topology};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, TransportError};
use prometheus_client::registry::Registry;
use scored_proto::{
    Announcement, GroupRequest, GroupResponse, GroupsAnnounce, LocationAnswer, LocationQuery,
    MoveRequest, MoveResponse, PlacementRequest, PlacementResponse, Request, Response,
    StatsRequest, StatsResponse, SurveyRequest, SurveyResponse, Token, TokenAck,
    TopologyFingerprint, WireMessage,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a node waits for its listener to report an address.
const LISTEN_WAIT: Duration = Duration::from_secs(10);

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
    /// Longest a request may take inside the swarm (callers usually give up sooner) on every
    /// protocol but `/scored/group/1`, and how long this daemon may take to answer any request
    /// but a group move's.
    pub request_timeout: Duration,
    /// How long a group move's request may wait for its migration: the group lane's swarm
    /// request timeout and the limit on this daemon's answer to one.
    pub move_timeout: Duration,
    /// A connection with no open stream and nothing to keep it closes after this long.
    pub idle_timeout: Duration,
    /// Liveness probe period on every connection.
    pub ping_interval: Duration,
    pub gossip_heartbeat: Duration,
    /// How often the transport republishes this host's inventory by itself (the first time
    /// shortly after start); `None` when its user does (the daemon announces its own at its
    /// first inventory read, when its VMs change and every `p2p::zombies::republish_every`).
    pub inventory_interval: Option<Duration>,
    /// How often dropped gossip connections are re-dialled.
    pub redial_interval: Duration,
    /// What each peer may ask of this host per protocol; over it, requests are refused.
    pub rate_limits: RateLimits,
    /// Connections, streams, requests and bytes others may hold on this host.
    pub limits: TransportLimits,
    /// Peers deliberately cut off (the lab's partitions); empty in production.
    pub severed: super::Severed,
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
            // Well over a migration under the daemon's defaults (`migration.timeout_s` = 300 s,
            // the hypervisor call around it); the daemon sets it from its own configuration.
            move_timeout: Duration::from_secs(15 * 60),
            // The gossip mesh keeps its own connections open; what a decision or a survey
            // opened to other hosts goes after a minute (at 300 s, one regeneration survey left
            // a connection to every host for five minutes: 58 per host at 256 hosts).
            idle_timeout: super::IDLE_CONNECTION_TIMEOUT,
            ping_interval: Duration::from_secs(5),
            gossip_heartbeat: Duration::from_millis(700),
            inventory_interval: Some(Duration::from_secs(300)),
            redial_interval: Duration::from_secs(10),
            rate_limits: RateLimits::default(),
            limits: TransportLimits::default(),
            severed: super::Severed::default(),
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
    #[error("cannot listen on {addr}: {cause}")]
    Listen {
        addr: Multiaddr,
        #[source]
        cause: ListenFailure,
    },
    #[error("libp2p setup: {step}: {cause}")]
    Setup {
        step: &'static str,
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StartError {
    pub(crate) fn setup(
        step: &'static str,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StartError::Setup {
            step,
            cause: cause.into(),
        }
    }
}

/// Why the listener did not come up.
#[derive(Debug, thiserror::Error)]
pub enum ListenFailure {
    // libp2p's own Display of `TransportError::Other` prints nothing: the cause ("Too many open
    // files", "Address already in use") is the inner error's.
    #[error("{}", transport_cause(.0))]
    Transport(#[source] TransportError<std::io::Error>),
    #[error("{0}")]
    Listener(#[source] std::io::Error),
    #[error("no listen address after {} s", LISTEN_WAIT.as_secs())]
    NoAddress,
}

fn transport_cause(e: &TransportError<std::io::Error>) -> String {
    match e {
        TransportError::MultiaddrNotSupported(addr) => {
            format!("the TCP transport does not support the address {addr}")
        }
        TransportError::Other(io) => io.to_string(),
    }
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
    connected: super::Connected,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A handle to this host's libp2p node; clones share the node. The driver task ends, closing
/// every connection, when the last handle is dropped.
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
        let Some(listen) = config.listen.clone().or_else(|| host.p2p_multiaddr()) else {
            return Err(StartError::NoAddress {
                host: host.name.clone(),
            });
        };
        let fp = fingerprint(&topology);
        let limits = &config.limits;
        let budget = InboundBudget::new(
            limits.max_requests_per_peer,
            limits.max_inflight_bytes_per_peer,
            limits.max_inflight_bytes,
        );
        let (watch, refused) = FrameWatch::new(
            256,
            budget,
            token_frame_limit(topology.hosts().len()),
            config.metrics.clone(),
        );
        let mut scratch = Registry::default();
        let (registry, observed) = match registry {
            Some(r) => (r.sub_registry_with_prefix("scored"), true),
            None => (&mut scratch, false),
        };
        let mut swarm = build_swarm(&config, fp, watch, registry)?;
        let libp2p_metrics = observed.then(|| libp2p::metrics::Metrics::new(registry));
        let (inbound_tx, inbound) = Inbound::channel();
        let gossip = Gossip::new(
            topology.clone(),
            config.me,
            directory.clone(),
            inbound_tx.clone(),
            config.metrics.clone(),
        );
        gossip
            .subscribe(&mut swarm.behaviour_mut().gossip)
            .map_err(|e| StartError::setup("gossip subscribe", e))?;
        let listen_failed = |cause| StartError::Listen {
            addr: listen.clone(),
            cause,
        };
        swarm
            .listen_on(listen.clone())
            .map_err(|e| listen_failed(ListenFailure::Transport(e)))?;
        let listening = tokio::time::timeout(LISTEN_WAIT, async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr { address, .. } => return Ok(address),
                    SwarmEvent::ListenerClosed { reason: Err(e), .. }
                    | SwarmEvent::ListenerError { error: e, .. } => return Err(e),
                    _ => {}
                }
            }
        })
        .await;
        let bound = match listening {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err(listen_failed(ListenFailure::Listener(e))),
            Err(_) => return Err(listen_failed(ListenFailure::NoAddress)),
        };
        tracing::info!(host = %host.name, %peer_id, address = %bound, "p2p node listening");

        let (commands, commands_rx) = mpsc::unbounded_channel();
        let connected = super::Connected::default();
        let channels = Channels {
            inbound: inbound_tx,
            commands: commands_rx,
            refused,
            connected: connected.clone(),
        };
        let driver = Driver::new(
            swarm,
            &config,
            fp,
            directory.clone(),
            gossip,
            channels,
            libp2p_metrics,
        );
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
                    connected,
                    task,
                }),
            },
            inbound,
        ))
    }

    /// Stops the node at once, as a crash would: every connection closes, nothing more is
    /// sent or answered. (Dropping the last handle does the same, later.)
    pub fn halt(&self) {
        self.shared.task.abort();
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
        if self.shared.commands.send(Command::GossipMesh(tx)).is_err() {
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

    /// Sends `body` to `host` and waits at most `timeout` for its answer.
    async fn request<E: Exchange>(
        &self,
        host: HostId,
        body: E,
        timeout: Duration,
    ) -> Result<E::Answer, PeerError> {
        self.request_named(host, body, timeout, E::NAME).await
    }

    /// One of `/scored/group/1`'s questions, `body`, called `what` in errors: its answer as
    /// `take` finds it in the [`GroupResponse`]; the answer to the other question is a protocol
    /// error.
    async fn ask_group<A>(
        &self,
        host: HostId,
        body: GroupRequest,
        timeout: Duration,
        what: &'static str,
        take: fn(GroupResponse) -> Result<A, GroupResponse>,
    ) -> Result<A, PeerError> {
        let answer = self.request_named(host, body, timeout, what).await?;
        take(answer).map_err(|other| PeerError::Protocol {
            host: self.shared.topology.host(host).name.clone(),
            what,
            cause: RequestFailure::WrongKind {
                got: group_answer_name(&other),
            },
        })
    }

    /// [`Self::request`], the request called `what` in errors.
    async fn request_named<E: Exchange>(
        &self,
        host: HostId,
        body: E,
        timeout: Duration,
        what: &'static str,
    ) -> Result<E::Answer, PeerError> {
        let peer = self.peer(host)?;
        let name = || self.shared.topology.host(host).name.clone();
        let (tx, rx) = oneshot::channel();
        let request = E::request(Request {
            topology: self.shared.fingerprint,
            body,
        });
        self.shared
            .commands
            .send(Command::Request(peer, request, tx))
            .map_err(|_| PeerError::Closed)?;
        let timed_out = || PeerError::Timeout {
            host: name(),
            what,
            after: timeout,
        };
        let response = match tokio::time::timeout(timeout, rx).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(_)) => return Err(PeerError::Closed),
            Ok(Ok(Err(failure))) => {
                return Err(match failure {
                    RequestFailure::Timeout => timed_out(),
                    RequestFailure::DialFailed => PeerError::Unreachable {
                        host: name(),
                        reason: super::DIAL_FAILED,
                    },
                    RequestFailure::ConnectionClosed => PeerError::Unreachable {
                        host: name(),
                        reason: super::CONNECTION_CLOSED,
                    },
                    cause => PeerError::Protocol {
                        host: name(),
                        what,
                        cause,
                    },
                });
            }
            Ok(Ok(Ok(r))) => r,
        };
        match E::answer(response) {
            Ok(Response::Ok(v)) => Ok(v),
            Ok(Response::Refused(refusal)) => Err(PeerError::Refused {
                host: name(),
                what,
                refusal,
            }),
            Err(other) => Err(PeerError::Protocol {
                host: name(),
                what,
                cause: RequestFailure::WrongKind {
                    got: other.kind().protocol(),
                },
            }),
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

    fn counters(&self) -> Option<&P2pMetrics> {
        Some(&self.shared.metrics)
    }

    fn connected(&self) -> Vec<HostId> {
        self.shared.connected.hosts()
    }

    fn neighbours(&self) -> Vec<HostId> {
        super::gossip::finger_hosts(&self.shared.topology, self.shared.me)
    }

    fn others(&self) -> Vec<HostId> {
        // A host listed without an address or PeerId (a hypervisor scored does not run on yet)
        // can neither be dialled nor publish anything this host would accept.
        self.shared
            .topology
            .hosts()
            .iter()
            .filter(|h| h.id != self.shared.me && h.address.is_some() && h.peer_id.is_some())
            .map(|h| h.id)
            .collect()
    }

    async fn send_token(
        &self,
        to: HostId,
        token: Token,
        timeout: Duration,
    ) -> Result<TokenAck, PeerError> {
        self.request(to, token, timeout).await
    }

    async fn query_locations(
        &self,
        host: HostId,
        query: LocationQuery,
        timeout: Duration,
    ) -> Result<LocationAnswer, PeerError> {
        self.request(host, query, timeout).await
    }

    async fn query_capacity(
        &self,
        host: HostId,
        request: PlacementRequest,
        timeout: Duration,
    ) -> Result<PlacementResponse, PeerError> {
        self.request(host, request, timeout).await
    }

    async fn query_stats(
        &self,
        host: HostId,
        request: StatsRequest,
        timeout: Duration,
    ) -> Result<StatsResponse, PeerError> {
        self.request(host, request, timeout).await
    }

    async fn survey(
        &self,
        host: HostId,
        request: SurveyRequest,
        timeout: Duration,
    ) -> Result<SurveyResponse, PeerError> {
        let body = GroupRequest::Survey(request);
        self.ask_group(host, body, timeout, SurveyRequest::NAME, |r| match r {
            GroupResponse::Survey(s) => Ok(s),
            other => Err(other),
        })
        .await
    }

    async fn group_move(
        &self,
        host: HostId,
        request: MoveRequest,
        timeout: Duration,
    ) -> Result<MoveResponse, PeerError> {
        let body = GroupRequest::Move(request);
        self.ask_group(host, body, timeout, MOVE_REQUEST, |r| match r {
            GroupResponse::Moved(m) => Ok(m),
            other => Err(other),
        })
        .await
    }

    async fn publish(&self, announcement: Announcement) -> Result<(), PeerError> {
        let data =
            scored_proto::encode(&announcement).map_err(|e| PeerError::Announce(e.into()))?;
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Publish(data, tx))
            .map_err(|_| PeerError::Closed)?;
        rx.await
            .map_err(|_| PeerError::Closed)?
            .map_err(PeerError::Announce)
    }

    async fn publish_groups(&self, groups: GroupsAnnounce) -> Result<(), PeerError> {
        let data = scored_proto::encode(&groups).map_err(|e| PeerError::Announce(e.into()))?;
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::PublishGroups(data, tx))
            .map_err(|_| PeerError::Closed)?;
        rx.await
            .map_err(|_| PeerError::Closed)?
            .map_err(PeerError::Announce)
    }
}
