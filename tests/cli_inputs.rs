#![allow(clippy::unwrap_used)]
//! Inputs that cannot silently mean something else, through the real CLI and daemon: memory
//! sizes need a unit, and the "can never fit" rule follows `service.enabled`.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use common::root_or_skip;
use daemon::{TestDaemon, text};

/// An optional service that is not there (a process name nothing has).
const ABSENT_SERVICE: &str =
    "[service]\nenabled = \"auto\"\nprocess_name = \"lowsched-none\"\naddress = \"127.0.0.1:1\"\n";

#[test]
fn a_job_as_wide_as_the_node_runs_while_an_optional_service_is_absent() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("fitauto", ABSENT_SERVICE);
    // The case: refused before with "batch jobs can get at most 1".
    let id = d.submit(&["--cpus", "2", "--", "true"]);
    assert_eq!(d.wait_code(id), 0, "{}", d.status(id));
    let out = d.cli(&["submit", "--cpus", "3", "--", "true"]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("at least 3 cores") && e.contains("at most 2"),
        "{e}"
    );
}

#[test]
fn a_required_service_keeps_its_cores_out_of_the_fit_rule() {
    if root_or_skip() {
        return;
    }
    let cfg = ABSENT_SERVICE.replace("\"auto\"", "\"yes\"");
    let d = TestDaemon::start("fityes", &cfg);
    let out = d.cli(&["submit", "--cpus", "2", "--", "true"]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("at most 1") && e.contains("always keeps 1"),
        "{e}"
    );
    assert!(d.all().is_empty(), "nothing may be submitted");
}

#[test]
fn a_memory_size_without_a_unit_submits_nothing() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("memunit", "");
    let out = d.cli(&["submit", "--memory", "8", "GB", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("--memory") && e.contains("'8'") && e.contains("8M?"),
        "{e}"
    );
    assert!(d.all().is_empty(), "nothing may be submitted");
    let id = d.submit(&["--memory", "64M", "--", "true"]);
    assert_eq!(d.wait_code(id), 0);
}
