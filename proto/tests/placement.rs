//! The version 2 messages the placement rules need: round trips, their bounds (groups per VM,
//! name lengths, the refusal's sentence), the version byte that keeps v1 and v2 apart, and hostile
//! bytes.

mod examples;

use examples::{FINGERPRINT, moving_request, vm};
use proptest::prelude::*;
use scored_proto::codec::LENGTH_PREFIX;
use scored_proto::*;

fn roundtrip<M: WireMessage + PartialEq + std::fmt::Debug>(m: &M) -> usize {
    let frame = encode(m).unwrap();
    let back: M = decode(&frame).unwrap();
    assert_eq!(&back, m);
    frame.len()
}

fn capacity(accepts: bool) -> CapacityResponse {
    CapacityResponse {
        free_slots: 2,
        free_memory_mib: 4096,
        cpu_load: 0.5,
        maintenance: false,
        incoming_migrations: 0,
        accepts,
    }
}

fn group(i: usize) -> GroupRef {
    GroupRef {
        name: format!("g{i}"),
        kind: GroupKind::AntiAffinity,
        scope: 0,
    }
}

#[test]
fn a_v1_peer_refuses_a_v2_frame_and_a_v2_reader_a_v1_frame() {
    // The v2 request of a VM in two groups is a few dozen bytes.
    let req = Request {
        topology: FINGERPRINT,
        body: moving_request(),
    };
    let len = roundtrip(&req);
    assert!(len < 64, "{len} bytes");
    let v2 = encode(&req).unwrap();
    assert_eq!(v2[LENGTH_PREFIX], 2);
    let e = decode::<Request<CapacityRequest>>(&v2).unwrap_err();
    assert_eq!(
        e.to_string(),
        "capacity request: wire version 2, this build speaks version 1"
    );
    let v1 = encode(&Request {
        topology: FINGERPRINT,
        body: CapacityRequest { memory_mib: 2048 },
    })
    .unwrap();
    let e = decode::<Request<PlacementRequest>>(&v1).unwrap_err();
    assert!(matches!(e, DecodeError::Version { got: 1, .. }), "{e}");
}

#[test]
fn groups_are_bounded_per_vm_and_by_name() {
    let mut req = moving_request();
    let moving = req.moving.as_mut().unwrap();
    moving.groups = (0..MAX_VM_GROUPS).map(group).collect();
    roundtrip(&Request {
        topology: 1,
        body: req.clone(),
    });
    // One more group: refused when encoding, and when a peer sends it anyway.
    req.moving
        .as_mut()
        .unwrap()
        .groups
        .push(group(MAX_VM_GROUPS));
    let e = encode(&Request {
        topology: 1,
        body: req.clone(),
    })
    .unwrap_err();
    assert!(e.to_string().contains("more than 16"), "{e}");
    let mut forged = encode(&Request {
        topology: 1,
        body: PlacementRequest::room(1),
    })
    .unwrap();
    // Hand-build the body a peer could send: postcard of the request with 17 groups.
    forged.truncate(LENGTH_PREFIX + 1);
    forged.extend(postcard_request(1, &req));
    let len = (forged.len() - LENGTH_PREFIX) as u32;
    forged[..4].copy_from_slice(&len.to_be_bytes());
    let e = decode::<Request<PlacementRequest>>(&forged).unwrap_err();
    assert!(e.to_string().contains("more than 16"), "{e}");

    for bad in [String::new(), "x".repeat(MAX_GROUP_NAME + 1), "a\nb".into()] {
        let mut req = moving_request();
        req.moving.as_mut().unwrap().groups[0].name = bad.clone();
        assert!(
            encode(&Request {
                topology: 1,
                body: req
            })
            .is_err(),
            "{bad:?}"
        );
    }
    let mut twice = moving_request();
    let g = twice.moving.as_ref().unwrap().groups[0].clone();
    twice.moving.as_mut().unwrap().groups.push(g);
    let e = encode(&Request {
        topology: 1,
        body: twice,
    })
    .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
}

/// The body a peer would write for `req` (fingerprint then postcard), unchecked.
fn postcard_request(topology: u64, req: &PlacementRequest) -> Vec<u8> {
    let mut out = postcard::to_stdvec(&topology).unwrap();
    out.extend(postcard::to_stdvec(req).unwrap());
    out
}

#[test]
fn a_rule_refusal_never_accepts_and_is_a_bounded_sentence() {
    let refused = PlacementResponse {
        capacity: capacity(false),
        refused_by_rule: Some("anti-affinity group db, scope host: hv2 runs 10.0.0.2".into()),
        cpus: 8,
    };
    roundtrip(&Response::Ok(refused.clone()));
    roundtrip(&Response::Ok(PlacementResponseV2::from(refused)));
    let contradiction = PlacementResponse {
        capacity: capacity(true),
        refused_by_rule: Some("x".into()),
        cpus: 8,
    };
    assert!(encode(&Response::Ok(contradiction.clone())).is_err());
    assert!(encode(&Response::Ok(PlacementResponseV2::from(contradiction))).is_err());
    let long = Response::Ok(PlacementResponse {
        capacity: capacity(false),
        refused_by_rule: Some("x".repeat(MAX_REASON + 1)),
        cpus: 8,
    });
    assert!(encode(&long).is_err());
    let absurd = Response::Ok(PlacementResponse {
        capacity: capacity(true),
        refused_by_rule: None,
        cpus: MAX_CPUS + 1,
    });
    assert!(encode(&absurd).is_err());
}

#[test]
fn a_v3_answer_is_not_read_as_a_v2_one_nor_the_reverse() {
    // The version byte tells them apart: a peer that negotiated one version and got the other's
    // frame refuses it rather than misreading the CPU count as something else.
    let v3 = PlacementResponse {
        capacity: capacity(true),
        refused_by_rule: None,
        cpus: 32,
    };
    let v2 = PlacementResponseV2::from(v3.clone());
    let frame3 = encode(&Response::Ok(v3.clone())).unwrap();
    let frame2 = encode(&Response::Ok(v2.clone())).unwrap();
    assert!(decode::<Response<PlacementResponseV2>>(&frame3).is_err());
    assert!(decode::<Response<PlacementResponse>>(&frame2).is_err());
    assert_eq!(
        PlacementResponse::from(v2),
        PlacementResponse { cpus: 0, ..v3 }
    );
}

#[test]
fn a_groups_announcement_of_a_full_host_fits_its_frame() {
    // 4,096 VMs, each in two groups of 24-byte names: well under the 2 MiB frame.
    let a = GroupsAnnounce {
        host: "hv-0001".into(),
        vms: (0..4096u32)
            .map(|i| VmGroups {
                vm: VmId(0x0a00_0000 + i),
                groups: vec![
                    format!("replicas-of-service-{i:04}"),
                    "storage-quorum-north-1".into(),
                ],
            })
            .collect(),
    };
    let len = roundtrip(&a);
    assert!(len < 256 << 10, "{len} bytes");
    let mut bad = a.clone();
    bad.host = "not a host name".into();
    assert!(encode(&bad).is_err());
}

fn arb_group_name() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,64}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn v2_messages_round_trip(
        mem in any::<u64>(), v in any::<u32>(),
        names in prop::collection::btree_set(arb_group_name(), 0..=MAX_VM_GROUPS),
        scope in any::<u8>(), anti in any::<bool>(),
        reason in proptest::option::of("[ -~]{0,256}"),
    ) {
        let groups: Vec<GroupRef> = names.iter().map(|n| GroupRef {
            name: n.clone(),
            kind: if anti { GroupKind::AntiAffinity } else { GroupKind::Affinity },
            scope,
        }).collect();
        roundtrip(&Request { topology: 5, body: PlacementRequest {
            memory_mib: mem, moving: Some(MovingVm { vm: VmId(v), groups }) } });
        roundtrip(&Response::Ok(PlacementResponse {
            capacity: capacity(reason.is_none() && anti), refused_by_rule: reason, cpus: v % MAX_CPUS }));
        roundtrip(&GroupsAnnounce { host: "hv1".into(), vms: vec![VmGroups {
            vm: vm(10, 0, 0, 1), groups: names.into_iter().collect() }] });
    }

    #[test]
    fn mutated_v2_frames_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let frame = encode(&Request { topology: 9, body: moving_request() }).unwrap();
        let mut m = frame.clone();
        for (at, byte) in &edits {
            let i = at.index(m.len());
            m[i] = *byte;
        }
        if let Ok(r) = decode::<Request<PlacementRequest>>(&m) {
            let again = encode(&r).expect("a decoded value re-encodes");
            prop_assert_eq!(decode::<Request<PlacementRequest>>(&again).unwrap(), r);
        }
        let _ = decode::<Response<PlacementResponse>>(&m);
        let _ = decode::<GroupsAnnounce>(&m);
    }
}
