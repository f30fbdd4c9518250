#![allow(clippy::unwrap_used)]
//! Queue throughput: producers push while one consumer pops, as socket threads and the
//! controller do, in batches of 20 000 jobs. Throughput counts a push and a pop as two
//! operations, so the reported elements/s are queue operations per second.
//!
//! Run: `cargo bench --bench queue -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lowsched::decide::policy::Rank;
use lowsched::decide::queue::JobQueue;
use lowsched::model::job::JobId;

/// Jobs per measured batch: large enough that starting the producer threads is noise.
const BATCH: u64 = 20_000;

/// Pushes `total` jobs from `producers` threads while this thread pops them all.
fn push_pop(producers: u64, total: u64) -> Duration {
    let queue: Arc<JobQueue<u64>> = Arc::new(JobQueue::new());
    let per = total.div_ceil(producers);
    let start = Instant::now();
    std::thread::scope(|s| {
        for p in 0..producers {
            let q = Arc::clone(&queue);
            s.spawn(move || {
                for i in 0..per {
                    let id = p * per + i;
                    q.push(JobId(id), id, |id, _, _| Rank((id.0 % 64) as i64));
                }
            });
        }
        let mut popped = 0;
        while popped < per * producers {
            match queue.pop() {
                Some(job) => {
                    black_box(job.payload());
                    popped += 1;
                }
                None => std::thread::yield_now(),
            }
        }
    });
    start.elapsed()
}

/// The same traffic on a bare `SkipMap<(rank, seq), id>`: what the queue's id index, claim
/// flags and shared slots cost on top of the skip list.
fn bare_skipmap(producers: u64, total: u64) -> Duration {
    use crossbeam_skiplist::SkipMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    let map: Arc<SkipMap<(i64, u64), u64>> = Arc::new(SkipMap::new());
    let seq = Arc::new(AtomicU64::new(0));
    let per = total.div_ceil(producers);
    let start = Instant::now();
    std::thread::scope(|s| {
        for p in 0..producers {
            let (m, seq) = (Arc::clone(&map), Arc::clone(&seq));
            s.spawn(move || {
                for i in 0..per {
                    let id = p * per + i;
                    m.insert(((id % 64) as i64, seq.fetch_add(1, Ordering::SeqCst)), id);
                }
            });
        }
        let mut popped = 0;
        while popped < per * producers {
            match map.pop_front() {
                Some(e) => {
                    black_box(e.value());
                    popped += 1;
                }
                None => std::thread::yield_now(),
            }
        }
    });
    start.elapsed()
}

fn bench_push_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue_push_pop");
    // One iteration pushes and pops BATCH jobs: 2 * BATCH operations.
    group.throughput(Throughput::Elements(2 * BATCH));
    for producers in [1u64, 2, 4] {
        group.bench_with_input(
            BenchmarkId::new("producers", producers),
            &producers,
            |b, &p| {
                b.iter_custom(|iters| (0..iters).map(|_| push_pop(p, BATCH)).sum());
            },
        );
    }
    for producers in [1u64, 4] {
        group.bench_with_input(
            BenchmarkId::new("bare_skipmap_producers", producers),
            &producers,
            |b, &p| {
                b.iter_custom(|iters| (0..iters).map(|_| bare_skipmap(p, BATCH)).sum());
            },
        );
    }
    group.finish();
}

/// What the controller does every tick: list the queue in order (to build the policy's view).
fn bench_iterate(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue_iterate");
    for n in [1_000u64, 10_000] {
        let queue: JobQueue<u64> = JobQueue::new();
        for id in 0..n {
            queue.push(JobId(id), id, |id, _, _| Rank((id.0 % 64) as i64));
        }
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("jobs", n), &queue, |b, q| {
            b.iter(|| q.iter().map(|j| *j.payload()).sum::<u64>());
        });
    }
    group.finish();
}

criterion_group!(benches, bench_push_pop, bench_iterate);
criterion_main!(benches);
