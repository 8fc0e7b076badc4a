//! The daemon and its own hypervisor's truth. In process: a migration into a host that somebody
//! else started (an operator's virsh) counts against `migration.max_incoming`, so the host
//! refuses further VMs and a decision picks a rack alternate. On the loopback cluster of real
//! `scored run` processes: one host's hypervisor stops answering (its view of the shared cluster
//! file vanishes, so the real FileHost calls fail); the host stops deciding, the token goes on,
//! and it recovers by itself when the hypervisor is back; restarted during an outage, the daemon
//! comes up all the same and picks its VMs up once the hypervisor answers. In process again: a migration call that
//! never returns (as libvirt's did once, its migration stream cut mid-way) holds the token for a
//! bounded time only, and its VM stays untouched until the hypervisor says how the job ended.

mod support;

use scored::config::Config;
use scored::daemon::Daemon;
use scored::daemon::event_loop::drive;
use scored::decide::TurnOutcome;
use scored::flows::synthetic::Demand;
use scored::hypervisor::file::{self, FileHost};
use scored::hypervisor::memory::{MemoryCluster, MigrationModel, synthetic_vm};
use scored::hypervisor::{
    Capacity, Destination, Hypervisor, MigrationParams, MigrationReport, Vm, VmState,
};
use scored::metrics::{DirectionLabels, MigrationDirection};
use scored::p2p::{DirectNetwork, DirectPeers, Directory, Peers};
use scored::proto::{PlacementRequest, VmId};
use scored::topology::{HostId, Topology};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use support::cluster::{Cluster, Options};
use support::inprocess;
use support::time::{unix_ms, wait_until};

/// Eight hosts, two per rack, four racks in two pods; room for four 512 MiB VMs each.
fn topology() -> Topology {
    let mut t = String::from(
        "[levels]\nnames = [\"rack\", \"pod\", \"core\"]\nweights = [1.0, 2.718281828459045, 20.085536923187668]\n\n\
         [defaults]\nmax_vms = 4\nmemory_mib = 2560\nreserve_memory_mib = 256\n",
    );
    for i in 0..8 {
        t.push_str(&format!(
            "\n[[host]]\nname = \"h{}\"\npath = [\"pod{}\", \"tor{}\"]\n",
            i + 1,
            i / 4 + 1,
            i / 2 + 1
        ));
    }
    Topology::parse(Path::new("hypervisor-test.toml"), &t).unwrap()
}

/// Migrations that send the whole VM at `mib_s` MiB/s, without downtime.
fn whole_vm_at(mib_s: u32) -> MigrationModel {
    MigrationModel {
        sent_fraction: 1.0,
        throughput_bytes_per_s: f64::from(mib_s) * 1024.0 * 1024.0,
        downtime: Duration::ZERO,
    }
}

#[test]
fn incoming_migrations_started_elsewhere_bound_what_a_host_accepts() {
    let topo = Arc::new(topology());
    let (a, b, c) = (VmId(0x0a00_0001), VmId(0x0a00_0002), VmId(0x0a00_0003));
    let (h1, h3, h5, h6) = (HostId(0), HostId(2), HostId(4), HostId(5));
    let sim = MemoryCluster::new(&topo);
    // 512 MiB in 4 s: long enough to look at the destination meanwhile.
    sim.set_model(whole_vm_at(128));
    sim.add_vm(h1, synthetic_vm(a, 512)).unwrap();
    sim.add_vm(h6, synthetic_vm(b, 512)).unwrap();
    sim.add_vm(h3, synthetic_vm(c, 512)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("cluster.json");
    sim.save_shared(&shared, &[(a, b, 1e6)]).unwrap();

    let rt = inprocess::runtime();
    let net = DirectNetwork::new(topo.clone());
    let mut config = Config::default();
    // No token here: only capacity answers and one VM's assessment are looked at.
    config.token.regeneration_timeout_ms = Some(24 * 3600 * 1000);
    config.decision.cooldown_base_s = 0;
    config.decision.migration_cost_fraction = 0.0;
    let mut nodes: Vec<Arc<Daemon<DirectPeers>>> = Vec::new();
    for h in 0..8u32 {
        let me = HostId(h);
        let (peers, inbound) = net.join(me, Arc::new(Directory::new(topo.clone(), me)));
        let demands = if me == h1 {
            vec![Demand {
                vm: a,
                partner: b,
                bytes_per_sec: 1e6,
            }]
        } else {
            Vec::new()
        };
        let host = Arc::new(FileHost::open(&shared, &topo.host(me).name).unwrap());
        let node = inprocess::node(&topo, me, peers, host, demands, config.clone(), dir.path());
        rt.block_on(node.refresh_inventory()).unwrap();
        node.traffic().tick(Instant::now());
        rt.spawn(drive(node.clone(), inbound, std::future::pending()));
        nodes.push(node);
    }
    let req = PlacementRequest::room(512);
    let ask = |h: HostId| {
        rt.block_on(
            nodes[0]
                .peers()
                .query_capacity(h, req.clone(), Duration::from_secs(5)),
        )
        .unwrap()
        .capacity
    };
    let vm_a = nodes[0].inventory()[0].clone();
    assert_eq!(vm_a.id, a);

    // Nothing migrating: h6 accepts, and a goes to its partner's host.
    let r = ask(h6);
    assert_eq!(
        (r.incoming_migrations, r.free_slots, r.accepts),
        (0, 3, true)
    );
    let d = rt.block_on(nodes[0].assess(&vm_a));
    assert_eq!(d.outcome, TurnOutcome::Migrated, "{}", d.detail);
    assert_eq!(d.decision.unwrap().migrates_to(), Some(h6));

    // An operator moves c into h6 behind scored's back.
    let operator = {
        let from = FileHost::open(&shared, "h3").unwrap();
        std::thread::spawn(move || {
            let dest = Destination {
                host: "h6".into(),
                libvirt_uri: None,
                migration_uri: None,
            };
            from.migrate(c, &dest, &MigrationParams::default())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while file::read_shared(&shared).unwrap().in_flight().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the operator's migration never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // One incoming of at most one: h6 has room but refuses, and says why.
    let r = ask(h6);
    assert_eq!(
        (r.incoming_migrations, r.free_slots, r.accepts),
        (1, 2, false)
    );
    assert!(r.free_memory_mib < 2560 - 256 - 512, "{r:?}");
    // The decision sees h6 as full and takes its rack mate h5.
    let d = rt.block_on(nodes[0].assess(&vm_a));
    assert_eq!(d.outcome, TurnOutcome::Migrated, "{}", d.detail);
    assert!(d.detail.contains("1 full"), "{}", d.detail);
    assert_eq!(d.decision.unwrap().migrates_to(), Some(h5));
    // The destination's own gauge counts it too.
    rt.block_on(nodes[5].refresh_inventory()).unwrap();
    let incoming = DirectionLabels {
        direction: MigrationDirection::Incoming,
    };
    let gauge = |n: &Daemon<DirectPeers>| {
        n.metrics()
            .migrations
            .in_flight
            .get_or_create(&incoming)
            .get()
    };
    assert_eq!(gauge(&nodes[5]), 1);
    // An operator who allows two at a time (live option) gets h6 accepting again.
    {
        let mut cfg = nodes[5].config();
        cfg.migration.max_incoming = 2;
        nodes[5].set_config(cfg);
    }
    assert!(ask(h6).accepts);

    operator.join().unwrap().unwrap();
    let r = ask(h6);
    assert_eq!(
        (r.incoming_migrations, r.free_slots, r.accepts),
        (0, 2, true)
    );
    rt.block_on(nodes[5].refresh_inventory()).unwrap();
    assert_eq!(gauge(&nodes[5]), 0);
    file::read_shared(&shared).unwrap().check().unwrap();
}

/// Counts in `lines` host `down`'s outage warnings and the migrations it started.
fn outage_lines(
    lines: &[(usize, serde_json::Value)],
    down: usize,
    warned: &mut usize,
    migrations: &mut Vec<String>,
) {
    for (h, e) in lines {
        if *h != down {
            continue;
        }
        if e["message"]
            == "hypervisor not answering: no decisions for this host's VMs and no VMs taken in until it is back"
        {
            *warned += 1;
        }
        if e["message"] == "migration starting" {
            migrations.push(e["vm"].to_string());
        }
    }
}

/// One decision, as its log line tells it.
struct Decision {
    host: usize,
    outcome: String,
    start: u64,
    end: u64,
}

#[test]
fn a_host_whose_hypervisor_stops_answering_passes_its_turns_and_recovers() {
    let mut c = Cluster::new(Options {
        overrides: vec![("log.level".into(), "\"info\"".into())],
        ..Options::default()
    });
    // Each daemon reaches the shared file through a view of its own (a symlink to the cluster's
    // directory): removing one view makes that host's real FileHost calls fail, as a stopped
    // libvirtd makes the libvirt backend's.
    let root = c.dir.path().to_path_buf();
    let view = |i: usize| root.join(format!("view-h{}", i + 1));
    for i in 0..c.hosts.len() {
        std::os::unix::fs::symlink(&root, view(i)).unwrap();
        let text = std::fs::read_to_string(&c.hosts[i].config).unwrap();
        let seen = view(i).join("cluster.json");
        let text = text.replace(
            &format!("sim+file://{}", c.shared.display()),
            &format!("sim+file://{}", seen.display()),
        );
        assert!(text.contains("view-h"), "{text}");
        std::fs::write(&c.hosts[i].config, text).unwrap();
    }
    let vms = c.scenario.ids.len();
    c.start_all();
    let mut cursor = Vec::new();
    let mut decisions: Vec<Decision> = Vec::new();
    let absorb = |c: &Cluster, cursor: &mut Vec<usize>, out: &mut Vec<Decision>| {
        let mut lines = Vec::new();
        for (h, e) in c.new_events(cursor) {
            if e["message"] == "decision" {
                out.push(Decision {
                    host: h,
                    outcome: e["outcome"].as_str().unwrap().to_string(),
                    start: e["started_unix_ms"].as_u64().unwrap(),
                    end: e["unix_ms"].as_u64().unwrap(),
                });
            }
            lines.push((h, e));
        }
        lines
    };
    let ok = c.wait(Duration::from_secs(90), |c| {
        absorb(c, &mut cursor, &mut decisions);
        decisions.len() >= 10
    });
    assert!(ok, "the cluster did not start deciding");

    // Take down the host with the most VMs now (its turns come often).
    let placement = c.shared().placement();
    let down = (0..c.hosts.len())
        .max_by_key(|&i| {
            placement
                .values()
                .filter(|h| **h == c.hosts[i].name)
                .count()
        })
        .unwrap();
    let name = c.hosts[down].name.clone();
    std::fs::remove_file(view(down)).unwrap();
    let down_at = unix_ms();

    let mut warned = 0;
    let mut migrations_while_down = Vec::new();
    let from = decisions.len();
    let ok = c.wait(Duration::from_secs(90), |c| {
        let lines = absorb(c, &mut cursor, &mut decisions);
        outage_lines(&lines, down, &mut warned, &mut migrations_while_down);
        let new = &decisions[from..];
        let passed = new
            .iter()
            .filter(|d| d.host == down && d.outcome == "hypervisor_down")
            .count();
        // The token left the host after its refusal: others decided after it.
        let after = new
            .iter()
            .filter(|d| d.host == down && d.outcome == "hypervisor_down")
            .map(|d| d.end)
            .min()
            .is_some_and(|first| {
                new.iter()
                    .filter(|d| d.host != down && d.start >= first)
                    .count()
                    >= 5
            });
        warned >= 1 && passed >= 2 && after
    });
    assert!(
        ok,
        "{name} while its hypervisor is down: {warned} outage warnings, decisions {:?}",
        decisions[from..]
            .iter()
            .filter(|d| d.host == down)
            .map(|d| &d.outcome)
            .collect::<Vec<_>>()
    );
    let status = c
        .status(down)
        .expect("status of the host whose hypervisor is down");
    let outage = status.hypervisor_down.expect("status shows the outage");
    assert!(outage.error.contains("view-h"), "{}", outage.error);
    assert!(
        c.status((down + 1) % c.hosts.len())
            .unwrap()
            .hypervisor_down
            .is_none()
    );

    std::os::unix::fs::symlink(&root, view(down)).unwrap();
    let up_at = unix_ms();
    let mut recovered = false;
    let from_up = decisions.len();
    let ok = c.wait(Duration::from_secs(90), |c| {
        for (h, e) in absorb(c, &mut cursor, &mut decisions) {
            if h == down {
                if e["message"] == "hypervisor answering again" {
                    recovered = true;
                }
                if e["message"] == "migration starting" && !recovered {
                    migrations_while_down.push(e["vm"].to_string());
                }
            }
        }
        recovered
            && decisions[from_up..]
                .iter()
                .any(|d| d.host == down && d.start >= up_at && d.outcome != "hypervisor_down")
    });
    assert!(ok, "{name} did not recover after its hypervisor came back");
    assert!(c.status(down).unwrap().hypervisor_down.is_none());

    // Every decision of that host that began while its hypervisor was away passed its turn,
    // and no migration left it; one warning for the whole outage.
    for d in &decisions[from..] {
        if d.host == down && d.start > down_at && d.end < up_at {
            assert_eq!(d.outcome, "hypervisor_down", "decision at {}", d.start);
        }
    }
    assert!(
        migrations_while_down.is_empty(),
        "{name} started migrations while its hypervisor was down: {migrations_while_down:?}"
    );
    assert_eq!(warned, 1, "one warning per outage");
    let passed = decisions[from..]
        .iter()
        .filter(|d| d.host == down && d.outcome == "hypervisor_down")
        .count();
    let others = decisions[from..]
        .iter()
        .filter(|d| d.host != down && d.start >= down_at && d.end <= up_at)
        .count();
    eprintln!(
        "{name} down for {} ms: {passed} turns passed as hypervisor_down, {others} decisions elsewhere meanwhile",
        up_at - down_at
    );

    // The daemon (re)starts while its hypervisor does not answer: it comes up with the outage
    // (not a failed start that systemd would retry, and give up on), and picks its VMs up once
    // the hypervisor answers.
    std::fs::remove_file(view(down)).unwrap();
    c.kill(down);
    c.start(down);
    let mut warned_at_start = 0;
    let ok = c.wait(Duration::from_secs(60), |c| {
        let lines = absorb(c, &mut cursor, &mut decisions);
        outage_lines(
            &lines,
            down,
            &mut warned_at_start,
            &mut migrations_while_down,
        );
        warned_at_start >= 1
            && c.status(down).is_some_and(|s| {
                s.hypervisor_down
                    .is_some_and(|d| d.error.contains("view-h"))
                    && s.vms.is_empty()
            })
    });
    assert!(
        ok && c.running(down),
        "{name} did not come up with its hypervisor down:\n{}",
        c.tail(down, 20)
    );
    std::os::unix::fs::symlink(&root, view(down)).unwrap();
    let up_again = unix_ms();
    let mut recovered = false;
    let ok = c.wait(Duration::from_secs(90), |c| {
        for (h, e) in absorb(c, &mut cursor, &mut decisions) {
            if h == down && e["message"] == "hypervisor answering again" {
                recovered = true;
            }
        }
        recovered
            && c.status(down)
                .is_some_and(|s| s.hypervisor_down.is_none() && !s.vms.is_empty())
            && decisions
                .iter()
                .any(|d| d.host == down && d.start >= up_again && d.outcome != "hypervisor_down")
    });
    assert!(
        ok,
        "{name} did not pick its VMs up after starting with its hypervisor down:\n{}",
        c.tail(down, 20)
    );
    assert_eq!(warned_at_start, 1, "one warning for the outage at start");
    assert!(
        migrations_while_down.is_empty(),
        "{name} started migrations while its hypervisor was down: {migrations_while_down:?}"
    );

    let f = c.shared();
    f.check().unwrap();
    assert_eq!(f.placement().len(), vms);
}

/// A real in-memory host whose migration call blocks until the test lets it go on, as a
/// libvirt call blocked on a dead migration stream does; meanwhile it reports the job, as
/// libvirt does for a domain with an active migration job.
struct HangingMigration {
    inner: Arc<dyn Hypervisor>,
    /// The VM whose call is blocked, and whether the test has let it go.
    gate: Mutex<(Option<VmId>, bool)>,
    released: Condvar,
    calls: Mutex<u32>,
}

impl HangingMigration {
    fn release(&self) {
        self.gate.lock().unwrap().1 = true;
        self.released.notify_all();
    }
}

/// Lets a blocked call go on when the test ends, failed or not: the runtime's blocking thread
/// ends and the test process does not hang.
struct ReleaseOnDrop(Arc<HangingMigration>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Hypervisor for HangingMigration {
    fn vms(&self) -> scored::hypervisor::Result<Vec<Vm>> {
        self.inner.vms()
    }

    fn capacity(&self) -> scored::hypervisor::Result<Capacity> {
        self.inner.capacity()
    }

    fn migrate(
        &self,
        vm: VmId,
        dest: &Destination,
        params: &MigrationParams,
    ) -> scored::hypervisor::Result<MigrationReport> {
        *self.calls.lock().unwrap() += 1;
        let mut g = self.gate.lock().unwrap();
        g.0 = Some(vm);
        while !g.1 {
            g = self.released.wait(g).unwrap();
        }
        drop(g);
        let r = self.inner.migrate(vm, dest, params);
        self.gate.lock().unwrap().0 = None;
        r
    }

    fn state(&self, vm: VmId) -> scored::hypervisor::Result<VmState> {
        if self.gate.lock().unwrap().0 == Some(vm) {
            return Ok(VmState::Migrating);
        }
        self.inner.state(vm)
    }
}

#[test]
fn a_migration_call_that_never_returns_holds_the_token_only_for_a_bounded_time() {
    let topo = Arc::new(topology());
    let (a, b) = (VmId(0x0a00_0001), VmId(0x0a00_0002));
    let (h1, h2) = (HostId(0), HostId(1));
    let sim = MemoryCluster::new(&topo);
    // 512 MiB in half a second once the job is let go: well inside timeout_s.
    sim.set_model(whole_vm_at(1024));
    sim.add_vm(h1, synthetic_vm(a, 512)).unwrap();
    sim.add_vm(h2, synthetic_vm(b, 512)).unwrap();
    let hanging = Arc::new(HangingMigration {
        inner: Arc::new(sim.host(h1)),
        gate: Mutex::new((None, false)),
        released: Condvar::new(),
        calls: Mutex::new(0),
    });
    let dir = tempfile::tempdir().unwrap();
    let rt = inprocess::runtime();
    // Dropped before the runtime.
    let _release = ReleaseOnDrop(hanging.clone());
    let net = DirectNetwork::new(topo.clone());
    let mut config = Config::default();
    config.token.handoff_timeout_ms = 400;
    config.token.min_round_s = 0;
    config.decision.cooldown_base_s = 0;
    config.decision.migration_cost_fraction = 0.0;
    // The call is given up on after timeout_s + call_timeout_s = 3 s.
    config.migration.timeout_s = 2;
    config.migration.stall_timeout_s = 1;
    config.hypervisor.call_timeout_s = 1;
    let mut nodes: Vec<Arc<Daemon<DirectPeers>>> = Vec::new();
    for h in [h1, h2] {
        let (peers, inbound) = net.join(h, Arc::new(Directory::new(topo.clone(), h)));
        let (hv, demands): (Arc<dyn Hypervisor>, _) = if h == h1 {
            let d = Demand {
                vm: a,
                partner: b,
                bytes_per_sec: 1e6,
            };
            (hanging.clone(), vec![d])
        } else {
            (Arc::new(sim.host(h)), Vec::new())
        };
        let mut config = config.clone();
        if h != h1 {
            config.token.regeneration_timeout_ms = Some(24 * 3600 * 1000);
        }
        let node = inprocess::node(&topo, h, peers, hv, demands, config, dir.path());
        rt.block_on(node.refresh_inventory()).unwrap();
        node.traffic().tick(Instant::now());
        rt.spawn(drive(node.clone(), inbound, std::future::pending()));
        nodes.push(node);
    }
    let outcome_of = |n: &Daemon<DirectPeers>, outcome: &str| {
        n.recent_decisions()
            .iter()
            .any(|r| r.vm == a.to_string() && r.outcome == outcome)
    };

    // h1 mints the token, decides to move a to its partner's host, and the call hangs.
    wait_until("the migration call", Duration::from_secs(30), || {
        *hanging.calls.lock().unwrap() == 1
    });
    wait_until(
        "h1 gives up waiting for the call",
        Duration::from_secs(30),
        || outcome_of(&nodes[0], "hypervisor_down"),
    );
    // The turn (which began before the call) lasted at least the bound: the call was waited for.
    let turn = nodes[0]
        .recent_decisions()
        .iter()
        .find(|r| r.vm == a.to_string() && r.outcome == "hypervisor_down")
        .map(|r| r.unix_ms.saturating_sub(r.started_unix_ms))
        .unwrap();
    assert!(
        turn >= 3000,
        "gave up after {turn} ms, before timeout_s + call_timeout_s"
    );
    assert!(nodes[0].is_unsettled(a), "a must be unsettled");
    assert!(nodes[0].journal_is_open(a), "the journal entry stays open");
    // The token goes on: h2 holds it afterwards, and h1's next turns for a neither decide nor
    // start a second job.
    let seq = nodes[0].holding().map_or(0, |s| s.seq);
    wait_until("the token moves on", Duration::from_secs(30), || {
        [&nodes[0], &nodes[1]]
            .iter()
            .any(|n| n.holding().is_some_and(|s| s.seq > seq + 2))
    });
    wait_until("a busy turn for a", Duration::from_secs(30), || {
        outcome_of(&nodes[0], "busy")
    });
    assert_eq!(*hanging.calls.lock().unwrap(), 1, "one job, never a second");
    assert_eq!(sim.host_of(a), Some(h1));

    // The hypervisor finishes the job: h1 settles it as completed, h2 has a.
    hanging.release();
    wait_until("a settles at h2", Duration::from_secs(30), || {
        !nodes[0].is_unsettled(a) && !nodes[0].journal_is_open(a)
    });
    assert_eq!(sim.host_of(a), Some(h2));
    wait_until("h2 lists a", Duration::from_secs(30), || {
        nodes[1].inventory().iter().any(|v| v.id == a)
    });
    assert_eq!(nodes[0].metrics().hypervisor_up.get(), 1, "answering again");
    sim.check().unwrap();
}
