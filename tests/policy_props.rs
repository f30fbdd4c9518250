#![allow(clippy::unwrap_used)]
//! Property tests of every policy on random nodes, grants and job mixes.
//!
//! Each case applies the commands, in order, to a model of the node and checks after every
//! single command that no core is in two jobs, and at the end that every running job sits
//! inside the batch set within its core range, honours colocation, and that new jobs got memory
//! and GPUs (of their variant) that were free. It also checks determinism, that equal-rank jobs
//! start in submission order, and that the result is a fixed point (deciding again on the new
//! state changes nothing).

use std::collections::BTreeMap;
use std::time::Duration;

use lowsched::decide::policy::adaptive;
use lowsched::decide::policy::{
    ActiveJob, Command, JobView, NAMES, Policy, PolicyConfig, Rank, Snapshot, by_name,
};
use lowsched::model::cpuset::CpuSet;
use lowsched::model::inventory::{Gpu, GpuSet, Inventory};
use lowsched::model::job::{JobId, JobSpec, Timestamp};
use lowsched::model::jobstate::JobState;
use lowsched::model::resources::{Bytes, CoreRange, GpuRequest};
use proptest::prelude::*;

const NAME_POOL: [&str; 4] = ["n0", "n1", "n2", "n3"];
const CLASS_POOL: [&str; 2] = ["c0", "c1"];
const AVOID_POOL: [&str; 4] = ["n0", "n1", "c0", "c1"];
const GIB: u64 = 1 << 30;

fn spec_strategy() -> impl Strategy<Value = JobSpec> {
    let shape = (
        0usize..4,
        1u32..4,
        0u32..3,
        prop::option::weighted(0.4, 1u64..9),
        prop_oneof![6 => Just(0u32), 1 => 1u32..3],
        prop::option::of(any::<bool>()),
        -2i32..3,
    );
    let times = (
        prop::option::of(1u64..100),
        prop::option::of(1u64..200),
        prop::option::weighted(0.2, 1u64..600),
    );
    let colocation = (
        prop::option::of(0usize..2),
        prop::collection::vec(0usize..4, 0..2),
        prop::bool::weighted(0.8),
    );
    (shape, times, colocation).prop_map(
        |(
            (name, min, extra, mem, gpus, variant, priority),
            (estimate, deadline, timeout),
            (class, avoid, beside),
        )| {
            let mut s = JobSpec::new(vec!["/bin/true".into()]);
            s.name = NAME_POOL[name].into();
            s.cores = CoreRange {
                min,
                max: min + extra,
            };
            s.memory = mem.map(|g| Bytes(g * GIB));
            s.gpus = GpuRequest {
                count: gpus,
                variant: variant.map(|a| if a { "A100" } else { "T4" }.to_string()),
            };
            s.priority = priority;
            s.estimate = estimate.map(Duration::from_secs);
            s.deadline = deadline.map(Duration::from_secs);
            s.timeout = timeout.map(Duration::from_secs);
            s.colocation.class = class.map(|c| CLASS_POOL[c].to_string());
            s.colocation.avoid = avoid.into_iter().map(|a| AVOID_POOL[a].into()).collect();
            s.colocation.beside_service = beside;
            s
        },
    )
}

/// 0 pending, 1 running, 2 paused by a policy, 3 paused and held by its owner.
#[derive(Clone, Debug)]
struct JobGen {
    spec: usize,
    kind: u8,
    core_mask: u16,
    waited_s: u64,
}

#[derive(Clone, Debug)]
struct Scenario {
    n_cores: usize,
    smt: bool,
    gpus: Vec<bool>,
    batch_mask: u16,
    service_mask: u16,
    starvation_s: u64,
    specs: Vec<JobSpec>,
    jobs: Vec<JobGen>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        (
            1usize..=12,
            any::<bool>(),
            prop::collection::vec(any::<bool>(), 0..4),
        ),
        (
            any::<u16>(),
            any::<u16>(),
            prop::sample::select(vec![0u64, 30, 300]),
        ),
        prop::collection::vec(spec_strategy(), 1..5),
        prop::collection::vec(
            (0usize..5, 0u8..4, any::<u16>(), 0u64..400).prop_map(
                |(spec, kind, core_mask, waited_s)| JobGen {
                    spec,
                    kind,
                    core_mask,
                    waited_s,
                },
            ),
            0..14,
        ),
    )
        .prop_map(
            |((n_cores, smt, gpus), (batch_mask, service_mask, starvation_s), specs, jobs)| {
                Scenario {
                    n_cores,
                    smt,
                    gpus,
                    batch_mask,
                    service_mask,
                    starvation_s,
                    specs,
                    jobs,
                }
            },
        )
}

const NOW: u64 = 1_000_000;

/// A job in the model of the node.
#[derive(Clone, Debug)]
struct SimJob {
    id: u64,
    spec: JobSpec,
    state: JobState,
    cores: CpuSet,
    gpus: GpuSet,
    submitted: u64,
    started: u64,
    held: bool,
}

struct World {
    node: Inventory,
    batch: CpuSet,
    service: CpuSet,
    cfg: PolicyConfig,
    jobs: BTreeMap<u64, SimJob>,
}

fn mask(m: u16, n: usize) -> CpuSet {
    (0..n).filter(|i| m & (1 << i) != 0).collect()
}

fn build(s: &Scenario) -> World {
    let all = CpuSet::range(0, s.n_cores).unwrap();
    let mut node = Inventory::simple(all, Bytes(16 * GIB));
    if s.smt && s.n_cores % 2 == 0 {
        let half = s.n_cores / 2;
        node.smt_groups = (0..half)
            .map(|i| [i, i + half].into_iter().collect())
            .collect();
    }
    node.gpus = s
        .gpus
        .iter()
        .enumerate()
        .map(|(i, &a)| Gpu {
            index: i as u32,
            variant: if a { "A100" } else { "T4" }.into(),
        })
        .collect();
    let batch = mask(s.batch_mask, s.n_cores);
    let service = mask(s.service_mask, s.n_cores).difference(&batch);
    let mut used = CpuSet::new();
    let mut gpus_used = GpuSet::default();
    let mut jobs = BTreeMap::new();
    for (i, g) in s.jobs.iter().enumerate() {
        let mut spec = s.specs[g.spec % s.specs.len()].clone();
        let mut state = match g.kind {
            0 => JobState::Pending,
            1 => JobState::Running,
            _ => JobState::Paused,
        };
        let mut cores = CpuSet::new();
        let mut gpus = GpuSet::default();
        if state == JobState::Running {
            // Disjoint from the others, possibly outside today's batch set (it shrank).
            cores = mask(g.core_mask, s.n_cores).difference(&used);
            if cores.is_empty() {
                state = JobState::Paused;
            }
            used = used.union(&cores);
        }
        if state.is_active() {
            let open = node.gpus_of(
                node.all_gpus().difference(gpus_used),
                spec.gpus.variant.as_deref(),
            );
            if open.len() < spec.gpus.count as usize {
                spec.gpus = GpuRequest::default();
            }
            for idx in open.iter().take(spec.gpus.count as usize) {
                gpus.insert(idx);
            }
            gpus_used = gpus_used.union(gpus);
        }
        let id = i as u64 + 1;
        let submitted = NOW - g.waited_s * 1000;
        jobs.insert(
            id,
            SimJob {
                id,
                spec,
                state,
                cores,
                gpus,
                submitted,
                started: submitted + 1,
                held: g.kind == 3,
            },
        );
    }
    let cfg = PolicyConfig {
        starvation_age: Duration::from_secs(s.starvation_s),
        ..PolicyConfig::default()
    };
    World {
        node,
        batch,
        service,
        cfg,
        jobs,
    }
}

fn view(j: &SimJob) -> JobView<'_> {
    JobView {
        id: JobId(j.id),
        spec: &j.spec,
        submitted: Timestamp(j.submitted),
        seq: j.id,
        owner: 0,
    }
}

/// The policy's queue order for `job` (adaptive orders by its current mode).
fn order_rank(
    policy: &dyn Policy,
    snap: &Snapshot<'_>,
    cfg: &PolicyConfig,
    job: &JobView<'_>,
) -> Rank {
    if policy.name() == "adaptive" {
        adaptive::choose(snap, cfg).rank(job)
    } else {
        policy.rank(job)
    }
}

impl World {
    /// Runs `f` on a snapshot of the current state, with the queue in the policy's order.
    fn with_snapshot<R>(&self, policy: &dyn Policy, f: impl FnOnce(&Snapshot<'_>) -> R) -> R {
        let active: Vec<ActiveJob<'_>> = self
            .jobs
            .values()
            .filter(|j| j.state.is_active())
            .map(|j| ActiveJob {
                job: view(j),
                state: j.state,
                cores: j.cores,
                gpus: j.gpus,
                started: Timestamp(j.started),
                ran: Default::default(),
                held: j.held,
            })
            .collect();
        let mut queue: Vec<JobView<'_>> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Pending)
            .map(view)
            .collect();
        queue.sort_by_key(|v| (policy.rank(v), v.seq));
        f(&Snapshot {
            now: Timestamp(NOW),
            node: &self.node,
            batch_cores: self.batch,
            service_cores: self.service,
            active: &active,
            queue: &queue,
            users: &lowsched::decide::fairshare::NO_USAGE,
        })
    }

    fn check_no_shared_core(&self, after: &Command) -> Result<(), TestCaseError> {
        let mut seen = CpuSet::new();
        for j in self.jobs.values().filter(|j| j.state == JobState::Running) {
            prop_assert!(
                seen.is_disjoint(&j.cores),
                "after `{after}` job {} shares cores [{}]",
                j.id,
                seen.intersection(&j.cores)
            );
            seen = seen.union(&j.cores);
        }
        Ok(())
    }

    /// Applies one command as the actuator would, refusing impossible ones.
    fn apply(&mut self, cmd: &Command) -> Result<(), TestCaseError> {
        let id = cmd.job().0;
        let free_gpus = self.free_gpus();
        let free_mem = self.free_memory();
        let job = self.jobs.get_mut(&id).unwrap();
        match cmd {
            Command::Run { cores, gpus, .. } => {
                prop_assert_eq!(job.state, JobState::Pending, "{}", cmd);
                prop_assert!(!cores.is_empty(), "{}", cmd);
                prop_assert_eq!(gpus.len(), job.spec.gpus.count as usize, "{}", cmd);
                prop_assert_eq!(gpus.difference(free_gpus), GpuSet::default(), "{}", cmd);
                let variant = job.spec.gpus.variant.as_deref();
                prop_assert_eq!(self.node.gpus_of(*gpus, variant), *gpus, "{}", cmd);
                prop_assert!(
                    job.spec.memory.map_or(0, |m| m.get()) <= free_mem,
                    "{}",
                    cmd
                );
                job.state = JobState::Running;
                job.cores = *cores;
                job.gpus = *gpus;
                job.started = NOW;
            }
            Command::Resume { cores, .. } => {
                prop_assert_eq!(job.state, JobState::Paused, "{}", cmd);
                prop_assert!(!job.held, "held job resumed: {}", cmd);
                job.state = JobState::Running;
                job.cores = *cores;
                job.started = NOW;
            }
            Command::Pause { .. } => {
                prop_assert_eq!(job.state, JobState::Running, "{}", cmd);
                job.state = JobState::Paused;
                job.cores = CpuSet::new();
            }
            Command::Resize { cores, .. } => {
                prop_assert_eq!(job.state, JobState::Running, "{}", cmd);
                prop_assert!(!cores.is_empty(), "{}", cmd);
                job.cores = *cores;
            }
            Command::MarkUnschedulable { .. } => {
                prop_assert_eq!(job.state, JobState::Pending, "{}", cmd);
                let due = job.submitted + job.spec.timeout.unwrap().as_millis() as u64;
                prop_assert!(NOW >= due, "{}", cmd);
                job.state = JobState::Unschedulable;
            }
            Command::Kill { .. } | Command::TimeOut { .. } => {
                prop_assert!(false, "policies never kill: {}", cmd)
            }
        }
        self.check_no_shared_core(cmd)
    }

    fn free_gpus(&self) -> GpuSet {
        let held = self
            .jobs
            .values()
            .filter(|j| j.state.is_active())
            .fold(GpuSet::default(), |acc, j| acc.union(j.gpus));
        self.node.all_gpus().difference(held)
    }

    fn free_memory(&self) -> u64 {
        let used: u64 = self
            .jobs
            .values()
            .filter(|j| j.state.is_active())
            .filter_map(|j| j.spec.memory.map(|m| m.get()))
            .sum();
        self.node.memory.get().saturating_sub(used)
    }

    /// What must hold once all commands are applied.
    fn check_final(&self) -> Result<(), TestCaseError> {
        let service_phys = self.node.physical_cores_of(&self.service);
        let running: Vec<&SimJob> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .collect();
        for j in &running {
            prop_assert!(
                j.cores.is_subset(&self.batch),
                "job {} on [{}] outside batch [{}]",
                j.id,
                j.cores,
                self.batch
            );
            let n = j.cores.len() as u32;
            prop_assert!(
                n >= j.spec.cores.min && n <= j.spec.cores.max,
                "job {} has {n} cores, range {}",
                j.id,
                j.spec.cores
            );
            if !j.spec.colocation.beside_service {
                prop_assert!(
                    j.cores.is_disjoint(&service_phys),
                    "job {} on [{}] beside the service",
                    j.id,
                    j.cores
                );
            }
            for k in &running {
                if j.id < k.id && j.spec.conflicts_with(&k.spec) {
                    let shared = self.node.physical_cores_of(&j.cores).intersection(&k.cores);
                    prop_assert!(
                        shared.is_empty(),
                        "conflicting jobs {} and {} share physical cores",
                        j.id,
                        k.id
                    );
                }
            }
        }
        Ok(())
    }
}

fn check_policy(s: &Scenario, name: &str) -> Result<(), TestCaseError> {
    let mut world = build(s);
    let policy = by_name(name, &world.cfg).unwrap();
    let (cmds, equal_rank_pairs) = world.with_snapshot(&*policy, |snap| {
        let cmds = policy.decide(snap);
        prop_assert_eq!(&policy.decide(snap), &cmds, "not deterministic");
        // Pairs (earlier, later) of identical pending jobs that rank the same.
        let mut pairs = Vec::new();
        for (i, a) in snap.queue.iter().enumerate() {
            for b in &snap.queue[i + 1..] {
                let (a, b) = if a.seq < b.seq { (a, b) } else { (b, a) };
                if a.spec == b.spec
                    && order_rank(&*policy, snap, &world.cfg, a)
                        == order_rank(&*policy, snap, &world.cfg, b)
                {
                    pairs.push((a.id, b.id));
                }
            }
        }
        Ok((cmds, pairs))
    })?;
    for cmd in &cmds {
        world.apply(cmd)?;
    }
    world.check_final()?;

    let position =
        |id: JobId, verb: &str| cmds.iter().position(|c| c.job() == id && c.verb() == verb);
    for (earlier, later) in equal_rank_pairs {
        if let Some(late) = position(later, "run") {
            let early = position(earlier, "run");
            let gave_up = position(earlier, "unschedulable").is_some();
            prop_assert!(
                gave_up || early.is_some_and(|e| e < late),
                "{later:?} started before the equal-rank, earlier {earlier:?}: {cmds:?}"
            );
        }
    }

    // Deciding again on the state the commands produced changes nothing (no churn).
    // (adaptive only when its mode stays the same: a new mode is a new order by design.)
    let mode = |w: &World| w.with_snapshot(&*policy, |snap| adaptive::choose(snap, &w.cfg));
    let same_mode = name != "adaptive" || mode(&build(s)) == mode(&world);
    if same_mode {
        let again = world.with_snapshot(&*policy, |snap| policy.decide(snap));
        let churn: Vec<&Command> = again
            .iter()
            .filter(|c| c.verb() != "unschedulable")
            .collect();
        prop_assert!(
            churn.is_empty(),
            "not a fixed point: first {cmds:?}\nthen {churn:?}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(400), ..ProptestConfig::default() })]

    #[test]
    fn every_policy_keeps_the_invariants(s in scenario()) {
        for name in NAMES {
            check_policy(&s, name)?;
        }
    }
}
