//! `ljf`: longest `estimate` first; jobs without an estimate go last, in submission order.

use super::sjf::millis;
use super::{Command, JobView, Policy, PolicyConfig, Rank, Snapshot, engine};

/// The negated estimate in milliseconds; no estimate ranks after every estimate.
pub fn rank(job: &JobView<'_>) -> Rank {
    match job.spec.estimate {
        Some(d) => Rank(-millis(d)),
        None => Rank(i64::MAX),
    }
}

#[derive(Debug, Clone, Default)]
pub struct Ljf {
    cfg: PolicyConfig,
}

impl Ljf {
    pub fn new(cfg: PolicyConfig) -> Self {
        Self { cfg }
    }
}

impl Policy for Ljf {
    fn name(&self) -> &'static str {
        "ljf"
    }

    fn rank(&self, job: &JobView<'_>) -> Rank {
        rank(job)
    }

    fn decide(&self, snap: &Snapshot<'_>) -> Vec<Command> {
        engine::decide(snap, &self.cfg, self.name(), &rank)
    }
}
