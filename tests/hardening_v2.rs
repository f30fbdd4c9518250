#![allow(clippy::unwrap_used)]
//! Issue 15 on pure cgroup v2 (QEMU guest A, stage 45-vm-daemon): a fork bomb in a job stops at
//! the job's `pids.max` while the daemon keeps serving, and a cancel ends it. On the hybrid
//! host (no pids controller in the unified tree) the test says so and checks nothing.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::root_or_skip;
use daemon::TestDaemon;
use lowsched::node::cgroup::Layout;

fn pure_v2(test: &str) -> bool {
    if matches!(
        Layout::detect(Path::new("/proc")),
        Ok(Layout::Unified { .. })
    ) {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "{test}: not pure cgroup v2 here, nothing checked; this runs in QEMU guest A in \
         .ci/stages/45-vm-daemon.sh"
    );
    false
}

/// `max N` of a `pids.events` file.
fn refused_forks(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_fork_bomb_stops_at_the_jobs_pids_max() {
    if root_or_skip() || !pure_v2("a_fork_bomb_stops_at_the_jobs_pids_max") {
        return;
    }
    let d = TestDaemon::start("hard-pids", "[jobs]\npids_max = 64\n");
    let id = d.submit(&[
        "--name",
        "bomb",
        "--",
        "sh",
        "-c",
        "f() { f | f & }; f; sleep 600",
    ]);
    d.wait_state(id, "running");
    let group = daemon::job_cpuset_group(&d.cgroup_root, id);
    let read = |name: &str| std::fs::read_to_string(group.join(name)).unwrap();
    assert_eq!(read("pids.max").trim(), "64");
    let deadline = Instant::now() + Duration::from_secs(120);
    while refused_forks(&read("pids.events")) == 0 {
        assert!(Instant::now() < deadline, "the bomb never hit pids.max");
        std::thread::sleep(Duration::from_millis(100));
    }
    let current: u64 = read("pids.current").trim().parse().unwrap();
    assert!(current <= 64, "pids.current {current}");
    // The daemon is unaffected, and a cancel ends the whole bomb.
    assert_eq!(d.status(id)["state"], "running");
    let out = d.cli(&["cancel", &id.to_string()]);
    assert!(out.status.success(), "{}", daemon::text(&out.stderr));
    d.wait_state(id, "cancelled");
}
