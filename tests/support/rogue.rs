//! A rogue peer for adversarial cluster tests: a host the topology lists, with its own key, that
//! speaks scored's real protocol (libp2p TCP + Noise + Yamux, the four request-response protocol
//! ids, the signed gossipsub announcement topic, identify with the right topology fingerprint)
//! and lies in everything it says.
//!
//! It is built from libp2p parts and the `scored_proto` wire types only, never from the daemon's
//! transport: frames are written byte for byte, so it can send what an honest encoder refuses
//! (oversized or truncated frames) and hold streams open as long as it likes. It runs on its own
//! thread and runtime; the test drives it with blocking calls. It decides nothing about scored
//! and asserts nothing: it records what it was asked and sent, and the test judges.

#![allow(dead_code)]

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::request_response::{self as rr, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, noise, ping, tcp, yamux};
use scored::proto::{
    ANNOUNCE_TOPIC, Announcement, CAPACITY_PROTOCOL, CapacityRequest, CapacityResponse,
    IDENTIFY_PROTOCOL, LOCATION_PROTOCOL, Located, LocationRequest, LocationResponse, Request,
    Response, STATS_PROTOCOL, Stamp, StatsRequest, StatsResponse, TOKEN_PROTOCOL, Token, TokenAck,
    TokenView, TopologyFingerprint, VmId,
};
use scored::topology::Topology;
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Largest frame the rogue reads from a peer (a token frame is at most 24 MiB).
const READ_LIMIT: u64 = 32 << 20;

/// What the rogue answers when asked. Every field is a lie an honest host would not tell.
#[derive(Clone, Debug, Default)]
pub struct Lies {
    /// Capacity answers claim this much room (`None`: answer honestly that nothing fits).
    pub capacity: Option<CapacityResponse>,
    /// Statistics answers report this token stamp, held here, heard of just now.
    pub token_view: Option<Stamp>,
    /// Location answers claim these VMs run here, since this stamp.
    pub here: Vec<(VmId, Stamp)>,
    /// A token handed to the rogue is answered with this (`None`: accepted, then dropped).
    pub token_ack: Option<TokenAck>,
}

/// Room an honest host never has: a thousand free slots, a petabyte of memory, no load.
pub fn boundless_capacity() -> CapacityResponse {
    CapacityResponse {
        free_slots: 1000,
        free_memory_mib: 1 << 30,
        cpu_load: 0.0,
        maintenance: false,
        incoming_migrations: 0,
        accepts: true,
    }
}

/// A token an honest host handed the rogue.
#[derive(Clone, Debug)]
pub struct TokenIn {
    pub from: String,
    pub epoch: u64,
    pub seq: u64,
    pub holder: Option<VmId>,
    pub at: Instant,
}

/// What the rogue saw happen to it.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub tokens: Vec<TokenIn>,
    pub capacity_asked: usize,
    pub location_asked: usize,
    pub stats_asked: usize,
    /// Requests that reached the rogue, by protocol, and those it could not read.
    pub inbound: HashMap<&'static str, usize>,
    pub unreadable: Vec<String>,
    /// Connections open now, by host name.
    pub connections: HashMap<String, usize>,
    /// Most connections open at once, by host name.
    pub peak_connections: HashMap<String, usize>,
}

/// A stream flood against one host: `connections` extra connections, then `streams` requests on
/// `protocol` spread over them, each writing `frame` and holding the stream open for `hold`.
#[derive(Clone, Debug)]
pub struct Flood {
    pub to: String,
    pub connections: usize,
    pub streams: usize,
    pub protocol: &'static str,
    pub frame: Vec<u8>,
    pub hold: Duration,
    /// Give up on the answers after this long.
    pub within: Duration,
}

/// How a flood's requests ended.
#[derive(Clone, Debug, Default)]
pub struct FloodReport {
    pub connections_peak: usize,
    pub answered: usize,
    /// Failures by their text (connection closed, timeout, I/O errors...).
    pub failures: HashMap<String, usize>,
}

/// A request frame to write as is, then hold the stream open.
#[derive(Clone, Debug)]
pub struct RawRequest {
    pub frame: Vec<u8>,
    pub hold: Duration,
}

/// Bytes in, bytes out: frames are whatever the rogue chooses to write.
#[derive(Clone, Default)]
struct RawCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut frame = Vec::new();
    io.take(READ_LIMIT).read_to_end(&mut frame).await?;
    Ok(frame)
}

impl rr::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = RawRequest;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<RawRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        // An honest sender writes one frame and closes its side.
        Ok(RawRequest {
            frame: read_frame(io).await?,
            hold: Duration::ZERO,
        })
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: RawRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req.frame).await?;
        io.flush().await?;
        if !req.hold.is_zero() {
            tokio::time::sleep(req.hold).await;
        }
        Ok(())
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&res).await?;
        io.flush().await
    }
}

type Lane = rr::Behaviour<RawCodec>;

#[derive(NetworkBehaviour)]
struct RogueBehaviour {
    token: Lane,
    location: Lane,
    capacity: Lane,
    stats: Lane,
    gossip: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

const PROTOCOLS: [&str; 4] = [
    TOKEN_PROTOCOL,
    LOCATION_PROTOCOL,
    CAPACITY_PROTOCOL,
    STATS_PROTOCOL,
];

impl RogueBehaviour {
    fn lane(&mut self, protocol: &str) -> &mut Lane {
        match protocol {
            TOKEN_PROTOCOL => &mut self.token,
            LOCATION_PROTOCOL => &mut self.location,
            CAPACITY_PROTOCOL => &mut self.capacity,
            STATS_PROTOCOL => &mut self.stats,
            other => panic!("{other} is not a scored request-response protocol"),
        }
    }
}

type Answer = oneshot::Sender<Result<Vec<u8>, String>>;

enum Command {
    Publish(Vec<u8>, oneshot::Sender<Result<(), String>>),
    Request(PeerId, Multiaddr, &'static str, RawRequest, Answer),
    Dial(PeerId, Multiaddr),
    SetLies(Lies),
}

/// A running rogue peer; stops when dropped.
pub struct Rogue {
    pub name: String,
    pub peer_id: PeerId,
    pub fingerprint: TopologyFingerprint,
    topology: Arc<Topology>,
    commands: mpsc::UnboundedSender<Command>,
    seen: Arc<Mutex<Seen>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Rogue {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Rogue {
    /// Starts the rogue as host `name` of `topology`, with the key at `key`, listening where the
    /// topology says and connected to every other host.
    pub fn start(topology: &Path, key: &Path, name: &str, lies: Lies) -> Rogue {
        let topology = Arc::new(Topology::load(topology).expect("topology"));
        let keypair = scored::identity::load(key).expect("rogue key");
        let host = topology.host_by_name(name).expect("rogue host in topology");
        let listen = host.p2p_multiaddr().expect("rogue address");
        let fingerprint = scored::p2p::fingerprint(&topology);
        let peer_id = keypair.public().to_peer_id();
        assert_eq!(host.peer_id, Some(peer_id), "the rogue's key is its host's");
        let (commands, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let others = topology
            .hosts()
            .iter()
            .filter(|h| h.name != name)
            .filter_map(|h| Some((h.peer_id?, h.p2p_multiaddr()?)))
            .collect();
        let driver = Driver {
            others,
            topology: topology.clone(),
            fingerprint,
            lies,
            seen: seen.clone(),
            pending: HashMap::new(),
        };
        let thread = std::thread::spawn(move || {
            // Two workers: on a loaded machine a single thread would starve the rogue's
            // connections (pings unanswered) and test the load rather than the lies.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut swarm = build_swarm(keypair, fingerprint);
                swarm.listen_on(listen).expect("rogue listens");
                let _ = ready_tx.send(());
                driver.run(swarm, rx, stopped).await;
            });
        });
        ready.recv().expect("rogue started");
        Rogue {
            name: name.to_string(),
            peer_id,
            fingerprint,
            topology,
            commands,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn peer(&self, host: &str) -> (PeerId, Multiaddr) {
        self.topology
            .host_by_name(host)
            .and_then(|h| Some((h.peer_id?, h.p2p_multiaddr()?)))
            .unwrap_or_else(|| panic!("no host {host} with a peer id and an address"))
    }

    /// Hosts the rogue has a connection to now.
    pub fn connected(&self) -> Vec<String> {
        let s = self.seen.lock().unwrap();
        let mut v: Vec<String> = s
            .connections
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(h, _)| h.clone())
            .collect();
        v.sort();
        v
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    pub fn set_lies(&self, lies: Lies) {
        let _ = self.commands.send(Command::SetLies(lies));
    }

    /// Publishes raw bytes on the announcement topic, signed with the rogue's key.
    pub fn publish_raw(&self, data: Vec<u8>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Publish(data, tx));
        rx.blocking_recv().map_err(|e| e.to_string())?
    }

    /// Publishes an announcement (it must be well-formed: the lies are in what it says).
    pub fn publish(&self, a: &Announcement) -> Result<(), String> {
        self.publish_raw(scored::proto::encode(a).map_err(|e| e.to_string())?)
    }

    /// Sends `frame` on `protocol` to `host` and waits for the answer's bytes.
    pub fn request_raw(
        &self,
        host: &str,
        protocol: &'static str,
        frame: Vec<u8>,
        within: Duration,
    ) -> Result<Vec<u8>, String> {
        let (tx, rx) = oneshot::channel();
        let req = RawRequest {
            frame,
            hold: Duration::ZERO,
        };
        let (peer, addr) = self.peer(host);
        let _ = self
            .commands
            .send(Command::Request(peer, addr, protocol, req, tx));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        match rt.block_on(async move { tokio::time::timeout(within, rx).await }) {
            Err(_) => Err(format!("no answer within {within:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(r)) => r,
        }
    }

    /// Hands `token` to `host` with the cluster's topology fingerprint; its acknowledgement.
    pub fn send_token(&self, host: &str, token: Token) -> Result<Response<TokenAck>, String> {
        let frame = scored::proto::encode(&Request {
            topology: self.fingerprint,
            body: token,
        })
        .map_err(|e| e.to_string())?;
        let bytes = self.request_raw(host, TOKEN_PROTOCOL, frame, Duration::from_secs(30))?;
        scored::proto::decode::<Response<TokenAck>>(&bytes).map_err(|e| e.to_string())
    }

    /// Opens extra connections to the flood's host and fires its streams; returns once every
    /// stream ended or `within` passed.
    pub fn flood(&self, f: &Flood) -> FloodReport {
        let (peer, addr) = self.peer(&f.to);
        for _ in 0..f.connections {
            let _ = self.commands.send(Command::Dial(peer, addr.clone()));
        }
        // Let the dials land (or be refused) before the streams pick their connections.
        let until = Instant::now() + Duration::from_secs(60);
        std::thread::sleep(Duration::from_secs(2));
        while !self.connected().contains(&f.to) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut answers = Vec::new();
        for _ in 0..f.streams {
            let (tx, rx) = oneshot::channel();
            let req = RawRequest {
                frame: f.frame.clone(),
                hold: f.hold,
            };
            let _ = self
                .commands
                .send(Command::Request(peer, addr.clone(), f.protocol, req, tx));
            answers.push(rx);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcomes = rt.block_on(async {
            let all = futures::future::join_all(answers);
            tokio::time::timeout(f.within, all).await.ok()
        });
        let mut report = FloodReport {
            connections_peak: self
                .seen()
                .peak_connections
                .get(&f.to)
                .copied()
                .unwrap_or(0),
            ..FloodReport::default()
        };
        match outcomes {
            None => {
                report
                    .failures
                    .insert(format!("still open after {:?}", f.within), f.streams);
            }
            Some(outcomes) => {
                for o in outcomes {
                    match o {
                        Ok(Ok(_)) => report.answered += 1,
                        Ok(Err(e)) => *report.failures.entry(e).or_default() += 1,
                        Err(e) => *report.failures.entry(e.to_string()).or_default() += 1,
                    }
                }
            }
        }
        report
    }
}

fn build_swarm(
    keypair: libp2p::identity::Keypair,
    fp: TopologyFingerprint,
) -> Swarm<RogueBehaviour> {
    // No limit of its own: the rogue opens as many streams as it is asked to.
    let config = rr::Config::default()
        .with_request_timeout(Duration::from_secs(120))
        .with_max_concurrent_streams(100_000);
    let lane = |p: &'static str| {
        Lane::with_codec(
            RawCodec,
            [(StreamProtocol::new(p), ProtocolSupport::Full)],
            config.clone(),
        )
    };
    let gossip_config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(700))
        .validation_mode(gossipsub::ValidationMode::Strict)
        .max_transmit_size(4 << 20)
        .build()
        .unwrap();
    let agent = format!("scored/{} topology={fp:016x}", env!("CARGO_PKG_VERSION"));
    libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| {
            let mut gossip = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
            )
            .unwrap();
            gossip.subscribe(&IdentTopic::new(ANNOUNCE_TOPIC)).unwrap();
            RogueBehaviour {
                token: lane(TOKEN_PROTOCOL),
                location: lane(LOCATION_PROTOCOL),
                capacity: lane(CAPACITY_PROTOCOL),
                stats: lane(STATS_PROTOCOL),
                gossip,
                identify: identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(agent),
                ),
                ping: ping::Behaviour::new(ping::Config::new()),
            }
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build()
}

struct Driver {
    /// Every other host: the rogue keeps a connection to each, as a well-connected peer would.
    others: Vec<(PeerId, Multiaddr)>,
    topology: Arc<Topology>,
    fingerprint: TopologyFingerprint,
    lies: Lies,
    seen: Arc<Mutex<Seen>>,
    pending: HashMap<(&'static str, OutboundRequestId), Answer>,
}

impl Driver {
    async fn run(
        mut self,
        mut swarm: Swarm<RogueBehaviour>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut redial = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = redial.tick() => {
                    for (peer, addr) in &self.others {
                        if !swarm.is_connected(peer) {
                            let opts = DialOpts::peer_id(*peer)
                                .condition(PeerCondition::DisconnectedAndNotDialing)
                                .addresses(vec![addr.clone()])
                                .build();
                            let _ = swarm.dial(opts);
                        }
                    }
                }
                c = commands.recv() => match c {
                    Some(c) => self.command(&mut swarm, c),
                    None => break,
                },
                e = swarm.select_next_some() => self.event(&mut swarm, e),
            }
        }
    }

    fn name(&self, peer: &PeerId) -> String {
        self.topology
            .host_by_peer(peer)
            .map(|h| h.name.clone())
            .unwrap_or_else(|| peer.to_string())
    }

    fn command(&mut self, swarm: &mut Swarm<RogueBehaviour>, c: Command) {
        match c {
            Command::Publish(data, tx) => {
                let r = swarm
                    .behaviour_mut()
                    .gossip
                    .publish(IdentTopic::new(ANNOUNCE_TOPIC), data);
                let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
            }
            Command::Request(peer, addr, protocol, req, tx) => {
                // With the address every time: request-response forgets an address whose dial
                // failed, and the honest daemons may not have been listening yet.
                let id = swarm
                    .behaviour_mut()
                    .lane(protocol)
                    .send_request_with_addresses(&peer, req, vec![addr]);
                self.pending.insert((protocol, id), tx);
            }
            Command::Dial(peer, addr) => {
                swarm.add_peer_address(peer, addr.clone());
                let opts = DialOpts::peer_id(peer)
                    .condition(PeerCondition::Always)
                    .addresses(vec![addr])
                    .build();
                let _ = swarm.dial(opts);
            }
            Command::SetLies(l) => self.lies = l,
        }
    }

    fn event(&mut self, swarm: &mut Swarm<RogueBehaviour>, e: SwarmEvent<RogueBehaviourEvent>) {
        match e {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                let name = self.name(&peer_id);
                let mut s = self.seen.lock().unwrap();
                let n = s.connections.entry(name.clone()).or_default();
                *n += 1;
                let n = *n;
                let peak = s.peak_connections.entry(name).or_default();
                *peak = (*peak).max(n);
            }
            SwarmEvent::ConnectionClosed { peer_id, .. } => {
                let name = self.name(&peer_id);
                let mut s = self.seen.lock().unwrap();
                let n = s.connections.entry(name).or_default();
                *n = n.saturating_sub(1);
            }
            SwarmEvent::Behaviour(b) => {
                let (protocol, e) = match b {
                    RogueBehaviourEvent::Token(e) => (TOKEN_PROTOCOL, e),
                    RogueBehaviourEvent::Location(e) => (LOCATION_PROTOCOL, e),
                    RogueBehaviourEvent::Capacity(e) => (CAPACITY_PROTOCOL, e),
                    RogueBehaviourEvent::Stats(e) => (STATS_PROTOCOL, e),
                    _ => return,
                };
                self.rpc(swarm, protocol, e);
            }
            _ => {}
        }
    }

    fn rpc(
        &mut self,
        swarm: &mut Swarm<RogueBehaviour>,
        protocol: &'static str,
        e: rr::Event<RawRequest, Vec<u8>>,
    ) {
        match e {
            rr::Event::Message {
                peer,
                message:
                    rr::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let answer = self.answer(&peer, protocol, &request.frame);
                if let Some(bytes) = answer {
                    let _ = swarm
                        .behaviour_mut()
                        .lane(protocol)
                        .send_response(channel, bytes);
                }
            }
            rr::Event::Message {
                message:
                    rr::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(tx) = self.pending.remove(&(protocol, request_id)) {
                    let _ = tx.send(Ok(response));
                }
            }
            rr::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(tx) = self.pending.remove(&(protocol, request_id)) {
                    let _ = tx.send(Err(error.to_string()));
                }
            }
            rr::Event::InboundFailure { peer, error, .. } => {
                let what = format!("{protocol} from {}: {error}", self.name(&peer));
                self.seen.lock().unwrap().unreadable.push(what);
            }
            rr::Event::ResponseSent { .. } => {}
        }
    }

    /// The lie for one request; `None` drops the request unanswered.
    fn answer(&mut self, peer: &PeerId, protocol: &str, frame: &[u8]) -> Option<Vec<u8>> {
        let from = self.name(peer);
        {
            let mut s = self.seen.lock().unwrap();
            let p = PROTOCOLS.into_iter().find(|p| *p == protocol)?;
            *s.inbound.entry(p).or_default() += 1;
        }
        let answer = self.lie(from, protocol, frame);
        if answer.is_none() {
            let what = format!("{protocol}: {} bytes not understood", frame.len());
            self.seen.lock().unwrap().unreadable.push(what);
        }
        answer
    }

    fn lie(&mut self, from: String, protocol: &str, frame: &[u8]) -> Option<Vec<u8>> {
        match protocol {
            TOKEN_PROTOCOL => {
                let r = scored::proto::decode::<Request<Token>>(frame).ok()?;
                self.seen.lock().unwrap().tokens.push(TokenIn {
                    from,
                    epoch: r.body.epoch,
                    seq: r.body.seq,
                    holder: r.body.holder,
                    at: Instant::now(),
                });
                let ack = self.lies.token_ack.clone().unwrap_or(TokenAck::Accepted);
                Some(scored::proto::encode(&Response::Ok(ack)).ok()?)
            }
            LOCATION_PROTOCOL => {
                let r = scored::proto::decode::<Request<LocationRequest>>(frame).ok()?;
                self.seen.lock().unwrap().location_asked += 1;
                let here = self
                    .lies
                    .here
                    .iter()
                    .filter(|(vm, _)| r.body.vms.contains(vm))
                    .map(|&(vm, since)| Located { vm, since })
                    .collect();
                let answer = LocationResponse {
                    here,
                    moved: vec![],
                };
                Some(scored::proto::encode(&Response::Ok(answer)).ok()?)
            }
            CAPACITY_PROTOCOL => {
                let r = scored::proto::decode::<Request<CapacityRequest>>(frame).ok()?;
                self.seen.lock().unwrap().capacity_asked += 1;
                let c = self.lies.capacity.unwrap_or(CapacityResponse {
                    free_slots: 0,
                    free_memory_mib: 0,
                    cpu_load: 0.0,
                    maintenance: false,
                    incoming_migrations: 0,
                    accepts: r.body.memory_mib == 0,
                });
                Some(scored::proto::encode(&Response::Ok(c)).ok()?)
            }
            STATS_PROTOCOL => {
                let _ = scored::proto::decode::<Request<StatsRequest>>(frame).ok()?;
                self.seen.lock().unwrap().stats_asked += 1;
                let token = match self.lies.token_view {
                    Some(at) => TokenView {
                        at,
                        idle_ms: Some(0),
                        held: true,
                    },
                    None => TokenView::default(),
                };
                let s = StatsResponse {
                    token,
                    benefits: vec![],
                };
                Some(scored::proto::encode(&Response::Ok(s)).ok()?)
            }
            _ => None,
        }
    }
}

/// A frame whose length prefix announces `announced` bytes, followed by `body` bytes of zeros
/// after the wire version byte: a stream that promises more than it sends, or more than any
/// message may take.
pub fn promising_frame(announced: u32, body: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + body);
    f.extend_from_slice(&announced.to_be_bytes());
    f.push(scored::proto::WIRE_VERSION);
    f.resize(5 + body, 0);
    f
}
