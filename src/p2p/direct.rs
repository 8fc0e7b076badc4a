//! [`Peers`] by direct calls inside one process: the simulator's and loopback tests' transport.
//! Requests reach the target host's daemon through the same [`InboundEvent`] queue as over
//! libp2p, and location queries are answered from the target's [`Directory`], so the daemon
//! cannot tell the two transports apart. Hosts can be taken off the network to test failures.

use super::directory::{Applied, Directory};
use super::metrics::P2pMetrics;
use super::{
    AnnounceError, Inbound, InboundEvent, PeerError, Peers, deliver, reply_or_unavailable,
};
use crate::topology::{HostId, Topology};
use scored_proto::{
    Announcement, GroupsAnnounce, LocationAnswer, LocationQuery, MoveRequest, MoveResponse,
    PlacementRequest, PlacementResponse, Response, StatsRequest, StatsResponse, SurveyRequest,
    SurveyResponse, Token, TokenAck, WireMessage,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A host that joined the network: where its daemon's requests go, and its directory.
struct JoinedHost {
    inbound: mpsc::Sender<InboundEvent>,
    directory: Arc<Directory>,
    reachable: bool,
}

/// The in-process network that hosts join.
#[derive(Clone)]
pub struct DirectNetwork {
    topology: Arc<Topology>,
    hosts: Arc<Mutex<HashMap<HostId, JoinedHost>>>,
    /// How long a statistics request takes to reach its host (none by default).
    stats_delay: Arc<Mutex<Duration>>,
}

impl DirectNetwork {
    pub fn new(topology: Arc<Topology>) -> Self {
        DirectNetwork {
            topology,
            hosts: Arc::new(Mutex::new(HashMap::new())),
            stats_delay: Arc::new(Mutex::new(Duration::ZERO)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<HostId, JoinedHost>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds host `me` (replacing an earlier instance, as a restarted daemon would).
    pub fn join(&self, me: HostId, directory: Arc<Directory>) -> (DirectPeers, Inbound) {
        let (tx, inbound) = Inbound::channel();
        let mut hosts = self.lock();
        for (&h, n) in hosts.iter() {
            if h != me && n.reachable {
                let _ = n.inbound.try_send(InboundEvent::PeerUp(me));
            }
        }
        hosts.insert(
            me,
            JoinedHost {
                inbound: tx,
                directory: directory.clone(),
                reachable: true,
            },
        );
        (
            DirectPeers {
                me,
                network: self.clone(),
                directory,
                metrics: P2pMetrics::default(),
            },
            inbound,
        )
    }

    /// Takes a host off the network (`false`: as if its daemon or links died) or back on.
    pub fn set_reachable(&self, host: HostId, reachable: bool) {
        let mut hosts = self.lock();
        let Some(n) = hosts.get_mut(&host) else {
            return;
        };
        if n.reachable == reachable {
            return;
        }
        n.reachable = reachable;
        let event = |h| {
            if reachable {
                InboundEvent::PeerUp(h)
            } else {
                InboundEvent::PeerDown(h)
            }
        };
        for (&h, other) in hosts.iter() {
            if h != host && other.reachable {
                let _ = other.inbound.try_send(event(host));
            }
        }
    }

    /// Delays every statistics request by `delay` before it reaches its host, as on a cluster
    /// too loaded to answer the regeneration survey in time (128 daemons on one machine at cold
    /// start), while tokens and announcements still flow.
    pub fn set_stats_delay(&self, delay: Duration) {
        *self.stats_delay.lock().unwrap_or_else(|p| p.into_inner()) = delay;
    }

    fn route(
        &self,
        from: HostId,
        to: HostId,
    ) -> Result<(mpsc::Sender<InboundEvent>, Arc<Directory>), PeerError> {
        let name = || {
            self.topology
                .hosts()
                .get(to.index())
                .map(|h| h.name.clone())
                .unwrap_or_else(|| format!("#{}", to.0))
        };
        if from == to {
            return Err(PeerError::ToSelf { host: name() });
        }
        let hosts = self.lock();
        let unreachable = |reason: &'static str| PeerError::Unreachable {
            host: name(),
            reason,
        };
        if !hosts.get(&from).is_some_and(|n| n.reachable) {
            return Err(unreachable("this host is off the network"));
        }
        match hosts.get(&to) {
            Some(n) if n.reachable => Ok((n.inbound.clone(), n.directory.clone())),
            Some(_) => Err(unreachable("host is off the network")),
            None => Err(unreachable("no daemon joined for this host")),
        }
    }
}

/// One host's handle on a [`DirectNetwork`].
#[derive(Clone)]
pub struct DirectPeers {
    me: HostId,
    network: DirectNetwork,
    directory: Arc<Directory>,
    metrics: P2pMetrics,
}

impl DirectPeers {
    /// This host's transport counters (those the in-process transport keeps).
    pub fn metrics(&self) -> &P2pMetrics {
        &self.metrics
    }

    async fn ask<T>(
        &self,
        to: HostId,
        what: &'static str,
        protocol: &'static str,
        timeout: Duration,
        make: impl FnOnce(super::Responder<T>) -> InboundEvent,
    ) -> Result<T, PeerError> {
        self.metrics.sent(protocol);
        let (inbound, _) = self.network.route(self.me, to)?;
        let rx: oneshot::Receiver<Response<T>> = deliver(&inbound, make);
        let host = || self.network.topology.host(to).name.clone();
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(PeerError::Timeout {
                host: host(),
                what,
                after: timeout,
            }),
            Ok(r) => match reply_or_unavailable(r) {
                Response::Ok(v) => Ok(v),
                Response::Refused(refusal) => Err(PeerError::Refused {
                    host: host(),
                    what,
                    refusal,
                }),
            },
        }
    }
}

impl Peers for DirectPeers {
    fn me(&self) -> HostId {
        self.me
    }

    fn topology(&self) -> &Arc<Topology> {
        &self.network.topology
    }

    fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    fn connected(&self) -> Vec<HostId> {
        let hosts = self.network.lock();
        if !hosts.get(&self.me).is_some_and(|n| n.reachable) {
            return Vec::new();
        }
        let mut up: Vec<HostId> = hosts
            .iter()
            .filter(|(h, n)| **h != self.me && n.reachable)
            .map(|(h, _)| *h)
            .collect();
        up.sort_unstable();
        up
    }

    fn counters(&self) -> Option<&P2pMetrics> {
        Some(&self.metrics)
    }

    async fn send_token(
        &self,
        to: HostId,
        token: Token,
        timeout: Duration,
    ) -> Result<TokenAck, PeerError> {
        let from = self.me;
        self.ask(
            to,
            Token::NAME,
            scored_proto::TOKEN_PROTOCOL,
            timeout,
            |reply| InboundEvent::Token { from, token, reply },
        )
        .await
    }

    async fn query_locations(
        &self,
        host: HostId,
        query: LocationQuery,
        _timeout: Duration,
    ) -> Result<LocationAnswer, PeerError> {
        self.metrics.sent(scored_proto::LOCATION_PROTOCOL);
        let (_, directory) = self.network.route(self.me, host)?;
        Ok(directory.answer_query(&query))
    }

    async fn query_capacity(
        &self,
        host: HostId,
        request: PlacementRequest,
        timeout: Duration,
    ) -> Result<PlacementResponse, PeerError> {
        let from = self.me;
        self.ask(
            host,
            PlacementRequest::NAME,
            scored_proto::CAPACITY_PROTOCOL,
            timeout,
            |reply| InboundEvent::Capacity {
                from,
                request,
                reply,
            },
        )
        .await
    }

    async fn query_stats(
        &self,
        host: HostId,
        request: StatsRequest,
        timeout: Duration,
    ) -> Result<StatsResponse, PeerError> {
        let from = self.me;
        let delay = *self
            .network
            .stats_delay
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if delay > Duration::ZERO {
            // The request is late, not the answer: the time counts against the timeout.
            return match tokio::time::timeout(timeout, tokio::time::sleep(delay)).await {
                Err(_) => Err(PeerError::Timeout {
                    host: self.network.topology.host(host).name.clone(),
                    what: StatsRequest::NAME,
                    after: timeout,
                }),
                Ok(()) => {
                    let left = timeout.saturating_sub(delay);
                    self.ask(
                        host,
                        StatsRequest::NAME,
                        scored_proto::STATS_PROTOCOL,
                        left,
                        |reply| InboundEvent::Stats {
                            from,
                            request,
                            reply,
                        },
                    )
                    .await
                }
            };
        }
        self.ask(
            host,
            StatsRequest::NAME,
            scored_proto::STATS_PROTOCOL,
            timeout,
            |reply| InboundEvent::Stats {
                from,
                request,
                reply,
            },
        )
        .await
    }

    async fn survey(
        &self,
        host: HostId,
        request: SurveyRequest,
        timeout: Duration,
    ) -> Result<SurveyResponse, PeerError> {
        let from = self.me;
        self.ask(
            host,
            SurveyRequest::NAME,
            scored_proto::GROUP_PROTOCOL,
            timeout,
            |reply| InboundEvent::Survey {
                from,
                request,
                reply,
            },
        )
        .await
    }

    async fn group_move(
        &self,
        host: HostId,
        request: MoveRequest,
        timeout: Duration,
    ) -> Result<MoveResponse, PeerError> {
        let from = self.me;
        self.ask(
            host,
            super::rpc::MOVE_REQUEST,
            scored_proto::GROUP_PROTOCOL,
            timeout,
            |reply| InboundEvent::GroupMove {
                from,
                request,
                reply,
            },
        )
        .await
    }

    async fn publish(&self, announcement: Announcement) -> Result<(), PeerError> {
        let targets: Vec<(mpsc::Sender<InboundEvent>, Arc<Directory>)> = {
            let hosts = self.network.lock();
            if !hosts.get(&self.me).is_some_and(|n| n.reachable) {
                return Err(PeerError::Announce(AnnounceError::OffNetwork));
            }
            hosts
                .iter()
                .filter(|(h, n)| **h != self.me && n.reachable)
                .map(|(_, n)| (n.inbound.clone(), n.directory.clone()))
                .collect()
        };
        // As gossipsub: an announcement with nobody to hear it is not published.
        if targets.is_empty() {
            return Err(PeerError::Announce(AnnounceError::NoSubscribers));
        }
        self.metrics.announcements_published.inc();
        for (inbound, directory) in targets {
            // The same check a libp2p receiver makes on the signed author.
            match directory.apply(self.me, &announcement) {
                Err(e) => return Err(PeerError::Announce(e.into())),
                Ok(Applied::Repeat) => continue,
                Ok(Applied::News) => {}
            }
            let _ = inbound.try_send(InboundEvent::Announcement {
                from: self.me,
                announcement: announcement.clone(),
            });
        }
        Ok(())
    }

    async fn publish_groups(&self, groups: GroupsAnnounce) -> Result<(), PeerError> {
        let targets: Vec<Arc<Directory>> = {
            let hosts = self.network.lock();
            if !hosts.get(&self.me).is_some_and(|n| n.reachable) {
                return Err(PeerError::Announce(AnnounceError::OffNetwork));
            }
            hosts
                .iter()
                .filter(|(h, n)| **h != self.me && n.reachable)
                .map(|(_, n)| n.directory.clone())
                .collect()
        };
        let now = std::time::Instant::now();
        for directory in targets {
            // The same check a libp2p receiver makes on the signed author.
            directory
                .apply_groups(self.me, &groups, now)
                .map_err(|e| PeerError::Announce(e.into()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2p::{LocateOptions, Responder};
    use scored_proto::{Located, Refusal, Stamp, VmId};
    use std::path::Path;

    /// `n` hosts, two per rack, no identities (the direct transport needs none).
    fn topology(n: usize) -> Arc<Topology> {
        let mut text = String::from("[levels]\nweights = [1, 3]\n");
        for i in 0..n {
            text.push_str(&format!(
                "[[host]]\nname = \"h{i}\"\npath = [\"agg\", \"tor{}\"]\n",
                i / 2
            ));
        }
        Arc::new(Topology::parse(Path::new("direct.toml"), &text).unwrap())
    }

    fn vm(host: usize, i: u8) -> VmId {
        VmId::from_ipv4(std::net::Ipv4Addr::new(10, 0, host as u8, i))
    }

    struct Cluster {
        net: DirectNetwork,
        peers: Vec<DirectPeers>,
        inbound: Vec<Inbound>,
    }

    /// Host i runs VMs 10.0.i.1 ..= 10.0.i.4.
    fn cluster(n: usize) -> Cluster {
        let topo = topology(n);
        let net = DirectNetwork::new(topo.clone());
        let mut peers = Vec::new();
        let mut inbound = Vec::new();
        for i in 0..n {
            let dir = Arc::new(Directory::new(topo.clone(), HostId(i as u32)));
            dir.set_local((1..=4).map(|k| (vm(i, k), Stamp::ZERO)));
            let (p, inb) = net.join(HostId(i as u32), dir);
            peers.push(p);
            inbound.push(inb);
        }
        Cluster {
            net,
            peers,
            inbound,
        }
    }

    const T: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn token_is_acknowledged_refused_or_times_out() {
        let mut c = cluster(3);
        let token = Token::new(1, scored_proto::PolicyKind::Distributed, vec![vm(0, 1)]);
        let mut daemon1 = c.inbound.remove(1);
        let acker = tokio::spawn(async move {
            while let Some(e) = daemon1.recv().await {
                if let InboundEvent::Token { from, token, reply } = e {
                    assert_eq!(from, HostId(0));
                    reply.send(TokenAck::Fenced {
                        current: Stamp::new(token.epoch + 1, 0),
                    });
                    return;
                }
            }
        });
        let ack = c.peers[0]
            .send_token(HostId(1), token.clone(), T)
            .await
            .unwrap();
        assert_eq!(
            ack,
            TokenAck::Fenced {
                current: Stamp::new(2, 0)
            }
        );
        acker.await.unwrap();

        // Host 2's daemon never reads its queue: the sender times out.
        let e = c.peers[0]
            .send_token(HostId(2), token.clone(), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(e, PeerError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("h2"), "{e}");

        // A daemon that drops the request unanswered: refused as unavailable, not a timeout.
        let mut daemon2 = c.inbound.remove(1);
        while daemon2.try_recv().is_some() {}
        let dropper = tokio::spawn(async move {
            if let Some(InboundEvent::Token { reply, .. }) = daemon2.recv().await {
                drop::<Responder<TokenAck>>(reply);
            }
        });
        let e = c.peers[0]
            .send_token(HostId(2), token.clone(), T)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                PeerError::Refused {
                    refusal: Refusal::Unavailable { .. },
                    ..
                }
            ),
            "{e}"
        );
        dropper.await.unwrap();

        c.net.set_reachable(HostId(1), false);
        let e = c.peers[0]
            .send_token(HostId(1), token.clone(), T)
            .await
            .unwrap_err();
        assert!(matches!(e, PeerError::Unreachable { .. }), "{e}");
        let e = c.peers[0]
            .send_token(HostId(0), token, T)
            .await
            .unwrap_err();
        assert!(matches!(e, PeerError::ToSelf { .. }), "{e}");
    }

    #[tokio::test]
    async fn locate_batches_caches_and_survives_unreachable_hosts() {
        let c = cluster(6);
        let want: Vec<VmId> = (1..6).flat_map(|h| [vm(h, 1), vm(h, 4)]).collect();
        let mut ask = want.clone();
        ask.push(vm(0, 2)); // local
        ask.push(vm(9, 9)); // nowhere
        let got = c.peers[0].locate(&ask, LocateOptions::default()).await;
        for v in &want {
            assert_eq!(got.found[v], HostId(v.to_ipv4().octets()[2] as u32));
        }
        assert_eq!(got.found[&vm(0, 2)], HostId(0));
        assert_eq!(got.missing, vec![vm(9, 9)]);
        // One broadcast batch per other host, nothing per VM.
        assert_eq!(got.queries, 5);

        let again = c.peers[0].locate(&want, LocateOptions::default()).await;
        assert_eq!(again.queries, 0, "cache hits need no query");
        assert_eq!(again.found.len(), want.len());

        // No inventory was announced, but each host asked answered with its own: their VMs not
        // asked about are known too.
        let unknown = [vm(2, 2), vm(3, 2)];
        let known = c.peers[0].locate(&unknown, LocateOptions::default()).await;
        assert_eq!(known.queries, 0, "{known:?}");
        assert_eq!(known.found[&vm(3, 2)], HostId(3));
        c.net.set_reachable(HostId(3), false);
        let verify = LocateOptions {
            verify: true,
            ..LocateOptions::default()
        };
        let partial = c.peers[0].locate(&unknown, verify).await;
        assert_eq!(partial.found[&vm(2, 2)], HostId(2));
        // h3 runs it as far as anyone knows, and did not answer.
        assert_eq!(partial.uncertain, vec![vm(3, 2)]);
        assert!(partial.missing.is_empty());
        assert_eq!(partial.failures.len(), 1);
        assert!(partial.failures[0].to_string().contains("h3"));
    }

    #[tokio::test]
    async fn stale_cache_entries_are_corrected_through_moved_hints() {
        let c = cluster(5);
        let v = vm(2, 1);
        c.peers[0].locate(&[v], LocateOptions::default()).await;
        assert_eq!(c.peers[0].directory().lookup(v), Some(HostId(2)));
        // v moves 2 → 3 → 4 and host 0 hears of neither move.
        c.peers[2]
            .directory()
            .departed(v, HostId(3), Stamp::new(1, 5));
        c.peers[3].directory().arrived(v, Stamp::new(1, 5));
        c.peers[3]
            .directory()
            .departed(v, HostId(4), Stamp::new(1, 9));
        c.peers[4].directory().arrived(v, Stamp::new(1, 9));
        // Trusting the cache gives the stale answer without a query…
        let fast = c.peers[0].locate(&[v], LocateOptions::default()).await;
        assert_eq!((fast.found[&v], fast.queries), (HostId(2), 0));
        // …verifying follows the hints to the truth.
        let opts = LocateOptions {
            verify: true,
            ..LocateOptions::default()
        };
        let sure = c.peers[0].locate(&[v], opts).await;
        assert_eq!(sure.found[&v], HostId(4));
        assert_eq!(sure.queries, 3);
        assert_eq!(c.peers[0].directory().lookup(v), Some(HostId(4)));

        // A host that forgot the VM entirely (restarted) while it went to h4, which announced
        // its inventory: with no cache entry, the hosts whose inventory names it are asked.
        let w = vm(1, 3);
        c.peers[0].locate(&[w], LocateOptions::default()).await;
        c.peers[1]
            .directory()
            .set_local((1..=2).map(|k| (vm(1, k), Stamp::ZERO)));
        c.peers[4].directory().arrived(w, Stamp::new(2, 1));
        c.peers[4].announce_inventory().await.unwrap();
        c.peers[0].directory().forget_cached();
        let found = c.peers[0].locate(&[w], opts).await;
        assert_eq!(found.found[&w], HostId(4));
        assert_eq!(
            found.queries, 2,
            "h1 and h4, whose inventories name it: {found:?}"
        );
    }

    #[tokio::test]
    async fn announcements_correct_every_cache_and_authors_speak_for_themselves() {
        let mut c = cluster(4);
        let v = vm(1, 2);
        for p in &c.peers {
            p.locate(&[v], LocateOptions::default()).await;
        }
        c.peers[1]
            .directory()
            .departed(v, HostId(3), Stamp::new(3, 1));
        c.peers[3].directory().arrived(v, Stamp::new(3, 1));
        c.peers[1]
            .announce_migration(v, HostId(3), Stamp::new(3, 1))
            .await
            .unwrap();
        for (i, p) in c.peers.iter().enumerate() {
            assert_eq!(p.directory().lookup(v), Some(HostId(3)), "host {i}");
        }
        for i in [0, 2, 3] {
            let mut saw = false;
            while let Some(e) = c.inbound[i].try_recv() {
                if let InboundEvent::Announcement { from, .. } = e {
                    assert_eq!(from, HostId(1));
                    saw = true;
                }
            }
            assert!(saw, "host {i} got no announcement");
        }
        // An older fact arriving late changes nothing.
        c.peers[0].directory().learn(v, HostId(1), Stamp::new(2, 9));
        assert_eq!(c.peers[0].directory().lookup(v), Some(HostId(3)));
        // Host 2 may not announce host 1's inventory.
        let forged = Announcement::Inventory {
            host: "h1".into(),
            vms: vec![Located {
                vm: vm(9, 9),
                since: Stamp::new(9, 9),
            }],
        };
        let e = c.peers[2].publish(forged).await.unwrap_err();
        assert!(
            e.to_string().contains("h2 announced the inventory of h1"),
            "{e}"
        );
        // Inventories warm caches.
        c.peers[2].announce_inventory().await.unwrap();
        assert_eq!(c.peers[0].directory().lookup(vm(2, 4)), Some(HostId(2)));
    }

    #[tokio::test]
    async fn hosts_asked_for_room_in_batches_are_asked_together() {
        let mut c = cluster(10);
        // Hosts 1..=8 answer only once all eight have been asked, and then refuse; host 9, the
        // last in the order, accepts. Asked one at a time (as a drain asked before), the first
        // host would wait for ever; asked as a batch, the eight slow hosts cost one wait.
        let batch = Arc::new(tokio::sync::Barrier::new(8));
        let answer = |accepts| PlacementResponse {
            capacity: scored_proto::CapacityResponse {
                free_slots: 1,
                free_memory_mib: 1000,
                cpu_load: 0.0,
                maintenance: false,
                incoming_migrations: 0,
                accepts,
            },
            refused_by_rule: None,
            cpus: 0,
        };
        for (i, mut d) in c.inbound.drain(1..).enumerate() {
            let batch = batch.clone();
            tokio::spawn(async move {
                while let Some(e) = d.recv().await {
                    if let InboundEvent::Capacity { reply, .. } = e {
                        let batch = batch.clone();
                        tokio::spawn(async move {
                            let last = i == 8;
                            if !last {
                                batch.wait().await;
                            }
                            reply.send(answer(last));
                        });
                    }
                }
            });
        }
        let hosts: Vec<HostId> = (1..10).map(HostId).collect();
        // Longer than the guard below: a host asked alone is never answered in time.
        let patient = Duration::from_secs(3600);
        let ask = |takes: fn(&PlacementResponse) -> bool| {
            let peers = &c.peers[0];
            let hosts = &hosts;
            async move {
                tokio::time::timeout(
                    Duration::from_secs(60),
                    peers.first_accepting(hosts, PlacementRequest::room(512), patient, 8, takes),
                )
                .await
                .expect("the hosts of a batch were not asked together")
            }
        };
        assert_eq!(ask(|r| r.capacity.accepts).await, Some(HostId(9)));
        // Nobody acceptable: every batch asked, the answer is none.
        assert_eq!(ask(|_| false).await, None);
    }

    /// A move reaches the VM's host's daemon as a `GroupMove` from the asker, and its answer or
    /// refusal comes back as over libp2p.
    #[tokio::test]
    async fn a_group_move_is_answered_or_refused_by_the_vms_host() {
        let mut c = cluster(3);
        let mut daemon1 = c.inbound.remove(1);
        let ran = MoveResponse {
            bytes: 1 << 30,
            time_ms: 900,
            downtime_ms: 12,
        };
        let host = tokio::spawn(async move {
            while let Some(e) = daemon1.recv().await {
                if let InboundEvent::GroupMove {
                    from,
                    request,
                    reply,
                } = e
                {
                    assert_eq!(from, HostId(0));
                    match request.to.as_str() {
                        "h2" => reply.send(ran),
                        _ => {
                            reply.refuse(format!("{} cannot go to {}", request.vm, request.to));
                            return;
                        }
                    }
                }
            }
        });
        let ask = |to: &str| MoveRequest {
            vm: vm(1, 3),
            to: to.into(),
            at: Stamp::new(1, 7),
        };
        let got = c.peers[0].group_move(HostId(1), ask("h2"), T).await;
        assert_eq!(got.unwrap(), ran);
        let e = c.peers[0]
            .group_move(HostId(1), ask("h0"), T)
            .await
            .unwrap_err();
        assert!(matches!(e, PeerError::Refused { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "host h1 refused the move request: unavailable: 10.0.1.3 cannot go to h0"
        );
        host.await.unwrap();
    }

    #[tokio::test]
    async fn capacity_stats_and_surveys_fan_out_in_order() {
        let mut c = cluster(4);
        let mut daemons: Vec<_> = c.inbound.drain(1..).collect();
        let tasks: Vec<_> = daemons
            .drain(..)
            .enumerate()
            .map(|(i, mut d)| {
                tokio::spawn(async move {
                    while let Some(e) = d.recv().await {
                        match e {
                            InboundEvent::Capacity { reply, request, .. } => {
                                reply.send(PlacementResponse {
                                    capacity: scored_proto::CapacityResponse {
                                        free_slots: i as u32 + 1,
                                        free_memory_mib: 1000,
                                        cpu_load: 0.5,
                                        maintenance: i == 1,
                                        incoming_migrations: 0,
                                        accepts: request.memory_mib <= 1000,
                                    },
                                    refused_by_rule: None,
                                    cpus: 0,
                                })
                            }
                            InboundEvent::Stats { reply, .. } => reply.send(StatsResponse {
                                token: Default::default(),
                                benefits: vec![scored_proto::VmBenefit {
                                    vm: vm(i + 1, 1),
                                    benefit: i as f64,
                                }],
                            }),
                            InboundEvent::Survey {
                                from,
                                request,
                                reply,
                            } => {
                                assert_eq!((from, request.at), (HostId(0), Stamp::new(1, 4)));
                                reply.send(SurveyResponse {
                                    vms: vec![scored_proto::SurveyedVm {
                                        vm: vm(i + 1, 2),
                                        memory_mib: 512,
                                        movable: true,
                                        partners: vec![(vm(0, 1), 1e6)],
                                    }],
                                    capacity: scored_proto::CapacityResponse {
                                        free_slots: i as u32 + 1,
                                        free_memory_mib: 1000,
                                        cpu_load: 0.5,
                                        maintenance: false,
                                        incoming_migrations: 0,
                                        accepts: true,
                                    },
                                    cpus: 8,
                                })
                            }
                            _ => {}
                        }
                    }
                })
            })
            .collect();
        let hosts = [HostId(3), HostId(1), HostId(2)];
        let caps = c.peers[0]
            .query_capacities(&hosts, PlacementRequest::room(512), T)
            .await;
        let slots: Vec<(HostId, u32)> = caps
            .iter()
            .map(|(h, r)| (*h, r.as_ref().unwrap().capacity.free_slots))
            .collect();
        assert_eq!(slots, vec![(HostId(3), 3), (HostId(1), 1), (HostId(2), 2)]);
        assert!(caps[2].1.as_ref().unwrap().capacity.maintenance);
        let stats = c.peers[0]
            .query_all_stats(StatsRequest { epoch: 1, round: 1 }, T)
            .await;
        assert_eq!(stats.len(), 3);
        assert!(
            stats
                .iter()
                .all(|(_, r)| r.as_ref().unwrap().benefits.len() == 1)
        );
        let surveyed = c.peers[0]
            .surveys(
                &hosts,
                SurveyRequest {
                    at: Stamp::new(1, 4),
                },
                T,
            )
            .await;
        let vms: Vec<(HostId, VmId)> = surveyed
            .iter()
            .map(|(h, r)| (*h, r.as_ref().unwrap().vms[0].vm))
            .collect();
        assert_eq!(
            vms,
            vec![
                (HostId(3), vm(3, 2)),
                (HostId(1), vm(1, 2)),
                (HostId(2), vm(2, 2))
            ]
        );
        drop(c);
        for t in tasks {
            t.abort();
        }
    }
}
