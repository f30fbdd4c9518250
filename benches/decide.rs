#![allow(clippy::unwrap_used)]
//! `decide` on realistic snapshots: a 2-core node (1 core for batch) and a 64-core SMT node
//! (56 for batch), with 10, 1 000 and 10 000 pending jobs of mixed sizes, memory, priorities,
//! estimates, a few deadlines, time-outs, colocation classes and long waiters (reservations).
//!
//! - `steady`: every batch core is held by running jobs, nothing can start (one round).
//! - `freed`: a quarter of the running jobs just ended, so jobs start and widen (two rounds).
//!
//! Jobs belong to eleven users (70 % to one), with fair share on (the default), so the engine
//! also interleaves users within each rank.
//!
//! Run: `cargo bench --bench decide -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lowsched::decide::fairshare::{Usage, UserOrder};
use lowsched::decide::policy::{ActiveJob, JobView, PolicyConfig, Snapshot, by_name};
use lowsched::model::cpuset::CpuSet;
use lowsched::model::inventory::{GpuSet, Inventory};
use lowsched::model::job::{JobId, JobSpec, Timestamp};
use lowsched::model::jobstate::JobState;
use lowsched::model::resources::{Bytes, CoreRange};

const NOW: u64 = 10_000_000;

/// A small deterministic generator (the bench must not depend on a random crate).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn job_spec(rng: &mut Lcg, i: u64) -> JobSpec {
    let mut s = JobSpec::new(vec![
        "/usr/bin/stress-ng".into(),
        "--cpu".into(),
        "1".into(),
    ]);
    s.name = format!("job{i}");
    let min = match rng.below(20) {
        0..=9 => 1,
        10..=14 => 2,
        15..=17 => 4,
        _ => 8,
    };
    let max = if rng.chance(30) { min * 2 } else { min };
    s.cores = CoreRange { min, max };
    if rng.chance(50) {
        s.memory = Some(Bytes((1 + rng.below(8)) << 30));
    }
    if rng.chance(10) {
        s.priority = 1 + rng.below(5) as i32;
    }
    if rng.chance(60) {
        s.estimate = Some(Duration::from_secs(10 + rng.below(3600)));
    }
    if rng.chance(10) {
        s.deadline = Some(Duration::from_secs(7200 + rng.below(7200)));
    }
    if rng.chance(5) {
        s.timeout = Some(Duration::from_secs(3600));
    }
    if rng.chance(10) {
        s.colocation.class = Some("membw".into());
    } else if rng.chance(5) {
        s.colocation.avoid = vec!["membw".into()];
    }
    s
}

struct World {
    node: Inventory,
    batch: CpuSet,
    service: CpuSet,
    specs: Vec<JobSpec>,
    submitted: Vec<u64>,
    /// The owner (uid) of each job: 70 % one heavy user, the rest spread over ten others.
    owners: Vec<u32>,
    /// (spec index, cores) of running jobs.
    running: Vec<(usize, CpuSet)>,
    pending: Vec<usize>,
    /// Users by recent core usage (fair share), as the daemon would pass them.
    users: UserOrder,
}

fn world(node_cores: usize, pending: usize, freed: bool) -> World {
    let mut rng = Lcg(42);
    let all = CpuSet::range(0, node_cores).unwrap();
    let mut node = Inventory::simple(all, Bytes(256 << 30));
    let (service, batch) = if node_cores == 2 {
        ("0".parse().unwrap(), "1".parse().unwrap())
    } else {
        let half = node_cores / 2;
        node.smt_groups = (0..half)
            .map(|i| [i, i + half].into_iter().collect())
            .collect();
        (
            CpuSet::range(0, 8).unwrap(),
            all.difference(&CpuSet::range(0, 8).unwrap()),
        )
    };
    let mut w = World {
        node,
        batch,
        service,
        specs: Vec::new(),
        submitted: Vec::new(),
        owners: Vec::new(),
        running: Vec::new(),
        pending: Vec::new(),
        users: UserOrder::default(),
    };
    // Fill the batch cores with running jobs of 1-4 cores.
    let mut free: Vec<usize> = batch.iter().collect();
    while !free.is_empty() {
        let i = w.specs.len() as u64;
        let mut spec = job_spec(&mut rng, i);
        let n = (1 + rng.below(4) as usize).min(free.len());
        spec.cores = CoreRange::exactly(n as u32);
        spec.colocation = Default::default();
        let cores: CpuSet = free.drain(..n).collect();
        w.specs.push(spec);
        w.submitted.push(NOW - 600_000);
        w.running.push((i as usize, cores));
    }
    if freed {
        let keep = w.running.len() - w.running.len() / 4;
        w.running.truncate(keep.max(1));
        if node_cores == 2 {
            w.running.clear();
        }
    }
    for _ in 0..pending {
        let i = w.specs.len() as u64;
        w.specs.push(job_spec(&mut rng, i));
        // Most arrived in the last minute; 5 % have waited past the starvation age.
        let waited = if rng.chance(5) {
            400_000
        } else {
            rng.below(60_000)
        };
        w.submitted.push(NOW - waited);
        w.pending.push(i as usize);
    }
    // Owners from a generator of their own, so the job mix stays what it was before owners.
    let mut who = Lcg(7);
    w.owners = (0..w.specs.len())
        .map(|_| {
            if who.chance(70) {
                1000
            } else {
                1001 + who.below(10) as u32
            }
        })
        .collect();
    let mut usage = Usage::new(Duration::from_secs(3600));
    usage.advance(Timestamp(NOW - 60_000), []);
    let running: Vec<(u32, usize)> = w
        .running
        .iter()
        .map(|&(i, c)| (w.owners[i], c.len()))
        .collect();
    usage.advance(Timestamp(NOW), running);
    w.users = usage.order();
    w
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    let cfg = PolicyConfig::default();
    for policy_name in ["fifo", "adaptive"] {
        let policy = by_name(policy_name, &cfg).unwrap();
        for node_cores in [2usize, 64] {
            for pending in [10usize, 1_000, 10_000] {
                for freed in [false, true] {
                    let w = world(node_cores, pending, freed);
                    let view = |i: usize| JobView {
                        id: JobId(i as u64),
                        spec: &w.specs[i],
                        submitted: Timestamp(w.submitted[i]),
                        seq: i as u64,
                        owner: w.owners[i],
                    };
                    let active: Vec<ActiveJob<'_>> = w
                        .running
                        .iter()
                        .map(|&(i, cores)| ActiveJob {
                            job: view(i),
                            state: JobState::Running,
                            cores,
                            gpus: GpuSet::default(),
                            started: Timestamp(w.submitted[i] + 1),
                            ran: Default::default(),
                            held: false,
                        })
                        .collect();
                    let mut queue: Vec<JobView<'_>> = w.pending.iter().map(|&i| view(i)).collect();
                    queue.sort_by_key(|v| (policy.rank(v), v.seq));
                    let snap = Snapshot {
                        now: Timestamp(NOW),
                        node: &w.node,
                        batch_cores: w.batch,
                        service_cores: w.service,
                        active: &active,
                        queue: &queue,
                        users: &w.users,
                    };
                    let state = if freed { "freed" } else { "steady" };
                    let started = policy.decide(&snap).len();
                    let id = BenchmarkId::new(
                        format!("{policy_name}/{node_cores}cores/{state}"),
                        pending,
                    );
                    group.bench_with_input(id, &snap, |b, snap| {
                        b.iter(|| black_box(policy.decide(black_box(snap))));
                    });
                    eprintln!(
                        "  ({policy_name}, {node_cores} cores, {pending} pending, {state}: {started} commands)"
                    );
                }
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench_decide);
criterion_main!(benches);
