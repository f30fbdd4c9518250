//! Engine unit tests: colocation (physical cores, the service's cores), GPUs and memory.

use crate::model::inventory::{Gpu, GpuSet};
use crate::model::job::JobSpec;
use crate::model::jobstate::JobState;

use super::tests::{Case, J, brief, cpus, paused, pending, policy, running, spec};

/// 4 logical CPUs on 2 physical cores: {0,2} and {1,3}.
fn smt_case() -> Case {
    let mut case = Case::cores(4);
    case.node.smt_groups = vec![cpus("0,2"), cpus("1,3")];
    case
}

fn classed(name: &str, cores: &str, class: &str) -> JobSpec {
    let mut s = spec(name, cores);
    s.colocation.class = Some(class.into());
    s
}

fn avoiding(name: &str, cores: &str, avoid: &str) -> JobSpec {
    let mut s = spec(name, cores);
    s.colocation.avoid = vec![avoid.into()];
    s
}

fn gpu_case() -> Case {
    let mut case = Case::cores(4);
    case.node.gpus = ["A100", "T4", "A100"]
        .iter()
        .enumerate()
        .map(|(i, v)| Gpu {
            index: i as u32,
            variant: (*v).into(),
        })
        .collect();
    case
}

fn with_gpus(mut j: J, ids: &[u32]) -> J {
    let mut set = GpuSet::default();
    for &i in ids {
        set.insert(i);
    }
    j.gpus = set;
    j
}

#[test]
fn conflicting_jobs_never_share_a_physical_core() {
    let jobs = [
        running(1, classed("stream", "1", "membw"), "0"),
        pending(2, avoiding("radix", "1", "membw")),
        pending(3, spec("plain", "1")),
    ];
    // radix may not take 2 (0's sibling): it gets 1; plain takes 2.
    let cmds = smt_case().decide(&*policy("fifo"), &jobs);
    assert_eq!(brief(&cmds), ["run 2 [1]", "run 3 [2]"]);
}

#[test]
fn a_conflicting_job_waits_when_only_siblings_are_left() {
    let jobs = [
        running(1, classed("stream", "1", "membw"), "0"),
        running(2, classed("stream2", "1", "membw"), "1"),
        pending(3, avoiding("radix", "1", "membw")),
        pending(4, spec("plain", "2")),
    ];
    let cmds = smt_case().decide(&*policy("fifo"), &jobs);
    assert_eq!(brief(&cmds), ["run 4 [2-3]"]);
    assert!(
        cmds[0].reason().contains("backfilled past job 3"),
        "{}",
        cmds[0]
    );
}

#[test]
fn the_avoid_rule_is_symmetric_and_widening_honours_it() {
    // The running job names the pending one's class: it must not widen onto the sibling either.
    let jobs = [
        running(1, avoiding("a", "1:4", "io"), "0"),
        pending(2, classed("b", "1", "io")),
    ];
    let cmds = smt_case().decide(&*policy("fifo"), &jobs);
    // b takes 1 (free, lowest); a widens onto 2 (its own sibling) but not 3 (b's sibling).
    assert_eq!(brief(&cmds), ["run 2 [1]", "resize 1 [0,2]"]);
}

#[test]
fn a_conflict_in_the_snapshot_is_resolved_by_the_junior_moving() {
    let jobs = [
        running(1, classed("a", "1", "x"), "0"),
        running(2, avoiding("b", "1", "x"), "2"),
    ];
    let cmds = smt_case().decide(&*policy("fifo"), &jobs);
    assert_eq!(brief(&cmds), ["resize 2 [1]"]);
}

#[test]
fn jobs_that_must_not_run_beside_the_service_avoid_its_physical_cores() {
    let mut shy = spec("shy", "2");
    shy.colocation.beside_service = false;
    let mut shy3 = shy.clone();
    shy3.cores = "3".parse().unwrap();
    let mut case = smt_case().batch("1-3");
    case.service = cpus("0");
    // 2 is 0's sibling: shy gets 1 and 3; a 3-core shy job never fits while the service is on 0.
    let cmds = case.decide(&*policy("fifo"), &[pending(1, shy.clone())]);
    assert_eq!(brief(&cmds), ["run 1 [1,3]"]);
    assert!(
        case.decide(&*policy("fifo"), &[pending(1, shy3)])
            .is_empty()
    );
    // A shy job running on 2 when the service arrives on 0 moves away.
    let mut one = shy;
    one.cores = "1".parse().unwrap();
    let cmds = case.decide(&*policy("fifo"), &[running(1, one, "2")]);
    assert_eq!(brief(&cmds), ["resize 1 [1]"]);
}

#[test]
fn gpus_are_granted_by_variant_with_concrete_indices() {
    let mut a100 = spec("train", "1");
    a100.gpus = "A100:2".parse().unwrap();
    let mut t4 = spec("infer", "1");
    t4.gpus = "t4".parse().unwrap();
    let cmds = gpu_case().decide(&*policy("fifo"), &[pending(1, a100), pending(2, t4)]);
    assert_eq!(brief(&cmds), ["run 1 [0]", "run 2 [1]"]);
    let gpus = |c: &crate::decide::policy::Command| match c {
        crate::decide::policy::Command::Run { gpus, .. } => gpus.to_string(),
        _ => String::new(),
    };
    assert_eq!(gpus(&cmds[0]), "0,2");
    assert_eq!(gpus(&cmds[1]), "1");
    assert!(cmds[0].reason().contains("GPUs 0,2"), "{}", cmds[0]);
}

#[test]
fn gpus_held_by_running_or_paused_jobs_are_not_granted_again() {
    let mut a100 = spec("train", "1");
    a100.gpus = "A100".parse().unwrap();
    let mut any = spec("any", "1");
    any.gpus = "1".parse().unwrap();
    let jobs = [
        with_gpus(running(1, a100.clone(), "0"), &[0]),
        with_gpus(paused(2, a100.clone()), &[2]),
        pending(3, a100),
        pending(4, any),
    ];
    // No A100 is left for job 3; job 4 takes any GPU: the T4.
    let mut held = jobs[1].clone();
    held.held = true;
    let jobs = [jobs[0].clone(), held, jobs[2].clone(), jobs[3].clone()];
    let cmds = gpu_case().decide(&*policy("fifo"), &jobs);
    assert_eq!(brief(&cmds), ["run 4 [1]"]);
    match &cmds[0] {
        crate::decide::policy::Command::Run { gpus, .. } => assert_eq!(gpus.to_string(), "1"),
        other => panic!("{other}"),
    }
}

#[test]
fn memory_of_running_and_paused_jobs_counts_against_new_ones() {
    let mut hog = spec("hog", "1");
    hog.memory = Some("40G".parse().unwrap());
    let mut frozen = spec("frozen", "1");
    frozen.memory = Some("20G".parse().unwrap());
    let mut big = spec("big", "1");
    big.memory = Some("8G".parse().unwrap());
    let mut small = spec("small", "1");
    small.memory = Some("4G".parse().unwrap());
    let mut held = paused(2, frozen);
    held.held = true;
    assert_eq!(held.state, JobState::Paused);
    let jobs = [
        running(1, hog, "0"),
        held,
        pending(3, big),
        pending(4, small.clone()),
        pending(5, small),
    ];
    // 64G - 40G - 20G = 4G free: big (8G) waits, one small job starts, the next does not fit.
    let cmds = Case::cores(4).decide(&*policy("fifo"), &jobs);
    assert_eq!(brief(&cmds), ["run 4 [1]"]);
}
