//! The daemon's job table: every known job with its state, cores and outcome — the "state" that
//! policies read as snapshots and the socket serves as status. Changed only through the door
//! (`super::Jobs`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::api::protocol::{Asked, JobStatus};
use crate::decide::policy::{ActiveJob, JobView, hold};
use crate::model::cpuset::CpuSet;
use crate::model::inventory::GpuSet;
use crate::model::job::{JobId, JobSpec, Timestamp};
use crate::model::jobstate::{IllegalTransition, JobState};
use crate::model::usage::Usage;
use crate::store::journal::{Ending, Owner};

/// One job as the daemon tracks it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub spec: JobSpec,
    pub owner: Owner,
    pub submitted: Timestamp,
    pub state: JobState,
    /// Paused by its owner: policies leave it paused.
    pub held: bool,
    /// Cores it holds while running.
    pub cores: CpuSet,
    pub gpus: GpuSet,
    pub first_started: Option<Timestamp>,
    /// When it last started or resumed.
    pub last_started: Option<Timestamp>,
    /// How long it ran before `last_started`, time paused not counted (its run-time limit's
    /// clock, see `decide::policy::timelimit`).
    pub ran: Duration,
    pub ended: Option<Timestamp>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    pub pids: Vec<u32>,
    /// What its cgroup reported when it ended.
    pub usage: Option<Usage>,
}

impl JobRecord {
    /// A newly accepted, pending job.
    pub fn new(id: JobId, spec: JobSpec, owner: Owner, submitted: Timestamp) -> Self {
        Self {
            id,
            spec,
            owner,
            submitted,
            state: JobState::Pending,
            held: false,
            cores: CpuSet::new(),
            gpus: GpuSet::default(),
            first_started: None,
            last_started: None,
            ran: Duration::ZERO,
            ended: None,
            exit_code: None,
            signal: None,
            reason: None,
            pids: Vec::new(),
            usage: None,
        }
    }

    pub fn view(&self) -> JobView<'_> {
        JobView {
            id: self.id,
            spec: &self.spec,
            submitted: self.submitted,
            seq: self.id.0,
            owner: self.owner.uid,
        }
    }

    /// The job as shown to `caller_uid`: the environment only for root and the owner.
    pub fn status(&self, caller_uid: u32) -> JobStatus {
        let may_see_env = caller_uid == 0 || caller_uid == self.owner.uid;
        JobStatus {
            id: self.id,
            name: self.spec.name.clone(),
            state: self.state,
            user: self.owner.user.clone(),
            uid: self.owner.uid,
            cores: if self.state == JobState::Running {
                self.cores.to_vec()
            } else {
                Vec::new()
            },
            pids: self.pids.clone(),
            exit_code: self.exit_code,
            signal: self.signal,
            reason: self.reason.clone(),
            priority: self.spec.priority,
            argv: self.spec.argv.clone(),
            env: may_see_env.then(|| self.spec.env.clone()),
            submitted_ms: self.submitted.as_millis(),
            started_ms: self.first_started.map(Timestamp::as_millis),
            ended_ms: self.ended.map(Timestamp::as_millis),
            held: self.held,
            origin: self.spec.origin,
            task: self.spec.task,
            time_limit_s: self.spec.time_limit.map(|d| d.as_secs_f64()),
            ran_ms: u64::try_from(self.ran.as_millis()).unwrap_or(u64::MAX),
            resumed_ms: (self.state == JobState::Running)
                .then_some(self.last_started)
                .flatten()
                .map(Timestamp::as_millis),
            dependencies: self.spec.dependencies.clone(),
            asked: Some(Asked::of(&self.spec)),
            gpus: self.gpus.iter().collect(),
            usage: self.usage,
        }
    }

    /// Found on the node after a restart, at `at`. The journal does not keep when it was
    /// paused, so its run-time limit counts all the time since it first started: a restart
    /// never lets a job outrun its limit.
    pub fn found_running(&mut self, at: Timestamp) {
        self.last_started = Some(at);
        self.ran = self.first_started.map_or(Duration::ZERO, |s| at.since(s));
    }

    /// Takes back how it ended (and what it used) from the journal.
    pub fn restore_ending(&mut self, e: &Ending, usage: Option<Usage>) {
        self.state = e.state;
        self.exit_code = e.exit_code;
        self.signal = e.signal;
        self.reason = e.reason.clone();
        self.ended = Some(e.at);
        self.usage = usage;
    }

    /// The journal's record of how it ended, if it has.
    pub fn ending(&self) -> Option<Ending> {
        self.state.is_terminal().then(|| Ending {
            state: self.state,
            exit_code: self.exit_code,
            signal: self.signal,
            reason: self.reason.clone(),
            at: self.ended.unwrap_or_default(),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("no job {0}")]
    NotFound(JobId),
    #[error("job {id}: {source}")]
    Illegal {
        id: JobId,
        source: IllegalTransition,
    },
}

/// All jobs, with an index of the active ones (running or paused) and of arrays' tasks, and
/// the finished ones in the order they ended, of which only the `keep_finished` most recent
/// stay.
#[derive(Debug, Default)]
pub struct JobTable {
    jobs: BTreeMap<JobId, JobRecord>,
    active: BTreeSet<JobId>,
    finished: VecDeque<JobId>,
    /// `None`: keep every finished job.
    keep_finished: Option<usize>,
    /// Finished jobs dropped since [`JobTable::take_pruned`] last asked.
    pruned: usize,
    /// Each array's tasks, by the array's id.
    arrays: BTreeMap<JobId, Vec<JobId>>,
}

impl JobTable {
    /// A table holding `recs` as they are, for tests of code that reads the table.
    #[cfg(test)]
    pub(crate) fn of(recs: impl IntoIterator<Item = JobRecord>) -> Self {
        let mut t = Self::default();
        for r in recs {
            t.insert(r);
        }
        t
    }

    pub(super) fn insert(&mut self, rec: JobRecord) {
        if rec.state.is_active() {
            self.active.insert(rec.id);
        }
        if rec.state.is_terminal() {
            self.finished.push_back(rec.id);
        }
        if let Some(t) = rec.spec.task {
            self.arrays.entry(t.array).or_default().push(rec.id);
        }
        self.jobs.insert(rec.id, rec);
    }

    /// Keeps at most `keep` finished jobs (at least one: the job that just ended stays for its
    /// waiters), dropping the longest ended first.
    pub(super) fn set_keep_finished(&mut self, keep: usize) {
        self.keep_finished = Some(keep.max(1));
        self.prune_finished();
    }

    /// How many finished jobs were dropped since the last call.
    pub(super) fn take_pruned(&mut self) -> usize {
        std::mem::take(&mut self.pruned)
    }

    /// Drops the finished jobs beyond `keep_finished`, longest ended first.
    pub(super) fn prune_finished(&mut self) {
        let Some(keep) = self.keep_finished else {
            return;
        };
        while self.finished.len() > keep {
            if let Some(id) = self.finished.pop_front() {
                if self.jobs.get(&id).is_some_and(|r| r.state.is_terminal()) {
                    if let Some(t) = self.jobs.remove(&id).and_then(|r| r.spec.task) {
                        self.forget_task(t.array, id);
                    }
                    self.pruned += 1;
                }
            }
        }
    }

    /// Drops a pruned task from its array's index (and the array once it has none left).
    fn forget_task(&mut self, array: JobId, id: JobId) {
        if let Some(tasks) = self.arrays.get_mut(&array) {
            tasks.retain(|&t| t != id);
            if tasks.is_empty() {
                self.arrays.remove(&array);
            }
        }
    }

    pub fn get(&self, id: JobId) -> Option<&JobRecord> {
        self.jobs.get(&id)
    }

    pub(super) fn get_mut(&mut self, id: JobId) -> Option<&mut JobRecord> {
        self.jobs.get_mut(&id)
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values()
    }

    /// Running and paused jobs lowsched runs itself (not those of another scheduler).
    pub fn active(&self) -> impl Iterator<Item = &JobRecord> {
        self.active
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|r| r.spec.origin.is_lowsched())
    }

    /// Running and paused jobs of another scheduler (Slurm's, found on the node).
    pub fn foreign_active(&self) -> impl Iterator<Item = &JobRecord> {
        self.active
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|r| !r.spec.origin.is_lowsched())
    }

    /// The state of job `id`, or of every task when `id` is an array's (empty: not known).
    pub fn states(&self, id: JobId) -> Vec<JobState> {
        match self.arrays.get(&id) {
            Some(tasks) => tasks
                .iter()
                .filter_map(|t| self.jobs.get(t).map(|r| r.state))
                .collect(),
            None => self.jobs.get(&id).map(|r| r.state).into_iter().collect(),
        }
    }

    /// The tasks of array `id` (none if it is not an array's id).
    pub fn tasks(&self, id: JobId) -> &[JobId] {
        self.arrays.get(&id).map_or(&[], Vec::as_slice)
    }

    /// Whether `id` names a job or an array.
    pub fn knows(&self, id: JobId) -> bool {
        self.jobs.contains_key(&id) || self.arrays.contains_key(&id)
    }

    /// Job `r` as shown to `caller_uid`, with why it still waits when it is held back from
    /// the policy (its dependencies, its array's cap).
    pub fn shown(&self, r: &JobRecord, caller_uid: u32) -> JobStatus {
        let mut s = r.status(caller_uid);
        if r.state == JobState::Pending && s.reason.is_none() {
            let states = |id: JobId| self.states(id);
            let array_active = r.spec.task.map_or(0, |t| {
                self.tasks(t.array)
                    .iter()
                    .filter(|id| self.jobs.get(id).is_some_and(|j| j.state.is_active()))
                    .count()
            });
            s.reason = hold::pending_reason(&r.spec, &states, array_active);
        }
        s
    }

    /// Counts by state, for status lines.
    pub fn counts(&self) -> BTreeMap<JobState, usize> {
        let mut out = BTreeMap::new();
        for j in self.jobs.values() {
            *out.entry(j.state).or_insert(0) += 1;
        }
        out
    }

    /// Moves a job to `to` through the lifecycle's transition function, keeping the active index
    /// right. Terminal moves record the time.
    pub(super) fn transition(
        &mut self,
        id: JobId,
        to: JobState,
        at: Timestamp,
    ) -> Result<&mut JobRecord, TableError> {
        let rec = self.jobs.get_mut(&id).ok_or(TableError::NotFound(id))?;
        let was_running = rec.state == JobState::Running;
        rec.state = rec
            .state
            .move_to(to)
            .map_err(|source| TableError::Illegal { id, source })?;
        if to.is_active() {
            self.active.insert(id);
        } else {
            self.active.remove(&id);
        }
        if was_running {
            // Its run-time clock stops while it is paused or ended.
            rec.ran += rec.last_started.map_or(Duration::ZERO, |s| at.since(s));
        }
        match to {
            JobState::Running => {
                rec.first_started.get_or_insert(at);
                rec.last_started = Some(at);
            }
            JobState::Paused => rec.cores = CpuSet::new(),
            s if s.is_terminal() => {
                self.finished.push_back(id);
                rec.ended = Some(at);
                rec.cores = CpuSet::new();
                rec.gpus = GpuSet::default();
                rec.pids.clear();
            }
            _ => {}
        }
        Ok(rec)
    }

    pub(super) fn set_pids(&mut self, id: JobId, pids: Vec<u32>) {
        if let Some(r) = self.jobs.get_mut(&id) {
            r.pids = pids;
        }
    }

    /// The policy's view of the active jobs.
    pub fn active_views(&self) -> Vec<ActiveJob<'_>> {
        self.active()
            .map(|r| ActiveJob {
                job: r.view(),
                state: r.state,
                cores: if r.state == JobState::Running {
                    r.cores
                } else {
                    CpuSet::new()
                },
                gpus: r.gpus,
                started: r.last_started.unwrap_or(r.submitted),
                ran: r.ran,
                held: r.held,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, uid: u32) -> JobRecord {
        let mut spec = JobSpec::new(vec!["true".into()]);
        spec.env.insert("SECRET".into(), "x".into());
        JobRecord::new(
            JobId(id),
            spec,
            Owner {
                uid,
                gid: uid,
                user: format!("u{uid}"),
            },
            Timestamp(5),
        )
    }

    #[test]
    fn only_the_most_recently_finished_jobs_stay() {
        let mut t = JobTable::default();
        for id in 1..=5 {
            t.insert(rec(id, 1000));
        }
        t.set_keep_finished(2);
        for id in [3, 1, 4] {
            t.transition(JobId(id), JobState::Cancelled, Timestamp(id))
                .unwrap();
            t.prune_finished();
        }
        // 3 ended first and went; the pending ones are never dropped.
        let ids: Vec<u64> = t.iter().map(|r| r.id.0).collect();
        assert_eq!(ids, vec![1, 2, 4, 5]);
        t.set_keep_finished(0);
        let ids: Vec<u64> = t.iter().map(|r| r.id.0).collect();
        assert_eq!(
            ids,
            vec![2, 4, 5],
            "the last one ended stays for its waiters"
        );
    }

    #[test]
    fn transitions_keep_the_active_index() {
        let mut t = JobTable::default();
        t.insert(rec(1, 1000));
        t.insert(rec(2, 1000));
        t.transition(JobId(1), JobState::Running, Timestamp(10))
            .unwrap()
            .cores = "0-1".parse().unwrap();
        assert_eq!(t.active().count(), 1);
        assert_eq!(t.active_views()[0].cores.to_string(), "0-1");
        t.transition(JobId(1), JobState::Paused, Timestamp(11))
            .unwrap();
        assert!(t.active_views()[0].cores.is_empty());
        assert_eq!(t.active_views()[0].ran, Duration::from_millis(1));
        t.transition(JobId(1), JobState::Succeeded, Timestamp(12))
            .unwrap();
        assert_eq!(t.active().count(), 0);
        assert_eq!(t.get(JobId(1)).unwrap().ended, Some(Timestamp(12)));
        let e = t
            .transition(JobId(1), JobState::Running, Timestamp(13))
            .unwrap_err();
        assert!(e.to_string().contains("succeeded"), "{e}");
        assert_eq!(
            t.transition(JobId(9), JobState::Running, Timestamp(1))
                .unwrap_err(),
            TableError::NotFound(JobId(9))
        );
    }

    #[test]
    fn env_is_shown_only_to_root_and_the_owner() {
        let r = rec(1, 1000);
        assert!(r.status(1000).env.is_some());
        assert!(r.status(0).env.is_some());
        assert!(r.status(1001).env.is_none());
    }
}
