#![allow(clippy::unwrap_used)]
//! Issue 15, durability across crashes: `kill -9` of the daemon at 20 random points while it
//! runs 100 short jobs. After the last restart every job has ended exactly once: each job's own
//! marks show it started and ended once (never run twice, never lost), `status` says it
//! succeeded, and the journal holds exactly one end record for it. The seed of the random
//! points is printed, so a failure can be replayed (`LOWSCHED_CRASH_SEED`).

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::root_or_skip;
use daemon::{LONG, TestDaemon, lines};

const JOBS: u64 = 100;
const KILLS: usize = 20;

/// xorshift64: enough randomness for kill points, without a crate.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let seed = std::env::var("LOWSCHED_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("kill points: LOWSCHED_CRASH_SEED={seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// How often each job logged `start` and `end` in the marker file.
fn marks(marker: &Path) -> BTreeMap<(String, u64), usize> {
    let mut out = BTreeMap::new();
    for l in lines(marker) {
        let (what, id) = l.split_once(' ').unwrap();
        *out.entry((what.to_string(), id.parse().unwrap()))
            .or_insert(0) += 1;
    }
    out
}

/// End records per job in the journal file (lines `<crc> <json>`).
fn journal_ends(journal: &Path) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for l in lines(journal) {
        let Some((_, json)) = l.split_once(' ') else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        if v["r"] == "ended" {
            *out.entry(v["id"].as_u64().unwrap()).or_insert(0) += 1;
        }
    }
    out
}

fn terminal(state: &serde_json::Value) -> bool {
    ["succeeded", "failed", "cancelled", "unschedulable"]
        .iter()
        .any(|s| state == *s)
}

#[test]
fn kill9_at_random_points_of_a_100_job_run_ends_every_job_exactly_once() {
    if root_or_skip() {
        return;
    }
    let mut rng = Rng::seeded();
    let mut d = TestDaemon::start("crash", "");
    let marker = d.dir.path().join("marks");
    let m = marker.display();
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        // 50-300 ms each: about 10 s of work on the daemon's two cores, the span of the kills.
        let ms = 50 + rng.below(250);
        let cmd = format!(
            "echo start $LOWSCHED_JOB_ID >> {m}; sleep 0.{ms:03}; echo end $LOWSCHED_JOB_ID >> {m}"
        );
        ids.push(d.submit(&["--name", "crash", "--", "sh", "-c", &cmd]));
    }
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(20 + rng.below(400)));
        d.kill9();
        d.start_again();
    }
    let deadline = Instant::now() + LONG;
    let all = loop {
        let all = d.all();
        let done = all.iter().filter(|s| terminal(&s["state"])).count();
        if done == ids.len() {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {} jobs ended within {LONG:?}",
            ids.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    d.stop();
    for s in &all {
        assert_eq!(s["state"], "succeeded", "{s:#}");
    }
    let m = marks(&marker);
    let ends = journal_ends(&d.state.join("journal"));
    for id in &ids {
        assert_eq!(m.get(&("start".into(), *id)), Some(&1), "start of {id}");
        assert_eq!(m.get(&("end".into(), *id)), Some(&1), "end of {id}");
        assert_eq!(ends.get(id), Some(&1), "end records of job {id}");
    }
    assert_eq!(m.len(), 2 * ids.len(), "marks of unknown jobs: {m:?}");
}
