#![allow(clippy::unwrap_used)]
//! The daemon end to end, as root: submit throughput over its Unix socket, and the time from
//! submitting 100 `true` jobs to all of them finished.
//!
//! `cargo bench --bench daemon` (root). Each figure is the median of `LOWSCHED_BENCH_RUNS`
//! runs (default 5), each on a fresh daemon (release build, temp state dir on this disk, its
//! own cgroup root, no protected service, two cores for batch).
//!
//! What is measured:
//! - **submit throughput**: acknowledged `submit` requests per second. Each client keeps
//!   `WINDOW` requests in flight on one connection (pipelining); the daemon journals and
//!   fdatasyncs each batch of requests that arrived together before acknowledging any of them,
//!   so every acknowledged job is durable. The jobs stay pending: a first job takes every core
//!   (`--cpus 2`), so this measures accepting jobs, not running them. Also shown: one client
//!   without pipelining (one fdatasync per submit).
//! - **100 `true` jobs**: from the first submit until the last of them has finished (its exit
//!   recorded by the daemon), through the library client (submits pipelined, then `wait`s) and
//!   through the CLI (100 `lowsched submit` processes, then 100 `lowsched wait`).
//!
//! `cargo bench --bench daemon -- submit` (or `-- jobs`) runs one part. Under `cargo test` (no
//! `--bench` argument) one short run of each checks that it works.

#[path = "../tests/common/daemon.rs"]
mod daemon;

use std::time::{Duration, Instant};

use daemon::TestDaemon;
use lowsched::api::client::Client;
use lowsched::api::protocol::{Reply, Request, Submit, Wait};
use lowsched::model::job::{JobId, JobSpec};

/// Requests in flight per client.
const WINDOW: usize = 64;

fn submit_req(spec: &JobSpec) -> Request {
    Request::Submit(Box::new(Submit {
        job: spec.clone(),
        user: None,
    }))
}

/// One client: `n` submits with `window` in flight; returns the ids acknowledged.
fn client_submits(socket: &std::path::Path, n: usize, window: usize) -> Vec<JobId> {
    let mut c = Client::connect(socket).unwrap();
    let spec = JobSpec::new(vec!["true".into()]);
    let req = submit_req(&spec);
    let mut ids = Vec::with_capacity(n);
    let mut sent = 0;
    while sent < window.min(n) {
        c.send(&req).unwrap();
        sent += 1;
    }
    while ids.len() < n {
        match c.recv().unwrap() {
            Reply::Submitted { id } => ids.push(id),
            other => panic!("unexpected answer {other:?}"),
        }
        if sent < n {
            c.send(&req).unwrap();
            sent += 1;
        }
    }
    ids
}

/// Acknowledged submits per second with `clients` clients, `per_client` submits each.
fn throughput(clients: usize, per_client: usize, window: usize) -> f64 {
    let d = TestDaemon::start("bench-submit", "");
    // Take every core so the submitted jobs stay pending.
    d.submit(&["--cpus", "2", "--", "sleep", "3600"]);
    let socket = d.socket.clone();
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || client_submits(&socket, per_client, window))
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t.join().unwrap().len();
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(total, clients * per_client);
    total as f64 / secs
}

/// 100 `true` jobs through the library client: pipelined submits, then pipelined waits.
fn hundred_jobs_client(n: usize) -> Duration {
    let d = TestDaemon::start("bench-100", "");
    let start = Instant::now();
    let ids = client_submits(&d.socket, n, n);
    let mut c = Client::connect(&d.socket).unwrap();
    for id in &ids {
        c.send(&Request::Wait(Wait {
            id: *id,
            timeout_ms: 60_000,
        }))
        .unwrap();
    }
    for _ in &ids {
        match c.recv().unwrap() {
            Reply::Waited { done: true, job } => {
                assert_eq!(job.exit_code, Some(0), "{job:?}")
            }
            other => panic!("job not done: {other:?}"),
        }
    }
    start.elapsed()
}

/// 100 `true` jobs through the CLI: `lowsched submit` ×100, then `lowsched wait` ×100.
fn hundred_jobs_cli(n: usize) -> Duration {
    let d = TestDaemon::start("bench-100cli", "");
    let start = Instant::now();
    let ids: Vec<u64> = (0..n).map(|_| d.submit(&["--", "true"])).collect();
    for id in ids {
        assert_eq!(d.wait_code(id), 0);
    }
    start.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("daemon bench: needs root (the daemon creates cgroups); skipped");
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let runs = std::env::var("LOWSCHED_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 5 } else { 1 });
    let per_client = if full { 20_000 } else { 500 };
    let jobs = if full { 100 } else { 10 };
    // `cargo bench --bench daemon -- submit` (or `-- jobs`) runs only that part.
    let only = |part: &str| {
        let filters: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with("--"))
            .collect();
        filters.is_empty() || filters.iter().any(|f| f == part)
    };
    println!("daemon bench: {runs} runs each, median (all runs)");

    for (clients, window) in [(1, 1), (1, WINDOW), (4, WINDOW)] {
        if !only("submit") {
            break;
        }
        let n = if window == 1 {
            per_client / 10
        } else {
            per_client / clients
        };
        let all: Vec<f64> = (0..runs).map(|_| throughput(clients, n, window)).collect();
        println!(
            "submit throughput, {clients} client(s), {window} in flight, {} submits: {:.0}/s ({})",
            n * clients,
            median(all.clone()),
            all.iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for (what, f) in [
        (
            "library client",
            hundred_jobs_client as fn(usize) -> Duration,
        ),
        ("CLI", hundred_jobs_cli),
    ] {
        if !only("jobs") {
            break;
        }
        let all: Vec<f64> = (0..runs).map(|_| f(jobs).as_secs_f64() * 1e3).collect();
        println!(
            "{jobs} `true` jobs, submit to all finished, {what}: {:.0} ms ({})",
            median(all.clone()),
            all.iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}
