//! The pending-job queue: a lock-free priority queue ordered by (policy rank, submission order).
//!
//! Socket threads push (many producers); the control loop iterates the queue in order to build
//! the policy's snapshot and takes out the jobs the policy started or gave up on; a cancel
//! removes a job by id. Push, pop, take, remove and iteration take no lock.
//!
//! # How it works
//!
//! Problem: a skip list keyed by `(rank, seq)` gives ordered lock-free push/pop, but taking out a
//! given job needs more: a job must be handed out exactly once even when a pop, a take and a
//! removal race on it.
//!
//! Approach: each queued job is one shared *slot* (`Arc`) that holds its payload, its rank and a
//! `claimed` flag; the skip list maps `(rank, seq) → slot`, and every [`Queued`] the queue hands
//! out is a handle to a slot. Whoever flips `claimed` from false to true (pop, take or remove)
//! owns the job; everyone else treats the slot as gone. Map entries of a claimed slot are
//! garbage: the winner removes them, and pop/iteration skip and remove any they meet.
//!
//! Taking out a given job: [`JobQueue::take`] uses a handle (from iteration, as the controller
//! has when the policy starts a job) and costs one skip-list removal. [`JobQueue::remove`] by
//! id scans the queue (tens of µs at 10 000 jobs), which suits cancels. A separate id → key skip
//! list was tried first: it costs two more skip-list searches per job and cut push+pop throughput
//! to a third, for an operation that is rare.
//!
//! A job's rank is fixed when it is pushed: the daemon's policy does not change while it runs.
//!
//! Job ids are not checked for uniqueness (the daemon assigns them); the queue orders by
//! `(rank, seq)` and never by id.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use crossbeam_skiplist::SkipMap;

use crate::decide::policy::Rank;
use crate::model::job::JobId;

/// Order key: rank first, then submission sequence (so equal ranks keep submission order).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
struct QueueKey {
    rank: Rank,
    seq: u64,
}

struct Slot<T> {
    id: JobId,
    seq: u64,
    rank: Rank,
    claimed: AtomicBool,
    payload: T,
}

impl<T> Slot<T> {
    fn key(&self) -> QueueKey {
        QueueKey {
            rank: self.rank,
            seq: self.seq,
        }
    }

    fn is_claimed(&self) -> bool {
        self.claimed.load(SeqCst)
    }

    /// True for exactly one caller over the slot's life.
    fn claim(&self) -> bool {
        self.claimed
            .compare_exchange(false, true, SeqCst, SeqCst)
            .is_ok()
    }
}

/// A queued job as the queue hands it out: id, order key and a shared handle to the payload.
/// Pass it back to [`JobQueue::take`] to take that job out.
pub struct Queued<T> {
    slot: Arc<Slot<T>>,
}

impl<T> Queued<T> {
    pub fn id(&self) -> JobId {
        self.slot.id
    }

    /// Submission sequence: unique, increasing in push order.
    pub fn seq(&self) -> u64 {
        self.slot.seq
    }

    pub fn rank(&self) -> Rank {
        self.slot.rank
    }

    pub fn payload(&self) -> &T {
        &self.slot.payload
    }
}

impl<T> Clone for Queued<T> {
    fn clone(&self) -> Self {
        Self {
            slot: Arc::clone(&self.slot),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Queued<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queued")
            .field("id", &self.slot.id)
            .field("rank", &self.slot.rank)
            .field("seq", &self.slot.seq)
            .field("payload", &self.slot.payload)
            .finish()
    }
}

/// The pending-job queue. Share it as `Arc<JobQueue<T>>`; every method takes `&self`.
pub struct JobQueue<T> {
    order: SkipMap<QueueKey, Arc<Slot<T>>>,
    next_seq: AtomicU64,
}

impl<T> Default for JobQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for JobQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobQueue")
            .field("len", &self.len())
            .field("next_seq", &self.next_seq.load(SeqCst))
            .finish()
    }
}

impl<T> JobQueue<T> {
    pub fn new() -> Self {
        Self {
            order: SkipMap::new(),
            next_seq: AtomicU64::new(0),
        }
    }

    /// Jobs queued. Momentarily off by operations in flight: a job just claimed whose entry is
    /// not yet removed counts until that step ends. (A counter of our own would be one more
    /// contended write per push and per pop.)
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Send + Sync + 'static> JobQueue<T> {
    /// Queues `payload` as job `id`, ranked by `rank(id, seq, &payload)`; returns its sequence.
    pub fn push(&self, id: JobId, payload: T, rank: impl FnOnce(JobId, u64, &T) -> Rank) -> u64 {
        let seq = self.next_seq.fetch_add(1, SeqCst);
        let slot = Arc::new(Slot {
            id,
            seq,
            rank: rank(id, seq, &payload),
            claimed: AtomicBool::new(false),
            payload,
        });
        self.order.insert(slot.key(), slot);
        seq
    }

    /// Takes the best-ranked job (lowest rank, then earliest submitted).
    pub fn pop(&self) -> Option<Queued<T>> {
        loop {
            let entry = self.order.pop_front()?;
            let slot = entry.value();
            if slot.claim() {
                return Some(Queued {
                    slot: Arc::clone(slot),
                });
            }
        }
    }

    /// Takes out the job `job` refers to (a handle from [`iter`](Self::iter)). False when it is gone already: of racing callers exactly one wins.
    pub fn take(&self, job: &Queued<T>) -> bool {
        if !job.slot.claim() {
            return false;
        }
        self.order.remove(&job.slot.key());
        true
    }

    /// Takes out job `id`, found by a scan of the queue. `None` when it is not queued, or when a
    /// concurrent pop, take or remove won it.
    pub fn remove(&self, id: JobId) -> Option<Queued<T>> {
        let job = self.iter().find(|q| q.id() == id)?;
        self.take(&job).then_some(job)
    }

    /// Whether job `id` is queued (a scan of the queue).
    pub fn contains(&self, id: JobId) -> bool {
        self.iter().any(|q| q.id() == id)
    }

    /// Queued jobs in order, without removing them. Weakly consistent: it reflects pushes and
    /// removals that happen while it walks as the skip list does, but never lists a job twice.
    pub fn iter(&self) -> impl Iterator<Item = Queued<T>> + '_ {
        self.order.iter().filter_map(|entry| {
            let slot = entry.value();
            if slot.is_claimed() {
                entry.remove();
                return None;
            }
            Some(Queued {
                slot: Arc::clone(slot),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_of(ranks: &[i64]) -> JobQueue<&'static str> {
        let q = JobQueue::new();
        for (i, &r) in ranks.iter().enumerate() {
            q.push(JobId(i as u64), "job", |_, _, _| Rank(r));
        }
        q
    }

    fn ids(items: impl Iterator<Item = Queued<&'static str>>) -> Vec<u64> {
        items.map(|q| q.id().0).collect()
    }

    #[test]
    fn pops_by_rank_then_submission_order() {
        let q = queue_of(&[5, 1, 5, 0, 1]);
        assert_eq!(q.len(), 5);
        assert_eq!(ids(std::iter::from_fn(|| q.pop())), [3, 1, 4, 0, 2]);
        assert!(q.is_empty());
        assert!(q.pop().is_none());
    }

    #[test]
    fn push_returns_increasing_sequences() {
        let q = JobQueue::new();
        assert_eq!(q.push(JobId(7), (), |_, _, _| Rank(0)), 0);
        assert_eq!(q.push(JobId(8), (), |_, seq, _| Rank(seq as i64 + 40)), 1);
        let listed: Vec<_> = q.iter().map(|p| (p.id(), p.seq(), p.rank())).collect();
        assert_eq!(listed, [(JobId(7), 0, Rank(0)), (JobId(8), 1, Rank(41))]);
    }

    #[test]
    fn iterates_in_order_without_removing() {
        let q = queue_of(&[2, 0, 1]);
        assert_eq!(ids(q.iter()), [1, 2, 0]);
        assert_eq!(q.len(), 3);
        let first = q.iter().next().unwrap();
        assert_eq!((first.rank(), first.seq()), (Rank(0), 1));
        assert_eq!(*first.payload(), "job");
    }

    #[test]
    fn takes_a_listed_job_exactly_once() {
        let q = queue_of(&[0, 0, 0]);
        let listed: Vec<_> = q.iter().collect();
        assert!(q.take(&listed[1]));
        assert!(!q.take(&listed[1]));
        assert_eq!(ids(q.iter()), [0, 2]);
        // A handle to a popped job cannot be taken again.
        let popped = q.pop().unwrap();
        assert!(!q.take(&listed[0]));
        assert_eq!(popped.id(), JobId(0));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn removes_by_id_exactly_once() {
        let q = queue_of(&[0, 0, 0]);
        assert!(q.contains(JobId(1)));
        let got = q.remove(JobId(1)).unwrap();
        assert_eq!((got.id(), got.seq()), (JobId(1), 1));
        assert!(q.remove(JobId(1)).is_none());
        assert!(!q.contains(JobId(1)));
        assert!(q.remove(JobId(99)).is_none());
        assert_eq!(ids(q.iter()), [0, 2]);
        assert_eq!(q.len(), 2);
    }
}
