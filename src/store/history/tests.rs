use super::*;

fn window_us(values: &[u64]) -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
    for v in values {
        h.record(*v).unwrap();
    }
    h
}

fn win(t: f64, failed: u64) -> ServiceWindow {
    ServiceWindow {
        t,
        dur: 1.0,
        qps: Some(1000.0),
        service_cores: Some(1),
        batch_cores: Some(1),
        slo_us: Some(100),
        limit_us: Some(800),
        over: false,
        answered: 3,
        failed,
    }
}

#[test]
fn values_are_logged_in_nanoseconds_with_failures_at_the_top() {
    let h = to_ns(&window_us(&[70, 80, 900]), 1);
    assert_eq!(h.len(), 4);
    assert!(h.equivalent(h.min(), 70_000));
    assert!(h.equivalent(h.value_at_quantile(0.75), 900_000));
    assert!(h.equivalent(h.max(), FAILED_NS));
}

/// Two daemon runs (two writers on one state dir) and a size rotation in the second: every
/// window comes back through the hdrhistogram crate's reader, in order, with its values.
#[test]
fn round_trips_over_a_restart_and_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_800_000_000.0;
    let mut first = HistoryWriter::new(dir.path(), Rotation::default(), "run 1");
    for i in 0..3 {
        first
            .append(&win(t0 + f64::from(i), 0), &window_us(&[100 + i as u64]))
            .unwrap();
    }
    drop(first);
    let small = Rotation {
        max_bytes: 400,
        max_age: Duration::ZERO,
        keep: 0,
    };
    let mut second = HistoryWriter::new(dir.path(), small, "run 2");
    for i in 10..16 {
        second
            .append(&win(t0 + f64::from(i), 0), &window_us(&[100 + i as u64]))
            .unwrap();
    }
    drop(second);
    let files = hlog_files(&dir.path().join(HISTORY_DIR)).unwrap();
    assert!(files.len() >= 3, "a restart and a rotation: {files:?}");
    let ivs = read_intervals(&dir.path().join(HISTORY_DIR), None, None).unwrap();
    let starts: Vec<f64> = ivs.iter().map(|i| i.start_unix_s - t0).collect();
    assert_eq!(
        starts,
        vec![0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    );
    for (iv, want) in ivs
        .iter()
        .zip([100, 101, 102, 110, 111, 112, 113, 114, 115])
    {
        assert!(iv.hist_ns.equivalent(iv.hist_ns.max(), want * 1000));
        assert_eq!(iv.hist_ns.len(), 1);
    }
    let svc = read_service(&dir.path().join(HISTORY_DIR), Some(t0 + 11.5), None).unwrap();
    assert_eq!(svc.len(), 5);
    assert_eq!(svc[0].t, t0 + 11.0);
}

#[test]
fn age_rotation_and_keep_prune_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let r = Rotation {
        max_bytes: 0,
        max_age: Duration::from_secs(10),
        keep: 2,
    };
    let mut w = HistoryWriter::new(dir.path(), r, "age");
    let t0 = 1_800_000_000.0;
    for i in 0..35 {
        w.append(&win(t0 + f64::from(i), 0), &window_us(&[50]))
            .unwrap();
    }
    let hdir = dir.path().join(HISTORY_DIR);
    assert_eq!(hlog_files(&hdir).unwrap().len(), 2);
    let ivs = read_intervals(&hdir, None, None).unwrap();
    assert_eq!(ivs.first().map(|i| i.start_unix_s - t0), Some(20.0));
    assert_eq!(ivs.len(), 15);
    assert_eq!(read_service(&hdir, None, None).unwrap().len(), 15);
}

#[test]
fn export_spans_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = HistoryWriter::new(dir.path(), Rotation::default(), "x");
    let t0 = 1_800_000_000.0;
    for i in 0..10 {
        w.append(&win(t0 + f64::from(i), 0), &window_us(&[200]))
            .unwrap();
    }
    let hdir = dir.path().join(HISTORY_DIR);
    let span = read_intervals(&hdir, Some(t0 + 5.0), Some(t0 + 8.0)).unwrap();
    assert_eq!(span.len(), 3);
    let out = dir.path().join("span.hlog");
    let mut f = File::create(&out).unwrap();
    write_intervals(&mut f, None, "span", &span).unwrap();
    drop(f);
    let back = read_hlog(&out).unwrap();
    let starts: Vec<f64> = back.iter().map(|i| i.start_unix_s - t0).collect();
    assert_eq!(starts, vec![5.0, 6.0, 7.0]);
    let text = fs::read_to_string(&out).unwrap();
    assert!(text.contains("#values in nanoseconds"));
    assert!(!text.contains("Tag="));
}

#[test]
fn a_missing_history_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        read_intervals(&dir.path().join("nope"), None, None)
            .unwrap()
            .is_empty()
    );
    assert!(
        read_service(&dir.path().join("nope"), None, None)
            .unwrap()
            .is_empty()
    );
}

/// SIGHUP: after a reopen the next window goes to a new pair of files, even when the old ones
/// were renamed away, and the history still reads back whole.
#[test]
fn reopen_starts_new_files() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_800_000_000.0;
    let mut w = HistoryWriter::new(dir.path(), Rotation::default(), "reopen");
    w.append(&win(t0, 0), &window_us(&[100])).unwrap();
    let hdir = dir.path().join(HISTORY_DIR);
    let before = hlog_files(&hdir).unwrap();
    assert_eq!(before.len(), 1);
    w.reopen();
    w.append(&win(t0 + 1.0, 0), &window_us(&[200])).unwrap();
    let after = hlog_files(&hdir).unwrap();
    assert_eq!(after.len(), 2, "{after:?}");
    let ivs = read_intervals(&hdir, None, None).unwrap();
    assert_eq!(ivs.len(), 2);
}
