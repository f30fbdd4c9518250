//! The agent on a fake v1 tree and fake Slurm tools: what it reports when it finds, squeezes,
//! pauses and loses a job, and when Slurm does not answer.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::*;
use crate::decide::slurm::plan;
use crate::node::cgroup::{CPUSET_CPUS, FREEZER_STATE};

struct Fake {
    _dir: tempfile::TempDir,
    root: PathBuf,
    calls: PathBuf,
}

/// A v1 tree with job 7 of uid 1000 on cores 0-1, and scontrol/squeue/sinfo scripts that log
/// their calls; `scontrol_body` is scontrol's behaviour.
fn fake(scontrol_body: &str) -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let job = root.join("cpuset/slurm_n1/uid_1000/job_7");
    let fr = root.join("freezer/slurm_n1/uid_1000/job_7/step_batch");
    std::fs::create_dir_all(job.join("step_batch")).unwrap();
    std::fs::create_dir_all(&fr).unwrap();
    std::fs::write(job.join(CPUSET_CPUS), "0-1\n").unwrap();
    std::fs::write(job.join("step_batch").join(CPUSET_CPUS), "0-1\n").unwrap();
    std::fs::write(fr.join(FREEZER_STATE), "THAWED\n").unwrap();
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = root.join("calls");
    let script = |name: &str, body: &str| {
        let p = bin.join(name);
        let text = format!(
            "#!/bin/sh\necho \"{name} $*\" >>{}\n{body}\n",
            calls.display()
        );
        std::fs::write(&p, text).unwrap();
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&p, perm).unwrap();
    };
    script("scontrol", scontrol_body);
    script("squeue", "echo '7|1000|RUNNING|100'");
    script("sinfo", "echo 'mixed|none'");
    Fake {
        _dir: dir,
        root,
        calls,
    }
}

fn agent(f: &Fake) -> SlurmAgent {
    let cfg = SlurmConfig {
        bin_dir: Some(f.root.join("bin")),
        command_timeout_ms: 2_000,
        ..SlurmConfig::default()
    };
    let roots = SlurmRoots::V1 {
        cpuset: f.root.join("cpuset"),
        freezer: f.root.join("freezer"),
    };
    SlurmAgent::with_roots(&cfg, roots, "n1".into()).unwrap()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_string()
}

/// Scans until `want` says the collected changes are complete, or 10 s pass.
fn scan_until(a: &mut SlurmAgent, want: impl Fn(&[SlurmChange]) -> bool) -> Vec<SlurmChange> {
    let mut all = Vec::new();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !want(&all) && Instant::now() < deadline {
        all.extend(a.scan(Timestamp::from_millis(1)));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    all
}

#[test]
fn a_job_is_found_narrowed_off_the_service_and_paused_when_no_core_is_left() {
    let f = fake("exit 0");
    let mut a = agent(&f);
    let changes = a.scan(Timestamp::from_millis(1));
    let cores: CpuSet = "0-1".parse().unwrap();
    assert_eq!(
        changes,
        vec![SlurmChange::Appeared {
            id: 7,
            uid: Some(1000),
            cores
        }]
    );
    let job = f.root.join("cpuset/slurm_n1/uid_1000/job_7");
    let changes = a.carry_out(&plan(&a.views(), &"0".parse().unwrap()));
    assert_eq!(
        changes,
        vec![SlurmChange::Resized {
            id: 7,
            cores: "1".parse().unwrap()
        }]
    );
    assert_eq!(read(&job.join(CPUSET_CPUS)), "1");
    assert_eq!(read(&job.join("step_batch").join(CPUSET_CPUS)), "1");
    let changes = a.carry_out(&plan(&a.views(), &"0-1".parse().unwrap()));
    assert_eq!(changes, vec![SlurmChange::Paused { id: 7 }]);
    let fr = f.root.join("freezer/slurm_n1/uid_1000/job_7/step_batch");
    assert_eq!(read(&fr.join(FREEZER_STATE)), "FROZEN");
    let changes = a.carry_out(&plan(&a.views(), &CpuSet::new()));
    assert_eq!(
        changes,
        vec![SlurmChange::Resumed { id: 7, cores }],
        "the whole allocation comes back"
    );
    assert_eq!(read(&fr.join(FREEZER_STATE)), "THAWED");
    drop(a);
    let calls = std::fs::read_to_string(&f.calls).unwrap();
    assert!(calls.contains("scontrol suspend 7"), "{calls}");
    assert!(calls.contains("scontrol resume 7"), "{calls}");
}

#[test]
fn slurmctld_down_leaves_the_job_frozen_and_reports_why() {
    let f = fake("echo 'Unable to contact slurm controller (connect failure)' >&2; exit 1");
    let mut a = agent(&f);
    a.scan(Timestamp::from_millis(1));
    let changes = a.carry_out(&plan(&a.views(), &"0-1".parse().unwrap()));
    assert_eq!(changes, vec![SlurmChange::Paused { id: 7 }]);
    let fr = f.root.join("freezer/slurm_n1/uid_1000/job_7/step_batch");
    assert_eq!(read(&fr.join(FREEZER_STATE)), "FROZEN");
    let all = scan_until(&mut a, |c| {
        c.iter()
            .any(|c| matches!(c, SlurmChange::Failed { id: Some(7), .. }))
    });
    let failed = all
        .iter()
        .find_map(|c| match c {
            SlurmChange::Failed { id: Some(7), what } => Some(what.clone()),
            _ => None,
        })
        .expect("a failure for job 7");
    assert!(failed.contains("Unable to contact"), "{failed}");
    assert_eq!(
        read(&fr.join(FREEZER_STATE)),
        "FROZEN",
        "the service stays protected"
    );
}

#[test]
fn a_job_whose_group_vanishes_ends_with_slurms_record() {
    let f =
        fake("case $2 in job) echo 'JobId=7 JobState=COMPLETED Reason=None ExitCode=0:0';; esac");
    let mut a = agent(&f);
    a.scan(Timestamp::from_millis(1));
    std::fs::remove_dir_all(f.root.join("cpuset/slurm_n1/uid_1000/job_7")).unwrap();
    std::fs::remove_dir_all(f.root.join("freezer/slurm_n1/uid_1000/job_7")).unwrap();
    let all = scan_until(&mut a, |c| {
        c.iter().any(|c| matches!(c, SlurmChange::Ended { .. }))
    });
    let end = all
        .iter()
        .find_map(|c| match c {
            SlurmChange::Ended { id: 7, end } => Some(end.clone()),
            _ => None,
        })
        .expect("job 7 ended");
    let end = end.unwrap();
    assert_eq!((end.state.as_str(), end.exit_code), ("COMPLETED", Some(0)));
    assert!(a.views().is_empty());
}

#[test]
fn a_suspension_lowsched_did_not_ask_for_is_someone_elses_hold() {
    let f = fake("exit 0");
    std::fs::write(
        f.root.join("bin/squeue"),
        format!(
            "#!/bin/sh\necho \"squeue $*\" >>{}\necho '7|1000|SUSPENDED|100'\n",
            f.calls.display()
        ),
    )
    .unwrap();
    let mut a = agent(&f);
    let all = scan_until(&mut a, |c| {
        c.iter()
            .any(|c| matches!(c, SlurmChange::HeldByOther { .. }))
    });
    assert!(
        all.contains(&SlurmChange::HeldByOther { id: 7, held: true }),
        "{all:?}"
    );
    assert!(
        plan(&a.views(), &CpuSet::new()).is_empty(),
        "never resumed by lowsched"
    );
}

#[test]
fn a_missing_scontrol_still_freezes_and_reports_the_missing_tool() {
    let f = fake("exit 0");
    std::fs::remove_file(f.root.join("bin/scontrol")).unwrap();
    let mut a = agent(&f);
    a.scan(Timestamp::from_millis(1));
    let changes = a.carry_out(&plan(&a.views(), &"0-1".parse().unwrap()));
    assert_eq!(changes, vec![SlurmChange::Paused { id: 7 }]);
    let fr = f.root.join("freezer/slurm_n1/uid_1000/job_7/step_batch");
    assert_eq!(
        read(&fr.join(FREEZER_STATE)),
        "FROZEN",
        "the service is protected first"
    );
    let suspend_failed = |c: &SlurmChange| matches!(c, SlurmChange::Failed { id: Some(7), what } if what.starts_with("suspend job 7"));
    let all = scan_until(&mut a, |c| c.iter().any(suspend_failed));
    let failed = all
        .iter()
        .find_map(|c| match c {
            SlurmChange::Failed { what, .. } if suspend_failed(c) => Some(what.clone()),
            _ => None,
        })
        .expect("the failed suspend is reported");
    assert!(failed.contains("scontrol"), "names the tool: {failed}");
    assert_eq!(read(&fr.join(FREEZER_STATE)), "FROZEN");
}

#[test]
fn a_job_whose_group_vanishes_mid_write_is_ended_not_failed() {
    let f =
        fake("case $2 in job) echo 'JobId=7 JobState=COMPLETED Reason=None ExitCode=0:0';; esac");
    let mut a = agent(&f);
    a.scan(Timestamp::from_millis(1));
    let actions = plan(&a.views(), &"0".parse().unwrap());
    // The job ends between the plan and its cpuset writes.
    std::fs::remove_dir_all(f.root.join("cpuset/slurm_n1/uid_1000/job_7")).unwrap();
    std::fs::remove_dir_all(f.root.join("freezer/slurm_n1/uid_1000/job_7")).unwrap();
    let changes = a.carry_out(&actions);
    assert!(
        changes.is_empty(),
        "a vanished group is no failure: {changes:?}"
    );
    assert!(a.views().is_empty(), "the job is gone from the agent");
    let all = scan_until(&mut a, |c| {
        c.iter().any(|c| matches!(c, SlurmChange::Ended { .. }))
    });
    assert!(
        all.iter().any(|c| matches!(
            c,
            SlurmChange::Ended { id: 7, end: Ok(e) } if e.state == "COMPLETED" && e.exit_code == Some(0)
        )),
        "{all:?}"
    );
    assert!(
        !all.iter().any(|c| matches!(c, SlurmChange::Failed { .. })),
        "{all:?}"
    );
}

#[test]
fn a_job_that_ends_while_paused_is_recorded_with_slurms_end_and_never_resumed() {
    let f =
        fake("case $2 in job) echo 'JobId=7 JobState=CANCELLED Reason=None ExitCode=0:15';; esac");
    let mut a = agent(&f);
    a.scan(Timestamp::from_millis(1));
    let changes = a.carry_out(&plan(&a.views(), &"0-1".parse().unwrap()));
    assert_eq!(changes, vec![SlurmChange::Paused { id: 7 }]);
    // scancel while frozen: Slurm removes the job's groups.
    std::fs::remove_dir_all(f.root.join("cpuset/slurm_n1/uid_1000/job_7")).unwrap();
    std::fs::remove_dir_all(f.root.join("freezer/slurm_n1/uid_1000/job_7")).unwrap();
    let all = scan_until(&mut a, |c| {
        c.iter().any(|c| matches!(c, SlurmChange::Ended { .. }))
    });
    assert!(
        all.iter().any(|c| matches!(
            c,
            SlurmChange::Ended { id: 7, end: Ok(e) } if e.state == "CANCELLED"
        )),
        "{all:?}"
    );
    assert!(
        plan(&a.views(), &CpuSet::new()).is_empty(),
        "nothing left to resume"
    );
    assert!(a.release_all().is_empty(), "nor to give back at stop");
    drop(a);
    let calls = std::fs::read_to_string(&f.calls).unwrap();
    assert!(!calls.contains("scontrol resume 7"), "{calls}");
}

#[test]
fn a_job_slurm_still_calls_running_after_its_group_vanished_is_asked_again() {
    // slurmstepd removes the job's groups before slurmctld has taken in the end: the first
    // answer is RUNNING (exit 0:0), which must not be recorded as how the job ended.
    let f = fake(
        "case $3 in -o)
            n=$(cat \"$(dirname \"$0\")/../ends\" 2>/dev/null || echo 0)
            echo $((n + 1)) >\"$(dirname \"$0\")/../ends\"
            if [ \"$n\" -lt 2 ]; then echo 'JobId=7 JobState=RUNNING Reason=None ExitCode=0:0'
            else echo 'JobId=7 JobState=COMPLETED Reason=None ExitCode=0:0'; fi;;
        esac",
    );
    let mut a = agent(&f);
    a.scan(Timestamp::from_millis(1));
    std::fs::remove_dir_all(f.root.join("cpuset/slurm_n1/uid_1000/job_7")).unwrap();
    std::fs::remove_dir_all(f.root.join("freezer/slurm_n1/uid_1000/job_7")).unwrap();
    let all = scan_until(&mut a, |c| {
        c.iter().any(|c| matches!(c, SlurmChange::Ended { .. }))
    });
    let ends: Vec<&SlurmChange> = all
        .iter()
        .filter(|c| matches!(c, SlurmChange::Ended { .. }))
        .collect();
    assert!(
        matches!(ends.as_slice(), [SlurmChange::Ended { id: 7, end: Ok(e) }] if e.state == "COMPLETED"),
        "{all:?}"
    );
    assert_eq!(read(&f.root.join("ends")), "3", "asked three times");
}
