#![allow(clippy::unwrap_used)]
//! Dependencies through the real CLI and daemon: `--after`, `--afterok`, `--afternotok` and
//! Slurm's `--dependency`; a chain with a failed parent; a job that waits shows why; one whose
//! dependency can never be met ends with a reason; an unknown id is refused; and the wait
//! survives a daemon restart.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use common::root_or_skip;
use daemon::{TestDaemon, text};

/// `lowsched wait`'s code for an unschedulable job.
const UNSCHEDULABLE: i32 = 124;

#[test]
fn a_chain_with_a_failed_parent() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("depchain", "");
    let a = d.submit(&["-J", "a", "--", "true"]);
    let a_s = a.to_string();
    let b = d.submit(&["--afterok", &a_s, "--", "sh", "-c", "exit 3"]);
    let b_s = b.to_string();
    let c = d.submit(&["--afterok", &b_s, "--", "true"]);
    let on_failure = d.submit(&["--afternotok", &b_s, "--", "true"]);
    let both = format!("{a},{on_failure}");
    let last = d.submit(&[
        "--after",
        &both,
        "-d",
        &format!("afterany:{b}"),
        "--",
        "true",
    ]);

    assert_eq!(d.wait_code(b), 3);
    assert_eq!(d.wait_code(c), UNSCHEDULABLE);
    let s = d.status(c);
    assert_eq!(s["state"], "unschedulable", "{s:#}");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("DependencyNeverSatisfied: afterok:") && reason.contains("failed"),
        "{reason}"
    );
    assert!(
        s["started_ms"].is_null(),
        "a job whose dependency failed never starts: {s:#}"
    );
    assert_eq!(d.wait_code(on_failure), 0);
    assert_eq!(d.wait_code(last), 0);
    // Order: a child never started before its parent ended.
    let ended_b = d.status(b)["ended_ms"].as_u64().unwrap();
    let started = d.status(on_failure)["started_ms"].as_u64().unwrap();
    assert!(started >= ended_b, "{started} < {ended_b}");
}

#[test]
fn a_waiting_job_says_why_and_an_unknown_id_is_refused() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("depwait", "");
    let parent = d.submit(&["--", "sleep", "600"]);
    let p = parent.to_string();
    let child = d.submit(&["--afterok", &p, "--", "true"]);
    d.wait_state(parent, "running");
    let s = d.status(child);
    assert_eq!(s["state"], "pending", "{s:#}");
    assert!(
        s["reason"].as_str().unwrap().starts_with("Dependency"),
        "{s:#}"
    );
    let out = d.cli(&["status", &child.to_string()]);
    assert!(
        text(&out.stdout).contains(&format!("depends:   afterok:{parent}")),
        "{}",
        text(&out.stdout)
    );

    let out = d.cli(&["submit", "--afterok", "987654", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("987654") && err.contains("afterok"), "{err}");
    let out = d.cli(&["submit", "--afterok", "x1", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--afterok"),
        "{}",
        text(&out.stderr)
    );

    // Cancelling the parent: afterok can never be met.
    let out = d.cli(&["cancel", &p]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(d.wait_code(child), UNSCHEDULABLE);
}

#[test]
fn dependencies_survive_a_daemon_restart() {
    if root_or_skip() {
        return;
    }
    let mut d = TestDaemon::start("deprestart", "");
    let parent = d.submit(&["--", "sleep", "600"]);
    let p = parent.to_string();
    let child = d.submit(&["--afterok", &p, "--", "true"]);
    let other = d.submit(&["--afternotok", &p, "--", "true"]);
    d.wait_state(parent, "running");
    d.kill9();
    d.start_again();
    d.wait_state(parent, "running");
    for id in [child, other] {
        let s = d.status(id);
        assert_eq!(s["state"], "pending", "{s:#}");
        assert!(
            s["reason"].as_str().unwrap().starts_with("Dependency"),
            "{s:#}"
        );
    }
    let out = d.cli(&["cancel", &p]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(d.wait_code(child), UNSCHEDULABLE);
    assert_eq!(d.wait_code(other), 0);
}
