#![allow(clippy::unwrap_used)]
//! Durability end to end: `kill -9` of the daemon with jobs pending, running and paused (some
//! ending while it is down), a storm of submits cut off by `kill -9`, and a SIGTERM stop; after
//! each restart every accepted job is accounted for exactly once (marker files written by the
//! jobs themselves prove none ran twice) with the right final state, and the event logs keep
//! their formats.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::root_or_skip;
use daemon::{LONG, TestDaemon, lines, text};
use lowsched::api::client::Client;
use lowsched::api::protocol::{Reply, Request, Submit};
use lowsched::model::job::JobSpec;
use serde_json::Value;

fn alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The job's main process (its `sh`) among the pids `status` lists; the others come and go.
fn shell_pid(status: &Value) -> Option<u64> {
    pids(status).into_iter().find(|p| {
        std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sh")
    })
}

/// Running, with its `sh` listed (and exec'd) among its pids.
fn running_sh(s: &Value) -> bool {
    s["state"] == "running" && shell_pid(s).is_some()
}

fn pids(status: &Value) -> Vec<u64> {
    status["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect()
}

/// A job named `name` that logs `start ID` and `end ID` to `marker` around `body`.
fn job(d: &TestDaemon, name: &str, extra: &[&str], marker: &Path, body: &str) -> u64 {
    let m = marker.display();
    let cmd = format!(
        "echo start $LOWSCHED_JOB_ID >> {m}; {body}; r=$?; echo end $LOWSCHED_JOB_ID >> {m}; exit $r"
    );
    let mut args = vec!["--name", name];
    args.extend_from_slice(extra);
    args.extend(["--", "sh", "-c", &cmd]);
    d.submit(&args)
}

/// `while [ ! -e FILE ]; do ...; sleep; done`: runs until `file` exists.
fn until(file: &Path, each: &str) -> String {
    format!(
        "while [ ! -e {} ]; do {each} sleep 0.02; done",
        file.display()
    )
}

/// How often each job logged `start` and `end` in the marker file.
fn marks(marker: &Path) -> BTreeMap<(String, u64), usize> {
    let mut out = BTreeMap::new();
    for l in lines(marker) {
        let (what, id) = l.split_once(' ').unwrap();
        *out.entry((what.to_string(), id.parse().unwrap()))
            .or_insert(0) += 1;
    }
    out
}

fn ticks_settle(counter: &Path) -> usize {
    let n = lines(counter).len();
    std::thread::sleep(Duration::from_millis(500));
    n
}

/// Checks one `events.log` line against the course format:
/// `<ISO-8601 time> <event> <job> [args]`.
fn check_course_line(line: &str) -> Result<(), String> {
    let mut parts = line.splitn(4, ' ');
    let (time, event, job) = match (parts.next(), parts.next(), parts.next()) {
        (Some(t), Some(e), Some(j)) if !j.is_empty() => (t, e, j),
        _ => return Err("fewer than three fields".into()),
    };
    let args: Vec<&str> = parts
        .next()
        .map(|a| a.split(' ').collect())
        .unwrap_or_default();
    // 2026-01-02T03:04:05.123456+00:00
    let b = time.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    let shape = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (time.ends_with('Z') || time.ends_with("+00:00"));
    if !shape {
        return Err(format!("bad time {time:?}"));
    }
    let core_list = |a: &str| {
        a.strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .map(|inner| inner.is_empty() || inner.split(',').all(|c| c.parse::<usize>().is_ok()))
            .unwrap_or(false)
    };
    let ok = match (event, job == "scheduler") {
        ("start" | "end", true) => args.is_empty(),
        ("start", false) => {
            // `[0,1] 2`: the cores, then as many threads.
            args.len() == 2
                && core_list(args[0])
                && args[1].parse::<usize>().ok() == Some(args[0].split(',').count())
        }
        ("update_cores", _) => args.len() == 1 && core_list(args[0]),
        ("end" | "pause" | "unpause", false) => args.is_empty(),
        ("custom", _) => !args.is_empty(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("bad event {event:?} / args {args:?}"))
    }
}

fn check_event_logs(d: &TestDaemon) -> Vec<Value> {
    let log = d.events_log();
    for l in log.lines() {
        if let Err(e) = check_course_line(l) {
            panic!("events.log line {l:?}: {e}\n{log}");
        }
    }
    let jsonl = d.events_jsonl();
    assert_eq!(
        jsonl.len(),
        log.lines().count(),
        "events.log and events.jsonl differ"
    );
    let mut last_seq = 0;
    for (e, l) in jsonl.iter().zip(log.lines()) {
        assert!(l.contains(e["event"].as_str().unwrap()), "{e} / {l}");
        assert!(e["time"].is_string() && e["job"].is_string(), "{e}");
        if e["event"] == "end" && e["job"] != "scheduler" {
            assert!(e["reason"].is_string(), "end without a reason: {e}");
        }
        // Sequence numbers restart with each daemon run, and rise within one.
        let seq = e["seq"].as_u64().unwrap();
        assert!(seq > last_seq || seq == 1, "{e}");
        last_seq = seq;
    }
    jsonl
}

/// Job ids with exactly the given count of `event` lines in events.jsonl.
fn event_counts(events: &[Value], event: &str) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for e in events.iter().filter(|e| e["event"] == event) {
        if let Some(id) = e["id"].as_u64() {
            *out.entry(id).or_insert(0) += 1;
        }
    }
    out
}

#[test]
fn kill9_with_pending_running_and_paused_jobs_loses_nothing_and_repeats_nothing() {
    if root_or_skip() {
        return;
    }
    let mut d = TestDaemon::start("rec-kill9", "");
    let dir = d.dir.path().to_path_buf();
    let marker = dir.join("marks");
    let (rel_l, rel_p, rel_f) = (dir.join("rel-l"), dir.join("rel-p"), dir.join("rel-f"));
    let ticks = dir.join("ticks-p");

    // Done before the crash.
    let done = job(&d, "done", &[], &marker, "true");
    assert_eq!(d.wait_code(done), 0);
    // Paused by its owner (held), and two running jobs on the daemon's two cores.
    let paused = job(
        &d,
        "paused",
        &[],
        &marker,
        &until(&rel_p, &format!("echo t >> {};", ticks.display())),
    );
    let long = job(&d, "long", &[], &marker, &until(&rel_l, ""));
    d.wait_state(paused, "running");
    assert!(d.cli(&["pause", &paused.to_string()]).status.success());
    let ends_down = job(
        &d,
        "ends-down",
        &[],
        &marker,
        &format!("{}; (exit 7)", until(&rel_f, "")),
    );
    let long_s = d.wait_for(long, "running its sh", running_sh);
    let down_s = d.wait_for(ends_down, "running its sh", running_sh);
    let (queued, wide) = queue_behind(&d, &marker);
    let frozen_at = ticks_settle(&ticks);

    d.kill9();
    // While it is down: the socket refuses (one clear line), jobs keep running, and one ends.
    let out = d.cli(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr).lines().count(), 1);
    let long_sh = shell_pid(&long_s).unwrap();
    assert!(alive(long_sh));
    std::fs::write(&rel_f, "").unwrap();
    wait_until("ends-down never ended", || {
        !pids(&down_s).iter().any(|p| alive(*p))
    });
    assert_eq!(marks(&marker).get(&("end".into(), ends_down)), Some(&1));
    assert_eq!(
        lines(&ticks).len(),
        frozen_at,
        "the paused job ran while the daemon was down"
    );

    d.start_again();
    // The job that ended while the daemon was down: its exit code, recorded once.
    assert_failed_with(&d, ends_down, 7);
    // The running job was adopted: the same processes, still running.
    let s = d.status(long);
    assert_eq!(s["state"], "running");
    assert!(
        alive(long_sh) && pids(&s).contains(&long_sh),
        "{s:#} vs {long_s:#}"
    );
    assert_held_and_frozen(&d, paused, &ticks, frozen_at);
    // The finished job stays finished.
    assert_eq!(d.status(done)["state"], "succeeded");
    // The queue was rebuilt: the freed core runs the queued jobs.
    for id in &queued {
        assert_eq!(d.wait_code(*id), 0, "queued job {id}");
    }
    assert_eq!(d.status(wide)["state"], "pending");

    // Resume the held job: it thaws.
    assert!(d.cli(&["resume", &paused.to_string()]).status.success());
    wait_until("the resumed job does not run", || {
        lines(&ticks).len() > frozen_at
    });
    std::fs::write(&rel_p, "").unwrap();
    std::fs::write(&rel_l, "").unwrap();
    for id in [paused, long, wide] {
        assert_eq!(d.wait_code(id), 0, "job {id}");
    }

    // Every job exactly once: started once, ended once, by its own marks.
    let all: Vec<u64> = [done, paused, long, ends_down, wide]
        .into_iter()
        .chain(queued.iter().copied())
        .collect();
    assert_eq!(d.all().len(), all.len());
    assert_each_ran_once(&marker, &all);

    assert!(d.stop().success());
    assert_the_event_logs_show_two_runs(&d, &all, &[paused, long]);
}

/// Waits (up to [`LONG`]) until `done`; fails saying `never` otherwise.
fn wait_until(never: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !done() {
        assert!(Instant::now() < deadline, "{never}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Four one-core jobs and a two-core one, all pending while no core is free.
fn queue_behind(d: &TestDaemon, marker: &Path) -> (Vec<u64>, u64) {
    let queued: Vec<u64> = (0..4)
        .map(|i| job(d, &format!("queued{i}"), &[], marker, "true"))
        .collect();
    let wide = job(d, "wide", &["--cpus", "2"], marker, "true");
    for id in queued.iter().chain([&wide]) {
        assert_eq!(d.status(*id)["state"], "pending");
    }
    (queued, wide)
}

/// The job ended with exit `code`, and its status says so.
fn assert_failed_with(d: &TestDaemon, id: u64, code: i32) {
    assert_eq!(d.wait_code(id), code);
    let s = d.status(id);
    assert_eq!(
        (s["state"].as_str(), s["exit_code"].as_i64()),
        (Some("failed"), Some(i64::from(code)))
    );
}

/// The job its owner paused is still paused and held, and frozen (its ticks do not move).
fn assert_held_and_frozen(d: &TestDaemon, id: u64, ticks: &Path, frozen_at: usize) {
    let s = d.status(id);
    assert_eq!(
        (s["state"].as_str(), s["held"].as_bool()),
        (Some("paused"), Some(true))
    );
    assert_eq!(ticks_settle(ticks), frozen_at);
}

/// Every job started once and ended once, by its own marks.
fn assert_each_ran_once(marker: &Path, all: &[u64]) {
    let m = marks(marker);
    for id in all {
        assert_eq!(
            m.get(&("start".into(), *id)),
            Some(&1),
            "start of {id}: {m:?}"
        );
        assert_eq!(m.get(&("end".into(), *id)), Some(&1), "end of {id}: {m:?}");
    }
    assert_eq!(m.len(), 2 * all.len(), "{m:?}");
}

/// The event logs of the two runs (the first cut short by kill -9, so without `end
/// scheduler`): each job started once and ended once there too, and adoption is a custom event
/// naming exactly `adopted_ids`.
fn assert_the_event_logs_show_two_runs(d: &TestDaemon, all: &[u64], adopted_ids: &[u64]) {
    let events = check_event_logs(d);
    let log = d.events_log();
    assert!(log.lines().next().unwrap().ends_with(" start scheduler"));
    assert!(log.lines().last().unwrap().ends_with(" end scheduler"));
    // Two runs: the first cut short by kill -9 (no `end scheduler`), the second stopped.
    assert_eq!(
        log.lines()
            .filter(|l| l.ends_with(" start scheduler"))
            .count(),
        2
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.ends_with(" end scheduler"))
            .count(),
        1
    );
    // Each job started once and ended once in the event log too; adoption is a custom event.
    let starts = event_counts(&events, "start");
    let ends = event_counts(&events, "end");
    for id in all {
        assert_eq!(starts.get(id), Some(&1), "start events of {id}");
        assert_eq!(ends.get(id), Some(&1), "end events of {id}");
    }
    let adopted: BTreeSet<u64> = events
        .iter()
        .filter(|e| e["event"] == "custom" && e["args"][0] == "adopted")
        .filter_map(|e| e["id"].as_u64())
        .collect();
    assert_eq!(adopted, adopted_ids.iter().copied().collect());
    assert!(log.contains(" pause paused\n"), "{log}");
}

/// Most submits the storm sends; the daemon is killed once a tenth are acknowledged.
const STORM_MAX: usize = 400;

#[test]
fn every_acknowledged_submit_survives_a_kill9_in_the_middle_of_a_storm() {
    if root_or_skip() {
        return;
    }
    let mut d = TestDaemon::start("rec-storm", "");
    let marker = d.dir.path().join("marks");
    let m = marker.display().to_string();
    let cmd =
        format!("echo start $LOWSCHED_JOB_ID >> {m}; sleep 0.05; echo end $LOWSCHED_JOB_ID >> {m}");
    let socket = d.socket.clone();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = progress.clone();
    let storm = std::thread::spawn(move || {
        let mut acked = Vec::new();
        let Ok(mut c) = Client::connect(&socket) else {
            return acked;
        };
        let spec = JobSpec::new(vec!["sh".into(), "-c".into(), cmd]);
        for _ in 0..STORM_MAX {
            let req = Request::Submit(Box::new(Submit {
                job: spec.clone(),
                user: None,
            }));
            match c.call(&req) {
                Ok(Reply::Submitted { id }) => acked.push(id.0),
                _ => break,
            }
            seen.store(acked.len(), std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1));
        }
        acked
    });
    // Kill it mid-storm, with jobs accepted, running and finished (however slow the machine).
    let deadline = Instant::now() + LONG;
    while progress.load(std::sync::atomic::Ordering::Relaxed) < STORM_MAX / 10 {
        assert!(Instant::now() < deadline, "the storm does not get going");
        std::thread::sleep(Duration::from_millis(5));
    }
    d.kill9();
    let acked = storm.join().unwrap();
    assert!(acked.len() < STORM_MAX, "the kill came after the storm");

    d.start_again();
    // Wait for every job the daemon knows to finish.
    let deadline = Instant::now() + Duration::from_secs(300);
    let all = loop {
        let all = d.all();
        if all
            .iter()
            .all(|j| j["state"] == "succeeded" || j["state"] == "failed")
        {
            break all;
        }
        assert!(Instant::now() < deadline, "jobs never finished: {all:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let known: BTreeSet<u64> = all.iter().map(|j| j["id"].as_u64().unwrap()).collect();
    for id in &acked {
        assert!(known.contains(id), "acknowledged job {id} was lost");
    }
    // Anything beyond the acknowledged ones was journaled but its answer lost with the daemon.
    assert!(
        known.len() <= acked.len() + 1,
        "{} known, {} acked",
        known.len(),
        acked.len()
    );
    for j in &all {
        assert_eq!(j["state"], "succeeded", "{j:#}");
    }
    let marks = marks(&marker);
    for id in &known {
        assert_eq!(
            marks.get(&("start".into(), *id)),
            Some(&1),
            "job {id} starts"
        );
        assert_eq!(marks.get(&("end".into(), *id)), Some(&1), "job {id} ends");
    }
    assert_eq!(marks.len(), 2 * known.len());
}

#[test]
fn sigterm_leaves_jobs_running_and_the_next_daemon_adopts_them() {
    if root_or_skip() {
        return;
    }
    let mut d = TestDaemon::start("rec-term", "");
    let ticks = d.dir.path().join("ticks");
    let cmd = format!(
        "while :; do echo t >> {}; sleep 0.02; done",
        ticks.display()
    );
    let id = d.submit(&["--", "sh", "-c", &cmd]);
    let before = d.wait_for(id, "running its sh", running_sh);
    assert!(d.stop().success());
    // Still running with no daemon.
    let n = lines(&ticks).len();
    let deadline = Instant::now() + LONG;
    while lines(&ticks).len() <= n + 3 {
        assert!(Instant::now() < deadline, "the job stopped with the daemon");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.start_again();
    let s = d.status(id);
    assert_eq!(s["state"], "running");
    let sh = shell_pid(&before).unwrap();
    assert!(alive(sh) && pids(&s).contains(&sh), "{s:#} vs {before:#}");
    // The adopted job is fully under control again.
    assert!(d.cli(&["pause", &id.to_string()]).status.success());
    let n = ticks_settle(&ticks);
    assert_eq!(ticks_settle(&ticks), n);
    assert!(d.cli(&["cancel", &id.to_string()]).status.success());
    assert_eq!(d.wait_code(id), 125);
    let deadline = Instant::now() + LONG;
    while alive(sh) {
        assert!(Instant::now() < deadline, "cancelled job lives on");
        std::thread::sleep(Duration::from_millis(20));
    }
}
