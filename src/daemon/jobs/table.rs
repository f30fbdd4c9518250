//! The daemon's job table: every known job with its state, cores and outcome — the "state" that
//! policies read as snapshots and the socket serves as status. Changed only through the door
//! (`super::Jobs`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::api::protocol::JobStatus;
use crate::decide::policy::{ActiveJob, JobView};
use crate::model::cpuset::CpuSet;
use crate::model::inventory::GpuSet;
use crate::model::job::{JobId, JobSpec, Timestamp};
use crate::model::jobstate::{IllegalTransition, JobState};
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
    pub ended: Option<Timestamp>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    pub pids: Vec<u32>,
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
            ended: None,
            exit_code: None,
            signal: None,
            reason: None,
            pids: Vec::new(),
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
        }
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

/// All jobs, with an index of the active ones (running or paused), and the finished ones in
/// the order they ended, of which only the `keep_finished` most recent stay.
#[derive(Debug, Default)]
pub struct JobTable {
    jobs: BTreeMap<JobId, JobRecord>,
    active: BTreeSet<JobId>,
    finished: VecDeque<JobId>,
    /// `None`: keep every finished job.
    keep_finished: Option<usize>,
    /// Finished jobs dropped since [`JobTable::take_pruned`] last asked.
    pruned: usize,
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
                    self.jobs.remove(&id);
                    self.pruned += 1;
                }
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
        rec.state = rec
            .state
            .move_to(to)
            .map_err(|source| TableError::Illegal { id, source })?;
        if to.is_active() {
            self.active.insert(id);
        } else {
            self.active.remove(&id);
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
