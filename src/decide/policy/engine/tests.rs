//! Engine unit tests: queue order, backfill, timeouts, starvation, shrinking and regrowing.
//! (Colocation, GPUs and memory are in `tests_colocation`.)

use std::time::Duration;

use crate::decide::policy::{ActiveJob, Command, JobView, Policy, PolicyConfig, Snapshot, by_name};
use crate::model::cpuset::CpuSet;
use crate::model::inventory::{GpuSet, Inventory};
use crate::model::job::{JobId, JobSpec, Timestamp};
use crate::model::jobstate::JobState;
use crate::model::resources::CoreRange;

/// One job of a test scenario; its id is also its submission sequence.
#[derive(Clone, Debug)]
pub(super) struct J {
    pub id: u64,
    pub spec: JobSpec,
    pub submitted: u64,
    pub state: JobState,
    pub cores: CpuSet,
    pub gpus: GpuSet,
    pub started: u64,
    pub held: bool,
    /// The owner's uid (fair share).
    pub owner: u32,
}

pub(super) fn cpus(s: &str) -> CpuSet {
    s.parse().unwrap()
}

/// A spec named `name` wanting `cores` (`N` or `MIN:MAX`).
pub(super) fn spec(name: &str, cores: &str) -> JobSpec {
    let mut s = JobSpec::new(vec![name.to_string()]);
    s.cores = cores.parse::<CoreRange>().unwrap();
    s
}

pub(super) fn pending(id: u64, spec: JobSpec) -> J {
    J {
        id,
        spec,
        submitted: 1000 + id,
        state: JobState::Pending,
        cores: CpuSet::new(),
        gpus: GpuSet::default(),
        started: 0,
        held: false,
        owner: 0,
    }
}

pub(super) fn running(id: u64, spec: JobSpec, cores: &str) -> J {
    J {
        state: JobState::Running,
        cores: cpus(cores),
        started: 2000 + id,
        ..pending(id, spec)
    }
}

pub(super) fn paused(id: u64, spec: JobSpec) -> J {
    J {
        state: JobState::Paused,
        ..pending(id, spec)
    }
}

/// The node and the controller's grant for one scenario.
pub(super) struct Case {
    pub node: Inventory,
    pub batch: CpuSet,
    pub service: CpuSet,
    pub now: u64,
    pub users: crate::decide::fairshare::UserOrder,
}

impl Case {
    /// `n` cores, all granted to batch, 64 GiB, no GPUs, no SMT, at t = 10 s.
    pub fn cores(n: usize) -> Self {
        let all = CpuSet::range(0, n).unwrap();
        Self {
            node: Inventory::simple(all, crate::model::resources::Bytes(64 << 30)),
            batch: all,
            service: CpuSet::new(),
            now: 10_000,
            users: Default::default(),
        }
    }

    pub fn batch(mut self, s: &str) -> Self {
        self.batch = cpus(s);
        self
    }

    /// Decides with `policy`, building the queue in the policy's rank order as the daemon does.
    pub fn decide(&self, policy: &dyn Policy, jobs: &[J]) -> Vec<Command> {
        fn view(j: &J) -> JobView<'_> {
            JobView {
                id: JobId(j.id),
                spec: &j.spec,
                submitted: Timestamp(j.submitted),
                seq: j.id,
                owner: j.owner,
            }
        }
        let active: Vec<ActiveJob<'_>> = jobs
            .iter()
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
        let mut queue: Vec<JobView<'_>> = jobs
            .iter()
            .filter(|j| j.state == JobState::Pending)
            .map(view)
            .collect();
        queue.sort_by_key(|v| (policy.rank(v), v.seq));
        let snap = Snapshot {
            now: Timestamp(self.now),
            node: &self.node,
            batch_cores: self.batch,
            service_cores: self.service,
            active: &active,
            queue: &queue,
            users: &self.users,
        };
        let first = policy.decide(&snap);
        assert_eq!(policy.decide(&snap), first, "same snapshot, same commands");
        first
    }
}

pub(super) fn policy(name: &str) -> Box<dyn Policy> {
    by_name(name, &PolicyConfig::default()).unwrap()
}

/// Commands as `verb id [cores]` strings, for compact assertions.
pub(super) fn brief(cmds: &[Command]) -> Vec<String> {
    cmds.iter()
        .map(|c| match c.cores() {
            Some(cores) => format!("{} {} [{cores}]", c.verb(), c.job()),
            None => format!("{} {}", c.verb(), c.job()),
        })
        .collect()
}

fn ids_started(cmds: &[Command]) -> Vec<u64> {
    cmds.iter()
        .filter(|c| c.verb() == "run")
        .map(|c| c.job().0)
        .collect()
}

#[test]
fn empty_queue_and_idle_node_give_no_commands() {
    for name in crate::decide::policy::NAMES {
        assert!(Case::cores(4).decide(&*policy(name), &[]).is_empty());
    }
}

#[test]
fn no_batch_cores_starts_nothing() {
    let jobs = [pending(1, spec("a", "1")), pending(2, spec("b", "1:4"))];
    assert!(
        Case::cores(4)
            .batch("")
            .decide(&*policy("fifo"), &jobs)
            .is_empty()
    );
}

#[test]
fn jobs_bigger_than_the_batch_set_all_wait() {
    let jobs = [pending(1, spec("a", "5")), pending(2, spec("b", "8:9"))];
    assert!(Case::cores(4).decide(&*policy("fifo"), &jobs).is_empty());
}

#[test]
fn equal_ranks_start_in_submission_order() {
    let jobs: Vec<J> = (1..=5).map(|i| pending(i, spec("x", "1"))).collect();
    let cmds = Case::cores(3).decide(&*policy("fifo"), &jobs);
    assert_eq!(brief(&cmds), ["run 1 [0]", "run 2 [1]", "run 3 [2]"]);
}

#[test]
fn a_big_job_does_not_block_smaller_ones_behind_it() {
    let jobs = [
        pending(1, spec("small", "1")),
        pending(2, spec("big", "4")),
        pending(3, spec("small2", "2")),
    ];
    let cmds = Case::cores(3).decide(&*policy("fifo"), &jobs);
    assert_eq!(brief(&cmds), ["run 1 [0]", "run 3 [1-2]"]);
    assert!(
        cmds[1].reason().contains("backfilled past job 2"),
        "{}",
        cmds[1]
    );
    assert!(!cmds[0].reason().contains("backfilled"));
}

#[test]
fn each_policy_orders_by_its_own_key() {
    let mut a = spec("a", "1");
    a.priority = 1;
    a.estimate = Some(Duration::from_secs(50));
    a.deadline = Some(Duration::from_secs(100));
    let mut b = spec("b", "1");
    b.priority = 5;
    b.estimate = Some(Duration::from_secs(10));
    let mut c = spec("c", "1");
    c.estimate = Some(Duration::from_secs(90));
    c.deadline = Some(Duration::from_secs(20));
    let d = spec("d", "1");
    let jobs = [pending(1, a), pending(2, b), pending(3, c), pending(4, d)];
    let first = |name: &str| ids_started(&Case::cores(1).decide(&*policy(name), &jobs));
    assert_eq!(first("fifo"), [1]);
    assert_eq!(first("priority"), [2]);
    assert_eq!(first("sjf"), [2]);
    assert_eq!(first("ljf"), [3]);
    assert_eq!(first("edf"), [3]);
    // Without estimates/deadlines a job ranks last under sjf, ljf and edf.
    let order = |name: &str| ids_started(&Case::cores(4).decide(&*policy(name), &jobs));
    assert_eq!(order("sjf"), [2, 1, 3, 4]);
    assert_eq!(order("ljf"), [3, 1, 2, 4]);
    assert_eq!(order("edf"), [3, 1, 2, 4]);
    assert_eq!(order("priority"), [2, 1, 3, 4]);
}

#[test]
fn a_job_past_its_scheduling_timeout_becomes_unschedulable_with_reasons() {
    let mut big = spec("big", "4");
    big.timeout = Some(Duration::from_secs(5));
    big.memory = Some("128G".parse().unwrap());
    let mut patient = spec("patient", "4");
    patient.timeout = Some(Duration::from_secs(60));
    let jobs = [
        running(9, spec("busy", "2"), "0-1"),
        pending(1, big),
        pending(2, patient),
    ];
    let mut case = Case::cores(4);
    case.now = 1001 + 8_000;
    let cmds = case.decide(&*policy("fifo"), &jobs);
    assert_eq!(brief(&cmds), ["unschedulable 1"]);
    let reason = cmds[0].reason();
    assert!(reason.contains("waited 8s"), "{reason}");
    assert!(reason.contains("timeout of 5s"), "{reason}");
    assert!(
        reason.contains("cores (needs 4, 2 usable of 4 batch cores)"),
        "{reason}"
    );
    assert!(reason.contains("memory (needs 128G, 64G free)"), "{reason}");
}

#[test]
fn a_timed_out_job_is_refused_even_if_cores_free_up_at_that_moment() {
    let mut job = spec("late", "1");
    job.timeout = Some(Duration::from_secs(1));
    let mut case = Case::cores(2);
    case.now = 1001 + 1_000;
    let cmds = case.decide(&*policy("fifo"), &[pending(1, job)]);
    assert_eq!(brief(&cmds), ["unschedulable 1"]);
    assert!(cmds[0].reason().contains("lacked nothing"), "{}", cmds[0]);
}

#[test]
fn the_starvation_guard_reserves_cores_for_a_long_waiting_job() {
    let jobs = [
        running(9, spec("busy", "2"), "0-1"),
        pending(1, spec("big", "3")),
        pending(2, spec("small", "1")),
    ];
    let cfg = PolicyConfig {
        starvation_age: Duration::from_secs(60),
        ..PolicyConfig::default()
    };
    let fifo = by_name("fifo", &cfg).unwrap();
    let mut case = Case::cores(4);
    // Young: the small job backfills onto the free cores.
    case.now = 1001 + 30_000;
    assert_eq!(brief(&case.decide(&*fifo, &jobs)), ["run 2 [2]"]);
    // Starving: the big job reserves both free cores; nothing ranked below it starts there.
    case.now = 1001 + 61_000;
    let cmds = case.decide(&*fifo, &jobs);
    assert!(ids_started(&cmds).is_empty(), "{cmds:?}");
    // Once the busy job is gone the big job starts first.
    let jobs = [jobs[1].clone(), jobs[2].clone()];
    assert_eq!(
        brief(&case.decide(&*fifo, &jobs)),
        ["run 1 [0-2]", "run 2 [3]"]
    );
}

#[test]
fn the_starvation_guard_also_reserves_memory() {
    let mut big = spec("big", "1");
    big.memory = Some("40G".parse().unwrap());
    let mut hog = spec("hog", "1");
    hog.memory = Some("30G".parse().unwrap());
    let mut small = spec("small", "1");
    small.memory = Some("20G".parse().unwrap());
    let jobs = [running(9, hog, "0"), pending(1, big), pending(2, small)];
    let cfg = PolicyConfig {
        starvation_age: Duration::from_secs(1),
        ..PolicyConfig::default()
    };
    let mut case = Case::cores(4);
    case.now = 1001 + 500;
    assert_eq!(brief(&case.decide(&*policy("fifo"), &jobs)), ["run 2 [1]"]);
    case.now = 1001 + 2_000;
    let fifo = by_name("fifo", &cfg).unwrap();
    assert!(case.decide(&*fifo, &jobs).is_empty());
}

#[test]
fn shrinking_to_zero_pauses_everyone_lowest_priority_first() {
    let mut hi = spec("hi", "1:2");
    hi.priority = 3;
    let jobs = [
        running(1, spec("old", "1"), "0"),
        running(2, hi, "1-2"),
        running(3, spec("new", "1"), "3"),
    ];
    let cmds = Case::cores(4).batch("").decide(&*policy("fifo"), &jobs);
    // Same priority: the most recently started (job 3) pauses before job 1.
    assert_eq!(brief(&cmds), ["pause 3", "pause 1", "pause 2"]);
}

#[test]
fn shrinking_resizes_down_to_minimum_before_pausing() {
    let jobs = [
        running(1, spec("a", "1:3"), "0-2"),
        running(2, spec("b", "1:3"), "3-5"),
        running(3, spec("c", "2"), "6-7"),
    ];
    // Batch shrinks from 0-7 to 0-3: a and b shrink to their minimum (1 each), c needs 2 and
    // fits on what remains; nobody pauses.
    let cmds = Case::cores(8).batch("0-3").decide(&*policy("fifo"), &jobs);
    assert_eq!(
        brief(&cmds),
        ["resize 1 [0]", "resize 2 [3]", "resize 3 [1-2]"]
    );
    assert!(
        cmds[1].reason().contains("left the batch set"),
        "{}",
        cmds[1]
    );
    // Down to 0-2: now c (most recently started) pauses and a widens again onto its core 2.
    let cmds = Case::cores(8).batch("0-2").decide(&*policy("fifo"), &jobs);
    assert_eq!(brief(&cmds), ["resize 1 [0-1]", "pause 3", "resize 2 [2]"]);
}

#[test]
fn regrowing_resumes_before_starting_then_widens() {
    let jobs = [
        running(1, spec("a", "1:4"), "0"),
        paused(2, spec("b", "2")),
        pending(3, spec("c", "1")),
        pending(4, spec("d", "3")),
    ];
    let cmds = Case::cores(5).decide(&*policy("fifo"), &jobs);
    assert_eq!(
        brief(&cmds),
        ["resume 2 [1-2]", "run 3 [3]", "resize 1 [0,4]"]
    );
}

#[test]
fn held_jobs_are_never_resumed() {
    let mut held = paused(1, spec("held", "1"));
    held.held = true;
    let jobs = [held, paused(2, spec("free", "1"))];
    let cmds = Case::cores(2).decide(&*policy("fifo"), &jobs);
    assert_eq!(brief(&cmds), ["resume 2 [0]"]);
}

#[test]
fn borrowed_cores_are_reclaimed_for_a_pending_job() {
    let jobs = [
        running(1, spec("wide", "1:4"), "0-3"),
        pending(2, spec("new", "2")),
    ];
    let cmds = Case::cores(4).decide(&*policy("fifo"), &jobs);
    assert_eq!(brief(&cmds), ["resize 1 [0-1]", "run 2 [2-3]"]);
    assert!(cmds[0].reason().contains("go to other jobs"), "{}", cmds[0]);
}

#[test]
fn leftover_cores_widen_jobs_in_rank_order_and_new_jobs_start_wide() {
    let mut urgent = spec("urgent", "1:2");
    urgent.priority = 9;
    let jobs = [
        running(1, spec("a", "1:8"), "0"),
        pending(2, urgent),
        pending(3, spec("c", "1:8")),
    ];
    let cmds = Case::cores(6).decide(&*policy("priority"), &jobs);
    assert_eq!(
        brief(&cmds),
        ["run 2 [1,3]", "run 3 [2]", "resize 1 [0,4-5]"]
    );
}

#[test]
fn a_steady_snapshot_gives_no_commands() {
    let jobs = [
        running(1, spec("a", "1:2"), "0-1"),
        running(2, spec("b", "2"), "2-3"),
        pending(3, spec("c", "3")),
    ];
    for name in crate::decide::policy::NAMES {
        assert!(
            Case::cores(4).decide(&*policy(name), &jobs).is_empty(),
            "{name}"
        );
    }
}

#[test]
fn a_job_whose_cores_all_leave_moves_after_the_shrinks() {
    let jobs = [
        running(1, spec("a", "2:4"), "0-3"),
        running(2, spec("b", "2"), "4-5"),
    ];
    let cmds = Case::cores(6).batch("0-3").decide(&*policy("fifo"), &jobs);
    assert_eq!(brief(&cmds), ["resize 1 [0-1]", "resize 2 [2-3]"]);
    assert!(cmds[1].reason().contains("moves from [4-5]"), "{}", cmds[1]);
}

#[test]
fn commands_come_in_the_safe_order() {
    let mut hi = spec("hi", "2");
    hi.priority = 1;
    let jobs = [
        running(1, spec("wide", "1:3"), "0-2"),
        running(2, spec("low", "2"), "3-4"),
        running(3, hi, "5-6"),
        paused(4, spec("p", "1")),
        pending(5, spec("q", "1")),
    ];
    // Batch 0-5. Seniority: hi (priority 1), wide, low. hi keeps 5 and takes 4 from the most
    // junior job; wide keeps its minimum; low keeps 3 and takes 2 from wide; p resumes on 1.
    let cmds = Case::cores(8).batch("0-5").decide(&*policy("fifo"), &jobs);
    assert_eq!(
        brief(&cmds),
        [
            "resize 3 [5]",
            "resize 1 [0]",
            "resize 2 [3]",
            "resume 4 [1]",
            "resize 3 [4-5]",
            "resize 2 [2-3]",
        ]
    );
}

#[test]
fn adaptive_switches_modes_by_the_documented_rule() {
    use crate::decide::policy::adaptive::{Mode, choose};
    let cfg = PolicyConfig::default();
    let node = Inventory::simple(cpus("0"), crate::model::resources::Bytes(1 << 30));
    let mode = |specs: &[JobSpec], now: u64| {
        let queue: Vec<JobView<'_>> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| JobView {
                id: JobId(i as u64),
                spec: s,
                submitted: Timestamp(0),
                seq: i as u64,
                owner: 0,
            })
            .collect();
        let snap = Snapshot {
            now: Timestamp(now),
            node: &node,
            batch_cores: cpus("0"),
            service_cores: CpuSet::new(),
            active: &[],
            queue: &queue,
            users: &crate::decide::fairshare::NO_USAGE,
        };
        choose(&snap, &cfg)
    };
    let plain = spec("p", "1");
    assert_eq!(mode(&[], 0), Mode::Fifo);
    assert_eq!(mode(&[plain.clone(), plain.clone()], 0), Mode::Fifo);
    let mut important = plain.clone();
    important.priority = 2;
    assert_eq!(mode(&[plain.clone(), important.clone()], 0), Mode::Priority);
    let mut estimated = plain.clone();
    estimated.estimate = Some(Duration::from_secs(30));
    assert_eq!(mode(&vec![estimated.clone(); 7], 0), Mode::Fifo);
    assert_eq!(mode(&vec![estimated.clone(); 8], 0), Mode::Sjf);
    // Deadline 200 s, estimate 30 s, slack 60 s: at risk from t = 110 s on.
    let mut due = estimated.clone();
    due.deadline = Some(Duration::from_secs(200));
    assert_eq!(
        mode(&[due.clone(), important.clone()], 109_999),
        Mode::Priority
    );
    assert_eq!(mode(&[due.clone(), important], 110_000), Mode::Edf);
    // Its decisions say which mode acted.
    let jobs = [pending(1, due)];
    let mut case = Case::cores(1);
    case.now = 150_000;
    let cmds = case.decide(&*policy("adaptive"), &jobs);
    assert!(cmds[0].reason().starts_with("adaptive/edf:"), "{}", cmds[0]);
}
