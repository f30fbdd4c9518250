//! The pending-job queue: a lock-free priority queue ordered by (policy rank, submission order).
//!
//! Socket threads push (many producers); the controller thread pops, takes out started or
//! cancelled jobs, iterates the queue in order to build the policy's snapshot, and re-ranks
//! everything when the policy changes. Push, pop, take, remove and iteration take no lock.
//!
//! # How it works
//!
//! Problem: a skip list keyed by `(rank, seq)` gives ordered lock-free push/pop, but taking out a
//! given job and re-keying (re-ranking) need more: a job must be handed out exactly once even
//! when a pop, a removal and a re-rank race on it.
//!
//! Approach: each queued job is one shared *slot* (`Arc`) that holds its payload, its current
//! rank and a `claimed` flag; the skip list maps `(rank, seq) → slot`, and every [`Queued`] the
//! queue hands out is a handle to a slot. Whoever flips `claimed` from false to true (pop, take
//! or remove) owns the job; everyone else treats the slot as gone. Map entries of a claimed slot
//! are garbage: the winner removes them, and pop/iteration skip and remove any they meet.
//! Re-ranking inserts the slot under its new key before removing the old one, then re-checks
//! `claimed`, so a slot that was claimed meanwhile loses its new key too. While a re-rank moves a
//! slot it can sit under two keys for a moment; iteration shows only the key matching the slot's
//! current rank, so no job is listed twice.
//!
//! Taking out a given job: [`JobQueue::take`] uses a handle (from iteration, as the controller
//! has when the policy starts a job) and costs one skip-list removal. [`JobQueue::remove`] by
//! id scans the queue (tens of µs at 10 000 jobs), which suits cancels. A separate id → key skip
//! list was tried first: it costs two more skip-list searches per job and cut push+pop throughput
//! to a third, for an operation that is rare.
//!
//! Ranks computed under an old policy: `push` reads the queue's ranking *generation* before it
//! calls the caller's rank function (which reads the current policy), and marks the queue stale
//! if a [`JobQueue::rerank`] began meanwhile; [`JobQueue::refresh`] then re-keys such stragglers.
//!
//! Job ids are not checked for uniqueness (the daemon assigns them); the queue orders by
//! `(rank, seq)` and never by id.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use crossbeam_skiplist::SkipMap;

use crate::decide::policy::Rank;
use crate::model::job::JobId;

/// Order key: rank first, then submission sequence (so equal ranks keep submission order).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct QueueKey {
    pub rank: Rank,
    pub seq: u64,
}

struct Slot<T> {
    id: JobId,
    seq: u64,
    rank: AtomicI64,
    /// The ranking generation its rank was computed under.
    generation: AtomicU64,
    claimed: AtomicBool,
    payload: T,
}

impl<T> Slot<T> {
    fn key(&self) -> QueueKey {
        QueueKey {
            rank: Rank(self.rank.load(SeqCst)),
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
    rank: Rank,
}

impl<T> Queued<T> {
    pub fn id(&self) -> JobId {
        self.slot.id
    }

    /// Submission sequence: unique, increasing in push order.
    pub fn seq(&self) -> u64 {
        self.slot.seq
    }

    /// The rank it had when it was read from the queue.
    pub fn rank(&self) -> Rank {
        self.rank
    }

    pub fn key(&self) -> QueueKey {
        QueueKey {
            rank: self.rank,
            seq: self.slot.seq,
        }
    }

    pub fn payload(&self) -> &T {
        &self.slot.payload
    }
}

impl<T> Clone for Queued<T> {
    fn clone(&self) -> Self {
        Self {
            slot: Arc::clone(&self.slot),
            rank: self.rank,
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Queued<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queued")
            .field("id", &self.slot.id)
            .field("rank", &self.rank)
            .field("seq", &self.slot.seq)
            .field("payload", &self.slot.payload)
            .finish()
    }
}

/// An atomic on a cache line of its own: every push writes `next_seq`, and every push also
/// reads `generation`, which must not sit on the line those writes keep invalidating.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Line(AtomicU64);

/// The pending-job queue. Share it as `Arc<JobQueue<T>>`; every method takes `&self`.
pub struct JobQueue<T> {
    order: SkipMap<QueueKey, Arc<Slot<T>>>,
    next_seq: Line,
    generation: AtomicU64,
    /// Set when a push may carry a rank from before the last re-rank.
    stale: AtomicBool,
    /// Serialises re-ranks with each other (never taken by push, pop, take, remove or iteration).
    reranking: Mutex<()>,
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
            .field("next_seq", &self.next_seq.0.load(SeqCst))
            .finish()
    }
}

impl<T> JobQueue<T> {
    pub fn new() -> Self {
        Self::starting_at(0)
    }

    /// A queue whose first push gets sequence `seq` (to continue numbering after a restart).
    pub fn starting_at(seq: u64) -> Self {
        Self {
            order: SkipMap::new(),
            next_seq: Line(AtomicU64::new(seq)),
            generation: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            reranking: Mutex::new(()),
        }
    }

    /// Jobs queued. Momentarily off by operations in flight: a job just claimed whose entry is
    /// not yet removed, or one a re-rank is moving, counts twice until that step ends. (A counter
    /// of our own would be one more contended write per push and per pop.)
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Send + Sync + 'static> JobQueue<T> {
    /// Queues `payload` as job `id`, ranked by `rank(id, seq, &payload)`; returns its sequence.
    ///
    /// `rank` should read the active policy itself (not a rank computed before the call): then a
    /// push racing a policy switch is either re-ranked by [`rerank`](Self::rerank) or flagged for
    /// [`refresh`](Self::refresh).
    pub fn push(&self, id: JobId, payload: T, rank: impl FnOnce(JobId, u64, &T) -> Rank) -> u64 {
        let generation = self.generation.load(SeqCst);
        let seq = self.next_seq.0.fetch_add(1, SeqCst);
        let r = rank(id, seq, &payload);
        let slot = Arc::new(Slot {
            id,
            seq,
            rank: AtomicI64::new(r.0),
            generation: AtomicU64::new(generation),
            claimed: AtomicBool::new(false),
            payload,
        });
        self.order.insert(slot.key(), slot);
        if self.generation.load(SeqCst) != generation {
            self.stale.store(true, SeqCst);
        }
        seq
    }

    /// Takes the best-ranked job (lowest rank, then earliest submitted).
    pub fn pop(&self) -> Option<Queued<T>> {
        loop {
            let entry = self.order.pop_front()?;
            let slot = entry.value();
            if slot.claim() {
                let rank = entry.key().rank;
                self.release(slot, Some(*entry.key()));
                return Some(Queued {
                    slot: Arc::clone(slot),
                    rank,
                });
            }
        }
    }

    /// The best-ranked job, left in the queue.
    pub fn peek(&self) -> Option<Queued<T>> {
        self.iter().next()
    }

    /// Takes out the job `job` refers to (a handle from [`iter`](Self::iter) or
    /// [`get`](Self::get)). False when it is gone already: of racing callers exactly one wins.
    pub fn take(&self, job: &Queued<T>) -> bool {
        if !job.slot.claim() {
            return false;
        }
        self.release(&job.slot, None);
        true
    }

    /// Takes out job `id`, found by a scan of the queue. `None` when it is not queued, or when a
    /// concurrent pop, take or remove won it.
    pub fn remove(&self, id: JobId) -> Option<Queued<T>> {
        let job = self.get(id)?;
        self.take(&job).then_some(job)
    }

    /// The queued job `id` (a scan of the queue), left in the queue.
    pub fn get(&self, id: JobId) -> Option<Queued<T>> {
        self.iter().find(|q| q.id() == id)
    }

    pub fn contains(&self, id: JobId) -> bool {
        self.get(id).is_some()
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
            let rank = entry.key().rank;
            // A key left behind by a re-rank in progress: the slot is listed under its new key.
            (rank.0 == slot.rank.load(SeqCst)).then(|| Queued {
                slot: Arc::clone(slot),
                rank,
            })
        })
    }

    /// Re-ranks every queued job with `rank` (call after switching the policy; producers must
    /// already see the new policy). Submission order among equal ranks is kept.
    pub fn rerank(&self, rank: impl Fn(JobId, u64, &T) -> Rank) {
        let _one_at_a_time = self.reranking.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.generation.fetch_add(1, SeqCst) + 1;
        self.stale.store(false, SeqCst);
        self.rekey_older_than(generation, &rank);
    }

    /// Re-ranks only jobs pushed with a rank from before the last [`rerank`](Self::rerank);
    /// costs one atomic load when there are none. Call it once per scheduling tick.
    pub fn refresh(&self, rank: impl Fn(JobId, u64, &T) -> Rank) {
        if !self.stale.swap(false, SeqCst) {
            return;
        }
        let _one_at_a_time = self.reranking.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.generation.load(SeqCst);
        self.rekey_older_than(generation, &rank);
    }

    fn rekey_older_than(&self, generation: u64, rank: &dyn Fn(JobId, u64, &T) -> Rank) {
        for entry in self.order.iter() {
            let slot = Arc::clone(entry.value());
            if slot.is_claimed() {
                entry.remove();
                continue;
            }
            if slot.generation.load(SeqCst) >= generation
                || entry.key().rank.0 != slot.rank.load(SeqCst)
            {
                continue;
            }
            slot.generation.store(generation, SeqCst);
            let new = QueueKey {
                rank: rank(slot.id, slot.seq, &slot.payload),
                seq: slot.seq,
            };
            let old = *entry.key();
            if new == old {
                continue;
            }
            self.order.insert(new, Arc::clone(&slot));
            slot.rank.store(new.rank.0, SeqCst);
            entry.remove();
            if slot.is_claimed() {
                // Claimed while moving: the winner may have removed only the old key.
                self.order.remove(&new);
            }
        }
    }

    /// Housekeeping after `slot` was claimed: drop its order key (unless that is `removed`, the
    /// key a pop already took out).
    fn release(&self, slot: &Arc<Slot<T>>, removed: Option<QueueKey>) {
        let key = slot.key();
        if removed != Some(key) {
            // Not popped, or moved by a concurrent re-rank: the slot's current key is still in.
            self.order.remove(&key);
        }
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
        let q = JobQueue::starting_at(40);
        assert_eq!(q.push(JobId(7), (), |_, _, _| Rank(0)), 40);
        assert_eq!(q.push(JobId(8), (), |_, seq, _| Rank(seq as i64)), 41);
        assert_eq!(q.peek().map(|p| (p.id(), p.seq())), Some((JobId(7), 40)));
        assert_eq!(q.get(JobId(8)).map(|p| p.rank()), Some(Rank(41)));
    }

    #[test]
    fn iterates_in_order_without_removing() {
        let q = queue_of(&[2, 0, 1]);
        assert_eq!(ids(q.iter()), [1, 2, 0]);
        assert_eq!(q.len(), 3);
        assert_eq!(q.peek().map(|p| p.id()), Some(JobId(1)));
        let first = q.iter().next().unwrap();
        assert_eq!(
            first.key(),
            QueueKey {
                rank: Rank(0),
                seq: 1
            }
        );
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
        assert!(q.get(JobId(1)).is_none());
        assert!(q.remove(JobId(99)).is_none());
        assert_eq!(ids(q.iter()), [0, 2]);
        assert_eq!(q.len(), 2);
        assert_eq!(q.get(JobId(2)).map(|g| g.seq()), Some(2));
    }

    #[test]
    fn rerank_reorders_and_keeps_submission_order_among_equals() {
        let q = queue_of(&[0, 1, 2, 3]);
        let before: Vec<_> = q.iter().collect();
        // New policy: reverse, but jobs 1 and 2 tie.
        q.rerank(|id, _, _| {
            Rank(if id.0 == 1 || id.0 == 2 {
                5
            } else {
                -(id.0 as i64)
            })
        });
        assert_eq!(ids(q.iter()), [3, 0, 1, 2]);
        assert_eq!(q.len(), 4);
        // Handles taken before the re-rank still work.
        assert!(q.take(&before[1]));
        assert_eq!(ids(std::iter::from_fn(|| q.pop())), [3, 0, 2]);
    }

    #[test]
    fn a_push_ranked_before_a_rerank_is_fixed_by_refresh() {
        let q = queue_of(&[0, 1]);
        // The pusher read the old policy (rank 9) while the controller switched and re-ranked.
        q.push(JobId(5), "job", |_, _, _| {
            q.rerank(|id, _, _| Rank(-(id.0 as i64)));
            Rank(9)
        });
        assert_eq!(ids(q.iter()), [1, 0, 5]);
        q.refresh(|id, _, _| Rank(-(id.0 as i64)));
        assert_eq!(ids(q.iter()), [5, 1, 0]);
    }
}
