#![allow(clippy::unwrap_used)]
//! Node actuation on the real host, as root: jobs in their cgroups, freeze and thaw, resize,
//! kill, exit statuses, users, outputs, adoption after a restart. Runs on whatever layout the
//! host has (hybrid here, pure v2 in the QEMU guest). The `*_v1_freezer` variants need a v1
//! freezer: they fail under the test command where there is none, and stage 40 (pure v2) leaves
//! them out by name and lists them as not run.

mod common;
#[path = "actuation/harness.rs"]
mod harness;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use harness::{Env, cpu_time_ns, nobody, root, status_field};
use lowsched::decide::policy::Command;
use lowsched::model::cpuset::CpuSet;
use lowsched::model::exit::{ExitEvent, ExitStatus};
use lowsched::model::inventory::GpuSet;
use lowsched::model::job::{JobId, JobSpec};
use lowsched::node::actuator::{ActuationError, Actuator, LaunchRequest};
use nix::unistd::Pid;

fn lands_in_its_cgroup(legacy: bool) {
    let Some(mut env) = Env::new("lands", legacy) else {
        return;
    };
    let (core, _) = env.cores();
    let user = root();
    let id = env.run_as(1, &["/bin/sleep", "30"], &core, &user, |s| {
        s.memory = Some("64m".parse().unwrap())
    });
    // The memory limit is set where the host enforces it (pure v2), and nowhere else.
    let limit = env.act().tree().job_paths(id).cpuset.join("memory.max");
    if env.act().tree().memory_enforced() {
        assert_eq!(
            std::fs::read_to_string(&limit).unwrap().trim(),
            (64u64 << 20).to_string()
        );
    } else {
        assert!(!limit.exists() || std::fs::read_to_string(&limit).unwrap().trim() == "max");
    }
    let pid = env.pids(id, 1)[0];
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let root = env.act().tree().root().to_path_buf();
    let name = root.file_name().unwrap().to_str().unwrap().to_string();
    let task_line = if legacy { "freezer:" } else { "0::" };
    let task_suffix = if legacy {
        "batch/job-1"
    } else {
        "batch/job-1/task"
    };
    assert!(
        cgroups
            .lines()
            .any(|l| l.contains(task_line) && l.contains(&name) && l.ends_with(task_suffix)),
        "{cgroups}"
    );
    assert_eq!(status_field(pid, "Cpus_allowed_list"), core);
    // The waiter is in the job's group, outside task/.
    let waiter = *env.waiters.last().unwrap();
    let wcg = std::fs::read_to_string(format!("/proc/{waiter}/cgroup")).unwrap();
    assert!(wcg.lines().any(|l| l.ends_with("batch/job-1")), "{wcg}");
    env.act().kill(id).unwrap();
    assert_eq!(
        env.exit(),
        ExitEvent {
            job: id,
            status: ExitStatus::Signaled(9)
        }
    );
    env.act().release(id).unwrap();
    assert!(!env.act().tree().job_paths(id).task.exists());
    assert!(!env.act().tree().job_paths(id).cpuset.exists());
}

#[test]
fn job_lands_in_its_cgroup_on_its_cores() {
    lands_in_its_cgroup(false);
}

#[test]
fn job_lands_in_its_cgroup_v1_freezer() {
    lands_in_its_cgroup(true);
}

fn freeze_and_thaw(legacy: bool) {
    let Some(mut env) = Env::new("freeze", legacy) else {
        return;
    };
    let (core, _) = env.cores();
    let id = env.run(2, &["/bin/sh", "-c", "while :; do :; done"], &core);
    let pid = env.pids(id, 1)[0];
    env.act().pause(id).unwrap();
    assert_eq!(env.act().is_paused(id), Some(true));
    // Frozen: no CPU time at all while watched (however long the watch, a frozen task gets
    // none; 300 ms gives a running busy loop many scheduler ticks).
    let t0 = cpu_time_ns(pid);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cpu_time_ns(pid), t0, "a frozen job made progress");
    env.act().resume(id, core.parse().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cpu_time_ns(pid) == t0 {
        assert!(Instant::now() < deadline, "a thawed job made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A paused job can be killed too.
    env.act().pause(id).unwrap();
    env.act().kill(id).unwrap();
    assert_eq!(env.exit().status, ExitStatus::Signaled(9));
    env.act().release(id).unwrap();
}

#[test]
fn freeze_stops_progress_and_thaw_resumes_it() {
    freeze_and_thaw(false);
}

#[test]
fn freeze_stops_progress_and_thaw_resumes_it_v1_freezer() {
    freeze_and_thaw(true);
}

#[test]
fn live_resize_changes_allowed_cpus() {
    let Some(mut env) = Env::new("resize", false) else {
        return;
    };
    let (a, b) = env.cores();
    let id = env.run(3, &["/bin/sh", "-c", "while :; do :; done"], &a);
    let pid = env.pids(id, 1)[0];
    assert_eq!(status_field(pid, "Cpus_allowed_list"), a);
    env.act().resize(id, b.parse().unwrap()).unwrap();
    assert_eq!(status_field(pid, "Cpus_allowed_list"), b);
    let both: CpuSet = format!("{a},{b}").parse().unwrap();
    env.act().resize(id, both).unwrap();
    assert_eq!(status_field(pid, "Cpus_allowed_list"), both.to_string());
    // A refused write is reported with the file and the OS error; the cores stay.
    let err = env.act().resize(id, "1000".parse().unwrap()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("cpuset.cpus") && text.contains("\"1000\""),
        "{text}"
    );
    assert_eq!(env.act().cores(id), Some(both));
    env.act().kill(id).unwrap();
    env.exit();
    env.act().release(id).unwrap();
}

fn kill_family(legacy: bool) {
    let Some(mut env) = Env::new("kill", legacy) else {
        return;
    };
    let (core, _) = env.cores();
    let script = "sleep 1000 & sh -c 'sleep 1000 & sleep 1000 & wait' & wait";
    let id = env.run(4, &["/bin/sh", "-c", script], &core);
    let pids = env.pids(id, 5);
    env.act().kill(id).unwrap();
    assert!(env.act().pids(id).unwrap().is_empty());
    for pid in pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| !s.contains("State:\tZ"))
            .unwrap_or(false);
        assert!(!alive, "pid {pid} survived the kill");
    }
    assert_eq!(env.exit().status, ExitStatus::Signaled(9));
    env.act().release(id).unwrap();
}

#[test]
fn kill_ends_children_and_grandchildren() {
    kill_family(false);
}

#[test]
fn kill_ends_children_and_grandchildren_v1_freezer() {
    kill_family(true);
}

#[test]
fn exit_codes_signals_and_start_failures_are_captured() {
    let Some(mut env) = Env::new("status", false) else {
        return;
    };
    let (core, _) = env.cores();
    env.run(10, &["/bin/sh", "-c", "exit 3"], &core);
    env.run(11, &["/bin/sh", "-c", "kill -TERM $$"], &core);
    env.run(12, &["/nonexistent/program"], &core);
    env.run(13, &["true"], &core);
    let mut got: Vec<ExitEvent> = (0..4).map(|_| env.exit()).collect();
    got.sort_by_key(|e| e.job);
    assert_eq!(got[0].status, ExitStatus::Exited(3));
    assert_eq!(got[1].status, ExitStatus::Signaled(15));
    match &got[2].status {
        ExitStatus::NotStarted(why) => {
            assert!(
                why.contains("exec /nonexistent/program") && why.contains("No such file"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(got[3].status, ExitStatus::Exited(0));
    for e in got {
        env.act().release(e.job).unwrap();
    }
}

#[test]
fn job_runs_as_its_user_and_writes_its_outputs() {
    let Some(mut env) = Env::new("user", false) else {
        return;
    };
    let (core, _) = env.cores();
    let user = nobody();
    let script = "id -u; id -g; echo to-stderr >&2";
    let id = env.run_as(20, &["/bin/sh", "-c", script], &core, &user, |_| {});
    assert_eq!(env.exit().status, ExitStatus::Exited(0));
    let dir = env.act().state_dir().job_dir(id);
    let out = std::fs::read_to_string(dir.join("stdout")).unwrap();
    assert_eq!(out, format!("{}\n{}\n", user.uid, user.gid));
    assert_eq!(
        std::fs::read_to_string(dir.join("stderr")).unwrap(),
        "to-stderr\n"
    );
    assert_eq!(
        std::fs::metadata(dir.join("stdout")).unwrap().uid(),
        user.uid
    );
    assert_eq!(std::fs::metadata(&dir).unwrap().uid(), user.uid);
    env.act().release(id).unwrap();

    // The outputs are opened with the user's rights: root's directories are off limits.
    let root_only = env.tmp.path().join("root-only");
    std::fs::create_dir(&root_only).unwrap();
    let forbidden = root_only.join("shadow");
    let f = forbidden.clone();
    let id = env.run_as(21, &["/bin/true"], &core, &user, move |s| {
        s.stdout = Some(f)
    });
    match env.exit().status {
        ExitStatus::NotStarted(why) => {
            assert!(
                why.contains("open stdout") && why.contains("Permission denied"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(!forbidden.exists(), "root wrote a file for the user");
    env.act().release(id).unwrap();
}

#[test]
fn exit_is_recorded_for_a_job_whose_daemon_restarted() {
    let Some(mut env) = Env::new("restart", false) else {
        return;
    };
    let (core, _) = env.cores();
    // Ends while no daemon watches.
    let ended = env.run(30, &["/bin/sh", "-c", "exit 4"], &core);
    // Still running across the restart: one is killed later, one ends by itself.
    let running = env.run(31, &["/bin/sleep", "30"], &core);
    let release = tempfile::tempdir().unwrap();
    let go = release.path().join("go");
    let wait_go = format!(
        "while [ ! -e {} ]; do sleep 0.02; done; exit 5",
        go.display()
    );
    let natural = env.run(32, &["/bin/sh", "-c", &wait_go], &core);
    let pid = env.pids(running, 1)[0];
    let record = env.act().state_dir().exit_record(ended);
    drop(env.act.take());
    let start = Instant::now();
    let ended_now = || {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        matches!(ExitStatus::from_record(&text), Ok(Some(_)))
    };
    while !ended_now() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "job 30 never ended"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (act, events) = Actuator::open(&env.cfg).unwrap();
    env.act = Some(act);
    env.events = events;
    let found = env.act().adopt().unwrap();
    assert_eq!(
        found.ended,
        vec![ExitEvent {
            job: ended,
            status: ExitStatus::Exited(4)
        }]
    );
    assert_eq!(found.running.len(), 2, "{found:?}");
    assert_eq!(found.running[0].id, running);
    assert_eq!(found.running[1].id, natural);
    assert_eq!(found.running[0].pids, vec![pid]);
    assert_eq!(found.running[0].cores.to_string(), core);
    assert!(!found.running[0].paused);
    env.act().release(ended).unwrap();
    // The adopted jobs are watched by the new actuator: one ends, one is killed.
    std::fs::write(&go, "").unwrap();
    assert_eq!(
        env.exit(),
        ExitEvent {
            job: natural,
            status: ExitStatus::Exited(5)
        }
    );
    env.act().kill(running).unwrap();
    assert_eq!(
        env.exit(),
        ExitEvent {
            job: running,
            status: ExitStatus::Signaled(9)
        }
    );
    env.act().release(running).unwrap();
    env.act().release(natural).unwrap();
    // Collected records are not reported again.
    assert_eq!(env.act().adopt().unwrap(), Default::default());
}

#[test]
fn commands_apply_in_order_and_failures_are_reported() {
    let Some(mut env) = Env::new("apply", false) else {
        return;
    };
    let (a, b) = env.cores();
    let root = root();
    let spec = JobSpec::new(vec!["/bin/sleep".into(), "30".into()]);
    let job = JobId(40);
    let reason = String::from("test");
    let cmds = [
        Command::Run {
            job,
            cores: a.parse().unwrap(),
            gpus: GpuSet::default(),
            reason: reason.clone(),
        },
        Command::Pause {
            job,
            reason: reason.clone(),
        },
        Command::Resume {
            job,
            cores: b.parse().unwrap(),
            reason: reason.clone(),
        },
        Command::Resize {
            job,
            cores: a.parse().unwrap(),
            reason: reason.clone(),
        },
        Command::Pause {
            job: JobId(99),
            reason: reason.clone(),
        },
        Command::Kill {
            job,
            reason: reason.clone(),
        },
    ];
    let launch = LaunchRequest {
        id: job,
        spec: &spec,
        user: &root,
        gpus: GpuSet::default(),
    };
    let act = env.act.as_mut().unwrap();
    let results: Vec<_> = cmds.iter().map(|c| act.apply(c, Some(&launch))).collect();
    assert!(results[..4].iter().all(Result::is_ok), "{results:?}");
    assert!(matches!(
        results[4],
        Err(ActuationError::UnknownJob(JobId(99)))
    ));
    assert!(results[5].is_ok(), "{:?}", results[5]);
    // A Run without its launch request (or with another job's) starts nothing.
    let other = Command::Run {
        job: JobId(41),
        cores: a.parse().unwrap(),
        gpus: GpuSet::default(),
        reason,
    };
    assert!(matches!(
        env.act().apply(&other, Some(&launch)),
        Err(ActuationError::NoRequest(JobId(41)))
    ));
    assert!(matches!(
        env.act().apply(&other, None),
        Err(ActuationError::NoRequest(JobId(41)))
    ));
    // A Kill is only started (kill_now): a job its waiter had started ends by SIGKILL, one it
    // had not started yet ends with its waiter, without a record.
    let status = env.exit().status;
    assert!(
        matches!(
            status,
            ExitStatus::Signaled(9) | ExitStatus::Lost(_) | ExitStatus::NotStarted(_)
        ),
        "{status:?}"
    );
    env.act().release(job).unwrap();
    assert!(matches!(
        env.act().kill(job),
        Err(ActuationError::UnknownJob(_))
    ));
}

#[test]
fn service_group_takes_pids_and_cores() {
    let Some(mut env) = Env::new("service", false) else {
        return;
    };
    let (a, _) = env.cores();
    let mut child = std::process::Command::new("/bin/sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let service = env.act().service().unwrap();
    service.add(pid).unwrap();
    service.set_cores(&a.parse().unwrap()).unwrap();
    assert_eq!(service.pids().unwrap(), vec![pid]);
    assert_eq!(status_field(pid, "Cpus_allowed_list"), a);
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cg.lines().any(|l| l.ends_with("-service/service")), "{cg}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn prepared_groups_are_used_by_run_and_found_after_restart() {
    let Some(mut env) = Env::new("prepare", false) else {
        return;
    };
    let (core, _) = env.cores();
    let spec = JobSpec::new(vec!["/bin/sleep".into(), "30".into()]);
    env.act().prepare(JobId(50), &spec).unwrap();
    env.act().prepare(JobId(51), &spec).unwrap();
    assert!(env.act().tree().job_paths(JobId(50)).task.exists());
    let id = env.run(50, &["/bin/sleep", "30"], &core);
    let pid = env.pids(id, 1)[0];
    assert_eq!(status_field(pid, "Cpus_allowed_list"), core);
    // A restart finds job 50 running and job 51 still prepared.
    drop(env.act.take());
    let (act, events) = Actuator::open(&env.cfg).unwrap();
    env.act = Some(act);
    env.events = events;
    let found = env.act().adopt().unwrap();
    assert_eq!(found.prepared, vec![JobId(51)]);
    assert_eq!(
        found.running.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![id]
    );
    env.act().release(JobId(51)).unwrap();
    assert!(!env.act().tree().job_paths(JobId(51)).task.exists());
    env.act().kill(id).unwrap();
    assert_eq!(env.exit().status, ExitStatus::Signaled(9));
    env.act().release(id).unwrap();
}

#[test]
fn pause_and_kill_right_after_run_end_the_job() {
    let Some(mut env) = Env::new("early", false) else {
        return;
    };
    let (core, _) = env.cores();
    for id in 60..64 {
        let job = env.run(id, &["/bin/sleep", "30"], &core);
        if id % 2 == 0 {
            env.act().pause(job).unwrap();
        }
        env.act().kill(job).unwrap();
        assert_eq!(
            env.exit(),
            ExitEvent {
                job,
                status: ExitStatus::Signaled(9)
            }
        );
        env.act().release(job).unwrap();
    }
}

#[test]
fn a_waiter_that_cannot_start_is_reported_either_way() {
    for wait in [false, true] {
        let name = if wait { "badshim-sync" } else { "badshim" };
        let Some(mut env) = Env::with(name, false, |cfg, tmp| {
            let bad = tmp.join("not-a-program");
            std::fs::write(&bad, "no interpreter line\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o755)).unwrap();
            cfg.shim = bad;
            cfg.wait_for_exec = wait;
        }) else {
            return;
        };
        let (core, _) = env.cores();
        let spec = JobSpec::new(vec!["/bin/true".into()]);
        let user = root();
        let req = LaunchRequest {
            id: JobId(70),
            spec: &spec,
            user: &user,
            gpus: GpuSet::default(),
        };
        let result = env.act().run(&req, core.parse().unwrap());
        if wait {
            let err = result.unwrap_err().to_string();
            assert!(
                err.contains("not-a-program") && err.contains("ENOEXEC"),
                "{err}"
            );
            assert!(!env.act().tree().job_paths(JobId(70)).task.exists());
        } else {
            result.unwrap();
            match env.exit().status {
                ExitStatus::NotStarted(why) => {
                    assert!(
                        why.contains("not-a-program") && why.contains("ENOEXEC"),
                        "{why}"
                    )
                }
                other => panic!("{other:?}"),
            }
            env.act().release(JobId(70)).unwrap();
        }
    }
}

/// The kill the control loop uses (`kill_now`) waits for nothing, not even for a job its
/// waiter has not started yet, and nothing of such a job runs later. The waiter is stopped
/// (SIGSTOP) before it can start the job: a kill that waited for the start would wait in vain,
/// then find `task/` empty, and the job would run once the waiter goes on (SIGCONT below).
#[test]
fn kill_now_of_a_job_not_started_yet_waits_for_nothing_and_the_job_never_runs() {
    use nix::sys::signal::{Signal, kill};
    let Some(mut env) = Env::new("killnow", false) else {
        return;
    };
    let (core, _) = env.cores();
    let ran = env.tmp.path().join("ran");
    let touch = format!("touch {}", ran.display());
    for id in 70..90 {
        let job = env.run(id, &["/bin/sh", "-c", &touch], &core);
        let waiter = *env.waiters.last().unwrap();
        kill(waiter, Signal::SIGSTOP).unwrap();
        let record = env.act().state_dir().exit_record(job);
        let started = std::fs::read_to_string(&record)
            .is_ok_and(|t| lowsched::model::exit::record_shows_start(&t));
        if started || ran.exists() {
            // The waiter was quicker than the stop: try again with another job.
            kill(waiter, Signal::SIGCONT).unwrap();
            env.exit();
            env.act().release(job).unwrap();
            let _ = std::fs::remove_file(&ran);
            continue;
        }
        env.act().kill_now(job).unwrap();
        kill(waiter, Signal::SIGCONT).unwrap();
        let ev = env.exit();
        assert_eq!(ev.job, job);
        assert!(
            !matches!(ev.status, ExitStatus::Exited(_)),
            "the job ran to its end after the kill: {:?}",
            ev.status
        );
        env.act().release(job).unwrap();
        assert!(!ran.exists(), "the job ran after its kill");
        return;
    }
    panic!("the waiter started every job before it could be stopped");
}

/// The freeze the control loop uses (`freeze_now`) returns at once; `frozen` confirms it later.
#[test]
fn freeze_now_is_confirmed_by_frozen() {
    let Some(mut env) = Env::new("freezenow", false) else {
        return;
    };
    let (core, _) = env.cores();
    let job = env.run(90, &["/bin/sleep", "30"], &core);
    env.pids(job, 1);
    env.act().freeze_now(job).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env.act().frozen(job).unwrap() {
        assert!(Instant::now() < deadline, "never frozen");
        std::thread::sleep(Duration::from_millis(1));
    }
    env.act().kill(job).unwrap();
    assert_eq!(env.exit().status, ExitStatus::Signaled(9));
    env.act().release(job).unwrap();
}
