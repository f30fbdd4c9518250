//! The five policies that differ only in how they rank the queue (`fifo`, `priority`, `sjf`,
//! `ljf`, `edf`): one [`Ranked`] policy whose [`Order`] picks the rank; the shared engine
//! ([`super::engine`]) does the rest, with backfill (a job that does not fit is skipped).

use super::{Command, JobView, Policy, PolicyConfig, Rank, Snapshot, engine};
use crate::model::job::Timestamp;

/// A queue order. Lower ranks run first; equal ranks keep submission order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Order {
    /// First submitted, first started: every job ranks the same.
    Fifo,
    /// Higher `spec.priority` first: the rank is the negated priority.
    Priority,
    /// Shortest `estimate` first; jobs without an estimate go last.
    Sjf,
    /// Longest `estimate` first; jobs without an estimate go last.
    Ljf,
    /// Earliest absolute deadline (submission time + `spec.deadline`) first; jobs without a
    /// deadline go last.
    Edf,
}

impl Order {
    /// Every order, in the order help texts list them.
    pub const ALL: [Order; 5] = [
        Order::Fifo,
        Order::Priority,
        Order::Sjf,
        Order::Ljf,
        Order::Edf,
    ];

    /// The name users select it by.
    pub fn name(self) -> &'static str {
        match self {
            Order::Fifo => "fifo",
            Order::Priority => "priority",
            Order::Sjf => "sjf",
            Order::Ljf => "ljf",
            Order::Edf => "edf",
        }
    }

    /// The order called `name` (exact, lower case).
    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == name)
    }

    /// The job's queue key under this order.
    pub fn rank(self, job: &JobView<'_>) -> Rank {
        match self {
            Order::Fifo => Rank(0),
            Order::Priority => Rank(-i64::from(job.spec.priority)),
            Order::Sjf => job.spec.estimate.map_or(LAST, |d| Rank(millis(d))),
            Order::Ljf => job.spec.estimate.map_or(LAST, |d| Rank(-millis(d))),
            Order::Edf => deadline(job).map_or(LAST, |t| Rank(clamp(t.as_millis()))),
        }
    }
}

/// The rank of a job that lacks what the order sorts by: after every job that has it.
const LAST: Rank = Rank(i64::MAX);

/// The job's absolute deadline, if it has one.
pub fn deadline(job: &JobView<'_>) -> Option<Timestamp> {
    job.spec.deadline.map(|d| job.submitted.plus(d))
}

/// Milliseconds, clamped below [`LAST`] so a huge value still ranks before "none".
fn millis(d: std::time::Duration) -> i64 {
    clamp(d.as_millis())
}

fn clamp(ms: impl TryInto<i64>) -> i64 {
    ms.try_into()
        .map_or(i64::MAX - 1, |ms: i64| ms.min(i64::MAX - 1))
}

/// A policy that ranks the queue by one fixed [`Order`].
#[derive(Debug, Clone)]
pub struct Ranked {
    order: Order,
    cfg: PolicyConfig,
}

impl Ranked {
    pub fn new(order: Order, cfg: PolicyConfig) -> Self {
        Self { order, cfg }
    }
}

impl Policy for Ranked {
    fn name(&self) -> &'static str {
        self.order.name()
    }

    fn rank(&self, job: &JobView<'_>) -> Rank {
        self.order.rank(job)
    }

    fn decide(&self, snap: &Snapshot<'_>) -> Vec<Command> {
        engine::decide(snap, &self.cfg, self.name(), &|job| self.order.rank(job))
    }
}
