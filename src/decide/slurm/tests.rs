//! The squeeze planner, the cpuset write order and the drain rule on small hand-made nodes.

use super::*;

fn set(s: &str) -> CpuSet {
    s.parse().unwrap()
}

fn job(id: u64, alloc: &str, cores: &str) -> SlurmJobView {
    SlurmJobView {
        id,
        allocation: set(alloc),
        cores: set(cores),
        paused: false,
        held_by_other: false,
        priority: None,
        started: Timestamp::from_millis(1_000 * id),
    }
}

#[test]
fn a_job_on_the_services_new_core_is_narrowed_to_its_allocation_minus_that_core() {
    let plan = plan(&[job(7, "0-3", "0-3")], &set("0"));
    assert_eq!(
        plan,
        vec![SlurmAction::Resize {
            job: 7,
            from: set("0-3"),
            to: set("1-3")
        }]
    );
}

#[test]
fn no_target_ever_leaves_the_allocation() {
    // The service gives up cores 0-1; the job was allocated only 2-3 and must not get 0-1.
    let mut j = job(3, "2-3", "3");
    let plan = plan(std::slice::from_ref(&j), &CpuSet::new());
    assert_eq!(
        plan,
        vec![SlurmAction::Resize {
            job: 3,
            from: set("3"),
            to: set("2-3")
        }]
    );
    j.paused = true;
    for action in super::plan(&[j], &set("3")) {
        if let SlurmAction::Resume { cores, .. } | SlurmAction::Resize { to: cores, .. } = action {
            assert!(cores.is_subset(&set("2-3")), "{action:?}");
        }
    }
}

#[test]
fn a_job_left_without_a_core_is_paused_and_resumed_when_one_comes_back() {
    let j = job(5, "0", "0");
    assert_eq!(
        plan(std::slice::from_ref(&j), &set("0")),
        vec![SlurmAction::Pause { job: 5 }]
    );
    let paused = SlurmJobView { paused: true, ..j };
    assert_eq!(plan(std::slice::from_ref(&paused), &set("0")), vec![]);
    assert_eq!(
        plan(&[paused], &set("1")),
        vec![SlurmAction::Resume {
            job: 5,
            cores: set("0")
        }]
    );
}

#[test]
fn a_job_someone_else_suspended_is_never_resumed_or_resized() {
    let j = SlurmJobView {
        held_by_other: true,
        paused: true,
        ..job(9, "0-1", "0-1")
    };
    assert!(plan(std::slice::from_ref(&j), &CpuSet::new()).is_empty());
    assert!(plan(&[j], &set("0-1")).is_empty());
}

#[test]
fn a_job_already_at_its_target_gets_nothing() {
    assert!(plan(&[job(1, "0-1", "1")], &set("0")).is_empty());
    assert!(plan(&[job(1, "0-1", "0-1")], &CpuSet::new()).is_empty());
}

#[test]
fn squeezes_come_first_least_important_first_and_releases_last_most_important_first() {
    let mut low = job(1, "0-1", "0-1");
    low.priority = Some(10);
    let mut high = job(2, "2-3", "2-3");
    high.priority = Some(100);
    let mut newer_low = job(3, "4-5", "4-5");
    newer_low.priority = Some(10);
    let mut paused_low = job(4, "6", "6");
    paused_low.paused = true;
    paused_low.priority = Some(10);
    let mut paused_high = job(6, "7", "7");
    paused_high.paused = true;
    paused_high.priority = Some(100);
    let jobs = [high, low, newer_low, paused_low, paused_high];
    let plan = plan(&jobs, &set("0,2,4"));
    let order: Vec<u64> = plan.iter().map(SlurmAction::job).collect();
    // Squeezes: priority 10 before 100, and of the two 10s the later start (3) first; then
    // releases: priority 100 before 10.
    assert_eq!(order, vec![3, 1, 2, 6, 4]);
    assert!(matches!(plan[0], SlurmAction::Resize { .. }));
    assert!(matches!(plan[3], SlurmAction::Resume { .. }));
}

#[test]
fn a_move_that_both_drops_and_adds_cores_counts_as_a_release() {
    // Narrowed to 1 while the service had 0; now the service has 1 instead.
    let plan = plan(&[job(1, "0-1", "1")], &set("1"));
    assert_eq!(
        plan,
        vec![SlurmAction::Resize {
            job: 1,
            from: set("1"),
            to: set("0")
        }]
    );
}

#[test]
fn narrowing_writes_the_steps_before_the_job() {
    assert_eq!(
        cpuset_writes(set("0-1"), set("1")),
        vec![(Level::Steps, set("1")), (Level::Job, set("1"))]
    );
}

#[test]
fn widening_writes_the_job_before_the_steps() {
    assert_eq!(
        cpuset_writes(set("1"), set("0-1")),
        vec![(Level::Job, set("0-1")), (Level::Steps, set("0-1"))]
    );
}

#[test]
fn a_swap_widens_the_job_to_the_union_then_narrows_it_last() {
    assert_eq!(
        cpuset_writes(set("1"), set("0")),
        vec![
            (Level::Job, set("0-1")),
            (Level::Steps, set("0")),
            (Level::Job, set("0"))
        ]
    );
}

#[test]
fn the_node_is_drained_only_after_the_hold_and_resumed_when_a_core_returns() {
    let hold = Duration::from_secs(5);
    let t = Timestamp::from_millis;
    assert_eq!(drain_decision(NodeDrain::Open, None, t(0), hold), None);
    assert_eq!(
        drain_decision(NodeDrain::Open, Some(t(1_000)), t(5_999), hold),
        None
    );
    assert_eq!(
        drain_decision(NodeDrain::Open, Some(t(1_000)), t(6_000), hold),
        Some(DrainAction::Drain)
    );
    assert_eq!(
        drain_decision(NodeDrain::Drained, Some(t(1_000)), t(60_000), hold),
        None
    );
    assert_eq!(
        drain_decision(NodeDrain::Drained, None, t(60_000), hold),
        Some(DrainAction::Resume)
    );
}
