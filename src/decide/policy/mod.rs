//! Scheduling policies: a pure function from a snapshot of the node to the commands that act on it.
//!
//! Data flows one way: the daemon builds a [`Snapshot`] (what batch may use now, who runs where,
//! the queue in order, the time), a [`Policy`] returns [`Command`]s, the actuator carries them out.
//! Policies never do I/O, never read a clock and never draw random numbers: the same snapshot
//! always gives the same commands.

pub mod adaptive;
pub mod config;
pub mod engine;
pub mod fit;
pub mod hold;
pub mod rank;
pub mod timelimit;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::decide::fairshare::UserOrder;
use crate::model::cpuset::CpuSet;
use crate::model::inventory::{GpuSet, Inventory};
use crate::model::job::{JobId, JobSpec, Timestamp};
use crate::model::jobstate::JobState;

pub use config::{NAMES, PolicyConfig, PolicyError, by_name};
pub use rank::{Order, Ranked};

/// Queue order key: lower runs first; equal ranks keep submission order (the queue's sequence).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Rank(pub i64);

/// A job as policies see it: identity, what it asked for, and when it was submitted.
#[derive(Clone, Copy, Debug)]
pub struct JobView<'a> {
    pub id: JobId,
    pub spec: &'a JobSpec,
    pub submitted: Timestamp,
    /// Submission order, unique and increasing; breaks rank ties.
    pub seq: u64,
    /// The owner's uid: fair share interleaves users' jobs of equal rank.
    pub owner: u32,
}

/// A job that has processes on the node: running, or paused (frozen).
#[derive(Clone, Copy, Debug)]
pub struct ActiveJob<'a> {
    pub job: JobView<'a>,
    /// `Running` or `Paused`.
    pub state: JobState,
    /// Cores it holds while running. A paused job holds no cores (it uses no CPU while frozen);
    /// it keeps its memory and GPUs.
    pub cores: CpuSet,
    pub gpus: GpuSet,
    /// When it last started or resumed: among equals, the most recently started pauses first.
    pub started: Timestamp,
    /// How long it ran before `started` (time paused not counted): its run time is this plus
    /// `now - started` while it runs.
    pub ran: Duration,
    /// Paused by its owner (`lowsched pause`): policies must not resume it.
    pub held: bool,
}

/// Everything a policy may look at. Built by the daemon, read-only to the policy.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    pub now: Timestamp,
    /// What the node has (cores, memory, GPUs, SMT siblings).
    pub node: &'a Inventory,
    /// Cores the batch side may use right now, granted by the SLO controller.
    pub batch_cores: CpuSet,
    /// Cores the protected service holds now (empty when there is none).
    pub service_cores: CpuSet,
    /// Running and paused jobs, in no particular order.
    pub active: &'a [ActiveJob<'a>],
    /// Pending jobs in queue order (the active policy's rank, then submission order).
    pub queue: &'a [JobView<'a>],
    /// Users by recent core usage, for fair share among jobs of equal rank
    /// ([`crate::decide::fairshare`]); `&NO_USAGE` when nobody used any.
    pub users: &'a UserOrder,
}

impl Snapshot<'_> {
    /// Memory not claimed by running or paused jobs.
    pub fn free_memory(&self) -> u64 {
        let used: u64 = self
            .active
            .iter()
            .filter_map(|a| a.job.spec.memory.map(|m| m.get()))
            .sum();
        self.node.memory.get().saturating_sub(used)
    }

    /// GPUs not held by running or paused jobs.
    pub fn free_gpus(&self) -> GpuSet {
        let held = self
            .active
            .iter()
            .fold(GpuSet::default(), |acc, a| acc.union(a.gpus));
        self.node.all_gpus().difference(held)
    }
}

/// What a policy asks the actuator to do. Every command carries a short human reason, which goes
/// to the event log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Start a pending job on `cores`, granting it `gpus`.
    Run {
        job: JobId,
        cores: CpuSet,
        gpus: GpuSet,
        reason: String,
    },
    /// Freeze a running job; its cores go back to the pool.
    Pause { job: JobId, reason: String },
    /// Thaw a paused job onto `cores`.
    Resume {
        job: JobId,
        cores: CpuSet,
        reason: String,
    },
    /// Change a running job's cores (shrink toward its min, widen toward its max).
    Resize {
        job: JobId,
        cores: CpuSet,
        reason: String,
    },
    /// Kill every process of a running or paused job.
    Kill { job: JobId, reason: String },
    /// Give up on a pending job (its scheduling timeout passed).
    MarkUnschedulable { job: JobId, reason: String },
    /// Kill a job that has run for its whole run-time limit; it ends as Timeout.
    TimeOut { job: JobId, reason: String },
}

impl Command {
    pub fn job(&self) -> JobId {
        match self {
            Self::Run { job, .. }
            | Self::Pause { job, .. }
            | Self::Resume { job, .. }
            | Self::Resize { job, .. }
            | Self::Kill { job, .. }
            | Self::MarkUnschedulable { job, .. }
            | Self::TimeOut { job, .. } => *job,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Run { reason, .. }
            | Self::Pause { reason, .. }
            | Self::Resume { reason, .. }
            | Self::Resize { reason, .. }
            | Self::Kill { reason, .. }
            | Self::MarkUnschedulable { reason, .. }
            | Self::TimeOut { reason, .. } => reason,
        }
    }

    /// Short verb for logs: `run`, `pause`, `resume`, `resize`, `kill`, `unschedulable`,
    /// `timeout`.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Run { .. } => "run",
            Self::Pause { .. } => "pause",
            Self::Resume { .. } => "resume",
            Self::Resize { .. } => "resize",
            Self::Kill { .. } => "kill",
            Self::MarkUnschedulable { .. } => "unschedulable",
            Self::TimeOut { .. } => "timeout",
        }
    }

    /// The cores the job holds after this command, if it names any.
    pub fn cores(&self) -> Option<CpuSet> {
        match self {
            Self::Run { cores, .. } | Self::Resume { cores, .. } | Self::Resize { cores, .. } => {
                Some(*cores)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} job {}", self.verb(), self.job())?;
        if let Some(cores) = self.cores() {
            write!(f, " on [{cores}]")?;
        }
        write!(f, ": {}", self.reason())
    }
}

/// One scheduling strategy. Implementations are pure and deterministic.
pub trait Policy: Send + Sync + fmt::Debug {
    /// The name users select it by (`fifo`, `priority`, ...).
    fn name(&self) -> &'static str;

    /// The queue key for a pending job; computed once, when the job is queued.
    fn rank(&self, job: &JobView<'_>) -> Rank;

    /// Commands to apply now, in the order they must be applied (shrinks and pauses before the
    /// starts that need their cores).
    fn decide(&self, snap: &Snapshot<'_>) -> Vec<Command>;
}
