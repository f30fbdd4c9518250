#![allow(clippy::unwrap_used)]
//! Whole-system figures for the sensing stack (not criterion: each is a run of seconds):
//!
//! 1. sampler overhead at the default period, as % of a core per sampler thread;
//! 2. the period and smoothing choice: noise of a core's utilization at several periods under a
//!    steady 50 % load;
//! 3. the load generator's own CPU per 10 k QPS (and p95) at 10 k, 20 k, 50 k QPS, and the send
//!    tick's effect at 50 k;
//! 4. the probe's own CPU at its default rate.
//!
//! Run as root with memcached and stress-ng installed:
//! `cargo bench --bench sensing_overhead` (or `... -- sampler`, `-- period`, `-- loadgen`, `-- probe`).
//! Under `cargo test` it only prints that it did not run (the runs take minutes).

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lowsched::cpuset::CpuSet;
use lowsched::loadgen::{LoadgenConfig, Schedule, run_loadgen};
use lowsched::sampler::{SamplerConfig, SamplerSet, ServiceSource};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
    (m, var.sqrt())
}

fn sampler_overhead() {
    println!(
        "## sampler overhead at the default period ({:?})",
        lowsched::sampler::DEFAULT_PERIOD
    );
    let sources = [
        ("no service", ServiceSource::None),
        (
            "service = v1 cgroup (root cpuacct)",
            ServiceSource::Cgroup("/sys/fs/cgroup/cpuacct".into()),
        ),
        (
            "service = pid fallback (this process)",
            ServiceSource::Pid(std::process::id()),
        ),
    ];
    for (what, src) in sources {
        // Process CPU time counts the samplers and any io_uring worker threads the kernel
        // starts for them; this bench's main thread only sleeps meanwhile.
        let mut per_sampler = Vec::new();
        let mut busiest = Vec::new();
        for _ in 0..3 {
            let set = SamplerSet::start(SamplerConfig {
                service: src.clone(),
                ..SamplerConfig::default()
            })
            .unwrap();
            std::thread::sleep(Duration::from_millis(200));
            let n = set.cpus().len() as f64;
            let c0 = set.costs();
            let p0 = lowsched::sys::clock::process_cpu_ns();
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs(10));
            let p1 = lowsched::sys::clock::process_cpu_ns();
            let c1 = set.costs();
            let wall = t0.elapsed().as_nanos() as f64;
            per_sampler.push((p1 - p0) as f64 / wall * 100.0 / n);
            busiest.push(
                c0.iter()
                    .zip(&c1)
                    .map(|(a, b)| (b.cpu_ns - a.cpu_ns) as f64 / wall * 100.0)
                    .fold(0.0, f64::max),
            );
            set.stop();
        }
        println!(
            "{what}: median {:.3} % of a core per sampler (process CPU / samplers), busiest sampler thread alone {:.3} % (3 runs x 10 s)",
            median(per_sampler),
            median(busiest)
        );
    }
}

fn period_noise() {
    println!(
        "## utilization noise on CPU 1 under `stress-ng --cpu 1 --cpu-load 50` (5 s per period)"
    );
    println!("(the machine is shared: other load on CPU 1 raises the mean; compare the spreads)");
    println!(
        "{:>9} {:>10} {:>9} {:>13} {:>11}",
        "period", "raw mean", "raw sd", "smoothed mean", "smoothed sd"
    );
    let mut hog = Command::new("taskset")
        .args([
            "-c",
            "1",
            "stress-ng",
            "--cpu",
            "1",
            "--cpu-load",
            "50",
            "--timeout",
            "120",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    for ms in [10u64, 20, 50, 100, 200] {
        let mut cores = CpuSet::new();
        cores.insert(1);
        let set = SamplerSet::start(SamplerConfig {
            cores: Some(cores),
            period: Duration::from_millis(ms),
            ..SamplerConfig::default()
        })
        .unwrap();
        let (mut raw, mut smooth, mut last_at) = (Vec::new(), Vec::new(), 0);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            let c = set.core(1).unwrap();
            if c.at_ns != last_at {
                last_at = c.at_ns;
                if let (Some(u), Some(s)) = (c.utilization, c.smoothed) {
                    if t0.elapsed() > Duration::from_millis(500) {
                        raw.push(u);
                        smooth.push(s);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(ms / 4).max(Duration::from_millis(2)));
        }
        let (rm, rs) = mean_sd(&raw);
        let (sm, ss) = mean_sd(&smooth);
        println!(
            "{:>7} ms {:>10.3} {:>9.3} {:>13.3} {:>11.3}",
            ms, rm, rs, sm, ss
        );
        set.stop();
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hog.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = hog.wait();
}

struct Memcached(Child, Option<std::path::PathBuf>);

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(g) = &self.1 {
            std::thread::sleep(Duration::from_millis(100));
            let _ = std::fs::remove_dir(g);
        }
    }
}

/// memcached pinned to CPU 0, in a heavily weighted v1 CPU group when this host has one, so
/// the shared machine's other load does not throttle it (the figures are the load
/// generator's, not memcached's).
fn start_memcached(port: u16) -> Memcached {
    let v1 = std::path::Path::new("/sys/fs/cgroup/cpu");
    let group = v1.join(format!("lowsched-sensing-bench-{}", std::process::id()));
    let group = (v1.join("cpu.shares").exists()
        && std::fs::create_dir(&group).is_ok()
        && std::fs::write(group.join("cpu.shares"), "262144").is_ok())
    .then_some(group);
    let procs = group.as_ref().map_or("/dev/null".to_string(), |g| {
        g.join("cgroup.procs").display().to_string()
    });
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {procs} && exec \"$@\""))
        .args([
            "sh",
            "taskset",
            "-c",
            "0",
            "memcached",
            "-u",
            "root",
            "-l",
            "127.0.0.1",
            "-t",
            "1",
        ])
        .args(["-m", "1024", "-c", "4096", "-p", &port.to_string()])
        .spawn()
        .unwrap();
    Memcached(child, group)
}

fn loadgen_cpu() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _mc = start_memcached(port);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let cfg = |qps: f64, tick_us: u64| LoadgenConfig {
        server: format!("127.0.0.1:{port}"),
        duration: Duration::from_secs(5),
        schedule: Schedule::fixed(qps).unwrap(),
        keys: 10_000,
        preload: true,
        cpu: Some(1),
        realtime: Some(50),
        tick: Duration::from_micros(tick_us),
        ..LoadgenConfig::default()
    };
    println!(
        "## loadgen CPU (pinned to CPU 1, SCHED_FIFO 50; memcached -t 1 on CPU 0 in a heavy CPU group; 3 runs x 5 s)"
    );
    println!(
        "{:>8} {:>8} {:>12} {:>10} {:>16} {:>8}",
        "qps", "tick_us", "achieved", "% of core", "% per 10k QPS", "p95_us"
    );
    let row = |qps: f64, tick: u64| {
        let runs: Vec<_> = (0..3)
            .map(|_| run_loadgen(&cfg(qps, tick), None).unwrap())
            .collect();
        println!(
            "{:>8} {:>8} {:>12.0} {:>10.1} {:>16.1} {:>8.0}",
            qps,
            tick,
            median(runs.iter().map(|r| r.qps).collect()),
            median(runs.iter().map(|r| r.cpu_core * 100.0).collect()),
            median(runs.iter().map(|r| r.cpu_pct_per_10k_qps).collect()),
            median(runs.iter().map(|r| r.p95_us as f64).collect()),
        );
    };
    for qps in [10_000.0, 20_000.0, 50_000.0] {
        row(qps, lowsched::loadgen::DEFAULT_TICK.as_micros() as u64);
    }
    for tick in [10, 25, 100, 200] {
        row(50_000.0, tick);
    }
}

fn probe_cpu() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _mc = start_memcached(port);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut pct = Vec::new();
    for _ in 0..3 {
        let p = lowsched::probe::Probe::start(lowsched::probe::ProbeConfig {
            server: format!("127.0.0.1:{port}"),
            cpu: Some(1),
            ..lowsched::probe::ProbeConfig::default()
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let c0 = lowsched::sys::clock::process_cpu_ns();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(5));
        let c1 = lowsched::sys::clock::process_cpu_ns();
        pct.push((c1 - c0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0);
        p.stop();
    }
    println!(
        "## probe at the default 1000 gets/s: median {:.2} % of a core (3 runs x 5 s) {pct:.2?}",
        median(pct.clone())
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "sensing_overhead: not run under cargo test (it takes minutes); use `cargo bench --bench sensing_overhead`"
        );
        return;
    }
    let want = |name: &str| {
        let filters: Vec<&String> = args
            .iter()
            .skip(1)
            .filter(|a| !a.starts_with("--"))
            .collect();
        filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
    };
    if want("sampler") {
        sampler_overhead();
    }
    if want("period") {
        period_noise();
    }
    if want("loadgen") {
        loadgen_cpu();
    }
    if want("probe") {
        probe_cpu();
    }
}
