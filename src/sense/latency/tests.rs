//! Window rotation, SLO accounting and fast-signal tests with a fake clock.

use super::*;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

fn slo(limit_us: u64) -> Slo {
    Slo {
        quantile: 0.95,
        limit_us,
    }
}

#[test]
fn windows_rotate_on_the_grid_and_count_slo_breaks() {
    let start = 5 * S;
    let mut w = WindowedLatency::new(start, Duration::from_secs(1), slo(800), 10);
    // Window 0: 100 requests, 5 slow (p95 at the boundary: 95th of 100 is still fast).
    for i in 0..100 {
        w.record(start + i * 5 * MS, if i < 95 { 100 } else { 5_000 });
    }
    assert_eq!(w.windows_total(), 0, "nothing closed yet");
    assert_eq!(w.current().latency.count, 100);
    // Window 1: 100 requests, 6 slow: over.
    for i in 0..100 {
        w.record(start + S + i * 5 * MS, if i < 94 { 100 } else { 5_000 });
    }
    assert_eq!(w.windows_total(), 1);
    let first = w.recent().next().unwrap().clone();
    assert_eq!((first.index, first.start_s), (0, 0.0));
    assert!(!first.over_slo);
    assert_eq!(first.slo_value_us, Some(100));
    assert_eq!(first.latency.p95_us, 100);
    assert_eq!(
        first.latency.max_us, 5_003,
        "HDR reports the bucket's top at 3 digits"
    );
    assert!(first.hist.is_some());
    // Closing window 1 happens at the first event of window 2 (or on advance).
    assert_eq!(w.advance(start + 2 * S), 1);
    let second = w.recent().last().unwrap();
    assert!(second.over_slo);
    assert_eq!((w.windows_over(), w.windows_total()), (1, 2));
    assert_eq!(w.cumulative().len(), 200);
    assert_eq!(w.cumulative_percentiles().count, 200);
    // Advancing within the same window closes nothing.
    assert_eq!(w.advance(start + 2 * S + 999 * MS), 0);
}

#[test]
fn failures_count_as_infinitely_slow() {
    let mut w = WindowedLatency::new(0, Duration::from_secs(1), slo(800), 10);
    for i in 0..90 {
        w.record(i * MS, 50);
    }
    for i in 0..10 {
        w.record_error(100 * MS + i * MS);
    }
    w.advance(S);
    let s = w.recent().last().unwrap();
    assert_eq!(s.latency.errors, 10);
    assert_eq!(s.latency.p95_us, 50, "answered requests alone look fine");
    assert_eq!(
        s.slo_value_us, None,
        "but the 95th of all falls on a failure"
    );
    assert!(s.over_slo);
    // A window of nothing but failures (service down) is over too.
    w.record_error(S + 1);
    w.advance(2 * S);
    assert!(w.recent().last().unwrap().over_slo);
    assert_eq!((w.windows_over(), w.windows_total()), (2, 2));
}

#[test]
fn empty_windows_are_skipped_not_counted() {
    let mut w = WindowedLatency::new(0, Duration::from_millis(100), slo(800), 5);
    w.record(10 * MS, 10);
    // A 10 s gap: 99 empty windows, only the last 5 kept.
    w.record(10 * S + 5 * MS, 10);
    assert_eq!(w.windows_total(), 1);
    assert_eq!(w.windows_empty(), 99);
    assert_eq!(w.recent().len(), 5);
    assert!(w.recent().all(WindowSummary::is_empty));
    assert_eq!(w.recent().last().unwrap().index, 99);
    assert_eq!(w.current().index, 100);
}

#[test]
fn the_slo_value_picks_the_right_rank() {
    let mut h = new_histogram();
    for v in 1..=20 {
        h.record(v * 100).unwrap();
    }
    // 95th of 20 is the 19th value.
    assert_eq!(slo_value(&h, 0, &slo(2_000)), (Some(1_900), false));
    assert_eq!(slo_value(&h, 0, &slo(1_800)), (Some(1_900), true));
    // One failure out of 21: rank ceil(19.95) = 20 -> the 20th answer.
    assert_eq!(slo_value(&h, 1, &slo(3_000)), (Some(2_000), false));
    // Two failures out of 22: rank 21 > 20 answers.
    assert_eq!(slo_value(&h, 2, &slo(3_000)), (None, true));
    assert_eq!(slo_value(&new_histogram(), 0, &slo(1)), (None, false));
}

#[test]
fn out_of_range_values_are_clamped_not_lost() {
    let mut w = WindowedLatency::new(0, Duration::from_secs(1), slo(800), 3);
    w.record(1, 0);
    w.record(2, u64::MAX);
    assert_eq!(w.cumulative().len(), 2);
    assert!(w.cumulative().max() >= HIST_HIGH_US);
}

#[test]
fn encoded_histograms_round_trip() {
    let mut h = new_histogram();
    for v in [1, 70, 70, 800, 12_345, 59_000_000] {
        h.record(v).unwrap();
    }
    let e = EncodedHistogram::encode(&h).unwrap();
    let json = serde_json::to_string(&e).unwrap();
    let back: EncodedHistogram = serde_json::from_str(&json).unwrap();
    let h2 = back.decode().unwrap();
    assert_eq!(h2.len(), 6);
    assert_eq!(h2.value_at_quantile(0.5), h.value_at_quantile(0.5));
    assert_eq!(h2.max(), h.max());
    assert!(EncodedHistogram("not base64!".into()).decode().is_err());
    assert!(EncodedHistogram("aGVsbG8=".into()).decode().is_err());
}

#[test]
fn fast_signal_covers_the_horizon_and_sees_stalls() {
    let mut r = RecentLatency::new(Duration::from_millis(50));
    assert_eq!(r.fast(0, std::iter::empty()), FastLatency::default());
    // 100 old samples, then 20 recent ones (19 fast, 1 slow).
    for i in 0..100 {
        r.record(i * MS, 5_000);
    }
    for i in 0..20 {
        r.record(200 * MS + i * MS, if i == 7 { 900 } else { 60 });
    }
    let f = r.fast(220 * MS, std::iter::empty());
    assert_eq!(f.samples, 20, "old samples dropped");
    assert_eq!((f.p50_us, f.p95_us, f.max_us), (60, 60, 900));
    // memcached stalls: nothing completes, but 30 requests wait, the oldest 40 ms.
    let waiting = (0..30).map(|i| 40_000 - i * 1_000);
    let f = r.fast(240 * MS, waiting);
    assert_eq!(f.samples, 50);
    assert!(f.p95_us >= 38_000, "{f:?}");
    assert_eq!(f.max_us, 40_000);
    // Failures at the top push p95 to "no answer".
    let mut r = RecentLatency::new(Duration::from_millis(50));
    r.record(MS, 50);
    r.record_error(2 * MS);
    let f = r.fast(3 * MS, std::iter::empty());
    assert_eq!((f.errors, f.p95_us, f.max_us), (1, NO_ANSWER_US, 50));
}
