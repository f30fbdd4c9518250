//! `fifo`: first submitted, first started (with backfill: a job that does not fit is skipped).

use super::{Command, JobView, Policy, PolicyConfig, Rank, Snapshot, engine};

/// Every job ranks the same, so the queue's submission order decides.
pub fn rank(_job: &JobView<'_>) -> Rank {
    Rank(0)
}

#[derive(Debug, Clone, Default)]
pub struct Fifo {
    cfg: PolicyConfig,
}

impl Fifo {
    pub fn new(cfg: PolicyConfig) -> Self {
        Self { cfg }
    }
}

impl Policy for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
    }

    fn rank(&self, job: &JobView<'_>) -> Rank {
        rank(job)
    }

    fn decide(&self, snap: &Snapshot<'_>) -> Vec<Command> {
        engine::decide(snap, &self.cfg, self.name(), &rank)
    }
}
