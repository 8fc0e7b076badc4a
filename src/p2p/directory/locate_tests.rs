//! Lookups of addresses no host runs (a gateway, a client) and lookups while a host is down:
//! what they cost in queries, and which VMs a silent host leaves uncertain.

use super::*;
use crate::p2p::{DirectNetwork, DirectPeers, Inbound, Peers};
use std::path::Path;
use std::time::Duration;

/// `n` hosts h0.. in one rack.
fn topology(n: usize) -> Arc<Topology> {
    topology_declaring(n, "")
}

/// The same, with the top-level lines `head` (e.g. `vm_networks`).
fn topology_declaring(n: usize, head: &str) -> Arc<Topology> {
    let mut text = format!("{head}[levels]\nweights = [1]\n[defaults]\nmax_vms = 4\n");
    for i in 0..n {
        text.push_str(&format!("[[host]]\nname = \"h{i}\"\npath = [\"tor\"]\n"));
    }
    Arc::new(Topology::parse(Path::new("locate.toml"), &text).unwrap())
}

/// VM `k` of host `h`.
fn on(h: usize, k: u32) -> VmId {
    VmId(0x0a00_0000 + (h as u32) * 16 + k)
}

/// An address no host runs: the data centre's gateway.
const GATEWAY: VmId = VmId(0x0a63_0001);

struct Cluster {
    net: DirectNetwork,
    peers: Vec<DirectPeers>,
    _inbound: Vec<Inbound>,
}

/// `n` hosts, host i running VMs 1 and 2 of its own; every host but those in `silent` has
/// announced its inventory to every other.
async fn cluster(n: usize, silent: &[usize]) -> Cluster {
    cluster_on(topology(n), silent).await
}

async fn cluster_on(topo: Arc<Topology>, silent: &[usize]) -> Cluster {
    let n = topo.hosts().len();
    let net = DirectNetwork::new(topo.clone());
    let mut peers = Vec::new();
    let mut inbound = Vec::new();
    for i in 0..n {
        let dir = Arc::new(Directory::new(topo.clone(), HostId(i as u32)));
        dir.set_local([(on(i, 1), Stamp::ZERO), (on(i, 2), Stamp::ZERO)]);
        let (p, inb) = net.join(HostId(i as u32), dir);
        peers.push(p);
        inbound.push(inb);
    }
    for (i, p) in peers.iter().enumerate() {
        if !silent.contains(&i) {
            p.announce_inventory().await.unwrap();
        }
    }
    Cluster {
        net,
        peers,
        _inbound: inbound,
    }
}

fn options(verify: bool) -> LocateOptions {
    LocateOptions {
        verify,
        timeout: Duration::from_millis(200),
        ..LocateOptions::default()
    }
}

#[tokio::test]
async fn an_address_no_inventory_names_is_external_without_a_query() {
    let c = cluster(16, &[]).await;
    let r = c.peers[0].locate(&[GATEWAY], options(false)).await;
    assert_eq!(r.queries, 0, "{r:?}");
    assert_eq!(r.missing, vec![GATEWAY]);
    assert!(r.failures.is_empty() && r.uncertain.is_empty(), "{r:?}");
    // A VM an inventory names is located without a query too.
    let r = c.peers[0].locate(&[on(9, 2)], options(false)).await;
    assert_eq!((r.found[&on(9, 2)], r.queries), (HostId(9), 0));
}

#[tokio::test]
async fn only_hosts_never_heard_from_are_asked_and_their_no_is_remembered() {
    let c = cluster(16, &[5, 6]).await;
    // h6 is down from the start: it was never heard of.
    c.net.set_reachable(HostId(6), false);
    let r = c.peers[0].locate(&[GATEWAY], options(false)).await;
    assert_eq!(r.queries, 2, "h5 and h6 alone: {r:?}");
    assert_eq!(r.uncertain, vec![GATEWAY], "h6 may run it: {r:?}");
    // h5 answered with its inventory: its own VMs are known without asking.
    let r = c.peers[0].locate(&[on(5, 1)], options(false)).await;
    assert_eq!((r.found[&on(5, 1)], r.queries), (HostId(5), 0));
    // Asked again, only h6 is left to ask: still uncertain…
    let r = c.peers[0].locate(&[GATEWAY], options(false)).await;
    assert_eq!(
        (r.queries, r.uncertain.clone()),
        (1, vec![GATEWAY]),
        "{r:?}"
    );
    // …until the start-up grace is over: a host never heard of by then counts as down with
    // no VMs.
    c.peers[0].directory().zombies().set_grace(Duration::ZERO);
    let r = c.peers[0].locate(&[GATEWAY], options(false)).await;
    assert_eq!((r.queries, r.missing.clone()), (0, vec![GATEWAY]), "{r:?}");
    assert!(r.uncertain.is_empty(), "{r:?}");
    // Within the grace again, h6 is asked once it is back, answers with its inventory and is
    // heard: nobody is left to ask, and its "not here" is remembered.
    c.peers[0]
        .directory()
        .zombies()
        .set_grace(Duration::from_secs(3600));
    c.net.set_reachable(HostId(6), true);
    let r = c.peers[0].locate(&[GATEWAY], options(false)).await;
    assert_eq!((r.queries, r.missing.clone()), (1, vec![GATEWAY]), "{r:?}");
    let r = c.peers[0].locate(&[GATEWAY], options(false)).await;
    assert_eq!((r.queries, r.missing.clone()), (0, vec![GATEWAY]), "{r:?}");
}

#[tokio::test]
async fn an_address_found_external_is_a_vm_again_once_an_inventory_names_it() {
    let c = cluster(4, &[3]).await;
    let v = on(3, 9);
    let r = c.peers[0].locate(&[v], options(false)).await;
    assert_eq!((r.queries, r.missing.clone()), (1, vec![v]), "{r:?}");
    // It starts on h3, which announces its inventory: found without asking.
    c.peers[3].directory().arrived(v, Stamp::ZERO);
    c.peers[3].announce_inventory().await.unwrap();
    let r = c.peers[0].locate(&[v], options(false)).await;
    assert_eq!((r.found[&v], r.queries), (HostId(3), 0), "{r:?}");
}

#[tokio::test]
async fn a_claimed_vm_the_cache_lost_is_asked_of_its_claimant_alone() {
    let c = cluster(16, &[]).await;
    let v = on(9, 1);
    c.peers[0].directory().forget_cached();
    let r = c.peers[0].locate(&[v], options(false)).await;
    assert_eq!((r.found[&v], r.queries), (HostId(9), 1), "{r:?}");
    // h9 says it no longer runs v (it stopped): nobody else is asked, v is no VM any more.
    c.peers[9].directory().set_local([(on(9, 2), Stamp::ZERO)]);
    c.peers[0].directory().forget_cached();
    let r = c.peers[0].locate(&[v], options(false)).await;
    assert_eq!((r.queries, r.missing.clone()), (1, vec![v]), "{r:?}");
    let r = c.peers[0].locate(&[v], options(false)).await;
    assert_eq!(r.queries, 0, "{r:?}");
}

#[tokio::test]
async fn queries_for_one_decision_do_not_grow_with_hosts() {
    let mut seen = Vec::new();
    for n in [16, 64] {
        let c = cluster(n, &[]).await;
        // One host far from the decision is down.
        c.net.set_reachable(HostId(n as u32 - 1), false);
        let partners = [on(1, 1), on(2, 1), on(3, 2), GATEWAY];
        let r = c.peers[0].locate(&partners, options(true)).await;
        for p in &partners[..3] {
            assert!(r.found.contains_key(p), "{n} hosts: {r:?}");
        }
        assert!(
            r.failures.is_empty() && r.uncertain.is_empty(),
            "{n} hosts: {r:?}"
        );
        assert_eq!(r.missing, vec![GATEWAY]);
        seen.push(r.queries);
    }
    assert_eq!(
        seen,
        vec![3, 3],
        "one batch per partner's host, whatever the hosts"
    );
}

#[tokio::test]
async fn a_silent_host_leaves_uncertain_only_what_it_may_run() {
    let c = cluster(8, &[]).await;
    c.net.set_reachable(HostId(7), false);
    let p = on(7, 1);
    // Verified, p's last host does not answer: p is not placed.
    let r = c.peers[0].locate(&[p], options(true)).await;
    assert_eq!(r.uncertain, vec![p], "{r:?}");
    assert_eq!(r.failures.len(), 1, "{r:?}");
    // Trusted, p is where its host last said it runs.
    let r = c.peers[0].locate(&[p], options(false)).await;
    assert_eq!((r.found[&p], r.queries), (HostId(7), 0));
    // VMs elsewhere and an address no host runs: h7 is not asked, nothing failed.
    let r = c.peers[0].locate(&[on(2, 1), GATEWAY], options(true)).await;
    assert_eq!(r.found[&on(2, 1)], HostId(2));
    assert_eq!(r.missing, vec![GATEWAY]);
    assert!(r.failures.is_empty() && r.uncertain.is_empty(), "{r:?}");
    assert_eq!(r.queries, 1, "{r:?}");
}

#[tokio::test]
async fn an_address_outside_the_vm_networks_is_never_asked_about() {
    // h3 was never heard of and is down, within the start-up grace: any address the VMs may
    // use could run there, but the gateway is outside the VMs' networks.
    let topo = topology_declaring(4, "vm_networks = [\"10.0.0.0/16\"]\n");
    let c = cluster_on(topo, &[3]).await;
    c.net.set_reachable(HostId(3), false);
    let r = c.peers[0].locate(&[GATEWAY], options(false)).await;
    assert_eq!((r.queries, r.missing.clone()), (0, vec![GATEWAY]), "{r:?}");
    let inside = VmId(0x0a00_ff01);
    let r = c.peers[0].locate(&[inside], options(false)).await;
    assert_eq!((r.queries, r.uncertain.clone()), (1, vec![inside]), "{r:?}");
}

/// A host that has just started knows no inventory: one lookup asks a bounded draw of the hosts
/// whose inventory is unknown, not all of them (200 here, 2,000 in a data centre: as many
/// connections). What it did not ask may still run the VM: uncertain, never missing. Each host
/// asked answers with its inventory, so the next lookup draws from those still unheard, and a
/// few lookups have heard every host.
#[tokio::test]
async fn a_lookup_asks_a_bounded_draw_of_the_hosts_never_heard_from() {
    let n = 200;
    let silent: Vec<usize> = (0..n).collect();
    let c = cluster(n, &silent).await;
    let far = on(150, 1);
    let mut unheard = n - 1;
    while unheard > MAX_UNHEARD_ASKED {
        let r = c.peers[0].locate(&[far, GATEWAY], options(false)).await;
        assert!(r.queries <= MAX_UNHEARD_ASKED, "{} queries", r.queries);
        assert!(
            r.missing.is_empty(),
            "concluded missing without asking everyone: {r:?}"
        );
        assert!(r.uncertain.contains(&GATEWAY), "{r:?}");
        unheard -= MAX_UNHEARD_ASKED;
        assert_eq!(r.unheard_not_asked, unheard);
        match r.found.get(&far) {
            Some(h) => assert_eq!(*h, HostId(150)),
            None => assert!(r.uncertain.contains(&far), "{r:?}"),
        }
    }
    // The last of them: both settled, one found, the other no VM at all.
    let r = c.peers[0].locate(&[far, GATEWAY], options(false)).await;
    assert_eq!(r.found.get(&far), Some(&HostId(150)), "{r:?}");
    assert_eq!(r.missing, vec![GATEWAY], "{r:?}");
    assert!(r.queries <= unheard, "{r:?}");

    // Allowed to ask every host, one lookup settles both.
    let c = cluster(n, &silent).await;
    let all = LocateOptions {
        max_unheard: n,
        ..options(false)
    };
    let r = c.peers[0].locate(&[far, GATEWAY], all).await;
    assert_eq!(r.found.get(&far), Some(&HostId(150)), "{r:?}");
    assert_eq!(r.missing, vec![GATEWAY], "{r:?}");
    assert_eq!(r.queries, n - 1);
}

/// A daemon that starts after the others announced knows no inventory: a lookup of an address
/// no known inventory names asks a draw of the hosts whose inventory is unknown, and each of
/// them answers with its inventory (`/scored/location/2`), so it is heard from then on: the
/// next lookup asks only the hosts not drawn yet, and once every host was heard an address no
/// inventory names is settled without a query.
#[tokio::test]
async fn the_hosts_a_lookup_asked_are_heard_and_not_asked_again() {
    let n = 100;
    let silent: Vec<usize> = (0..n).collect();
    let c = cluster(n, &silent).await;
    let me = &c.peers[0];
    let others = me.others();
    let now = std::time::Instant::now;
    assert_eq!(
        me.directory().zombies().unheard(&others, now()).len(),
        n - 1
    );

    let r = me.locate(&[GATEWAY], options(false)).await;
    assert_eq!(r.queries, MAX_UNHEARD_ASKED, "{r:?}");
    assert_eq!(r.uncertain, vec![GATEWAY], "hosts were left out: {r:?}");
    // The hosts asked are heard: each one's inventory is known, down to the VMs not asked about.
    let unheard = me.directory().zombies().unheard(&others, now());
    assert_eq!(unheard.len(), n - 1 - MAX_UNHEARD_ASKED, "{unheard:?}");
    let asked: Vec<HostId> = others
        .iter()
        .copied()
        .filter(|h| !unheard.contains(h))
        .collect();
    for h in &asked {
        let i = h.index();
        assert_eq!(me.directory().lookup(on(i, 1)), Some(*h));
        assert_eq!(me.directory().lookup(on(i, 2)), Some(*h));
    }

    // Asking any of them again would now fail: the next lookup asks the others alone.
    for h in &asked {
        c.net.set_reachable(*h, false);
    }
    let client = VmId(0x0a63_0002);
    let r = me.locate(&[client], options(false)).await;
    assert_eq!(r.queries, n - 1 - MAX_UNHEARD_ASKED, "{r:?}");
    assert!(r.failures.is_empty(), "asked a host already heard: {r:?}");
    assert_eq!(r.missing, vec![client], "{r:?}");
    assert_eq!(r.unheard_not_asked, 0);
    assert!(me.directory().zombies().unheard(&others, now()).is_empty());
    // Every host heard: no address no inventory names costs a query any more.
    let r = me.locate(&[VmId(0x0a63_0003)], options(false)).await;
    assert_eq!((r.queries, r.missing.len()), (0, 1), "{r:?}");
}

/// An inventory that comes with an answer is checked as the same inventory gossiped by its
/// host would be: h2's lists more VMs than its slots, h3's is stamped from the future (both
/// refused whole), h1's names a VM the asker knows has since arrived on h4 (that newer fact
/// stands). The asker ends up knowing exactly what it would know had the four inventories been
/// gossiped to it.
#[tokio::test]
async fn an_inventory_in_an_answer_is_refused_or_applied_as_its_gossip_would_be() {
    let topo = topology(5);
    let c = cluster_on(topo.clone(), &[0, 1, 2, 3, 4]).await;
    let me = c.peers[0].directory();
    let reference = Directory::new(topo.clone(), HostId(0));
    // h2 runs six VMs on four slots; h3 claims a VM under a stamp far beyond the token.
    c.peers[2]
        .directory()
        .set_local((1..=6).map(|k| (on(2, k), Stamp::ZERO)));
    c.peers[3]
        .directory()
        .arrived(on(3, 3), Stamp::new(0, u64::MAX / 2));
    // on(1, 2) moved to h4 under 0.5; h1 still lists it (its hypervisor has not caught up).
    let arrival = Announcement::Migration(scored_proto::MigrationAnnounce {
        vm: on(1, 2),
        from: "h1".into(),
        to: "h4".into(),
        at: Stamp::new(0, 5),
    });
    for d in [&**me, &reference] {
        d.observe_token(Stamp::new(0, 5));
        d.apply(HostId(4), &arrival).unwrap();
    }

    let r = c.peers[0].locate(&[GATEWAY], options(false)).await;
    assert_eq!(r.queries, 4, "{r:?}");
    assert_eq!(r.missing, vec![GATEWAY], "{r:?}");
    // The lookup says which inventories it refused, and why.
    let mut refused: Vec<(HostId, &str)> = r
        .rejected_inventories
        .iter()
        .map(|(h, e)| (*h, e.reason()))
        .collect();
    refused.sort_unstable();
    assert_eq!(
        refused,
        vec![
            (HostId(2), "inventory_too_large"),
            (HostId(3), "future_stamp")
        ]
    );
    // And counts them where gossip counts what it refuses.
    let counted = c.peers[0].metrics();
    assert_eq!(counted.rejected_count("inventory_too_large"), 1);
    assert_eq!(counted.rejected_count("future_stamp"), 1);

    let gossiped: Vec<_> = (1..5)
        .map(|i| reference.apply(HostId(i as u32), &c.peers[i].directory().inventory()))
        .collect();
    assert!(
        matches!(
            gossiped[1],
            Err(AnnouncementRejected::InventoryTooLarge { vms: 6, .. })
        ),
        "{gossiped:?}"
    );
    assert!(
        matches!(gossiped[2], Err(AnnouncementRejected::FromTheFuture { .. })),
        "{gossiped:?}"
    );
    for i in 1..5 {
        for k in 1..=6 {
            let vm = on(i, k);
            assert_eq!(me.lookup(vm), reference.lookup(vm), "VM {vm} of h{i}");
        }
    }
    assert_eq!(me.lookup(on(1, 1)), Some(HostId(1)));
    assert_eq!(me.lookup(on(1, 2)), Some(HostId(4)));
    assert_eq!(me.lookup(on(2, 1)), None);
    assert_eq!(me.lookup(on(3, 1)), None);
    let others = c.peers[0].others();
    let now = std::time::Instant::now();
    assert_eq!(
        me.zombies().unheard(&others, now),
        reference.zombies().unheard(&others, now)
    );
}

/// A host whose answered inventory is too long to keep whole stays unheard (`zombies`), so every
/// lookup asks it again and refuses its inventory again: counted every time, logged once per
/// host and reason (before, one warning per lookup: a host could fill the asker's log).
#[tokio::test]
async fn an_inventory_refused_at_every_lookup_is_logged_once() {
    let topo = topology(3);
    let c = cluster_on(topo.clone(), &[0, 1, 2]).await;
    // h1 answers with 1,100 VMs on its 4 slots: more than a claim keeps whole.
    c.peers[1]
        .directory()
        .set_local((1..=1100).map(|k| (VmId(0x0a01_0000 + k), Stamp::ZERO)));
    let log = crate::logging::LogBuffer::default();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .finish(),
    );
    // Tests on other threads may have cached "nobody listens" for the warning's callsite.
    tracing::callsite::rebuild_interest_cache();
    for (k, gateway) in [GATEWAY, VmId(0x0a63_0002), VmId(0x0a63_0003)]
        .into_iter()
        .enumerate()
    {
        let r = c.peers[0].locate(&[gateway], options(false)).await;
        let refused: Vec<_> = r
            .rejected_inventories
            .iter()
            .map(|(h, e)| (*h, e.reason()))
            .collect();
        assert_eq!(refused, vec![(HostId(1), "inventory_too_large")], "{r:?}");
        assert_eq!(
            c.peers[0].metrics().rejected_count("inventory_too_large"),
            k as u64 + 1
        );
    }
    let lines = log.matching("inventory sent with a location answer refused");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("host=h1"), "{lines:#?}");
}

/// Why a lookup left VMs uncertain, as a turn records it: the silent hosts named up to
/// [`NAMED_SILENT_HOSTS`], then counted (a CPU-bound 400-daemon lab left 39 silent hosts in one
/// turn's reason, every name of them), and the hosts never asked counted.
#[tokio::test]
async fn why_vms_are_uncertain_names_a_few_silent_hosts_and_counts_the_rest() {
    let c = cluster(16, &[]).await;
    let partners: Vec<VmId> = (1..=10).map(|h| on(h, 1)).collect();
    for h in 1..=10 {
        c.net.set_reachable(HostId(h), false);
    }
    let r = c.peers[0].locate(&partners, options(true)).await;
    assert_eq!(r.uncertain.len(), 10, "{r:?}");
    assert_eq!(
        r.why_uncertain("partner").as_deref(),
        Some(
            "10 partner(s) could not be located \
             (may run on h1, h10, h2, h3, h4, h5 … and 4 more, not answering)"
        )
    );
    let one = c.peers[0].locate(&partners[..1], options(true)).await;
    assert_eq!(
        one.why_uncertain("partner").as_deref(),
        Some("1 partner(s) could not be located (may run on h1, not answering)")
    );
    let settled = c.peers[0].locate(&[on(12, 1)], options(true)).await;
    assert_eq!(settled.why_uncertain("partner"), None, "{settled:?}");
}
