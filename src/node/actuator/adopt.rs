//! Taking over after a daemon restart: the jobs still running are found in the cgroup tree
//! (their waiters too, guarded against PID reuse), the jobs that ended meanwhile in the exit
//! records of the state dir.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;

use nix::unistd::Pid;

use super::reaper::{Watch, read_record};
use super::{ActuationError, Actuator, Job};
use crate::model::cpuset::CpuSet;
use crate::model::exit::{ExitEvent, ExitStatus};
use crate::model::job::JobId;
use crate::node::cgroup::JobGroup;
use crate::sys::pidfd_open;

/// A job found running (or paused) on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdoptedJob {
    pub id: JobId,
    pub paused: bool,
    pub cores: CpuSet,
    /// Its processes now.
    pub pids: Vec<Pid>,
    pub waiter: Pid,
}

/// What [`Actuator::adopt`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adoption {
    /// Still on the node; their exits will arrive as events.
    pub running: Vec<AdoptedJob>,
    /// Ended while no daemon watched (or their waiter is gone): call
    /// [`Actuator::release`] once recorded.
    pub ended: Vec<ExitEvent>,
    /// Groups made by [`Actuator::prepare`] whose job never started (no waiter, no record, no
    /// processes): kept as prepared; `run` uses them, `release` drops them. A daemon that
    /// believes one of these jobs was started lost it in the instant between its start and
    /// the waiter's first step.
    pub prepared: Vec<JobId>,
}

impl Actuator {
    /// Takes over the jobs a previous daemon left: every `batch/job-<id>` group and every
    /// uncollected exit record. Jobs already known to this actuator are skipped.
    pub fn adopt(&mut self) -> Result<Adoption, ActuationError> {
        let mut ids: BTreeSet<JobId> = self
            .tree
            .job_ids()
            .map_err(ActuationError::Tree)?
            .into_iter()
            .collect();
        ids.extend(self.state.recorded_jobs()?);
        let mut found = Adoption::default();
        for id in ids {
            if self.jobs.contains_key(&id) || self.prepared.contains_key(&id) {
                continue;
            }
            let record = self.state.exit_record(id);
            let mut group = match self.tree.open_job(id) {
                Ok(g) => Some(g),
                Err(e) if e.is_missing() => None,
                Err(e) => return Err(ActuationError::cgroup(id, e)),
            };
            // Waiter first, record second: a waiter writes the record before it exits, so a
            // waiter found gone means the record is final (or will never be).
            let waiter = group.as_ref().and_then(live_waiter);
            let recorded = read_record(&record);
            if let (Some(g), None, false) = (&group, &waiter, record.exists()) {
                if g.pids().is_ok_and(|p| p.is_empty()) {
                    found.prepared.push(id);
                    if let Some(g) = group {
                        self.prepared.insert(id, g);
                    }
                    continue;
                }
            }
            match (recorded, waiter, group.as_mut()) {
                (Err(_), Some((pid, pidfd)), Some(g)) => {
                    let err = |e| ActuationError::cgroup(id, e);
                    let job = AdoptedJob {
                        id,
                        paused: g.is_frozen().map_err(err)?,
                        cores: g.cores().map_err(err)?,
                        pids: g.pids().map_err(err)?,
                        waiter: pid,
                    };
                    self.reaper.watch(Watch::new(id, pidfd, record));
                    found.running.push(job.clone());
                    self.jobs.insert(
                        id,
                        Job {
                            group,
                            paused: job.paused,
                            cores: job.cores,
                        },
                    );
                }
                (recorded, _, _) => {
                    // Ended (its waiter may still be finishing: release waits for it).
                    let status = recorded.unwrap_or_else(|why| {
                        ExitStatus::Lost(format!("no waiter and no exit record ({why})"))
                    });
                    found.ended.push(ExitEvent { job: id, status });
                    self.jobs.insert(
                        id,
                        Job {
                            group,
                            paused: false,
                            cores: CpuSet::new(),
                        },
                    );
                }
            }
        }
        Ok(found)
    }
}

/// The job's waiter, if alive: a pidfd pins the process, then the pid must still be in the
/// job's group, so a pid reused by an unrelated process is never taken for the waiter.
fn live_waiter(group: &JobGroup) -> Option<(Pid, OwnedFd)> {
    for pid in group.waiter_pids().ok()? {
        let Ok(fd) = pidfd_open(pid) else { continue };
        if group.waiter_pids().ok()?.contains(&pid) {
            return Some((pid, fd));
        }
    }
    None
}
