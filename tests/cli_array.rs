#![allow(clippy::unwrap_used)]
//! Job arrays through the real CLI and daemon: 100 tasks from one submit, each with its index
//! in its environment, never more running than the cap; status and cancel by array and by
//! task; and `history` and `status ID` for what finished jobs used and asked for.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::time::{Duration, Instant};

use common::root_or_skip;
use daemon::{TestDaemon, text};
use serde_json::Value;

/// The tasks of array `id`, as `status --json` shows them.
fn tasks(d: &TestDaemon, id: u64) -> Vec<Value> {
    d.all()
        .into_iter()
        .filter(|j| j["task"]["array"].as_u64() == Some(id))
        .collect()
}

#[test]
fn an_array_of_100_runs_each_index_once_within_its_cap() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("array", "");
    let dir = d.dir.path().to_path_buf();
    std::fs::create_dir(dir.join("out")).unwrap();
    std::fs::create_dir(dir.join("running")).unwrap();
    // Each task marks itself running, counts who else is, and records its ids. With a cap of 1
    // on a node with 2 free cores, only the cap keeps a second task from running beside it.
    let script = format!(
        "mkdir {d}/running/$LOWSCHED_ARRAY_TASK_ID; ls {d}/running | wc -l >> {d}/counts; \
         echo $LOWSCHED_ARRAY_JOB_ID > {d}/out/$LOWSCHED_ARRAY_TASK_ID; sleep 0.1; \
         rmdir {d}/running/$LOWSCHED_ARRAY_TASK_ID",
        d = dir.display()
    );
    let id = d.submit(&["--array", "0-99%1", "-J", "arr", "--", "sh", "-c", &script]);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let all = tasks(&d, id);
        assert_eq!(all.len(), 100);
        if all.iter().all(|t| t["state"] == "succeeded") {
            break;
        }
        assert!(
            all.iter().all(
                |t| ["pending", "running", "succeeded"].contains(&t["state"].as_str().unwrap())
            ),
            "{all:#?}"
        );
        assert!(Instant::now() < deadline, "array did not finish: {all:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..100 {
        let got = std::fs::read_to_string(dir.join(format!("out/{i}"))).unwrap();
        assert_eq!(got.trim(), id.to_string(), "task {i}");
    }
    let counts = std::fs::read_to_string(dir.join("counts")).unwrap();
    let counts: Vec<u32> = counts.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(counts.len(), 100);
    assert!(
        counts.iter().all(|&n| n == 1),
        "more than 1 at once: {counts:?}"
    );

    // Shown as ARRAY_INDEX; the array's id selects every task, ARRAY_INDEX one.
    let out = d.cli(&["status", &id.to_string(), "--format=id", "--noheader"]);
    let ids = text(&out.stdout);
    assert_eq!(ids.lines().count(), 100, "{ids}");
    assert!(ids.contains(&format!("{id}_0\n")) && ids.contains(&format!("{id}_99")));
    let out = d.cli(&["status", &format!("{id}_7")]);
    let detail = text(&out.stdout);
    assert!(
        detail.contains(&format!("array:     task {id}_7")),
        "{detail}"
    );
    let out = d.cli(&["status", "--json", &format!("{id}_7")]);
    let one: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(one["task"]["index"], 7);
}

#[test]
fn cancel_by_array_and_by_task() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("arraycancel", "");
    let id = d.submit(&["--array", "1,3,5-7%2", "--", "sleep", "600"]);
    assert_eq!(tasks(&d, id).len(), 5);
    let out = d.cli(&["cancel", &format!("{id}_5")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let state = |index: u64| {
        tasks(&d, id)
            .into_iter()
            .find(|t| t["task"]["index"] == index)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state(5), "cancelled");
    assert_ne!(state(6), "cancelled");
    // At most 2 of the array run, though the node has room for 2 and the cap allows 2.
    let running = tasks(&d, id)
        .iter()
        .filter(|t| t["state"] == "running")
        .count();
    assert!(running <= 2, "{running}");
    let out = d.cli(&["cancel", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // (`status ID` of an array's id lists its tasks, so poll the whole list.)
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tasks(&d, id).iter().all(|t| t["state"] == "cancelled") {
        assert!(Instant::now() < deadline, "{:#?}", tasks(&d, id));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = d.cli(&["cancel", &format!("{id}_4")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("no job {id}_4")),
        "{}",
        text(&out.stderr)
    );
    // Only the daemon makes tasks: a submit claiming to be one (to slip into another array's
    // cap or satisfy a dependency on it) is refused.
    let forged = format!(
        "{{\"v\":1,\"verb\":\"submit\",\"job\":{{\"name\":\"x\",\"argv\":[\"true\"],\
         \"task\":{{\"array\":{id},\"index\":99}}}}}}\n"
    );
    let answer = daemon::exchange(&mut d.raw(), forged.as_bytes()).unwrap();
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer.to_string().contains("task is set by the daemon"),
        "{answer}"
    );
    assert_eq!(tasks(&d, id).len(), 5);
    // A bad array is refused at the client, naming the value.
    let out = d.cli(&["submit", "--array", "5-1", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("5-1"), "{}", text(&out.stderr));
}

#[test]
fn history_and_detail_show_use_requests_and_outputs() {
    if root_or_skip() {
        return;
    }
    let mut d = TestDaemon::start("history", "");
    let out_path = d.dir.path().join("busy.out");
    let out_s = out_path.to_str().unwrap();
    let busy = d.submit(&[
        "-o",
        out_s,
        "--memory",
        "64M",
        "-t",
        "10:00",
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done",
    ]);
    assert_eq!(d.wait_code(busy), 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.status(busy)["usage"].is_null() {
        assert!(Instant::now() < deadline, "{:#}", d.status(busy));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = d.cli(&[
        "history",
        "--parsable",
        "--noheader",
        "--format",
        "id,state,cputime,maxmem,timelimit",
        &busy.to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    let fields: Vec<&str> = line.trim().split('|').collect();
    assert_eq!(
        fields[..2],
        [busy.to_string().as_str(), "succeeded"],
        "{line}"
    );
    assert_ne!(
        fields[2], "n/a",
        "the unified group reports CPU time: {line}"
    );
    assert_ne!(fields[2], "00:00:00.000", "{line}");
    let pure_v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.contains("memory"));
    if !pure_v2 {
        assert_eq!(fields[3], "n/a", "{line}");
    }
    assert_eq!(fields[4], "00:10:00", "{line}");
    // Only finished jobs: a running one is not history.
    let running = d.submit(&["--", "sleep", "600"]);
    d.wait_state(running, "running");
    let out = d.cli(&["history", "--format=id", "--noheader"]);
    assert_eq!(text(&out.stdout).trim(), busy.to_string());

    // What the cgroup reported is journaled: it outlives the daemon.
    d.kill9();
    d.start_again();
    let usage = &d.status(busy)["usage"];
    assert!(usage["cpu_us"].as_u64().is_some_and(|us| us > 0), "{usage}");

    let out = d.cli(&["status", &busy.to_string()]);
    let detail = text(&out.stdout);
    for want in [
        "cores:     - (asked 1)".to_string(),
        "memory:    64M".to_string(),
        format!("stdout:    {out_s}"),
        format!("stderr:    jobs/{busy}/stderr in the daemon's state dir"),
        "limit:     00:10:00".to_string(),
        "cpu time:  ".to_string(),
    ] {
        assert!(detail.contains(&want), "{want}: {detail}");
    }
}
