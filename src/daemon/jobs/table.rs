//! The daemon's job table: every known job with its state, cores and outcome — the "state" that
//! policies read as snapshots and the socket serves as status. Changed only through the door
//! (`super::Jobs`).

use std::collections::{BTreeMap, BTreeSet};

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

/// All jobs, with an index of the active ones (running or paused).
#[derive(Debug, Default)]
pub struct JobTable {
    jobs: BTreeMap<JobId, JobRecord>,
    active: BTreeSet<JobId>,
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
        self.jobs.insert(rec.id, rec);
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
