//! A decision whose best destination's capacity answer timed out asks that host once more, as a
//! token hand-off is retried, and only then gives up: a real `Daemon` deciding through the
//! in-process transport, with the destination's side played by hand so the first answer can be
//! held back past the timeout.

mod support;

use scored::config::Config;
use scored::decide::TurnOutcome;
use std::time::{Duration, Instant};
use support::two_hosts::{answer_capacity, two_hosts};

const TIMEOUT: Duration = Duration::from_millis(300);

/// h1 decides for the subject while h2 answers its capacity requests after `delays`.
async fn decide(delays: Vec<Option<Duration>>) -> (TurnOutcome, String, usize) {
    let mut config = Config::default();
    config.token.handoff_timeout_ms = TIMEOUT.as_millis() as u64;
    config.decision.cooldown_base_s = 0;
    let mut t = two_hosts(config, 512);
    let h2 = tokio::spawn(answer_capacity(
        t.h2_inbound.take().unwrap(),
        delays,
        4 * TIMEOUT,
    ));
    let node = &t.node;
    node.refresh_inventory().await.unwrap();
    node.traffic().tick(Instant::now());
    let vm = node.inventory()[0].clone();
    let a = node.assess(&vm).await;
    let seen = h2.await.unwrap();
    (a.outcome, a.detail, seen)
}

#[tokio::test]
async fn a_timed_out_capacity_answer_is_asked_for_once_more() {
    // The first answer comes after the timeout, the second at once: the move is found.
    let (outcome, detail, seen) = decide(vec![Some(2 * TIMEOUT), Some(Duration::ZERO)]).await;
    assert_eq!(outcome, TurnOutcome::Migrated, "{detail}");
    assert_eq!(seen, 2, "one request, then one more");
}

#[tokio::test]
async fn a_host_that_never_answers_is_asked_twice_then_counts_as_no_answer() {
    let (outcome, detail, seen) = decide(vec![None, None, None]).await;
    assert_eq!(outcome, TurnOutcome::NoCapacity, "{detail}");
    assert!(detail.contains("1 no answer"), "{detail}");
    assert_eq!(seen, 2, "one more request, not more");
}

#[tokio::test]
async fn a_prompt_answer_is_asked_for_once() {
    let (outcome, detail, seen) = decide(vec![Some(Duration::ZERO)]).await;
    assert_eq!(outcome, TurnOutcome::Migrated, "{detail}");
    assert_eq!(seen, 1);
}
