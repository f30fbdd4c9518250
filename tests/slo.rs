//! The SLO controller end to end, as root, with a real memcached, the load generator and
//! stress-ng batch jobs: a load step makes lowsched take cores from batch and widen the
//! service's cpuset; when the load drops, batch gets its cores back.
//!
//! Thresholds here are CPU-based (latency thresholds set out of reach), so the test exercises
//! the mechanism and not this shared machine's latency noise.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lowsched");

/// One daemon protecting memcached at a time: they would share core 0 and its idle states.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Skips (printing why) without root or memcached.
fn cannot_run() -> bool {
    common::skip_unless(
        common::is_root(),
        "needs root (cgroups, jobs as users, sysfs PM QoS)",
    ) || common::skip_unless(
        common::have("memcached"),
        "needs memcached (apt install memcached)",
    )
}

struct Fixture {
    dir: tempfile::TempDir,
    memcached: Option<u32>,
    daemon: Option<Child>,
    socket: PathBuf,
    root: String,
}

impl Fixture {
    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .env("LOWSCHED_SOCKET", &self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    fn status(&self) -> Vec<Value> {
        let out = self.cli(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn events(&self) -> Vec<Value> {
        let path = self.dir.path().join("state/events.jsonl");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `cond` holds, up to `limit`; returns whether it did.
    fn until(&self, limit: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            if cond(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // No daemon (the test stopped it): nothing to cancel.
        let jobs = if self.daemon.is_some() {
            self.status()
        } else {
            Vec::new()
        };
        for j in jobs {
            if j["state"] == "running" || j["state"] == "paused" {
                let _ = self.cli(&["cancel", &j["id"].to_string()]);
            }
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = d.wait();
        }
        if let Some(pid) = self.memcached {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for mount in [
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup/cpuset",
            "/sys/fs/cgroup",
        ] {
            let root = Path::new(mount).join(&self.root);
            for sub in ["batch", "service", "daemon", ""] {
                let _ = std::fs::remove_dir(root.join(sub));
            }
        }
    }
}

fn start(port: u16) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("memcached.pid");
    let memcached = start_memcached(port, &pidfile);
    let socket = dir.path().join("s.sock");
    let root = format!("lowsched-test-slo-{}", std::process::id());
    let cfg = daemon_config(dir.path(), &socket, &root, &pidfile, port);
    let cfg_path = dir.path().join("lowsched.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let daemon = Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let f = Fixture {
        dir,
        memcached,
        daemon: Some(daemon),
        socket,
        root,
    };
    assert!(
        f.until(Duration::from_secs(20), |f| f
            .cli(&["status"])
            .status
            .success()),
        "daemon did not come up: {}",
        std::fs::read_to_string(f.dir.path().join("daemon.log")).unwrap_or_default()
    );
    f
}

/// Starts our own memcached (daemonized, one thread) on `port`; returns its pid once it has
/// written `pidfile`.
fn start_memcached(port: u16, pidfile: &Path) -> Option<u32> {
    let ok = Command::new("memcached")
        .args([
            "-u",
            "root",
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "1",
            "-d",
            "-P",
        ])
        .arg(pidfile)
        .status()
        .unwrap()
        .success();
    assert!(ok, "memcached did not start");
    let t = Instant::now();
    while std::fs::read_to_string(pidfile)
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "memcached wrote no pid file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_to_string(pidfile)
        .unwrap()
        .trim()
        .parse()
        .ok()
}

/// The daemon's config: our socket, state dir and cgroup root, the memcached at `port` as the
/// protected service, and a fast controller (10 ms period, low grow thresholds).
fn daemon_config(dir: &Path, socket: &Path, root: &str, pidfile: &Path, port: u16) -> String {
    format!(
        r#"socket = "{sock}"
state_dir = "{state}"
cgroup_root = "{root}"
[batch]
idle_priority = true
[service]
enabled = "yes"
pid_file = "{pid}"
address = "127.0.0.1:{port}"
min_cores = 1
max_cores = 2
rescan_ms = 200
[controller]
period_ms = 10
grow_util = 0.2
shrink_util = 0.08
grow_p95_frac = 40.0
shrink_p95_frac = 20.0
shrink_qps_frac = 0.5
hold_down_ms = 1000
undo_window_ms = 200
"#,
        sock = socket.display(),
        state = dir.join("state").display(),
        pid = pidfile.display(),
    )
}

fn job_states(f: &Fixture) -> Vec<String> {
    f.status()
        .iter()
        .map(|j| j["state"].as_str().unwrap_or("").to_string())
        .collect()
}

fn memcached_cores(f: &Fixture) -> Vec<String> {
    f.events()
        .iter()
        .filter(|e| e["job"] == "memcached" && e["event"] == "update_cores")
        .map(|e| e["args"][0].as_str().unwrap_or("").to_string())
        .collect()
}

/// Waits for the controller to settle on the service's minimum, core 0 (quiet service).
fn wait_settled(f: &Fixture) {
    assert!(
        f.until(Duration::from_secs(30), |f| memcached_cores(f)
            .last()
            .is_some_and(|c| c == "[0]")),
        "controller never settled on the service's minimum: {:?}",
        memcached_cores(f)
    );
}

/// Two one-core CPU hogs as batch jobs.
fn submit_two_hogs(f: &Fixture) {
    for _ in 0..2 {
        let out = f.cli(&[
            "submit",
            "--cpus",
            "1",
            "--",
            "stress-ng",
            "--cpu",
            "1",
            "-t",
            "120",
            "--quiet",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A 12 s load step of 40 k QPS on memcached.
fn start_load(port: u16) -> std::process::Child {
    Command::new(BIN)
        .args([
            "loadgen",
            "--server",
            &format!("127.0.0.1:{port}"),
            "--qps",
            "40000",
            "--duration",
            "12",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The event log says why the service grew, with the readings, and that the first climb moved
/// a batch job off core 0 with a cpuset write before the service was placed there, not after a
/// freeze.
fn assert_the_grow_is_explained(f: &Fixture) {
    let grow = f
        .events()
        .into_iter()
        .find(|e| e["job"] == "memcached" && e["args"][0] == "[0,1]")
        .unwrap();
    assert!(
        grow["reason"].as_str().unwrap().contains("grow")
            || grow["reason"].as_str().unwrap().contains("undo")
    );
    assert!(grow["inputs"]["service_cpu"].is_number(), "{grow}");
    assert!(grow["inputs"]["reaction_us"].is_number(), "{grow}");
    let events = f.events();
    let moved = events
        .iter()
        .position(|e| e["reason"] == "off the service's cores for its grow");
    let owned = events.iter().position(|e| {
        e["job"] == "memcached"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("rung 0->1"))
    });
    assert!(
        matches!((moved, owned), (Some(m), Some(o)) if m < o),
        "no batch job moved off core 0 before the service owned it: {:?}",
        events
            .iter()
            .filter(|e| e["event"] == "update_cores" || e["event"] == "pause")
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_load_step_takes_cores_from_batch_and_gives_them_back() {
    if common::skip_unless(common::is_root(), "needs root (cgroups, jobs as users)")
        || common::skip_unless(
            common::have("memcached"),
            "needs memcached (apt install memcached)",
        )
        || common::skip_unless(
            common::have("stress-ng"),
            "needs stress-ng (apt install stress-ng)",
        )
    {
        return;
    }
    let _serial = serial();
    let port = common::free_port();
    let f = start(port);
    // Quiet: the controller settles on the bottom rung, where batch may use every core.
    wait_settled(&f);
    submit_two_hogs(&f);
    assert!(
        f.until(Duration::from_secs(20), |f| job_states(f)
            .iter()
            .all(|s| s == "running")),
        "both batch jobs should run while the service is quiet: {:?}\n{}",
        job_states(&f),
        f.events()
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Load step: memcached's CPU use crosses grow_util; the controller climbs to the top rung.
    let mut loadgen = start_load(port);
    let widened = f.until(Duration::from_secs(12), |f| {
        memcached_cores(f).iter().any(|c| c == "[0,1]")
    });
    let paused = job_states(&f).iter().any(|s| s == "paused");
    assert!(
        widened,
        "the service's cpuset never widened under load: {:?}",
        memcached_cores(&f)
    );
    assert!(
        paused || job_states(&f).iter().filter(|s| *s == "running").count() < 2,
        "batch kept both cores under load: {:?}",
        job_states(&f)
    );
    assert_the_grow_is_explained(&f);

    let _ = loadgen.wait();

    // Load gone: batch gets its cores back after the hold-down.
    assert!(
        f.until(Duration::from_secs(40), |f| job_states(f)
            .iter()
            .all(|s| s == "running")
            && memcached_cores(f).last().is_some_and(|c| c == "[0]")),
        "batch did not get its cores back: jobs {:?}, service {:?}\n{}",
        job_states(&f),
        memcached_cores(&f),
        f.events()
            .iter()
            .filter(|e| e["job"] == "memcached")
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let unpaused = f.events().iter().any(|e| e["event"] == "unpause");
    assert!(unpaused, "a paused job should have been resumed");
}

fn allowed_cpus(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn daemon_log(f: &Fixture) -> String {
    std::fs::read_to_string(f.dir.path().join("daemon.log")).unwrap_or_default()
}

#[test]
fn a_restarted_service_is_found_again_and_confined() {
    if cannot_run() {
        return;
    }
    let _serial = serial();
    let port = common::free_port();
    let mut f = start(port);
    let first = f.memcached.unwrap();
    assert!(
        f.until(Duration::from_secs(20), |f| daemon_log(f)
            .contains(&format!("pid {first}"))),
        "the daemon never found memcached: {}",
        daemon_log(&f)
    );
    // Confined to the service's cores: the controller starts on the top rung (0-1) and
    // settles on the minimum ([0]) under no load; either way not left unconfined for long.
    assert!(
        f.until(Duration::from_secs(20), |_| allowed_cpus(first) == "0"),
        "memcached not confined to the service's minimum core: {}",
        allowed_cpus(first)
    );
    // Replace it: a new process on the same port and pid file, unconfined at birth.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let pidfile = f.dir.path().join("memcached.pid");
    std::fs::write(&pidfile, "").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let ok = Command::new("memcached")
        .args([
            "-u",
            "root",
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "1",
            "-d",
            "-P",
        ])
        .arg(&pidfile)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert!(f.until(Duration::from_secs(5), |_| {
        !std::fs::read_to_string(&pidfile)
            .unwrap_or_default()
            .trim()
            .is_empty()
    }));
    let second: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    f.memcached = Some(second);
    assert_ne!(first, second);
    assert!(
        f.until(Duration::from_secs(20), |f| daemon_log(f)
            .contains(&format!("pid {second}"))),
        "the daemon did not find the restarted memcached: {}",
        daemon_log(&f)
    );
    assert!(
        f.until(Duration::from_secs(20), |_| allowed_cpus(second) == "0"),
        "the restarted memcached was not confined: {}",
        allowed_cpus(second)
    );
}

fn resume_latency(cpu: usize) -> String {
    std::fs::read_to_string(format!(
        "/sys/devices/system/cpu/cpu{cpu}/power/pm_qos_resume_latency_us"
    ))
    .unwrap_or_default()
    .trim()
    .to_string()
}

#[test]
fn the_service_core_polls_when_idle_and_gets_its_idle_states_back() {
    if cannot_run() {
        return;
    }
    let _serial = serial();
    let before = (resume_latency(0), resume_latency(1));
    let port = common::free_port();
    let mut f = start(port);
    wait_settled(&f);
    assert_eq!(resume_latency(0), "n/a", "the service core may still halt");
    assert_eq!(resume_latency(1), before.1, "a batch core was changed");
    let mut d = f.daemon.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    d.wait().unwrap();
    assert_eq!(
        (resume_latency(0), resume_latency(1)),
        before,
        "not restored at exit"
    );
}
