//! Stats dump tests: the table, JSON round trips and interval logs.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::*;
use crate::sense::latency::EncodedHistogram;
use crate::sense::latency::{WindowedLatency, new_histogram};
use crate::sense::probe::{ProbeConfig, ProbeStatus};
use base64::Engine;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

const S: u64 = 1_000_000_000;

fn sample_report() -> StatsReport {
    let cfg = ProbeConfig::default();
    let mut w = WindowedLatency::new(0, Duration::from_secs(1), cfg.slo, 50);
    for win in 0..5u64 {
        for i in 0..1000u64 {
            let slow = win == 3 && i % 10 == 0;
            w.record(
                win * S + i * 1_000_000,
                if slow { 2_000 } else { 60 + i % 20 },
            );
        }
    }
    w.record_error(4 * S + 5);
    w.advance(5 * S);
    let mut r = StatsReport::empty(&cfg);
    r.started_unix_s = 1_700_000_000.0;
    r.cumulative = w.cumulative_percentiles();
    r.cumulative_hist = Some(EncodedHistogram::encode(w.cumulative()).unwrap());
    r.windows = w.recent().cloned().collect();
    r.windows_over = w.windows_over();
    r.windows_total = w.windows_total();
    r.qps = Some(1234.4);
    r.status = ProbeStatus::Up;
    r
}

#[test]
fn table_shows_percentiles_windows_against_the_slo_and_counts() {
    let r = sample_report();
    let t = render_table(&r);
    assert!(t.contains("up, 1234 QPS"), "{t}");
    assert!(t.contains("windows over SLO: 1 / 5 (20.0 %)"), "{t}");
    for col in ["p50", "p90", "p95", "p99", "p99.9", "max"] {
        assert!(t.contains(col), "{t}");
    }
    assert!(t.contains("5000 answered, 1 failed"), "{t}");
    // One line per window, each with the SLO mark; the slow one is flagged.
    let lines: Vec<&str> = t.lines().filter(|l| l.starts_with("     +")).collect();
    assert_eq!(lines.len(), 5, "{t}");
    assert_eq!(
        lines.iter().filter(|l| l.ends_with("OVER")).count(),
        1,
        "{t}"
    );
    assert!(lines.iter().all(|l| l.contains('|')), "{t}");
    let over = lines.iter().find(|l| l.ends_with("OVER")).unwrap();
    assert!(over.contains(" 2000 "), "{over}");
}

#[test]
fn the_header_names_the_calm_rate_when_the_probe_has_one() {
    let steady = StatsReport::empty(&ProbeConfig::default());
    assert!(render_table(&steady).contains("probing 1000/s\n"));
    let paced = StatsReport::empty(&ProbeConfig {
        rate: 100,
        calm_rate: 25,
        calm_below_us: 400,
        ..ProbeConfig::default()
    });
    let t = render_table(&paced);
    assert!(t.contains("probing 100/s (25/s while calm)"), "{t}");
    let json = serde_json::to_string(&paced).unwrap();
    assert_eq!(serde_json::from_str::<StatsReport>(&json).unwrap(), paced);
    // A report from a daemon without the field still reads.
    let old = json.replace(",\"probe_calm_rate\":25", "");
    let read = serde_json::from_str::<StatsReport>(&old).unwrap();
    assert_eq!(read.probe_calm_rate, None);
    assert_eq!(read.probe_rate, 100);
}

#[test]
fn json_round_trips_with_histograms() {
    let r = sample_report();
    let out = serde_json::to_vec_pretty(&r).unwrap();
    let back: StatsReport = serde_json::from_slice(&out).unwrap();
    assert_eq!(back, r);
    let h = back.cumulative_hist.unwrap().decode().unwrap();
    assert_eq!(h.len(), 5000);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["cumulative"]["count"], 5000);
    assert_eq!(v["windows_over"], 1);
    assert_eq!(v["status"], "up");
}

#[test]
fn hlog_is_a_standard_interval_log() {
    let r = sample_report();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probe.hlog");
    write_hlog_file(&r, &path).unwrap();
    let text = std::fs::read(&path).unwrap();
    let s = String::from_utf8_lossy(&text);
    assert!(s.contains("#[Histogram log format version 1.3]"), "{s}");
    assert!(s.contains("#[StartTime: 1700000000.000"), "{s}");
    assert!(s.contains("\"StartTimestamp\",\"Interval_Length\""), "{s}");
    let mut starts = Vec::new();
    let mut total = 0;
    for entry in IntervalLogIterator::new(&text) {
        match entry.unwrap() {
            LogEntry::Interval(h) => {
                starts.push(h.start_timestamp().as_secs_f64());
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(h.encoded_histogram())
                    .unwrap();
                // V2 compressed cookie.
                assert_eq!(&bytes[..4], &[0x1c, 0x84, 0x93, 0x14]);
                let hist: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut bytes.as_slice())
                    .unwrap();
                total += hist.len();
                // Nanoseconds: no answer in the sample came in under a microsecond.
                assert!(hist.min() >= 1_000, "min {}", hist.min());
            }
            LogEntry::StartTime(t) => assert_eq!(t.as_secs(), 1_700_000_000),
            LogEntry::BaseTime(t) => assert_eq!(t.as_secs(), 1_700_000_000),
        }
    }
    assert_eq!(starts, vec![0.0, 1.0, 2.0, 3.0, 4.0]);
    // 5000 answers, and the sample's one failed probe at the histogram's top.
    assert_eq!(total, 5001);
}

#[test]
fn bars_put_the_slo_in_the_middle() {
    assert!(bar(Some(0), 800).starts_with("                    |"));
    let over = bar(Some(1600), 800);
    assert_eq!(over.matches('#').count(), 40);
    assert!(bar(None, 800).ends_with('>'));
    let _ = new_histogram();
}

#[test]
fn a_bad_hlog_path_is_a_clear_error() {
    let err = write_hlog_file(&sample_report(), Path::new("/nonexistent-dir/x.hlog")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent-dir/x.hlog"), "{err}");
}
