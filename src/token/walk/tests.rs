//! The turn machine walked by hand: each test plays the driver's part with made-up answers.

use super::*;
use scored_proto::PolicyKind;

const ME: HostId = HostId(0);
const OTHER: HostId = HostId(1);
const THIRD: HostId = HostId(2);

fn vms(ids: &[u32]) -> Vec<VmId> {
    ids.iter().map(|&i| VmId(i)).collect()
}

fn start(policy: PolicyKind, ids: &[u32]) -> (TurnMachine, Action) {
    TurnMachine::start(ME, Token::new(7, policy, vms(ids)), &[]).unwrap()
}

fn located(host: HostId) -> Input {
    Input::Located {
        host: Some(host),
        stopping: false,
    }
}

#[test]
fn decides_for_local_vms_and_hands_the_token_to_the_host_of_the_next() {
    let (mut m, a) = start(PolicyKind::RoundRobin, &[1, 2]);
    assert_eq!(a, Action::Locate(VmId(1)));
    assert_eq!(m.on(located(ME)), Action::Decide(VmId(1)));
    assert_eq!(m.on(Input::Decided(Vec::new())), Action::Locate(VmId(2)));
    assert_eq!(m.token().holder, Some(VmId(2)));
    assert_eq!(m.on(located(OTHER)), Action::HandTo(OTHER));
    assert_eq!(m.on(Input::Handed(Handoff::Done)), Action::Done);
}

#[test]
fn the_known_vms_get_slots_at_arrival() {
    let token = Token::new(7, PolicyKind::RoundRobin, vms(&[5]));
    let (m, a) = TurnMachine::start(ME, token, &vms(&[9, 3, 5])).unwrap();
    assert_eq!(a, Action::Locate(VmId(3)));
    let slots: Vec<u32> = m.token().slots.iter().map(|s| s.vm.0).collect();
    assert_eq!(slots, [3, 5, 9]);
}

#[test]
fn an_unreachable_host_is_skipped_for_the_rest_of_the_round() {
    let (mut m, _) = start(PolicyKind::RoundRobin, &[1, 2, 3]);
    assert_eq!(m.on(located(OTHER)), Action::HandTo(OTHER));
    assert_eq!(
        m.on(Input::Handed(Handoff::Skip { ambiguous: false })),
        Action::Locate(VmId(2))
    );
    // VM 2 runs on the same host: no second hand-off attempt this round.
    assert_eq!(m.on(located(OTHER)), Action::Locate(VmId(3)));
    assert_eq!(m.on(located(THIRD)), Action::HandTo(THIRD));
}

#[test]
fn an_ambiguous_hand_off_re_mints_before_going_on() {
    let (mut m, _) = start(PolicyKind::RoundRobin, &[1, 2]);
    m.on(located(OTHER));
    assert_eq!(
        m.on(Input::Handed(Handoff::Skip { ambiguous: true })),
        Action::Remint { host: OTHER }
    );
    assert_eq!(m.on(Input::Reminted { epoch: 99 }), Action::Locate(VmId(2)));
    // The skip counts as a hand-on within the new epoch.
    assert_eq!(m.token().epoch, 99);
    assert_eq!(m.stamp().0.epoch, 99);
}

#[test]
fn a_host_with_a_newer_token_ends_the_turn_with_its_reason() {
    let (mut m, _) = start(PolicyKind::RoundRobin, &[1]);
    m.on(located(OTHER));
    assert_eq!(
        m.on(Input::Handed(Handoff::Fenced)),
        Action::Drop(DropReason::FencedBy(OTHER))
    );
}

#[test]
fn stopping_passes_over_local_vms_and_drops_the_token_if_only_local_ones_remain() {
    let (mut m, _) = start(PolicyKind::RoundRobin, &[1, 2, 3]);
    let stopping = |host| Input::Located {
        host: Some(host),
        stopping: true,
    };
    assert_eq!(m.on(stopping(ME)), Action::Locate(VmId(2)));
    assert_eq!(m.on(stopping(OTHER)), Action::HandTo(OTHER));

    let (mut m, _) = start(PolicyKind::RoundRobin, &[1, 2]);
    let mut last = Action::Wait;
    for _ in 0..10 {
        last = m.on(stopping(ME));
        if matches!(last, Action::PaceRound(_)) {
            last = m.on(Input::Paced { known: Vec::new() });
        }
        if matches!(last, Action::Drop(_)) {
            break;
        }
    }
    assert_eq!(last, Action::Drop(DropReason::NoOtherHost));
}

#[test]
fn a_vm_no_host_runs_loses_its_slot_when_the_pass_ends() {
    let (mut m, _) = start(PolicyKind::RoundRobin, &[1, 2]);
    assert_eq!(
        m.on(Input::Located {
            host: None,
            stopping: false
        }),
        Action::Locate(VmId(2))
    );
    assert_eq!(m.token().slots.len(), 2, "kept until the pass ends");
    // The pass ends with VM 2's turn: the round is paced before anything else.
    m.on(located(ME));
    assert_eq!(m.on(Input::Decided(Vec::new())), Action::PaceRound(1));
    assert_eq!(
        m.on(Input::Paced {
            known: vms(&[2, 4])
        }),
        Action::Locate(VmId(1))
    );
    let slots: Vec<u32> = m.token().slots.iter().map(|s| s.vm.0).collect();
    assert_eq!(slots, [2, 4]);
}

#[test]
fn an_empty_token_waits_for_vms() {
    let (mut m, a) = start(PolicyKind::RoundRobin, &[]);
    assert_eq!(a, Action::Wait);
    assert_eq!(m.on(Input::Waited { known: Vec::new() }), Action::Wait);
    assert_eq!(
        m.on(Input::Waited { known: vms(&[4]) }),
        Action::Locate(VmId(4))
    );
}

#[test]
fn the_global_policy_orders_the_round_by_the_statistics_gathered() {
    let (mut m, a) = start(PolicyKind::Global, &[1, 2, 3]);
    assert_eq!(a, Action::GatherStatistics);
    let expected = vec![(VmId(1), 1.0), (VmId(2), 5.0), (VmId(3), 3.0)];
    assert_eq!(m.on(Input::Statistics(expected)), Action::Locate(VmId(2)));
    m.on(located(ME));
    assert_eq!(m.on(Input::Decided(Vec::new())), Action::Locate(VmId(3)));
}

#[test]
fn an_answer_out_of_step_drops_the_token() {
    let (mut m, _) = start(PolicyKind::RoundRobin, &[1]);
    assert!(matches!(
        m.on(Input::Handed(Handoff::Done)),
        Action::Drop(DropReason::OutOfStep { .. })
    ));
    // Nothing is awaited after the end.
    assert!(matches!(
        m.on(located(ME)),
        Action::Drop(DropReason::OutOfStep { .. })
    ));
}
