#![allow(clippy::unwrap_used)]
//! `submit --time` through the real CLI and daemon: a job is killed at its run-time limit, ends
//! as timeout with `wait`'s own exit code, and time paused does not count.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::time::Duration;

use common::root_or_skip;
use daemon::{TestDaemon, text};

/// `lowsched wait`'s code for a job killed at its time limit.
const TIMEOUT_CODE: i32 = 123;

#[test]
fn a_job_is_killed_at_its_time_limit_and_waits_exit_123() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("tlimit", "");
    let id = d.submit(&["-t", "1", "--", "sleep", "600"]);
    let quick = d.submit(&["--time=00:30", "--", "true"]);
    assert_eq!(d.wait_code(id), TIMEOUT_CODE);
    let s = d.status(id);
    assert_eq!(s["state"], "timeout", "{s:#}");
    let reason = s["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("time limit of 1s"), "{s:#}");
    // A job that ends within its limit is not touched by it.
    assert_eq!(d.wait_code(quick), 0);
    assert_eq!(d.status(quick)["state"], "succeeded");
    // Status filters and the event log know the state.
    let out = d.cli(&["status", "--state", "timeout", "--format=id", "--noheader"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), id.to_string());
    let ends: Vec<String> = d
        .events_jsonl()
        .iter()
        .filter(|e| e["id"] == id)
        .map(|e| e.to_string())
        .filter(|e| e.contains("\"timeout: ran "))
        .collect();
    assert_eq!(ends.len(), 1, "{:#?}", d.events_jsonl());
    // A zero limit is refused at submit, naming the problem.
    let out = d.cli(&["submit", "--time", "0", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("time limit"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn time_paused_does_not_count_toward_the_limit() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("tpause", "");
    let id = d.submit(&["--time", "4", "--", "sleep", "600"]);
    d.wait_state(id, "running");
    let out = d.cli(&["pause", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    d.wait_state(id, "paused");
    // Paused for longer than its whole limit: still paused, not timed out.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(d.status(id)["state"], "paused");
    let out = d.cli(&["resume", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(d.wait_code(id), TIMEOUT_CODE);
    assert_eq!(d.status(id)["state"], "timeout");
}
