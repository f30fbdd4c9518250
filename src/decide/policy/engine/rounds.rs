//! The second round: decide again on the state the first round leads to, and merge the two.
//!
//! Problem: a round places a job's minimum from whichever cores its phase offers, and lends it
//! more cores afterwards. On the next tick the same job's minimum is re-derived from the cores it
//! then holds, which can differ from the first choice when cores are not interchangeable (some
//! jobs may not run beside the service, or beside each other). Then a pending job that did not
//! fit can fit one tick later, so a snapshot the policy produced itself would not be steady.
//!
//! Approach: whenever the first round changes anything, run a second round on the state it
//! leads to (started and resumed jobs running, paused ones paused, given-up ones gone, started
//! "now") and return the difference between the original snapshot and the second round's
//! result. Property tests over hundreds of thousands of random nodes found no case needing a
//! third round. A steady snapshot costs one round.

use std::collections::BTreeMap;

use crate::model::job::JobId;
use crate::model::jobstate::JobState;

use super::super::{ActiveJob, JobView, Snapshot};
use super::{Kind, Outcome, Placement, seniority};

/// The running/paused jobs and the queue after applying `first` to `snap`.
pub(super) fn next_state<'a>(
    snap: &Snapshot<'a>,
    first: &Outcome<'a>,
) -> (Vec<ActiveJob<'a>>, Vec<JobView<'a>>) {
    let original: BTreeMap<JobId, &ActiveJob<'a>> =
        snap.active.iter().map(|a| (a.job.id, a)).collect();
    let mut active = Vec::with_capacity(snap.active.len() + first.placed.len());
    for p in &first.placed {
        let before = original.get(&p.job.id);
        active.push(ActiveJob {
            job: p.job,
            state: JobState::Running,
            cores: p.cores,
            gpus: match p.kind {
                Kind::Started { gpus, .. } => gpus,
                _ => before.map(|a| a.gpus).unwrap_or_default(),
            },
            started: match p.kind {
                Kind::Kept { .. } => before.map_or(snap.now, |a| a.started),
                _ => snap.now,
            },
            ran: before.map(|a| a.ran).unwrap_or_default(),
            held: false,
        });
    }
    for a in &first.paused {
        active.push(ActiveJob {
            state: JobState::Paused,
            cores: Default::default(),
            held: false,
            ..*a
        });
    }
    let placed: BTreeMap<JobId, ()> = first.placed.iter().map(|p| (p.job.id, ())).collect();
    for a in snap.active {
        if a.state == JobState::Paused && !placed.contains_key(&a.job.id) {
            active.push(*a);
        }
    }
    let mut gone: Vec<JobId> = first
        .placed
        .iter()
        .filter(|p| matches!(p.kind, Kind::Started { .. }))
        .map(|p| p.job.id)
        .chain(first.unschedulable.iter().map(|(id, _)| *id))
        .collect();
    gone.sort_unstable();
    let queue = snap
        .queue
        .iter()
        .filter(|j| gone.binary_search(&j.id).is_err())
        .copied()
        .collect();
    (active, queue)
}

/// The second round's placement, described relative to the original snapshot.
pub(super) fn compose<'a>(
    snap: &Snapshot<'a>,
    first: Outcome<'a>,
    second: Outcome<'a>,
) -> Outcome<'a> {
    let started_first: BTreeMap<JobId, Kind> = first
        .placed
        .iter()
        .filter(|p| matches!(p.kind, Kind::Started { .. }))
        .map(|p| (p.job.id, p.kind))
        .collect();
    let original: BTreeMap<JobId, &ActiveJob<'a>> =
        snap.active.iter().map(|a| (a.job.id, a)).collect();
    let mut order: BTreeMap<JobId, usize> = BTreeMap::new();
    for (i, p) in first.placed.iter().chain(&second.placed).enumerate() {
        order.entry(p.job.id).or_insert(i);
    }
    let mut placed: Vec<Placement<'a>> = second
        .placed
        .into_iter()
        .map(|p| {
            let kind = match original.get(&p.job.id) {
                Some(a) if a.state == JobState::Running => Kind::Kept { was: a.cores },
                Some(_) => Kind::Resumed,
                None => match p.kind {
                    Kind::Started { .. } => p.kind,
                    _ => started_first.get(&p.job.id).copied().unwrap_or(p.kind),
                },
            };
            Placement { kind, ..p }
        })
        .collect();
    // Starts are reported in the order they were decided: first round's, then second's.
    placed.sort_by_key(|p| match p.kind {
        Kind::Started { .. } => (1, order.get(&p.job.id).copied().unwrap_or(usize::MAX)),
        _ => (0, 0),
    });
    let still_running: BTreeMap<JobId, ()> = placed.iter().map(|p| (p.job.id, ())).collect();
    let mut paused: Vec<ActiveJob<'a>> = snap
        .active
        .iter()
        .filter(|a| a.state == JobState::Running && !still_running.contains_key(&a.job.id))
        .copied()
        .collect();
    paused.sort_by_key(seniority);
    let mut unschedulable = first.unschedulable;
    unschedulable.extend(second.unschedulable);
    Outcome {
        placed,
        paused,
        unschedulable,
    }
}
