//! Squeezing Slurm's jobs: which to narrow, pause, widen or resume when the service's cores
//! change, never giving a job a core outside what Slurm allocated to it; the order of the
//! cpuset writes in a job's group tree; and when to drain the node in Slurm.
//!
//! The problem: Slurm placed each job on its own cores; lowsched may only take cores away from
//! a job (for the service) and give them back, never move it. The approach: a job's target is
//! its allocation minus the cores batch may not use; an empty target pauses it. Squeezes
//! (narrow, pause) come before releases (widen, resume), so the service's cores are free
//! before anything is handed back; among squeezes the least important job goes first (lowest
//! Slurm priority, then the most recently started), and releases go the other way round.

use std::cmp::Reverse;
use std::time::Duration;

use crate::model::cpuset::CpuSet;
use crate::model::job::Timestamp;

/// What the planner knows of one Slurm job on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlurmJobView {
    /// Slurm's job id.
    pub id: u64,
    /// The cores Slurm allocated to it on this node.
    pub allocation: CpuSet,
    /// The cores its group has now.
    pub cores: CpuSet,
    /// Frozen by lowsched.
    pub paused: bool,
    /// Suspended in Slurm by someone else (an administrator): left alone, never resumed.
    pub held_by_other: bool,
    /// Slurm's priority, where it could be read (higher is more important).
    pub priority: Option<u64>,
    /// When lowsched first saw it running.
    pub started: Timestamp,
}

/// One change to a Slurm job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlurmAction {
    /// Rewrite its cpusets from `from` to `to` (narrowing, widening, or both).
    Resize { job: u64, from: CpuSet, to: CpuSet },
    /// Freeze it (and suspend it in Slurm); its cpusets stay as they are.
    Pause { job: u64 },
    /// Set its cpusets to `cores`, then thaw it (and resume it in Slurm).
    Resume { job: u64, cores: CpuSet },
}

impl SlurmAction {
    pub fn job(&self) -> u64 {
        match *self {
            SlurmAction::Resize { job, .. }
            | SlurmAction::Pause { job }
            | SlurmAction::Resume { job, .. } => job,
        }
    }
}

/// The actions that bring every job to its allocation minus `forbidden` (the cores batch may
/// not use now), squeezes first in squeeze order, then releases in the reverse order.
pub fn plan(jobs: &[SlurmJobView], forbidden: &CpuSet) -> Vec<SlurmAction> {
    let mut order: Vec<&SlurmJobView> = jobs.iter().filter(|j| !j.held_by_other).collect();
    order.sort_by_key(|j| (j.priority.unwrap_or(0), Reverse(j.started), Reverse(j.id)));
    let mut squeezes = Vec::new();
    let mut releases = Vec::new();
    for job in order {
        let target = job.allocation.difference(forbidden);
        if target.is_empty() {
            if !job.paused {
                squeezes.push(SlurmAction::Pause { job: job.id });
            }
        } else if job.paused {
            releases.push(SlurmAction::Resume {
                job: job.id,
                cores: target,
            });
        } else if job.cores != target {
            let action = SlurmAction::Resize {
                job: job.id,
                from: job.cores,
                to: target,
            };
            if target.is_subset(&job.cores) {
                squeezes.push(action);
            } else {
                releases.push(action);
            }
        }
    }
    releases.reverse();
    squeezes.extend(releases);
    squeezes
}

/// Which group of a job's tree a cpuset write goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// `job_<N>` itself.
    Job,
    /// Every `step_<S>` under it.
    Steps,
}

/// The cpuset writes that take a job's tree from `current` to `target` without ever asking a
/// group for a core its parent lacks or dropping from a parent a core a child still has (v1
/// refuses both: ERANGE, EBUSY): the parent first widens to the union, the steps take the
/// target, then the parent narrows to it. Pure narrowing is steps then job; pure widening is
/// job then steps.
pub fn cpuset_writes(current: CpuSet, target: CpuSet) -> Vec<(Level, CpuSet)> {
    let mut writes = Vec::with_capacity(3);
    let union = current.union(&target);
    if union != current {
        writes.push((Level::Job, union));
    }
    writes.push((Level::Steps, target));
    if union != target {
        writes.push((Level::Job, target));
    }
    writes
}

/// What lowsched last did to the node's state in Slurm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeDrain {
    /// Not drained by lowsched.
    Open,
    /// Drained by lowsched (its reason is on the node).
    Drained,
}

/// A change of the node's state in Slurm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainAction {
    Drain,
    Resume,
}

/// Drain once batch has had no core for `hold` (since `no_core_since`); resume a node
/// lowsched drained as soon as batch has a core again.
pub fn drain_decision(
    state: NodeDrain,
    no_core_since: Option<Timestamp>,
    now: Timestamp,
    hold: Duration,
) -> Option<DrainAction> {
    match (state, no_core_since) {
        (NodeDrain::Open, Some(since)) if now.since(since) >= hold => Some(DrainAction::Drain),
        (NodeDrain::Drained, None) => Some(DrainAction::Resume),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
