#![allow(clippy::unwrap_used)]
//! The sensing stack against a real memcached (started here on a free port, pinned to CPU 0 as
//! test-env.md does): the load generator sends its whole schedule and every request is
//! answered, the probe's windows rotate and count SLO breaks, and it reports and survives
//! memcached dying. Nothing here asserts speed: how many QPS the load generator reaches, and how
//! much CPU interference lifts the probe's p95, are figures of `benches/sensing_overhead.rs`;
//! that the probe's p95 makes the controller act is `tests/slo_latency.rs`.

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use lowsched::sense::latency::Slo;
use lowsched::sense::probe::{Probe, ProbeConfig, ProbeHandle, ProbeSignal, ProbeStatus};
use lowsched::tools::loadgen::{self, LoadgenConfig, Schedule};

/// memcached on its own port, killed on drop.
struct Memcached {
    child: Child,
    port: u16,
}

impl Memcached {
    fn start() -> Self {
        Self::start_on(common::free_port())
    }

    fn start_on(port: u16) -> Self {
        let child = Command::new("taskset")
            .args([
                "-c",
                "0",
                "memcached",
                "-u",
                "root",
                "-l",
                "127.0.0.1",
                "-t",
                "1",
            ])
            .args(["-m", "256", "-c", "4096", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "memcached did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The tests share CPUs 0 and 1; running them one at a time keeps one's load out of another's
/// figures.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn can_run() -> bool {
    !common::skip_unless(common::have("memcached"), "memcached is not installed")
        && !common::skip_unless(common::have("taskset"), "taskset is not installed")
}

fn wait_for(
    what: &str,
    probe: &ProbeHandle,
    secs: u64,
    f: impl Fn(&ProbeSignal) -> bool,
) -> ProbeSignal {
    let t0 = Instant::now();
    loop {
        let s = probe.signal();
        if f(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn load(server: String, qps: f64, secs: u64) -> LoadgenConfig {
    LoadgenConfig {
        server,
        duration: Duration::from_secs(secs),
        schedule: Schedule::fixed(qps).unwrap(),
        preload: true,
        keys: 1000,
        cpu: Some(1),
        ..LoadgenConfig::default()
    }
}

#[test]
fn loadgen_sends_its_whole_schedule_and_every_request_is_answered() {
    let _serial = serial();
    if !can_run() {
        return;
    }
    let mc = Memcached::start();
    for target in [10_000.0, 20_000.0] {
        let h =
            loadgen::spawn_loadgen(load(mc.addr(), target, 3), Arc::new(AtomicBool::new(false)));
        let r = loadgen::join_loadgen(h).unwrap();
        // Open loop: every request the schedule plans is sent, late or not (a late one counts
        // its lateness in its latency), so the counts are the schedule's, whatever the load.
        let planned = target * 3.0;
        assert!(
            (r.sent as f64 - planned).abs() <= 1.0,
            "sent {} of {planned}: {r:?}",
            r.sent
        );
        assert_eq!(r.latency.errors, 0, "{r:?}");
        assert_eq!(r.sent, r.answered, "{r:?}");
        let p = &r.latency;
        assert!(
            p.p50_us > 0 && p.p50_us <= p.p95_us && p.p95_us <= p.p99_us && p.p99_us <= p.max_us
        );
        assert_eq!(r.intervals.len(), 3);
        for i in &r.intervals {
            let sent = i.target_qps * i.duration_s;
            assert!(
                (sent - target).abs() <= 1.0,
                "interval planned {target}, sent {sent}: {i:?}"
            );
            assert!(i.hist.is_some(), "{i:?}");
        }
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in ["qps", "p50_us", "p95_us", "p99_us"] {
            assert!(json[key].is_number(), "{key} missing from {json}");
        }
        for key in ["start_s", "qps", "p95_us"] {
            assert!(
                json["intervals"][0][key].is_number(),
                "intervals[].{key} missing"
            );
        }
        assert!(r.cpu_s > 0.0, "loadgen CPU {r:?}");
        eprintln!(
            "target {target}: achieved {:.0} QPS, p50 {} p95 {} p99 {} us, {:.1} % of a core",
            r.qps,
            p.p50_us,
            p.p95_us,
            p.p99_us,
            r.cpu_core * 100.0
        );
    }
}

#[test]
fn windows_rotate_on_time_and_count_slo_breaks() {
    let _serial = serial();
    if !can_run() {
        return;
    }
    let mc = Memcached::start();
    let start = |limit_us| {
        Probe::start(ProbeConfig {
            server: mc.addr(),
            window: Duration::from_millis(200),
            slo: Slo {
                quantile: 0.95,
                limit_us,
            },
            rate: 500,
            ..ProbeConfig::default()
        })
        .unwrap()
    };
    // An SLO nothing can meet, and one nothing can break.
    let before = Instant::now();
    let strict = start(1);
    let lax = start(10_000_000);
    wait_for("strict windows", &strict, 60, |s| s.windows_total >= 6);
    wait_for("lax windows", &lax, 60, |s| s.windows_total >= 6);
    let s = strict.signal();
    assert_eq!(s.windows_over, s.windows_total, "{s:?}");
    assert!(s.slack_us < 0 || s.window_count == 0, "{s:?}");
    let l = lax.signal();
    assert_eq!(l.windows_over, 0, "{l:?}");
    assert!(l.slack_us > 0, "{l:?}");
    // Windows are consecutive, and none ends after the moment of the report (a window clock
    // running fast would).
    let r = lax.report();
    let elapsed = before.elapsed().as_secs_f64();
    let idx: Vec<u64> = r.windows.iter().map(|w| w.index).collect();
    assert!(idx.windows(2).all(|p| p[1] == p[0] + 1), "{idx:?}");
    for w in &r.windows {
        assert!(
            w.start_s + w.duration_s <= elapsed,
            "{w:?} ends after {elapsed} s"
        );
    }
    assert!(
        r.qps.is_some_and(|q| q > 0.0),
        "QPS from stats: {:?}",
        r.qps
    );
}

#[test]
fn memcached_killed_mid_run_is_reported_and_recovered_from() {
    let _serial = serial();
    if !can_run() {
        return;
    }
    let mut mc = Memcached::start();
    let port = mc.port;
    let probe = Probe::start(ProbeConfig {
        server: mc.addr(),
        window: Duration::from_millis(250),
        backoff_max: Duration::from_millis(400),
        ..ProbeConfig::default()
    })
    .unwrap();
    wait_for("up", &probe, 60, |s| {
        s.status == ProbeStatus::Up && s.fast.samples > 20
    });
    let over_before = probe.signal().windows_over;
    mc.kill();
    let t_kill = Instant::now();
    let s = wait_for("down", &probe, 30, |s| s.status == ProbeStatus::Down);
    eprintln!("down reported {:?} after the kill", t_kill.elapsed());
    assert!(
        s.fast.errors > 0 || s.fast.p95_us == lowsched::sense::latency::NO_ANSWER_US,
        "{s:?}"
    );
    wait_for("failed windows", &probe, 30, |s| {
        s.windows_over > over_before
    });
    let report = probe.report();
    assert!(report.last_error.is_some(), "{report:?}");
    assert!(report.cumulative.errors > 0);
    // Back on the same port.
    let _mc = Memcached::start_on(port);
    let t_back = Instant::now();
    wait_for("up again", &probe, 60, |s| s.status == ProbeStatus::Up);
    eprintln!("recovered {:?} after memcached came back", t_back.elapsed());
    wait_for("clean fast signal", &probe, 30, |s| {
        s.fast.errors == 0 && s.fast.samples > 20
    });
}
