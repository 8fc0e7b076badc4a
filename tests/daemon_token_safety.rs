//! At most one token acts, whatever a listed peer or a failing transport does: an epoch a peer
//! makes up (out of range, from no host of the topology) is never adopted; a hand-off whose
//! request may have been delivered is treated as delivered (re-mint); a host working on a token
//! refuses a second one; a turn that panics lets the token go and is counted.
//!
//! Four real `Daemon`s with their event loops (`drive`) over the in-process transport, wrapped in
//! a transport that can fail on cue (panic in a hand-off, or lose the answer of a delivered one),
//! in-memory hypervisors, one VM per host, round-robin order.

mod support;

use scored::config::Config;
use scored::daemon::Daemon;
use scored::daemon::event_loop::drive;
use scored::daemon::ring::{epoch_generation, next_epoch};
use scored::p2p::{DirectPeers, Directory, PeerError, Peers, RequestFailure};
use scored::topology::{HostId, Topology};
use scored_proto::{
    Announcement, GroupsAnnounce, LocationAnswer, LocationQuery, MoveRequest, MoveResponse,
    PlacementRequest, PlacementResponse, PolicyKind, Stamp, StatsRequest, StatsResponse,
    SurveyRequest, SurveyResponse, Token, TokenAck, VmId,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::four_hosts::{FourHosts, four_hosts};
use support::inprocess;
use support::time::wait;

const T: Duration = Duration::from_secs(2);

/// What the test transport does wrong, once armed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    /// The next hand-off to this host panics inside the sender's turn.
    PanicHandingTo(HostId),
    /// The next `n` hand-offs to this host are delivered, but the sender hears "connection
    /// closed" instead of the answer.
    LoseAnswersOf(HostId, u32),
}

/// The tokens a host handed on (accepted or not), with whom they went to.
type Sent = Arc<Mutex<Vec<(HostId, Stamp)>>>;

/// The in-process transport with a fault on cue, and a record of the tokens it sent.
struct Faulty {
    inner: DirectPeers,
    fault: Arc<Mutex<Fault>>,
    sent: Sent,
}

impl Peers for Faulty {
    fn me(&self) -> HostId {
        self.inner.me()
    }

    fn topology(&self) -> &Arc<Topology> {
        self.inner.topology()
    }

    fn directory(&self) -> &Arc<Directory> {
        self.inner.directory()
    }

    fn connected(&self) -> Vec<HostId> {
        self.inner.connected()
    }

    async fn send_token(
        &self,
        to: HostId,
        token: Token,
        timeout: Duration,
    ) -> Result<TokenAck, PeerError> {
        let fault = {
            let mut f = self.fault.lock().unwrap();
            let now = *f;
            match now {
                Fault::PanicHandingTo(h) if h == to => *f = Fault::None,
                Fault::LoseAnswersOf(h, n) if h == to => {
                    *f = if n > 1 {
                        Fault::LoseAnswersOf(h, n - 1)
                    } else {
                        Fault::None
                    }
                }
                _ => {}
            }
            now
        };
        let stamp = Stamp::new(token.epoch, token.seq);
        match fault {
            Fault::PanicHandingTo(h) if h == to => {
                panic!(
                    "test transport: a bug while handing the token to host #{}",
                    to.0
                )
            }
            Fault::LoseAnswersOf(h, _) if h == to => {
                let _ = self.inner.send_token(to, token, timeout).await;
                Err(PeerError::Protocol {
                    host: self.topology().host(to).name.clone(),
                    what: "token",
                    cause: RequestFailure::ConnectionClosed,
                })
            }
            _ => {
                let r = self.inner.send_token(to, token, timeout).await;
                if r.is_ok() {
                    self.sent.lock().unwrap().push((to, stamp));
                }
                r
            }
        }
    }

    fn query_locations(
        &self,
        host: HostId,
        query: LocationQuery,
        timeout: Duration,
    ) -> impl Future<Output = Result<LocationAnswer, PeerError>> + Send {
        self.inner.query_locations(host, query, timeout)
    }

    fn query_capacity(
        &self,
        host: HostId,
        request: PlacementRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<PlacementResponse, PeerError>> + Send {
        self.inner.query_capacity(host, request, timeout)
    }

    fn query_stats(
        &self,
        host: HostId,
        request: StatsRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<StatsResponse, PeerError>> + Send {
        self.inner.query_stats(host, request, timeout)
    }

    fn survey(
        &self,
        host: HostId,
        request: SurveyRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<SurveyResponse, PeerError>> + Send {
        self.inner.survey(host, request, timeout)
    }

    fn group_move(
        &self,
        host: HostId,
        request: MoveRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<MoveResponse, PeerError>> + Send {
        self.inner.group_move(host, request, timeout)
    }

    fn publish(&self, a: Announcement) -> impl Future<Output = Result<(), PeerError>> + Send {
        self.inner.publish(a)
    }

    fn publish_groups(
        &self,
        g: GroupsAnnounce,
    ) -> impl Future<Output = Result<(), PeerError>> + Send {
        self.inner.publish_groups(g)
    }
}

struct Cluster {
    nodes: Vec<Arc<Daemon<Faulty>>>,
    faults: Vec<Arc<Mutex<Fault>>>,
    sent: Vec<Sent>,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

/// Four hosts, one VM each. The loss detectors of the hosts in `regenerating` fire (h1, first
/// in the topology, mints the first token after one loss timeout); the others' never do
/// during the test. `faults` are armed before any loop starts.
fn cluster(regenerating: &[usize], faults: &[(usize, Fault)]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let rt = inprocess::runtime();
    let FourHosts { topo, net, sim } = four_hosts("safety.toml");
    let mut c = Cluster {
        nodes: Vec::new(),
        faults: Vec::new(),
        sent: Vec::new(),
        _dir: dir,
        _rt: rt,
    };
    for h in 0..4u32 {
        let me = HostId(h);
        let mut config = Config::default();
        config.token.handoff_timeout_ms = 400;
        config.token.min_round_s = 0;
        config.token.policy = PolicyKind::RoundRobin;
        if !regenerating.contains(&(h as usize)) {
            config.token.regeneration_timeout_ms = Some(24 * 3600 * 1000);
        }
        let directory = Arc::new(Directory::new(topo.clone(), me));
        let (inner, inbound) = net.join(me, directory);
        let fault = Arc::new(Mutex::new(
            faults
                .iter()
                .find(|(i, _)| *i == h as usize)
                .map_or(Fault::None, |(_, f)| *f),
        ));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let peers = Faulty {
            inner,
            fault: fault.clone(),
            sent: sent.clone(),
        };
        let hv = Arc::new(sim.host(me));
        let node = inprocess::node(&topo, me, peers, hv, Vec::new(), config, c._dir.path());
        c._rt.block_on(node.refresh_inventory()).unwrap();
        c._rt
            .spawn(drive(node.clone(), inbound, std::future::pending()));
        c.nodes.push(node);
        c.faults.push(fault);
        c.sent.push(sent);
    }
    c
}

impl Cluster {
    fn passes(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.metrics().token.passes.get())
            .sum()
    }

    fn regenerations(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.metrics().token.regenerations.get())
            .sum()
    }

    fn send_token(&self, from: usize, to: usize, token: Token) -> Result<TokenAck, PeerError> {
        let peers = self.nodes[from].peers().clone();
        self._rt
            .block_on(async move { peers.inner.send_token(HostId(to as u32), token, T).await })
    }
}

fn token(epoch: u64, seq: u64) -> Token {
    let mut t = Token::new(
        epoch,
        PolicyKind::RoundRobin,
        (0..4).map(|h| VmId(0x0a00_0001 + h)).collect(),
    );
    t.seq = seq;
    t
}

#[test]
fn a_made_up_epoch_from_a_listed_peer_is_never_adopted_and_the_token_goes_on() {
    let c = cluster(&[0], &[]);
    assert!(
        wait(Duration::from_secs(30), || c.passes() >= 4),
        "no token went round"
    );
    let live = c.nodes[0].highest_epoch();
    // h4 lies: a heartbeat of the largest epoch there is, to h2; a token of it, to h3; a
    // heartbeat of a generation far above the live one (its own index as minter), to h1.
    let seen = |epoch| Announcement::TokenSeen {
        host: "h4".into(),
        at: Stamp::new(epoch, 0),
        round: 0,
    };
    c.nodes[1].on_announcement(HostId(3), seen(u64::MAX));
    let far = ((epoch_generation(live) + (1 << 20)) << 16) | 3;
    c.nodes[0].on_announcement(HostId(3), seen(far));
    let ack = c.send_token(3, 2, token(u64::MAX, 1));
    assert!(
        !matches!(ack, Ok(TokenAck::Accepted)),
        "h3 took a token of epoch u64::MAX: {ack:?}"
    );
    for (i, n) in c.nodes.iter().enumerate() {
        let e = n.highest_epoch();
        assert!(
            epoch_generation(e) < epoch_generation(live) + 16,
            "h{} adopted epoch {e:#x} (live {live:#x})",
            i + 1
        );
    }
    // The live token is not fenced by the lies: hand-offs go on.
    let before = c.passes();
    assert!(
        wait(Duration::from_secs(30), || c.passes() >= before + 8),
        "the token stopped after the made-up epochs"
    );
    assert!(c.nodes.iter().all(|n| n.highest_epoch() < u64::MAX >> 1));
    // Every lie is counted by reason at the host it reached.
    let rejected = |i: usize, reason: &str| {
        c.nodes[i]
            .metrics()
            .peers
            .rejected
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .get()
    };
    assert!(rejected(1, "epoch_unknown_minter") >= 1);
    assert!(rejected(2, "epoch_unknown_minter") >= 1);
    assert!(rejected(0, "epoch_too_far_ahead") >= 1);
}

#[test]
fn a_host_pushed_far_ahead_by_a_peer_comes_back_without_a_restart() {
    let c = cluster(&[0, 1, 2, 3], &[]);
    assert!(
        wait(Duration::from_secs(30), || c.passes() >= 4),
        "no token went round"
    );
    // h4 pushes h3 alone up, in steps each of which h3 can take: h3 ends up far above every
    // other host, fences the live token and cannot get its epoch adopted by anyone.
    for _ in 0..3 {
        let e = c.nodes[2].highest_epoch();
        let step = ((epoch_generation(e) + (1 << 16)) << 16) | 3;
        c.nodes[2].on_announcement(
            HostId(3),
            Announcement::TokenSeen {
                host: "h4".into(),
                at: Stamp::new(step, 0),
                round: 0,
            },
        );
    }
    let pushed = epoch_generation(c.nodes[2].highest_epoch());
    let decided = c.nodes[2].metrics().token.passes.get();
    let others = epoch_generation(c.nodes[0].highest_epoch());
    assert!(pushed > others + (1 << 17), "h3 was not pushed ahead");
    // h3 compares notes with its peers when it stops hearing a token it can take, drops the
    // value no majority of them knows, and takes the live token again.
    assert!(
        wait(Duration::from_secs(60), || {
            let h3 = epoch_generation(c.nodes[2].highest_epoch());
            h3 < pushed && c.nodes[2].metrics().token.passes.get() >= decided + 2
        }),
        "h3 kept the epoch it was pushed to: {:#x}",
        c.nodes[2].highest_epoch()
    );
    let before = c.passes();
    assert!(
        wait(Duration::from_secs(30), || c.passes() >= before + 8),
        "the token did not go round again"
    );
}

#[test]
fn a_hand_off_whose_answer_is_lost_re_mints_before_the_token_goes_on() {
    // h1 mints the first token, decides for its VM and hands the token to h2: h2 takes it,
    // but h1 hears "connection closed", three times.
    let c = cluster(&[0], &[(0, Fault::LoseAnswersOf(HostId(1), 3))]);
    assert!(
        wait(Duration::from_secs(30), || *c.faults[0].lock().unwrap()
            == Fault::None),
        "h1 never handed the token to h2"
    );
    assert!(
        wait(Duration::from_secs(30), || !c.sent[0]
            .lock()
            .unwrap()
            .is_empty()),
        "h1 never handed the token on after the failed hand-off"
    );
    let (to, next) = c.sent[0].lock().unwrap()[0];
    // h2 may hold the copy it took: the copy h1 goes on with must be of a newer epoch, so that
    // one of the two is fenced.
    let first = next_epoch(0, 0).unwrap();
    assert!(
        next.epoch > first,
        "h1 handed the token on (to host #{}) under the epoch h2 may hold ({:#x})",
        to.0,
        next.epoch
    );
}

#[test]
fn a_host_working_on_a_token_refuses_a_second_one() {
    let c = cluster(&[], &[]);
    let held = next_epoch(0, 0).unwrap();
    {
        let mut w = c.nodes[1].token_watch();
        w.on_token(held, 3, Instant::now());
        w.hold(Stamp::new(held, 3));
    }
    // A copy of the held epoch further on, and a newer token: neither may start a second turn.
    let newer = next_epoch(held, 3).unwrap();
    for (t, what) in [
        (token(held, 9), "a copy"),
        (token(newer, 1), "a newer token"),
    ] {
        let ack = c.send_token(3, 1, t);
        assert!(
            matches!(ack, Ok(TokenAck::Declined { .. })),
            "h2, holding the token, took {what}: {ack:?}"
        );
    }
    assert_eq!(c.nodes[1].holding(), Some(Stamp::new(held, 3)));
    // The newer epoch is known, so the older copy held here acts no more.
    assert!(c.nodes[1].token_watch().superseded(held));
}

#[test]
fn a_turn_that_panics_lets_the_token_go_and_is_counted() {
    // h1 mints the first token and panics handing it to h2.
    let c = cluster(&[0], &[(0, Fault::PanicHandingTo(HostId(1)))]);
    assert!(
        wait(Duration::from_secs(30), || *c.faults[0].lock().unwrap()
            == Fault::None),
        "h1 never handed the token to h2"
    );
    assert!(
        wait(Duration::from_secs(10), || c.nodes[0].holding().is_none()),
        "h1 still claims the token after its turn panicked"
    );
    assert_eq!(c.nodes[0].metrics().token.held.get(), 0);
    assert_eq!(c.nodes[0].metrics().token.turn_panics.get(), 1);
    // The token is regenerated and goes round again.
    assert!(
        wait(Duration::from_secs(30), || c.regenerations() >= 2
            && c.passes() >= 4),
        "the token was not regenerated after the panic"
    );
}

#[test]
fn a_lower_host_that_answers_but_never_regenerates_holds_regeneration_back_only_for_a_while() {
    // h1 answers every question but its own detector never fires (a stuck loss check, or a
    // peer that lies by omission): h2, next in line, must not wait for it for ever.
    let c = cluster(&[1], &[]);
    assert!(
        wait(Duration::from_secs(30), || c.nodes[1]
            .metrics()
            .token
            .regenerations
            .get()
            >= 1),
        "h2 kept deferring to h1, which answers but never regenerates"
    );
    assert!(
        wait(Duration::from_secs(30), || c.passes() >= 4),
        "h2's token did not go round"
    );
}
