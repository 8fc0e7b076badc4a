//! The directory against forged locations (a listed peer that lies) and floods of claims.

use super::*;
use crate::p2p::{DirectNetwork, Peers};
use scored_proto::MigrationAnnounce;
use std::path::Path;
use std::time::Duration;

/// `n` hosts h0.., each with room for four VMs.
fn topology(n: usize) -> Arc<Topology> {
    let mut text = String::from("[levels]\nweights = [1]\n[defaults]\nmax_vms = 4\n");
    for i in 0..n {
        text.push_str(&format!("[[host]]\nname = \"h{i}\"\npath = [\"tor\"]\n"));
    }
    Arc::new(Topology::parse(Path::new("directory.toml"), &text).unwrap())
}

fn vm(i: u32) -> VmId {
    VmId(0x0a00_0000 + i)
}

/// An epoch of generation `g` minted by host 0.
fn epoch(g: u64) -> u64 {
    g << 16
}

fn migration(v: VmId, from: &str, to: &str, at: Stamp) -> Announcement {
    Announcement::Migration(MigrationAnnounce {
        vm: v,
        from: from.into(),
        to: to.into(),
        at,
    })
}

const FAR: Stamp = Stamp {
    epoch: u64::MAX,
    seq: u64::MAX,
};

#[test]
fn a_departure_notice_moves_only_what_its_author_was_believed_to_hold() {
    let dir = Directory::new(topology(4), HostId(0));
    dir.observe_token(Stamp::new(epoch(1), 5));
    let (v, w) = (vm(1), vm(2));
    dir.learn(v, HostId(2), Stamp::new(epoch(1), 3));
    dir.learn(w, HostId(1), Stamp::new(epoch(1), 1));
    // h1 says v left it for h3: h1 never held v, so nothing changes.
    dir.apply(
        HostId(1),
        &migration(v, "h1", "h3", Stamp::new(epoch(1), 4)),
    )
    .unwrap();
    assert_eq!(dir.lookup(v), Some(HostId(2)));
    // h1 says w left it for h3: h1 did hold w, so the hint is taken.
    dir.apply(
        HostId(1),
        &migration(w, "h1", "h3", Stamp::new(epoch(1), 4)),
    )
    .unwrap();
    assert_eq!(dir.lookup(w), Some(HostId(3)));
}

#[test]
fn far_future_stamps_are_rejected() {
    let dir = Directory::new(topology(4), HostId(0));
    let now = Stamp::new(epoch(7), 100);
    dir.observe_token(now);
    let v = vm(1);
    dir.learn(v, HostId(2), now);
    // The attack of issue 13: a claim stamped (MAX, MAX) pinning v on h3.
    let e = dir
        .apply(HostId(3), &migration(v, "h2", "h3", FAR))
        .unwrap_err();
    assert!(
        matches!(e, AnnouncementRejected::FromTheFuture { .. }),
        "{e}"
    );
    assert_eq!(dir.lookup(v), Some(HostId(2)));
    // Too many token steps ahead within the epoch, or a generation too far.
    let ahead = Stamp::new(epoch(7), 100 + DEFAULT_STAMP_SKEW + 1);
    assert!(
        dir.apply(HostId(3), &migration(v, "h2", "h3", ahead))
            .is_err()
    );
    let later = Stamp::new(epoch(9), 0);
    assert!(
        dir.apply(HostId(3), &migration(v, "h2", "h3", later))
            .is_err()
    );
    let inventory = Announcement::Inventory {
        host: "h3".into(),
        vms: vec![Located { vm: v, since: FAR }],
    };
    assert!(dir.apply(HostId(3), &inventory).is_err());
    assert_eq!(dir.lookup(v), Some(HostId(2)));
    // Within the skew (one regeneration not heard of yet, a few steps ahead): accepted.
    let next = Stamp::new(epoch(8) | 3, 2);
    dir.apply(HostId(3), &migration(v, "h2", "h3", next))
        .unwrap();
    assert_eq!(dir.lookup(v), Some(HostId(3)));
}

#[tokio::test]
async fn a_hosts_own_here_wins_over_the_cache() {
    let topo = topology(4);
    let net = DirectNetwork::new(topo.clone());
    let mut peers = Vec::new();
    for i in 0..4 {
        let (p, _inbound) = net.join(HostId(i), Arc::new(Directory::new(topo.clone(), HostId(i))));
        peers.push(p);
    }
    let v = vm(1);
    peers[2].directory().arrived(v, Stamp::ZERO);
    // Host 0 believes (from an earlier lie) that v runs on h3, which does not answer.
    peers[0]
        .directory()
        .learn(v, HostId(3), Stamp::new(epoch(1), 9));
    net.set_reachable(HostId(3), false);
    let opts = LocateOptions {
        verify: true,
        timeout: Duration::from_millis(200),
        ..LocateOptions::default()
    };
    let found = peers[0].locate(&[v], opts).await;
    assert_eq!(found.found.get(&v), Some(&HostId(2)), "{found:?}");
    assert_eq!(peers[0].directory().lookup(v), Some(HostId(2)));
}

#[test]
fn a_flood_of_claims_keeps_the_cache_within_the_topology() {
    let topo = topology(4);
    let dir = Directory::new(topo.clone(), HostId(0));
    dir.observe_token(Stamp::new(epoch(1), 0));
    let honest: Vec<VmId> = (0..4).map(|i| vm(1_000_000 + i)).collect();
    let inventory = Announcement::Inventory {
        host: "h2".into(),
        vms: honest
            .iter()
            .map(|&vm| Located {
                vm,
                since: Stamp::new(epoch(1), 0),
            })
            .collect(),
    };
    dir.apply(HostId(2), &inventory).unwrap();
    // h3 claims, one announcement at a time, far more VMs than it has room for.
    for i in 0..50_000 {
        let _ = dir.apply(
            HostId(3),
            &migration(vm(i), "h1", "h3", Stamp::new(epoch(1), 0)),
        );
    }
    let slots: usize = topo.hosts().iter().map(|h| h.max_vms as usize).sum();
    assert!(dir.cached_len() <= slots, "{} entries", dir.cached_len());
    for &v in &honest {
        assert_eq!(dir.lookup(v), Some(HostId(2)));
    }
    // An inventory larger than the host's slots is refused whole.
    let big = Announcement::Inventory {
        host: "h1".into(),
        vms: (0..5)
            .map(|i| Located {
                vm: vm(2_000_000 + i),
                since: Stamp::ZERO,
            })
            .collect(),
    };
    assert!(dir.apply(HostId(1), &big).is_err());
    // Honest announcements still land after the flood.
    let w = vm(3_000_000);
    dir.apply(
        HostId(1),
        &migration(w, "h3", "h1", Stamp::new(epoch(1), 1)),
    )
    .unwrap();
    assert_eq!(dir.lookup(w), Some(HostId(1)));
}

#[test]
fn only_the_destination_claims_and_each_arrival_is_news_once() {
    let dir = Directory::new(topology(4), HostId(0));
    dir.observe_token(Stamp::new(epoch(1), 10));
    let v = vm(1);
    let at = Stamp::new(epoch(1), 8);
    // The former host's notice is passed on (the destination reads its hypervisor on it) but
    // is no claim: the cooldown is fed by the arrival alone.
    assert_eq!(
        dir.apply(HostId(2), &migration(v, "h2", "h3", at)),
        Ok(Applied::News)
    );
    assert_eq!(
        dir.apply(HostId(3), &migration(v, "h2", "h3", at)),
        Ok(Applied::News)
    );
    // The same arrival again, or its host's inventory, is no new move.
    assert_eq!(
        dir.apply(HostId(3), &migration(v, "h2", "h3", at)),
        Ok(Applied::Repeat)
    );
    let inventory = Announcement::Inventory {
        host: "h3".into(),
        vms: vec![Located { vm: v, since: at }],
    };
    dir.apply(HostId(3), &inventory).unwrap();
    assert_eq!(
        dir.apply(HostId(3), &migration(v, "h2", "h3", at)),
        Ok(Applied::Repeat)
    );
    // A third host may not announce it at all.
    let e = dir
        .apply(HostId(1), &migration(v, "h2", "h3", at))
        .unwrap_err();
    assert_eq!(e.reason(), "not_its_migration");
}

#[test]
fn the_destination_announces_what_its_former_host_said_and_remembers_no_more() {
    let dir = Directory::new(topology(4), HostId(0));
    dir.observe_token(Stamp::new(epoch(1), 10));
    // A former host floods "coming to you" notices: this host remembers its own slots' worth.
    for i in 0..10_000 {
        dir.apply(
            HostId(2),
            &migration(vm(i), "h2", "h0", Stamp::new(epoch(1), 9)),
        )
        .unwrap();
    }
    assert!(dir.lock().expected.len() <= 4);
    // An honest notice, then the hypervisor lists the VM: one arrival to announce, with the
    // former host's stamp; a VM listed without a notice is claimed at this host's clock.
    let (v, w) = (vm(20_000), vm(20_001));
    let at = Stamp::new(epoch(1), 10);
    dir.apply(HostId(1), &migration(v, "h1", "h0", at)).unwrap();
    let arrivals = dir.refresh_local([v, w]);
    assert_eq!(
        arrivals,
        vec![Arrival {
            vm: v,
            from: HostId(1),
            at
        }]
    );
    assert!(dir.lock().expected.is_empty());
    let since: HashMap<VmId, Stamp> = dir.local_vms().iter().map(|l| (l.vm, l.since)).collect();
    assert_eq!((since[&v], since[&w]), (at, Stamp::new(epoch(1), 10)));
    // Listed again: nothing new to announce.
    assert!(dir.refresh_local([v, w]).is_empty());
}

#[test]
fn stamps_learned_before_the_token_was_heard_of_are_judged_once_it_is() {
    let dir = Directory::new(topology(4), HostId(0));
    let (v, w) = (vm(1), vm(2));
    // No token heard of yet: nothing to judge by.
    dir.apply(HostId(3), &migration(v, "h2", "h3", FAR))
        .unwrap();
    dir.apply(
        HostId(2),
        &migration(w, "h1", "h2", Stamp::new(epoch(1), 3)),
    )
    .unwrap();
    dir.observe_token(Stamp::new(epoch(1), 5));
    assert_eq!(dir.lookup(v), None);
    assert_eq!(dir.lookup(w), Some(HostId(2)));
    // Its clock never moves by what peers stamp.
    dir.apply(
        HostId(1),
        &migration(v, "h2", "h1", Stamp::new(epoch(2), 60_000)),
    )
    .unwrap();
    assert_eq!(dir.token_clock(), Some(Stamp::new(epoch(1), 5)));
}

/// A VM that left, came back and left again is remembered by its last departure, for as long
/// as any of the newest [`MAX_DEPARTED`] departures: its first departure, forgotten when it
/// came back, must not take the newer one with it when the oldest are dropped (it did: the
/// stale place in the order evicted the VM's current entry while 4,095 younger ones stayed).
#[test]
fn a_vm_that_left_twice_is_remembered_by_its_last_departure() {
    let dir = Directory::new(topology(4), HostId(0));
    let a = vm(1);
    let at = |seq: u64| Stamp {
        epoch: epoch(1),
        seq,
    };
    dir.departed(a, HostId(1), at(1));
    dir.arrived(a, at(2));
    dir.departed(a, HostId(2), at(3));
    // 4,095 more departures: with a's, exactly the newest MAX_DEPARTED.
    for i in 0..(MAX_DEPARTED as u32 - 1) {
        dir.departed(VmId(0x0b00_0000 + i), HostId(3), at(4 + i as u64));
    }
    let answer = dir.answer_query(&LocationQuery::vms(vec![a]));
    assert_eq!(
        answer.moved.len(),
        1,
        "a's departure was forgotten: {answer:?}"
    );
    assert_eq!(
        (answer.moved[0].to.as_str(), answer.moved[0].at),
        ("h2", at(3))
    );
    // One more departure and a's, now the oldest, goes.
    dir.departed(VmId(0x0c00_0000), HostId(3), at(1 << 20));
    let answer = dir.answer_query(&LocationQuery::vms(vec![a]));
    assert!(answer.moved.is_empty(), "{answer:?}");
}
