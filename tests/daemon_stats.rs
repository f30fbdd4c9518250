#![allow(clippy::unwrap_used)]
//! `lowsched stats` end to end: a daemon protecting a real memcached (our own instance on a
//! free port, found through its pid file) serves its latency monitor's report as a table, as
//! JSON that reads back as a `StatsReport`, and as an HdrHistogram interval log.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{have, is_root, skip_unless};
use daemon::{LONG, TestDaemon, text};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use lowsched::sense::probe::report::StatsReport;

/// Our memcached, killed on drop.
struct Memcached(Child);

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn stats_show_the_protected_services_latency_as_table_json_and_hlog() {
    if skip_unless(is_root(), "the daemon needs root")
        || skip_unless(have("memcached"), "memcached is not installed")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("memcached.pid");
    let port = common::free_port();
    let _mc = Memcached(
        Command::new("memcached")
            .args(["-u", "root", "-l", "127.0.0.1", "-t", "1", "-m", "64"])
            .arg("-p")
            .arg(port.to_string())
            .arg("-P")
            .arg(&pid_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    daemon::wait_file(&pid_file);
    let d = TestDaemon::start(
        "stats",
        &format!(
            "[service]\nenabled = \"yes\"\npid_file = {pid_file:?}\n\
             process_name = \"lowsched-test-none\"\naddress = \"127.0.0.1:{port}\"\n"
        ),
    );

    // Wait for a few measured windows.
    let deadline = Instant::now() + LONG;
    let report = loop {
        let out = d.cli(&["stats", "--json"]);
        if out.status.success() {
            let r: StatsReport = serde_json::from_slice(&out.stdout).unwrap();
            if r.windows_total >= 2 && r.cumulative.count > 0 {
                break r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no measurements: {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(report.server, format!("127.0.0.1:{port}"));
    assert!(report.cumulative.p95_us > 0);

    let out = d.cli(&["stats"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.starts_with(&format!("memcached 127.0.0.1:{port}")),
        "{table}"
    );
    for want in [
        "SLO p95 <= 800 us",
        "p99.9",
        "recent windows",
        "windows over SLO",
    ] {
        assert!(table.contains(want), "{want:?} not in {table}");
    }

    let hlog = d.dir.path().join("latency.hlog");
    let out = d.cli(&["stats", "--hlog", hlog.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bytes = std::fs::read(&hlog).unwrap();
    assert!(text(&bytes).contains("#[Histogram log format version 1.3]"));
    let mut intervals = 0;
    let mut count = 0;
    for entry in IntervalLogIterator::new(&bytes) {
        if let LogEntry::Interval(h) = entry.unwrap() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(h.encoded_histogram())
                .unwrap();
            let hist: Histogram<u64> = Deserializer::new()
                .deserialize(&mut raw.as_slice())
                .unwrap();
            intervals += 1;
            count += hist.len();
        }
    }
    assert!(
        intervals >= 2 && count > 0,
        "{intervals} intervals, {count} values"
    );

    // Jobs run while a service is protected: with the default max_cores = 0 the service gets
    // every core but one, so batch always keeps a core, whatever the latency does.
    let id = d.submit(&["--", "true"]);
    assert_eq!(d.wait_code(id), 0, "{:#}", d.status(id));
    assert_eq!(d.status(id)["state"], "succeeded");
}
