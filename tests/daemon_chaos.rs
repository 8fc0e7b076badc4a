//! Chaos on the loopback cluster: eight real `scored run` processes, the token holder (and now and
//! then another host) killed with SIGKILL and restarted, again and again. From the daemons' own
//! JSON logs: no two decisions ever overlap in time (but for the documented ambiguous hand-off),
//! the token always comes back within the bound of docs/protocol.md, and every VM is on exactly
//! one host at every poll. A second test kills a host in the middle of a (slow, simulated)
//! migration and checks that the restart reconciles it from the journal and never moves it twice.

mod support;

use rand::{Rng, SeedableRng};
use scored::hypervisor::memory::MigrationModel;
use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::cluster::{Cluster, Options};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One host's turn for one VM, as its "decision" log line tells it.
#[derive(Clone, Debug)]
struct Turn {
    host: usize,
    /// Shown in failure messages.
    #[allow(dead_code)]
    vm: String,
    start: u64,
    end: u64,
    epoch: u64,
}

fn turn_of(host: usize, e: &serde_json::Value) -> Option<Turn> {
    if e["message"] != "decision" {
        return None;
    }
    Some(Turn {
        host,
        vm: e["vm"].as_str()?.to_string(),
        start: e["started_unix_ms"].as_u64()?,
        end: e["unix_ms"].as_u64()?,
        epoch: e["epoch"].as_u64()?,
    })
}

/// Every VM on exactly one host, none lost or duplicated.
fn check_placement(c: &Cluster, vms: usize) {
    let f = c.shared();
    f.check().expect("cluster invariants");
    assert_eq!(f.placement().len(), vms, "VM count conserved");
}

/// Pairs of turns on different hosts that overlap in time, except where the later epoch was
/// minted by an ambiguous hand-off (docs/protocol.md: the receiver may have taken the old copy
/// and works on it until it hears of the new epoch).
fn overlaps(turns: &[Turn], ambiguous: &HashSet<u64>) -> Vec<(Turn, Turn)> {
    let mut sorted = turns.to_vec();
    sorted.sort_by_key(|t| (t.start, t.end));
    let mut out = Vec::new();
    for (i, a) in sorted.iter().enumerate() {
        for b in &sorted[i + 1..] {
            if b.start >= a.end {
                break;
            }
            if a.host == b.host && a.epoch == b.epoch {
                continue;
            }
            let newer = a.epoch.max(b.epoch);
            if a.epoch != b.epoch && ambiguous.contains(&newer) {
                continue;
            }
            out.push((a.clone(), b.clone()));
        }
    }
    out
}

/// What the logs told so far.
#[derive(Default)]
struct Seen {
    cursor: Vec<usize>,
    turns: Vec<Turn>,
    /// Epochs minted by an ambiguous hand-off.
    ambiguous: HashSet<u64>,
    /// When a token was regenerated (unix ms).
    regenerations: Vec<u64>,
    /// Loss detectors that fired but stood down: a peer had heard of a live token.
    stood_down: usize,
}

impl Seen {
    fn absorb(&mut self, c: &Cluster) {
        for (h, e) in c.new_events(&mut self.cursor) {
            if let Some(t) = turn_of(h, &e) {
                self.turns.push(t);
            } else if e["message"] == "ambiguous hand-off: token re-minted under a higher epoch" {
                self.ambiguous.insert(e["epoch"].as_u64().unwrap());
            } else if e["message"] == "token regenerated" {
                self.regenerations.push(e["unix_ms"].as_u64().unwrap());
            } else if e["message"] == "token not regenerated: a peer heard of a live token recently"
            {
                self.stood_down += 1;
            }
        }
    }
}

#[test]
fn token_survives_twenty_holder_kills() {
    // 5 s by default; SCORED_CHAOS_HANDOFF_MS measures other settings (docs/evaluation.md).
    let handoff_ms: u64 = std::env::var("SCORED_CHAOS_HANDOFF_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    const KILLS: usize = 20;
    let mut c = Cluster::new(Options {
        overrides: vec![
            ("token.handoff_timeout_ms".into(), handoff_ms.to_string()),
            // Rounds paced at 2 s: the token rests at one host most of the time, so the test
            // finds (and kills) its holder rather than a host it just left.
            ("token.min_round_s".into(), "2".into()),
            ("log.level".into(), "\"info\"".into()),
        ],
        ..Options::default()
    });
    let vms = c.scenario.ids.len();
    let hosts = c.hosts.len();
    c.start_all();
    let mut seen = Seen::default();
    let first = c.wait(Duration::from_secs(90), |c| {
        seen.absorb(c);
        !seen.turns.is_empty()
    });
    assert!(first, "no decision within 90 s of the start");

    // Loss timeout (2 × hand-off), the stagger of the highest rank, one ping of the lower hosts
    // (hand-off / 2) and the regenerated token's stats fan-out (one hand-off): docs/protocol.md.
    // Debug daemons on a loaded 2-core machine get 15 s on top.
    let handoff = Duration::from_millis(handoff_ms);
    let bound =
        handoff * 2 + handoff / 4 * hosts as u32 + handoff / 2 + handoff + Duration::from_secs(15);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20);
    let mut back_ms: Vec<u64> = Vec::new();
    let mut regen_ms: Vec<u64> = Vec::new();
    for kill in 0..KILLS {
        check_placement(&c, vms);
        let mut holder = None;
        let found = c.wait(Duration::from_secs(60), |c| {
            holder = c.holder();
            holder.is_some()
        });
        assert!(found, "kill {kill}: no host holds the token for 60 s");
        let holder = holder.unwrap();
        let killed_at = unix_ms();
        c.kill(holder);
        let mut victims = vec![holder];
        if kill % 3 == 2 {
            let other = loop {
                let o = rng.random_range(0..hosts);
                if o != holder {
                    break o;
                }
            };
            c.kill(other);
            victims.push(other);
        }
        let from = seen.turns.len();
        let back = c.wait(bound, |c| {
            check_placement(c, vms);
            seen.absorb(c);
            seen.turns[from..].iter().any(|t| t.start >= killed_at)
        });
        assert!(
            back,
            "kill {kill} of {:?}: no decision anywhere within {bound:?}",
            victims
                .iter()
                .map(|&v| &c.hosts[v].name)
                .collect::<Vec<_>>()
        );
        let first_turn = seen.turns[from..]
            .iter()
            .filter(|t| t.start >= killed_at)
            .map(|t| t.start)
            .min()
            .unwrap();
        back_ms.push(first_turn - killed_at);
        if let Some(r) = seen.regenerations.iter().filter(|&&r| r >= killed_at).min() {
            regen_ms.push(r - killed_at);
        }
        for v in victims {
            c.start(v);
        }
    }
    // The restarted hosts rejoin: a few more decisions under everyone's eyes.
    let from = seen.turns.len();
    let more = c.wait(Duration::from_secs(120), |c| {
        check_placement(c, vms);
        seen.absorb(c);
        seen.turns.len() >= from + vms / 2
    });
    assert!(more, "the cluster stopped deciding after the last restart");
    check_placement(&c, vms);

    let bad = overlaps(&seen.turns, &seen.ambiguous);
    assert!(
        bad.is_empty(),
        "{} overlapping decisions, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    back_ms.sort_unstable();
    regen_ms.sort_unstable();
    eprintln!(
        "chaos: {} decisions, {KILLS} kills, hand-off timeout {handoff_ms} ms; first decision after a kill: median {} ms, max {} ms; \
         regenerations after a kill: {} (median {} ms, max {} ms after the kill), {} in all; stood down for a live token: {}; \
         ambiguous re-mints: {}",
        seen.turns.len(),
        back_ms[back_ms.len() / 2],
        back_ms.last().unwrap(),
        regen_ms.len(),
        regen_ms.get(regen_ms.len() / 2).copied().unwrap_or(0),
        regen_ms.last().copied().unwrap_or(0),
        seen.regenerations.len(),
        seen.stood_down,
        seen.ambiguous.len()
    );
    assert!(
        !regen_ms.is_empty(),
        "20 holder kills and the token was never regenerated"
    );
}

#[test]
fn journal_reconciles_a_migration_cut_by_a_kill() {
    // 512 MiB guests send half their memory at 32 MiB/s: 8 s per migration, long enough to kill
    // the source in the middle of one.
    let mut c = Cluster::new(Options {
        migration: MigrationModel {
            sent_fraction: 0.5,
            throughput_bytes_per_s: 32.0 * 1024.0 * 1024.0,
            downtime: Duration::from_millis(20),
        },
        overrides: vec![("log.level".into(), "\"info\"".into())],
        ..Options::default()
    });
    let vms = c.scenario.ids.len();
    c.start_all();
    let mut cursor = Vec::new();
    let mut started: Option<(usize, String)> = None;
    let ok = c.wait(Duration::from_secs(120), |c| {
        for (h, e) in c.new_events(&mut cursor) {
            if e["message"] == "migration starting" && started.is_none() {
                started = Some((h, e["vm"].as_str().unwrap().to_string()));
            }
        }
        started.is_some()
    });
    assert!(ok, "no migration started within 120 s");
    let (host, vm) = started.unwrap();
    let before = c.shared();
    c.kill(host);
    let t0 = Instant::now();
    // The simulated migration died with its process: the VM stays at the source, exactly once.
    check_placement(&c, vms);
    let placement = c.shared().placement();
    let vm_id = scored::proto::VmId::from_ipv4(vm.parse().unwrap());
    assert_eq!(placement[&vm_id], c.hosts[host].name);
    assert_eq!(c.shared().migrations(), before.migrations());
    let journal = std::fs::read_to_string(c.path(&format!("{}.journal", c.hosts[host].name)))
        .expect("journal file");
    assert!(
        journal.contains("\"record\":\"begin\"")
            && journal.contains(&format!("\"vm\":{}", vm_id.0)),
        "the journal does not record the migration of {vm} before it started:\n{journal}"
    );

    c.start(host);
    let mut verdict = None;
    let ok = c.wait(Duration::from_secs(60), |c| {
        for (h, e) in c.new_events(&mut cursor) {
            if h == host && e["message"] == "journal: migration left open by the last run" {
                verdict = Some((e["vm"].as_str().unwrap().to_string(), e["verdict"].clone()));
            }
        }
        verdict.is_some()
    });
    assert!(ok, "the restarted host did not reconcile its journal");
    let (rvm, verdict) = verdict.unwrap();
    assert_eq!(rvm, vm);
    assert_eq!(verdict, "Failed", "the VM never left: the migration failed");

    // The cluster carries on; every migration the shared file counts was logged as succeeded
    // exactly once, and the cut one was not among them.
    let settled = c.wait(Duration::from_secs(90), |c| {
        check_placement(c, vms);
        t0.elapsed() > Duration::from_secs(20)
    });
    assert!(settled);
    let succeeded: Vec<String> = c
        .events()
        .into_iter()
        .filter(|(_, e)| e["message"] == "migration succeeded")
        .map(|(_, e)| e["vm"].as_str().unwrap().to_string())
        .collect();
    // A migration under way now has not been counted by either side yet; one in its last
    // moment may be counted by the file before its line is written.
    let counted = c.shared().migrations();
    assert!(
        counted.abs_diff(succeeded.len() as u64) <= 1,
        "the shared file counts {counted} migrations, the logs {}",
        succeeded.len()
    );
    let reopened =
        std::fs::read_to_string(c.path(&format!("{}.journal", c.hosts[host].name))).unwrap();
    assert!(
        reopened.len() > journal.len(),
        "the reconciliation was not journalled"
    );
}
