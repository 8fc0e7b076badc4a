//! Round trips, sizes, limits and hostile input for every decoder. The proptests over random
//! and mutated bytes are the suite's short fuzz smoke run; the long runs are `proto/fuzz/`.

mod examples;

use examples::{FINGERPRINT, dense_token, small_token, vm};
use proptest::prelude::*;
use scored_proto::codec::{LENGTH_PREFIX, decode_payload, frame_len};
use scored_proto::*;

fn roundtrip<M: WireMessage + PartialEq + std::fmt::Debug>(m: &M) -> usize {
    let frame = encode(m).unwrap();
    let back: M = decode(&frame).unwrap();
    assert_eq!(&back, m);
    frame.len()
}

#[test]
fn dc_2560_token_takes_at_most_3_bytes_per_vm() {
    // 2,560 hosts × 16 VMs, as in the thesis simulation.
    let t = dense_token(40_960, 7);
    let len = roundtrip(&Request {
        topology: FINGERPRINT,
        body: t.clone(),
    });
    let per_vm = len as f64 / 40_960.0;
    assert!(per_vm <= 3.0, "{per_vm:.3} bytes per VM");
    // And the global policy's order on top of it still decodes.
    let mut g = t;
    g.policy = PolicyKind::Global;
    g.schedule = g.slots.iter().rev().step_by(3).map(|s| s.vm).collect();
    roundtrip(&g);
}

#[test]
fn half_million_slot_token_fits_in_1_5_mb() {
    let t = dense_token(500_000, 11);
    let len = roundtrip(&t);
    assert!(len <= 1_500_000, "{len} bytes");
}

#[test]
fn sparse_ids_still_round_trip() {
    let ids = [0u32, 1, 3, 0x7fff_ffff, 0x8000_0000, u32::MAX - 2, u32::MAX];
    let mut t = Token::new(
        1,
        PolicyKind::Distributed,
        ids.iter().map(|&i| VmId(i)).collect(),
    );
    t.slots[6].level = MAX_SLOT_LEVEL;
    t.slots[6].visited = true;
    t.slots[6].load = 255;
    t.holder = Some(VmId(u32::MAX));
    roundtrip(&t);
}

#[test]
fn invalid_tokens_are_refused_when_encoding() {
    let mut t = small_token(PolicyKind::Distributed);
    t.slots[1].level = MAX_SLOT_LEVEL + 1;
    assert!(matches!(encode(&t), Err(EncodeError::Invalid { .. })));
    let mut t = small_token(PolicyKind::Distributed);
    t.slots.swap(0, 1);
    let e = encode(&t).unwrap_err();
    assert!(e.to_string().contains("sorted"), "{e}");
    let mut t = small_token(PolicyKind::Global);
    t.schedule.push(vm(1, 2, 3, 4));
    let e = encode(&t).unwrap_err();
    assert!(e.to_string().contains("1.2.3.4"), "{e}");
}

#[test]
fn location_requests_are_sets() {
    let r = LocationRequest {
        vms: vec![vm(10, 0, 0, 9), vm(10, 0, 0, 1), vm(10, 0, 0, 9)],
    };
    let back: LocationRequest = decode(&encode(&r).unwrap()).unwrap();
    assert_eq!(back.vms, vec![vm(10, 0, 0, 1), vm(10, 0, 0, 9)]);
    let too_many = LocationRequest {
        vms: (0..=MAX_LOCATION_BATCH as u32).map(VmId).collect(),
    };
    assert!(encode(&too_many).is_err());
}

#[test]
fn frames_over_the_limit_are_refused_from_the_prefix_alone() {
    // 4 GiB announced: refused before any body byte is looked at.
    let e = frame_len::<Request<Token>>([0xff; LENGTH_PREFIX]).unwrap_err();
    assert!(matches!(e, DecodeError::TooLarge { .. }), "{e}");
    let e = frame_len::<Response<CapacityResponse>>(2048u32.to_be_bytes()).unwrap_err();
    assert!(e.to_string().contains("capacity response"), "{e}");
    assert!(frame_len::<Response<CapacityResponse>>(100u32.to_be_bytes()).is_ok());
    assert!(matches!(
        frame_len::<Announcement>([0; 4]),
        Err(DecodeError::Empty { .. })
    ));
    // A v2 location answer may be as long as a v1 answer and an inventory announcement
    // together, and not a byte longer.
    let max = <Response<LocationAnswer> as WireMessage>::MAX_FRAME - LENGTH_PREFIX;
    assert!(max > <Response<LocationResponse> as WireMessage>::MAX_FRAME);
    assert!(frame_len::<Response<LocationAnswer>>((max as u32).to_be_bytes()).is_ok());
    let e = frame_len::<Response<LocationAnswer>>((max as u32 + 1).to_be_bytes()).unwrap_err();
    assert!(e.to_string().contains("location response"), "{e}");
}

#[test]
fn a_location_answer_with_an_inventory_over_the_limit_is_refused_both_ways() {
    let entry = |i: u32| Located {
        vm: VmId(i),
        since: Stamp::ZERO,
    };
    let mut a = LocationAnswer {
        inventory: Some((0..MAX_HOST_VMS as u32).map(entry).collect()),
        ..LocationAnswer::default()
    };
    let whole = encode(&Response::Ok(a.clone())).unwrap();
    assert_eq!(
        decode::<Response<LocationAnswer>>(&whole).unwrap(),
        Response::Ok(a.clone())
    );
    if let Some(inv) = a.inventory.as_mut() {
        inv.push(entry(u32::MAX));
    }
    assert!(matches!(
        encode(&Response::Ok(a)),
        Err(EncodeError::Invalid { .. })
    ));
    // The same count on the wire, however many entries follow: refused for the count.
    let mut frame = encode(&Response::Ok(LocationAnswer {
        inventory: Some(Vec::new()),
        ..LocationAnswer::default()
    }))
    .unwrap();
    assert_eq!(frame.pop(), Some(0)); // the inventory's count
    frame.extend_from_slice(&[0x81, 0x80, 0x04]); // 65,537
    frame.extend(std::iter::repeat_n(0u8, 3 * (MAX_HOST_VMS + 1)));
    let len = (frame.len() - LENGTH_PREFIX) as u32;
    frame[..LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
    let e = decode::<Response<LocationAnswer>>(&frame).unwrap_err();
    assert!(
        e.to_string().contains("inventory of 65537 VMs exceeds"),
        "{e}"
    );
}

#[test]
fn truncated_trailing_and_wrong_version_frames_are_clean_errors() {
    let frame = encode(&Request {
        topology: FINGERPRINT,
        body: small_token(PolicyKind::Global),
    })
    .unwrap();
    for cut in 0..frame.len() {
        let e = decode::<Request<Token>>(&frame[..cut]).unwrap_err();
        assert!(
            matches!(e, DecodeError::Truncated { .. } | DecodeError::Empty { .. }),
            "cut at {cut}: {e}"
        );
    }
    let mut longer = frame.clone();
    longer.push(0);
    assert!(matches!(
        decode::<Request<Token>>(&longer),
        Err(DecodeError::TrailingBytes { extra: 1, .. })
    ));
    // A body one byte longer than its content, with a matching prefix.
    let mut padded = frame.clone();
    padded.push(0);
    let len = (padded.len() - LENGTH_PREFIX) as u32;
    padded[..4].copy_from_slice(&len.to_be_bytes());
    assert!(matches!(
        decode::<Request<Token>>(&padded),
        Err(DecodeError::TrailingBytes { .. })
    ));
    let mut v2 = frame.clone();
    v2[LENGTH_PREFIX] = 2;
    let e = decode::<Request<Token>>(&v2).unwrap_err();
    assert_eq!(
        e.to_string(),
        "token hand-off: wire version 2, this build speaks version 1"
    );
}

#[test]
fn hostile_slot_counts_do_not_allocate() {
    // A token body announcing 2^21 slots in a handful of bytes.
    let mut body =
        postcard::to_stdvec(&(1u64, 0u64, PolicyKind::Distributed, 0u32, None::<VmId>)).unwrap();
    body.extend_from_slice(&[0x80, 0x80, 0x80, 0x01]); // 2^21 slots
    body.extend_from_slice(&[1, 0, 0xff, 0xff, 0x7f]); // one run of 2^21 ids
    let mut payload = vec![WIRE_VERSION];
    payload.extend_from_slice(&body);
    let e = decode_payload::<Token>(&payload).unwrap_err();
    assert!(e.to_string().contains("cannot fit"), "{e}");
}

#[test]
fn values_outside_their_domain_are_refused() {
    let nan = Response::Ok(StatsResponse {
        token: Default::default(),
        benefits: vec![VmBenefit {
            vm: vm(10, 0, 0, 1),
            benefit: f64::NAN,
        }],
    });
    assert!(encode(&nan).is_err());
    // The same bytes forged by a peer: decoding refuses too.
    let mut forged = encode(&Response::Ok(StatsResponse {
        token: Default::default(),
        benefits: vec![VmBenefit {
            vm: vm(10, 0, 0, 1),
            benefit: 1.0,
        }],
    }))
    .unwrap();
    let n = forged.len();
    forged[n - 8..].copy_from_slice(&f64::NAN.to_le_bytes());
    let e = decode::<Response<StatsResponse>>(&forged).unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
    let bad_name = Announcement::Migration(MigrationAnnounce {
        vm: vm(10, 0, 0, 1),
        from: "hv 1".into(),
        to: "hv2".into(),
        at: Stamp::ZERO,
    });
    assert!(encode(&bad_name).is_err());
    let nowhere = Request {
        topology: FINGERPRINT,
        body: GroupRequest::Move(MoveRequest {
            vm: vm(10, 0, 0, 1),
            to: String::new(),
            at: Stamp::ZERO,
        }),
    };
    assert!(encode(&nowhere).is_err());
    let long_reason = Response::<TokenAck>::Refused(Refusal::Unavailable {
        reason: "x".repeat(MAX_REASON + 1),
    });
    assert!(encode(&long_reason).is_err());
}

fn arb_stamp() -> impl Strategy<Value = Stamp> {
    (any::<u64>(), any::<u64>()).prop_map(|(e, s)| Stamp::new(e, s))
}

fn arb_name() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,64}"
}

fn arb_token() -> impl Strategy<Value = Token> {
    (
        any::<u64>(),
        any::<u64>(),
        0..4usize,
        any::<u32>(),
        prop::collection::btree_set(any::<u32>(), 0..200),
        prop::collection::vec((0..=MAX_SLOT_LEVEL, any::<bool>(), any::<u8>()), 200),
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<prop::sample::Index>(), 0..50),
    )
        .prop_map(|(epoch, seq, p, round, ids, fields, h, sched)| {
            let mut t = Token::new(
                epoch,
                PolicyKind::ALL[p],
                ids.into_iter().map(VmId).collect(),
            );
            t.seq = seq;
            t.round = round;
            for (s, (level, visited, load)) in t.slots.iter_mut().zip(fields) {
                s.level = level;
                s.visited = visited;
                s.load = load;
            }
            if !t.slots.is_empty() {
                t.holder = Some(t.slots[h.index(t.slots.len())].vm);
                let mut seen = std::collections::HashSet::new();
                t.schedule = sched
                    .iter()
                    .map(|i| t.slots[i.index(t.slots.len())].vm)
                    .filter(|v| seen.insert(*v))
                    .collect();
            }
            t
        })
}

fn arb_announcement() -> impl Strategy<Value = Announcement> {
    prop_oneof![
        (any::<u32>(), arb_name(), arb_name(), arb_stamp())
            .prop_filter("distinct hosts", |(_, a, b, _)| a != b)
            .prop_map(
                |(v, from, to, at)| Announcement::Migration(MigrationAnnounce {
                    vm: VmId(v),
                    from,
                    to,
                    at
                })
            ),
        (
            arb_name(),
            prop::collection::vec((any::<u32>(), arb_stamp()), 0..40)
        )
            .prop_map(|(host, vms)| Announcement::Inventory {
                host,
                vms: vms
                    .into_iter()
                    .map(|(v, since)| Located { vm: VmId(v), since })
                    .collect()
            }),
    ]
}

/// Flips, inserts and deletes bytes of a valid frame.
fn mutate(frame: &[u8], edits: &[(prop::sample::Index, u8, u8)]) -> Vec<u8> {
    let mut f = frame.to_vec();
    for (at, kind, byte) in edits {
        if f.is_empty() {
            f.push(*byte);
            continue;
        }
        let i = at.index(f.len());
        match kind % 4 {
            0 => f[i] = *byte,
            1 => f[i] ^= 1 << (byte % 8),
            2 => f.insert(i, *byte),
            _ => {
                f.remove(i);
            }
        }
    }
    f
}

/// Decodes `bytes` as every message type; decoders may refuse, never panic, and what they
/// accept re-encodes to something that decodes to the same value.
fn decode_all(bytes: &[u8]) {
    fn one<M: WireMessage + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
        if let Ok(m) = decode::<M>(bytes) {
            let again = encode(&m).expect("a decoded value re-encodes");
            assert_eq!(decode::<M>(&again).unwrap(), m);
        }
    }
    one::<Request<Token>>(bytes);
    one::<Response<TokenAck>>(bytes);
    one::<Request<LocationRequest>>(bytes);
    one::<Response<LocationResponse>>(bytes);
    one::<Request<CapacityRequest>>(bytes);
    one::<Response<CapacityResponse>>(bytes);
    one::<Request<StatsRequest>>(bytes);
    one::<Response<StatsResponse>>(bytes);
    one::<Request<GroupRequest>>(bytes);
    one::<Response<GroupResponse>>(bytes);
    one::<Announcement>(bytes);
    one::<Request<PlacementRequest>>(bytes);
    one::<Response<PlacementResponse>>(bytes);
    one::<GroupsAnnounce>(bytes);
    one::<Request<LocationQuery>>(bytes);
    one::<Response<LocationAnswer>>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn tokens_round_trip(t in arb_token(), fp in any::<u64>()) {
        roundtrip(&Request { topology: fp, body: t });
    }

    #[test]
    fn location_messages_round_trip(
        ids in prop::collection::btree_set(any::<u32>(), 0..300),
        here in prop::collection::vec((any::<u32>(), arb_stamp()), 0..30),
        moved in prop::collection::vec((any::<u32>(), arb_name(), arb_stamp()), 0..30),
    ) {
        roundtrip(&Request { topology: 1, body: LocationRequest { vms: ids.iter().copied().map(VmId).collect() } });
        let here: Vec<Located> = here.into_iter().map(|(v, since)| Located { vm: VmId(v), since }).collect();
        let moved: Vec<Moved> = moved.into_iter().map(|(v, to, at)| Moved { vm: VmId(v), to, at }).collect();
        roundtrip(&Response::Ok(LocationResponse { here: here.clone(), moved: moved.clone() }));
        // Version 2: the same, with and without the answering host's inventory.
        let vms: Vec<VmId> = ids.into_iter().map(VmId).collect();
        roundtrip(&Request { topology: 1, body: LocationQuery { vms: vms.clone(), inventory: true } });
        roundtrip(&Request { topology: 1, body: LocationQuery { vms, inventory: false } });
        roundtrip(&Response::Ok(LocationAnswer { here: here.clone(), moved: moved.clone(), inventory: None }));
        roundtrip(&Response::Ok(LocationAnswer { inventory: Some(here.clone()), here, moved }));
    }

    #[test]
    fn capacity_and_stats_round_trip(
        slots in any::<u32>(), mem in any::<u64>(), load in 0f32..1e6, flags in any::<(bool, bool)>(),
        incoming in any::<u32>(), benefits in prop::collection::vec((any::<u32>(), -1e12f64..1e12), 0..50),
    ) {
        roundtrip(&Request { topology: 2, body: CapacityRequest { memory_mib: mem } });
        roundtrip(&Response::Ok(CapacityResponse {
            free_slots: slots, free_memory_mib: mem, cpu_load: load, maintenance: flags.0,
            incoming_migrations: incoming, accepts: flags.1,
        }));
        roundtrip(&Request { topology: 3, body: StatsRequest { epoch: mem, round: slots } });
        roundtrip(&Response::Ok(StatsResponse {
            token: TokenView { at: Stamp::new(mem, u64::from(slots)), idle_ms: Some(incoming), held: flags.0 },
            benefits: benefits.into_iter().map(|(v, benefit)| VmBenefit { vm: VmId(v), benefit }).collect(),
        }));
    }

    #[test]
    fn surveys_round_trip(
        at in arb_stamp(), cpus in any::<u32>(), slots in any::<u32>(), mem in any::<u64>(),
        vms in prop::collection::vec(
            (any::<u32>(), any::<u64>(), any::<bool>(),
             prop::collection::vec((any::<u32>(), 0f64..1e12), 0..=MAX_SURVEY_PARTNERS)),
            0..20,
        ),
    ) {
        roundtrip(&Request { topology: 4, body: GroupRequest::Survey(SurveyRequest { at }) });
        roundtrip(&Response::Ok(GroupResponse::Survey(SurveyResponse {
            vms: vms.into_iter().map(|(v, memory_mib, movable, partners)| SurveyedVm {
                vm: VmId(v), memory_mib, movable,
                partners: partners.into_iter().map(|(p, r)| (VmId(p), r)).collect(),
            }).collect(),
            capacity: CapacityResponse {
                free_slots: slots, free_memory_mib: mem, cpu_load: 0.5, maintenance: false,
                incoming_migrations: 0, accepts: true,
            },
            cpus,
        })));
    }

    #[test]
    fn moves_round_trip(
        v in any::<u32>(), to in arb_name(), at in arb_stamp(),
        ran in any::<(u64, u64, u64)>(),
    ) {
        roundtrip(&Request { topology: 5, body: GroupRequest::Move(MoveRequest { vm: VmId(v), to, at }) });
        roundtrip(&Response::Ok(GroupResponse::Moved(MoveResponse {
            bytes: ran.0, time_ms: ran.1, downtime_ms: ran.2,
        })));
    }

    #[test]
    fn announcements_round_trip(a in arb_announcement()) {
        roundtrip(&a);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
        // With a correct prefix, so the body decoders see the bytes too.
        let mut framed = ((bytes.len() + 1) as u32).to_be_bytes().to_vec();
        framed.push(WIRE_VERSION);
        framed.extend_from_slice(&bytes);
        decode_all(&framed);
    }

    #[test]
    fn mutated_frames_never_panic(
        t in arb_token(), a in arb_announcement(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let token = encode(&Request { topology: 9, body: t }).unwrap();
        let ann = encode(&a).unwrap();
        for frame in [token, ann] {
            let mut m = mutate(&frame, &edits);
            decode_all(&m);
            // Keep the prefix consistent so that mutations reach the body.
            if m.len() >= 4 {
                let len = (m.len() - 4) as u32;
                m[..4].copy_from_slice(&len.to_be_bytes());
                decode_all(&m);
            }
        }
    }
}
