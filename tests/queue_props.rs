#![allow(clippy::unwrap_used)]
//! Property tests of the queue against a simple model (a sorted map), one thread.

use std::collections::BTreeMap;

use lowsched::decide::policy::Rank;
use lowsched::decide::queue::JobQueue;
use lowsched::model::job::JobId;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Push(i64),
    Pop,
    Remove(u64),
    /// Take the n-th listed job through its handle.
    Take(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (-3i64..4).prop_map(Op::Push),
        2 => Just(Op::Pop),
        1 => (0u64..40).prop_map(Op::Remove),
        1 => (0usize..10).prop_map(Op::Take),
    ]
}

proptest! {
    #[test]
    fn behaves_like_a_sorted_map(ops in prop::collection::vec(op(), 1..120)) {
        let queue: JobQueue<u64> = JobQueue::new();
        // (rank, seq) -> id
        let mut model: BTreeMap<(i64, u64), u64> = BTreeMap::new();
        let mut next_id = 0u64;
        for op in ops {
            match op {
                Op::Push(r) => {
                    let id = next_id;
                    next_id += 1;
                    let seq = queue.push(JobId(id), id, |_, _, _| Rank(r));
                    model.insert((r, seq), id);
                }
                Op::Pop => {
                    let want = model.pop_first().map(|(_, id)| id);
                    prop_assert_eq!(queue.pop().map(|q| q.id().0), want);
                }
                Op::Remove(id) => {
                    let key = model.iter().find(|(_, v)| **v == id).map(|(k, _)| *k);
                    let got = queue.remove(JobId(id));
                    prop_assert_eq!(got.is_some(), key.is_some());
                    if let Some(k) = key {
                        model.remove(&k);
                        prop_assert_eq!(*got.unwrap().payload(), id);
                    }
                }
                Op::Take(n) => {
                    let listed: Vec<_> = queue.iter().collect();
                    if let Some(job) = listed.get(n) {
                        prop_assert!(queue.take(job));
                        prop_assert!(!queue.take(job));
                        let key = (job.rank().0, job.seq());
                        prop_assert_eq!(model.remove(&key), Some(job.id().0));
                    }
                }
            }
            prop_assert_eq!(queue.len(), model.len());
            let listed: Vec<u64> = queue.iter().map(|q| q.id().0).collect();
            let expected: Vec<u64> = model.values().copied().collect();
            prop_assert_eq!(listed, expected);
        }
        // Draining pops in exactly sorted (rank, seq) order.
        let drained: Vec<u64> = std::iter::from_fn(|| queue.pop()).map(|q| q.id().0).collect();
        let expected: Vec<u64> = model.values().copied().collect();
        prop_assert_eq!(drained, expected);
    }
}
