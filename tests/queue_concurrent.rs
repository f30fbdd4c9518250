#![allow(clippy::unwrap_used)]
//! The queue under real concurrency: 4 producers, 1 consumer and a thread taking jobs out (by
//! handle and by id), all at once. Every job must come out exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::thread;

use lowsched::decide::policy::Rank;
use lowsched::decide::queue::JobQueue;
use lowsched::model::job::JobId;

const PRODUCERS: u64 = 4;
const PER_PRODUCER: u64 = 20_000;
const TOTAL: usize = (PRODUCERS * PER_PRODUCER) as usize;

fn rank_a(id: JobId) -> Rank {
    Rank((id.0 % 17) as i64)
}

#[test]
fn every_job_leaves_exactly_once_under_concurrent_push_pop_and_remove() {
    let queue: Arc<JobQueue<u64>> = Arc::new(JobQueue::new());
    let removed_count = Arc::new(AtomicUsize::new(0));
    let producers_done = Arc::new(AtomicBool::new(false));
    let all_done = Arc::new(AtomicBool::new(false));

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let q = Arc::clone(&queue);
            thread::spawn(move || {
                for i in 0..PER_PRODUCER {
                    let id = JobId(p * PER_PRODUCER + i);
                    q.push(id, id.0, |id, _, _| rank_a(id));
                }
            })
        })
        .collect();

    // Takes out every 5th job it sees listed (as the controller does when it starts jobs), and
    // cancels every 1000th by id, racing the consumer for them; keeps what it won.
    let remover = {
        let q = Arc::clone(&queue);
        let count = Arc::clone(&removed_count);
        let done = Arc::clone(&all_done);
        thread::spawn(move || {
            let mut won = Vec::new();
            let mut next_cancel = 0u64;
            while !done.load(SeqCst) {
                for job in q.iter() {
                    if job.id().0 % 5 == 0 && q.take(&job) {
                        assert_eq!(*job.payload(), job.id().0);
                        won.push(job.id().0);
                        count.fetch_add(1, SeqCst);
                    }
                }
                if next_cancel < TOTAL as u64 {
                    if let Some(job) = q.remove(JobId(next_cancel + 1)) {
                        won.push(job.id().0);
                        count.fetch_add(1, SeqCst);
                    }
                    next_cancel += 1000;
                }
            }
            won
        })
    };

    let consumer = {
        let q = Arc::clone(&queue);
        let removed = Arc::clone(&removed_count);
        let producers_done = Arc::clone(&producers_done);
        thread::spawn(move || {
            let mut popped = Vec::with_capacity(TOTAL);
            loop {
                match q.pop() {
                    Some(item) => {
                        assert_eq!(*item.payload(), item.id().0);
                        popped.push(item.id().0);
                    }
                    None => {
                        if producers_done.load(SeqCst)
                            && popped.len() + removed.load(SeqCst) == TOTAL
                        {
                            return popped;
                        }
                        thread::yield_now();
                    }
                }
            }
        })
    };

    for p in producers {
        p.join().unwrap();
    }
    producers_done.store(true, SeqCst);
    let popped = consumer.join().unwrap();
    all_done.store(true, SeqCst);
    let won = remover.join().unwrap();

    let mut seen: Vec<u64> = popped.iter().chain(won.iter()).copied().collect();
    assert_eq!(
        seen.len(),
        TOTAL,
        "popped {} + removed {}",
        popped.len(),
        won.len()
    );
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), TOTAL, "some job came out twice");
    assert_eq!(seen.first(), Some(&0));
    assert_eq!(seen.last(), Some(&(TOTAL as u64 - 1)));
    assert!(won.iter().all(|id| id % 5 == 0 || id % 1000 == 1));
    assert!(queue.is_empty(), "len {}", queue.len());
    assert!(queue.pop().is_none());
    assert_eq!(queue.iter().count(), 0);
    eprintln!("popped {}, removed {}", popped.len(), won.len());
}
