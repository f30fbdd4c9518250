//! Event log tests: line formats, the ring, file modes, reopening.

use super::*;

#[test]
fn iso_dates() {
    assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000000+00:00");
    let t = UNIX_EPOCH + Duration::from_micros(1_795_393_561_123_456);
    assert_eq!(iso8601(t), "2026-11-23T00:26:01.123456+00:00");
    let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
    assert!(iso8601(leap).starts_with("2000-02-29T00:00:00"));
}

#[test]
fn both_files_in_the_course_format_and_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path()).unwrap();
    let cores: CpuSet = "2-3".parse().unwrap();
    log.record(Event::new(
        "blackscholes",
        Some(JobId(4)),
        Kind::Start { cores, threads: 2 },
    ));
    log.record(
        Event::new(
            "memcached",
            None,
            Kind::UpdateCores {
                cores: "0-1".parse().unwrap(),
            },
        )
        .because("p95 900us > 800us"),
    );
    log.record(Event::new("blackscholes", Some(JobId(4)), Kind::Pause));
    log.record(Event::new("blackscholes", Some(JobId(4)), Kind::Unpause));
    log.record(Event::new(
        "my job",
        Some(JobId(5)),
        Kind::Custom {
            text: "resized".into(),
        },
    ));
    log.record(Event::new("blackscholes", Some(JobId(4)), Kind::End));
    log.close();
    let text = std::fs::read_to_string(dir.path().join(EVENTS_LOG)).unwrap();
    let rest: Vec<String> = text
        .lines()
        .map(|l| {
            let (time, rest) = l.split_once(' ').unwrap();
            assert!(time.len() == 32 && time.ends_with("+00:00"), "{time}");
            rest.to_string()
        })
        .collect();
    assert_eq!(
        rest,
        [
            "start scheduler",
            "start blackscholes [2,3] 2",
            "update_cores memcached [0,1]",
            "pause blackscholes",
            "unpause blackscholes",
            "custom my_job resized",
            "end blackscholes",
            "end scheduler",
        ]
    );
    let jsonl = std::fs::read_to_string(dir.path().join(EVENTS_JSONL)).unwrap();
    let second: Value = serde_json::from_str(jsonl.lines().nth(2).unwrap()).unwrap();
    assert_eq!(second["reason"], "p95 900us > 800us");
    assert_eq!(second["args"][0], "[0,1]");
    let first: Value = serde_json::from_str(jsonl.lines().nth(1).unwrap()).unwrap();
    assert_eq!(first["id"], 4);
}

#[test]
fn files_are_for_root_and_the_group_and_hold_no_escape_codes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(EVENTS_LOG);
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = EventLog::open_with_group(dir.path(), Some(4242)).unwrap();
    log.record(
        Event::new(
            "\u{1b}[2Jjob",
            None,
            Kind::Custom {
                text: "\u{1b}]0;x\u{7}".into(),
            },
        )
        .because("\u{1b}c"),
    );
    log.close();
    for name in [EVENTS_LOG, EVENTS_JSONL] {
        let meta = std::fs::metadata(dir.path().join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640, "{name}");
        if nix::unistd::geteuid().is_root() {
            assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), 4242, "{name}");
        }
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{name}: {text:?}"
        );
    }
}

#[test]
fn the_ring_is_bounded_in_bytes() {
    let log = EventLog::in_memory();
    let big = "r".repeat(12 * 1024);
    for i in 0..2_000 {
        log.record(Event::new(format!("j{i}"), None, Kind::End).because(big.clone()));
    }
    let inner = log.lock();
    assert!(inner.ring_bytes <= RING_BYTES, "{}", inner.ring_bytes);
    assert!(inner.ring.len() < 2_000 && inner.ring.len() > 100);
    let sum: usize = inner.ring.iter().map(EventRecord::weight).sum();
    assert_eq!(sum, inner.ring_bytes);
    assert_eq!(inner.ring.back().unwrap().job, "j1999");
}

#[test]
fn since_returns_new_events_and_waits_for_them() {
    let log = std::sync::Arc::new(EventLog::in_memory());
    log.record(Event::new("a", None, Kind::End));
    let (got, last) = log.since(0, 10, Duration::ZERO);
    assert_eq!((got.len(), last), (1, 1));
    let (got, last) = log.since(1, 10, Duration::from_millis(10));
    assert_eq!((got.len(), last), (0, 1));
    let l2 = log.clone();
    let t = std::thread::spawn(move || l2.since(1, 10, Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(20));
    log.record(Event::new("b", None, Kind::End));
    let (got, last) = t.join().unwrap();
    assert_eq!(got[0].job, "b");
    assert_eq!(last, 2);
}

#[test]
fn reopen_after_a_rename_writes_to_new_files() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path()).unwrap();
    let (path, jpath) = (dir.path().join(EVENTS_LOG), dir.path().join(EVENTS_JSONL));
    let old = dir.path().join("events.log.1");
    std::fs::rename(&path, &old).unwrap();
    std::fs::rename(&jpath, dir.path().join("events.jsonl.1")).unwrap();
    log.record(Event::new("before", None, Kind::End));
    log.reopen().unwrap();
    log.record(Event::new("after", None, Kind::End));
    let new = std::fs::read_to_string(&path).unwrap();
    let rotated = std::fs::read_to_string(&old).unwrap();
    assert!(new.contains("after") && !new.contains("before"), "{new}");
    assert!(
        rotated.contains("before") && !rotated.contains("after"),
        "{rotated}"
    );
    assert!(std::fs::read_to_string(&jpath).unwrap().contains("after"));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, LOG_MODE);
    EventLog::in_memory().reopen().unwrap();
}
