//! Chaos on the loopback cluster: eight real `scored run` processes, the token holder (and now and
//! then another host) killed with SIGKILL and restarted, again and again. From the daemons' own
//! JSON logs: no two decisions ever overlap in time (but for the documented ambiguous hand-off),
//! the token always comes back within the bound of docs/protocol.md, and every VM is on exactly
//! one host at every poll. A second test kills a host in the middle of a (slow, simulated)
//! migration, twice: the migration, a job of the hypervisor, completes without its source; the
//! restarted source finds it still running (then settles it on a later inventory refresh) or
//! completed, closes its journal entry, and nobody migrates the VM again before that.

mod support;

use rand::{Rng, SeedableRng};
use scored::hypervisor::file::SharedFile;
use scored::hypervisor::memory::{InFlight, MigrationModel};
use scored::proto::VmId;
use std::collections::HashSet;
use std::time::Duration;
use support::cluster::{Cluster, Options};
use support::time::unix_ms;

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

/// The shared cluster file as it lies on disk, read without taking part: unlike
/// `Cluster::shared`, this commits no migration that is due.
fn on_disk(c: &Cluster) -> SharedFile {
    serde_json::from_slice(&std::fs::read(&c.shared).unwrap()).unwrap()
}

/// How a restarted source is brought back in [`kill_mid_migration`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum Restart {
    /// A second after the kill, while the job still runs.
    DuringTheJob,
    /// Once the other daemons have committed the job.
    AfterTheJob,
}

/// What one kill in the middle of a migration showed.
struct Cut {
    verdict_at_start: String,
    journal: String,
}

/// Waits for a migration to start, kills its source with SIGKILL, restarts it (during or after
/// the job) and follows the journal until it settles the migration. Checks on the way that the
/// job carries on without its source, that nobody starts a second migration of the VM before
/// it is settled, that the VM is on exactly one host at every poll and ends at the destination.
fn kill_mid_migration(c: &mut Cluster, cursor: &mut Vec<usize>, restart: Restart) -> Cut {
    let vms = c.scenario.ids.len();
    let mut found: Option<(usize, String, u64)> = None;
    let mut job: Option<InFlight> = None;
    let ok = c.wait(Duration::from_secs(150), |c| {
        for (h, e) in c.new_events(cursor) {
            if e["message"] == "migration starting" && found.is_none() {
                found = Some((
                    h,
                    e["vm"].as_str().unwrap().to_string(),
                    e["journal"].as_u64().unwrap(),
                ));
            }
        }
        let Some((h, vm, _)) = &found else {
            return false;
        };
        let id = VmId::from_ipv4(vm.parse().unwrap());
        // The log line comes just before the job is recorded: wait for the record.
        job = on_disk(c)
            .in_flight()
            .iter()
            .find(|j| j.vm == id && j.from == c.hosts[*h].name)
            .cloned();
        if job.is_none() && !c.running(*h) {
            found = None;
        }
        job.is_some()
    });
    assert!(ok, "no migration job started within 150 s");
    let (host, vm, entry) = found.unwrap();
    let job = job.unwrap();
    let vm_id = job.vm;
    let name = c.hosts[host].name.clone();
    c.kill(host);
    let killed_at = unix_ms();
    assert!(
        killed_at < job.completes_unix_ms,
        "{name} was killed after its job ended"
    );
    let journal_path = c.path(&format!("{name}.journal"));
    let journal = std::fs::read_to_string(&journal_path).expect("journal file");
    assert!(
        journal.contains(&format!("\"record\":\"begin\",\"id\":{entry},")),
        "the journal does not record the migration of {vm} before it started:\n{journal}"
    );
    // The job lives in the hypervisor (the shared file), not in the dead daemon.
    let f = on_disk(c);
    assert_eq!(f.placement()[&vm_id], name, "{vm} runs at its source");
    assert!(f.in_flight().contains(&job));

    let mut second_starts: Vec<String> = Vec::new();
    let mut watch = |c: &Cluster, cursor: &mut Vec<usize>| {
        let events = c.new_events(cursor);
        for (h, e) in &events {
            if e["message"] == "migration starting" && e["vm"] == vm.as_str() {
                second_starts.push(c.hosts[*h].name.clone());
            }
        }
        events
    };
    match restart {
        Restart::DuringTheJob => std::thread::sleep(Duration::from_secs(1)),
        Restart::AfterTheJob => {
            // The other daemons touch the file on every inventory refresh (2 s): one of them
            // commits the job once it is due, with the source still dead.
            let ok = c.wait(
                Duration::from_millis(job.completes_unix_ms.saturating_sub(unix_ms()) + 15_000),
                |c| {
                    watch(c, cursor);
                    let f = on_disk(c);
                    // Other daemons may have started migrations of their own meanwhile.
                    !f.in_flight().iter().any(|j| j.vm == vm_id) && f.placement()[&vm_id] == job.to
                },
            );
            assert!(
                ok,
                "the job of {vm} was not completed without its source: {:?}",
                on_disk(c).in_flight()
            );
        }
    }
    check_placement(c, vms);
    c.start(host);

    let mut verdict: Option<(String, u64)> = None;
    let mut settled: Option<(String, u64)> = None;
    let mut busy_turns = 0;
    let ok = c.wait(Duration::from_secs(60), |c| {
        check_placement(c, vms);
        for (h, e) in watch(c, cursor) {
            if h != host || e["vm"] != vm.as_str() {
                continue;
            }
            let v = || {
                (
                    e["verdict"].as_str().unwrap().to_string(),
                    e["unix_ms"].as_u64().unwrap(),
                )
            };
            match e["message"].as_str().unwrap() {
                "journal: migration left open by the last run" => verdict = Some(v()),
                "journal: migration settled" => settled = Some(v()),
                "decision" if settled.is_none() => {
                    assert_eq!(
                        e["outcome"], "busy",
                        "{name} decided for {vm} before settling"
                    );
                    busy_turns += 1;
                }
                _ => {}
            }
        }
        settled.is_some()
    });
    assert!(
        ok,
        "{name} did not settle the migration of {vm} (verdict at start {verdict:?})"
    );
    let (verdict_at_start, seen_at) = verdict.expect("the restart reconciled its journal");
    let (how, settled_at) = settled.unwrap();
    // Each verdict is what the hypervisor said when asked.
    let expected = if seen_at < job.completes_unix_ms {
        "StillRunning"
    } else {
        "Completed"
    };
    assert_eq!(
        verdict_at_start, expected,
        "verdict at {seen_at}, job {job:?}"
    );
    if restart == Restart::AfterTheJob {
        assert_eq!(verdict_at_start, "Completed");
    }
    assert_eq!(how, "Completed");
    assert!(settled_at >= job.completes_unix_ms);
    assert!(
        second_starts.is_empty(),
        "{vm} migrated again before its first migration was settled: {second_starts:?}"
    );
    assert_eq!(
        c.shared().placement()[&vm_id],
        job.to,
        "{vm} ends at the destination"
    );
    let journal = std::fs::read_to_string(&journal_path).unwrap();
    assert!(
        journal.contains(&format!(
            "\"record\":\"end\",\"id\":{entry},\"outcome\":\"reconciled_completed\""
        )),
        "the journal entry {entry} was not closed:\n{journal}"
    );
    eprintln!(
        "{vm} {name} -> {}: killed {} ms into a {} ms job, restarted {restart:?}; verdict at start {verdict_at_start}, settled {} ms after the job's end, {busy_turns} busy turn(s) meanwhile",
        job.to,
        killed_at - job.started_unix_ms,
        job.completes_unix_ms - job.started_unix_ms,
        settled_at - job.completes_unix_ms
    );
    Cut {
        verdict_at_start,
        journal,
    }
}

#[test]
fn a_migration_outlives_its_killed_source_and_the_journal_settles_it() {
    // 512 MiB guests send half their memory at 16 MiB/s: 16 s per migration, long enough to
    // kill the source in the middle of one and restart it before the job ends.
    let mut c = Cluster::new(Options {
        migration: MigrationModel {
            sent_fraction: 0.5,
            throughput_bytes_per_s: 16.0 * 1024.0 * 1024.0,
            downtime: Duration::from_millis(20),
        },
        overrides: vec![("log.level".into(), "\"info\"".into())],
        ..Options::default()
    });
    let vms = c.scenario.ids.len();
    c.start_all();
    let mut cursor = Vec::new();
    let during = kill_mid_migration(&mut c, &mut cursor, Restart::DuringTheJob);
    assert_eq!(
        during.verdict_at_start, "StillRunning",
        "restarted a second after the kill, the job still ran"
    );
    let after = kill_mid_migration(&mut c, &mut cursor, Restart::AfterTheJob);
    assert_eq!(after.verdict_at_start, "Completed");
    assert!(after.journal.contains("reconciled_completed"));

    // Every migration the shared file counts was either logged as succeeded by a live source
    // or settled from a journal (the two cut ones).
    check_placement(&c, vms);
    let events = c.events();
    let succeeded = events
        .iter()
        .filter(|(_, e)| e["message"] == "migration succeeded")
        .count() as u64;
    let settled = events
        .iter()
        .filter(|(_, e)| {
            e["message"] == "journal: migration settled" && e["verdict"] == "Completed"
        })
        .count() as u64;
    assert_eq!(settled, 2);
    // A migration under way now has not been counted by either side yet; one in its last
    // moment may be counted by the file before its line is written.
    let counted = c.shared().migrations();
    assert!(
        counted.abs_diff(succeeded + settled) <= 1,
        "the shared file counts {counted} migrations, the logs {succeeded} succeeded + {settled} settled"
    );
}
