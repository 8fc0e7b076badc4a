//! How daemons talk: token hand-off, location, capacity and statistics queries, group moves
//! (surveys, and the moves a holder's group move asks of VMs' hosts), and announcements of
//! completed migrations, behind one transport-independent trait, [`Peers`].
//!
//! Two transports implement it: [`Libp2pPeers`] (TCP + Noise + Yamux between real hosts, only
//! with peers the topology lists) and [`DirectPeers`] (in-process calls, for the simulator and
//! loopback tests). Both answer location queries from the host's [`Directory`] and hand every
//! other request to the daemon as an [`InboundEvent`]. This module decides nothing: it moves
//! messages, and never looks inside a token beyond what the codec checks.

mod allowlist;
mod behaviour;
pub mod direct;
pub mod directory;
mod driver;
pub(crate) mod gossip;
mod idle;
mod limits;
pub mod metrics;
pub mod probe;
mod rpc;
mod service;
pub mod severed;
pub mod zombies;

pub use direct::{DirectNetwork, DirectPeers};
pub use directory::{
    AnnouncementRejected, Directory, GroupMember, Known, LocateOptions, Locations, Reservation,
};
pub use gossip::overlay_neighbours;
pub use limits::TransportLimits;
pub use metrics::P2pMetrics;
pub use rpc::{Quota, RateLimits, RequestFailure};
pub use service::{Libp2pPeers, ListenFailure, P2pConfig, StartError};
pub use severed::Severed;
pub use zombies::{Zombie, Zombies};

use crate::topology::{HostId, Topology};
use futures::{FutureExt, StreamExt};
use scored_proto::{
    Announcement, EncodeError, GroupsAnnounce, LocationAnswer, LocationQuery, MigrationAnnounce,
    MoveRequest, MoveResponse, PlacementRequest, PlacementResponse, Refusal, Response, Stamp,
    StatsRequest, StatsResponse, SurveyRequest, SurveyResponse, Token, TokenAck,
    TopologyFingerprint, VmId,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// At most this many queries of one fan-out are in flight at once: a 2,560-host data centre
/// must not open 2,560 connections in the same instant.
pub const MAX_CONCURRENT_QUERIES: usize = 64;

/// How long a connection nothing uses stays open by default (`p2p.idle_connection_timeout_s`):
/// a request's connection closes this long after its last answer; the gossip overlay's and mesh
/// peers' stay.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Events queued for the daemon, from every peer together, before new requests are refused as
/// busy. What one peer may put in it is bounded by its rate limits ([`RateLimits`]).
pub const INBOUND_QUEUE: usize = 1024;

/// A failed exchange with a peer, naming the peer (topology host name).
#[derive(Clone, Debug, thiserror::Error)]
pub enum PeerError {
    #[error("host {host}: not reachable: {reason}")]
    Unreachable { host: String, reason: &'static str },
    #[error("host {host}: no answer to the {what} within {after:?}")]
    Timeout {
        host: String,
        what: &'static str,
        after: Duration,
    },
    #[error("host {host} refused the {what}: {refusal}")]
    Refused {
        host: String,
        what: &'static str,
        refusal: Refusal,
    },
    #[error("host {host}: {what}: {cause}")]
    Protocol {
        host: String,
        what: &'static str,
        #[source]
        cause: RequestFailure,
    },
    #[error("host {host} is this host: the daemon handles its own requests")]
    ToSelf { host: String },
    #[error("host {host} has no address or peer_id in the topology")]
    NoIdentity { host: String },
    #[error("announcement not published: {0}")]
    Announce(#[source] AnnounceError),
    #[error("the p2p transport has shut down")]
    Closed,
}

/// The [`PeerError::Unreachable`] reason of a request whose dial failed: it never left.
pub(crate) const DIAL_FAILED: &str = "dial failed";
/// The [`PeerError::Unreachable`] reason of a request whose connection closed before the answer:
/// it may have been delivered.
pub(crate) const CONNECTION_CLOSED: &str = "connection closed before the answer";

impl PeerError {
    /// The peer it names, if any.
    pub fn host(&self) -> Option<&str> {
        match self {
            PeerError::Unreachable { host, .. }
            | PeerError::Timeout { host, .. }
            | PeerError::Refused { host, .. }
            | PeerError::Protocol { host, .. }
            | PeerError::ToSelf { host }
            | PeerError::NoIdentity { host } => Some(host),
            PeerError::Announce(_) | PeerError::Closed => None,
        }
    }

    /// Whether the request may have reached the peer's daemon although no answer came back: it
    /// went out and what followed was no answer (a timeout, the connection closed, the stream
    /// broke). Refusals, failed dials and peers that do not speak the protocol never got it.
    pub fn may_have_been_delivered(&self) -> bool {
        match self {
            PeerError::Timeout { .. } => true,
            PeerError::Unreachable { reason, .. } => *reason == CONNECTION_CLOSED,
            PeerError::Protocol { cause, .. } => matches!(
                cause,
                RequestFailure::ConnectionClosed
                    | RequestFailure::Stream(_)
                    | RequestFailure::Timeout
            ),
            _ => false,
        }
    }
}

/// Why an announcement was not published.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("{0}")]
    Encode(#[from] EncodeError),
    #[error("no peer has joined the announcement topic yet")]
    NoSubscribers,
    #[error("{0}")]
    Gossip(#[source] Arc<libp2p::gossipsub::PublishError>),
    #[error("this host is off the network")]
    OffNetwork,
    /// A peer would reject it: the author may not make this announcement.
    #[error("{0}")]
    Rejected(#[from] AnnouncementRejected),
}

/// The answer the daemon owes a peer; dropping it unanswered refuses the request as
/// "unavailable" rather than leaving the peer to time out.
pub struct Responder<T>(oneshot::Sender<Response<T>>);

impl<T> Responder<T> {
    pub(crate) fn new() -> (Self, oneshot::Receiver<Response<T>>) {
        let (tx, rx) = oneshot::channel();
        (Responder(tx), rx)
    }

    pub fn send(self, answer: T) {
        // The peer may have given up already; nothing to do then.
        let _ = self.0.send(Response::Ok(answer));
    }

    pub fn refuse(self, reason: impl Into<String>) {
        let _ = self.0.send(Response::Refused(Refusal::Unavailable {
            reason: reason.into(),
        }));
    }
}

impl<T> std::fmt::Debug for Responder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

/// Turns what came back on a responder's channel into the response to send.
pub(crate) fn reply_or_unavailable<T>(
    r: Result<Response<T>, oneshot::error::RecvError>,
) -> Response<T> {
    r.unwrap_or_else(|_| {
        Response::Refused(Refusal::Unavailable {
            reason: "the daemon gave no answer".into(),
        })
    })
}

/// What peers ask of this host's daemon, and what happens to the peer set.
#[derive(Debug)]
pub enum InboundEvent {
    /// A peer hands us the token; answer with [`TokenAck`].
    Token {
        from: HostId,
        token: Token,
        reply: Responder<TokenAck>,
    },
    /// "Could you take this VM?" (`/scored/capacity/2`; a v1 peer's request names no VM).
    Capacity {
        from: HostId,
        request: PlacementRequest,
        reply: Responder<PlacementResponse>,
    },
    Stats {
        from: HostId,
        request: StatsRequest,
        reply: Responder<StatsResponse>,
    },
    /// "What do you run, what is each VM bound to, and what room have you?" (`/scored/group/1`),
    /// asked by a token holder planning a group move, of the hosts of its rack and of its
    /// destination racks. Answering holds and changes nothing.
    Survey {
        from: HostId,
        request: SurveyRequest,
        reply: Responder<SurveyResponse>,
    },
    /// "Migrate your VM `request.vm` to `request.to`" (`/scored/group/1`): the token holder asks
    /// this host to migrate one of its VMs as one move of its group move; answered when the
    /// migration ended (the transport waits up to [`P2pConfig::move_timeout`] for the answer).
    GroupMove {
        from: HostId,
        request: MoveRequest,
        reply: Responder<MoveResponse>,
    },
    /// A peer's announcement, already applied to the directory.
    Announcement {
        from: HostId,
        announcement: Announcement,
    },
    /// The first connection to a peer is up.
    PeerUp(HostId),
    /// The last connection to a peer closed (idle, liveness failure, or the peer went away).
    PeerDown(HostId),
}

/// The daemon's end of the inbound queue.
pub struct Inbound(mpsc::Receiver<InboundEvent>);

impl Inbound {
    pub(crate) fn channel() -> (mpsc::Sender<InboundEvent>, Inbound) {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        (tx, Inbound(rx))
    }

    /// The next event; `None` once the transport has shut down.
    pub async fn recv(&mut self) -> Option<InboundEvent> {
        self.0.recv().await
    }

    pub fn try_recv(&mut self) -> Option<InboundEvent> {
        self.0.try_recv().ok()
    }
}

/// Hands an inbound request to the daemon, or refuses it at once when the queue is full or gone.
pub(crate) fn deliver<T>(
    inbound: &mpsc::Sender<InboundEvent>,
    make: impl FnOnce(Responder<T>) -> InboundEvent,
) -> oneshot::Receiver<Response<T>> {
    let (responder, rx) = Responder::new();
    if let Err(e) = inbound.try_send(make(responder)) {
        let reason = match e {
            mpsc::error::TrySendError::Full(_) => "the daemon is busy",
            mpsc::error::TrySendError::Closed(_) => "the daemon is not running",
        };
        // The event (and its responder) came back in the error: refuse through it.
        match e.into_inner() {
            InboundEvent::Token { reply, .. } => reply.refuse(reason),
            InboundEvent::Capacity { reply, .. } => reply.refuse(reason),
            InboundEvent::Stats { reply, .. } => reply.refuse(reason),
            InboundEvent::Survey { reply, .. } => reply.refuse(reason),
            InboundEvent::GroupMove { reply, .. } => reply.refuse(reason),
            _ => {}
        }
    }
    rx
}

/// The hosts a transport has a connection to now, kept by the transport itself and read by the
/// daemon ([`Peers::connected`]).
#[derive(Clone, Default)]
pub(crate) struct Connected(Arc<std::sync::Mutex<std::collections::BTreeSet<HostId>>>);

impl Connected {
    pub(crate) fn set(&self, host: HostId, up: bool) {
        let mut hosts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if up {
            hosts.insert(host);
        } else {
            hosts.remove(&host);
        }
    }

    pub(crate) fn hosts(&self) -> Vec<HostId> {
        let hosts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        hosts.iter().copied().collect()
    }
}

/// The transport the daemon talks through. Every method names the peer by [`HostId`]; errors
/// name it by host name. Timeouts are the caller's: each call gives up after `timeout`.
pub trait Peers: Send + Sync + 'static {
    /// This host.
    fn me(&self) -> HostId;

    fn topology(&self) -> &Arc<Topology>;

    /// This host's location directory: what it runs, and where it believes other VMs are.
    fn directory(&self) -> &Arc<Directory>;

    /// Hands the token to `to` and waits for its acknowledgement.
    fn send_token(
        &self,
        to: HostId,
        token: Token,
        timeout: Duration,
    ) -> impl Future<Output = Result<TokenAck, PeerError>> + Send;

    /// Asks `host` which of `query.vms` it runs (one batch), and with `query.inventory` every
    /// VM it runs (`/scored/location/2`; a host that speaks only `/scored/location/1` answers
    /// without an inventory).
    fn query_locations(
        &self,
        host: HostId,
        query: LocationQuery,
        timeout: Duration,
    ) -> impl Future<Output = Result<LocationAnswer, PeerError>> + Send;

    /// Asks `host` for room, naming the VM that would move when `request.moving` is set (the
    /// destination then judges it by the placement rules too).
    fn query_capacity(
        &self,
        host: HostId,
        request: PlacementRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<PlacementResponse, PeerError>> + Send;

    fn query_stats(
        &self,
        host: HostId,
        request: StatsRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<StatsResponse, PeerError>> + Send;

    /// Asks `host` what it runs, what each of its VMs is bound to and what room it has, for a
    /// group move (`/scored/group/1`). Nothing is held there by asking.
    fn survey(
        &self,
        host: HostId,
        request: SurveyRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<SurveyResponse, PeerError>> + Send;

    /// Asks `host` to migrate its VM `request.vm` to `request.to`, as one move of the group move
    /// this host decided holding the token at `request.at` (`/scored/group/1`), and waits for
    /// the migration to end: `timeout` must cover a whole migration. A refusal says why that
    /// host would not (or could not) move it.
    fn group_move(
        &self,
        host: HostId,
        request: MoveRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<MoveResponse, PeerError>> + Send;

    /// Sends `announcement` to every peer, best effort (a peer that misses it corrects its
    /// cache on its next lookup). Does not apply it to our own directory.
    fn publish(
        &self,
        announcement: Announcement,
    ) -> impl Future<Output = Result<(), PeerError>> + Send;

    /// Sends this host's metadata groups (`/scored/announce/2`) to every peer, best effort.
    /// Does not apply it to our own directory.
    fn publish_groups(
        &self,
        groups: GroupsAnnounce,
    ) -> impl Future<Output = Result<(), PeerError>> + Send;

    /// Capacity of many hosts at once (at most [`MAX_CONCURRENT_QUERIES`] in flight), in the
    /// order given.
    fn query_capacities<'a>(
        &'a self,
        hosts: &'a [HostId],
        request: PlacementRequest,
        timeout: Duration,
    ) -> impl Future<Output = Vec<(HostId, Result<PlacementResponse, PeerError>)>> + Send + 'a
    where
        Self: Sized,
    {
        fan_out(hosts, move |h| {
            self.query_capacity(h, request.clone(), timeout)
        })
    }

    /// The first of `hosts`, in the order given, whose capacity answer `takes` approves: asked
    /// `batch` at a time, all of a batch at once, so hosts that do not answer cost one timeout
    /// per batch, not one each. Every host of a batch is asked even when an earlier one says yes
    /// (a named request holds room there until its hold ends, as for the decision's candidates).
    fn first_accepting<'a>(
        &'a self,
        hosts: &'a [HostId],
        request: PlacementRequest,
        timeout: Duration,
        batch: usize,
        takes: impl Fn(&PlacementResponse) -> bool + Send + Sync + 'a,
    ) -> impl Future<Output = Option<HostId>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            for chunk in hosts.chunks(batch.max(1)) {
                let answers = self.query_capacities(chunk, request.clone(), timeout).await;
                if let Some((h, _)) = answers.iter().find(|(_, r)| r.as_ref().is_ok_and(&takes)) {
                    return Some(*h);
                }
            }
            None
        }
    }

    /// Statistics of every other host, for the global policy's round start. Costs one request
    /// per host: O(hosts) messages per round.
    fn query_all_stats(
        &self,
        request: StatsRequest,
        timeout: Duration,
    ) -> impl Future<Output = Vec<(HostId, Result<StatsResponse, PeerError>)>> + Send + '_
    where
        Self: Sized,
    {
        async move {
            let others = self.others();
            self.query_stats_of(&others, request, timeout).await
        }
    }

    /// Statistics of `hosts` (at most [`MAX_CONCURRENT_QUERIES`] in flight), in the order given.
    fn query_stats_of<'a>(
        &'a self,
        hosts: &'a [HostId],
        request: StatsRequest,
        timeout: Duration,
    ) -> impl Future<Output = Vec<(HostId, Result<StatsResponse, PeerError>)>> + Send + 'a
    where
        Self: Sized,
    {
        fan_out(hosts, move |h| self.query_stats(h, request, timeout))
    }

    /// Surveys of `hosts` (at most [`MAX_CONCURRENT_QUERIES`] in flight), in the order given.
    fn surveys<'a>(
        &'a self,
        hosts: &'a [HostId],
        request: SurveyRequest,
        timeout: Duration,
    ) -> impl Future<Output = Vec<(HostId, Result<SurveyResponse, PeerError>)>> + Send + 'a
    where
        Self: Sized,
    {
        fan_out(hosts, move |h| self.survey(h, request, timeout))
    }

    /// The hosts this host has a connection to now, as the transport knows them: what `scored
    /// status` and `scored_peers_connected` report. The transport's "peer up" and "peer down"
    /// events say when it changes, but are dropped when the daemon's queue is full; this is not.
    fn connected(&self) -> Vec<HostId>;

    /// The peers this host keeps connections to whatever happens (its gossip overlay fingers):
    /// asking them costs no new connection. Empty for a transport without kept connections.
    fn neighbours(&self) -> Vec<HostId> {
        Vec::new()
    }

    /// This transport's counters, where it keeps them: an inventory a lookup receives and
    /// refuses counts in `scored_p2p_rejected_total` as the same inventory gossiped would.
    fn counters(&self) -> Option<&P2pMetrics> {
        None
    }

    /// Where `vms` run: from the directory when it knows, else by asking peers (batched).
    fn locate<'a>(
        &'a self,
        vms: &'a [VmId],
        options: LocateOptions,
    ) -> impl Future<Output = Locations> + Send + 'a
    where
        Self: Sized,
    {
        directory::locate(self, vms, options)
    }

    /// Records that `vm` left this host for `to` under token `at` and tells every peer.
    fn announce_migration(
        &self,
        vm: VmId,
        to: HostId,
        at: Stamp,
    ) -> impl Future<Output = Result<(), PeerError>> + Send + '_
    where
        Self: Sized,
    {
        self.directory().departed(vm, to, at);
        let topo = self.topology();
        let a = Announcement::Migration(MigrationAnnounce {
            vm,
            from: topo.host(self.me()).name.clone(),
            to: topo.host(to).name.clone(),
            at,
        });
        self.publish(a)
    }

    /// Tells every peer which VMs run here, so their caches start warm, and which groups their
    /// metadata names (when any does: an empty list is not news).
    fn announce_inventory(&self) -> impl Future<Output = Result<(), PeerError>> + Send + '_
    where
        Self: Sized,
    {
        async move {
            let a = self.directory().inventory();
            let groups = self.directory().local_groups_announcement();
            self.publish(a).await?;
            match groups {
                Some(g) => self.publish_groups(g).await,
                None => Ok(()),
            }
        }
    }

    /// Every host in the topology but this one that this transport can reach: a host it has no
    /// way to address is never asked (asking would only fail, and count as a host not
    /// answering).
    fn others(&self) -> Vec<HostId> {
        self.topology()
            .hosts()
            .iter()
            .map(|h| h.id)
            .filter(|h| *h != self.me())
            .collect()
    }
}

/// Runs `query` for every host, at most [`MAX_CONCURRENT_QUERIES`] at a time, keeping order.
pub(crate) async fn fan_out<T, F, Fut>(hosts: &[HostId], query: F) -> Vec<(HostId, T)>
where
    F: Fn(HostId) -> Fut,
    Fut: Future<Output = T>,
{
    let queries = hosts.iter().copied().map(|h| query(h).map(move |r| (h, r)));
    futures::stream::iter(queries)
        .buffered(MAX_CONCURRENT_QUERIES)
        .collect()
        .await
}

/// A stable digest of what must agree across daemons: link weights and every host's name,
/// place in the tree, address and identity. Host order does not matter (the wire names hosts);
/// capacities do not either (each host answers for its own). FNV-1a: this guards against
/// mistakes, not attackers, who are kept out by the PeerId allowlist.
pub fn fingerprint(topology: &Topology) -> TopologyFingerprint {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so that ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for l in 1..=topology.levels() {
        eat(&topology.weights().weight(l).to_bits().to_le_bytes());
    }
    let mut hosts: Vec<_> = topology.hosts().iter().collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    for host in hosts {
        eat(host.name.as_bytes());
        for s in &host.path {
            eat(topology.switch(*s).name.as_bytes());
        }
        eat(host
            .address
            .map(|a| a.to_string())
            .unwrap_or_default()
            .as_bytes());
        eat(&host.p2p_port.to_le_bytes());
        eat(&host.peer_id.map(|p| p.to_bytes()).unwrap_or_default());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Topology {
        Topology::parse(Path::new("t.toml"), text).unwrap()
    }

    const HEAD: &str = "[levels]\nweights = [1, 3]\n";
    const A: &str = "[[host]]\nname = \"a\"\npath = [\"agg\", \"tor1\"]\naddress = \"127.0.0.1\"\np2p_port = 7001\n";
    const B: &str = "[[host]]\nname = \"b\"\npath = [\"agg\", \"tor2\"]\naddress = \"127.0.0.1\"\np2p_port = 7002\n";

    #[test]
    fn fingerprint_ignores_order_and_capacity_but_not_the_tree() {
        let base_text = format!("{HEAD}{A}{B}");
        let base = fingerprint(&parse(&base_text));
        assert_eq!(fingerprint(&parse(&format!("{HEAD}{B}{A}"))), base);
        let smaller = format!("{HEAD}{A}max_vms = 3\n{B}");
        assert_eq!(fingerprint(&parse(&smaller)), base);
        assert_ne!(
            fingerprint(&parse(&base_text.replace("tor2", "tor1"))),
            base
        );
        assert_ne!(
            fingerprint(&parse(&base_text.replace("[1, 3]", "[1, 4]"))),
            base
        );
        assert_ne!(
            fingerprint(&parse(&base_text.replace("7002", "7003"))),
            base
        );
        assert_ne!(fingerprint(&parse(&format!("{HEAD}{A}"))), base);
    }
}
