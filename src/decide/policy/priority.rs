//! `priority`: higher `spec.priority` first; equal priorities in submission order.

use super::{Command, JobView, Policy, PolicyConfig, Rank, Snapshot, engine};

/// Lower ranks run first, so the rank is the negated priority.
pub fn rank(job: &JobView<'_>) -> Rank {
    Rank(-i64::from(job.spec.priority))
}

#[derive(Debug, Clone, Default)]
pub struct Priority {
    cfg: PolicyConfig,
}

impl Priority {
    pub fn new(cfg: PolicyConfig) -> Self {
        Self { cfg }
    }
}

impl Policy for Priority {
    fn name(&self) -> &'static str {
        "priority"
    }

    fn rank(&self, job: &JobView<'_>) -> Rank {
        rank(job)
    }

    fn decide(&self, snap: &Snapshot<'_>) -> Vec<Command> {
        engine::decide(snap, &self.cfg, self.name(), &rank)
    }
}
