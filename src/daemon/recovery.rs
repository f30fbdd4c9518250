//! Start-up: rebuilds the job table from the journal and what the node says. Jobs the journal
//! accepted are pending again unless the cgroup tree shows them running or paused (adopted), or
//! their waiter recorded how they ended while no daemon watched. No accepted job is lost, none
//! is started twice.

use std::collections::HashSet;

use crate::model::exit::ExitEvent;
use crate::model::job::JobId;
use crate::model::jobstate::JobState;
use crate::node::actuator::{Actuator, Adoption};
use crate::store::eventlog::{Event, EventLog, Kind};
use crate::store::journal::{Journal, Record, Replay};

use super::shared::now;
use super::table::{JobRecord, JobTable};

/// What recovery found, for the start-up log line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub pending: Vec<JobId>,
    pub adopted: usize,
    /// Ended while the daemon was down: their exits go through the normal exit path.
    pub ended_while_down: Vec<ExitEvent>,
    pub lost: usize,
    pub unknown_killed: usize,
}

/// Builds `table` from the journal's replay and the actuator's adoption.
pub fn recover(
    replay: &Replay,
    adoption: Adoption,
    actuator: &mut Actuator,
    journal: &Journal,
    events: &EventLog,
    table: &mut JobTable,
) -> Recovered {
    let mut out = Recovered::default();
    let running: std::collections::HashMap<JobId, _> =
        adoption.running.into_iter().map(|a| (a.id, a)).collect();
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
            table.insert(rec);
            // Finished before: anything left on the node is a straggler to clean up.
            if running.contains_key(&j.id) || ended.contains(&j.id) {
                let _ = actuator.release(j.id);
            }
            continue;
        }
        if let Some(a) = running.get(&j.id) {
            rec.state = if a.paused {
                JobState::Paused
            } else {
                JobState::Running
            };
            rec.cores = if a.paused {
                crate::model::cpuset::CpuSet::new()
            } else {
                a.cores
            };
            rec.last_started = Some(at);
            rec.pids = a.pids.iter().map(|p| p.as_raw() as u32).collect();
            out.adopted += 1;
            events.record(
                Event::new(
                    rec.spec.name.clone(),
                    Some(j.id),
                    Kind::Custom {
                        text: "adopted".into(),
                    },
                )
                .because(format!("found {} after a restart", rec.state)),
            );
        } else if ended.contains(&j.id) {
            // Its exit event is replayed below; it counts as running until then.
            rec.state = JobState::Running;
        } else if j.started.is_some() {
            // Launched, but neither its groups nor its exit record exist: the daemon stopped in
            // the instant between the clone and the waiter's first step.
            rec.state = JobState::Failed;
            rec.reason = Some("lost: the daemon stopped while starting it; it never ran".into());
            rec.ended = Some(at);
            if let Some(ending) = rec.ending() {
                let _ = journal.append_sync(&Record::Ended { id: j.id, ending });
            }
            out.lost += 1;
        } else {
            out.pending.push(j.id);
        }
        table.insert(rec);
    }
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
    for id in adoption.prepared {
        if !running.contains_key(&id) {
            let _ = actuator.release(id);
        }
    }
    out
}
