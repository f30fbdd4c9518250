#![allow(clippy::unwrap_used)]
//! squeue/scancel habits through the real CLI and daemon: status filters and formats, and
//! cancel of several ids or of what a filter selects.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use common::root_or_skip;
use daemon::{TestDaemon, text};

#[test]
fn status_filters_and_cancel_take_several_jobs() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("verbs", "");
    let done = d.submit(&["-J", "quick", "--", "true"]);
    assert_eq!(d.wait_code(done), 0);
    let sleepers: Vec<u64> = (0..4)
        .map(|_| d.submit(&["-J", "nap", "--", "sleep", "600"]))
        .collect();
    d.wait_state(sleepers[0], "running");

    let out = d.cli(&[
        "status",
        "--name",
        "nap",
        "--format=id,state",
        "--noheader",
        "--parsable",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows = text(&out.stdout);
    assert_eq!(rows.lines().count(), 4, "{rows}");
    assert!(
        rows.lines()
            .all(|l| l.ends_with("|running") || l.ends_with("|pending")),
        "{rows}"
    );
    let out = d.cli(&[
        "status",
        "--state",
        "succeeded",
        "--format",
        "id,name,elapsed",
    ]);
    let t = text(&out.stdout);
    assert!(t.starts_with("ID") && t.contains("ELAPSED"), "{t}");
    assert!(
        t.contains(&format!("{done}")) && t.contains("quick") && t.contains("00:00:0"),
        "{t}"
    );
    assert_eq!(t.lines().count(), 2, "{t}");

    // Two ids at once, then the rest by filter.
    let (a, b) = (sleepers[0].to_string(), sleepers[1].to_string());
    let out = d.cli(&["cancel", &a, &b]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    d.wait_state(sleepers[0], "cancelled");
    d.wait_state(sleepers[1], "cancelled");
    assert_ne!(d.status(sleepers[2])["state"], "cancelled");
    let out = d.cli(&["cancel", "--name", "nap", "--state", "active"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for id in &sleepers[2..] {
        d.wait_state(*id, "cancelled");
    }
    assert_eq!(d.status(done)["state"], "succeeded");
    // Nothing named: a clear refusal, not a silent no-op.
    let out = d.cli(&["cancel"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("job id"),
        "{}",
        text(&out.stderr)
    );
}
