#![allow(clippy::unwrap_used)]
//! The daemon end to end, as root, through the `lowsched` CLI: submit, status, wait (exit
//! codes and signals), pause and resume of real processes, cancel, unschedulable jobs, job-list
//! files, 100 jobs run exactly once, `events`, one-line errors, and batch jobs at SCHED_IDLE.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::root_or_skip;
use daemon::{LONG, TestDaemon, job_cpuset_group, lines, submitted_id, text, wait_file};

/// A job that blocks until `release` exists, holding one core.
fn blocker(d: &TestDaemon, release: &Path) -> u64 {
    let cmd = format!("while [ ! -e {} ]; do sleep 0.02; done", release.display());
    d.submit(&["--name", "blocker", "--", "sh", "-c", &cmd])
}

/// Two blockers that fill the test daemon's two cores, running.
fn fill_both_cores(d: &TestDaemon, release: &Path) -> (u64, u64) {
    let b1 = blocker(d, release);
    let b2 = blocker(d, release);
    d.wait_state(b1, "running");
    d.wait_state(b2, "running");
    (b1, b2)
}

/// A job that appends a line to `counter` every 20 ms, forever.
fn ticker(d: &TestDaemon, counter: &Path) -> u64 {
    let cmd = format!(
        "while :; do echo tick >> {}; sleep 0.02; done",
        counter.display()
    );
    d.submit(&["--name", "ticker", "--", "sh", "-c", &cmd])
}

/// Waits until `counter` has more than `n` lines; returns the count.
fn ticks_beyond(counter: &Path, n: usize) -> usize {
    let deadline = Instant::now() + LONG;
    loop {
        let c = lines(counter).len();
        if c > n {
            return c;
        }
        assert!(Instant::now() < deadline, "counter stuck at {c}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn pids(status: &serde_json::Value) -> Vec<u64> {
    status["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect()
}

#[test]
fn submit_status_and_wait_report_exit_codes_signals_and_output() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("e2e-exit", "");

    // Exit code, default output files in the state dir, the status JSON's fields.
    let id = d.submit(&[
        "--",
        "sh",
        "-c",
        "echo out-$LOWSCHED_JOB_ID; echo err >&2; exit 3",
    ]);
    assert_eq!(d.wait_code(id), 3);
    let s = d.status(id);
    for key in [
        "id",
        "name",
        "state",
        "user",
        "cores",
        "pids",
        "exit_code",
        "reason",
    ] {
        assert!(s.get(key).is_some(), "status lacks {key}: {s:#}");
    }
    assert_eq!(s["id"], id);
    assert_eq!(s["name"], "sh");
    assert_eq!(s["state"], "failed");
    assert_eq!(s["user"], "root");
    assert_eq!(s["exit_code"], 3);
    assert!(s["reason"].as_str().unwrap().contains('3'), "{s:#}");
    assert_eq!(s["cores"], serde_json::json!([]));
    let job_dir = d.state.join(format!("jobs/{id}"));
    assert_eq!(
        std::fs::read_to_string(job_dir.join("stdout")).unwrap(),
        format!("out-{id}\n")
    );
    assert_eq!(
        std::fs::read_to_string(job_dir.join("stderr")).unwrap(),
        "err\n"
    );

    // A relative --stdout is the client's directory's (the CLI runs in the test dir).
    let id = d.submit(&["--stdout", "hello.out", "--", "echo", "hello"]);
    assert_eq!(d.wait_code(id), 0);
    assert_eq!(d.status(id)["state"], "succeeded");
    assert_eq!(d.status(id)["exit_code"], 0);
    assert_eq!(
        std::fs::read_to_string(d.dir.path().join("hello.out")).unwrap(),
        "hello\n"
    );

    // Killed by a signal: 128 + N.
    let id = d.submit(&["--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(d.wait_code(id), 128 + 15);
    let s = d.status(id);
    assert_eq!(
        (s["state"].as_str(), s["signal"].as_u64()),
        (Some("failed"), Some(15))
    );
    let id = d.submit(&["--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(d.wait_code(id), 128 + 9);

    // A program that cannot start: failed without an exit status, 126.
    let id = d.submit(&["--", "/nonexistent/program"]);
    assert_eq!(d.wait_code(id), 126);
    let s = d.status(id);
    assert_eq!(s["state"], "failed");
    assert!(s["exit_code"].is_null(), "{s:#}");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/program"),
        "{s:#}"
    );

    // `status` without an id lists them all; the table has a header and one line per job.
    assert_eq!(d.all().len(), 5);
    let table = d.cli(&["status"]);
    assert!(table.status.success());
    assert_eq!(
        text(&table.stdout).lines().count(),
        6,
        "{}",
        text(&table.stdout)
    );
}

#[test]
fn pause_freezes_and_resume_thaws_a_real_process() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("e2e-pause", "");
    let counter = d.dir.path().join("ticks");
    let id = ticker(&d, &counter);
    d.wait_state(id, "running");
    ticks_beyond(&counter, 5);
    let before = d.wait_for(id, "running with pids", |s| !pids(s).is_empty());

    let out = d.cli(&["pause", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let s = d.status(id);
    assert_eq!(
        (s["state"].as_str(), s["held"].as_bool()),
        (Some("paused"), Some(true))
    );
    assert_eq!(s["cores"], serde_json::json!([]));
    // Frozen: the kernel confirmed it before `pause` returned, so the counter stands still,
    // yet the processes are still there.
    let frozen_at = lines(&counter).len();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(lines(&counter).len(), frozen_at, "ticks while paused");
    assert!(pids(&before).iter().any(|p| alive(*p)));
    // A policy pass (tick) does not resume a job its owner paused.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(d.status(id)["state"], "paused");

    let out = d.cli(&["resume", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = d.wait_state(id, "running");
    assert_eq!(s["held"], false);
    assert_eq!(s["cores"].as_array().unwrap().len(), 1);
    ticks_beyond(&counter, frozen_at);

    // Cancel a paused job: its processes go, `wait` says 125.
    assert!(d.cli(&["pause", &id.to_string()]).status.success());
    let s = d.wait_for(id, "paused with pids", |s| {
        s["state"] == "paused" && !pids(s).is_empty()
    });
    let out = d.cli(&["cancel", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(d.wait_code(id), 125);
    assert_eq!(d.status(id)["state"], "cancelled");
    let deadline = Instant::now() + LONG;
    while pids(&s).iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "cancelled job's processes live on"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Cancel a running job.
    let id = ticker(&d, &d.dir.path().join("ticks2"));
    d.wait_state(id, "running");
    assert!(d.cli(&["cancel", &id.to_string()]).status.success());
    assert_eq!(d.wait_code(id), 125);
}

/// The scheduling policy of `pid` (`policy`, field 41 of /proc/PID/stat): 0 SCHED_OTHER,
/// 5 SCHED_IDLE.
fn sched_policy(pid: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 1..];
    after_comm
        .split_whitespace()
        .nth(38)
        .unwrap()
        .parse()
        .unwrap()
}

/// The policy of every process of a running job that forks one child; waits for both.
fn job_policies(d: &TestDaemon) -> Vec<u64> {
    let id = d.submit(&["--", "sh", "-c", "sleep 1000 & wait"]);
    let s = d.wait_for(id, "running with its child", |s| pids(s).len() == 2);
    let policies = pids(&s).into_iter().map(sched_policy).collect();
    assert!(d.cli(&["cancel", &id.to_string()]).status.success());
    policies
}

#[test]
fn batch_jobs_and_their_children_run_at_sched_idle_unless_configured_off() {
    const SCHED_OTHER: u64 = 0;
    const SCHED_IDLE: u64 = 5;
    if root_or_skip() {
        return;
    }
    // The default: `batch.idle_priority = true`.
    let d = TestDaemon::start("e2e-idle", "");
    assert_eq!(job_policies(&d), [SCHED_IDLE, SCHED_IDLE]);
    drop(d);
    let d = TestDaemon::start("e2e-noidle", "[batch]\nidle_priority = false\n");
    assert_eq!(job_policies(&d), [SCHED_OTHER, SCHED_OTHER]);
}

#[test]
fn queued_jobs_cancel_without_running_and_time_out_as_unschedulable() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("e2e-queue", "");
    let release = d.dir.path().join("release");
    // The test daemon manages two cores and has no protected service: two blockers fill it.
    let (b1, b2) = fill_both_cores(&d, &release);

    let marker = d.dir.path().join("ran");
    let cmd = format!("touch {}", marker.display());
    let queued = d.submit(&["--", "sh", "-c", &cmd]);
    assert_eq!(d.status(queued)["state"], "pending");
    // Pausing a job that has not started is a conflict, said in one line.
    let out = d.cli(&["pause", &queued.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("pending"), "{err}");
    let out = d.cli(&["cancel", &queued.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(d.wait_code(queued), 125);

    // Not started within its --timeout: unschedulable, 124.
    let late = d.submit(&["--timeout", "0.3", "--", "true"]);
    assert_eq!(d.wait_code(late), 124);
    assert_eq!(d.status(late)["state"], "unschedulable");

    // A waiting job starts once a core frees up.
    let next = d.submit(&["--", "true"]);
    std::fs::write(&release, "").unwrap();
    assert_eq!(d.wait_code(b1), 0);
    assert_eq!(d.wait_code(b2), 0);
    assert_eq!(d.wait_code(next), 0);
    assert!(!marker.exists(), "the cancelled job ran");

    // Finished jobs cannot be changed.
    for verb in ["cancel", "pause", "resume"] {
        let out = d.cli(&[verb, &next.to_string()]);
        assert_eq!(out.status.code(), Some(1), "{verb}");
        assert!(
            text(&out.stderr).contains("succeeded"),
            "{verb}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn the_next_pending_jobs_groups_are_made_ahead_and_removed_on_cancel() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("e2e-prepare", "");
    let release = d.dir.path().join("release");
    let (b1, _) = fill_both_cores(&d, &release);
    let next = d.submit(&["--", "true"]);
    let group = job_cpuset_group(&d.cgroup_root, next);
    wait_file(&group); // made ahead while the job waits
    assert_eq!(d.status(next)["state"], "pending");
    let out = d.cli(&["cancel", &next.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!group.exists(), "{} left behind", group.display());
    // A prepared job that does start runs in its group as usual.
    let last = d.submit(&["--", "true"]);
    let group = job_cpuset_group(&d.cgroup_root, last);
    wait_file(&group);
    std::fs::write(&release, "").unwrap();
    assert_eq!(d.wait_code(last), 0);
    assert_eq!(d.wait_code(b1), 0);
}

#[test]
fn a_hundred_jobs_all_succeed_each_exactly_once() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("e2e-100", "");
    let marker = d.dir.path().join("ran");
    let cmd = format!("echo $LOWSCHED_JOB_ID >> {}", marker.display());
    let ids: Vec<u64> = (0..100)
        .map(|_| d.submit(&["--", "sh", "-c", &cmd]))
        .collect();
    for id in &ids {
        assert_eq!(d.wait_code(*id), 0, "job {id}");
    }
    let mut ran: Vec<u64> = lines(&marker).iter().map(|l| l.parse().unwrap()).collect();
    ran.sort_unstable();
    let mut want = ids.clone();
    want.sort_unstable();
    assert_eq!(ran, want, "every job exactly once");
    let all = d.all();
    assert_eq!(all.len(), 100);
    assert!(all.iter().all(|j| j["state"] == "succeeded"));
}

#[test]
fn submit_file_takes_the_seed_form() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("e2e-file", "");
    std::fs::create_dir(d.dir.path().join("out")).unwrap();
    let jobs = d.dir.path().join("jobs.json");
    std::fs::write(
        &jobs,
        r#"[
  {"name": "first", "command": "echo one; echo two >&2", "resources": {"cpu": 1, "memory": "64M"},
   "priority": 1, "output": "out/first.log"},
  {"job_id": 17, "command": ["sh", "-c", "echo $LOWSCHED_JOB_NAME"], "output": "out/17.log"},
  {"name": "native", "argv": ["sh", "-c", "pwd"], "stdout": "out/native.log", "cwd": "out"}
]"#,
    )
    .unwrap();
    let out = d.cli(&["submit", "--file", "jobs.json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ids: Vec<u64> = text(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{}", text(&out.stdout));
    for id in &ids {
        assert_eq!(d.wait_code(*id), 0);
    }
    assert_eq!(d.status(ids[0])["name"], "first");
    assert_eq!(d.status(ids[0])["priority"], 1);
    assert_eq!(d.status(ids[1])["name"], "17");
    let read = |f: &str| std::fs::read_to_string(d.dir.path().join("out").join(f)).unwrap();
    assert_eq!(read("first.log"), "one\ntwo\n");
    assert_eq!(read("17.log"), "17\n");
    assert_eq!(
        read("native.log").trim(),
        d.dir.path().join("out").display().to_string()
    );

    // A bad file: one line naming the job and the field, nothing submitted.
    std::fs::write(&jobs, r#"[{"command": "true", "resources": {"cpus": 2}}]"#).unwrap();
    let out = d.cli(&["submit", "--file", "jobs.json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("job 0") && err.contains("cpus"), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(d.all().len(), 3);
}

#[test]
fn errors_are_one_clear_line_and_a_nonzero_exit() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("e2e-errors", "");
    let one_line = |out: &std::process::Output, want: &str| {
        assert_eq!(out.status.code(), Some(1), "{want}");
        assert!(out.stdout.is_empty(), "{want}: {}", text(&out.stdout));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "want {want:?} in {err}");
    };
    let nowhere = d.dir.path().join("nowhere.sock");
    for args in [
        vec!["status"],
        vec!["submit", "--", "true"],
        vec!["wait", "1"],
    ] {
        let mut all = vec!["--socket", nowhere.to_str().unwrap()];
        all.extend(args);
        let out = std::process::Command::new(daemon::BIN)
            .args(&all)
            .output()
            .unwrap();
        one_line(&out, "cannot connect to the lowsched daemon");
    }
    one_line(&d.cli(&["status", "999999"]), "no job 999999");
    one_line(&d.cli(&["wait", "999999"]), "no job 999999");
    one_line(&d.cli(&["cancel", "999999"]), "no job 999999");
    one_line(&d.cli(&["submit"]), "no command");
    one_line(&d.cli(&["submit", "--cpus", "64", "--", "true"]), "64");
    one_line(
        &d.cli(&["submit", "--user", "no-such-user-x", "--", "true"]),
        "no-such-user-x",
    );
    // Nothing was accepted.
    assert!(d.all().is_empty());
    // A good submit prints only the id.
    let out = d.cli(&["submit", "--", "true"]);
    submitted_id(&out);
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn events_show_the_backlog_and_follow_new_ones() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("e2e-events", "");
    let first = d.submit(&["--name", "early", "--", "true"]);
    assert_eq!(d.wait_code(first), 0);

    let out = d.cli(&["events"]);
    assert!(out.status.success());
    let backlog = text(&out.stdout);
    let first_line = backlog.lines().next().unwrap();
    assert!(first_line.ends_with(" start scheduler"), "{backlog}");
    assert!(
        backlog.contains(" start early [") && backlog.contains(" end early"),
        "{backlog}"
    );

    let mut follow = std::process::Command::new(daemon::BIN)
        .arg("--socket")
        .arg(&d.socket)
        .args(["events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let later = d.submit(&["--name", "later", "--", "true"]);
    let deadline = Instant::now() + LONG;
    let mut seen = Vec::new();
    let ended = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            break false;
        };
        let e: serde_json::Value = serde_json::from_str(&line).unwrap();
        seen.push(line);
        if e["event"] == "end" && e["job"] == "later" {
            assert!(
                e["args"]
                    .as_array()
                    .unwrap()
                    .contains(&format!("id={later}").into())
            );
            assert_eq!(e["reason"], "succeeded");
            break true;
        }
    };
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        ended,
        "--follow never showed the end of job {later}: {seen:#?}"
    );
}

#[test]
fn sigterm_stops_cleanly_and_closes_the_event_log() {
    if root_or_skip() {
        return;
    }
    let mut d = TestDaemon::start("e2e-stop", "");
    let id = d.submit(&["--", "true"]);
    assert_eq!(d.wait_code(id), 0);
    assert!(d.stop().success());
    assert!(!d.socket.exists(), "socket left behind");
    let log = d.events_log();
    assert!(
        log.lines().next().unwrap().ends_with(" start scheduler"),
        "{log}"
    );
    assert!(
        log.lines().last().unwrap().ends_with(" end scheduler"),
        "{log}"
    );
    // The next daemon keeps the finished job.
    d.start_again();
    assert_eq!(d.status(id)["state"], "succeeded");
    wait_file(&d.state.join("journal"));
}
