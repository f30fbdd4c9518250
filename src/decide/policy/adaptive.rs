//! `adaptive`: on every decision, picks one of the other orders by a fixed rule on the snapshot.
//!
//! The rule looks at the pending jobs only; the first match wins:
//!
//! 1. **edf** when some pending job's deadline is at risk: `now + estimate + deadline_slack`
//!    reaches `submitted + deadline` (no estimate counts as zero; `deadline_slack` is in
//!    [`PolicyConfig`]).
//! 2. **priority** when pending jobs do not all have the same `priority`.
//! 3. **sjf** when at least `sjf_backlog` pending jobs carry an estimate (a backlog where
//!    running short jobs first cuts the mean wait).
//! 4. **fifo** otherwise.
//!
//! The rule reads only the snapshot, so it is deterministic. Its queue rank is fifo's (submission
//! order): the queue does not need re-ranking when the mode changes, because `decide` orders the
//! pending jobs by the chosen mode itself. Command reasons name the mode (`adaptive/edf: ...`).

use super::rank::{Order, deadline};
use super::{Command, JobView, Policy, PolicyConfig, Rank, Snapshot, engine};

/// The order `adaptive` uses for one decision.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Edf,
    Priority,
    Sjf,
    Fifo,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Edf => "adaptive/edf",
            Mode::Priority => "adaptive/priority",
            Mode::Sjf => "adaptive/sjf",
            Mode::Fifo => "adaptive/fifo",
        }
    }

    /// The queue order this mode sorts by.
    pub fn order(self) -> Order {
        match self {
            Mode::Edf => Order::Edf,
            Mode::Priority => Order::Priority,
            Mode::Sjf => Order::Sjf,
            Mode::Fifo => Order::Fifo,
        }
    }

    pub fn rank(self, job: &JobView<'_>) -> Rank {
        self.order().rank(job)
    }
}

/// Applies the rule in the module documentation (one pass over the queue).
pub fn choose(snap: &Snapshot<'_>, cfg: &PolicyConfig) -> Mode {
    let mut priorities_differ = false;
    let mut estimated = 0usize;
    let first_priority = snap.queue.first().map(|j| j.spec.priority);
    for job in snap.queue {
        let spec = job.spec;
        if let Some(due) = deadline(job) {
            let finish = snap
                .now
                .plus(spec.estimate.unwrap_or_default())
                .plus(cfg.deadline_slack);
            if finish >= due {
                return Mode::Edf;
            }
        }
        priorities_differ |= Some(spec.priority) != first_priority;
        estimated += usize::from(spec.estimate.is_some());
    }
    if priorities_differ {
        Mode::Priority
    } else if estimated >= cfg.sjf_backlog {
        Mode::Sjf
    } else {
        Mode::Fifo
    }
}

#[derive(Debug, Clone, Default)]
pub struct Adaptive {
    cfg: PolicyConfig,
}

impl Adaptive {
    pub fn new(cfg: PolicyConfig) -> Self {
        Self { cfg }
    }
}

impl Policy for Adaptive {
    fn name(&self) -> &'static str {
        "adaptive"
    }

    fn rank(&self, job: &JobView<'_>) -> Rank {
        Order::Fifo.rank(job)
    }

    fn decide(&self, snap: &Snapshot<'_>) -> Vec<Command> {
        let mode = choose(snap, &self.cfg);
        engine::decide(snap, &self.cfg, mode.label(), &|job| mode.rank(job))
    }
}
