//! Unit tests of the cgroup layer on fixtures and temp-dir fakes of both layouts.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::model::cpuset::CpuSet;
use crate::model::job::JobId;

const HYBRID: &str = "\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

const V2: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

#[test]
fn parses_hybrid_mountinfo() {
    let mounts = parse_mountinfo(HYBRID, Path::new("fixture")).unwrap();
    assert_eq!(mounts.len(), 7);
    let layout = Layout::from_mounts(&mounts).unwrap();
    let Layout::Hybrid {
        unified,
        cpuset,
        freezer,
    } = &layout
    else {
        panic!("{layout:?}")
    };
    assert_eq!(unified.point, PathBuf::from("/sys/fs/cgroup/unified"));
    assert_eq!(cpuset.point, PathBuf::from("/sys/fs/cgroup/cpuset"));
    assert_eq!(
        freezer.as_ref().unwrap().point,
        PathBuf::from("/sys/fs/cgroup/freezer")
    );
    let legacy = layout.as_legacy().unwrap();
    assert_eq!(legacy.name(), "legacy");
}

#[test]
fn parses_pure_v2_mountinfo() {
    let mounts = parse_mountinfo(V2, Path::new("fixture")).unwrap();
    let layout = Layout::from_mounts(&mounts).unwrap();
    assert_eq!(
        layout,
        Layout::Unified {
            mount: CgroupMount {
                point: "/sys/fs/cgroup".into(),
                root: "/".into(),
                controllers: None
            }
        }
    );
    assert!(layout.as_legacy().is_err());
}

#[test]
fn parses_odd_mountinfo() {
    // Escaped space, co-mounted cpu,cpuacct, a container's bind root, optional fields, two
    // cgroup2 mounts (the shorter mount point wins), a non-cgroup line with odd fields.
    let text = "\
50 1 0:40 / /weird\\040dir rw - ext4 /dev/sda1 rw
51 1 0:41 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw shared:3 master:1 - cgroup cgroup rw,cpu,cpuacct
52 1 0:42 /docker/abc /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset,clone_children
53 1 0:43 /docker/abc /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer,release_agent=/x
54 1 0:44 / /mnt/other\\040cg2 rw - cgroup2 none rw
55 1 0:44 / /cg2 rw - cgroup2 none rw
";
    let mounts = parse_mountinfo(text, Path::new("fixture")).unwrap();
    assert_eq!(mounts.len(), 5);
    assert!(mounts[0].has("cpu") && mounts[0].has("cpuacct"));
    assert_eq!(mounts[1].controllers.as_deref().unwrap(), ["cpuset"]);
    assert_eq!(mounts[2].controllers.as_deref().unwrap(), ["freezer"]);
    assert_eq!(mounts[3].point, PathBuf::from("/mnt/other cg2"));
    assert_eq!(
        mounts[1].dir_of("/docker/abc/lowsched"),
        Some(PathBuf::from("/sys/fs/cgroup/cpuset/lowsched"))
    );
    assert_eq!(mounts[1].dir_of("/docker/abcdef"), None);
    assert_eq!(mounts[1].dir_of("/elsewhere"), None);
    match Layout::from_mounts(&mounts).unwrap() {
        Layout::Hybrid { unified, .. } => assert_eq!(unified.point, PathBuf::from("/cg2")),
        other => panic!("{other:?}"),
    }
    // v1 only: legacy; nothing usable: an error that says what is missing.
    let v1 = parse_mountinfo(
        &text.lines().skip(1).take(3).collect::<Vec<_>>().join("\n"),
        Path::new("f"),
    )
    .unwrap();
    assert_eq!(Layout::from_mounts(&v1).unwrap().name(), "legacy");
    let err = Layout::from_mounts(&v1[..1]).unwrap_err().to_string();
    assert!(err.contains("cpuset") && err.contains("freezer"), "{err}");
    let err = parse_mountinfo("1 2 3\n31 23 0:28 / /x rw cgroup2", Path::new("mi")).unwrap_err();
    assert!(err.to_string().contains("mi"), "{err}");
}

#[test]
fn parses_proc_cgroup() {
    let lines = parse_proc_cgroup("4:memory:/a/b\n3:cpuset,cpu:/\n0::/system.slice/x.service\n");
    assert_eq!(lines[0], (4, vec!["memory".into()], "/a/b".into()));
    assert_eq!(lines[1].1, vec!["cpuset".to_string(), "cpu".to_string()]);
    assert_eq!(lines[2], (0, vec![], "/system.slice/x.service".into()));
}

/// Makes a fake group: a directory with the given files, as the kernel would fill it.
fn group(dir: &Path, files: &[(&str, &str)]) {
    fs::create_dir_all(dir).unwrap();
    for (name, content) in files {
        fs::write(dir.join(name), content).unwrap();
    }
}

fn read(path: PathBuf) -> String {
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const V2_FILES: [(&str, &str); 4] = [
    (CONTROLLERS, "cpuset cpu io memory pids\n"),
    (SUBTREE_CONTROL, ""),
    (PROCS, ""),
    (CPUSET_CPUS, ""),
];

fn fake_v2(tmp: &Path) -> Layout {
    for dir in ["", "ls", "ls/daemon", "ls/service", "ls/batch"] {
        group(&tmp.join(dir), &V2_FILES);
    }
    let job = tmp.join("ls/batch/job-7");
    group(
        &job,
        &[(CPUSET_CPUS, ""), (MEMORY_MAX, "max\n"), (PROCS, "")],
    );
    group(
        &job.join(TASK),
        &[
            (FREEZE, "0\n"),
            (KILL, ""),
            (EVENTS, "populated 1\nfrozen 0\n"),
            (PROCS, "41\n42\n"),
        ],
    );
    Layout::Unified {
        mount: CgroupMount {
            point: tmp.to_path_buf(),
            root: "/".into(),
            controllers: None,
        },
    }
}

fn named() -> TreeConfig {
    TreeConfig {
        root: RootName::Named("ls".into()),
        legacy_freezer: false,
    }
}

#[test]
fn v2_tree_enables_controllers_and_names_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::open(fake_v2(tmp.path()), &named(), Path::new("/proc")).unwrap();
    assert_eq!(tree.mode(), Mode::Unified);
    assert_eq!(
        read(tmp.path().join("ls").join(SUBTREE_CONTROL)),
        "+cpuset +cpu +memory +pids"
    );
    assert_eq!(tree.controllers(), ["cpuset", "cpu", "memory", "pids"]);
    assert!(tree.memory_enforced());
    let p = tree.job_paths(JobId(7));
    assert_eq!(p.task, tmp.path().join("ls/batch/job-7/task"));
    assert_eq!(p.cpuset, tmp.path().join("ls/batch/job-7"));
    fs::create_dir(tmp.path().join("ls/batch/not-a-job")).unwrap();
    fs::create_dir(tmp.path().join("ls/batch/job-12")).unwrap();
    assert_eq!(tree.job_ids().unwrap(), vec![JobId(7), JobId(12)]);
}

#[test]
fn batch_becomes_an_idle_cpu_group_where_the_kernel_has_cpu_idle() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::open(fake_v2(tmp.path()), &named(), Path::new("/proc")).unwrap();
    assert!(
        !tree.set_batch_idle(true).unwrap(),
        "no cpu.idle file: nothing to do"
    );
    let idle = tmp.path().join("ls/batch").join(CPU_IDLE);
    fs::write(&idle, "0\n").unwrap();
    assert!(tree.set_batch_idle(true).unwrap());
    assert_eq!(read(idle.clone()), "1");
    assert!(tree.set_batch_idle(false).unwrap());
    assert_eq!(read(idle.clone()), "0");
}

#[test]
fn v2_job_cores_memory_freeze_and_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::open(fake_v2(tmp.path()), &named(), Path::new("/proc")).unwrap();
    let cores: CpuSet = "1-2".parse().unwrap();
    let mut job = tree.create_job(JobId(7), &cores, Some(1 << 20)).unwrap();
    let dir = tmp.path().join("ls/batch/job-7");
    assert_eq!(read(dir.join(CPUSET_CPUS)), "1-2");
    assert_eq!(read(dir.join(MEMORY_MAX)), "1048576");
    job.set_cores(&"3".parse().unwrap()).unwrap();
    assert_eq!(job.cores().unwrap().to_string(), "3");
    assert!(matches!(
        job.set_cores(&CpuSet::new()),
        Err(CgroupError::NoCores { .. })
    ));
    assert_eq!(job.pids().unwrap().len(), 2);

    // The events file never reports frozen: the wait gives up with the path.
    let err = job.freeze(Duration::from_millis(30)).unwrap_err();
    assert!(matches!(err, CgroupError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("cgroup.events"), "{err}");
    assert_eq!(read(dir.join("task").join(FREEZE)), "1");

    // The "kernel" reports frozen a little later: the wait sees it.
    let events = dir.join("task").join(EVENTS);
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        fs::write(events, "populated 1\nfrozen 1\n").unwrap();
    });
    job.freeze(Duration::from_secs(5)).unwrap();
    writer.join().unwrap();
    assert!(job.is_frozen().unwrap());

    fs::write(dir.join("task").join(EVENTS), "populated 0\nfrozen 0\n").unwrap();
    job.kill(Duration::from_millis(100)).unwrap();
    assert_eq!(read(dir.join("task").join(KILL)), "1");
    job.thaw(Duration::from_millis(100)).unwrap();
    assert_eq!(read(dir.join("task").join(FREEZE)), "0");
}

#[test]
fn own_root_moves_the_daemon_into_its_leaf() {
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("cg");
    let root = mount.join("system.slice/lowsched.service");
    group(&mount, &V2_FILES);
    group(
        &root,
        &[
            (CONTROLLERS, "cpuset memory\n"),
            (SUBTREE_CONTROL, ""),
            (PROCS, "123\n"),
        ],
    );
    for leaf in [DAEMON, SERVICE, BATCH] {
        group(&root.join(leaf), &V2_FILES);
    }
    let proc_root = tmp.path().join("proc");
    group(
        &proc_root.join("self"),
        &[("cgroup", "0::/system.slice/lowsched.service\n")],
    );
    let layout = Layout::Unified {
        mount: CgroupMount {
            point: mount.clone(),
            root: "/".into(),
            controllers: None,
        },
    };
    let cfg = TreeConfig {
        root: RootName::Own,
        legacy_freezer: false,
    };
    let tree = Tree::open(layout, &cfg, &proc_root).unwrap();
    assert_eq!(tree.root(), root.as_path());
    assert_eq!(read(root.join(DAEMON).join(PROCS)), "123");
    assert_eq!(read(root.join(SUBTREE_CONTROL)), "+cpuset +memory");
}

fn fake_hybrid(tmp: &Path) -> Layout {
    let (u, c, f) = (tmp.join("unified"), tmp.join("cpuset"), tmp.join("freezer"));
    for dir in ["", "ls", "ls/daemon", "ls/service", "ls/batch"] {
        group(&u.join(dir), &[(PROCS, "")]);
        group(
            &c.join(dir),
            &[(CPUSET_CPUS, ""), (CPUSET_MEMS, ""), (PROCS, "")],
        );
        group(&f.join(dir), &[(PROCS, "")]);
    }
    fs::write(c.join(CPUSET_CPUS), "0-3\n").unwrap();
    fs::write(c.join(CPUSET_MEMS), "0\n").unwrap();
    group(
        &c.join("ls/batch/job-3"),
        &[(CPUSET_CPUS, ""), (CPUSET_MEMS, ""), (PROCS, "10\n11\n")],
    );
    group(&u.join("ls/batch/job-3"), &[(PROCS, "10\n")]);
    group(
        &u.join("ls/batch/job-3/task"),
        &[
            (FREEZE, "0"),
            (KILL, ""),
            (EVENTS, "populated 0\nfrozen 0\n"),
            (PROCS, "11\n"),
        ],
    );
    group(
        &f.join("ls/batch/job-3"),
        &[(FREEZER_STATE, "THAWED\n"), (PROCS, "11\n")],
    );
    let m = |p: PathBuf, c: Option<&str>| CgroupMount {
        point: p,
        root: "/".into(),
        controllers: c.map(|c| vec![c.to_string()]),
    };
    Layout::Hybrid {
        unified: m(u, None),
        cpuset: m(c, Some("cpuset")),
        freezer: Some(m(f, Some("freezer"))),
    }
}

#[test]
fn hybrid_tree_copies_cpusets_and_splits_cores_from_freezing() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::open(fake_hybrid(tmp.path()), &named(), Path::new("/proc")).unwrap();
    assert_eq!(tree.mode(), Mode::Hybrid);
    assert!(!tree.memory_enforced());
    let c = tmp.path().join("cpuset/ls");
    assert_eq!(read(c.join(CPUSET_CPUS)), "0-3");
    assert_eq!(read(c.join("batch").join(CPUSET_MEMS)), "0");
    assert_eq!(tree.root_cores().unwrap().to_string(), "0-3");
    let mut job = tree
        .create_job(JobId(3), &"2".parse().unwrap(), Some(4096))
        .unwrap();
    assert_eq!(read(c.join("batch/job-3").join(CPUSET_MEMS)), "0");
    assert_eq!(read(c.join("batch/job-3").join(CPUSET_CPUS)), "2");
    assert_eq!(
        job.paths().task,
        tmp.path().join("unified/ls/batch/job-3/task")
    );
    assert_eq!(
        job.waiter_pids().unwrap(),
        vec![nix::unistd::Pid::from_raw(10)]
    );
    fs::write(
        tmp.path().join("unified/ls/batch/job-3/task").join(EVENTS),
        "populated 0\nfrozen 1\n",
    )
    .unwrap();
    job.freeze(Duration::from_millis(50)).unwrap();
    assert_eq!(
        read(tmp.path().join("unified/ls/batch/job-3/task").join(FREEZE)),
        "1"
    );

    let service = tree.service().unwrap();
    service.set_cores(&"0".parse().unwrap()).unwrap();
    assert_eq!(read(c.join("service").join(CPUSET_CPUS)), "0");
    service.add(nix::unistd::Pid::from_raw(99)).unwrap();
    assert_eq!(
        read(tmp.path().join("unified/ls/service").join(PROCS)),
        "99"
    );
    assert_eq!(read(c.join("service").join(PROCS)), "99");
}

#[test]
fn legacy_freezer_path_on_a_hybrid_host() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = TreeConfig {
        legacy_freezer: true,
        ..named()
    };
    let tree = Tree::open(fake_hybrid(tmp.path()), &cfg, Path::new("/proc")).unwrap();
    assert_eq!(tree.mode(), Mode::Legacy);
    let mut job = tree.open_job(JobId(3)).unwrap();
    assert_eq!(job.paths().task, tmp.path().join("freezer/ls/batch/job-3"));
    // The fake keeps what was written, so FROZEN reads back at once.
    job.freeze(Duration::from_millis(50)).unwrap();
    assert!(job.is_frozen().unwrap());
    assert_eq!(
        job.waiter_pids().unwrap(),
        vec![nix::unistd::Pid::from_raw(10)]
    );
    // A state that never settles times out, naming the file.
    let state = tmp
        .path()
        .join("freezer/ls/batch/job-3")
        .join(FREEZER_STATE);
    fs::write(&state, "FREEZING\n").unwrap();
    let knob = Knob::open_read(state).unwrap();
    let err = knob
        .wait_value("FROZEN", Duration::from_millis(20))
        .unwrap_err();
    assert!(err.to_string().contains("freezer.state"), "{err}");
}

#[test]
fn missing_groups_are_reported_with_their_path() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = Tree::open(fake_v2(tmp.path()), &named(), Path::new("/proc")).unwrap();
    let err = tree.open_job(JobId(99)).unwrap_err();
    assert!(err.is_missing(), "{err}");
    assert!(err.to_string().contains("job-99"), "{err}");
    // A failed create leaves nothing behind.
    let err = tree
        .create_job(JobId(5), &"0".parse().unwrap(), None)
        .unwrap_err();
    assert!(err.to_string().contains("job-5"), "{err}");
    assert!(!tmp.path().join("ls/batch/job-5").exists());
    let err = tree.create_job(JobId(7), &CpuSet::new(), None).unwrap_err();
    assert!(matches!(err, CgroupError::NoCores { .. }), "{err}");
}
