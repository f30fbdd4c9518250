//! `sjf`: shortest `estimate` first; jobs without an estimate go last, in submission order.

use super::{Command, JobView, Policy, PolicyConfig, Rank, Snapshot, engine};

/// The estimate in milliseconds; no estimate ranks after every estimate.
pub fn rank(job: &JobView<'_>) -> Rank {
    match job.spec.estimate {
        Some(d) => Rank(millis(d)),
        None => Rank(i64::MAX),
    }
}

/// Milliseconds, clamped below `i64::MAX` so a huge estimate still ranks before "none".
pub(crate) fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).map_or(i64::MAX - 1, |ms| ms.min(i64::MAX - 1))
}

#[derive(Debug, Clone, Default)]
pub struct Sjf {
    cfg: PolicyConfig,
}

impl Sjf {
    pub fn new(cfg: PolicyConfig) -> Self {
        Self { cfg }
    }
}

impl Policy for Sjf {
    fn name(&self) -> &'static str {
        "sjf"
    }

    fn rank(&self, job: &JobView<'_>) -> Rank {
        rank(job)
    }

    fn decide(&self, snap: &Snapshot<'_>) -> Vec<Command> {
        engine::decide(snap, &self.cfg, self.name(), &rank)
    }
}
