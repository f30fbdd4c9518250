#![allow(clippy::unwrap_used)]
//! Issue 15, bounded memory: 1000 jobs with a 60 KB argv each, submitted and cancelled, leave
//! the daemon's memory. Finished jobs beyond `[journal] keep_finished` leave the job table and
//! the freed memory goes back to the kernel, so the daemon's resident size comes back near
//! where it started (a generous bound: this asserts that the memory is returned, not how fast).

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::time::{Duration, Instant};

use common::root_or_skip;
use daemon::{LONG, TestDaemon};
use lowsched::api::client::Client;
use lowsched::api::protocol::{Reply, Request, Submit, Target};
use lowsched::model::job::JobSpec;

const JOBS: usize = 1000;
const ARG: usize = 60_000;
/// How far above its start the daemon may stay once the jobs are gone (the jobs took > 50 MB).
const SLACK_KB: u64 = 25 * 1024;

fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_thousand_large_jobs_submitted_and_cancelled_leave_the_daemons_memory() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("memory", "[journal]\nkeep_finished = 10\n");
    let pid = d.pid().as_raw();
    let base = rss_kb(pid);
    // `sh -c 'sleep 1000' <60 KB>`: the big argument is the shell's $0. Two run, the rest wait.
    let spec = JobSpec::new(vec![
        "sh".into(),
        "-c".into(),
        "sleep 1000".into(),
        "x".repeat(ARG),
    ]);
    let t0 = Instant::now();
    // Four clients, so that their submits share the journal's syncs.
    let submitters: Vec<_> = (0..4)
        .map(|_| {
            let (socket, spec) = (d.socket.clone(), spec.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).unwrap();
                c.set_timeout(Some(LONG)).unwrap();
                let mut ids = Vec::new();
                for _ in 0..JOBS / 4 {
                    let req = Request::Submit(Box::new(Submit {
                        job: spec.clone(),
                        user: None,
                    }));
                    match c.call(&req).unwrap() {
                        Reply::Submitted { id } => ids.push(id),
                        other => panic!("submit: {other:?}"),
                    }
                }
                ids
            })
        })
        .collect();
    let ids: Vec<_> = submitters
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(ids.len(), JOBS);
    eprintln!("1000 submits done after {:?}", t0.elapsed());
    let peak = rss_kb(pid);
    assert!(
        peak > base + 40 * 1024,
        "1000 jobs of 60 KB did not show in the daemon's memory ({base} -> {peak} kB)"
    );
    let mut c = Client::connect(&d.socket).unwrap();
    c.set_timeout(Some(LONG)).unwrap();
    for id in &ids {
        c.call(&Request::Cancel(Target { id: *id })).unwrap();
    }
    eprintln!("1000 cancels done after {:?}", t0.elapsed());
    assert!(
        d.all().len() <= 10,
        "finished jobs beyond keep_finished stayed in the table"
    );
    // The trim runs with the daemon's periodic work (every 5 s): wait for it, generously.
    let deadline = Instant::now() + LONG;
    let mut now = rss_kb(pid);
    while now > base + SLACK_KB && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        now = rss_kb(pid);
    }
    eprintln!("memory back after {:?}", t0.elapsed());
    assert!(
        now <= base + SLACK_KB,
        "the daemon kept its memory: {base} kB at start, {peak} kB with the jobs, {now} kB after"
    );
}
