//! Book-keeping for one decision: which batch cores, memory and GPUs are still unclaimed, and
//! which are reserved for starving jobs.

use crate::model::cpuset::CpuSet;
use crate::model::inventory::{GpuSet, Inventory};
use crate::model::job::JobSpec;
use crate::model::resources::GpuRequest;

use crate::model::jobstate::JobState;

use super::super::{ActiveJob, Snapshot};

/// Whether a core choice may use cores reserved for starving jobs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Reserved {
    /// Taking a job's minimum (base) cores: reserved cores are off limits.
    Avoid,
    /// Lending spare cores above a job's minimum: reserved cores may be lent, since lent cores
    /// are reclaimed whenever the reserving job can start.
    Lend,
}

#[derive(Debug)]
pub(super) struct Ledger<'a> {
    pub node: &'a Inventory,
    /// Cores batch may use now.
    pub batch: CpuSet,
    /// Logical CPUs that share a physical core with the protected service.
    pub service_phys: CpuSet,
    /// Cores in some job's final set so far.
    pub taken: CpuSet,
    /// Cores reserved for starving jobs.
    pub earmarked: CpuSet,
    /// Batch cores no running job holds (usably) at the start of the decision: the first choice
    /// for new placements, because taking them shrinks nobody.
    pub free_now: CpuSet,
    /// Memory neither held, granted this decision, nor reserved.
    pub memory: u64,
    /// GPUs neither held, granted this decision, nor reserved.
    pub gpus: GpuSet,
    /// `batch - taken - earmarked`, counted.
    open_len: usize,
}

impl<'a> Ledger<'a> {
    pub fn new(snap: &Snapshot<'a>) -> Self {
        let mut ledger = Self {
            node: snap.node,
            batch: snap.batch_cores,
            service_phys: snap.node.physical_cores_of(&snap.service_cores),
            taken: CpuSet::new(),
            earmarked: CpuSet::new(),
            free_now: CpuSet::new(),
            memory: snap.free_memory(),
            gpus: snap.free_gpus(),
            open_len: 0,
        };
        let held_now = snap
            .active
            .iter()
            .filter(|a| a.state == JobState::Running)
            .fold(CpuSet::new(), |acc, a| acc.union(&ledger.usable_now(a)));
        ledger.free_now = ledger.batch.difference(&held_now);
        ledger.recount();
        ledger
    }

    /// The cores a running job holds that it could keep: inside the batch set and, if it must
    /// not run beside the service, away from it. Its other cores are as good as free.
    pub fn usable_now(&self, a: &ActiveJob<'_>) -> CpuSet {
        let mut cores = a.cores.intersection(&self.batch);
        if !a.job.spec.colocation.beside_service {
            cores = cores.difference(&self.service_phys);
        }
        cores
    }

    /// Cores `spec` may take now: batch cores nobody has claimed, minus those beside the service
    /// (if it must not run there), minus `conflicts`, minus reserved ones when taking a minimum.
    pub fn allowed(&self, spec: &JobSpec, conflicts: &CpuSet, reserved: Reserved) -> CpuSet {
        let mut set = self.batch.difference(&self.taken).difference(conflicts);
        if reserved == Reserved::Avoid {
            set = set.difference(&self.earmarked);
        }
        if !spec.colocation.beside_service {
            set = set.difference(&self.service_phys);
        }
        set
    }

    /// Unclaimed, unreserved batch cores, ignoring colocation: an upper bound on what any job
    /// can take as its minimum (a cheap first test: it is kept up to date, not recounted).
    pub fn open_count(&self) -> usize {
        self.open_len
    }

    fn recount(&mut self) {
        self.open_len = self
            .batch
            .difference(&self.taken)
            .difference(&self.earmarked)
            .len();
    }

    /// Unclaimed GPUs a request may use (only its variant, when it names one).
    pub fn gpus_for(&self, req: &GpuRequest) -> GpuSet {
        if req.count == 0 {
            return GpuSet::default();
        }
        self.node.gpus_of(self.gpus, req.variant.as_deref())
    }

    /// Cores `spec` should take first: those beside the service when it may run there (they are
    /// of no use to jobs that may not).
    pub fn prefer(&self, spec: &JobSpec) -> CpuSet {
        if spec.colocation.beside_service {
            self.service_phys
        } else {
            CpuSet::new()
        }
    }

    /// Claims a job's minimum.
    pub fn take(&mut self, cores: &CpuSet, memory: u64, gpus: GpuSet) {
        self.taken = self.taken.union(cores);
        self.recount();
        self.memory = self.memory.saturating_sub(memory);
        self.gpus = self.gpus.difference(gpus);
    }

    /// Reserves for a starving job: its cores may no longer go to another job's minimum.
    pub fn reserve(&mut self, cores: &CpuSet, memory: u64, gpus: GpuSet) {
        self.earmarked = self.earmarked.union(cores);
        self.recount();
        self.memory = self.memory.saturating_sub(memory);
        self.gpus = self.gpus.difference(gpus);
    }
}

/// Up to `n` cores of `allowed`: first from the `free` tiers in order (lowest ids first), then
/// from the `lenders` in order (highest ids first, so a lender keeps its low, contiguous cores),
/// then from the rest of `allowed`. Within each tier, cores in `prefer` go first: callers pass
/// the cores beside the service for jobs that may run there, which leaves the other cores to
/// jobs that may not.
pub(super) fn pick(
    n: usize,
    allowed: &CpuSet,
    prefer: &CpuSet,
    free: &[CpuSet],
    lenders: &[CpuSet],
) -> CpuSet {
    let mut got = CpuSet::new();
    let tiers = free
        .iter()
        .map(|t| (t, false))
        .chain(lenders.iter().map(|t| (t, true)))
        .chain(std::iter::once((allowed, false)));
    for (tier, from_top) in tiers {
        let open = tier.intersection(allowed);
        for part in [open.intersection(prefer), open.difference(prefer)] {
            let missing = n.saturating_sub(got.len());
            if missing == 0 {
                return got;
            }
            let part = part.difference(&got);
            let more = if from_top {
                part.highest(missing)
            } else {
                part.lowest(missing)
            };
            got = got.union(&more);
        }
    }
    got
}

/// The `n` lowest GPUs of `set`.
pub(super) fn lowest_gpus(set: GpuSet, n: usize) -> GpuSet {
    let mut out = GpuSet::default();
    for g in set.iter().take(n) {
        out.insert(g);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> CpuSet {
        s.parse().unwrap()
    }

    #[test]
    fn pick_walks_tiers_in_order_then_the_rest() {
        let allowed = set("0-7");
        let none = CpuSet::new();
        let pick = |n, allowed: &CpuSet, free: &[CpuSet], lenders: &[CpuSet]| {
            pick(n, allowed, &none, free, lenders)
        };
        assert_eq!(
            pick(3, &allowed, &[set("6-9"), set("2")], &[]),
            set("2,6-7")
        );
        assert_eq!(pick(4, &allowed, &[set("6-9")], &[]), set("0-1,6-7"));
        assert_eq!(pick(20, &allowed, &[], &[]), allowed);
        assert_eq!(pick(0, &allowed, &[set("1")], &[]), CpuSet::new());
        // Tier members outside `allowed` are never picked.
        assert_eq!(pick(1, &set("3"), &[set("1")], &[]), set("3"));
        // Lenders give up their highest cores first, so they keep low, contiguous ones.
        assert_eq!(
            pick(3, &allowed, &[set("7")], &[set("0-3"), set("4-5")]),
            set("2-3,7")
        );
        assert_eq!(
            pick(4, &allowed, &[], &[set("0-1"), set("4-5")]),
            set("0-1,4-5")
        );
    }

    #[test]
    fn preferred_cores_go_first_within_each_tier() {
        let allowed = set("0-7");
        assert_eq!(
            pick(2, &allowed, &set("5,7"), &[set("0-5")], &[]),
            set("0,5")
        );
        assert_eq!(pick(1, &allowed, &set("0"), &[], &[set("0-3")]), set("0"));
        // ...but never ahead of an earlier tier.
        assert_eq!(
            pick(1, &allowed, &set("6"), &[set("1")], &[set("6")]),
            set("1")
        );
    }

    #[test]
    fn lowest_gpus_takes_the_lowest_indices() {
        let mut g = GpuSet::default();
        for i in [1, 4, 7] {
            g.insert(i);
        }
        assert_eq!(lowest_gpus(g, 2).to_string(), "1,4");
        assert_eq!(lowest_gpus(g, 9), g);
    }
}
