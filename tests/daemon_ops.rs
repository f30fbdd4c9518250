#![allow(clippy::unwrap_used)]
//! An operator's daemon, end to end with a real daemon: SIGHUP reloads the live part of the
//! config (a submit limit and a controller threshold change, a restart-only key is reported),
//! reopens the event logs after logrotate's rename, and `lowsched wait` keeps waiting across a
//! daemon restart and returns the job's real exit code.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::root_or_skip;
use daemon::{BIN, CLI_LIMIT, LONG, NOBODY, NOGROUP, TestDaemon, text};
use nix::sys::signal::{Signal, kill};

/// Waits until the daemon's log contains `what`, which must appear after `from` bytes.
fn wait_log(d: &TestDaemon, from: usize, what: &str) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        let log = d.log_text();
        if log.get(from..).is_some_and(|t| t.contains(what)) {
            return log[from..].to_string();
        }
        assert!(Instant::now() < deadline, "no {what:?} in the log");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hangup(d: &TestDaemon) -> usize {
    let from = d.log_text().len();
    kill(d.pid(), Signal::SIGHUP).unwrap();
    from
}

#[test]
fn sighup_applies_live_keys_reports_restart_keys_and_keeps_the_rest() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start(
        "ops-reload",
        "[policy]\nmax_user_priority = 100\n[controller]\ngrow_util = 0.85\n",
    );
    d.open_socket_to_all();
    let as_nobody = |prio: &str| {
        d.cli_as(
            NOBODY,
            NOGROUP,
            &["submit", "--priority", prio, "--", "true"],
        )
    };
    let out = as_nobody("50");
    assert!(out.status.success(), "{}", text(&out.stderr));

    let cfg = std::fs::read_to_string(&d.config).unwrap();
    let cfg = cfg
        .replace("max_user_priority = 100", "max_user_priority = 10")
        .replace("grow_util = 0.85", "grow_util = 0.5")
        .replace("[policy]", "[sampler]\nperiod_ms = 70\n[policy]");
    std::fs::write(&d.config, cfg).unwrap();
    let from = hangup(&d);
    let log = wait_log(&d, from, "needs a restart");
    assert!(
        log.contains("applied policy.max_user_priority 100 -> 10"),
        "{log}"
    );
    assert!(
        log.contains("applied controller.grow_util 0.85 -> 0.5"),
        "{log}"
    );
    assert!(log.contains("sampler.period_ms 50 -> 70"), "{log}");
    // The new cap holds at once, with a message naming it.
    let out = as_nobody("50");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("priority 50 is above 10") && err.contains("policy.max_user_priority"),
        "{err}"
    );
    assert!(as_nobody("10").status.success());

    // A config that does not load changes nothing and says so.
    std::fs::write(&d.config, "polcy = 1\n").unwrap();
    let from = hangup(&d);
    let log = wait_log(&d, from, "config not reloaded");
    assert!(log.contains("polcy"), "{log}");
    assert!(!as_nobody("50").status.success(), "the cap of 10 stays");
}

#[test]
fn sighup_reopens_the_event_logs_after_a_rename() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("ops-reopen", "");
    let (log, jsonl) = (d.state.join("events.log"), d.state.join("events.jsonl"));
    let (old, old_json) = (d.state.join("events.log.1"), d.state.join("events.jsonl.1"));
    std::fs::rename(&log, &old).unwrap();
    std::fs::rename(&jsonl, &old_json).unwrap();
    let from = hangup(&d);
    wait_log(&d, from, "event logs reopened");
    let id = d.submit(&["--name", "after-rotate", "--", "true"]);
    d.wait_state(id, "succeeded");
    let new = d.events_log();
    assert!(new.contains("after-rotate"), "{new}");
    let rotated = std::fs::read_to_string(&old).unwrap();
    assert!(!rotated.contains("after-rotate"), "{rotated}");
    assert!(
        std::fs::read_to_string(&jsonl)
            .unwrap()
            .contains("after-rotate")
    );
}

#[test]
fn wait_returns_the_real_exit_code_across_a_daemon_restart() {
    if root_or_skip() {
        return;
    }
    let mut d = TestDaemon::start("ops-wait", "");
    let go = d.dir.path().join("go");
    let body = format!(
        "while [ ! -e {} ]; do sleep 0.02; done; exit 7",
        go.display()
    );
    let id = d.submit(&["--", "sh", "-c", &body]);
    d.wait_state(id, "running");
    let mut waiter = Command::new(BIN)
        .arg("--socket")
        .arg(&d.socket)
        .args(["wait", &id.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let the waiter connect and wait, then restart the daemon under it.
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.stop().success());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "wait gave up while the daemon was down"
    );
    d.start_again();
    d.wait_state(id, "running");
    std::fs::write(&go, "").unwrap();
    let deadline = Instant::now() + CLI_LIMIT;
    let status = loop {
        if let Some(s) = waiter.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = waiter.kill();
            let _ = waiter.wait();
            panic!("wait did not return after the job ended");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(7), "{}", text(&out.stderr));
}
