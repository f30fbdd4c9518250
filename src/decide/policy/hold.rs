//! Which pending jobs a policy may consider now: those whose dependencies are met and whose
//! array has room under its concurrency cap (`--array ...%N`). A job whose dependencies can never
//! be met is given up on (unschedulable, reason `DependencyNeverSatisfied`, as Slurm names it).
//!
//! Pure: the states of other jobs come in through a lookup, as the daemon's table (or a test)
//! knows them. An array's id names all its tasks: a dependency on it is met when it is met for
//! every task, and can never be met as soon as it can never be for one.

use std::collections::BTreeMap;

use crate::model::depend::{DepStatus, Dependency};
use crate::model::job::{JobId, JobSpec};
use crate::model::jobstate::JobState;

use super::{ActiveJob, Command, JobView};

/// The states of the job `id`, or of every task when `id` is an array's (empty: not known).
pub trait States {
    fn states(&self, id: JobId) -> Vec<JobState>;
}

impl<F: Fn(JobId) -> Vec<JobState>> States for F {
    fn states(&self, id: JobId) -> Vec<JobState> {
        self(id)
    }
}

/// Where a job's dependencies stand: the first one not met decides.
pub fn dependencies(deps: &[Dependency], states: &dyn States) -> (DepStatus, Option<Dependency>) {
    let mut waiting = None;
    for d in deps {
        let all = states.states(d.job);
        let mut status = if all.is_empty() {
            DepStatus::Never
        } else {
            DepStatus::Met
        };
        for s in all {
            match d.status(Some(s)) {
                DepStatus::Never => status = DepStatus::Never,
                DepStatus::Waiting if status == DepStatus::Met => status = DepStatus::Waiting,
                _ => {}
            }
        }
        match status {
            DepStatus::Never => return (DepStatus::Never, Some(*d)),
            DepStatus::Waiting => {
                waiting.get_or_insert(*d);
            }
            DepStatus::Met => {}
        }
    }
    match waiting {
        Some(d) => (DepStatus::Waiting, Some(d)),
        None => (DepStatus::Met, None),
    }
}

/// Why a pending job is held back from the policy, for `status` (`None`: it is not).
pub fn pending_reason(spec: &JobSpec, states: &dyn States, array_active: usize) -> Option<String> {
    match dependencies(&spec.dependencies, states) {
        (DepStatus::Waiting, Some(d)) => return Some(format!("Dependency (waits for {d})")),
        (DepStatus::Never, Some(d)) => {
            return Some(format!("DependencyNeverSatisfied ({d})"));
        }
        _ => {}
    }
    let task = spec.task?;
    let limit = task.limit? as usize;
    (array_active >= limit).then(|| {
        format!(
            "JobArrayTaskLimit ({limit} of array {} at once)",
            task.array
        )
    })
}

/// The pending jobs the policy may consider, in queue order, and the give-ups.
#[derive(Debug, Default)]
pub struct Screened<'a> {
    pub ready: Vec<JobView<'a>>,
    pub never: Vec<Command>,
}

/// Tasks of each array that are running or paused.
pub fn active_per_array(active: &[ActiveJob<'_>]) -> BTreeMap<JobId, usize> {
    let mut out = BTreeMap::new();
    for a in active {
        if let Some(t) = a.job.spec.task {
            *out.entry(t.array).or_insert(0) += 1;
        }
    }
    out
}

/// Screens `queue` (in queue order): dependencies met, and at most `limit` tasks of an array
/// active once the policy started every task offered (so it may start all it is offered).
pub fn screen<'a>(
    queue: &[JobView<'a>],
    active: &[ActiveJob<'_>],
    states: &dyn States,
) -> Screened<'a> {
    let mut out = Screened::default();
    let mut per_array = active_per_array(active);
    for job in queue {
        let spec = job.spec;
        if !spec.dependencies.is_empty() {
            match dependencies(&spec.dependencies, states) {
                (DepStatus::Met, _) => {}
                (DepStatus::Waiting, _) => continue,
                (DepStatus::Never, d) => {
                    let why = d.map_or_else(String::new, |d| {
                        let now: Vec<String> =
                            states.states(d.job).iter().map(|s| s.to_string()).collect();
                        let now = if now.is_empty() {
                            "not known".to_string()
                        } else {
                            now.join(", ")
                        };
                        format!("{d}: job {} is {now}", d.job)
                    });
                    out.never.push(Command::MarkUnschedulable {
                        job: job.id,
                        reason: format!(
                            "DependencyNeverSatisfied: {why}; the condition can no longer be met"
                        ),
                    });
                    continue;
                }
            }
        }
        if let Some(task) = spec.task {
            let n = per_array.entry(task.array).or_insert(0);
            if task.limit.is_some_and(|l| *n >= l as usize) {
                continue;
            }
            *n += 1;
        }
        out.ready.push(*job);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::array::ArrayTask;
    use crate::model::cpuset::CpuSet;
    use crate::model::depend::DepKind;
    use crate::model::inventory::GpuSet;
    use crate::model::job::Timestamp;
    use std::time::Duration;

    fn view(id: u64, spec: &JobSpec) -> JobView<'_> {
        JobView {
            id: JobId(id),
            spec,
            submitted: Timestamp(0),
            seq: id,
            owner: 0,
        }
    }

    fn with_deps(deps: &[(DepKind, u64)]) -> JobSpec {
        let mut s = JobSpec::new(vec!["true".into()]);
        s.dependencies = deps
            .iter()
            .map(|&(kind, n)| Dependency {
                kind,
                job: JobId(n),
            })
            .collect();
        s
    }

    /// Job 1 succeeded, 2 failed, 3 runs, 4 pends; array 10 has tasks done and running.
    fn table(id: JobId) -> Vec<JobState> {
        use JobState::*;
        match id.0 {
            1 => vec![Succeeded],
            2 => vec![Failed],
            3 => vec![Running],
            4 => vec![Pending],
            10 => vec![Succeeded, Running],
            _ => vec![],
        }
    }

    #[test]
    fn dependencies_wait_start_or_give_up_with_a_reason() {
        use DepKind::*;
        let specs = [
            with_deps(&[(AfterOk, 1), (AfterNotOk, 2), (After, 3)]),
            with_deps(&[(AfterOk, 1), (AfterAny, 3)]),
            with_deps(&[(AfterOk, 2)]),
            with_deps(&[(After, 4)]),
            with_deps(&[(AfterOk, 99)]),
            with_deps(&[(AfterOk, 10)]),
            with_deps(&[]),
        ];
        let queue: Vec<JobView<'_>> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| view(100 + i as u64, s))
            .collect();
        let out = screen(&queue, &[], &table);
        let ready: Vec<u64> = out.ready.iter().map(|j| j.id.0).collect();
        assert_eq!(ready, [100, 106]);
        let never: Vec<(u64, &str)> = out.never.iter().map(|c| (c.job().0, c.reason())).collect();
        assert_eq!(never.len(), 2, "{never:?}");
        assert_eq!(never[0].0, 102);
        assert!(
            never[0]
                .1
                .starts_with("DependencyNeverSatisfied: afterok:2: job 2 is failed"),
            "{}",
            never[0].1
        );
        assert_eq!(never[1].0, 104);
        assert!(never[1].1.contains("not known"), "{}", never[1].1);
        let reason = pending_reason(&specs[1], &table, 0).unwrap();
        assert_eq!(reason, "Dependency (waits for afterany:3)");
        assert_eq!(pending_reason(&specs[0], &table, 0), None);
    }

    fn task(array: u64, index: u32, limit: Option<u32>) -> JobSpec {
        let mut s = JobSpec::new(vec!["true".into()]);
        s.task = Some(ArrayTask {
            array: JobId(array),
            index,
            limit,
        });
        s
    }

    #[test]
    fn an_array_never_has_more_than_its_limit_active() {
        let running = task(20, 0, Some(3));
        let pending: Vec<JobSpec> = (1..10).map(|i| task(20, i, Some(3))).collect();
        let other = task(40, 0, None);
        let active = [ActiveJob {
            job: view(20, &running),
            state: JobState::Running,
            cores: CpuSet::new(),
            gpus: GpuSet::default(),
            started: Timestamp(0),
            ran: Duration::ZERO,
            held: false,
        }];
        let mut queue: Vec<JobView<'_>> = pending
            .iter()
            .enumerate()
            .map(|(i, s)| view(21 + i as u64, s))
            .collect();
        queue.push(view(40, &other));
        let out = screen(&queue, &active, &table);
        let ready: Vec<u64> = out.ready.iter().map(|j| j.id.0).collect();
        assert_eq!(ready, [21, 22, 40]);
        assert!(out.never.is_empty());
        let reason = pending_reason(&pending[5], &table, 3).unwrap();
        assert!(reason.starts_with("JobArrayTaskLimit"), "{reason}");
        assert_eq!(pending_reason(&pending[5], &table, 2), None);
    }
}
