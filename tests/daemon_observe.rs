#![allow(clippy::unwrap_used)]
//! The daemon's observers end to end, on a real memcached: the latency history under the state
//! dir grows with every window and reads back in order across a daemon restart; `/metrics`
//! answers GET with the exposition text (and nothing else), the textfile is written, and
//! `lowsched metrics` prints the same metrics through the socket.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{have, is_root, skip_unless};
use daemon::{LONG, Memcached, TestDaemon, text};
use lowsched::store::history::{HISTORY_DIR, hlog_files, read_intervals, read_service};

fn http(port: u16, request: &str) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

/// The value of an unlabelled sample, or of one with exactly these labels.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn history_and_metrics_follow_the_probe_across_a_restart() {
    if skip_unless(is_root(), "the daemon needs root")
        || skip_unless(have("memcached"), "memcached is not installed")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mc = Memcached::start(dir.path(), common::free_port());
    let mport = common::free_port();
    let textfile = dir.path().join("lowsched.prom");
    let mut d = TestDaemon::start(
        "observe",
        &format!(
            "{}[metrics]\nlisten = \"127.0.0.1:{mport}\"\ntextfile = {textfile:?}\n\
             textfile_interval_ms = 500\n",
            mc.service_toml()
        ),
    );
    let hdir = d.state.join(HISTORY_DIR);
    wait_until("3 windows in the history", || {
        read_service(&hdir, None, None).is_ok_and(|w| w.len() >= 3)
    });

    check_endpoint(&d, mport, &textfile);
    check_restart(&mut d);
}

/// `/metrics` (GET only), `lowsched metrics` and the textfile show the same metrics, with the
/// probe's windows and a job's launch in them.
fn check_endpoint(d: &TestDaemon, mport: u16, textfile: &std::path::Path) {
    let got = http(mport, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("Content-Type: text/plain; version=0.0.4"));
    let body = got.split("\r\n\r\n").nth(1).unwrap();
    let count = sample(body, "lowsched_service_latency_seconds_count").unwrap();
    assert!(count > 0.0, "{body}");
    let within = sample(body, "lowsched_slo_windows_total{result=\"within\"}").unwrap();
    let over = sample(body, "lowsched_slo_windows_total{result=\"over\"}").unwrap();
    assert!(within + over >= 3.0, "{body}");
    assert_eq!(sample(body, "lowsched_cores{pool=\"service\"}"), Some(1.0));
    assert!(sample(body, "lowsched_daemon_resident_memory_bytes").unwrap() > 1e6);
    // Only GET of /metrics.
    assert!(http(mport, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(http(mport, "GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));

    // The socket and the textfile carry the same metrics.
    let out = d.cli(&["metrics"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let via_socket = text(&out.stdout);
    let names = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("# TYPE "))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(names(&via_socket), names(body));
    wait_until("the textfile", || textfile.exists());
    assert_eq!(
        names(&std::fs::read_to_string(textfile).unwrap()),
        names(body)
    );

    // A job's launch shows in the launch histogram.
    let id = d.submit(&["--", "sleep", "0.2"]);
    d.wait_state(id, "succeeded");
    wait_until("the launch in the metrics", || {
        let t = text(&d.cli(&["metrics"]).stdout);
        sample(&t, "lowsched_launch_seconds_count").is_some_and(|n| n >= 1.0)
            && sample(&t, "lowsched_jobs{state=\"succeeded\",origin=\"submit\"}") == Some(1.0)
    });
}

/// A restart starts a second segment; the history reads back in order across both.
fn check_restart(d: &mut TestDaemon) {
    let hdir = d.state.join(HISTORY_DIR);
    let before = read_intervals(&hdir, None, None).unwrap().len();
    d.stop();
    d.start_again();
    wait_until("windows of the second run", || {
        hlog_files(&hdir).unwrap().len() >= 2
            && read_service(&hdir, None, None).is_ok_and(|w| w.len() >= before + 2)
    });
    d.stop();
    let ivs = read_intervals(&hdir, None, None).unwrap();
    assert!(ivs.len() >= before + 2);
    assert!(
        ivs.windows(2)
            .all(|w| w[1].start_unix_s >= w[0].start_unix_s + w[0].duration_s - 0.01),
        "intervals overlap or go back"
    );
    assert!(ivs.iter().all(|i| !i.hist_ns.is_empty()));
    let svc = read_service(&hdir, None, None).unwrap();
    assert_eq!(svc.len(), ivs.len(), "one service line per interval");
    assert!(svc.iter().all(|w| w.limit_us == Some(800)));
}
