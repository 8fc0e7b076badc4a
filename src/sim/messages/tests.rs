use super::*;
use crate::sim::engine::{self, RunOptions};
use crate::sim::traffic::{Flow, Rates};
use crate::sim::{Scenario, ScenarioParams};
use scored_proto::PolicyKind;
use std::path::Path;

/// Two racks of two hosts, two VM slots each: h1 h2 | h3 h4.
const TWO_RACKS: &str = r#"
[levels]
names = ["rack", "core"]
weights = [1, 20]

[defaults]
max_vms = 2
memory_mib = 8192

[[host]]
name = "h1"
path = ["tor1"]

[[host]]
name = "h2"
path = ["tor1"]

[[host]]
name = "h3"
path = ["tor2"]

[[host]]
name = "h4"
path = ["tor2"]
"#;

/// v0 on h1 talks to v1 on h3; v2 on h2 talks to v3 on h4. Round-robin visits v0 … v3.
fn by_hand() -> Scenario {
    let topo = Topology::parse(Path::new("two-racks.toml"), TWO_RACKS).unwrap();
    let mut sc = Scenario::build(
        topo,
        ScenarioParams {
            vms: Some(4),
            rounds: 1,
            ..ScenarioParams::default()
        },
    )
    .unwrap();
    sc.initial = vec![HostId(0), HostId(2), HostId(1), HostId(3)];
    let flows = [
        Flow {
            a: 0,
            b: 1,
            bytes: 1e9,
        },
        Flow {
            a: 2,
            b: 3,
            bytes: 1e9,
        },
    ];
    sc.rates = vec![Rates::from_flows(4, &flows, 60.0)];
    sc
}

fn options() -> RunOptions {
    RunOptions {
        policy: PolicyKind::RoundRobin,
        migration_cost: 0.0,
        migration_cost_fraction: 0.0,
        per_move: None,
        rack_alternates: 3,
        return_margin: 0.0,
        record_steps: false,
        verify_moves: true,
        rules: true,
        cooldown: None,
        group: None,
    }
}

#[test]
fn a_round_counted_by_hand() {
    let sc = by_hand();
    let run = engine::run(&sc, &options(), |_| {});
    let c = &run.messages;
    // v0 (h1) joins v1 on h3: one candidate asked, a migration. v1 is then with its partner:
    // nothing to ask. Same for v2 (h2 → h4) and v3.
    assert_eq!(run.migrations, 2);
    assert_eq!(c.decisions, 4);
    assert_eq!(c.migrations, 2);
    // Token at h1 (v0), then h3 (v1), h2 (v2), h4 (v3): three hand-offs, each answered.
    assert_eq!(c.handoffs.messages, 2 * 3);
    let token = Token::new(0, PolicyKind::RoundRobin, sc.ids.to_vec());
    let fp = crate::p2p::fingerprint(&sc.topology);
    let token_frame = encode(&Request {
        topology: fp,
        body: token,
    })
    .unwrap()
    .len() as u64;
    // The walk's token differs only in varint fields and flag bytes of the same count.
    assert!(c.token_frame.abs_diff(token_frame) <= 4, "{c:?}");
    let ack = encode(&Response::Ok(TokenAck::Accepted)).unwrap().len() as u64;
    assert_eq!(c.handoffs.bytes, 3 * (c.token_frame + ack));
    // Two capacity requests (v0 → h3, v2 → h4), each answered.
    assert_eq!(c.capacity.messages, 2 * 2);
    let request = encode(&Request {
        topology: fp,
        body: PlacementRequest {
            memory_mib: 1024,
            moving: Some(MovingVm {
                vm: VmId(0x0a00_0004),
                groups: Vec::new(),
            }),
        },
    })
    .unwrap()
    .len() as u64;
    let wire = Wire::new(&sc.topology, sc.ids[3], 1024);
    assert_eq!(wire.capacity_request, request);
    assert_eq!(
        c.capacity.bytes,
        2 * (wire.capacity_request + wire.capacity_response)
    );
    // Two announcements and two changed inventories per migration.
    assert_eq!(c.migration_announces.messages, 4);
    assert_eq!(c.inventory_changes.messages, 4);
    // The moves left h1 and h2 with no VM, h3 and h4 with two.
    assert_eq!(
        c.inventory_changes.bytes,
        2 * (wire.inventory(0) + wire.inventory(2))
    );
    // A heartbeat per step (four locates, the pass's end) and two per arrival.
    assert_eq!(c.heartbeats.messages, 4 + 1 + 2 * 3);
    // Warm caches: no lookup; verified, v0 and v2 would each ask their partner's host.
    assert_eq!(c.lookups.messages, 0);
    assert_eq!(c.lookups_if_verified.messages, 2 * 2);
    // Each a one-VM batch, in the frames the daemon sends a host whose inventory it knows
    // (`/scored/location/2`, no inventory asked for, none sent).
    let query = encode(&Request {
        topology: fp,
        body: scored_proto::LocationQuery::vms(vec![sc.ids[0]]),
    })
    .unwrap()
    .len() as u64;
    let answer = encode(&Response::Ok(scored_proto::LocationAnswer {
        here: vec![scored_proto::Located {
            vm: sc.ids[0],
            since: STAMP,
        }],
        moved: Vec::new(),
        inventory: None,
    }))
    .unwrap()
    .len() as u64;
    assert_eq!(c.lookups_if_verified.bytes, 2 * (query + answer));
    // Round-robin gathers no statistics.
    assert_eq!((c.stats.messages, c.stats_rounds), (0, 0));
}

#[test]
fn the_global_policy_asks_every_other_host_once_a_round() {
    let mut sc = by_hand();
    sc.rates.push(sc.rates[0].clone());
    let run = engine::run(
        &sc,
        &RunOptions {
            policy: PolicyKind::Global,
            ..options()
        },
        |_| {},
    );
    let c = &run.messages;
    assert_eq!(c.stats_rounds, 2);
    assert_eq!(c.stats.messages, 2 * 2 * 3);
}

#[test]
fn max_turns_bounds_the_steps() {
    let mut sc = by_hand();
    sc.params.max_turns = Some(2);
    let run = engine::run(&sc, &options(), |_| {});
    assert_eq!(run.messages.decisions, 2);
    assert_eq!(run.messages.handoffs.messages, 2);
}

#[test]
fn gossip_peers_fan_out_and_envelope() {
    // 4 hosts: every other one. 16 and more: 4 dialled and 4 dialling on average.
    assert_eq!(Model::peers(4), 3);
    assert_eq!(Model::peers(2), 1);
    assert_eq!(Model::peers(16), 8);
    assert_eq!(Model::peers(10_000), 8);
    let m = Model::default();
    // 4 hosts: the publisher floods 3, each of 3 receivers forwards to its 3 − 1 others.
    assert_eq!(m.copies(4), 3.0 + 3.0 * 2.0);
    // 16 hosts: 8 peers, mesh 6: 8 + 15 × 5.
    assert_eq!(m.copies(16), 8.0 + 15.0 * 5.0);
    // Two non-mesh peers at 16 hosts: IHAVE to them, three heartbeats, from every host.
    assert_eq!(m.ihave_entries(16), 16.0 * 2.0 * 3.0);
    // A 30-byte frame: from 40, data 32, seqno 10, topic 20, signature 66 = 168; the publish
    // field's tag and length 3; the RPC's length prefix 2.
    assert_eq!(Model::envelope(30), 173);
}

#[test]
fn a_round_takes_its_turns_hand_offs_and_migrations() {
    let c = Counts {
        hosts: 10,
        vms: 100,
        decisions: 50,
        migrations: 5,
        handoffs: Tally {
            messages: 2 * 25,
            bytes: 0,
        },
        token_frame: 82_000,
        ..Counts::default()
    };
    let m = Model::default();
    let p = m.round(&c);
    assert!((p.decisions_s - 100.0 * 0.78e-3).abs() < 1e-12);
    // Half the steps hand off: 50 hand-offs of an 82 KB token, 0.64 ms each.
    assert!((p.handoffs_s - 50.0 * 0.64e-3).abs() < 1e-9);
    // Each arrival lists 10 guests' states (one call) and describes none.
    assert!((p.arrival_reads_s - 50.0 * (0.136e-3 + 10.0 * 0.024e-3)).abs() < 1e-9);
    assert!((p.migrations_s - 10.0 * 1.4).abs() < 1e-9);
    assert_eq!(p.statistics_s, 0.0);
}
