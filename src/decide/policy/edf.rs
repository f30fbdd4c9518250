//! `edf`: earliest absolute deadline (submission time + `spec.deadline`) first; jobs without a
//! deadline go last, in submission order.

use super::{Command, JobView, Policy, PolicyConfig, Rank, Snapshot, engine};
use crate::model::job::Timestamp;

/// The absolute deadline, if the job has one.
pub fn deadline(job: &JobView<'_>) -> Option<Timestamp> {
    job.spec.deadline.map(|d| job.submitted.plus(d))
}

/// The absolute deadline in milliseconds since the epoch; no deadline ranks last.
pub fn rank(job: &JobView<'_>) -> Rank {
    match deadline(job) {
        Some(t) => {
            Rank(i64::try_from(t.as_millis()).map_or(i64::MAX - 1, |ms| ms.min(i64::MAX - 1)))
        }
        None => Rank(i64::MAX),
    }
}

#[derive(Debug, Clone, Default)]
pub struct Edf {
    cfg: PolicyConfig,
}

impl Edf {
    pub fn new(cfg: PolicyConfig) -> Self {
        Self { cfg }
    }
}

impl Policy for Edf {
    fn name(&self) -> &'static str {
        "edf"
    }

    fn rank(&self, job: &JobView<'_>) -> Rank {
        rank(job)
    }

    fn decide(&self, snap: &Snapshot<'_>) -> Vec<Command> {
        engine::decide(snap, &self.cfg, self.name(), &rank)
    }
}
