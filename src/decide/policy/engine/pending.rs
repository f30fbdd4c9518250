//! Phase 3 of a round: pending jobs in rank order time out, start, wait, or reserve.
//!
//! Problem: this runs on every tick for every pending job (10 000 are normal) and must stay well
//! under a millisecond, yet the queue arrives ordered by the policy's queue rank, which for
//! `adaptive` is not the order it decides in.
//!
//! Approach: most pending jobs on a busy node cannot do anything this round: a job whose minimum
//! exceeds the cores open when the phase starts cannot start (cores are only claimed during
//! it), and unless it times out or starves it neither gives up nor reserves. Those jobs are set
//! aside in one pass (remembering the best-ranked of them, for "backfilled past" reasons). The
//! rest are taken in rank order lazily from a heap, and once no core is open the remainder can
//! only time out or reserve memory and GPUs, so only those few are sorted. When the queue is
//! already in rank order, none of this sorting happens.
//!
//! Fair share refines the order within one rank: in the same pass each job gets its round and
//! its owner's place (module `share`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use crate::model::cpuset::CpuSet;
use crate::model::job::JobId;
use crate::model::resources::Bytes;

use super::ledger::{Reserved, lowest_gpus, pick};
use super::share::Share;
use super::{Decision, IdFilter, Kind, Placement, emit, range};
use crate::decide::policy::{JobView, Rank};

/// A pending job's place in the order, its index in the snapshot's queue, and what the first
/// pass learnt from its spec: its minimum core count, and whether it acts even when it cannot
/// start. (rank, round, place, owner, seq) is unique, so the last fields never decide the order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Key {
    rank: Rank,
    /// Fair share: the owner's running jobs plus its earlier pending jobs of the same rank (0
    /// when off).
    round: u32,
    /// Fair share: the owner's place by recent usage, least first (0 when off).
    place: u32,
    /// Fair share: the owner's uid, the last tie-break between users (0 when off).
    owner: u32,
    seq: u64,
    index: usize,
    min: usize,
    acts: bool,
}

/// What the pass remembers from one job to the next.
struct Pass {
    active_ids: IdFilter,
    handled: Vec<JobId>,
    /// The best-ranked job that could not start, of those considered so far.
    blocked: Option<Key>,
    /// The best-ranked job set aside without being considered.
    lead_idle: Option<Key>,
}

impl Decision<'_, '_> {
    /// Phase 3: pending jobs in rank order: time out, start, skip or reserve.
    pub(super) fn start_pending(&mut self) {
        let open = self.ledger.open_count();
        let mut pass = Pass {
            active_ids: IdFilter::new(self.snap.active.iter().map(|a| a.job.id)),
            handled: Vec::new(),
            blocked: None,
            lead_idle: None,
        };
        let mut share = Share::new(self.snap, self.cfg.fair_share);
        let mut keys: Vec<Key> = Vec::new();
        for (index, job) in self.snap.queue.iter().enumerate() {
            let rank = (self.rank)(job);
            let (round, place, owner) = match share.as_mut() {
                Some(s) => {
                    let (round, place) = s.assign(rank, job.owner);
                    (round, place, job.owner)
                }
                None => (0, 0, 0),
            };
            let key = Key {
                rank,
                round,
                place,
                owner,
                seq: job.seq,
                index,
                min: range(job.spec).0,
                acts: self.acts_without_cores(job),
            };
            if key.min <= open || key.acts {
                keys.push(key);
            } else if pass.lead_idle.is_none_or(|l| key < l) {
                pass.lead_idle = Some(key);
            }
        }
        if keys.is_sorted() {
            for key in keys {
                self.consider(&mut pass, key);
            }
            return;
        }
        let mut heap: BinaryHeap<Reverse<Key>> = keys.into_iter().map(Reverse).collect();
        while self.ledger.open_count() > 0 {
            let Some(Reverse(key)) = heap.pop() else {
                return;
            };
            self.consider(&mut pass, key);
        }
        let mut rest: Vec<Key> = heap
            .into_vec()
            .into_iter()
            .map(|Reverse(k)| k)
            .filter(|k| k.acts)
            .collect();
        rest.sort_unstable();
        for key in rest {
            self.consider(&mut pass, key);
        }
    }

    /// Whether `job` does something even when it cannot start: time out, or reserve.
    fn acts_without_cores(&self, job: &JobView<'_>) -> bool {
        let now = self.snap.now;
        now.since(job.submitted) > self.cfg.starvation_age
            || job
                .spec
                .timeout
                .is_some_and(|t| now >= job.submitted.plus(t))
    }

    /// One pending job's turn.
    fn consider(&mut self, pass: &mut Pass, key: Key) {
        let job = self.snap.queue[key.index];
        if pass.active_ids.contains(job.id) || pass.handled.contains(&job.id) {
            return;
        }
        let Key { min, acts, .. } = key;
        if self.ledger.open_count() < min && !acts {
            // The common case on a busy node, decided without touching the spec again.
            pass.blocked.get_or_insert(key);
            return;
        }
        let spec = job.spec;
        let now = self.snap.now;
        if let Some(timeout) = spec.timeout {
            if now >= job.submitted.plus(timeout) {
                let reason = self.timeout_reason(&job, timeout);
                self.outcome.unschedulable.push((job.id, reason));
                pass.handled.push(job.id);
                return;
            }
        }
        let max = range(spec).1;
        let starving = now.since(job.submitted) > self.cfg.starvation_age;
        if self.ledger.open_count() < min && !starving {
            pass.blocked.get_or_insert(key);
            return;
        }
        let memory = spec.memory.map_or(0, Bytes::get);
        let gpus_open = self.ledger.gpus_for(&spec.gpus);
        let needs = spec.gpus.count as usize;
        let mut allowed = None;
        if memory <= self.ledger.memory
            && gpus_open.len() >= needs
            && self.ledger.open_count() >= min
        {
            let conflicts = self.conflicts(spec, None);
            let cores = self.ledger.allowed(spec, &conflicts, Reserved::Avoid);
            allowed = Some(cores).filter(|c| c.len() >= min);
        }
        let free = [self.ledger.free_now];
        let lenders = || -> Vec<CpuSet> { self.lenders().collect() };
        if let Some(allowed) = allowed {
            let prefer = self.ledger.prefer(spec);
            let base = pick(min, &allowed, &prefer, &free, &lenders());
            let gpus = lowest_gpus(gpus_open, needs);
            self.ledger.take(&base, memory, gpus);
            pass.handled.push(job.id);
            let past = [pass.blocked, pass.lead_idle]
                .into_iter()
                .flatten()
                .filter(|&b| b < key)
                .min()
                .map(|b| self.snap.queue[b.index].id);
            self.place(Placement {
                job,
                kind: Kind::Started { gpus, past },
                min,
                max,
                cores: base,
            });
            return;
        }
        pass.blocked.get_or_insert(key);
        if starving {
            let mut cores = CpuSet::new();
            if self.ledger.open_count() > 0 {
                let conflicts = self.conflicts(spec, None);
                let allowed = self.ledger.allowed(spec, &conflicts, Reserved::Avoid);
                let prefer = self.ledger.prefer(spec);
                cores = pick(min, &allowed, &prefer, &free, &lenders());
            }
            let memory = memory.min(self.ledger.memory);
            self.ledger
                .reserve(&cores, memory, lowest_gpus(gpus_open, needs));
        }
    }

    /// Why a timed-out job never started: how long it waited and what it lacks right now.
    fn timeout_reason(&self, job: &JobView<'_>, timeout: Duration) -> String {
        let spec = job.spec;
        let (min, _) = range(spec);
        let mut lacks = Vec::new();
        let conflicts = self.conflicts(spec, None);
        let usable = self.ledger.allowed(spec, &conflicts, Reserved::Avoid).len();
        if usable < min {
            lacks.push(format!(
                "cores (needs {min}, {usable} usable of {} batch cores)",
                self.ledger.batch.len()
            ));
        }
        let memory = spec.memory.map_or(0, Bytes::get);
        if memory > self.ledger.memory {
            lacks.push(format!(
                "memory (needs {}, {} free)",
                Bytes(memory),
                Bytes(self.ledger.memory)
            ));
        }
        let open = self.ledger.gpus_for(&spec.gpus).len();
        if open < spec.gpus.count as usize {
            let variant = spec
                .gpus
                .variant
                .as_deref()
                .map(|v| format!(" {v}"))
                .unwrap_or_default();
            lacks.push(format!(
                "GPUs (needs {}{variant}, {open} free)",
                spec.gpus.count
            ));
        }
        let lacked = if lacks.is_empty() {
            "nothing at this decision, but it was passed over until then".to_string()
        } else {
            lacks.join(", ")
        };
        format!(
            "{}: waited {} without starting, past its scheduling timeout of {}; lacked {lacked}",
            self.label,
            emit::duration(self.snap.now.since(job.submitted)),
            emit::duration(timeout),
        )
    }
}
