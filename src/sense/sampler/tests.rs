//! Sampler tests on fake proc roots and on the real machine.

use super::*;
use std::path::Path;
use std::time::Instant;

fn write_stat(root: &Path, cpus: &[(usize, u64, u64)]) {
    let mut s = String::from("cpu  0 0 0 0 0 0 0 0 0 0\n");
    for (cpu, busy, idle) in cpus {
        s.push_str(&format!("cpu{cpu} {busy} 0 0 {idle} 0 0 0 0 0 0\n"));
    }
    s.push_str("intr 1 2 3\nctxt 5\n");
    // Rewrite in place: the sampler holds the fd and reads at offset 0.
    std::fs::write(root.join("stat"), s).unwrap();
}

/// Polls `f` until it answers; the deadline is generous because a loaded 2-vCPU machine can
/// starve the sampler threads for seconds, and the test is about what they publish, not when.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn fake_cfg(root: &Path, period_ms: u64) -> SamplerConfig {
    SamplerConfig {
        proc_root: root.to_path_buf(),
        sys_root: root.join("sys"),
        period: Duration::from_millis(period_ms),
        pin: false,
        ..SamplerConfig::default()
    }
}

#[test]
fn publishes_utilization_per_core_and_survives_offline_and_hotplug() {
    let root = tempfile::tempdir().unwrap();
    write_stat(root.path(), &[(0, 1000, 1000), (1, 500, 500)]);
    let set = SamplerSet::start(fake_cfg(root.path(), 30)).unwrap();
    assert_eq!(set.cpus(), vec![0, 1]);
    wait_for("first samples", || {
        set.core(1).filter(|c| c.online && c.at_ns > 0)
    });
    // cpu0 turns 100 % busy, cpu1 40 %.
    let (mut b0, mut b1, mut i1) = (1000, 500, 500);
    let u = wait_for("utilization", || {
        b0 += 1;
        b1 += 2;
        i1 += 3;
        write_stat(root.path(), &[(0, b0, 1000), (1, b1, i1)]);
        std::thread::sleep(Duration::from_millis(40));
        let c0 = set.core(0)?;
        let c1 = set.core(1)?;
        (c0.utilization == Some(1.0) && c1.utilization == Some(0.4)).then_some((c0, c1))
    });
    assert!(u.1.smoothed.unwrap() > 0.0 && u.1.smoothed.unwrap() <= 1.0);
    assert!(u.1.period_ns > 0);

    // cpu1 goes offline: its line disappears.
    write_stat(root.path(), &[(0, b0, 1000)]);
    wait_for("offline", || set.core(1).filter(|c| !c.online));
    assert!(set.core(0).unwrap().online);
    // It comes back with counters restarted from zero: absorbed, then normal samples again.
    let mut b = 3;
    let mut i = 10;
    let c1 = wait_for("back online with a sample", || {
        b += 1;
        i += 1;
        write_stat(root.path(), &[(0, b0, 1000), (1, b, i)]);
        std::thread::sleep(Duration::from_millis(40));
        set.core(1)
            .filter(|c| c.online && c.utilization == Some(0.5))
    });
    assert_eq!(c1.errors, 0);
    // Garbage in the file: counted, not fatal.
    std::fs::write(
        root.path().join("stat"),
        "cpu  1 1 1 1\ncpu0 x y z w\ncpu1 1 1 1 1\n",
    )
    .unwrap();
    let before = set.core(0).unwrap().anomalies;
    wait_for("anomaly counted", || {
        (set.core(0)?.anomalies > before).then_some(())
    });
    set.stop();
}

#[test]
fn possible_cpus_get_samplers_before_they_come_online() {
    let root = tempfile::tempdir().unwrap();
    write_stat(root.path(), &[(0, 10, 10)]);
    let possible = root.path().join("sys").join(CPU_POSSIBLE);
    std::fs::create_dir_all(possible.parent().unwrap()).unwrap();
    std::fs::write(&possible, "0-2\n").unwrap();
    let set = SamplerSet::start(fake_cfg(root.path(), 20)).unwrap();
    assert_eq!(set.cpus(), vec![0, 1, 2]);
    wait_for("cpu2 offline", || {
        set.core(2).filter(|c| c.at_ns > 0 && !c.online)
    });
    // cpu2 is hot-plugged.
    let (mut b, mut i) = (0, 0);
    wait_for("cpu2 sampled", || {
        b += 1;
        i += 1;
        write_stat(root.path(), &[(0, 10, 10), (2, b, i)]);
        std::thread::sleep(Duration::from_millis(30));
        set.core(2)
            .filter(|c| c.online && c.utilization == Some(0.5))
    });
}

#[test]
fn service_source_can_change_while_running() {
    let root = tempfile::tempdir().unwrap();
    write_stat(root.path(), &[(0, 1, 1)]);
    let cg = root.path().join("cg-a");
    std::fs::create_dir(&cg).unwrap();
    std::fs::write(cg.join("cpu.stat"), "usage_usec 1000\nuser_usec 1\n").unwrap();
    let mut cfg = fake_cfg(root.path(), 20);
    cfg.service = ServiceSource::Cgroup(cg.clone());
    let set = SamplerSet::start(cfg).unwrap();
    let s = wait_for("v2 source", || {
        let s = set.service();
        (s.kind == ServiceKind::CgroupV2 && s.usage_ns == 1_000_000).then_some(s)
    });
    assert_eq!(s.generation, 1);
    // The service burns CPU: 1 ms of usage per 10 ms of wall time is ~0.1 cores.
    let mut usage = 1000;
    let s = wait_for("cores used", || {
        usage += 3000;
        std::fs::write(cg.join("cpu.stat"), format!("usage_usec {usage}\n")).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let s = set.service();
        s.cores.filter(|&c| c > 0.0).map(|_| s)
    });
    assert!(s.cores.unwrap() < 1.0, "{s:?}");
    assert_eq!(s.errno, 0);

    // Moved to a v1 group.
    let v1 = root.path().join("cg-v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("cpuacct.usage"), "777\n").unwrap();
    set.set_service(ServiceSource::Cgroup(v1.clone())).unwrap();
    let s = wait_for("v1 source", || {
        let s = set.service();
        (s.kind == ServiceKind::CgroupV1 && s.usage_ns == 777).then_some(s)
    });
    assert_eq!(s.generation, 2);

    // The group is removed (service stopped): reported, then recovered when it reappears.
    // (A removed cgroup's held fd fails with ENODEV; an empty file stands in for that here.)
    std::fs::write(v1.join("cpuacct.usage"), "").unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    wait_for("error reported", || {
        (set.service().errno != 0).then_some(())
    });
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("cpuacct.usage"), "999\n").unwrap();
    wait_for("reopened", || {
        let s = set.service();
        (s.errno == 0 && s.usage_ns == 999).then_some(())
    });

    // Fallback to a pid's threads.
    let task = root.path().join("4242/task/4242");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(task.join("schedstat"), "1000 0 1\n").unwrap();
    set.set_service(ServiceSource::Pid(4242)).unwrap();
    wait_for("pid source", || {
        let s = set.service();
        (s.kind == ServiceKind::Pid && s.generation == 3).then_some(())
    });
    let mut ns = 1000;
    wait_for("pid usage", || {
        ns += 5_000_000;
        std::fs::write(task.join("schedstat"), format!("{ns} 0 1\n")).unwrap();
        std::thread::sleep(Duration::from_millis(25));
        set.service().cores.filter(|&c| c > 0.0)
    });
    set.set_service(ServiceSource::None).unwrap();
    wait_for("no source", || {
        (set.service().kind == ServiceKind::None).then_some(())
    });
}

#[test]
fn samples_the_real_machine_pinned() {
    let cfg = SamplerConfig {
        service: ServiceSource::Pid(std::process::id()),
        ..SamplerConfig::default()
    };
    let set = SamplerSet::start(cfg).unwrap();
    // Stay busy (so this process has CPU use to report) until every sampler has run a few
    // periods; on a loaded machine that can take much longer than 5 x 50 ms.
    let t0 = Instant::now();
    let mut x = 0u64;
    let settled = |set: &SamplerSet| {
        set.cores().iter().all(|c| c.smoothed.is_some())
            && set.service().cores.unwrap_or(0.0) > 0.0
            && set.costs().iter().all(|c| c.periods >= 5)
    };
    while !settled(&set) && t0.elapsed() < Duration::from_secs(30) {
        for _ in 0..100_000 {
            x = x.wrapping_mul(13).wrapping_add(1);
        }
    }
    std::hint::black_box(x);

    for c in set.cores() {
        assert!(c.online, "{c:?}");
        assert!(c.pinned, "{c:?}");
        let u = c.smoothed.expect("a smoothed value after 300 ms");
        assert!((0.0..=1.0).contains(&u), "{c:?}");
    }
    let s = set.service();
    assert_eq!(s.kind, ServiceKind::Pid);
    assert!(
        s.cores.unwrap_or(0.0) > 0.0,
        "this busy test process uses CPU: {s:?}"
    );
    let costs = set.costs();
    assert!(
        costs.iter().all(|c| c.periods >= 5 && c.cpu_ns > 0),
        "{costs:?}"
    );
}

#[test]
fn rejects_bad_settings() {
    let root = tempfile::tempdir().unwrap();
    write_stat(root.path(), &[(0, 1, 1)]);
    let mut cfg = fake_cfg(root.path(), 0);
    assert!(matches!(
        SamplerSet::start(cfg.clone()),
        Err(SamplerError::Config(_))
    ));
    cfg.period = Duration::from_millis(10);
    cfg.service_core = Some(5);
    assert!(matches!(
        SamplerSet::start(cfg.clone()),
        Err(SamplerError::Config(_))
    ));
    write_stat(root.path(), &[]);
    cfg.service_core = None;
    assert!(matches!(SamplerSet::start(cfg), Err(SamplerError::NoCores)));
    let missing = fake_cfg(&root.path().join("nope"), 10);
    assert!(matches!(
        SamplerSet::start(missing),
        Err(SamplerError::Io { .. })
    ));
}

#[test]
fn packs_round_trip() {
    let c = CoreUtil {
        cpu: 77,
        online: true,
        pinned: true,
        utilization: Some(0.25),
        smoothed: None,
        at_ns: 5,
        period_ns: 6,
        anomalies: 7,
        errors: 8,
    };
    assert_eq!(CoreUtil::unpack(c.pack()), c);
    let s = ServiceCpu {
        kind: ServiceKind::CgroupV1,
        usage_ns: 1,
        cores: Some(1.5),
        smoothed: Some(0.5),
        at_ns: 2,
        period_ns: 3,
        errno: 2,
        generation: 4,
        errors: 5,
    };
    assert_eq!(ServiceCpu::unpack(s.pack()), s);
}

#[test]
fn ewma_moves_toward_the_sample_by_the_time_constant() {
    let tau = Duration::from_millis(100);
    assert_eq!(ewma(None, 0.7, 1, tau), 0.7);
    let v = ewma(Some(0.0), 1.0, 100_000_000, tau);
    assert!((v - (1.0 - (-1.0f64).exp())).abs() < 1e-9);
}

#[test]
fn unwatched_cores_are_read_by_the_sweeper_while_their_threads_sleep() {
    let root = tempfile::tempdir().unwrap();
    write_stat(
        root.path(),
        &[(0, 1000, 1000), (1, 500, 500), (2, 500, 500)],
    );
    let set = SamplerSet::start(SamplerConfig {
        unwatched_period: Duration::from_millis(100),
        ..fake_cfg(root.path(), 10)
    })
    .unwrap();
    let periods = |cpu| {
        set.handle()
            .costs()
            .iter()
            .find(|c| c.cpu == cpu)
            .unwrap()
            .periods
    };
    // The service's core is 1; core 0 reads the service's counter and stays watched; core 2
    // is batch: its thread parks and the sweeper takes it over.
    set.handle().watch(&"1".parse().unwrap());
    // Two sweeps: the sweeper has taken core 2 over and read its baseline.
    let s0 = set.handle().sweeper_cost().1;
    wait_for("two sweeps", || {
        (set.handle().sweeper_cost().1 >= s0 + 2).then_some(())
    });
    let parked = periods(2);
    // Within what 100 ms of ticks allow (the sweeper drops larger jumps as anomalies).
    write_stat(
        root.path(),
        &[(0, 1000, 1000), (1, 500, 500), (2, 509, 503)],
    );
    let u = wait_for("core 2's utilization from the sweeper", || {
        set.handle().core(2)?.utilization.filter(|&u| u > 0.7)
    });
    assert!((u - 0.75).abs() < 1e-9, "core 2: {u}");
    assert_eq!(
        periods(2),
        parked,
        "core 2's own thread woke while unwatched"
    );
    assert!(set.handle().sweeper_cost().1 > 0, "the sweeper never read");
    assert!(periods(0) > 5 && periods(1) > 5, "watched cores stopped");

    // Watched again: its own thread is back at the short period.
    set.handle().watch(&"1-2".parse().unwrap());
    wait_for("core 2's thread back", || {
        (periods(2) > parked + 5).then_some(())
    });
    assert!(
        SamplerSet::start(SamplerConfig {
            unwatched_period: Duration::from_millis(5),
            ..fake_cfg(root.path(), 10)
        })
        .is_err(),
        "an unwatched period shorter than the period is refused"
    );
}
