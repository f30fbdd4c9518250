//! Engine tests: fair share between users within one rank (unit and property tests).

use std::time::Duration;

use proptest::prelude::*;

use crate::decide::fairshare::Usage;
use crate::decide::policy::{Policy, PolicyConfig, by_name};
use crate::model::job::Timestamp;

use super::tests::{Case, J, pending, policy, spec};

fn owned(id: u64, owner: u32) -> J {
    J {
        owner,
        ..pending(id, spec(&format!("j{id}"), "1"))
    }
}

/// Starts jobs one at a time on a 1-core node: each runs for a second, charged to its owner's
/// usage (which starts at `usage`), and ends before the next pick. Returns the ids in the order
/// they started.
fn picks(
    case: &mut Case,
    policy: &dyn Policy,
    mut jobs: Vec<J>,
    mut usage: Usage,
    n: usize,
) -> Vec<u64> {
    let mut order = Vec::new();
    let mut t = 1000;
    while order.len() < n {
        case.users = usage.order();
        let cmds = case.decide(policy, &jobs);
        let Some(run) = cmds.iter().find(|c| c.verb() == "run") else {
            break;
        };
        let id = run.job().0;
        order.push(id);
        let owner = jobs.iter().find(|j| j.id == id).unwrap().owner;
        t += 1000;
        usage.advance(Timestamp(t), [(owner, 1)]);
        jobs.retain(|j| j.id != id);
    }
    order
}

/// Users 1000.. used `used[i]` core-seconds in the last second (clock at t = 1 s).
fn usage_of(used: &[u64]) -> Usage {
    let mut u = Usage::new(Duration::from_secs(3600));
    u.advance(Timestamp(0), []);
    let running: Vec<(u32, usize)> = used
        .iter()
        .enumerate()
        .map(|(i, &c)| (1000 + i as u32, c as usize))
        .collect();
    u.advance(Timestamp(1000), running);
    u
}

#[test]
fn one_users_many_jobs_do_not_starve_anothers_one() {
    // User 1000 queued 10 jobs before user 1001's one: rounds interleave them.
    let mut jobs: Vec<J> = (1..=10).map(|id| owned(id, 1000)).collect();
    jobs.push(owned(11, 1001));
    for name in ["fifo", "priority"] {
        assert_eq!(
            picks(
                &mut Case::cores(1),
                &*policy(name),
                jobs.clone(),
                usage_of(&[]),
                4
            ),
            [1, 11, 2, 3],
            "{name}"
        );
    }
}

#[test]
fn the_user_with_less_recent_use_goes_first_in_a_round() {
    let jobs = vec![owned(1, 1000), owned(2, 1000), owned(3, 1001)];
    let fifo = policy("fifo");
    assert_eq!(
        picks(
            &mut Case::cores(1),
            &*fifo,
            jobs.clone(),
            usage_of(&[8, 1]),
            3
        ),
        [3, 1, 2]
    );
    // A heavy user's backlog waits until the light user caught up: 1001 used 5 core-seconds
    // more, so 1000 runs 5 jobs (one second each) before 1001's turn comes.
    let mut jobs: Vec<J> = (1..=8).map(|id| owned(id, 1000)).collect();
    jobs.push(owned(9, 1001));
    let order = picks(&mut Case::cores(1), &*fifo, jobs, usage_of(&[0, 5]), 9);
    assert_eq!(order[..7], [1, 2, 3, 4, 5, 9, 6], "{order:?}");
}

#[test]
fn fair_share_never_passes_a_higher_priority() {
    let mut jobs: Vec<J> = (1..=3).map(|id| owned(id, 1000)).collect();
    let mut low = owned(4, 1001);
    low.spec.priority = -1;
    jobs.push(low);
    let order = picks(
        &mut Case::cores(1),
        &*policy("priority"),
        jobs,
        usage_of(&[]),
        4,
    );
    assert_eq!(order, [1, 2, 3, 4]);
}

#[test]
fn without_fair_share_the_queue_keeps_submission_order() {
    let mut jobs: Vec<J> = (1..=3).map(|id| owned(id, 1000)).collect();
    jobs.push(owned(4, 1001));
    let cfg = PolicyConfig {
        fair_share: false,
        ..PolicyConfig::default()
    };
    let fifo = by_name("fifo", &cfg).unwrap();
    assert_eq!(
        picks(&mut Case::cores(1), &*fifo, jobs, usage_of(&[]), 4),
        [1, 2, 3, 4]
    );
}

#[test]
fn a_users_running_jobs_count_as_rounds_taken() {
    // User 1000 runs a job on core 0 and queued four more before user 1001's one; core 1 is
    // free. Nobody has used cores long enough to count: 1001's job takes core 1.
    let mut running = super::tests::running(1, spec("r", "1"), "0");
    running.owner = 1000;
    let mut jobs = vec![running];
    jobs.extend((2..=5).map(|id| owned(id, 1000)));
    jobs.push(owned(6, 1001));
    let cmds = Case::cores(2).decide(&*policy("fifo"), &jobs);
    let started: Vec<u64> = cmds
        .iter()
        .filter(|c| c.verb() == "run")
        .map(|c| c.job().0)
        .collect();
    assert_eq!(started, [6]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Users with no recent use: whatever the others queued (and in whatever order), every
    /// user's first job starts within the first `users` picks.
    #[test]
    fn every_users_first_job_starts_within_one_round(
        owners in prop::collection::vec(0u32..4, 1..120),
        name in prop::sample::select(vec!["fifo", "priority", "sjf", "edf"]),
    ) {
        let jobs: Vec<J> = owners
            .iter()
            .enumerate()
            .map(|(i, &o)| owned(i as u64 + 1, 1000 + o))
            .collect();
        let mut users: Vec<u32> = owners.clone();
        users.sort_unstable();
        users.dedup();
        let mut case = Case::cores(1);
        let order = picks(&mut case, &*policy(name), jobs.clone(), usage_of(&[]), users.len());
        prop_assert_eq!(order.len(), users.len());
        let mut started: Vec<u32> = order
            .iter()
            .map(|&id| jobs[id as usize - 1].owner - 1000)
            .collect();
        started.sort_unstable();
        prop_assert_eq!(started, users);
    }

    /// With any recent use, the user who used the least goes first among those with work.
    #[test]
    fn the_least_recent_user_starts_first(
        owners in prop::collection::vec(0u32..4, 1..60),
        used in prop::collection::vec(0u64..16, 4),
    ) {
        let jobs: Vec<J> = owners
            .iter()
            .enumerate()
            .map(|(i, &o)| owned(i as u64 + 1, 1000 + o))
            .collect();
        let order = picks(&mut Case::cores(1), &*policy("fifo"), jobs.clone(), usage_of(&used), 1);
        let first = jobs[order[0] as usize - 1].owner - 1000;
        let least = owners.iter().map(|&o| used[o as usize]).min().unwrap();
        prop_assert_eq!(used[first as usize], least);
    }
}
