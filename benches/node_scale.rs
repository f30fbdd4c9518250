#![allow(clippy::unwrap_used)]
//! The samplers' CPU as the node grows: one sampler thread per core (parked while its core is
//! unwatched) and the sweeper, on a fake procfs/sysfs root with 2, 16, 64 and 256 CPUs, at the
//! daemon's default periods (the service's core every 50 ms on its own thread, the others every
//! 250 ms in one sweep), as % of one core of this process. Also the cost of one
//! `/proc/stat` read, on the fake file at each size and on this host's real procfs, because the
//! fake file is a plain file: the kernel's cost of generating a real `/proc/stat` (it grows with
//! the CPU count) is not in the fake run and is estimated from the real read.
//!
//! `cargo bench --bench node_scale` (`NODE_SCALE_SECS`, default 10 s per size). Under `cargo
//! test` it only prints that it did not run.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use lowsched::model::cpuset::CpuSet;
use lowsched::sense::sampler::{SamplerConfig, SamplerSet};
use lowsched::sys::clock::process_cpu_ns;

/// A /proc/stat like a real one with `n` CPUs: the aggregate line, one per CPU, the rest.
fn fake_stat(n: usize, tick: u64) -> String {
    let mut s = format!(
        "cpu  {} 0 {} {} 0 0 0 0 0 0\n",
        100 * tick,
        50 * tick,
        900 * tick
    );
    for c in 0..n {
        writeln!(
            s,
            "cpu{c} {} 3 {} {} 11 0 7 0 0 0",
            100 + tick,
            50 + tick,
            900 + tick
        )
        .unwrap();
    }
    s.push_str("intr 123456 0 9 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\nctxt 987654\n");
    s.push_str("btime 1765000000\nprocesses 4242\nprocs_running 2\nprocs_blocked 0\n");
    s.push_str("softirq 1 2 3 4 5 6 7 8 9 10 11\n");
    s
}

fn read_cost_us(path: &std::path::Path) -> f64 {
    let n = 2_000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(std::fs::read(path).unwrap());
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "node_scale: not run under cargo test (it takes a minute); use `cargo bench --bench node_scale`"
        );
        return;
    }
    let secs: u64 = std::env::var("NODE_SCALE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let real = read_cost_us(std::path::Path::new("/proc/stat"));
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("real /proc/stat read on this host ({host_cpus} CPUs): {real:.1} us");
    println!(
        "| CPUs | sampler threads (awake) | CPU of the samplers (% of one core) | reads/s | fake /proc/stat read | estimated with real procfs reads |"
    );
    println!("|---|---|---|---|---|---|");
    for n in [2usize, 16, 64, 256] {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let sys = dir.path().join("sys");
        std::fs::create_dir_all(&proc).unwrap();
        std::fs::create_dir_all(sys.join("devices/system/cpu")).unwrap();
        std::fs::write(proc.join("stat"), fake_stat(n, 0)).unwrap();
        std::fs::write(
            sys.join("devices/system/cpu/possible"),
            format!("0-{}", n - 1),
        )
        .unwrap();
        let fake = read_cost_us(&proc.join("stat"));
        let set = SamplerSet::start(SamplerConfig {
            proc_root: proc.clone(),
            sys_root: sys,
            period: Duration::from_millis(50),
            unwatched_period: Duration::from_millis(250),
            pin: false,
            ..SamplerConfig::default()
        })
        .unwrap();
        // The daemon watches the service's core(s) at the short period; one here.
        set.handle().watch(&CpuSet::range(0, 1).unwrap());
        std::thread::sleep(Duration::from_millis(500));
        let (c0, t0) = (process_cpu_ns(), Instant::now());
        std::thread::sleep(Duration::from_secs(secs));
        let (c1, wall) = (process_cpu_ns(), t0.elapsed());
        set.stop();
        let pct = 100.0 * (c1 - c0) as f64 / wall.as_nanos() as f64;
        // The watched core's thread 20 times a second, the sweeper 4 times for all the others.
        let reads = 20.0 + if n > 1 { 4.0 } else { 0.0 };
        // A real /proc/stat costs the kernel per CPU listed: scale this host's read by n/host.
        let real_n = real * n as f64 / host_cpus as f64;
        let est = pct + reads * (real_n - fake).max(0.0) / 1e4;
        println!(
            "| {n} | {} (2) | {pct:.3} % | {reads:.0} | {fake:.1} us | {est:.2} % (real read ~{real_n:.0} us) |",
            n + 1
        );
    }
}
