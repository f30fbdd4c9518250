//! Start-up: rebuilds the job table from the journal and what the node says. Jobs the journal
//! accepted are pending again unless the cgroup tree shows them running or paused (adopted), or
//! their waiter recorded how they ended while no daemon watched. No accepted job is lost, none
//! is started twice.

use std::collections::{HashMap, HashSet};

use crate::decide::policy::Rank;
use crate::model::exit::ExitEvent;
use crate::model::job::JobId;
use crate::model::jobstate::JobState;
use crate::node::actuator::{Actuator, Adoption};
use crate::store::journal::Replay;

use super::jobs::{Change, JobRecord, Jobs};
use super::shared::now;

/// What recovery found, for the start-up log line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub pending: Vec<JobId>,
    pub adopted: usize,
    /// Ended while the daemon was down: their exits go through the normal exit path.
    pub ended_while_down: Vec<ExitEvent>,
    /// Of `pending`: recorded as started, but the daemon stopped before their launch.
    pub unlaunched: usize,
    pub unknown_killed: usize,
    /// Jobs of another scheduler (Slurm) not known to have ended, for its side to settle.
    pub foreign: Vec<JobId>,
}

/// Fills the job table from the journal's replay and the actuator's adoption, every fix-up
/// through the door. Pending jobs go back in the queue at `rank`.
pub fn recover(
    replay: &Replay,
    adoption: Adoption,
    actuator: &mut Actuator,
    jobs: &Jobs,
    rank: impl Fn(&JobRecord) -> Rank,
) -> Recovered {
    let mut out = Recovered::default();
    let running: HashMap<JobId, _> = adoption.running.into_iter().map(|a| (a.id, a)).collect();
    let ended: HashSet<JobId> = adoption.ended.iter().map(|e| e.job).collect();
    let at = now();
    for j in replay.jobs.values() {
        let mut rec = JobRecord::new(j.id, j.spec.clone(), j.owner.clone(), j.submitted);
        rec.held = j.held;
        rec.first_started = j.started;
        if let Some(e) = &j.ending {
            rec.state = e.state;
            rec.exit_code = e.exit_code;
            rec.signal = e.signal;
            rec.reason = e.reason.clone();
            rec.ended = Some(e.at);
            jobs.restore(rec, None);
            // Finished before: anything left on the node is a straggler to clean up.
            if running.contains_key(&j.id) || ended.contains(&j.id) {
                let _ = actuator.release(j.id);
            }
            continue;
        }
        if !j.spec.origin.is_lowsched() {
            // Another scheduler's job: pending and out of the queue until the Slurm side finds
            // it on the node (adopted) or does not (ended while no daemon watched).
            jobs.restore(rec, None);
            out.foreign.push(j.id);
            continue;
        }
        if let Some(a) = running.get(&j.id) {
            rec.last_started = Some(at);
            // Restored as pending, out of the queue: adoption moves it on.
            jobs.restore(rec, None);
            let change = Change::Adopted {
                paused: a.paused,
                cores: a.cores,
                pids: a.pids.iter().map(|p| p.as_raw() as u32).collect(),
            };
            if let Err(e) = jobs.apply(j.id, change, at) {
                crate::log::error(&format!("job {}: cannot adopt it: {e}", j.id));
            }
            out.adopted += 1;
        } else if ended.contains(&j.id) {
            // Its exit event is replayed through the normal exit path; running until then.
            rec.state = JobState::Running;
            jobs.restore(rec, None);
        } else if j.started.is_some() {
            // Its start was recorded (durably, before the launch), but neither its groups nor
            // its exit record exist: the daemon stopped before the waiter was cloned, and the
            // waiter creates the exit record before it starts the job. So it never ran: it is
            // pending again.
            let r = rank(&rec);
            jobs.restore(rec, Some(r));
            out.pending.push(j.id);
            out.unlaunched += 1;
        } else {
            let r = rank(&rec);
            jobs.restore(rec, Some(r));
            out.pending.push(j.id);
        }
    }
    let table = jobs.table();
    out.ended_while_down = adoption
        .ended
        .into_iter()
        .filter(|e| table.get(e.job).is_some())
        .collect();
    // Groups of jobs the journal never accepted cannot be ours to run: clean them up.
    for id in running.keys().chain(ended.iter()) {
        if table.get(*id).is_none() {
            crate::log::warn(&format!(
                "job {id} is on the node but not in the journal; killing it"
            ));
            let _ = actuator.kill(*id);
            let _ = actuator.release(*id);
            out.unknown_killed += 1;
        }
    }
    drop(table);
    for id in adoption.prepared {
        if !running.contains_key(&id) {
            let _ = actuator.release(id);
        }
    }
    out
}
