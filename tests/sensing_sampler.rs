#![allow(clippy::unwrap_used)]
//! The samplers on the real machine: per-core utilization of a busy core, and a service's CPU
//! use read from a real cgroup (v1 `cpuacct.usage` and v2 `cpu.stat`, whichever this host has)
//! and from the per-pid fallback, switched while running.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lowsched::sense::sampler::service::cgroup_of_pid;
use lowsched::sense::sampler::{
    SamplerConfig, SamplerHandle, SamplerSet, ServiceCpu, ServiceKind, ServiceSource,
};

const CGROUP: &str = "/sys/fs/cgroup";

/// A busy loop pinned to CPU 1, killed on drop.
struct Spinner(Child);

impl Spinner {
    fn start() -> Self {
        Self(
            Command::new("taskset")
                .args(["-c", "1", "sh", "-c", "while :; do :; done"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A test cgroup, removed on drop (after its processes are gone).
struct Group(PathBuf);

impl Group {
    fn create(dir: PathBuf) -> Self {
        std::fs::create_dir(&dir).unwrap();
        Self(dir)
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The cgroup directories this host offers for CPU accounting: v1 cpuacct and the v2 tree.
fn accounting_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    let v1 = Path::new(CGROUP).join("cpuacct");
    if v1.join("cpuacct.usage").exists() {
        roots.push(v1);
    }
    let unified = Path::new(CGROUP).join("unified");
    if unified.join("cgroup.procs").exists() {
        roots.push(unified);
    } else if Path::new(CGROUP).join("cgroup.controllers").exists() {
        roots.push(PathBuf::from(CGROUP));
    }
    roots
}

fn wait_service(h: &SamplerHandle, what: &str, f: impl Fn(&ServiceCpu) -> bool) -> ServiceCpu {
    let t0 = Instant::now();
    loop {
        let s = h.service();
        if f(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_busy_core_reads_busy_and_the_service_cpu_comes_from_cgroups_or_the_pid() {
    if common::skip_unless(common::is_root(), "needs root to create cgroups")
        || common::skip_unless(common::have("taskset"), "taskset is not installed")
    {
        return;
    }
    let roots = accounting_roots();
    assert!(!roots.is_empty(), "no cgroup CPU accounting on this host");
    let spinner = Spinner::start();
    let pid = spinner.0.id();
    let name = format!("lowsched-sensing-{}", std::process::id());
    let groups: Vec<Group> = roots.iter().map(|r| Group::create(r.join(&name))).collect();
    for g in &groups {
        g.add(pid);
    }
    let set = SamplerSet::start(SamplerConfig::default()).unwrap();
    let h = set.handle();

    // CPU 1 runs the spinner (and whatever else this shared machine runs): busy.
    let t0 = Instant::now();
    let busy = loop {
        let c = h.core(1).unwrap();
        if c.smoothed.is_some_and(|u| u > 0.9) || t0.elapsed() > Duration::from_secs(5) {
            break c;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(busy.smoothed.unwrap() > 0.9, "{busy:?}");
    assert!(busy.online && busy.pinned);

    let mut generation = 0;
    for g in &groups {
        h.set_service(ServiceSource::Cgroup(g.0.clone())).unwrap();
        generation += 1;
        let s = wait_service(&h, "cgroup figures", |s| {
            s.generation == generation && s.smoothed.is_some() && s.cores.is_some()
        });
        let expect = if g.0.join("cpuacct.usage").exists() {
            ServiceKind::CgroupV1
        } else {
            ServiceKind::CgroupV2
        };
        assert_eq!(s.kind, expect, "{}", g.0.display());
        let s = wait_service(&h, "the spinner's CPU", |s| {
            s.smoothed.is_some_and(|c| c > 0.1)
        });
        assert!(
            s.smoothed.unwrap() < 1.3,
            "one spinner uses at most one core: {s:?}"
        );
        assert_eq!(s.errno, 0);
    }

    h.set_service(ServiceSource::Pid(pid)).unwrap();
    generation += 1;
    let s = wait_service(&h, "pid figures", |s| {
        s.generation == generation
            && s.kind == ServiceKind::Pid
            && s.smoothed.is_some_and(|c| c > 0.1)
    });
    assert!(s.smoothed.unwrap() < 1.3, "{s:?}");

    // The kernel's own answer to "which group holds this pid" is one of ours.
    let found = cgroup_of_pid(Path::new("/proc"), Path::new(CGROUP), pid).unwrap();
    assert!(groups.iter().any(|g| g.0 == found), "{}", found.display());

    // The service goes away: the pid source reports it instead of panicking or going stale.
    drop(spinner);
    wait_service(&h, "the error", |s| s.errno != 0 && s.cores.is_none());
    let costs = h.costs();
    assert!(costs.iter().all(|c| c.periods > 10), "{costs:?}");
    set.stop();
    drop(groups);
}
