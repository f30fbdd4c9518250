#![allow(clippy::unwrap_used)]
//! Actuation latencies on the real host (root): launch (request → waiter running in the job's
//! group), launch round trip (→ exit event of /bin/true), freeze → frozen, thaw, resize, for the
//! unified-tree path and, where the host has one, the v1 freezer path.
//!
//! `cargo bench --bench launch` (as root). Prints p50 / p99 / max per operation. Set
//! `LOWSCHED_BENCH_N` to change the number of samples (default 1000).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lowsched::model::credentials::Credentials;
use lowsched::model::inventory::GpuSet;
use lowsched::model::job::{JobId, JobSpec};
use lowsched::node::actuator::{Actuator, ActuatorConfig, LaunchRequest};
use lowsched::node::cgroup::{Layout, RootName, TreeConfig};

struct Stats {
    what: String,
    samples: Vec<Duration>,
}

impl Stats {
    fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            samples: Vec::new(),
        }
    }

    fn print(&mut self) {
        self.samples.sort();
        let n = self.samples.len();
        let at = |q: f64| self.samples[((n as f64 * q) as usize).min(n - 1)];
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "| {:<44} | {:>5} | {:>9.1} | {:>9.1} | {:>9.1} |",
            self.what,
            n,
            us(at(0.5)),
            us(at(0.99)),
            us(self.samples[n - 1])
        );
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

fn bench(legacy: bool, n: usize) {
    let state = tempfile::tempdir().unwrap();
    let mut cfg = ActuatorConfig::new(state.path());
    let tag = if legacy { "v1-freezer" } else { "unified" };
    cfg.tree = TreeConfig {
        root: RootName::Named(format!("lowsched-bench-act-{}-{tag}", std::process::id())),
        legacy_freezer: legacy,
    };
    cfg.shim = std::env::var_os("LOWSCHED_SHIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lowsched-shim")));
    let (mut act, events) = Actuator::open(&cfg).unwrap();
    let mode = format!("{:?}", act.tree().mode()).to_lowercase();
    let root = Credentials::by_uid(0).unwrap_or_else(|_| Credentials::from_ids(0, 0));
    let cores = act.tree().root_cores().unwrap().to_vec();
    let a = cores[cores.len() - 1];
    let b = cores[cores.len().saturating_sub(2)];
    let one: lowsched::model::cpuset::CpuSet = a.to_string().parse().unwrap();
    let two: lowsched::model::cpuset::CpuSet = format!("{a},{b}").parse().unwrap();

    let true_spec = JobSpec::new(vec!["/bin/true".into()]);
    launches(&mut act, &events, &true_spec, one, n, &mode, "");
    drop(act);
    // The same, waiting in run for the waiter's exec (ActuatorConfig::wait_for_exec).
    let mut sync_cfg = cfg.clone();
    sync_cfg.wait_for_exec = true;
    let (mut sync_act, sync_events) = Actuator::open(&sync_cfg).unwrap();
    launches(
        &mut sync_act,
        &sync_events,
        &true_spec,
        one,
        n,
        &mode,
        ", vfork wait",
    );
    drop(sync_act);
    let (mut act, events) = Actuator::open(&cfg).unwrap();
    breakdown(&act, one, n, &mode);

    let spin = JobSpec::new(vec![
        "/bin/sh".into(),
        "-c".into(),
        "while :; do :; done".into(),
    ]);
    let id = JobId(1);
    act.run(
        &LaunchRequest {
            id,
            spec: &spin,
            user: &root,
            gpus: GpuSet::default(),
        },
        one,
    )
    .unwrap();
    while act.pids(id).unwrap().is_empty() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut freeze = Stats::new(format!("{mode}: freeze → frozen (busy job)"));
    let mut thaw = Stats::new(format!("{mode}: resume (set cores + thaw → thawed)"));
    let mut resize = Stats::new(format!("{mode}: resize (cpuset.cpus, held fd)"));
    for i in 0..n {
        let ((), d) = timed(|| act.pause(id).unwrap());
        freeze.samples.push(d);
        let ((), d) = timed(|| act.resume(id, one).unwrap());
        thaw.samples.push(d);
        let cores = if i % 2 == 0 { two } else { one };
        let ((), d) = timed(|| act.resize(id, cores).unwrap());
        resize.samples.push(d);
    }
    freeze.print();
    thaw.print();
    resize.print();
    act.kill(id).unwrap();
    let ev = events.recv_timeout(Duration::from_secs(10)).unwrap();
    act.release(ev.job).unwrap();
    let tree = act.tree().clone();
    drop(act);
    tree.destroy(Duration::from_secs(5)).unwrap();
}

/// Launches of /bin/true, one at a time: time until `run` returns (groups made at run, then
/// made ahead with `prepare`), and until the exit event.
fn launches(
    act: &mut Actuator,
    events: &crossbeam_channel::Receiver<lowsched::model::exit::ExitEvent>,
    spec: &JobSpec,
    cores: lowsched::model::cpuset::CpuSet,
    n: usize,
    mode: &str,
    how: &str,
) {
    let root = Credentials::by_uid(0).unwrap_or_else(|_| Credentials::from_ids(0, 0));
    let mut launch = Stats::new(format!("{mode}: launch /bin/true{how}"));
    let mut round = Stats::new(format!("{mode}: launch → exit event{how}"));
    let mut prepared = Stats::new(format!("{mode}: launch, prepared groups{how}"));
    for i in 0..2 * n {
        let id = JobId(1_000_000 + i as u64);
        let ahead = i >= n;
        if ahead {
            act.prepare(id, spec).unwrap();
        }
        let req = LaunchRequest {
            id,
            spec,
            user: &root,
            gpus: GpuSet::default(),
        };
        let t = Instant::now();
        act.run(&req, cores).unwrap();
        let d = t.elapsed();
        let ev = events.recv_timeout(Duration::from_secs(10)).unwrap();
        if ahead {
            prepared.samples.push(d);
        } else {
            launch.samples.push(d);
            round.samples.push(t.elapsed());
        }
        assert!(ev.status.success(), "{ev:?}");
        act.release(ev.job).unwrap();
    }
    launch.print();
    prepared.print();
    round.print();
}

/// Where launch time goes: creating the job's groups (mkdirs, cores), removing them, and the
/// vfork-style clone3 + exec alone (of /bin/true, straight into a group).
fn breakdown(act: &Actuator, cores: lowsched::model::cpuset::CpuSet, n: usize, mode: &str) {
    use std::ffi::CString;
    use std::os::fd::AsFd;
    let tree = act.tree();
    let mut create = Stats::new(format!("{mode}: part: create job groups + set cores"));
    let mut remove = Stats::new(format!("{mode}: part: remove job groups"));
    let mut clone = Stats::new(format!(
        "{mode}: part: clone3 vfork+exec (into unified group)"
    ));
    let plan = lowsched::sys::ChildPlan {
        programs: vec![CString::new("/bin/true").unwrap()],
        argv: vec![CString::new("true").unwrap()],
        ..Default::default()
    };
    for i in 0..n {
        let id = JobId(2_000_000 + i as u64);
        let (group, d) = timed(|| tree.create_job(id, &cores, None).unwrap());
        create.samples.push(d);
        let dir = group.unified_dir().unwrap();
        let (child, d) = timed(|| {
            lowsched::sys::spawn(
                plan.clone(),
                lowsched::sys::SpawnMode::Vfork,
                dir.as_ref().map(|f| f.as_fd()),
            )
            .unwrap()
        });
        clone.samples.push(d);
        nix::sys::wait::waitid(
            nix::sys::wait::Id::PIDFd(child.pidfd.as_fd()),
            nix::sys::wait::WaitPidFlag::WEXITED,
        )
        .unwrap();
        let ((), d) = timed(|| group.remove(Duration::from_secs(5)).unwrap());
        remove.samples.push(d);
    }
    create.print();
    remove.print();
    clone.print();
}

/// Start-up cost of the waiter binary itself (spawn, exec, exit without a request) next to
/// /bin/true's, through std's spawn.
fn exec_cost(n: usize) {
    let shim = std::env::var_os("LOWSCHED_SHIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lowsched-shim")));
    for (what, prog) in [
        ("spawn+wait /bin/true", PathBuf::from("/bin/true")),
        ("spawn+wait lowsched-shim (no request)", shim),
    ] {
        let mut s = Stats::new(what);
        for _ in 0..n.min(300) {
            let t = Instant::now();
            let _ = std::process::Command::new(&prog)
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            s.samples.push(t.elapsed());
        }
        s.print();
    }
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("launch bench: needs root (cgroups); skipped");
        return;
    }
    // cargo bench passes --bench; a plain `cargo test --benches` run passes nothing: stay quick.
    let full = std::env::args().any(|a| a == "--bench");
    let n = std::env::var("LOWSCHED_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1000 } else { 5 });
    println!(
        "| {:<44} | {:>5} | {:>9} | {:>9} | {:>9} |",
        "operation", "n", "p50 µs", "p99 µs", "max µs"
    );
    println!(
        "|{:-<46}|{:-<7}|{:-<11}|{:-<11}|{:-<11}|",
        "", "", "", "", ""
    );
    bench(false, n);
    if matches!(
        Layout::detect(std::path::Path::new("/proc")),
        Ok(Layout::Hybrid {
            freezer: Some(_),
            ..
        })
    ) {
        bench(true, n);
    }
    exec_cost(n);
}
