//! Announcements over gossipsub: which peers this host keeps connections to for the mesh (its
//! "fingers"), publishing (migrations on request, the inventory on a timer), and checking,
//! applying and forwarding what others announce.
//!
//! Announcements travel by gossipsub rather than a request to every host: a migrating host
//! would otherwise open up to 2,559 streams per migration in the dc-2560 data centre, while
//! gossipsub reaches everyone in O(log n) hops over a handful of kept connections, signs each
//! message with its author's key (so a host can only speak for itself), and its best-effort
//! delivery is enough: a missed announcement only leaves a cache entry stale, which the
//! directory corrects on the next lookup. This module does not run the swarm: the driver calls
//! it with the swarm's gossip behaviour.

use super::directory::{Applied, Directory};
use super::metrics::P2pMetrics;
use super::{AnnounceError, InboundEvent};
use crate::topology::{HostId, Topology};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::swarm::ConnectionId;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{PeerId, Swarm};
use scored_proto::{ANNOUNCE_TOPIC, ANNOUNCE_TOPIC_V2, Announcement, GroupsAnnounce};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::mpsc;

/// This host's side of the announcement topic.
pub(crate) struct Gossip {
    topology: Arc<Topology>,
    me: HostId,
    directory: Arc<Directory>,
    inbound: mpsc::Sender<InboundEvent>,
    topic: IdentTopic,
    /// `/scored/announce/2`: the groups VMs' metadata names (hosts of an older release do not
    /// subscribe, and so never receive what they could not read).
    topic_v2: IdentTopic,
    fingers: Vec<PeerId>,
    metrics: P2pMetrics,
    /// (author, reason) pairs already logged: a rejected announcement is counted every time
    /// and logged once per author and reason. Bounded by the topology's hosts × the reasons.
    logged: HashSet<(HostId, &'static str)>,
}

/// The `reason` of announcements that do not decode.
pub(crate) const UNDECODABLE: &str = "undecodable_announcement";

impl Gossip {
    pub(crate) fn new(
        topology: Arc<Topology>,
        me: HostId,
        directory: Arc<Directory>,
        inbound: mpsc::Sender<InboundEvent>,
        metrics: P2pMetrics,
    ) -> Self {
        let fingers = fingers(&topology, me);
        Gossip {
            topology,
            me,
            directory,
            inbound,
            topic: IdentTopic::new(ANNOUNCE_TOPIC),
            topic_v2: IdentTopic::new(ANNOUNCE_TOPIC_V2),
            fingers,
            metrics,
            logged: HashSet::new(),
        }
    }

    pub(crate) fn subscribe(
        &self,
        gossip: &mut gossipsub::Behaviour,
    ) -> Result<(), gossipsub::SubscriptionError> {
        gossip.subscribe(&self.topic)?;
        gossip.subscribe(&self.topic_v2).map(|_| ())
    }

    /// Dials the fingers that have no connection now; returns the dials started.
    pub(crate) fn dial_fingers<B: libp2p::swarm::NetworkBehaviour>(
        &self,
        swarm: &mut Swarm<B>,
    ) -> Vec<(ConnectionId, PeerId)> {
        let mut started = Vec::new();
        for p in &self.fingers {
            if swarm.is_connected(p) {
                continue;
            }
            let opts = DialOpts::peer_id(*p)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let id = opts.connection_id();
            match swarm.dial(opts) {
                Ok(()) => started.push((id, *p)),
                Err(e) => {
                    tracing::debug!(peer = %self.host_name(p), error = %e, "gossip dial failed")
                }
            }
        }
        started
    }

    /// Publishes an encoded announcement.
    pub(crate) fn publish(
        &self,
        gossip: &mut gossipsub::Behaviour,
        data: Vec<u8>,
    ) -> Result<(), AnnounceError> {
        Self::publish_on(&self.metrics, gossip, &self.topic, data)
    }

    /// Publishes an encoded groups announcement (`/scored/announce/2`).
    pub(crate) fn publish_groups(
        &self,
        gossip: &mut gossipsub::Behaviour,
        data: Vec<u8>,
    ) -> Result<(), AnnounceError> {
        Self::publish_on(&self.metrics, gossip, &self.topic_v2, data)
    }

    fn publish_on(
        metrics: &P2pMetrics,
        gossip: &mut gossipsub::Behaviour,
        topic: &IdentTopic,
        data: Vec<u8>,
    ) -> Result<(), AnnounceError> {
        match gossip.publish(topic.clone(), data) {
            Ok(_) => {
                metrics.announcements_published.inc();
                Ok(())
            }
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                Err(AnnounceError::NoSubscribers)
            }
            Err(e) => Err(AnnounceError::Gossip(Arc::new(e))),
        }
    }

    /// Tells every peer which VMs run here, so their caches start warm.
    pub(crate) fn publish_inventory(&self, gossip: &mut gossipsub::Behaviour) {
        let a = self.directory.inventory();
        match scored_proto::encode(&a) {
            Ok(data) => {
                if let Err(e) = self.publish(gossip, data) {
                    tracing::debug!(error = %e, "inventory not published");
                }
            }
            Err(e) => tracing::warn!(error = %e, "inventory too large to announce"),
        }
        let Some(groups) = self.directory.local_groups_announcement() else {
            return;
        };
        match scored_proto::encode(&groups) {
            Ok(data) => {
                if let Err(e) = self.publish_groups(gossip, data) {
                    tracing::debug!(error = %e, "groups not published");
                }
            }
            Err(e) => tracing::warn!(error = %e, "groups too large to announce"),
        }
    }

    /// Peers in this host's mesh for the announcement topic.
    pub(crate) fn mesh_size(&self, gossip: &gossipsub::Behaviour) -> usize {
        gossip.mesh_peers(&self.topic.hash()).count()
    }

    /// Checks, applies and forwards one announcement, and tells gossip whether to pass it on.
    pub(crate) fn receive(
        &mut self,
        gossip: &mut gossipsub::Behaviour,
        propagation_source: PeerId,
        message_id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) -> MessageAcceptance {
        self.metrics.announcements_received.inc();
        let verdict = if message.topic == self.topic_v2.hash() {
            self.judge_groups(message.source, &message.data)
        } else {
            self.judge(message.source, &message.data)
        };
        gossip.report_message_validation_result(&message_id, &propagation_source, verdict);
        verdict
    }

    fn judge(&mut self, source: Option<PeerId>, data: &[u8]) -> MessageAcceptance {
        // gossipsub checked the signature: the source is the author.
        let Some(author) = source
            .and_then(|p| self.topology.host_by_peer(&p))
            .map(|h| h.id)
        else {
            return MessageAcceptance::Reject;
        };
        let announcement = match scored_proto::decode::<Announcement>(data) {
            Ok(a) => a,
            Err(e) => {
                self.rejected(author, UNDECODABLE, &e);
                return MessageAcceptance::Reject;
            }
        };
        if author == self.me {
            return MessageAcceptance::Ignore;
        }
        match self.directory.apply(author, &announcement) {
            Err(e) => {
                self.rejected(author, e.reason(), &e);
                MessageAcceptance::Reject
            }
            // Valid, and maybe news to hosts further on; but not to this host's daemon.
            Ok(Applied::Repeat) => MessageAcceptance::Accept,
            Ok(Applied::News) => {
                let event = InboundEvent::Announcement {
                    from: author,
                    announcement,
                };
                if self.inbound.try_send(event).is_err() {
                    let name = &self.topology.host(author).name;
                    tracing::debug!(author = %name, "daemon queue full: announcement applied, event dropped");
                }
                MessageAcceptance::Accept
            }
        }
    }

    /// Checks and applies a groups announcement (the daemon reads groups from the directory when
    /// it needs them: no event).
    fn judge_groups(&mut self, source: Option<PeerId>, data: &[u8]) -> MessageAcceptance {
        let Some(author) = source
            .and_then(|p| self.topology.host_by_peer(&p))
            .map(|h| h.id)
        else {
            return MessageAcceptance::Reject;
        };
        let groups = match scored_proto::decode::<GroupsAnnounce>(data) {
            Ok(g) => g,
            Err(e) => {
                self.rejected(author, UNDECODABLE, &e);
                return MessageAcceptance::Reject;
            }
        };
        if author == self.me {
            return MessageAcceptance::Ignore;
        }
        match self
            .directory
            .apply_groups(author, &groups, std::time::Instant::now())
        {
            Ok(()) => MessageAcceptance::Accept,
            Err(e) => {
                self.rejected(author, e.reason(), &e);
                MessageAcceptance::Reject
            }
        }
    }

    /// Counts a rejected announcement, and logs it the first time for its author and reason.
    fn rejected(&mut self, author: HostId, reason: &'static str, error: &dyn std::fmt::Display) {
        self.metrics.reject(reason);
        if self.logged.insert((author, reason)) {
            let h = self.topology.host(author);
            tracing::warn!(
                author = %h.name,
                peer = ?h.peer_id,
                reason,
                %error,
                "announcement rejected (logged once per host and reason; counted in scored_p2p_rejected_total)"
            );
        }
    }

    fn host_name(&self, peer: &PeerId) -> String {
        self.topology
            .host_by_peer(peer)
            .map(|h| h.name.clone())
            .unwrap_or_else(|| peer.to_string())
    }
}

/// Chords each host dials besides its successor (see [`fingers`]).
pub(crate) const CHORDS: usize = 3;

/// The peers this host keeps connections to for gossip: its successor along the hosts sorted
/// by name, and [`CHORDS`] hosts at distances drawn from a hash of this host's PeerId. The
/// successors alone make a ring, so the overlay is connected whatever the hashes give; the
/// chords make it a random graph of small degree, whose diameter grows as log n / log(degree)
/// and which stays connected with a few hosts down. A host dials at most `CHORDS + 1` peers and
/// is dialled by as many on average: about 8 connections kept per host at any size. (The
/// earlier overlay, distances 1, 2, 4, …, kept 2·log₂ n: 20 at 1,000 hosts, which alone took
/// the 20,000 sockets one process may open when the lab runs 1,000 daemons in it.)
fn fingers(topology: &Topology, me: HostId) -> Vec<PeerId> {
    finger_hosts(topology, me)
        .into_iter()
        .filter_map(|h| topology.host(h).peer_id)
        .collect()
}

/// The hosts [`fingers`] names: the peers `me` dials and keeps connections to.
pub(crate) fn finger_hosts(topology: &Topology, me: HostId) -> Vec<HostId> {
    let hosts = ring(topology);
    match hosts.iter().position(|h| h.id == me) {
        Some(i) => fingers_at(&hosts, i),
        None => vec![],
    }
}

/// Every host whose connection to `me` the overlay keeps: `me`'s fingers and the hosts that
/// have `me` among theirs (they dial it and keep the connection from their end).
pub fn overlay_neighbours(topology: &Topology, me: HostId) -> Vec<PeerId> {
    let hosts = ring(topology);
    let Some(i) = hosts.iter().position(|h| h.id == me) else {
        return vec![];
    };
    let mut out = fingers_at(&hosts, i);
    for j in (0..hosts.len()).filter(|&j| j != i) {
        if fingers_at(&hosts, j).contains(&me) && !out.contains(&hosts[j].id) {
            out.push(hosts[j].id);
        }
    }
    out.into_iter()
        .filter_map(|h| topology.host(h).peer_id)
        .collect()
}

/// The hosts of the overlay in its order: those with a peer id and an address, by name.
fn ring(topology: &Topology) -> Vec<&crate::topology::Host> {
    let mut hosts: Vec<_> = topology
        .hosts()
        .iter()
        .filter(|h| h.peer_id.is_some() && h.address.is_some())
        .collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    hosts
}

/// The fingers of the `i`th host of [`ring`].
fn fingers_at(hosts: &[&crate::topology::Host], i: usize) -> Vec<HostId> {
    let n = hosts.len();
    let host_at = |d: usize| Some(hosts[(i + d) % n].id).filter(|_| !d.is_multiple_of(n));
    let mut out: Vec<HostId> = host_at(1).into_iter().collect();
    if n > 2 {
        let mut seed = stable_hash(&hosts[i].peer_id.map(|p| p.to_bytes()).unwrap_or_default());
        // Distances in [2, n): the successor is already there. A fixed number of draws, so a
        // small ring with few distinct distances ends too.
        for _ in 0..CHORDS * 4 {
            if out.len() > CHORDS {
                break;
            }
            seed = splitmix(seed);
            if let Some(h) = host_at(2 + (seed % (n as u64 - 2)) as usize)
                && !out.contains(&h)
            {
                out.push(h);
            }
        }
    }
    out
}

/// FNV-1a: the same on every build and platform, so every release draws the same chords.
fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;
    use std::collections::{HashMap, HashSet};

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

    /// Hops from host 0 to the farthest host, or `None` when some host cannot be reached.
    fn eccentricity(adjacent: &[HashSet<usize>], down: &HashSet<usize>) -> Option<usize> {
        let n = adjacent.len();
        let mut dist = vec![usize::MAX; n];
        let first = (0..n).find(|i| !down.contains(i))?;
        dist[first] = 0;
        let mut queue = std::collections::VecDeque::from([first]);
        while let Some(i) = queue.pop_front() {
            for &j in &adjacent[i] {
                if dist[j] == usize::MAX && !down.contains(&j) {
                    dist[j] = dist[i] + 1;
                    queue.push_back(j);
                }
            }
        }
        (0..n)
            .filter(|i| !down.contains(i))
            .map(|i| dist[i])
            .try_fold(0, |m, d| (d != usize::MAX).then_some(m.max(d)))
    }

    fn overlay(n: usize) -> Vec<HashSet<usize>> {
        overlay_of(&topology_with_identities(n))
    }

    /// Each host's neighbours in the overlay: the hosts it dials and those that dial it.
    fn overlay_of(topo: &Topology) -> Vec<HashSet<usize>> {
        let n = topo.hosts().len();
        let index: HashMap<PeerId, usize> = topo
            .hosts()
            .iter()
            .map(|h| (h.peer_id.unwrap(), h.id.index()))
            .collect();
        let mut adjacent = vec![HashSet::new(); n];
        for h in topo.hosts() {
            let fingers = fingers(topo, h.id);
            assert!(
                fingers.len() <= CHORDS + 1,
                "n={n}: {} dialled",
                fingers.len()
            );
            for p in fingers {
                let j = index[&p];
                assert_ne!(j, h.id.index(), "a host never dials itself");
                adjacent[h.id.index()].insert(j);
                adjacent[j].insert(h.id.index());
            }
        }
        adjacent
    }

    #[test]
    fn gossip_fingers_form_a_connected_overlay_of_small_degree_and_diameter() {
        for n in [1usize, 2, 3, 5, 8, 33] {
            let adjacent = overlay(n);
            assert!(
                eccentricity(&adjacent, &HashSet::new()).is_some(),
                "n={n}: overlay not connected"
            );
        }
        // At a thousand hosts: few connections per host (the old powers-of-two fingers kept
        // 20), few hops (a ring alone would need 500), and still connected with 2% down.
        let n = 1000;
        let adjacent = overlay(n);
        let mean = adjacent.iter().map(HashSet::len).sum::<usize>() as f64 / n as f64;
        assert!(mean <= 2.0 * (CHORDS + 1) as f64, "mean degree {mean}");
        let hops = eccentricity(&adjacent, &HashSet::new()).unwrap();
        assert!(hops <= 12, "{hops} hops across 1,000 hosts");
        let down: HashSet<usize> = (0..n).filter(|i| i % 50 == 7).collect();
        assert!(
            eccentricity(&adjacent, &down).is_some(),
            "not connected with 2% of the hosts down"
        );
    }

    #[test]
    fn a_hosts_overlay_neighbours_are_the_hosts_it_dials_and_those_that_dial_it() {
        for n in [1usize, 2, 3, 8, 40] {
            let topo = topology_with_identities(n);
            let adjacent = overlay_of(&topo);
            for h in topo.hosts() {
                let got: HashSet<usize> = overlay_neighbours(&topo, h.id)
                    .iter()
                    .map(|p| topo.host_by_peer(p).unwrap().id.index())
                    .collect();
                assert_eq!(got, adjacent[h.id.index()], "n={n}, host {}", h.name);
            }
        }
    }
}
