//! The door's order and its refusals, on a temp-dir journal and an in-memory event log.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::model::job::JobSpec;
use crate::store::journal::read;

fn owner() -> Owner {
    Owner {
        uid: 1000,
        gid: 1000,
        user: "alice".into(),
    }
}

fn door() -> (tempfile::TempDir, Jobs) {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path()).unwrap();
    (dir, Jobs::new(journal, EventLog::in_memory()))
}

fn submit(jobs: &Jobs, id: u64) {
    let mut staged = Staged::default();
    let rec = JobRecord::new(
        JobId(id),
        JobSpec::new(vec!["true".into()]),
        owner(),
        Timestamp(1),
    );
    jobs.stage(&mut staged, rec, Credentials::from_ids(1000, 1000))
        .unwrap();
    jobs.accept(&mut staged, |_| Rank(0)).unwrap();
}

fn events(jobs: &Jobs) -> Vec<(String, String)> {
    let (evs, _) = jobs.events().since(0, 1000, Duration::ZERO);
    evs.into_iter()
        .map(|e| (e.event, e.args.first().cloned().unwrap_or_default()))
        .collect()
}

fn started() -> Change {
    Change::Started {
        cores: "1".parse().unwrap(),
        gpus: GpuSet::default(),
        reason: "fits".into(),
    }
}

#[test]
fn a_staged_submit_is_invisible_until_accepted_then_everywhere() {
    let (dir, jobs) = door();
    let mut staged = Staged::default();
    let rec = JobRecord::new(
        JobId(1),
        JobSpec::new(vec!["true".into()]),
        owner(),
        Timestamp(1),
    );
    jobs.stage(&mut staged, rec, Credentials::from_ids(1000, 1000))
        .unwrap();
    assert!(jobs.table().get(JobId(1)).is_none());
    assert!(jobs.queue().is_empty());
    jobs.accept(&mut staged, |_| Rank(0)).unwrap();
    assert_eq!(jobs.table().get(JobId(1)).unwrap().state, JobState::Pending);
    assert!(jobs.queue().contains(JobId(1)));
    assert_eq!(events(&jobs), vec![("custom".into(), "accepted".into())]);
    let replay = read(&dir.path().join("journal")).unwrap();
    assert!(replay.jobs.contains_key(&JobId(1)));
    assert_eq!(jobs.credentials(JobId(1)).unwrap().uid, 1000);
}

#[test]
fn an_end_is_journaled_shown_logged_and_wakes_a_waiter() {
    let (dir, jobs) = door();
    let jobs = Arc::new(jobs);
    submit(&jobs, 1);
    jobs.apply(JobId(1), started(), Timestamp(2)).unwrap();
    let waiter = {
        let jobs = jobs.clone();
        std::thread::spawn(move || {
            jobs.wait(JobId(1), Duration::from_secs(60), || false, |r| r.state)
                .unwrap()
        })
    };
    let end = Change::Finished {
        state: JobState::Failed,
        exit: Some(ExitStatus::Exited(3)),
        reason: Some("exited with 3".into()),
    };
    jobs.apply(JobId(1), end, Timestamp(3)).unwrap();
    assert_eq!(waiter.join().unwrap(), (true, JobState::Failed));
    let t = jobs.table();
    let rec = t.get(JobId(1)).unwrap();
    assert_eq!((rec.exit_code, rec.ended), (Some(3), Some(Timestamp(3))));
    assert!(rec.cores.is_empty());
    drop(t);
    let replay = read(&dir.path().join("journal")).unwrap();
    let ending = replay.jobs[&JobId(1)].ending.clone().unwrap();
    assert_eq!(
        (ending.state, ending.exit_code),
        (JobState::Failed, Some(3))
    );
    let evs = events(&jobs);
    assert_eq!(evs[1].0, "start");
    assert_eq!(evs[2].0, "end");
    // An ended job leaves the queue and its credentials go.
    assert!(!jobs.queue().contains(JobId(1)));
}

#[test]
fn an_illegal_change_reaches_neither_journal_nor_event_log() {
    let (dir, jobs) = door();
    submit(&jobs, 1);
    let cancel = || Change::Finished {
        state: JobState::Cancelled,
        exit: None,
        reason: None,
    };
    jobs.apply(JobId(1), cancel(), Timestamp(2)).unwrap();
    let before = std::fs::read_to_string(dir.path().join("journal")).unwrap();
    let n = events(&jobs).len();
    let e = jobs.apply(JobId(1), started(), Timestamp(3)).unwrap_err();
    assert!(e.to_string().contains("cancelled"), "{e}");
    assert!(jobs.apply(JobId(1), cancel(), Timestamp(4)).is_err());
    let resize = Change::Resized {
        cores: "0".parse().unwrap(),
        reason: String::new(),
    };
    assert!(matches!(
        jobs.apply(JobId(1), resize, Timestamp(5)),
        Err(JobsError::NotApplicable { .. })
    ));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("journal")).unwrap(),
        before
    );
    assert_eq!(events(&jobs).len(), n);
    assert!(matches!(
        jobs.apply(JobId(9), started(), Timestamp(6)),
        Err(JobsError::Table(TableError::NotFound(_)))
    ));
}

#[test]
fn an_owners_hold_is_durable_and_a_policy_pause_is_not() {
    let (dir, jobs) = door();
    submit(&jobs, 1);
    jobs.apply(JobId(1), started(), Timestamp(2)).unwrap();
    let pause = |held| Change::Paused {
        reason: "x".into(),
        held,
    };
    jobs.apply(JobId(1), pause(false), Timestamp(3)).unwrap();
    let held =
        |dir: &tempfile::TempDir| read(&dir.path().join("journal")).unwrap().jobs[&JobId(1)].held;
    assert!(!held(&dir));
    let hold = Change::Held {
        held: true,
        by: "paused by uid 1000".into(),
    };
    jobs.apply(JobId(1), hold, Timestamp(4)).unwrap();
    assert!(held(&dir));
    assert!(jobs.table().get(JobId(1)).unwrap().held);
    assert_eq!(events(&jobs).last().unwrap().1, "held");
}

#[test]
fn adoption_finds_a_paused_job_and_says_so() {
    let (_dir, jobs) = door();
    let rec = JobRecord::new(
        JobId(4),
        JobSpec::new(vec!["true".into()]),
        owner(),
        Timestamp(1),
    );
    jobs.restore(rec, None);
    assert!(jobs.queue().is_empty());
    let adopted = Change::Adopted {
        paused: true,
        cores: "1".parse().unwrap(),
        pids: vec![42],
    };
    jobs.apply(JobId(4), adopted, Timestamp(2)).unwrap();
    let t = jobs.table();
    let rec = t.get(JobId(4)).unwrap();
    assert_eq!(rec.state, JobState::Paused);
    assert!(rec.cores.is_empty());
    assert_eq!(rec.pids, vec![42]);
    assert_eq!(t.active().count(), 1);
    drop(t);
    assert_eq!(events(&jobs), vec![("custom".into(), "adopted".into())]);
}

#[test]
fn a_job_another_scheduler_started_is_journaled_running_and_never_queued() {
    let (dir, jobs) = door();
    let mut spec = JobSpec::new(vec!["slurm".into(), "job".into(), "42".into()]);
    spec.origin = crate::model::job::Origin::Slurm(42);
    let rec = JobRecord::new(JobId(7), spec, owner(), Timestamp(1));
    jobs.accept_started(
        rec,
        Credentials::from_ids(1000, 1000),
        "0-1".parse().unwrap(),
        "found".into(),
        Timestamp(2),
    )
    .unwrap();
    assert!(
        !jobs.queue().contains(JobId(7)),
        "the policy never starts it"
    );
    let table = jobs.table();
    let r = table.get(JobId(7)).unwrap();
    assert_eq!(r.state, JobState::Running);
    assert_eq!(r.cores.to_string(), "0-1");
    assert_eq!(table.active().count(), 0, "not one of lowsched's own");
    assert_eq!(table.foreign_active().count(), 1);
    drop(table);
    let names: Vec<String> = events(&jobs).into_iter().map(|(e, _)| e).collect();
    assert_eq!(names, vec!["custom", "start"], "accepted, then started");
    let (_, replay) = Journal::open(dir.path()).unwrap();
    let j = replay.jobs.get(&JobId(7)).unwrap();
    assert_eq!(
        j.spec.origin,
        crate::model::job::Origin::Slurm(42),
        "durable with its origin, so recovery leaves it to the Slurm side"
    );
}

/// The job as the journal file has it now (what a restart would find).
fn on_disk(dir: &tempfile::TempDir, id: u64) -> crate::store::journal::JournaledJob {
    read(&dir.path().join("journal")).unwrap().jobs[&JobId(id)].clone()
}

#[test]
fn a_start_is_durable_before_the_launch_and_no_launch_without_it() {
    let (dir, jobs) = door();
    submit(&jobs, 1);
    submit(&jobs, 2);
    let mut launched = false;
    jobs.apply_with(JobId(1), started(), Timestamp(2), || {
        // The launch sees the start already on disk.
        assert!(
            on_disk(&dir, 1).started.is_some(),
            "launched before its start was durable"
        );
        launched = true;
        Ok(())
    })
    .unwrap();
    assert!(launched);
    assert_eq!(jobs.table().get(JobId(1)).unwrap().state, JobState::Running);

    jobs.journal().refuse_writes(true);
    let refused = jobs.apply_with(JobId(2), started(), Timestamp(3), || {
        panic!("launched although its start could not be recorded")
    });
    let e = refused.unwrap_err();
    assert!(matches!(e, JobsError::NotRecorded { .. }), "{e}");
    assert!(
        e.to_string().contains("no space left on the state dir"),
        "{e}"
    );
    assert_eq!(jobs.table().get(JobId(2)).unwrap().state, JobState::Pending);
    assert!(on_disk(&dir, 2).started.is_none());
    // Space is back: the same start goes through.
    jobs.journal().refuse_writes(false);
    jobs.apply_with(JobId(2), started(), Timestamp(4), || Ok(()))
        .unwrap();
    assert!(on_disk(&dir, 2).started.is_some());
}

#[test]
fn a_failed_launch_leaves_the_job_pending_in_the_table() {
    let (_dir, jobs) = door();
    submit(&jobs, 1);
    let e = jobs
        .apply_with(
            JobId(1),
            started(),
            Timestamp(2),
            || Err("no waiter".into()),
        )
        .unwrap_err();
    assert!(matches!(e, JobsError::Node { .. }), "{e}");
    assert_eq!(jobs.table().get(JobId(1)).unwrap().state, JobState::Pending);
}

#[test]
fn an_end_is_durable_before_the_exit_record_is_released_and_kept_when_it_is_not() {
    let (dir, jobs) = door();
    submit(&jobs, 1);
    submit(&jobs, 2);
    for id in [1, 2] {
        jobs.apply(JobId(id), started(), Timestamp(2)).unwrap();
    }
    let end = || Change::Finished {
        state: JobState::Succeeded,
        exit: Some(ExitStatus::Exited(0)),
        reason: None,
    };
    let mut released = false;
    jobs.apply_with(JobId(1), end(), Timestamp(3), || {
        assert!(
            on_disk(&dir, 1).ending.is_some(),
            "released before the end was durable"
        );
        released = true;
        Ok(())
    })
    .unwrap();
    assert!(released);

    jobs.journal().refuse_writes(true);
    let e = jobs
        .apply_with(JobId(2), end(), Timestamp(4), || {
            panic!("exit record released although the end could not be recorded")
        })
        .unwrap_err();
    assert!(matches!(e, JobsError::NotRecorded { .. }), "{e}");
    // Not ended anywhere, so the retry on a later turn ends it, once.
    assert_eq!(jobs.table().get(JobId(2)).unwrap().state, JobState::Running);
    assert!(on_disk(&dir, 2).ending.is_none());
    jobs.journal().refuse_writes(false);
    jobs.apply(JobId(2), end(), Timestamp(5)).unwrap();
    assert!(jobs.apply(JobId(2), end(), Timestamp(6)).is_err());
    let ends = events(&jobs).iter().filter(|(e, _)| e == "end").count();
    assert_eq!(ends, 2, "each job ends exactly once");
}

#[test]
fn an_owners_hold_that_cannot_be_recorded_is_refused_with_the_journals_error() {
    let (dir, jobs) = door();
    submit(&jobs, 1);
    jobs.apply(JobId(1), started(), Timestamp(2)).unwrap();
    jobs.journal().refuse_writes(true);
    let hold = Change::Paused {
        reason: "paused by uid 1000".into(),
        held: true,
    };
    let e = jobs.apply(JobId(1), hold, Timestamp(3)).unwrap_err();
    assert!(
        e.to_string().contains("no space left on the state dir"),
        "{e}"
    );
    let t = jobs.table();
    let rec = t.get(JobId(1)).unwrap();
    assert_eq!((rec.state, rec.held), (JobState::Running, false));
    drop(t);
    jobs.journal().refuse_writes(false);
    assert!(!on_disk(&dir, 1).held);
}
