#![allow(clippy::unwrap_used)]
//! `lowsched stats` end to end: a daemon protecting a real memcached (our own instance on a
//! free port, found through its pid file) serves its latency monitor's report as a table, as
//! JSON that reads back as a `StatsReport`, and as an HdrHistogram interval log.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{have, is_root, skip_unless};
use daemon::{LONG, Memcached, TestDaemon, text};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use lowsched::sense::probe::report::StatsReport;

#[test]
fn stats_show_the_protected_services_latency_as_table_json_and_hlog() {
    if skip_unless(is_root(), "the daemon needs root")
        || skip_unless(have("memcached"), "memcached is not installed")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mc = Memcached::start(dir.path(), common::free_port());
    let port = mc.port;
    let d = TestDaemon::start("stats", &mc.service_toml());

    let report = measured_report(&d);
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

    let (intervals, count) = hlog_intervals(&d);
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

/// The daemon's stats once its probe has measured a few windows.
fn measured_report(d: &TestDaemon) -> StatsReport {
    let deadline = Instant::now() + LONG;
    loop {
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
    }
}

/// Writes the daemon's stats as an HdrHistogram interval log and reads it back with the
/// hdrhistogram crate: how many intervals, how many values in all.
fn hlog_intervals(d: &TestDaemon) -> (usize, u64) {
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
    (intervals, count)
}
