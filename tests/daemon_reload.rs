//! SIGHUP on real `scored run` processes: what the operator switched at run time (`scored drain`,
//! `scored maintenance on`) survives a reload that leaves `placement.maintenance` as it was; a
//! reload that changes it in the file is the newer act and wins (docs/operations.md, "Reload").

mod support;

use scored::daemon::control::{Reply, Request, Status};
use std::time::Duration;
use support::cluster::{Cluster, Options};

/// The host's status once its control socket answers.
fn status(c: &mut Cluster, i: usize) -> Status {
    let mut got = None;
    assert!(
        c.wait(Duration::from_secs(60), |c| {
            got = c.status(i);
            got.is_some()
        }),
        "{} never answered on its control socket:\n{}",
        c.hosts[i].name,
        c.tail(i, 20)
    );
    got.unwrap()
}

fn ask(c: &Cluster, i: usize, req: Request) {
    match c.request(i, req) {
        Ok(Reply::Done { .. }) => {}
        other => panic!("{}: {other:?}", c.hosts[i].name),
    }
}

fn reloads(c: &Cluster, i: usize) -> usize {
    c.events()
        .iter()
        .filter(|(h, e)| *h == i && e["message"] == "configuration reloaded")
        .count()
}

/// Sends SIGHUP to host `i` and waits until it logged the reload.
fn sighup(c: &mut Cluster, i: usize) {
    let before = reloads(c, i);
    let pid = c.hosts[i].child.as_ref().expect("running").id();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    assert!(
        c.wait(Duration::from_secs(30), |c| reloads(c, i) > before),
        "{} did not reload:\n{}",
        c.hosts[i].name,
        c.tail(i, 20)
    );
}

/// Rewrites host `i`'s `placement.maintenance` in its configuration file.
fn set_file_maintenance(c: &Cluster, i: usize, on: bool) {
    let path = &c.hosts[i].config;
    let text = std::fs::read_to_string(path).unwrap();
    let new = text
        .replace("maintenance = true", "maintenance = false")
        .replace("maintenance = false", &format!("maintenance = {on}"));
    assert!(text.contains("maintenance ="), "{text}");
    std::fs::write(path, new).unwrap();
}

#[test]
fn sighup_keeps_what_the_operator_switched_and_a_changed_file_wins() {
    let mut c = Cluster::new(Options {
        // The test topology needs two pods (five hosts) for its three levels.
        hosts: 5,
        vms: 4,
        host_overrides: vec![
            (0, "placement.maintenance".into(), "false".into()),
            (1, "placement.maintenance".into(), "false".into()),
        ],
        ..Options::default()
    });
    c.start_all();
    let s = status(&mut c, 0);
    assert!(!s.maintenance && !s.draining);

    // `scored drain` on h1, `scored maintenance on` on h2; then each reloads an unchanged file.
    ask(&c, 0, Request::Drain);
    ask(&c, 1, Request::Maintenance { on: true });
    sighup(&mut c, 0);
    sighup(&mut c, 1);
    let s = status(&mut c, 0);
    assert!(
        s.maintenance && s.draining,
        "h1 after SIGHUP: maintenance {} draining {} (the drain must go on)",
        s.maintenance,
        s.draining
    );
    let s = status(&mut c, 1);
    assert!(
        s.maintenance,
        "h2 after SIGHUP: maintenance off though `scored maintenance on` was the last word"
    );

    // The file itself turns maintenance on, then off: the newer act wins; off ends the drain.
    set_file_maintenance(&c, 0, true);
    sighup(&mut c, 0);
    let s = status(&mut c, 0);
    assert!(s.maintenance && s.draining, "file on: {s:?}");
    set_file_maintenance(&c, 0, false);
    sighup(&mut c, 0);
    let s = status(&mut c, 0);
    assert!(
        !s.maintenance && !s.draining,
        "file changed to off: maintenance {} draining {}",
        s.maintenance,
        s.draining
    );

    // And the operator's next word lasts through reloads again.
    ask(&c, 0, Request::Maintenance { on: true });
    sighup(&mut c, 0);
    assert!(status(&mut c, 0).maintenance);
    // Off at run time, with the file saying on: a reload of that same file leaves it off.
    set_file_maintenance(&c, 1, true);
    sighup(&mut c, 1);
    assert!(status(&mut c, 1).maintenance);
    ask(&c, 1, Request::Maintenance { on: false });
    sighup(&mut c, 1);
    assert!(
        !status(&mut c, 1).maintenance,
        "`scored maintenance off` undone by a reload of a file that did not change"
    );
}
