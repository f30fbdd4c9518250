//! Run-time limits (`submit --time`): which running jobs have used up their limit and must be
//! killed now, ending as Timeout.
//!
//! Only time spent running counts, not time paused: a job is paused by the SLO controller to
//! protect the service (or by its owner), and a job that lost its cores to the service should not
//! also lose its run time to it. Slurm likewise does not count time suspended. So a paused job
//! never reaches its limit; it is checked again once it runs.

use std::time::Duration;

use crate::model::jobstate::JobState;

use super::{ActiveJob, Command, Snapshot};

/// How long `a` has run by `snap.now`, time paused not counted.
pub fn run_time(a: &ActiveJob<'_>, now: crate::model::job::Timestamp) -> Duration {
    match a.state {
        JobState::Running => a.ran + now.since(a.started),
        _ => a.ran,
    }
}

/// A `TimeOut` command for every running job whose run time has reached its limit, in
/// submission order (so the same snapshot always gives the same commands).
pub fn expired(snap: &Snapshot<'_>) -> Vec<Command> {
    let mut out: Vec<(u64, Command)> = snap
        .active
        .iter()
        .filter(|a| a.state == JobState::Running && a.job.spec.origin.is_lowsched())
        .filter_map(|a| {
            let limit = a.job.spec.time_limit?;
            let ran = run_time(a, snap.now);
            (ran >= limit).then(|| {
                let reason = format!(
                    "ran {} of its time limit of {} (time paused not counted); killed",
                    super::engine::duration(ran),
                    super::engine::duration(limit),
                );
                (
                    a.job.seq,
                    Command::TimeOut {
                        job: a.job.id,
                        reason,
                    },
                )
            })
        })
        .collect();
    out.sort_by_key(|(seq, _)| *seq);
    out.into_iter().map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::policy::JobView;
    use crate::model::cpuset::CpuSet;
    use crate::model::inventory::{GpuSet, Inventory};
    use crate::model::job::{JobId, JobSpec, Timestamp};
    use crate::model::resources::Bytes;

    fn spec(limit_s: Option<u64>) -> JobSpec {
        let mut s = JobSpec::new(vec!["sleep".into(), "100".into()]);
        s.time_limit = limit_s.map(Duration::from_secs);
        s
    }

    fn active<'a>(
        id: u64,
        spec: &'a JobSpec,
        state: JobState,
        started_ms: u64,
        ran_ms: u64,
    ) -> ActiveJob<'a> {
        ActiveJob {
            job: JobView {
                id: JobId(id),
                spec,
                submitted: Timestamp(0),
                seq: id,
                owner: 0,
            },
            state,
            cores: CpuSet::new(),
            gpus: GpuSet::default(),
            started: Timestamp(started_ms),
            ran: Duration::from_millis(ran_ms),
            held: false,
        }
    }

    fn run(now_ms: u64, active: &[ActiveJob<'_>]) -> Vec<Command> {
        let node = Inventory::simple(CpuSet::new(), Bytes(1 << 30));
        let snap = Snapshot {
            now: Timestamp(now_ms),
            node: &node,
            batch_cores: CpuSet::new(),
            service_cores: CpuSet::new(),
            active,
            queue: &[],
            users: &Default::default(),
        };
        expired(&snap)
    }

    #[test]
    fn a_running_job_is_killed_once_its_run_time_reaches_the_limit() {
        let ten = spec(Some(10));
        let before = [active(1, &ten, JobState::Running, 1_000, 0)];
        assert!(run(10_999, &before).is_empty());
        let cmds = run(11_000, &before);
        assert_eq!(cmds.len(), 1);
        assert!(matches!(&cmds[0], Command::TimeOut { job: JobId(1), .. }));
        assert!(
            cmds[0].reason().contains("time limit of 10s"),
            "{}",
            cmds[0]
        );
    }

    #[test]
    fn time_paused_does_not_count() {
        let ten = spec(Some(10));
        // Ran 6 s, was paused for a long time, resumed at 100 s: 4 s more are allowed.
        let resumed = [active(1, &ten, JobState::Running, 100_000, 6_000)];
        assert!(run(103_999, &resumed).is_empty());
        assert_eq!(run(104_000, &resumed).len(), 1);
        // A paused job's clock stands still, however long it has been paused.
        let paused = [active(1, &ten, JobState::Paused, 0, 9_999)];
        assert!(run(1_000_000, &paused).is_empty());
    }

    #[test]
    fn jobs_without_a_limit_are_never_killed_and_order_is_by_submission() {
        let (none, five) = (spec(None), spec(Some(5)));
        let jobs = [
            active(3, &five, JobState::Running, 0, 0),
            active(1, &none, JobState::Running, 0, 0),
            active(2, &five, JobState::Running, 0, 0),
        ];
        let ids: Vec<JobId> = run(60_000, &jobs).iter().map(Command::job).collect();
        assert_eq!(ids, [JobId(2), JobId(3)]);
    }
}
