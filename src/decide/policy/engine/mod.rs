//! The decision engine every policy shares: policies differ only in how they rank jobs.
//!
//! Problem: turn a snapshot (batch cores granted now, running/paused jobs, ranked queue) into
//! commands that keep every job within its core range, never put one core in two jobs, honour
//! colocation, let small jobs backfill past blocked big ones without starving the big ones, and
//! leave a steady snapshot alone (no churn).
//!
//! Approach: build the target placement in phases; each phase only takes what earlier phases
//! left. A job's *minimum* is its base; cores above it are *borrowed* and any later phase may
//! reclaim them.
//!
//! 1. **Keep** — running jobs, most senior first (higher `priority`, then earlier started), each
//!    take their minimum, preferring their own cores, then cores nobody runs on, then borrowed
//!    cores of others, then cores of more junior jobs. A job that cannot get its minimum is
//!    paused: so when the batch set shrinks, jobs first shrink toward their minimum, and the
//!    lowest-priority, most recently started jobs pause.
//! 2. **Resume** — paused jobs not held by their owner, higher priority first (then older), at
//!    their minimum, before any new job starts.
//! 3. **Start** — pending jobs in rank order. A job past its scheduling timeout is marked
//!    unschedulable. A job that fits (memory, GPUs of its variant, cores allowed by colocation)
//!    starts at its minimum; one that does not is skipped (*backfill*), unless it has waited
//!    longer than `starvation_age`: then it *reserves* what it can use now, so jobs ranked below
//!    it cannot start on those cores, memory or GPUs, and freed cores accumulate for it.
//! 4. **Widen** — every placed job, in rank order, first gets back its own current cores, then
//!    leftover cores, up to its maximum. Reserved cores may be lent this way: borrowed cores are
//!    reclaimed as soon as the reserving job can start.
//!
//! Colocation applies in every phase: a core is refused to a job when a conflicting job already
//! placed holds a core on the same physical core, and cores beside the service are refused to
//! jobs with `beside_service = false` (so jobs that may sit beside the service take those cores
//! first, and a running job's cores it may no longer keep count as free).
//!
//! When a round changes anything, a second round runs on the state it leads to and the
//! difference from the snapshot is returned (module `rounds`): that makes a snapshot the engine
//! produced itself steady. Finally module `emit` turns the placement into commands in an order that
//! never puts one core in two jobs while they are applied.
//!
//! Ties are broken by submission sequence everywhere, and no hash map is iterated, so the same
//! snapshot always gives the same commands.

mod emit;
mod ledger;
mod pending;
mod rounds;
mod share;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_colocation;
#[cfg(test)]
mod tests_fairshare;

use std::cmp::Reverse;

use crate::model::cpuset::CpuSet;
use crate::model::inventory::GpuSet;
use crate::model::job::{JobId, JobSpec};
use crate::model::jobstate::JobState;

pub(crate) use self::emit::duration;
use self::ledger::{Ledger, Reserved, pick};
use super::{ActiveJob, Command, JobView, PolicyConfig, Rank, Snapshot};

/// One decision with the given ranking (see the module documentation). `label` prefixes every
/// command's reason (the policy name, or `adaptive/<mode>`).
pub fn decide(
    snap: &Snapshot<'_>,
    cfg: &PolicyConfig,
    label: &str,
    rank: &dyn Fn(&JobView<'_>) -> Rank,
) -> Vec<Command> {
    let first = plan(snap, cfg, label, rank);
    if first.is_noop() {
        return Vec::new();
    }
    // Second round on the state the first one leads to (see `rounds`).
    let (active, queue) = rounds::next_state(snap, &first);
    let next = Snapshot {
        active: &active,
        queue: &queue,
        ..*snap
    };
    let second = plan(&next, cfg, label, rank);
    let outcome = rounds::compose(snap, first, second);
    emit::commands(label, snap.batch_cores, &outcome)
}

/// One round of placement: the four phases on `snap`.
fn plan<'a>(
    snap: &Snapshot<'a>,
    cfg: &PolicyConfig,
    label: &str,
    rank: &dyn Fn(&JobView<'_>) -> Rank,
) -> Outcome<'a> {
    let mut d = Decision::new(snap, cfg, label, rank);
    d.keep_running();
    d.resume_paused();
    d.start_pending();
    d.widen();
    d.outcome
}

/// What a round decided: who holds which cores, who pauses, who gives up.
#[derive(Debug, Default)]
struct Outcome<'a> {
    placed: Vec<Placement<'a>>,
    /// Running jobs that cannot keep their minimum, most senior first.
    paused: Vec<ActiveJob<'a>>,
    unschedulable: Vec<(JobId, String)>,
}

impl Outcome<'_> {
    /// True when applying it would change nothing.
    fn is_noop(&self) -> bool {
        self.paused.is_empty()
            && self.unschedulable.is_empty()
            && self
                .placed
                .iter()
                .all(|p| matches!(p.kind, Kind::Kept { was } if was == p.cores))
    }
}

/// How a placed job got its place.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Was running and keeps running; `was` is what it held.
    Kept { was: CpuSet },
    /// Was paused (by a policy) and resumes.
    Resumed,
    /// Was pending and starts; `past` is the first higher-ranked job it was backfilled past.
    Started { gpus: GpuSet, past: Option<JobId> },
}

/// A job that holds cores after this decision.
#[derive(Clone, Copy, Debug)]
struct Placement<'a> {
    job: JobView<'a>,
    kind: Kind,
    min: usize,
    max: usize,
    cores: CpuSet,
}

struct Decision<'s, 'a> {
    snap: &'s Snapshot<'a>,
    cfg: &'s PolicyConfig,
    label: &'s str,
    rank: &'s dyn Fn(&JobView<'_>) -> Rank,
    ledger: Ledger<'a>,
    /// Running jobs, most senior first.
    running: Vec<ActiveJob<'a>>,
    outcome: Outcome<'a>,
    /// Whether any job placed so far names others to avoid (else conflicts need no scan).
    placed_avoids: bool,
}

/// A set of job ids with a fast "surely not" test: the queue should never hold an active job,
/// and checking that must not cost a search per pending job.
struct IdFilter {
    bits: [u64; 16],
    ids: Vec<JobId>,
}

impl IdFilter {
    fn new(ids: impl Iterator<Item = JobId>) -> Self {
        let mut f = Self {
            bits: [0; 16],
            ids: ids.collect(),
        };
        f.ids.sort_unstable();
        for id in &f.ids {
            let bit = (id.0 % 1024) as usize;
            f.bits[bit / 64] |= 1 << (bit % 64);
        }
        f
    }

    fn contains(&self, id: JobId) -> bool {
        let bit = (id.0 % 1024) as usize;
        self.bits[bit / 64] & (1 << (bit % 64)) != 0 && self.ids.binary_search(&id).is_ok()
    }
}

/// Sort key for running jobs: the most senior (higher priority, then earlier started) first.
fn seniority(a: &ActiveJob<'_>) -> (Reverse<i32>, crate::model::job::Timestamp, u64) {
    (Reverse(a.job.spec.priority), a.started, a.job.seq)
}

/// A spec's core range, made sane: at least one core, max at least min.
fn range(spec: &JobSpec) -> (usize, usize) {
    let min = spec.cores.min.max(1) as usize;
    (min, (spec.cores.max as usize).max(min))
}

impl<'s, 'a> Decision<'s, 'a> {
    fn new(
        snap: &'s Snapshot<'a>,
        cfg: &'s PolicyConfig,
        label: &'s str,
        rank: &'s dyn Fn(&JobView<'_>) -> Rank,
    ) -> Self {
        let mut running: Vec<ActiveJob<'a>> = snap
            .active
            .iter()
            .filter(|a| a.state == JobState::Running)
            .copied()
            .collect();
        running.sort_by_key(seniority);
        Self {
            snap,
            cfg,
            label,
            rank,
            ledger: Ledger::new(snap),
            running,
            outcome: Outcome::default(),
            placed_avoids: false,
        }
    }

    /// Logical CPUs `spec` must not use because a conflicting placed job (other than `spec`'s
    /// own placement, `skip`) holds a core on the same physical core.
    fn conflicts(&self, spec: &JobSpec, skip: Option<JobId>) -> CpuSet {
        if spec.colocation.avoid.is_empty() && !self.placed_avoids {
            return CpuSet::new();
        }
        let held = self
            .outcome
            .placed
            .iter()
            .filter(|p| Some(p.job.id) != skip && spec.conflicts_with(p.job.spec))
            .fold(CpuSet::new(), |acc, p| acc.union(&p.cores));
        self.ledger.node.physical_cores_of(&held)
    }

    fn place(&mut self, p: Placement<'a>) {
        self.placed_avoids |= !p.job.spec.colocation.avoid.is_empty();
        self.outcome.placed.push(p);
    }

    /// Batch cores of running jobs, most junior first: where borrowed cores are reclaimed from.
    fn lenders(&self) -> impl Iterator<Item = CpuSet> + '_ {
        let batch = self.ledger.batch;
        self.running
            .iter()
            .rev()
            .map(move |a| a.cores.intersection(&batch))
    }

    /// Phase 1: running jobs keep their minimum, most senior first, or pause.
    fn keep_running(&mut self) {
        for i in 0..self.running.len() {
            let a = self.running[i];
            let (min, max) = range(a.job.spec);
            let conflicts = self.conflicts(a.job.spec, None);
            let allowed = self.ledger.allowed(a.job.spec, &conflicts, Reserved::Avoid);
            if allowed.len() < min {
                self.outcome.paused.push(a);
                continue;
            }
            let seniors = self.running[..i].iter().rev();
            let juniors = self.running[i + 1..].iter().rev();
            let lenders: Vec<CpuSet> = seniors
                .chain(juniors)
                .map(|o| self.ledger.usable_now(o))
                .collect();
            let prefer = self.ledger.prefer(a.job.spec);
            let base = pick(
                min,
                &allowed,
                &prefer,
                &[a.cores, self.ledger.free_now],
                &lenders,
            );
            self.ledger.take(&base, 0, GpuSet::default());
            self.place(Placement {
                job: a.job,
                kind: Kind::Kept { was: a.cores },
                min,
                max,
                cores: base,
            });
        }
    }

    /// Phase 2: paused jobs (not held) resume at their minimum when it fits.
    fn resume_paused(&mut self) {
        let mut paused: Vec<&ActiveJob<'a>> = self
            .snap
            .active
            .iter()
            .filter(|a| a.state == JobState::Paused && !a.held)
            .collect();
        paused.sort_by_key(|a| (Reverse(a.job.spec.priority), a.job.seq));
        for a in paused {
            let (min, max) = range(a.job.spec);
            if self.ledger.open_count() < min {
                continue;
            }
            let conflicts = self.conflicts(a.job.spec, None);
            let allowed = self.ledger.allowed(a.job.spec, &conflicts, Reserved::Avoid);
            if allowed.len() < min {
                continue;
            }
            let lenders: Vec<CpuSet> = self.lenders().collect();
            let prefer = self.ledger.prefer(a.job.spec);
            let base = pick(min, &allowed, &prefer, &[self.ledger.free_now], &lenders);
            self.ledger.take(&base, 0, GpuSet::default());
            self.place(Placement {
                job: a.job,
                kind: Kind::Resumed,
                min,
                max,
                cores: base,
            });
        }
    }

    /// Phase 4: placed jobs, in rank order, widen up to their maximum: own cores first, then
    /// leftovers.
    fn widen(&mut self) {
        let mut order: Vec<usize> = (0..self.outcome.placed.len()).collect();
        order.sort_by_cached_key(|&i| {
            let job = &self.outcome.placed[i].job;
            ((self.rank)(job), job.seq)
        });
        for own_first in [true, false] {
            for &i in &order {
                let p = self.outcome.placed[i];
                let room = p.max.saturating_sub(p.cores.len());
                if room == 0 {
                    continue;
                }
                let conflicts = self.conflicts(p.job.spec, Some(p.job.id));
                let allowed = self.ledger.allowed(p.job.spec, &conflicts, Reserved::Lend);
                let open = match (own_first, p.kind) {
                    (true, Kind::Kept { was }) => was.intersection(&allowed),
                    (true, _) => continue,
                    (false, _) => allowed,
                };
                let prefer = self.ledger.prefer(p.job.spec);
                let extra = pick(room, &open, &prefer, &[], &[]);
                self.ledger.take(&extra, 0, GpuSet::default());
                self.outcome.placed[i].cores = p.cores.union(&extra);
            }
        }
    }
}
