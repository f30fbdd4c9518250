//! Fair share in the pending pass: each pending job's round and its owner's place
//! ([`crate::decide::fairshare`] says what they mean).
//!
//! Problem: this runs for every pending job on every decision (10 000 are normal), so it must
//! cost a few nanoseconds per job: no sort, no allocation per job, no general-purpose hash.
//!
//! Approach: a job's round is its owner's running jobs plus the owner's pending jobs of the
//! same rank met earlier in the queue. The queue arrives in the policy's queue order, which
//! within one rank is submission order for every policy but `adaptive` (whose decision order
//! may differ from its queue order); there a user's jobs of one rank are numbered in queue
//! order instead, which interleaves users just as well. Counters are keyed by (rank, owner) in
//! a map with a multiply-rotate hash, and consecutive jobs of the same rank and owner (the
//! common case: users submit in bursts) skip the map.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::decide::policy::{Rank, Snapshot};
use crate::model::jobstate::JobState;

/// A small non-cryptographic hash for integer keys (FxHash's mixing step).
#[derive(Default)]
struct IntHasher(u64);

impl IntHasher {
    fn add(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.add(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_i64(&mut self, n: i64) {
        self.add(n as u64);
    }
}

type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// The rounds handed out so far in one pass.
pub(super) struct Share<'s, 'a> {
    snap: &'s Snapshot<'a>,
    /// Running jobs per owner.
    running: IntMap<u32, u32>,
    /// (rank, owner) → index into `taken`.
    slots: IntMap<(Rank, u32), usize>,
    /// Rounds handed out per (rank, owner), starting at the owner's running jobs.
    taken: Vec<u32>,
    /// The last job's (rank, owner, slot, place).
    last: Option<(Rank, u32, usize, u32)>,
}

impl<'s, 'a> Share<'s, 'a> {
    /// `None` when fair share is off or cannot change the order (one owner in the queue).
    pub(super) fn new(snap: &'s Snapshot<'a>, on: bool) -> Option<Self> {
        let first = snap.queue.first()?.owner;
        if !on || snap.queue.iter().all(|j| j.owner == first) {
            return None;
        }
        let mut running = IntMap::default();
        for a in snap.active.iter().filter(|a| a.state == JobState::Running) {
            *running.entry(a.job.owner).or_insert(0) += 1;
        }
        Some(Self {
            snap,
            running,
            slots: IntMap::default(),
            taken: Vec::new(),
            last: None,
        })
    }

    /// The next job of `owner` at `rank`: its (round, owner's place).
    pub(super) fn assign(&mut self, rank: Rank, owner: u32) -> (u32, u32) {
        let (slot, place) = match self.last {
            Some((r, o, slot, place)) if r == rank && o == owner => (slot, place),
            _ => {
                let next = self.taken.len();
                let slot = *self.slots.entry((rank, owner)).or_insert(next);
                if slot == next {
                    self.taken
                        .push(self.running.get(&owner).copied().unwrap_or(0));
                }
                (slot, self.snap.users.place(owner))
            }
        };
        self.last = Some((rank, owner, slot, place));
        let round = self.taken[slot];
        self.taken[slot] += 1;
        (round, place)
    }
}
