use std::path::Path;

use super::load::{Phase, Sources, load};

fn ev(t: f64, event: &str, job: &str, id: Option<u64>, args: &[&str], reason: &str) -> String {
    let mut v = serde_json::json!({
        "time_ms": (t * 1e3) as u64, "event": event, "job": job, "reason": reason,
        "args": args,
    });
    if let Some(id) = id {
        v["id"] = id.into();
    }
    v.to_string()
}

fn run_of(lines: &[String], since: Option<f64>, until: Option<f64>) -> super::RunData {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    load(&Sources {
        events: &events,
        history: Path::new("/nonexistent"),
        since,
        until,
        slo_us: None,
    })
    .unwrap()
}

#[test]
fn a_jobs_stretches_follow_its_events() {
    let lines = [
        ev(100.0, "start", "scheduler", None, &[], ""),
        ev(101.0, "start", "a", Some(7), &["[1,2]", "2"], "fits"),
        ev(103.0, "update_cores", "a", Some(7), &["[2]"], "cores taken"),
        ev(104.0, "pause", "a", Some(7), &[], "no room"),
        ev(106.0, "unpause", "a", Some(7), &[], "free again"),
        ev(108.0, "end", "a", Some(7), &[], "failed: exit 1"),
        ev(
            102.0,
            "update_cores",
            "memcached",
            None,
            &["[0,1]"],
            "grow rung 0->1: busy",
        ),
        ev(
            107.0,
            "update_cores",
            "memcached",
            None,
            &["[0]"],
            "shrink rung 1->0: calm",
        ),
        ev(110.0, "end", "scheduler", None, &[], ""),
    ];
    let d = run_of(&lines, None, None);
    assert_eq!((d.from, d.to), (100.0, 110.0));
    let a = &d.jobs[0];
    assert_eq!(
        (a.id, a.name.as_str(), a.final_state.as_str()),
        (7, "a", "failed")
    );
    let s: Vec<(f64, f64, Phase, usize)> = a
        .stretches
        .iter()
        .map(|s| (s.from, s.to, s.phase, s.cores))
        .collect();
    assert_eq!(
        s,
        vec![
            (101.0, 103.0, Phase::Running, 2),
            (103.0, 104.0, Phase::Running, 1),
            (104.0, 106.0, Phase::Paused, 1),
            (106.0, 108.0, Phase::Running, 1),
        ]
    );
    assert_eq!(d.service.as_deref(), Some("memcached"));
    assert_eq!(d.service_cores, vec![(102.0, 2), (107.0, 1)]);
    let kinds: Vec<&str> = d.decisions.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, vec!["grow", "shrink"]);
    let text = super::summary(&d);
    assert!(text.contains("1 jobs (1 failed)"), "{text}");
    assert!(text.contains("1 grows, 1 shrinks"), "{text}");
    assert!(text.contains("no service was monitored") || text.contains("no latency history"));
}

#[test]
fn a_span_clips_stretches_and_keeps_the_cores_in_force() {
    let lines = [
        ev(100.0, "update_cores", "memcached", None, &["[0]"], "placed"),
        ev(101.0, "start", "a", Some(1), &["[1]", "1"], "fits"),
        ev(120.0, "end", "a", Some(1), &[], "succeeded"),
        ev(121.0, "start", "b", Some(2), &["[1]", "1"], "fits"),
    ];
    let d = run_of(&lines, Some(110.0), Some(130.0));
    assert_eq!(d.service_cores, vec![(110.0, 1)]);
    assert_eq!(d.jobs[0].stretches[0].from, 110.0);
    assert_eq!(d.jobs[1].final_state, "running");
    assert_eq!(d.jobs[1].stretches[0].to, 130.0);
}
