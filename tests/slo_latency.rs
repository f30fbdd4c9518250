//! The latency path of the SLO controller end to end, as root: a real memcached, the daemon's
//! probe, stress-ng batch jobs on the service's core, and the controller's default latency
//! thresholds. The recent p95, not CPU use, makes the service take a core of its own (the event
//! log names the trigger), and a step down that brings the interference back is undone.
//!
//! CPU use cannot trigger a climb here: `grow_util` is set out of reach, so only latency can.
//! Batch runs at normal priority (`idle_priority = false`) and the hogs at nice -10: at
//! `SCHED_IDLE` they would yield to memcached at once and there would be no interference to
//! react to. The probe thread is real-time so that the hogs delay memcached's answers, not the
//! probe's own sends.
//!
//! The thresholds are the defaults (climb over 0.5 of the SLO target, step down under 0.25), but
//! the target is 16 ms, not 0.8 ms: on this shared 2-vCPU VM an idle memcached answers the
//! daemon's probe with a window p95 of 0.3-5 ms, so under the default target the controller
//! could never step down. With three nice -10 hogs beside it the p95 is 10-20 ms.
//!
//! This machine is shared: other builds run beside the test. memcached and the hogs therefore
//! run in one CPU cgroup with a very high weight (as in `tests/sensing_memcached.rs`): inside it
//! they compete as equals, which is the interference under test; against everything else on the
//! machine the group wins, so outside noise does not decide when the service is calm.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daemon::{BIN, TestDaemon};
use serde_json::Value;

/// Generous: a loaded 2-vCPU machine may take a while to be calm enough for a step down.
const PHASE: Duration = Duration::from_secs(120);

/// A v1 `cpu` cgroup (or v2 with the cpu controller) with a very high weight; removed on drop.
struct HeavyGroup {
    dir: PathBuf,
}

impl HeavyGroup {
    fn create() -> Option<HeavyGroup> {
        let name = format!("lowsched-test-slolat-cpu-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let (dir, file, weight) = if v1.join("cpu.shares").exists() {
            (v1.join(name), "cpu.shares", "262144")
        } else {
            let root = Path::new("/sys/fs/cgroup");
            let ctrls = std::fs::read_to_string(root.join("cgroup.subtree_control")).ok()?;
            if !ctrls.split_whitespace().any(|c| c == "cpu") {
                return None;
            }
            (root.join(name), "cpu.weight", "10000")
        };
        std::fs::create_dir(&dir).ok()?;
        let g = HeavyGroup { dir };
        std::fs::write(g.dir.join(file), weight).ok()?;
        Some(g)
    }

    /// A shell prefix that moves the shell into the group, then execs the rest.
    fn enter(&self) -> String {
        format!("echo $$ > {}/cgroup.procs && exec", self.dir.display())
    }
}

impl Drop for HeavyGroup {
    fn drop(&mut self) {
        for _ in 0..250 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

/// memcached on one thread, killed on drop.
struct Memcached {
    pid: i32,
}

impl Memcached {
    fn start(dir: &Path, port: u16, group: &HeavyGroup) -> (Memcached, PathBuf) {
        let pidfile = dir.join("memcached.pid");
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{} memcached -u root -l 127.0.0.1 -t 1 -d -P {} -p {port}",
                group.enter(),
                pidfile.display()
            ))
            .status()
            .unwrap()
            .success();
        assert!(ok, "memcached did not start");
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            let text = std::fs::read_to_string(&pidfile).unwrap_or_default();
            if let Ok(pid) = text.trim().parse() {
                break pid;
            }
            assert!(Instant::now() < deadline, "memcached wrote no pid file");
            std::thread::sleep(Duration::from_millis(20));
        };
        (Memcached { pid }, pidfile)
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A child process killed on drop (the load generator).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The service's core changes, in order: (event index, reason, inputs).
fn service_moves(d: &TestDaemon) -> Vec<(usize, String, Value)> {
    d.events_jsonl()
        .into_iter()
        .enumerate()
        .filter(|(_, e)| e["job"] == "memcached" && e["event"] == "update_cores")
        .map(|(i, e)| {
            let reason = e["reason"].as_str().unwrap_or("").to_string();
            (i, reason, e["inputs"].clone())
        })
        .collect()
}

/// Waits (up to [`PHASE`]) for a service move whose reason starts with `prefix` after event
/// index `after`; returns it.
fn wait_move(d: &TestDaemon, prefix: &str, after: usize) -> (usize, String, Value) {
    let deadline = Instant::now() + PHASE;
    loop {
        let moves = service_moves(d);
        if let Some(m) = moves
            .iter()
            .find(|(i, r, _)| *i >= after && r.starts_with(prefix))
        {
            return m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no service move `{prefix}` within {PHASE:?}; moves so far:\n{}",
            moves
                .iter()
                .map(|(i, r, inp)| format!("  #{i} {r} {inp}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cannot_run() -> bool {
    common::root_or_skip()
        || common::skip_unless(
            common::have("memcached"),
            "needs memcached (apt install memcached)",
        )
        || common::skip_unless(
            common::have("stress-ng"),
            "needs stress-ng (apt install stress-ng)",
        )
}

#[test]
fn latency_grows_the_service_and_a_step_down_that_hurts_is_undone() {
    if cannot_run() {
        return;
    }
    let group = HeavyGroup::create();
    if common::skip_unless(group.is_some(), "cannot create a CPU cgroup") {
        return;
    }
    let group = group.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let (_memcached, pidfile) = Memcached::start(dir.path(), port, &group);
    // Default latency thresholds (grow over 0.5 of the SLO target, step down under 0.25); the
    // CPU trigger out of reach.
    let d = TestDaemon::start(
        "slolat",
        &format!(
            "[batch]\nidle_priority = false\n\
             [service]\nenabled = \"yes\"\npid_file = {pidfile:?}\n\
             address = \"127.0.0.1:{port}\"\nrescan_ms = 200\n\
             [slo]\np95_us = 16000\n\
             [controller]\ngrow_util = 1000.0\n\
             [probe]\nrealtime_priority = 50\n"
        ),
    );

    // Quiet: the controller steps down from the top rung to the bottom one, where batch may use
    // the service's core too.
    let settled = wait_move(&d, "shrink rung 1->0", 0);
    // Past the undo window of that step down, so the next climb is a grow, not an undo.
    std::thread::sleep(Duration::from_millis(1500));

    // Load, and batch hogs on both cores (so on the service's).
    let load = Killed(
        Command::new(BIN)
            .args(["loadgen", "--server", &format!("127.0.0.1:{port}")])
            .args(["--qps", "2000", "--duration", "600", "--cpu", "1"])
            .args(["--realtime"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let hogs_cmd = format!(
        "{} nice -n -10 stress-ng --cpu 6 -t 600 --quiet",
        group.enter()
    );
    let hogs = d.submit(&["--cpus", "1:2", "--", "sh", "-c", &hogs_cmd]);
    d.wait_state(hogs, "running");

    // The recent p95 crosses its threshold: the service climbs, and the event names latency.
    let (grow_at, reason, inputs) = wait_move(&d, "grow rung 0->1", settled.0 + 1);
    assert!(
        reason.contains(": recent p95 "),
        "the climb was not triggered by the recent p95: {reason}"
    );
    let p95 = inputs["p95_recent_us"].as_f64().unwrap();
    assert!(p95 > 8000.0, "recent p95 {p95} us is not over 0.5 x 16 ms");
    assert_eq!(inputs["batch_cores"], "1", "batch kept the service's core");
    // Only latency could have triggered it: the service used far less than its core.
    let cpu = inputs["service_cpu"].as_f64().unwrap_or(0.0);
    assert!(cpu < 1.0, "service CPU {cpu}");

    // The load that needed the climb goes away; the hogs stay (on the batch core). Once calm,
    // the controller steps down, the hogs come back to the service's core, and the step down
    // is undone.
    let _ = d.wait_for(hogs, "on core 1 only", |s| {
        s["cores"] == serde_json::json!([1])
    });
    std::thread::sleep(Duration::from_secs(3));
    drop(load);
    let (down_at, _, _) = wait_move(&d, "shrink rung 1->0", grow_at + 1);
    let (_, undo, inputs) = wait_move(&d, "undo rung 0->1", down_at + 1);
    // A step down onto the shared rung is a share (issue 16's learned sharing), so its undo
    // says so; either way it is the recent p95 that undoes it.
    assert!(
        undo.contains("undo step down: recent p95") || undo.contains("undo share of"),
        "{undo}"
    );
    assert!(undo.contains("recent p95"), "{undo}");
    assert!(
        inputs["p95_recent_us"].as_f64().unwrap() > 8000.0,
        "{inputs}"
    );
    assert_eq!(
        inputs["batch_cores"], "1",
        "the undo left batch on the service's core"
    );
    for (i, reason, inputs) in service_moves(&d) {
        eprintln!("#{i} {reason} (recent p95 {})", inputs["p95_recent_us"]);
    }
    d.cli(&["cancel", &hogs.to_string()]);
}
