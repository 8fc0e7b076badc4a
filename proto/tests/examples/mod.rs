//! Example messages shared by the golden-vector and size tests.
#![allow(dead_code)] // each test binary uses a different part

use scored_proto::*;

pub fn vm(a: u8, b: u8, c: u8, d: u8) -> VmId {
    VmId::from_ipv4(std::net::Ipv4Addr::new(a, b, c, d))
}

pub fn small_token(policy: PolicyKind) -> Token {
    let mut t = Token::new(
        3,
        policy,
        vec![
            vm(10, 0, 0, 1),
            vm(10, 0, 0, 2),
            vm(10, 0, 0, 3),
            vm(10, 0, 0, 4),
            vm(10, 0, 0, 5),
            vm(10, 0, 1, 7),
            vm(192, 168, 9, 1),
        ],
    );
    t.seq = 17;
    t.round = 2;
    t.holder = Some(vm(10, 0, 0, 2));
    for (i, s) in t.slots.iter_mut().enumerate() {
        s.level = (i % 4) as u8;
        s.visited = i % 3 == 0;
        s.load = (i * 37 % 256) as u8;
    }
    if policy == PolicyKind::Global {
        t.schedule = vec![vm(10, 0, 1, 7), vm(10, 0, 0, 1), vm(192, 168, 9, 1)];
    }
    t
}

/// A token like the dc-2560 simulation's: `n` VMs with dense addresses from 10.0.0.0/8, each
/// /24 without its network and broadcast address; levels, flags and loads vary.
pub fn dense_token(n: usize, seed: u64) -> Token {
    let mut ids = Vec::with_capacity(n);
    let mut a: u32 = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0));
    while ids.len() < n {
        let last = a & 0xff;
        if last != 0 && last != 255 {
            ids.push(VmId(a));
        }
        a += 1;
    }
    let mut t = Token::new(9, PolicyKind::LoadAware, ids);
    let mut x = seed | 1;
    for s in t.slots.iter_mut() {
        // xorshift: deterministic variety without a dependency.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.level = (x % 5) as u8;
        s.visited = x & 0x100 != 0;
        s.load = (x >> 16) as u8;
    }
    t.holder = Some(t.slots[n / 2].vm);
    t.seq = 123_456;
    t
}

type Check = Box<dyn Fn(&[u8]) -> Result<bool, DecodeError>>;

pub struct Example {
    pub name: &'static str,
    pub frame: Vec<u8>,
    /// The version byte the frame must carry (the major number of its protocol id).
    pub version: u8,
    /// Decodes `bytes` as this example's type and says whether it equals the example.
    pub check: Check,
}

fn example<M: WireMessage + PartialEq + 'static>(name: &'static str, m: M) -> Example {
    let frame = encode(&m).unwrap_or_else(|e| panic!("{name}: {e}"));
    Example {
        name,
        frame,
        version: M::VERSION,
        check: Box::new(move |b| decode::<M>(b).map(|d| d == m)),
    }
}

pub const FINGERPRINT: TopologyFingerprint = 0x5c0e_d00d_0123_4567;

fn req<T>(body: T) -> Request<T> {
    Request {
        topology: FINGERPRINT,
        body,
    }
}

pub fn all() -> Vec<Example> {
    vec![
        example(
            "token_distributed",
            req(small_token(PolicyKind::Distributed)),
        ),
        example("token_global", req(small_token(PolicyKind::Global))),
        example(
            "token_empty_round_robin",
            req(Token::new(1, PolicyKind::RoundRobin, vec![])),
        ),
        example("token_ack_accepted", Response::Ok(TokenAck::Accepted)),
        example(
            "token_ack_fenced",
            Response::Ok(TokenAck::Fenced {
                current: Stamp::new(4, 2),
            }),
        ),
        example(
            "token_ack_declined",
            Response::Ok(TokenAck::Declined {
                reason: "shutting down".into(),
            }),
        ),
        example(
            "token_refused_topology",
            Response::<TokenAck>::Refused(Refusal::TopologyMismatch {
                expected: 0x0102_0304_0506_0708,
            }),
        ),
        example(
            "location_request",
            req(LocationRequest {
                vms: vec![
                    vm(10, 0, 0, 1),
                    vm(10, 0, 0, 2),
                    vm(10, 0, 0, 3),
                    vm(10, 0, 2, 9),
                ],
            }),
        ),
        example(
            "location_response",
            Response::Ok(LocationResponse {
                here: vec![
                    Located {
                        vm: vm(10, 0, 0, 1),
                        since: Stamp::ZERO,
                    },
                    Located {
                        vm: vm(10, 0, 0, 3),
                        since: Stamp::new(2, 40),
                    },
                ],
                moved: vec![Moved {
                    vm: vm(10, 0, 2, 9),
                    to: "hv3".into(),
                    at: Stamp::new(3, 1),
                }],
            }),
        ),
        example(
            "location_refused_unavailable",
            Response::<LocationResponse>::Refused(Refusal::Unavailable {
                reason: "daemon starting".into(),
            }),
        ),
        example(
            "capacity_request",
            req(CapacityRequest { memory_mib: 2048 }),
        ),
        example(
            "capacity_response",
            Response::Ok(CapacityResponse {
                free_slots: 3,
                free_memory_mib: 6144,
                cpu_load: 0.25,
                maintenance: false,
                incoming_migrations: 1,
                accepts: true,
            }),
        ),
        example("stats_request", req(StatsRequest { epoch: 3, round: 7 })),
        example(
            "stats_response",
            Response::Ok(StatsResponse {
                token: TokenView {
                    at: Stamp::new((2 << 16) | 3, 41),
                    idle_ms: Some(250),
                    held: false,
                },
                benefits: vec![
                    VmBenefit {
                        vm: vm(10, 0, 0, 1),
                        benefit: 1234.5,
                    },
                    VmBenefit {
                        vm: vm(10, 0, 0, 2),
                        benefit: 0.0,
                    },
                ],
            }),
        ),
        // `/scored/group/1`: a survey, or one move of a group move.
        example(
            "group_request_survey",
            req(GroupRequest::Survey(SurveyRequest {
                at: Stamp::new((2 << 16) | 3, 41),
            })),
        ),
        example(
            "group_request_move",
            req(GroupRequest::Move(MoveRequest {
                vm: vm(10, 0, 0, 2),
                to: "hv3".into(),
                at: Stamp::new((2 << 16) | 3, 41),
            })),
        ),
        example(
            "group_response_survey",
            Response::Ok(GroupResponse::Survey(SurveyResponse {
                vms: vec![
                    SurveyedVm {
                        vm: vm(10, 0, 0, 1),
                        memory_mib: 4096,
                        movable: true,
                        partners: vec![(vm(10, 0, 0, 2), 1234.5), (vm(10, 0, 1, 7), 0.25)],
                    },
                    SurveyedVm {
                        vm: vm(10, 0, 0, 2),
                        memory_mib: 512,
                        movable: false,
                        partners: vec![],
                    },
                ],
                capacity: CapacityResponse {
                    free_slots: 3,
                    free_memory_mib: 6144,
                    cpu_load: 0.25,
                    maintenance: false,
                    incoming_migrations: 1,
                    accepts: true,
                },
                cpus: 64,
            })),
        ),
        example(
            "group_response_moved",
            Response::Ok(GroupResponse::Moved(MoveResponse {
                bytes: 4_402_341_888,
                time_ms: 38_250,
                downtime_ms: 87,
            })),
        ),
        example(
            "announce_migration",
            Announcement::Migration(MigrationAnnounce {
                vm: vm(10, 0, 0, 3),
                from: "hv1".into(),
                to: "hv2".into(),
                at: Stamp::new(3, 18),
            }),
        ),
        example(
            "announce_inventory",
            Announcement::Inventory {
                host: "hv2".into(),
                vms: vec![
                    Located {
                        vm: vm(10, 0, 0, 2),
                        since: Stamp::ZERO,
                    },
                    Located {
                        vm: vm(10, 0, 0, 3),
                        since: Stamp::new(3, 18),
                    },
                ],
            },
        ),
        // Version 2 (`/scored/capacity/2`, `/scored/announce/2`).
        example("capacity2_request_room", req(PlacementRequest::room(2048))),
        example("capacity2_request_moving", req(moving_request())),
        example(
            "capacity2_response_refused_by_rule",
            Response::Ok(PlacementResponseV2::from(refused_by_rule())),
        ),
        example(
            "capacity2_refused_topology",
            Response::<PlacementResponseV2>::Refused(Refusal::TopologyMismatch {
                expected: 0x0102_0304_0506_0708,
            }),
        ),
        // Version 3 (`/scored/capacity/3`: the answer with the host's CPUs; same request).
        example(
            "capacity3_response_cpus",
            Response::Ok(PlacementResponse {
                capacity: CapacityResponse {
                    free_slots: 3,
                    free_memory_mib: 6144,
                    cpu_load: 0.25,
                    maintenance: false,
                    incoming_migrations: 1,
                    accepts: true,
                },
                refused_by_rule: None,
                cpus: 64,
            }),
        ),
        example(
            "capacity3_response_refused_by_rule",
            Response::Ok(refused_by_rule()),
        ),
        example(
            "capacity3_refused_topology",
            Response::<PlacementResponse>::Refused(Refusal::TopologyMismatch {
                expected: 0x0102_0304_0506_0708,
            }),
        ),
        // Location, version 2 (`/scored/location/2`: the answering host's inventory, when
        // asked for).
        example(
            "location2_request_with_inventory",
            req(LocationQuery {
                vms: vec![vm(10, 0, 0, 1), vm(10, 0, 0, 2), vm(10, 0, 2, 9)],
                inventory: true,
            }),
        ),
        example(
            "location2_response_with_inventory",
            Response::Ok(LocationAnswer {
                here: vec![Located {
                    vm: vm(10, 0, 0, 1),
                    since: Stamp::ZERO,
                }],
                moved: vec![Moved {
                    vm: vm(10, 0, 2, 9),
                    to: "hv3".into(),
                    at: Stamp::new(3, 1),
                }],
                inventory: Some(vec![
                    Located {
                        vm: vm(10, 0, 0, 1),
                        since: Stamp::ZERO,
                    },
                    Located {
                        vm: vm(10, 0, 0, 7),
                        since: Stamp::new(2, 40),
                    },
                ]),
            }),
        ),
        example(
            "location2_response_without_inventory",
            Response::Ok(LocationAnswer::default()),
        ),
        example(
            "location2_refused_topology",
            Response::<LocationAnswer>::Refused(Refusal::TopologyMismatch {
                expected: 0x0102_0304_0506_0708,
            }),
        ),
        example(
            "announce2_groups",
            GroupsAnnounce {
                host: "hv2".into(),
                vms: vec![VmGroups {
                    vm: vm(10, 0, 0, 2),
                    groups: vec!["db-main".into(), "web-rack".into()],
                }],
            },
        ),
    ]
}

/// A 64-CPU host's answer refusing a VM by an anti-affinity rule (v2 drops the CPUs).
fn refused_by_rule() -> PlacementResponse {
    PlacementResponse {
        capacity: CapacityResponse {
            free_slots: 3,
            free_memory_mib: 6144,
            cpu_load: 0.25,
            maintenance: false,
            incoming_migrations: 0,
            accepts: false,
        },
        refused_by_rule: Some("anti-affinity group db-main, scope host: hv2 runs 10.0.0.2".into()),
        cpus: 64,
    }
}

/// A capacity request for a VM in an anti-affinity group at host scope and an affinity group at
/// rack scope.
pub fn moving_request() -> PlacementRequest {
    PlacementRequest {
        memory_mib: 2048,
        moving: Some(MovingVm {
            vm: vm(10, 0, 0, 3),
            groups: vec![
                GroupRef {
                    name: "db-main".into(),
                    kind: GroupKind::AntiAffinity,
                    scope: 0,
                },
                GroupRef {
                    name: "web-rack".into(),
                    kind: GroupKind::Affinity,
                    scope: 1,
                },
            ],
        }),
    }
}
