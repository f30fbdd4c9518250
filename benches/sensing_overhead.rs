#![allow(clippy::unwrap_used)]
//! Whole-system figures for the sensing stack (not criterion: each is a run of seconds):
//!
//! 1. sampler overhead at the default period, as % of a core per sampler thread;
//! 2. the period and smoothing choice: error of a core's utilization at several periods,
//!    against the µs-resolution cpuidle residency counters, under a 50 % load;
//! 3. the load generator's own CPU per 10 k QPS (and p95) at 10 k, 20 k, 50 k QPS, and the send
//!    tick's effect at 50 k;
//! 4. the probe's own CPU at its default rate;
//! 5. how much CPU interference lifts the probe's p95: three stress-ng hogs at nice -5 on
//!    memcached's core, against memcached alone (a figure, formerly a test's 3x assertion).
//!
//! Run as root with memcached and stress-ng installed: `cargo bench --bench sensing_overhead`
//! (or `... -- sampler`, `-- period`, `-- loadgen`, `-- probe`, `-- interference`).
//! Under `cargo test` it only prints that it did not run (the runs take minutes).

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lowsched::model::cpuset::CpuSet;
use lowsched::sense::sampler::{SamplerConfig, SamplerSet, ServiceSource};
use lowsched::tools::loadgen::{LoadgenConfig, Schedule, run_loadgen};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn sampler_overhead() {
    println!(
        "## sampler overhead at the default period ({:?})",
        lowsched::sense::sampler::DEFAULT_PERIOD
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

/// CPU 1's idle time in µs from cpuidle residency counters (µs resolution, unlike
/// /proc/stat's 10 ms ticks): the reference the sampler's figures are compared with.
fn cpuidle_us(cpu: usize) -> Option<u64> {
    let dir = format!("/sys/devices/system/cpu/cpu{cpu}/cpuidle");
    let mut total = 0;
    for e in std::fs::read_dir(dir).ok()? {
        let t = std::fs::read_to_string(e.ok()?.path().join("time")).ok()?;
        total += t.trim().parse::<u64>().ok()?;
    }
    Some(total)
}

fn period_noise() {
    println!(
        "## /proc/stat utilization of CPU 1 against cpuidle residency (µs), `stress-ng --cpu 1 --cpu-load 50` on it, 8 s per period"
    );
    println!(
        "error = sampler figure - reference over the same span; the smoothed one is compared with the reference smoothed alike"
    );
    println!(
        "{:>9} {:>8} {:>10} {:>14} {:>18}",
        "period", "samples", "mean busy", "raw RMS error", "smoothed RMS error"
    );
    if cpuidle_us(1).is_none() {
        println!("(no cpuidle counters on this host: skipped)");
        return;
    }
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
    let tau = lowsched::sense::sampler::DEFAULT_SMOOTHING;
    for ms in [10u64, 20, 50, 100, 200] {
        let mut cores = CpuSet::new();
        cores.insert(1);
        let set = SamplerSet::start(SamplerConfig {
            cores: Some(cores),
            period: Duration::from_millis(ms),
            ..SamplerConfig::default()
        })
        .unwrap();
        let (mut raw_err, mut smooth_err, mut truths) = (Vec::new(), Vec::new(), Vec::new());
        let mut last: Option<(u64, u64)> = None; // (at_ns, idle_us)
        let mut ref_smooth: Option<f64> = None;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(8) {
            let c = set.core(1).unwrap();
            let idle = cpuidle_us(1).unwrap_or(0);
            if last.is_none_or(|(at, _)| at != c.at_ns) {
                if let (Some((at0, idle0)), Some(u), Some(s)) = (last, c.utilization, c.smoothed) {
                    let dt_us = (c.at_ns - at0) as f64 / 1e3;
                    let truth = (1.0 - (idle - idle0) as f64 / dt_us).clamp(0.0, 1.0);
                    let r = lowsched::sense::sampler::ewma(ref_smooth, truth, c.at_ns - at0, tau);
                    ref_smooth = Some(r);
                    if t0.elapsed() > Duration::from_secs(1) {
                        raw_err.push(u - truth);
                        truths.push(truth);
                        smooth_err.push(s - r);
                    }
                }
                last = Some((c.at_ns, idle));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let rms = |v: &[f64]| (v.iter().map(|e| e * e).sum::<f64>() / v.len().max(1) as f64).sqrt();
        let mean = truths.iter().sum::<f64>() / truths.len().max(1) as f64;
        println!(
            "{:>6} ms {:>8} {:>10.2} {:>14.3} {:>18.3}",
            ms,
            raw_err.len(),
            mean,
            rms(&raw_err),
            rms(&smooth_err)
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
            median(runs.iter().map(|r| r.latency.p95_us as f64).collect()),
        );
    };
    for qps in [10_000.0, 20_000.0, 50_000.0] {
        row(
            qps,
            lowsched::tools::loadgen::DEFAULT_TICK.as_micros() as u64,
        );
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
        let p = lowsched::sense::probe::Probe::start(lowsched::sense::probe::ProbeConfig {
            server: format!("127.0.0.1:{port}"),
            cpu: Some(1),
            ..lowsched::sense::probe::ProbeConfig::default()
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

/// The probe's p95 per 500 ms window, 7 windows with memcached alone and 7 with three CPU hogs
/// at nice -5 on its core (in its heavy CPU group, so they compete as equals with it and the
/// rest of the machine stays out); 5 k QPS of background load from CPU 1.
fn interference() {
    use lowsched::sense::probe::{Probe, ProbeConfig, ProbeStatus};
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mc = start_memcached(port);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bg = lowsched::tools::loadgen::spawn_loadgen(
        LoadgenConfig {
            server: format!("127.0.0.1:{port}"),
            duration: Duration::from_secs(60),
            schedule: Schedule::fixed(5_000.0).unwrap(),
            preload: true,
            keys: 1000,
            cpu: Some(1),
            ..LoadgenConfig::default()
        },
        stop.clone(),
    );
    let probe = Probe::start(ProbeConfig {
        server: format!("127.0.0.1:{port}"),
        window: Duration::from_millis(500),
        cpu: Some(1),
        realtime: Some(20),
        ..ProbeConfig::default()
    })
    .unwrap();
    let h = probe.handle();
    while h.signal().status != ProbeStatus::Up {
        std::thread::sleep(Duration::from_millis(10));
    }
    let windows = |n: u64| {
        let first = h.signal().windows_total;
        while h.signal().windows_total <= first + n {
            std::thread::sleep(Duration::from_millis(10));
        }
        let r = h.report();
        let v: Vec<f64> = r
            .windows
            .iter()
            .rev()
            .take(n as usize)
            .map(|w| w.latency.p95_us as f64)
            .collect();
        v
    };
    let alone = windows(7);
    let procs = mc.1.as_ref().map_or("/dev/null".to_string(), |g| {
        g.join("cgroup.procs").display().to_string()
    });
    let mut hogs = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {procs} && exec nice -n -5 taskset -c 0 stress-ng --cpu 3 --timeout 120"
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let hogged = windows(7);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hogs.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = hogs.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = lowsched::tools::loadgen::join_loadgen(bg);
    probe.stop();
    let (a, b) = (median(alone.clone()), median(hogged.clone()));
    println!(
        "## probe p95 per 500 ms window: alone median {a:.0} us {alone:?}; three nice -5 hogs on its core median {b:.0} us {hogged:?}; ratio {:.1}",
        b / a.max(1.0)
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
    if want("interference") {
        interference();
    }
}
